//! What every native transport core shares: the link to its loop, its Python owner and its
//! protocol; the watcher handles it registers with the loop; closing, pausing and
//! flow-control state; and the error paths that go back to the owner (asyncio's
//! `_fatal_error`, `_call_connection_lost`).
//!
//! Each core keeps a `Link` inside its own state and implements `TransportCore`; the
//! functions here work on any such core.

use std::cell::{Ref, RefMut};
use std::os::fd::RawFd;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use pyo3::{PyClass, PyTraverseError, PyVisit};

pub(crate) use crate::errors::is_exit_exception;
use crate::event_loop::fds::Direction;
use crate::event_loop::LoopCore;
use crate::handles::{new_tracked, Handle};

/// asyncio's `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
pub(crate) const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

/// The references `Link::take_refs` hands back, to be dropped after the borrow ends.
pub(crate) type LinkRefs = (
    Option<Py<LoopCore>>,
    Option<Py<PyAny>>,
    Option<Py<PyAny>>,
    Option<Py<Handle>>,
    Option<Py<Handle>>,
);

/// The state every transport core has, in asyncio's names.
pub(crate) struct Link {
    /// The loop (None once released).
    pub event_loop: Option<Py<LoopCore>>,
    /// The Python transport that owns this core: what protocols and handlers are given.
    pub owner: Option<Py<PyAny>>,
    pub protocol: Option<Py<PyAny>>,
    /// Our watcher handles, kept across pause/resume; `*_registered` says whether the loop
    /// watches them now.
    pub reader: Option<Py<Handle>>,
    pub writer: Option<Py<Handle>>,
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
            reader: None,
            writer: None,
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
        visit.call(&self.reader)?;
        visit.call(&self.writer)?;
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
            self.reader.take(),
            self.writer.take(),
        )
    }

    pub fn is_reading(&self) -> bool {
        !self.paused && !self.closing
    }

    /// asyncio's `_set_write_buffer_limits`.
    pub fn set_write_buffer_limits(&mut self, high: Option<i64>, low: Option<i64>) -> PyResult<()> {
        let high = match (high, low) {
            (Some(h), _) => h,
            (None, None) => 64 * 1024,
            (None, Some(l)) => 4 * l,
        };
        let low = low.unwrap_or(high / 4);
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

/// A native transport core: a frozen pyclass with a `Link` in its state.
pub(crate) trait TransportCore:
    PyClass<Frozen = pyo3::pyclass::boolean_struct::True> + Sync
{
    /// The method the write watcher calls.
    const WRITE_READY: &'static str;

    fn fd(&self) -> RawFd;
    fn link<'a>(&'a self, py: Python<'a>) -> PyResult<Ref<'a, Link>>;
    fn link_mut<'a>(&'a self, py: Python<'a>) -> PyResult<RefMut<'a, Link>>;
}

pub(crate) fn owner<C: TransportCore>(this: &C, py: Python<'_>) -> PyResult<Py<PyAny>> {
    let link = this.link(py)?;
    Ok(link
        .owner
        .as_ref()
        .map_or_else(|| py.None(), |o| o.clone_ref(py)))
}

pub(crate) fn event_loop<C: TransportCore>(this: &C, py: Python<'_>) -> PyResult<Py<LoopCore>> {
    let link = this.link(py)?;
    link.event_loop
        .as_ref()
        .map(|l| l.clone_ref(py))
        .ok_or_else(|| PyRuntimeError::new_err("transport is closed"))
}

pub(crate) fn protocol<C: TransportCore>(this: &C, py: Python<'_>) -> PyResult<Py<PyAny>> {
    let link = this.link(py)?;
    Ok(link
        .protocol
        .as_ref()
        .map_or_else(|| py.None(), |p| p.clone_ref(py)))
}

/// Starts or stops watching one direction of the fd, reusing the core's handle.
pub(crate) fn watch<C: TransportCore>(
    slf: &Bound<'_, C>,
    dir: Direction,
    on: bool,
) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let (lp, current, registered) = {
        let link = this.link(py)?;
        let Some(lp) = link.event_loop.as_ref() else {
            return Ok(());
        };
        let (h, r) = match dir {
            Direction::Read => (&link.reader, link.reader_registered),
            Direction::Write => (&link.writer, link.writer_registered),
        };
        (lp.clone_ref(py), h.as_ref().map(|h| h.clone_ref(py)), r)
    };
    if on == registered {
        return Ok(());
    }
    let lpb = lp.bind(py).get();
    let handle = if on {
        if lpb.is_closed_flag() {
            return Err(PyRuntimeError::new_err("Event loop is closed"));
        }
        match current {
            Some(h) if !h.get().is_cancelled() => Some(h),
            _ => {
                let cb = match dir {
                    Direction::Read => slf.as_any().getattr(intern!(py, "_read_ready"))?,
                    Direction::Write => slf.as_any().getattr(C::WRITE_READY)?,
                };
                Some(new_tracked(
                    py,
                    lpb.new_handle(py, cb.into_any(), crate::handles::Args::Empty, None)?,
                )?)
            }
        }
    } else {
        None
    };
    let ours = handle.as_ref().map(|h| h.clone_ref(py));
    let replaced = lpb.set_watcher(py, this.fd(), dir, handle)?;
    let is_ours = {
        let mut guard = this.link_mut(py)?;
        let link = &mut *guard;
        let (slot, flag) = match dir {
            Direction::Read => (&mut link.reader, &mut link.reader_registered),
            Direction::Write => (&mut link.writer, &mut link.writer_registered),
        };
        *flag = on;
        if let Some(h) = ours {
            *slot = Some(h);
        }
        match (&replaced, slot.as_ref()) {
            (Some(old), Some(mine)) => mine.is(old),
            _ => true,
        }
    };
    // Someone else's watcher on our fd (not expected) is cancelled as asyncio would.
    if let (Some(old), false) = (replaced, is_ours) {
        old.bind(py).call_method0(intern!(py, "cancel"))?;
    }
    Ok(())
}

/// `owner._debug_log(message)` when the loop is in debug mode.
pub(crate) fn debug_log<C: TransportCore>(slf: &Bound<'_, C>, message: &str) -> PyResult<()> {
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

/// asyncio's `_fatal_error`, in the owner: KeyboardInterrupt and SystemExit propagate.
pub(crate) fn fatal<C: TransportCore>(
    slf: &Bound<'_, C>,
    err: PyErr,
    message: &str,
) -> PyResult<()> {
    let py = slf.py();
    if is_exit_exception(py, &err) {
        return Err(err);
    }
    let owner = owner(slf.get(), py)?;
    if owner.is_none(py) {
        // Released: connection_lost has run, and nobody is left to tell.
        return Ok(());
    }
    owner
        .bind(py)
        .call_method1(intern!(py, "_fatal_error"), (err.into_value(py), message))?;
    Ok(())
}

/// Schedules `owner._call_connection_lost(exc)` with `loop.call_soon`. From here on the
/// connection counts as lost: a later write is dropped and counted (asyncio's
/// `_conn_lost`), and `abort()` does not report the loss a second time.
pub(crate) fn schedule_connection_lost<C: TransportCore>(
    slf: &Bound<'_, C>,
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

/// Counts the connection as lost unless it already is. asyncio counts it only in
/// `close()` with nothing queued and in `_force_close`; a close that first flushes queued
/// data leaves its count at 0, so a later write reaches `self._sock.send` on a released
/// transport and raises AttributeError (3.11-3.13). Counting every path drops such writes.
pub(crate) fn mark_lost<C: TransportCore>(this: &C, py: Python<'_>) -> PyResult<()> {
    let mut link = this.link_mut(py)?;
    link.conn_lost = link.conn_lost.max(1);
    Ok(())
}

/// Calls a protocol flow-control method; failures go to the exception handler.
fn call_flow_control<C: TransportCore>(
    slf: &Bound<'_, C>,
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
pub(crate) fn maybe_pause_protocol<C: TransportCore>(slf: &Bound<'_, C>) -> PyResult<()> {
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
pub(crate) fn maybe_resume_protocol<C: TransportCore>(slf: &Bound<'_, C>) -> PyResult<()> {
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
pub(crate) fn set_write_buffer_limits<C: TransportCore>(
    slf: &Bound<'_, C>,
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
pub(crate) fn count_lost_write<C: TransportCore>(
    slf: &Bound<'_, C>,
    message: &str,
) -> PyResult<()> {
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
pub(crate) fn pause_reading<C: TransportCore>(slf: &Bound<'_, C>) -> PyResult<()> {
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
pub(crate) fn resume_reading<C: TransportCore>(slf: &Bound<'_, C>) -> PyResult<()> {
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
pub(crate) fn start_reading<C: TransportCore>(slf: &Bound<'_, C>) -> PyResult<()> {
    let reading = slf.get().link(slf.py())?.is_reading();
    if reading {
        watch(slf, Direction::Read, true)?;
    }
    Ok(())
}
