//! One iteration of the loop, asyncio's `BaseEventLoop._run_once`: drop cancelled timers and
//! compute the wait, poll (releasing the GIL if the wait may block), queue the ready fds'
//! watchers and the due timers, then run what was ready when the iteration began.

use std::io;
use std::sync::atomic::Ordering;

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::prelude::*;

use super::clock;
use super::poller::Ready;
use super::timers::TimerEntry;
use super::LoopCore;
use crate::handles::{Handle, Runnable};

impl LoopCore {
    /// Drops cancelled timers from the heap and says how long the next wait may last
    /// (milliseconds, -1 for no limit).
    /// `now`: the replaced `loop.time()`, if it is replaced.
    pub(super) fn prepare_wait(
        &self,
        py: Python<'_>,
        now: Option<f64>,
    ) -> PyResult<(i32, bool, Vec<Ready>)> {
        // An Option, so that the common case (nothing cancelled) has no Vec to drop.
        let mut dropped: Option<Vec<TimerEntry>> = None;
        let result = {
            let mut st = self.state.borrow_mut(py)?;
            let cancelled = self.timers_cancelled.load(Ordering::Relaxed);
            if cancelled > 0 {
                let (n, gone) = st.timers.purge_cancelled(py, cancelled);
                self.timers_cancelled
                    .store(cancelled.saturating_sub(n), Ordering::Relaxed);
                dropped = Some(gone);
            }
            let timeout = if !st.ready.is_empty() || self.stopping.load(Ordering::Relaxed) {
                0
            } else if let Some(when) = st.timers.peek_when() {
                clock::wait_millis(when - now.unwrap_or_else(clock::monotonic))
            } else {
                -1
            };
            let must_poll = timeout != 0 || !st.fds.is_empty();
            (timeout, must_poll, std::mem::take(&mut st.events))
        };
        drop(dropped);
        Ok(result)
    }

    /// Waits for I/O (releasing the GIL if the wait may block) and queues the watchers of
    /// the ready fds.
    pub(super) fn poll(
        &self,
        py: Python<'_>,
        timeout_ms: i32,
        mut events: Vec<Ready>,
    ) -> PyResult<()> {
        let result = if timeout_ms == 0 {
            self.poller.wait(&mut events, 0)
        } else {
            let poller = &self.poller;
            let (result, ev) = py.detach(move || {
                let r = poller.wait(&mut events, timeout_ms);
                (r, events)
            });
            events = ev;
            result
        };
        self.poller.set_sleeping(false);
        match result {
            Ok(_) => self.queue_io_callbacks(py, events),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                self.state.borrow_mut(py)?.events = events;
                // Run Python's signal handlers now (PEP 475): KeyboardInterrupt surfaces here.
                py.check_signals()
            }
            Err(e) => {
                self.state.borrow_mut(py)?.events = events;
                Err(crate::errors::os_error(e))
            }
        }
    }

    /// Moves due timers to the ready queue.
    pub(super) fn queue_due_timers(&self, py: Python<'_>, now: Option<f64>) -> PyResult<()> {
        let mut dropped: Vec<TimerEntry> = Vec::new();
        {
            let mut st = self.state.borrow_mut(py)?;
            if st.timers.len() == 0 {
                // No clock read when there is no timer: a measurable share of a busy loop.
                return Ok(());
            }
            let end = now.unwrap_or_else(clock::monotonic) + clock::RESOLUTION;
            while st.timers.peek_when().is_some_and(|when| when < end) {
                let Some(entry) = st.timers.pop() else { break };
                entry.handle.get().set_scheduled(false);
                if entry.is_cancelled(py) {
                    let n = self.timers_cancelled.load(Ordering::Relaxed);
                    self.timers_cancelled
                        .store(n.saturating_sub(1), Ordering::Relaxed);
                    dropped.push(entry);
                } else {
                    let handle = entry.handle.into_bound(py).into_super().unbind();
                    st.ready.push_back(handle);
                }
            }
        }
        drop(dropped);
        Ok(())
    }

    /// Runs the handles that were ready when this iteration began.
    pub(super) fn run_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let ntodo = this.state.borrow(py)?.ready.len();
        for _ in 0..ntodo {
            let Some(handle) = this.state.borrow_mut(py)?.ready.pop_front() else {
                break;
            };
            let Some(runnable) = handle.get().runnable(py)? else {
                continue;
            };
            let outcome = if this.is_debug() {
                Self::run_timed(slf, &handle, &runnable)
            } else {
                Handle::run_runnable(py, &runnable)
            };
            if let Err(err) = outcome {
                Self::report_callback_error(slf, &handle, err)?;
            }
        }
        Ok(())
    }

    /// Debug-mode run: records the current handle and warns about slow callbacks.
    pub(super) fn run_timed(
        slf: &Bound<'_, Self>,
        handle: &Py<Handle>,
        runnable: &Runnable,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.state.borrow_mut(py)?.current_handle = Some(handle.clone_ref(py));
        let t0 = clock::monotonic();
        let outcome = Handle::run_runnable(py, runnable);
        let elapsed = clock::monotonic() - t0;
        let previous = this.state.borrow_mut(py)?.current_handle.take();
        drop(previous);
        let slow = f64::from_bits(this.slow_callback_duration.load(Ordering::Relaxed));
        if elapsed >= slow {
            slf.call_method1("_log_slow_callback", (handle.clone_ref(py), elapsed))?;
        }
        outcome
    }

    /// KeyboardInterrupt and SystemExit leave the loop; anything else goes to the
    /// exception handler and the loop goes on (asyncio's `Handle._run`).
    pub(super) fn report_callback_error(
        slf: &Bound<'_, Self>,
        handle: &Py<Handle>,
        err: PyErr,
    ) -> PyResult<()> {
        let py = slf.py();
        if err.is_instance_of::<PyKeyboardInterrupt>(py) || err.is_instance_of::<PySystemExit>(py) {
            return Err(err);
        }
        slf.call_method1(
            "_report_callback_exception",
            (handle.clone_ref(py), err.into_value(py)),
        )?;
        Ok(())
    }
}
