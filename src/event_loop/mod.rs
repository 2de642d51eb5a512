//! `LoopCore`: the native half of `ferroloop.Loop`.
//!
//! It owns the ready queue, the timer heap, the epoll poller and the fd watchers, and runs
//! the loop. The Python class `ferroloop.Loop` derives from it and adds the per-loop logic
//! that asyncio keeps in Python (exception handlers, executors, async generators,
//! run_until_complete).
//!
//! This file holds the state and every Python-visible method (PyO3 wants one `#[pymethods]`
//! block); the rest of `LoopCore` lives beside it: `run` (one iteration, asyncio's
//! `_run_once`), `fds` (fd watchers), `fast_call` (hand-written entry points of the hottest
//! methods), `timers`, `poller`, `clock`, `fork`.
mod clock;
pub mod fast_call;
pub(crate) mod fds;
mod fork;
pub(crate) mod metrics;
mod poller;
mod run;
mod timers;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::gil_cell::GilCell;
use crate::handles::{new_tracked, Args, Handle, TimerHandle};
use crate::transports::base::NativeTransport;
use fds::{Direction, Watchers};
use poller::{Poller, Ready};
use timers::Timers;

/// What the ready queue runs: a handle, or a native transport's read or write path (its
/// own fd watcher, see `fds::Watcher::Transport`).
pub(crate) enum Job {
    Handle(Py<Handle>),
    Transport(Py<NativeTransport>, Direction),
}

impl Job {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Job::Handle(h) => visit.call(h),
            Job::Transport(t, _) => visit.call(t),
        }
    }
}

/// A job in the ready queue, and when it became ready (monotonic seconds; 0 unless the
/// loop times callbacks, see `metrics::Level::Callbacks`).
struct Queued {
    job: Job,
    ready_at: f64,
}

/// Mutable loop state, touched only with the GIL held (see `GilCell`).
#[derive(Default)]
struct State {
    ready: VecDeque<Queued>,
    timers: Timers,
    fds: HashMap<RawFd, Watchers>,
    /// Fds registered edge-triggered for the `sock_*` operations, kept registered between
    /// operations (see `fds.rs`); whether or not an operation watches them now.
    edge: HashMap<RawFd, fds::EdgeReg>,
    /// Reused buffer for readiness reports.
    events: Vec<Ready>,
    /// The handle running now, in debug mode (asyncio's `_current_handle`).
    current_handle: Option<Py<Handle>>,
    task_factory: Option<Py<PyAny>>,
    /// Reused receive buffer (GUIDE §2.6): reads land here and become one `bytes` of exactly
    /// the size received.
    recv_buffer: Vec<u8>,
    /// `{"loop": <this loop>}`, made on first use and passed to every `Future(...)` and
    /// `Task(coro, ...)` call: building and freeing this dict per future was a fifth of
    /// `create_future`'s cost. The callees only read their keyword arguments.
    loop_kwargs: Option<Py<PyDict>>,
}

/// Python objects the hot paths call, looked up once per loop.
struct PyRefs {
    future_type: Py<PyAny>,
    task_type: Py<PyAny>,
    /// ("loop", "name", "context"): keyword names for vectorcall.
    kw_task: Py<PyTuple>,
    helpers: Py<PyModule>,
}

#[pyclass(frozen, subclass, module = "ferroloop._ferroloop")]
pub struct LoopCore {
    state: GilCell<State>,
    poller: Poller,
    refs: PyRefs,
    closed: AtomicBool,
    debug: AtomicBool,
    stopping: AtomicBool,
    /// `loop.time` is replaced (on the instance, as `mock.patch.object(loop, "time")` does,
    /// or by a subclass): timers are then scheduled and fired by calling it, as asyncio's
    /// `call_later` and `_run_once` call `self.time()`. Set by the Python layer.
    time_overridden: AtomicBool,
    /// `threading.get_ident()` of the thread running the loop, 0 when not running.
    thread_id: AtomicU64,
    slow_callback_duration: AtomicU64,
    /// Cancelled timers still in the heap; shared with every TimerHandle of this loop.
    timers_cancelled: Arc<AtomicUsize>,
    /// `fork::generation()` when the loop was made: a different value means this is a
    /// forked child, where the inherited epoll instance is the parent's.
    fork_generation: u64,
    /// What the native `sock_*` operations look up once per loop.
    sock_refs: crate::sock_ops::SockRefs,
    /// The run loop's counters (`loop.metrics()`).
    stats: metrics::LoopStats,
    /// The native transports' counters, shared with each transport.
    io_stats: Arc<metrics::IoStats>,
    /// `time.monotonic()` when the loop was made.
    created: f64,
}

fn closed_error() -> PyErr {
    PyRuntimeError::new_err("Event loop is closed")
}

fn current_thread_ident() -> u64 {
    // SAFETY: no preconditions; returns the id `threading.get_ident()` returns.
    unsafe { ffi::PyThread_get_thread_ident() as u64 }
}

/// A copy of the current context (`contextvars.copy_context()`), or the given one, which must
/// be a `contextvars.Context`.
pub(crate) fn context_or_copy(
    py: Python<'_>,
    context: Option<Bound<'_, PyAny>>,
) -> PyResult<Py<PyAny>> {
    match context {
        Some(ctx) if !ctx.is_none() => {
            // SAFETY: type check on a live object.
            if unsafe { ffi::PyContext_CheckExact(ctx.as_ptr()) } == 0 {
                return Err(PyTypeError::new_err(format!(
                    "context must be a contextvars.Context, got {}",
                    ctx.get_type().name()?
                )));
            }
            Ok(ctx.unbind())
        }
        _ => {
            // SAFETY: returns a new reference to a new Context or NULL with an error set.
            let ptr = unsafe { ffi::PyContext_CopyCurrent() };
            // SAFETY: `ptr` is an owned reference (or NULL, turned into the pending error).
            Ok(unsafe { Bound::from_owned_ptr_or_err(py, ptr)? }.unbind())
        }
    }
}

/// `PyObject_Vectorcall` with keyword arguments: `args` holds the positional values followed
/// by one value per name in `kwnames`.
fn vectorcall<'py>(
    py: Python<'py>,
    callable: &Py<PyAny>,
    args: &[*mut ffi::PyObject],
    kwnames: &Py<PyTuple>,
) -> PyResult<Bound<'py, PyAny>> {
    let nkw = kwnames.bind(py).len();
    let npos = args.len() - nkw;
    // SAFETY: every pointer in `args` is a live object borrowed from the caller for the
    // duration of the call; `kwnames` is a tuple of `nkw` str; the result is a new reference
    // or NULL with an exception set.
    unsafe {
        let res =
            ffi::PyObject_Vectorcall(callable.as_ptr(), args.as_ptr(), npos, kwnames.as_ptr());
        Bound::from_owned_ptr_or_err(py, res)
    }
}

impl LoopCore {
    fn check_closed(&self) -> PyResult<()> {
        if self.closed.load(Ordering::Relaxed) {
            Err(closed_error())
        } else {
            Ok(())
        }
    }

    /// True in a child process forked after this loop was made.
    fn crossed_fork(&self) -> bool {
        fork::generation() != self.fork_generation
    }

    fn check_not_forked(&self) -> PyResult<()> {
        if self.crossed_fork() {
            return Err(PyRuntimeError::new_err(
                "this event loop was created before os.fork() and cannot be used in the child \
                 process: close it and create a new loop there",
            ));
        }
        Ok(())
    }

    pub(crate) fn is_debug(&self) -> bool {
        self.debug.load(Ordering::Relaxed)
    }

    /// asyncio's `_check_thread` (debug mode only).
    fn check_thread(&self) -> PyResult<()> {
        let owner = self.thread_id.load(Ordering::Relaxed);
        if owner != 0 && owner != current_thread_ident() {
            return Err(PyRuntimeError::new_err(
                "Non-thread-safe operation invoked on an event loop other than the current one",
            ));
        }
        Ok(())
    }

    /// Checks done when a callback is scheduled: always that it is callable; in debug mode
    /// also the thread and that it is not a coroutine (asyncio's `_check_callback`).
    fn check_callback(
        &self,
        callback: &Bound<'_, PyAny>,
        method: &str,
        thread: bool,
    ) -> PyResult<()> {
        self.check_closed()?;
        let debug = self.is_debug();
        if debug && thread {
            self.check_thread()?;
        }
        if debug {
            self.refs
                .helpers
                .bind(callback.py())
                .call_method1("check_callback", (callback, method))?;
        }
        if !callback.is_callable() {
            return Err(PyTypeError::new_err(format!(
                "a callable object was expected by {method}(), got {}",
                callback.repr()?
            )));
        }
        Ok(())
    }

    fn source_traceback(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        if !self.is_debug() {
            return Ok(None);
        }
        Ok(Some(
            self.refs
                .helpers
                .bind(py)
                .call_method0("capture_stack")?
                .unbind(),
        ))
    }

    pub(crate) fn new_handle(
        &self,
        py: Python<'_>,
        callback: Bound<'_, PyAny>,
        args: Args,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Handle> {
        let context = context_or_copy(py, context)?;
        Ok(Handle::new(
            callback.unbind(),
            args,
            context,
            self.source_traceback(py)?,
        ))
    }

    /// The cached `{"loop": self}` keyword dict (see `State::loop_kwargs`).
    fn loop_kwargs<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
        let py = slf.py();
        let this = slf.get();
        if let Some(kw) = this.state.borrow(py)?.loop_kwargs.as_ref() {
            return Ok(kw.bind(py).clone());
        }
        let kw = PyDict::new(py);
        kw.set_item(intern!(py, "loop"), slf)?;
        this.state.borrow_mut(py)?.loop_kwargs = Some(kw.clone().unbind());
        Ok(kw)
    }

    /// `call_soon`: checks, makes the handle, queues it. Called by `fast_call`.
    pub(crate) fn schedule_callback(
        slf: &Bound<'_, Self>,
        parsed: fast_call::CallArgs<'_>,
        method: &str,
        check_thread: bool,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_callback(&parsed.callback, method, check_thread)?;
        let handle = this.new_handle(py, parsed.callback, parsed.args, parsed.context)?;
        this.schedule_soon(py, handle)
    }

    /// `call_later` (`relative`: the time is a delay) and `call_at`. Called by `fast_call`.
    pub(crate) fn schedule_timer(
        slf: &Bound<'_, Self>,
        parsed: fast_call::CallArgs<'_>,
        relative: bool,
    ) -> PyResult<Py<TimerHandle>> {
        let (method, none_error) = if relative {
            ("call_later", "delay must not be None")
        } else {
            ("call_at", "when cannot be None")
        };
        let (time, given) = match parsed.time {
            Some(t) if !t.is_none() => (t.extract::<f64>()?, t),
            _ => return Err(PyTypeError::new_err(none_error)),
        };
        // asyncio's TimerHandle keeps the `when` it was given (`call_at(12345).when()` is
        // 12345, an int); a float is kept as the f64 itself.
        let given = (!relative && !given.is_exact_instance_of::<pyo3::types::PyFloat>())
            .then(|| given.unbind());
        let this = slf.get();
        this.check_callback(&parsed.callback, method, true)?;
        let when = if relative {
            Self::now(slf)? + time
        } else {
            time
        };
        this.schedule_at(
            slf.py(),
            when,
            given,
            parsed.callback,
            parsed.args,
            parsed.context,
        )
    }

    /// `call_soon_threadsafe`: `call_soon` from any thread, waking the loop if it waits.
    pub(crate) fn schedule_threadsafe(
        slf: &Bound<'_, Self>,
        parsed: fast_call::CallArgs<'_>,
    ) -> PyResult<Py<Handle>> {
        let handle = Self::schedule_callback(slf, parsed, "call_soon_threadsafe", false)?;
        slf.get().poller.wake_if_sleeping();
        Ok(handle)
    }

    fn schedule_soon(&self, py: Python<'_>, handle: Handle) -> PyResult<Py<Handle>> {
        let handle = new_tracked(py, handle)?;
        let ready_at = self.ready_stamp();
        self.state.borrow_mut(py)?.ready.push_back(Queued {
            job: Job::Handle(handle.clone_ref(py)),
            ready_at,
        });
        Ok(handle)
    }

    /// When a callback queued now became ready: the clock, if the loop times callbacks.
    #[inline]
    fn ready_stamp(&self) -> f64 {
        if self.stats.level() == metrics::Level::Callbacks {
            clock::monotonic()
        } else {
            0.0
        }
    }

    /// The counters the native transports of this loop add to.
    pub(crate) fn io_stats(&self) -> &Arc<metrics::IoStats> {
        &self.io_stats
    }

    fn schedule_at(
        &self,
        py: Python<'_>,
        when: f64,
        given: Option<Py<PyAny>>,
        callback: Bound<'_, PyAny>,
        args: Args,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        let base = self.new_handle(py, callback, args, context)?;
        let init = PyClassInitializer::from(base).add_subclass(TimerHandle::new(
            when,
            given,
            self.timers_cancelled.clone(),
        ));
        let timer = new_tracked(py, init)?;
        timer.get().set_scheduled(true);
        self.state
            .borrow_mut(py)?
            .timers
            .push(when, timer.clone_ref(py));
        Ok(timer)
    }

    /// `RuntimeError('Event loop is closed')` once closed (asyncio's `_check_closed`).
    pub(crate) fn check_open(&self) -> PyResult<()> {
        self.check_closed()
    }

    pub(crate) fn sock_refs(&self) -> &crate::sock_ops::SockRefs {
        &self.sock_refs
    }

    pub(crate) fn is_closed_flag(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// The loop's time: the native clock, or the replaced `loop.time()`.
    pub(crate) fn now(slf: &Bound<'_, Self>) -> PyResult<f64> {
        match Self::clock_override(slf)? {
            Some(now) => Ok(now),
            None => Ok(clock::monotonic()),
        }
    }

    /// `loop.time()` when it is replaced, else None (the native clock is read where needed).
    fn clock_override(slf: &Bound<'_, Self>) -> PyResult<Option<f64>> {
        if !slf.get().time_overridden.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let py = slf.py();
        Ok(Some(
            slf.call_method0(intern!(py, "time"))?.extract::<f64>()?,
        ))
    }

    /// One `recv()` (sockets) or `read()` (pipes) of at most `max` bytes from `fd` into the
    /// loop's reused buffer, returned as one `bytes` of the size received (empty at EOF).
    /// The buffer is shared by every transport of the loop (GUIDE §2.6): no per-read
    /// allocation beyond the `bytes` handed to the protocol.
    pub(crate) fn read_to_bytes<'py>(
        &self,
        py: Python<'py>,
        fd: RawFd,
        socket: bool,
        max: usize,
    ) -> PyResult<io::Result<Bound<'py, pyo3::types::PyBytes>>> {
        self.read_into_buffer(py, max, |buf| crate::sys::read(fd, buf, socket))
    }

    /// One `recvfrom()` of at most `max` bytes from the socket `fd` into the loop's reused
    /// buffer (as `read_to_bytes`): the datagram as one `bytes`, and the sender's address as
    /// the kernel wrote it into `addr` and `addrlen` (`addrlen` is 0 when there is none).
    pub(crate) fn recvfrom_to_bytes<'py>(
        &self,
        py: Python<'py>,
        fd: RawFd,
        max: usize,
        addr: &mut libc::sockaddr_storage,
        addrlen: &mut libc::socklen_t,
    ) -> PyResult<io::Result<Bound<'py, pyo3::types::PyBytes>>> {
        self.read_into_buffer(py, max, |buf| crate::sys::recvfrom(fd, buf, addr, addrlen))
    }

    /// Runs `read` (one syscall into the given buffer of `max` bytes) on the loop's reused
    /// buffer and returns what it read as `bytes`. The buffer stays mutably borrowed, so no
    /// other read can use it meanwhile.
    fn read_into_buffer<'py>(
        &self,
        py: Python<'py>,
        max: usize,
        read: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> PyResult<io::Result<Bound<'py, pyo3::types::PyBytes>>> {
        let mut st = self.state.borrow_mut(py)?;
        if st.recv_buffer.len() < max {
            st.recv_buffer.resize(max, 0);
        }
        let got = match read(&mut st.recv_buffer[..max]) {
            Ok(n) => n.min(max),
            Err(e) => return Ok(Err(e)),
        };
        Ok(Ok(pyo3::types::PyBytes::new(py, &st.recv_buffer[..got])))
    }
}

#[pymethods]
impl LoopCore {
    /// Lets the cycle collector see the handles the loop holds (a loop referenced by its
    /// own pending callbacks is a cycle).
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Some(st) = self.state.borrow_for_traverse() else {
            return Ok(());
        };
        for q in &st.ready {
            q.job.traverse(&visit)?;
        }
        for e in st.timers.iter() {
            visit.call(&e.handle)?;
        }
        for w in st.fds.values() {
            for watcher in [&w.reader, &w.writer].into_iter().flatten() {
                watcher.traverse(&visit)?;
            }
            visit.call(&w.fileobj)?;
        }
        for e in st.edge.values() {
            visit.call(&e.owner)?;
        }
        visit.call(&st.current_handle)?;
        visit.call(&st.task_factory)?;
        visit.call(&st.loop_kwargs)?;
        drop(st);
        self.sock_refs.traverse(&visit)?;
        Ok(())
    }

    fn __clear__(&self) {
        Python::attach(|py| {
            let dropped = match self.state.borrow_mut(py) {
                Ok(mut st) => (
                    std::mem::take(&mut st.ready),
                    st.timers.take_all(),
                    std::mem::take(&mut st.fds),
                    std::mem::take(&mut st.edge),
                    st.current_handle.take(),
                    st.task_factory.take(),
                    st.loop_kwargs.take(),
                ),
                Err(_) => return,
            };
            drop(dropped);
            self.sock_refs.clear(py);
        });
    }

    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(
        py: Python<'_>,
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let asyncio = py.import("asyncio")?;
        let refs = PyRefs {
            future_type: asyncio.getattr("Future")?.unbind(),
            task_type: asyncio.getattr("Task")?.unbind(),
            kw_task: PyTuple::new(
                py,
                [
                    PyString::intern(py, "loop"),
                    PyString::intern(py, "name"),
                    PyString::intern(py, "context"),
                ],
            )?
            .unbind(),
            helpers: py.import("ferroloop._helpers")?.unbind(),
        };
        Ok(LoopCore {
            state: GilCell::new(State::default()),
            poller: Poller::new().map_err(crate::errors::os_error)?,
            refs,
            closed: AtomicBool::new(false),
            debug: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            time_overridden: AtomicBool::new(false),
            thread_id: AtomicU64::new(0),
            slow_callback_duration: AtomicU64::new(0.1f64.to_bits()),
            timers_cancelled: Arc::new(AtomicUsize::new(0)),
            fork_generation: fork::generation(),
            sock_refs: crate::sock_ops::SockRefs::new(py)?,
            stats: metrics::LoopStats::new(metrics::Level::Loop),
            io_stats: Arc::new(metrics::IoStats::default()),
            created: clock::monotonic(),
        })
    }

    /// The loop's clock: `time.monotonic()`.
    fn time(&self) -> f64 {
        clock::monotonic()
    }

    /// Tells the core whether `time()` is replaced (see `time_overridden`).
    fn _set_time_overridden(&self, overridden: bool) {
        self.time_overridden.store(overridden, Ordering::Relaxed);
    }

    fn get_debug(&self) -> bool {
        self.is_debug()
    }

    fn _set_debug_flag(&self, enabled: bool) {
        self.debug.store(enabled, Ordering::Relaxed);
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    fn is_running(&self) -> bool {
        self.thread_id.load(Ordering::Relaxed) != 0
    }

    fn _check_closed(&self) -> PyResult<()> {
        self.check_closed()
    }

    /// Stops the loop once the current iteration has run.
    fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    #[getter]
    fn _stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    #[getter]
    fn _thread_id(&self) -> Option<u64> {
        match self.thread_id.load(Ordering::Relaxed) {
            0 => None,
            id => Some(id),
        }
    }

    /// Marks the loop as running in the calling thread (`Some`) or not running (`None`).
    fn _set_running_thread(&self, running: bool) {
        let id = if running { current_thread_ident() } else { 0 };
        self.thread_id.store(id, Ordering::Relaxed);
    }

    #[getter]
    fn get_slow_callback_duration(&self) -> f64 {
        f64::from_bits(self.slow_callback_duration.load(Ordering::Relaxed))
    }

    #[setter]
    fn set_slow_callback_duration(&self, seconds: f64) {
        self.slow_callback_duration
            .store(seconds.to_bits(), Ordering::Relaxed);
    }

    #[getter]
    fn _current_handle(&self, py: Python<'_>) -> PyResult<Option<Py<Handle>>> {
        Ok(self
            .state
            .borrow(py)?
            .current_handle
            .as_ref()
            .map(|h| h.clone_ref(py)))
    }

    /// Number of timers in the heap, cancelled ones included (for tests and metrics).
    fn _timer_count(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.state.borrow(py)?.timers.len())
    }

    /// Number of callbacks waiting in the ready queue.
    fn _ready_count(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.state.borrow(py)?.ready.len())
    }

    /// The metrics level: "off", "loop" or "callbacks" (see `ferroloop.metrics`).
    fn _get_metrics_level(&self) -> &'static str {
        self.stats.level().name()
    }

    /// Sets the metrics level; ValueError for an unknown name.
    fn _set_metrics_level(&self, level: &str) -> PyResult<()> {
        let level = metrics::Level::parse(level).ok_or_else(|| {
            pyo3::exceptions::PyValueError::new_err(format!(
                "metrics level must be 'off', 'loop' or 'callbacks', not {level:?}"
            ))
        })?;
        self.stats.set_level(level);
        Ok(())
    }

    /// The native counters as a dict (`ferroloop.metrics.LoopMetrics` is made from it).
    /// Safe to call from any thread: it reads only atomics.
    fn _metrics_native<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let now = clock::monotonic();
        let stats = &self.stats;
        let io = &self.io_stats;
        let (busy, poll, longest) = stats.times_at(now);
        let d = PyDict::new(py);
        d.set_item("time", now)?;
        d.set_item("created", self.created)?;
        d.set_item("level", stats.level().name())?;
        d.set_item("iterations", stats.iterations.get())?;
        d.set_item("callbacks", stats.callbacks.get())?;
        d.set_item("busy_seconds", busy)?;
        d.set_item("poll_seconds", poll)?;
        d.set_item("longest_iteration_seconds", longest)?;
        let lag: Vec<u64> = stats.lag_buckets.iter().map(|c| c.get()).collect();
        d.set_item("lag_bounds", metrics::LAG_BOUNDS.to_vec())?;
        d.set_item("lag_counts", lag)?;
        d.set_item("lag_sum", stats.lag_sum.get())?;
        d.set_item("slow_callbacks", stats.slow_callbacks.get())?;
        d.set_item("slow_callback_seconds", stats.slow_seconds.get())?;
        d.set_item("callback_seq", stats.callback_seq.get())?;
        d.set_item("callback_started", stats.callback_started.get())?;
        d.set_item("bytes_received", io.bytes_received.get())?;
        d.set_item("bytes_sent", io.bytes_sent.get())?;
        d.set_item("reads", io.reads.get())?;
        d.set_item("writes", io.writes.get())?;
        let kinds: Vec<&str> = metrics::TransportKind::ALL
            .iter()
            .map(|k| k.name())
            .collect();
        d.set_item("transport_kinds", kinds)?;
        d.set_item("transports_open", io.open_counts().to_vec())?;
        d.set_item("transports_opened", io.opened_counts().to_vec())?;
        Ok(d)
    }

    /// `(sequence number, start time)` of the callback running now while the loop times
    /// callbacks, start time 0.0 when none runs. Any thread (the slow-callback watchdog).
    fn _current_callback(&self) -> (u64, f64) {
        (
            self.stats.callback_seq.get(),
            self.stats.callback_started.get(),
        )
    }

    /// Ready callbacks, timers in the heap, cancelled timers still in it, and fds registered
    /// with the poller (watchers, and sockets the `sock_*` operations keep registered).
    /// Loop thread only (reads the loop's state).
    fn _metrics_state(&self, py: Python<'_>) -> PyResult<(usize, usize, usize, usize)> {
        let st = self.state.borrow(py)?;
        let fds = st.fds.len() + st.edge.keys().filter(|fd| !st.fds.contains_key(fd)).count();
        Ok((
            st.ready.len(),
            st.timers.len(),
            self.timers_cancelled.load(Ordering::Relaxed),
            fds,
        ))
    }

    /// An `asyncio.Future` bound to this loop.
    pub(crate) fn create_future<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let kwargs = Self::loop_kwargs(slf)?;
        slf.get()
            .refs
            .future_type
            .bind(slf.py())
            .call((), Some(&kwargs))
    }

    /// Schedules a coroutine as an `asyncio.Task` (or the task factory's result).
    #[pyo3(signature = (coro, *, name=None, context=None))]
    fn create_task<'py>(
        slf: &Bound<'py, Self>,
        coro: Bound<'py, PyAny>,
        name: Option<Bound<'py, PyAny>>,
        context: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        let none = py.None();
        let name = name.filter(|n| !n.is_none());
        let context = context.filter(|c| !c.is_none());
        let factory = this
            .state
            .borrow(py)?
            .task_factory
            .as_ref()
            .map(|f| f.clone_ref(py));
        let Some(factory) = factory else {
            if name.is_none() && context.is_none() {
                let kwargs = Self::loop_kwargs(slf)?;
                return this.refs.task_type.bind(py).call((coro,), Some(&kwargs));
            }
            let name_ptr = name.as_ref().map_or(none.as_ptr(), |n| n.as_ptr());
            let ctx_ptr = context.as_ref().map_or(none.as_ptr(), |c| c.as_ptr());
            let args = [coro.as_ptr(), slf.as_ptr(), name_ptr, ctx_ptr];
            return vectorcall(py, &this.refs.task_type, &args, &this.refs.kw_task);
        };
        let task = match context {
            None => factory.bind(py).call1((slf, coro))?,
            Some(ctx) => {
                let kwargs = pyo3::types::PyDict::new(py);
                kwargs.set_item("context", ctx)?;
                factory.bind(py).call((slf, coro), Some(&kwargs))?
            }
        };
        if let Some(name) = name {
            this.refs
                .helpers
                .bind(py)
                .call_method1("set_task_name", (&task, name))?;
        }
        Ok(task)
    }

    fn set_task_factory(&self, py: Python<'_>, factory: Bound<'_, PyAny>) -> PyResult<()> {
        let factory = if factory.is_none() {
            None
        } else if factory.is_callable() {
            Some(factory.unbind())
        } else {
            return Err(PyTypeError::new_err(
                "task factory must be a callable or None",
            ));
        };
        let old = std::mem::replace(&mut self.state.borrow_mut(py)?.task_factory, factory);
        drop(old);
        Ok(())
    }

    fn get_task_factory(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        Ok(self
            .state
            .borrow(py)?
            .task_factory
            .as_ref()
            .map(|f| f.clone_ref(py)))
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn add_reader(
        slf: &Bound<'_, Self>,
        fd: Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        Self::add_watcher(slf, &fd, Direction::Read, "add_reader", callback, args).map(drop)
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn add_writer(
        slf: &Bound<'_, Self>,
        fd: Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        Self::add_watcher(slf, &fd, Direction::Write, "add_writer", callback, args).map(drop)
    }

    /// `add_reader` returning the watcher's handle (asyncio's `_add_reader`).
    #[pyo3(signature = (fd, callback, *args))]
    fn _add_reader(
        slf: &Bound<'_, Self>,
        fd: Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        Self::add_watcher(slf, &fd, Direction::Read, "add_reader", callback, args)
    }

    /// `add_writer` returning the watcher's handle (asyncio's `_add_writer`).
    #[pyo3(signature = (fd, callback, *args))]
    fn _add_writer(
        slf: &Bound<'_, Self>,
        fd: Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        Self::add_watcher(slf, &fd, Direction::Write, "add_writer", callback, args)
    }

    fn remove_reader(slf: &Bound<'_, Self>, fd: Bound<'_, PyAny>) -> PyResult<bool> {
        Self::remove_watcher(slf, &fd, Direction::Read)
    }

    fn remove_writer(slf: &Bound<'_, Self>, fd: Bound<'_, PyAny>) -> PyResult<bool> {
        Self::remove_watcher(slf, &fd, Direction::Write)
    }

    /// `remove_reader` without the Python layer's transport check (asyncio's `_remove_reader`).
    fn _remove_reader(slf: &Bound<'_, Self>, fd: Bound<'_, PyAny>) -> PyResult<bool> {
        Self::remove_watcher(slf, &fd, Direction::Read)
    }

    /// `remove_writer` without the Python layer's transport check (asyncio's `_remove_writer`).
    fn _remove_writer(slf: &Bound<'_, Self>, fd: Bound<'_, PyAny>) -> PyResult<bool> {
        Self::remove_watcher(slf, &fd, Direction::Write)
    }

    // The low-level socket API (`src/sock_ops.rs`): native on plain sockets, asyncio's
    // Python path (`_sock.py`) otherwise. `sock_connect` itself is `_sock.py`'s (it resolves
    // the address first); its connect step is `_sock_connect_resolved`.

    fn sock_recv<'py>(
        slf: &Bound<'py, Self>,
        sock: Bound<'py, PyAny>,
        n: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::sock_ops::sock_recv(slf, sock, n)
    }

    fn sock_recv_into<'py>(
        slf: &Bound<'py, Self>,
        sock: Bound<'py, PyAny>,
        buf: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::sock_ops::sock_recv_into(slf, sock, buf)
    }

    fn sock_recvfrom<'py>(
        slf: &Bound<'py, Self>,
        sock: Bound<'py, PyAny>,
        bufsize: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::sock_ops::sock_recvfrom(slf, sock, bufsize)
    }

    #[pyo3(signature = (sock, buf, nbytes=None))]
    fn sock_recvfrom_into<'py>(
        slf: &Bound<'py, Self>,
        sock: Bound<'py, PyAny>,
        buf: Bound<'py, PyAny>,
        nbytes: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let nbytes = nbytes.unwrap_or_else(|| pyo3::types::PyInt::new(slf.py(), 0).into_any());
        crate::sock_ops::sock_recvfrom_into(slf, sock, buf, nbytes)
    }

    fn sock_sendall<'py>(
        slf: &Bound<'py, Self>,
        sock: Bound<'py, PyAny>,
        data: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::sock_ops::sock_sendall(slf, sock, data)
    }

    fn sock_sendto<'py>(
        slf: &Bound<'py, Self>,
        sock: Bound<'py, PyAny>,
        data: Bound<'py, PyAny>,
        address: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::sock_ops::sock_sendto(slf, sock, data, address)
    }

    fn sock_accept<'py>(
        slf: &Bound<'py, Self>,
        sock: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::sock_ops::sock_accept(slf, sock)
    }

    fn _sock_connect_resolved<'py>(
        slf: &Bound<'py, Self>,
        sock: Bound<'py, PyAny>,
        address: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::sock_ops::sock_connect_resolved(slf, sock, address)
    }

    /// The events watched for `fd` as selectors' EVENT_READ (1) | EVENT_WRITE (2), or None.
    fn _fd_events(&self, py: Python<'_>, fd: RawFd) -> PyResult<Option<u32>> {
        let st = self.state.borrow(py)?;
        Ok(st
            .fds
            .get(&fd)
            .map(|w| u32::from(w.reader.is_some()) | (u32::from(w.writer.is_some()) << 1)))
    }

    /// One iteration of the loop: wait for I/O or the next timer, then run what is ready.
    fn _run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.stats.level() >= metrics::Level::Loop {
            this.stats.iterations.add(1);
        }
        // Announce a possible sleep before anything that may run Python code (and so let
        // another thread queue work): that thread will then wake us.
        this.poller.set_sleeping(true);
        let (timeout_ms, must_poll, events) =
            match this.prepare_wait(py, Self::clock_override(slf)?) {
                Ok(w) => w,
                Err(e) => {
                    this.poller.set_sleeping(false);
                    return Err(e);
                }
            };
        if must_poll {
            this.poll(py, timeout_ms, events)?;
        } else {
            this.poller.set_sleeping(false);
            this.state.borrow_mut(py)?.events = events;
        }
        this.queue_due_timers(py, Self::clock_override(slf)?)?;
        Self::run_ready(slf)
    }

    /// Runs iterations until `stop()` is called or a callback raises KeyboardInterrupt or
    /// SystemExit (which propagate). The Python `run_forever` wraps this with the
    /// per-run setup (running loop, async generator hooks).
    fn _run_forever_native(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        this.check_not_forked()?;
        this.stats.started(clock::monotonic());
        let result = loop {
            if let Err(e) = Self::_run_once(slf) {
                break Err(e);
            }
            if this.stopping.load(Ordering::Relaxed) {
                break Ok(());
            }
        };
        this.stats.stopped(clock::monotonic());
        this.stopping.store(false, Ordering::Relaxed);
        result
    }

    /// Closes the native side: drops queued callbacks and timers, closes epoll.
    fn _close_native(&self, py: Python<'_>) -> PyResult<()> {
        if self.closed.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        let dropped = {
            let mut st = self.state.borrow_mut(py)?;
            self.timers_cancelled.store(0, Ordering::Relaxed);
            (
                std::mem::take(&mut st.ready),
                st.timers.take_all(),
                std::mem::take(&mut st.fds),
                std::mem::take(&mut st.edge),
            )
        };
        self.poller.close();
        drop(dropped);
        Ok(())
    }
}
