//! `NativeTransport`, the base class every native transport core extends (as asyncio's
//! `_SelectorTransport` and uvloop's `UVBaseTransport`): the link to its loop, its Python
//! owner and its protocol; the watcher handles it registers with the loop; closing,
//! aborting, pausing and flow-control state; and the error paths that go back to the owner
//! (asyncio's `_fatal_error`, `_call_connection_lost`). `StreamTransport` and
//! `DatagramTransport` extend it and add only their data paths; the methods asyncio's
//! transports share are defined here once.

use std::cell::{Ref, RefMut};
use std::os::fd::RawFd;
use std::sync::Arc;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::type_object::PyTypeCheck;
use pyo3::types::{PyDict, PyString};
use pyo3::{PyTraverseError, PyVisit};

pub(crate) use crate::errors::is_exit_exception;
use crate::event_loop::fds::{Direction, Watcher};
use crate::event_loop::metrics::{IoStats, TransportKind};
use crate::event_loop::LoopCore;
use crate::gil_cell::GilCell;
use crate::handles::{new_tracked, Args, Handle};

/// asyncio's `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
pub(crate) const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

/// The references `Link::take_refs` hands back, to be dropped after the borrow ends.
pub(crate) type LinkRefs = (
    Option<Py<LoopCore>>,
    Option<Py<PyAny>>,
    Option<Py<PyAny>>,
    Option<Py<PyAny>>,
    Option<Py<PyAny>>,
);

/// The state every transport core has, in asyncio's names.
pub(crate) struct Link {
    /// The loop (None once released).
    pub event_loop: Option<Py<LoopCore>>,
    /// The Python transport that owns this core: what protocols and handlers are given.
    pub owner: Option<Py<PyAny>>,
    pub protocol: Option<Py<PyAny>>,
    /// The `contextvars.Context` the read (write) path runs in: a copy of the context
    /// current when the loop last started watching the fd in that direction, as asyncio's
    /// `_add_reader`/`_add_writer` handle takes one. `*_registered` says
    /// whether the loop watches the fd in that direction now (`fds::Watcher::Transport`).
    pub reader_context: Option<Py<PyAny>>,
    pub writer_context: Option<Py<PyAny>>,
    pub reader_registered: bool,
    pub writer_registered: bool,
    pub closing: bool,
    pub paused: bool,
    pub conn_lost: u32,
    /// Bytes waiting to be sent (what `get_write_buffer_size` reports).
    pub queued: usize,
    pub protocol_paused: bool,
    pub high_water: usize,
    pub low_water: usize,
}

impl Link {
    pub fn new(event_loop: Py<LoopCore>, owner: Py<PyAny>) -> Self {
        Link {
            event_loop: Some(event_loop),
            owner: Some(owner),
            protocol: None,
            reader_context: None,
            writer_context: None,
            reader_registered: false,
            writer_registered: false,
            closing: false,
            paused: false,
            conn_lost: 0,
            queued: 0,
            protocol_paused: false,
            high_water: 64 * 1024,
            low_water: 16 * 1024,
        }
    }

    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        visit.call(&self.owner)?;
        visit.call(&self.protocol)?;
        visit.call(&self.reader_context)?;
        visit.call(&self.writer_context)?;
        Ok(())
    }

    /// Takes every reference out (for `__clear__` and `_release`); the caller drops them
    /// after its borrow ends. Nothing is registered with the loop afterwards.
    pub fn take_refs(&mut self) -> LinkRefs {
        self.reader_registered = false;
        self.writer_registered = false;
        (
            self.event_loop.take(),
            self.owner.take(),
            self.protocol.take(),
            self.reader_context.take(),
            self.writer_context.take(),
        )
    }

    pub fn is_reading(&self) -> bool {
        !self.paused && !self.closing
    }

    /// Whether the loop watches the fd in direction `dir` for us now.
    pub fn is_watched(&self, dir: Direction) -> bool {
        match dir {
            Direction::Read => self.reader_registered,
            Direction::Write => self.writer_registered,
        }
    }

    /// asyncio's `_set_write_buffer_limits`.
    pub fn set_write_buffer_limits(&mut self, high: Option<i64>, low: Option<i64>) -> PyResult<()> {
        let high = match (high, low) {
            (Some(h), _) => h,
            (None, None) => 64 * 1024,
            (None, Some(l)) => 4 * l,
        };
        let low = low.unwrap_or(high.div_euclid(4)); // Python's high // 4
        if !(high >= low && low >= 0) {
            return Err(PyValueError::new_err(format!(
                "high ({high}) must be >= low ({low}) must be >= 0"
            )));
        }
        self.high_water = high as usize;
        self.low_water = low as usize;
        Ok(())
    }
}

/// The base of every native transport core (see the module documentation).
#[pyclass(frozen, subclass, module = "ferroloop._ferroloop")]
pub struct NativeTransport {
    fd: RawFd,
    /// What the subclass adds: its read and write paths, and dropping its queue.
    hooks: &'static Hooks,
    link: GilCell<Link>,
    /// The loop's transport counters (`loop.metrics()`), and this transport's kind there.
    io: Arc<IoStats>,
    kind: TransportKind,
}

/// One of a subclass's hooks, called with the transport.
pub(crate) type Hook = fn(&Bound<'_, NativeTransport>) -> PyResult<()>;

/// What a core kind adds to `NativeTransport`: its read and write paths and how it drops
/// its queue. The base calls them through `HOOKS`, one static table per kind.
pub(crate) trait CoreKind: PyTypeCheck + Sized {
    /// The write path's Python name (`_write_ready`, `_sendto_ready`), which a handle made
    /// for a debug report shows.
    const WRITE_NAME: &'static str;
    /// The table `NativeTransport::new` is given.
    const HOOKS: Hooks = Hooks {
        read: read_via::<Self>,
        write: write_via::<Self>,
        write_name: Self::WRITE_NAME,
        drop_queue: drop_via::<Self>,
    };
    /// The read path, called by the loop when the fd is readable.
    fn read_ready(slf: &Bound<'_, Self>) -> PyResult<()>;
    /// The write path, called by the loop when the fd is writable.
    fn write_ready(slf: &Bound<'_, Self>) -> PyResult<()>;
    /// Drops the queued data (`_force_close`); the `Link` counts its bytes.
    fn drop_queue(slf: &Bound<'_, Self>) -> PyResult<()>;
}

fn read_via<T: CoreKind>(base: &Bound<'_, NativeTransport>) -> PyResult<()> {
    T::read_ready(base.cast::<T>()?)
}

fn write_via<T: CoreKind>(base: &Bound<'_, NativeTransport>) -> PyResult<()> {
    T::write_ready(base.cast::<T>()?)
}

fn drop_via<T: CoreKind>(base: &Bound<'_, NativeTransport>) -> PyResult<()> {
    T::drop_queue(base.cast::<T>()?)
}

/// What a subclass adds to the base (`CoreKind::HOOKS`), one static table per subclass (a
/// pointer per transport, not four).
pub(crate) struct Hooks {
    /// The read path, called by the loop when the fd is readable (`_read_ready`).
    pub read: Hook,
    /// The write path, called by the loop when the fd is writable.
    pub write: Hook,
    /// The write path's Python name (`_write_ready`, `_sendto_ready`), which a handle made
    /// for a debug report shows.
    pub write_name: &'static str,
    /// Drops the data the subclass has queued (`_force_close`); the `Link` counts its bytes.
    pub drop_queue: Hook,
}

impl NativeTransport {
    pub(crate) fn new(
        event_loop: Bound<'_, LoopCore>,
        owner: Py<PyAny>,
        fd: RawFd,
        kind: TransportKind,
        hooks: &'static Hooks,
    ) -> Self {
        let io = event_loop.get().io_stats().clone();
        io.opened(kind);
        NativeTransport {
            fd,
            hooks,
            link: GilCell::new(Link::new(event_loop.unbind(), owner)),
            io,
            kind,
        }
    }

    /// Counts `n` bytes sent by one system call (`loop.metrics()`).
    #[inline]
    pub(crate) fn count_sent(&self, n: usize) {
        self.io.sent(n);
    }

    /// Counts one read of `n` bytes (0 at EOF) (`loop.metrics()`).
    #[inline]
    pub(crate) fn count_received(&self, n: usize) {
        self.io.received(n);
    }

    /// The loop's transport counters.
    pub(crate) fn io_stats(&self) -> &IoStats {
        &self.io
    }

    /// Takes the link's references out (see `Link::take_refs`); the first time, the
    /// transport stops counting as open.
    fn take_link_refs(&self, link: &mut Link) -> LinkRefs {
        let refs = link.take_refs();
        if refs.0.is_some() {
            self.io.closed(self.kind);
        }
        refs
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.fd
    }

    /// Whether the loop watches the fd in direction `dir` for this transport now.
    pub(crate) fn is_watched(&self, py: Python<'_>, dir: Direction) -> PyResult<bool> {
        Ok(self.link(py)?.is_watched(dir))
    }

    /// Runs the read (or write) path in its context: what the loop does when the fd is
    /// ready (`event_loop::Job::Transport`). Errors the path does not handle itself
    /// (KeyboardInterrupt, SystemExit) are returned.
    pub(crate) fn run_ready(slf: &Bound<'_, Self>, dir: Direction) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let context = {
            let link = this.link(py)?;
            let context = match dir {
                Direction::Read => &link.reader_context,
                Direction::Write => &link.writer_context,
            };
            match context {
                Some(c) => c.clone_ref(py),
                None => return Ok(()), // released
            }
        };
        let path = match dir {
            Direction::Read => this.hooks.read,
            Direction::Write => this.hooks.write,
        };
        crate::handles::in_context(py, &context, || path(slf))
    }

    /// A handle standing for the read (or write) path, as asyncio's watcher handle: for
    /// debug mode's current handle and for reports (slow callback, exception handler).
    pub(crate) fn as_handle(slf: &Bound<'_, Self>, dir: Direction) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let this = slf.get();
        let path_name = match dir {
            Direction::Read => intern!(py, "_read_ready"),
            Direction::Write => &PyString::intern(py, this.hooks.write_name),
        };
        let callback = slf.as_any().getattr(path_name)?.unbind();
        let context = {
            let link = this.link(py)?;
            match dir {
                Direction::Read => link.reader_context.as_ref().map(|c| c.clone_ref(py)),
                Direction::Write => link.writer_context.as_ref().map(|c| c.clone_ref(py)),
            }
        };
        let context = match context {
            Some(c) => c,
            None => crate::event_loop::context_or_copy(py, None)?,
        };
        new_tracked(py, Handle::new(callback, Args::Empty, context, None))
    }

    pub(crate) fn link<'a>(&'a self, py: Python<'a>) -> PyResult<Ref<'a, Link>> {
        self.link.borrow(py)
    }

    pub(crate) fn link_mut<'a>(&'a self, py: Python<'a>) -> PyResult<RefMut<'a, Link>> {
        self.link.borrow_mut(py)
    }
}

pub(crate) fn owner(this: &NativeTransport, py: Python<'_>) -> PyResult<Py<PyAny>> {
    let link = this.link(py)?;
    Ok(link
        .owner
        .as_ref()
        .map_or_else(|| py.None(), |o| o.clone_ref(py)))
}

pub(crate) fn event_loop(this: &NativeTransport, py: Python<'_>) -> PyResult<Py<LoopCore>> {
    let link = this.link(py)?;
    link.event_loop
        .as_ref()
        .map(|l| l.clone_ref(py))
        .ok_or_else(|| PyRuntimeError::new_err("transport is closed"))
}

pub(crate) fn protocol(this: &NativeTransport, py: Python<'_>) -> PyResult<Py<PyAny>> {
    let link = this.link(py)?;
    Ok(link
        .protocol
        .as_ref()
        .map_or_else(|| py.None(), |p| p.clone_ref(py)))
}

/// Starts or stops watching one direction of the fd: the loop's fd table then holds this
/// transport itself (`fds::Watcher::Transport`) and calls its path when the fd is ready.
pub(crate) fn watch(slf: &Bound<'_, NativeTransport>, dir: Direction, on: bool) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let lp = {
        let link = this.link(py)?;
        let Some(lp) = link.event_loop.as_ref() else {
            return Ok(());
        };
        if link.is_watched(dir) == on {
            return Ok(());
        }
        lp.clone_ref(py)
    };
    let lpb = lp.bind(py).get();
    let watcher = if on {
        if lpb.is_closed_flag() {
            return Err(PyRuntimeError::new_err("Event loop is closed"));
        }
        // A copy of the current context each time watching starts, as asyncio's
        // `_add_reader`/`_add_writer` make a new handle (after `resume_reading()` too).
        let context = crate::event_loop::context_or_copy(py, None)?;
        let old = {
            let mut link = this.link_mut(py)?;
            let slot = match dir {
                Direction::Read => &mut link.reader_context,
                Direction::Write => &mut link.writer_context,
            };
            slot.replace(context)
        };
        drop(old);
        Some(Watcher::Transport(slf.clone().unbind()))
    } else {
        None
    };
    let replaced = lpb.set_watcher(py, this.fd(), dir, watcher)?;
    {
        let mut link = this.link_mut(py)?;
        match dir {
            Direction::Read => link.reader_registered = on,
            Direction::Write => link.writer_registered = on,
        }
    }
    // Someone else's watcher on our fd (not expected) is cancelled as asyncio would.
    match replaced {
        Some(Watcher::Transport(t)) if t.is(slf) => Ok(()),
        Some(other) => other.cancel(py, dir),
        None => Ok(()),
    }
}

/// The loop no longer watches the fd in direction `dir` for this transport (its watcher
/// was replaced or removed through the loop's own watcher methods).
pub(crate) fn unwatched(this: &NativeTransport, py: Python<'_>, dir: Direction) -> PyResult<()> {
    let mut link = this.link_mut(py)?;
    match dir {
        Direction::Read => link.reader_registered = false,
        Direction::Write => link.writer_registered = false,
    }
    Ok(())
}

/// `owner._debug_log(message)` when the loop is in debug mode.
pub(crate) fn debug_log(slf: &Bound<'_, NativeTransport>, message: &str) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let debug = match this.link(py)?.event_loop.as_ref() {
        Some(lp) => lp.bind(py).get().is_debug(),
        None => false,
    };
    if debug {
        owner(this, py)?
            .bind(py)
            .call_method1(intern!(py, "_debug_log"), (message,))?;
    }
    Ok(())
}

/// asyncio's `_SelectorTransport._fatal_error`: an OSError is logged in debug mode only
/// (the peer went away, not a bug), anything else goes to the loop's exception handler;
/// then the transport is force-closed. KeyboardInterrupt and SystemExit propagate.
pub(crate) fn fatal(slf: &Bound<'_, NativeTransport>, err: PyErr, message: &str) -> PyResult<()> {
    let py = slf.py();
    if is_exit_exception(py, &err) {
        return Err(err);
    }
    let this = slf.get();
    let (lp, owner, protocol) = {
        let link = this.link(py)?;
        let (Some(lp), Some(owner)) = (&link.event_loop, &link.owner) else {
            // Released: connection_lost has run, and nobody is left to tell.
            return Ok(());
        };
        (
            lp.clone_ref(py),
            owner.clone_ref(py),
            link.protocol
                .as_ref()
                .map_or_else(|| py.None(), |p| p.clone_ref(py)),
        )
    };
    let exc = err.into_value(py).into_bound(py).into_any();
    if exc.is_instance_of::<pyo3::exceptions::PyOSError>() {
        if lp.bind(py).get().is_debug() {
            let kwargs = PyDict::new(py);
            kwargs.set_item("exc_info", &exc)?;
            py.import(intern!(py, "asyncio.log"))?
                .getattr(intern!(py, "logger"))?
                .call_method(
                    intern!(py, "debug"),
                    ("%r: %s", &owner, message),
                    Some(&kwargs),
                )?;
        }
    } else {
        let context = PyDict::new(py);
        context.set_item("message", message)?;
        context.set_item("exception", &exc)?;
        context.set_item("transport", &owner)?;
        context.set_item("protocol", protocol)?;
        lp.bind(py)
            .call_method1(intern!(py, "call_exception_handler"), (context,))?;
    }
    force_close(slf, exc)
}

/// Schedules `owner._call_connection_lost(exc)` with `loop.call_soon`. From here on the
/// connection counts as lost: a later write is dropped and counted (asyncio's
/// `_conn_lost`), and `abort()` does not report the loss a second time.
pub(crate) fn schedule_connection_lost(
    slf: &Bound<'_, NativeTransport>,
    exc: Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    mark_lost(this, py)?;
    let lp = event_loop(this, py)?;
    let cb = owner(this, py)?
        .bind(py)
        .getattr(intern!(py, "_call_connection_lost"))?;
    lp.bind(py)
        .call_method1(intern!(py, "call_soon"), (cb, exc))?;
    Ok(())
}

/// Calls `owner._call_connection_lost(None)` now: a closing transport whose queue has just
/// been sent (asyncio's `_write_ready` / `_sendto_ready` call it directly).
pub(crate) fn connection_lost_now(this: &NativeTransport, py: Python<'_>) -> PyResult<()> {
    mark_lost(this, py)?;
    owner(this, py)?
        .bind(py)
        .call_method1(intern!(py, "_call_connection_lost"), (py.None(),))?;
    Ok(())
}

/// Counts the connection as lost unless it already is. asyncio counts it only in
/// `close()` with nothing queued and in `_force_close`; a close that first flushes queued
/// data leaves its count at 0, so a later write reaches `self._sock.send` on a released
/// transport and raises AttributeError (3.11-3.13). Counting every path drops such writes.
pub(crate) fn mark_lost(this: &NativeTransport, py: Python<'_>) -> PyResult<()> {
    let mut link = this.link_mut(py)?;
    link.conn_lost = link.conn_lost.max(1);
    Ok(())
}

/// Calls a protocol flow-control method; failures go to the exception handler.
fn call_flow_control(
    slf: &Bound<'_, NativeTransport>,
    method: &Bound<'_, PyString>,
) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let (protocol, lp) = {
        let link = this.link(py)?;
        (
            link.protocol.as_ref().map(|p| p.clone_ref(py)),
            link.event_loop.as_ref().map(|l| l.clone_ref(py)),
        )
    };
    let (Some(protocol), Some(lp)) = (protocol, lp) else {
        return Ok(());
    };
    if let Err(err) = protocol.bind(py).call_method0(method) {
        if is_exit_exception(py, &err) {
            return Err(err);
        }
        let context = PyDict::new(py);
        context.set_item("message", format!("protocol.{}() failed", method.to_str()?))?;
        context.set_item("exception", err.into_value(py))?;
        context.set_item("transport", owner(this, py)?)?;
        context.set_item("protocol", protocol)?;
        lp.bind(py)
            .call_method1(intern!(py, "call_exception_handler"), (context,))?;
    }
    Ok(())
}

/// asyncio's `_maybe_pause_protocol`.
pub(crate) fn maybe_pause_protocol(slf: &Bound<'_, NativeTransport>) -> PyResult<()> {
    let py = slf.py();
    {
        let mut link = slf.get().link_mut(py)?;
        if link.queued <= link.high_water || link.protocol_paused {
            return Ok(());
        }
        link.protocol_paused = true;
    }
    call_flow_control(slf, intern!(py, "pause_writing"))
}

/// asyncio's `_maybe_resume_protocol`.
pub(crate) fn maybe_resume_protocol(slf: &Bound<'_, NativeTransport>) -> PyResult<()> {
    let py = slf.py();
    {
        let mut link = slf.get().link_mut(py)?;
        if !(link.protocol_paused && link.queued <= link.low_water) {
            return Ok(());
        }
        link.protocol_paused = false;
    }
    call_flow_control(slf, intern!(py, "resume_writing"))
}

/// `set_write_buffer_limits`: new water marks, then pause the protocol if now above.
pub(crate) fn set_write_buffer_limits(
    slf: &Bound<'_, NativeTransport>,
    high: Option<i64>,
    low: Option<i64>,
) -> PyResult<()> {
    slf.get()
        .link_mut(slf.py())?
        .set_write_buffer_limits(high, low)?;
    maybe_pause_protocol(slf)
}

/// Counts a write made after the connection was lost, warning from the fifth on as asyncio
/// does.
pub(crate) fn count_lost_write(slf: &Bound<'_, NativeTransport>, message: &str) -> PyResult<()> {
    let py = slf.py();
    let n = {
        let mut link = slf.get().link_mut(py)?;
        link.conn_lost += 1;
        link.conn_lost - 1
    };
    if n >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
        py.import("asyncio.log")?
            .getattr("logger")?
            .call_method1("warning", (message,))?;
    }
    Ok(())
}

/// asyncio's `pause_reading`.
pub(crate) fn pause_reading(slf: &Bound<'_, NativeTransport>) -> PyResult<()> {
    {
        let mut link = slf.get().link_mut(slf.py())?;
        if !link.is_reading() {
            return Ok(());
        }
        link.paused = true;
    }
    watch(slf, Direction::Read, false)?;
    debug_log(slf, "pauses reading")
}

/// asyncio's `resume_reading`.
pub(crate) fn resume_reading(slf: &Bound<'_, NativeTransport>) -> PyResult<()> {
    {
        let mut link = slf.get().link_mut(slf.py())?;
        if link.closing || !link.paused {
            return Ok(());
        }
        link.paused = false;
    }
    watch(slf, Direction::Read, true)?;
    debug_log(slf, "resumes reading")
}

/// Starts watching for reads unless paused or closing (asyncio's deferred `_add_reader`
/// after `connection_made`).
pub(crate) fn start_reading(slf: &Bound<'_, NativeTransport>) -> PyResult<()> {
    let reading = slf.get().link(slf.py())?.is_reading();
    if reading {
        watch(slf, Direction::Read, true)?;
    }
    Ok(())
}

/// asyncio's `_force_close`: drop unsent data, stop watching, schedule connection_lost.
pub(crate) fn force_close(slf: &Bound<'_, NativeTransport>, exc: Bound<'_, PyAny>) -> PyResult<()> {
    let py = slf.py();
    {
        let mut link = slf.get().link_mut(py)?;
        if link.conn_lost > 0 {
            return Ok(());
        }
        link.queued = 0;
        link.closing = true;
        link.conn_lost += 1;
    }
    (slf.get().hooks.drop_queue)(slf)?;
    watch(slf, Direction::Write, false)?;
    // Already stopped after close() (a no-op then); a write pipe's reader watches for the
    // other end going away and stops here too.
    watch(slf, Direction::Read, false)?;
    schedule_connection_lost(slf, exc)
}

/// asyncio's `_SelectorTransport.close`: stop reading; with nothing queued, the connection
/// is lost at once, else when the queue has been sent.
pub(crate) fn close(slf: &Bound<'_, NativeTransport>) -> PyResult<()> {
    let py = slf.py();
    let empty = {
        let mut link = slf.get().link_mut(py)?;
        if link.closing {
            return Ok(());
        }
        link.closing = true;
        let empty = link.queued == 0;
        if empty {
            link.conn_lost += 1;
        }
        empty
    };
    watch(slf, Direction::Read, false)?;
    if empty {
        watch(slf, Direction::Write, false)?;
        schedule_connection_lost(slf, py.None().into_bound(py))?;
    }
    Ok(())
}

/// Drops the link's references once `connection_lost` has run (breaks the owner cycle).
pub(crate) fn release(this: &NativeTransport, py: Python<'_>) -> PyResult<()> {
    let dropped = {
        let mut link = this.link_mut(py)?;
        link.queued = 0;
        this.take_link_refs(&mut link)
    };
    drop(dropped);
    Ok(())
}

/// The methods asyncio's transports share, defined once for every native transport.
#[pymethods]
impl NativeTransport {
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self.link.borrow_for_traverse() {
            Some(link) => link.traverse(&visit),
            None => Ok(()),
        }
    }

    fn __clear__(&self) {
        Python::attach(|py| {
            let dropped = match self.link.borrow_mut(py) {
                Ok(mut link) => self.take_link_refs(&mut link),
                Err(_) => return,
            };
            drop(dropped);
        });
    }

    fn get_protocol(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        protocol(self, py)
    }

    /// Starts watching the fd for reading unless paused or closing (asyncio's deferred
    /// `_add_reader` after `connection_made`). The write-pipe transport watches for the
    /// other end closing.
    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        start_reading(slf)
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        close(slf)
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        force_close(slf, slf.py().None().into_bound(slf.py()))
    }

    fn _force_close(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        force_close(slf, exc)
    }

    /// asyncio's `_fatal_error(exc, message)` (sslproto and user code call it too).
    #[pyo3(signature = (exc, message="Fatal error on transport"))]
    fn _fatal_error(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>, message: &str) -> PyResult<()> {
        fatal(slf, PyErr::from_value(exc), message)
    }

    fn is_closing(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.link(py)?.closing)
    }

    fn is_reading(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.link(py)?.is_reading())
    }

    fn pause_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        pause_reading(slf)
    }

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        resume_reading(slf)
    }

    fn get_write_buffer_size(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.link(py)?.queued)
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(
        slf: &Bound<'_, Self>,
        high: Option<i64>,
        low: Option<i64>,
    ) -> PyResult<()> {
        set_write_buffer_limits(slf, high, low)
    }

    fn get_write_buffer_limits(&self, py: Python<'_>) -> PyResult<(usize, usize)> {
        let link = self.link(py)?;
        Ok((link.low_water, link.high_water))
    }

    #[getter]
    fn _closing(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.link(py)?.closing)
    }

    #[getter]
    fn _conn_lost(&self, py: Python<'_>) -> PyResult<u32> {
        Ok(self.link(py)?.conn_lost)
    }

    #[getter]
    fn _paused(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.link(py)?.paused)
    }

    #[getter]
    fn _protocol_paused(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.link(py)?.protocol_paused)
    }
}
