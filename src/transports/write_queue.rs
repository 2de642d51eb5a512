//! `WriteQueue`: a stream transport's unsent data, kept behind one pointer until the first
//! write the kernel does not take at once.
//!
//! Writes go to the kernel inside `write()` (asyncio's semantics), so most connections
//! never queue anything: an idle or always-flushed connection pays 8 bytes for its queue
//! instead of the 40 of an inline `VecDeque` and offset (measured per idle connection, issue
//! 11). Once made, the box is kept for the connection's life: a connection that filled the
//! kernel's buffer once will likely do it again.

use std::collections::VecDeque;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

#[derive(Default)]
struct Pending {
    chunks: VecDeque<Py<PyBytes>>,
    /// How much of the first chunk has been sent.
    head: usize,
}

/// Whole `bytes` objects waiting to be sent, the first one sent up to `head()`.
#[derive(Default)]
pub(crate) struct WriteQueue(Option<Box<Pending>>);

impl WriteQueue {
    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|p| p.chunks.is_empty())
    }

    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |p| p.chunks.len())
    }

    /// How much of the first chunk has been sent (0 when empty).
    pub fn head(&self) -> usize {
        self.0.as_ref().map_or(0, |p| p.head)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Py<PyBytes>> {
        self.0.iter().flat_map(|p| p.chunks.iter())
    }

    pub fn front(&self) -> Option<&Py<PyBytes>> {
        self.0.as_ref().and_then(|p| p.chunks.front())
    }

    /// Appends a chunk; `sent` bytes of it already went out if the queue was empty.
    pub fn push_back(&mut self, chunk: Py<PyBytes>, sent: usize) {
        let pending = self.0.get_or_insert_with(Box::default);
        if pending.chunks.is_empty() {
            pending.head = sent;
        }
        pending.chunks.push_back(chunk);
    }

    /// Counts `n` more bytes of the first chunk as sent (less than what is left of it).
    pub fn advance_head(&mut self, n: usize) {
        if let Some(p) = self.0.as_mut() {
            p.head += n;
        }
    }

    /// Drops the first chunk (all of it sent); the next starts unsent.
    pub fn pop_front(&mut self) -> Option<Py<PyBytes>> {
        let p = self.0.as_mut()?;
        p.head = 0;
        p.chunks.pop_front()
    }

    /// Takes every chunk out (for the caller to drop outside any borrow); the queue is
    /// empty afterwards.
    pub fn take(&mut self) -> VecDeque<Py<PyBytes>> {
        match self.0.as_mut() {
            Some(p) => {
                p.head = 0;
                std::mem::take(&mut p.chunks)
            }
            None => VecDeque::new(),
        }
    }
}
