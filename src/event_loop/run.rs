//! One iteration of the loop, asyncio's `BaseEventLoop._run_once`: drop cancelled timers and
//! compute the wait, poll (releasing the GIL if the wait may block), queue the ready fds'
//! watchers and the due timers, then run what was ready when the iteration began.

use std::io;
use std::sync::atomic::Ordering;

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::prelude::*;

use super::clock;
use super::metrics::Level;
use super::poller::Ready;
use super::timers::TimerEntry;
use super::{Job, LoopCore, Queued};
use crate::handles::{Handle, Runnable};
use crate::transports::base::NativeTransport;

/// What a job runs, taken out just before it runs.
pub(super) enum Runner {
    /// A handle's callback, arguments and context.
    Handle(Runnable),
    /// A transport's read or write path (the job says which).
    Transport,
}

impl Job {
    /// What to run; None if the handle was cancelled, or the transport is no longer
    /// watched in that direction (asyncio cancels the watcher handle then), since the job
    /// was queued.
    pub(super) fn runner(&self, py: Python<'_>) -> PyResult<Option<Runner>> {
        match self {
            Job::Handle(h) => Ok(h.get().runnable(py)?.map(Runner::Handle)),
            Job::Transport(t, dir) => {
                Ok(t.get().is_watched(py, *dir)?.then_some(Runner::Transport))
            }
        }
    }

    pub(super) fn run(&self, py: Python<'_>, runner: &Runner) -> PyResult<()> {
        match (self, runner) {
            (Job::Transport(t, dir), Runner::Transport) => {
                NativeTransport::run_ready(t.bind(py), *dir)
            }
            (_, Runner::Handle(r)) => Handle::run_runnable(py, r),
            (Job::Handle(_), Runner::Transport) => Ok(()),
        }
    }

    /// The handle asyncio would show for this job (debug mode's current handle, reports).
    pub(super) fn handle(&self, py: Python<'_>) -> PyResult<Py<Handle>> {
        match self {
            Job::Handle(h) => Ok(h.clone_ref(py)),
            Job::Transport(t, dir) => NativeTransport::as_handle(t.bind(py), *dir),
        }
    }
}

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
    /// the ready fds. Counts the time spent blocked (see `metrics`).
    pub(super) fn poll(
        &self,
        py: Python<'_>,
        timeout_ms: i32,
        mut events: Vec<Ready>,
    ) -> PyResult<()> {
        let level = self.stats.level();
        let blocking = timeout_ms != 0;
        let before = if level >= Level::Loop {
            let now = clock::monotonic();
            self.stats.before_poll(now, blocking);
            now
        } else {
            0.0
        };
        // The GIL is released for every poll, a non-blocking one too, as asyncio's
        // `selector.select(0)` and uvloop's `uv_run` release it: a thread waiting for the GIL
        // (an executor worker finishing) runs at the next poll of a busy loop rather than at
        // the interpreter's next forced switch (5 ms), and programs that rely on that
        // hand-off (anyio's worker threads letting go of the loop) behave as on asyncio.
        let poller = &self.poller;
        let (result, ev) = py.detach(move || {
            let r = poller.wait(&mut events, timeout_ms);
            (r, events)
        });
        events = ev;
        self.poller.set_sleeping(false);
        // When the ready fds' callbacks became ready, for the lag histogram.
        let mut ready_at = 0.0;
        if level >= Level::Loop {
            ready_at = before;
            if blocking {
                ready_at = clock::monotonic();
                self.stats.after_blocking_poll(ready_at);
            }
        }
        if level < Level::Callbacks {
            ready_at = 0.0;
        }
        match result {
            Ok(_) => self.queue_io_callbacks(py, events, ready_at),
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
            let clock_now = now.unwrap_or_else(clock::monotonic);
            let end = clock_now + clock::RESOLUTION;
            // A timer became ready at its deadline; with a replaced `loop.time()` (another
            // clock) at the time it is queued.
            let timed = self.stats.level() == Level::Callbacks;
            let queued_at = match (timed, now) {
                (true, Some(_)) => clock::monotonic(),
                _ => 0.0,
            };
            while st.timers.peek_when().is_some_and(|when| when < end) {
                let Some(entry) = st.timers.pop() else { break };
                entry.handle.get().set_scheduled(false);
                if entry.is_cancelled(py) {
                    let n = self.timers_cancelled.load(Ordering::Relaxed);
                    self.timers_cancelled
                        .store(n.saturating_sub(1), Ordering::Relaxed);
                    dropped.push(entry);
                } else {
                    let ready_at = match (timed, now) {
                        (true, None) => entry.when,
                        _ => queued_at,
                    };
                    let handle = entry.handle.into_bound(py).into_super().unbind();
                    st.ready.push_back(Queued {
                        job: Job::Handle(handle),
                        ready_at,
                    });
                }
            }
        }
        drop(dropped);
        Ok(())
    }

    /// Runs the jobs that were ready when this iteration began.
    pub(super) fn run_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        if this.is_debug() || this.stats.level() == Level::Callbacks {
            return Self::run_ready_timed(slf);
        }
        let py = slf.py();
        let ntodo = this.state.borrow(py)?.ready.len();
        let mut ran = 0;
        for _ in 0..ntodo {
            let Some(queued) = this.state.borrow_mut(py)?.ready.pop_front() else {
                break;
            };
            let Some(runner) = queued.job.runner(py)? else {
                continue;
            };
            ran += 1;
            if let Err(err) = queued.job.run(py, &runner) {
                Self::report_callback_error(slf, &queued.job, err)?;
            }
        }
        if this.stats.level() >= Level::Loop {
            this.stats.callbacks.add(ran);
        }
        Ok(())
    }

    /// `run_ready` reading the clock around each callback: in debug mode (the current
    /// handle, asyncio's slow-callback warning) and at `Level::Callbacks` (lag histogram,
    /// slow callbacks counted and recorded).
    fn run_ready_timed(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let ntodo = this.state.borrow(py)?.ready.len();
        let mut last_end = clock::monotonic();
        for _ in 0..ntodo {
            let Some(queued) = this.state.borrow_mut(py)?.ready.pop_front() else {
                break;
            };
            let Some(runner) = queued.job.runner(py)? else {
                continue;
            };
            let (outcome, end) = Self::run_timed(slf, &queued, &runner, last_end)?;
            last_end = end;
            if let Err(err) = outcome {
                Self::report_callback_error(slf, &queued.job, err)?;
            }
        }
        Ok(())
    }

    /// Runs one job that started at `start`; returns its outcome and when it ended.
    fn run_timed(
        slf: &Bound<'_, Self>,
        queued: &Queued,
        runner: &Runner,
        start: f64,
    ) -> PyResult<(PyResult<()>, f64)> {
        let py = slf.py();
        let this = slf.get();
        let stats = &this.stats;
        let counting = stats.level() >= Level::Loop;
        let debug = this.is_debug();
        if debug {
            this.state.borrow_mut(py)?.current_handle = Some(queued.job.handle(py)?);
        }
        if queued.ready_at > 0.0 {
            stats.observe_lag(start - queued.ready_at);
        }
        stats.callback_seq.add(1);
        stats.callback_started.set(start);
        let outcome = queued.job.run(py, runner);
        let end = clock::monotonic();
        stats.callback_started.set(0.0);
        if counting {
            stats.callbacks.add(1);
        }
        if debug {
            let previous = this.state.borrow_mut(py)?.current_handle.take();
            drop(previous);
        }
        let elapsed = end - start;
        let slow = f64::from_bits(this.slow_callback_duration.load(Ordering::Relaxed));
        if elapsed >= slow {
            if counting {
                stats.slow_callbacks.add(1);
                stats.slow_seconds.add(elapsed);
            }
            slf.call_method1(
                "_on_slow_callback",
                (queued.job.handle(py)?, elapsed, stats.callback_seq.get()),
            )?;
        }
        Ok((outcome, end))
    }

    /// KeyboardInterrupt and SystemExit leave the loop; anything else goes to the
    /// exception handler and the loop goes on (asyncio's `Handle._run`).
    pub(super) fn report_callback_error(
        slf: &Bound<'_, Self>,
        job: &Job,
        err: PyErr,
    ) -> PyResult<()> {
        let py = slf.py();
        if err.is_instance_of::<PyKeyboardInterrupt>(py) || err.is_instance_of::<PySystemExit>(py) {
            return Err(err);
        }
        slf.call_method1(
            "_report_callback_exception",
            (job.handle(py)?, err.into_value(py)),
        )?;
        Ok(())
    }
}
