//! The timer heap: a min-heap of `TimerHandle`s ordered by (when, scheduling order).
//!
//! Cancelled timers stay in the heap (removing from the middle of a heap is O(n)) and are
//! dropped when they reach the top, or all at once when they are more than half of a heap
//! of over 100 entries: asyncio's compaction rule, which bounds memory under heavy
//! cancellation.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;

use pyo3::prelude::*;

use crate::handles::TimerHandle;

const MIN_SCHEDULED_FOR_COMPACTION: usize = 100;
const CANCELLED_FRACTION_FOR_COMPACTION: f64 = 0.5;

pub struct TimerEntry {
    pub when: f64,
    seq: u64,
    pub handle: Py<TimerHandle>,
}

impl TimerEntry {
    pub fn is_cancelled(&self, py: Python<'_>) -> bool {
        self.handle.bind(py).as_super().get().is_cancelled()
    }
}

impl PartialEq for TimerEntry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}
impl Eq for TimerEntry {}
impl PartialOrd for TimerEntry {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for TimerEntry {
    /// Reversed so that `BinaryHeap` (a max-heap) pops the earliest timer first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        other
            .when
            .total_cmp(&self.when)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<TimerEntry>,
    next_seq: u64,
}

impl Timers {
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn push(&mut self, when: f64, handle: Py<TimerHandle>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(TimerEntry { when, seq, handle });
    }

    pub fn peek_when(&self) -> Option<f64> {
        self.heap.peek().map(|e| e.when)
    }

    pub fn pop(&mut self) -> Option<TimerEntry> {
        self.heap.pop()
    }

    pub fn iter(&self) -> impl Iterator<Item = &TimerEntry> {
        self.heap.iter()
    }

    pub fn take_all(&mut self) -> BinaryHeap<TimerEntry> {
        std::mem::take(&mut self.heap)
    }

    /// Drops cancelled timers: all of them if they are the majority, else those on top.
    /// Returns how many were dropped and the dropped entries (to be released by the
    /// caller outside any borrow of loop state).
    pub fn purge_cancelled(
        &mut self,
        py: Python<'_>,
        cancelled: usize,
    ) -> (usize, Vec<TimerEntry>) {
        let mut dropped = Vec::new();
        let n = self.heap.len();
        if n > MIN_SCHEDULED_FOR_COMPACTION
            && cancelled as f64 / n as f64 > CANCELLED_FRACTION_FOR_COMPACTION
        {
            let entries = std::mem::take(&mut self.heap).into_vec();
            let mut kept = Vec::with_capacity(n - cancelled.min(n));
            for e in entries {
                if e.is_cancelled(py) {
                    e.handle.get().set_scheduled(false);
                    dropped.push(e);
                } else {
                    kept.push(e);
                }
            }
            self.heap = BinaryHeap::from(kept);
        } else {
            while self.heap.peek().is_some_and(|e| e.is_cancelled(py)) {
                if let Some(e) = self.heap.pop() {
                    e.handle.get().set_scheduled(false);
                    dropped.push(e);
                }
            }
        }
        (dropped.len(), dropped)
    }
}
