//! `StreamTransport`: the native read and write paths of ferroloop's byte-stream transports
//! (TCP and Unix sockets, and the two halves of a pipe).
//!
//! Semantics are CPython 3.11's `selector_events._SelectorSocketTransport` and
//! `unix_events._UnixReadPipeTransport`/`_UnixWritePipeTransport`. The Python classes in
//! `ferroloop._transports` subclass `asyncio.Transport` (so `isinstance` holds) and own one
//! of these cores; what runs once per connection or per error stays there (extra info,
//! `_fatal_error`, `_call_connection_lost`, repr), what runs per read or write is here:
//!
//! - reads land in the loop's reused buffer and reach the protocol as one `bytes`
//!   (`data_received`), or go straight into the buffer a `BufferedProtocol` lends;
//! - writes try the fd first; only what the kernel does not take is queued (the `bytes`
//!   objects themselves, no copy) and flushed with one `writev` when the fd is writable;
//! - flow control calls `pause_writing`/`resume_writing` at the water marks.
//!
//! The core registers its own watcher handles with the loop and keeps them for reuse, so a
//! watcher may run once after it was removed in the same iteration: `_read_ready` and
//! `_write_ready` check that they are still registered before touching the fd.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

use pyo3::exceptions::{
    PyKeyboardInterrupt, PyRuntimeError, PySystemExit, PyTypeError, PyValueError,
};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView};
use pyo3::{PyTraverseError, PyVisit};

use crate::errors::os_error;
use crate::event_loop::fds::Direction;
use crate::event_loop::LoopCore;
use crate::gil_cell::GilCell;
use crate::handles::{new_tracked, Handle};

/// asyncio's `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;
/// Largest single read (asyncio's `max_size`); the loop's buffer is reused, so this costs
/// no allocation per read.
const MAX_READ: usize = 256 * 1024;
/// A read at least this large switches the transport to reading into fresh `bytes`.
const BULK_THRESHOLD: usize = 32 * 1024;
/// Size of a fresh `bytes` for bulk reads: just under glibc's initial 128 KiB mmap
/// threshold, so the allocation and the shrink after the read stay on the heap.
const BULK_READ: usize = 128 * 1024 - 512;
/// Linux's default pipe capacity; reads this large mean the pipe is the bottleneck.
const DEFAULT_PIPE_CAPACITY: usize = 64 * 1024;
/// Capacity a bulk pipe is raised to (the unprivileged maximum, `fs.pipe-max-size`).
const BULK_PIPE_CAPACITY: libc::c_int = 1024 * 1024;
/// Queued bytes on a write pipe that count as a bulk transfer.
const BULK_PIPE_QUEUE: usize = 256 * 1024;
/// At most this many queued chunks per `writev`.
const MAX_IOVECS: usize = 64;

/// Which asyncio transport this core implements: the syscalls and the few places where
/// asyncio's socket and pipe transports differ.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `_SelectorSocketTransport`: recv/send, half-close with `shutdown(SHUT_WR)`.
    Socket,
    /// `_UnixReadPipeTransport`: read(); EOF closes the transport.
    ReadPipe,
    /// `_UnixWritePipeTransport`: write(); `write_eof` closes; a reader watches for the
    /// other end going away.
    WritePipe,
}

impl Kind {
    fn parse(name: &str) -> PyResult<Self> {
        match name {
            "socket" => Ok(Kind::Socket),
            "read_pipe" => Ok(Kind::ReadPipe),
            "write_pipe" => Ok(Kind::WritePipe),
            _ => Err(PyValueError::new_err(format!(
                "unknown transport kind {name:?}"
            ))),
        }
    }

    fn read_error_message(self) -> &'static str {
        match self {
            Kind::Socket => "Fatal read error on socket transport",
            _ => "Fatal read error on pipe transport",
        }
    }

    fn write_error_message(self) -> &'static str {
        match self {
            Kind::Socket => "Fatal write error on socket transport",
            _ => "Fatal write error on pipe transport",
        }
    }
}

struct State {
    /// The loop (None once released).
    event_loop: Option<Py<LoopCore>>,
    /// The Python transport that owns this core: what protocols and handlers are given.
    owner: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    /// `protocol.data_received`, or `protocol.get_buffer` for a BufferedProtocol.
    on_data: Option<Py<PyAny>>,
    /// `protocol.buffer_updated` for a BufferedProtocol, else None.
    on_buffer_updated: Option<Py<PyAny>>,
    protocol_connected: bool,
    /// Our watcher handles, kept across pause/resume; `*_registered` says whether the loop
    /// watches them now.
    reader: Option<Py<Handle>>,
    writer: Option<Py<Handle>>,
    reader_registered: bool,
    writer_registered: bool,
    /// Unsent data: whole `bytes` objects, the first one sent up to `head`.
    queue: VecDeque<Py<PyBytes>>,
    head: usize,
    queued: usize,
    closing: bool,
    eof: bool,
    paused: bool,
    conn_lost: u32,
    protocol_paused: bool,
    high_water: usize,
    low_water: usize,
    /// The future `loop.sendfile` waits on for the buffer to drain (asyncio's
    /// `_empty_waiter`).
    empty_waiter: Option<Py<PyAny>>,
    /// Large reads lately: read straight into a fresh `bytes` (see `read_fresh_bytes`).
    bulk: bool,
    /// Consecutive reads that took a whole default-sized pipe buffer.
    full_pipe_reads: u8,
    /// Whether the pipe's capacity was already raised (or tried).
    pipe_grown: bool,
}

#[pyclass(frozen, module = "ferroloop._ferroloop")]
pub struct StreamTransport {
    fd: RawFd,
    kind: Kind,
    state: GilCell<State>,
}

fn is_exit_exception(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyKeyboardInterrupt>(py) || err.is_instance_of::<PySystemExit>(py)
}

/// `f(arg)` through the one-argument fast call.
fn call_one<'py>(
    py: Python<'py>,
    f: &Py<PyAny>,
    arg: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: both objects are live for the duration of the call; the result is a new
    // reference or NULL with an exception set.
    unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyObject_CallOneArg(f.as_ptr(), arg.as_ptr())) }
}

/// Whether a failed syscall only means "not now".
fn would_block(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

impl StreamTransport {
    fn event_loop(&self, py: Python<'_>) -> PyResult<Py<LoopCore>> {
        let st = self.state.borrow(py)?;
        st.event_loop
            .as_ref()
            .map(|l| l.clone_ref(py))
            .ok_or_else(|| PyRuntimeError::new_err("transport is closed"))
    }

    fn owner(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let st = self.state.borrow(py)?;
        Ok(st
            .owner
            .as_ref()
            .map_or_else(|| py.None(), |o| o.clone_ref(py)))
    }

    /// `send()` (sockets, without SIGPIPE) or `write()` (pipes) of `data`; EINTR retried.
    fn send(&self, data: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `data` is a live byte slice for the duration of the call; the kernel
            // only reads `data.len()` bytes from it.
            let n = unsafe {
                match self.kind {
                    Kind::Socket => libc::send(
                        self.fd,
                        data.as_ptr().cast(),
                        data.len(),
                        libc::MSG_NOSIGNAL,
                    ),
                    _ => libc::write(self.fd, data.as_ptr().cast(), data.len()),
                }
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// Sends as much of the queue as the kernel takes (one `writev`/`sendmsg` per
    /// `MAX_IOVECS` chunks). `Ok` with data left means the kernel is full.
    fn flush(&self, py: Python<'_>, st: &mut State) -> io::Result<()> {
        while !st.queue.is_empty() {
            let mut iov: Vec<libc::iovec> = Vec::with_capacity(st.queue.len().min(MAX_IOVECS));
            let mut offered = 0usize;
            for (i, chunk) in st.queue.iter().take(MAX_IOVECS).enumerate() {
                let bytes = chunk.as_bytes(py);
                let part = if i == 0 { &bytes[st.head..] } else { bytes };
                offered += part.len();
                iov.push(libc::iovec {
                    iov_base: part.as_ptr() as *mut _,
                    iov_len: part.len(),
                });
            }
            let sent = loop {
                // SAFETY: every iovec points into a `bytes` object held by the queue, which
                // is not modified during the call; the kernel only reads from them.
                let n = unsafe {
                    match self.kind {
                        Kind::Socket => {
                            let mut msg: libc::msghdr = std::mem::zeroed();
                            msg.msg_iov = iov.as_mut_ptr();
                            msg.msg_iovlen = iov.len() as _;
                            libc::sendmsg(self.fd, &msg, libc::MSG_NOSIGNAL)
                        }
                        _ => libc::writev(self.fd, iov.as_ptr(), iov.len() as libc::c_int),
                    }
                };
                if n >= 0 {
                    break n as usize;
                }
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if err.kind() == io::ErrorKind::WouldBlock {
                    return Ok(());
                }
                return Err(err);
            };
            consume(py, st, sent);
            if sent < offered {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Starts or stops watching one direction of the fd, reusing our handle.
    fn watch(slf: &Bound<'_, Self>, dir: Direction, on: bool) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (lp, current, registered) = {
            let st = this.state.borrow(py)?;
            let Some(lp) = st.event_loop.as_ref() else {
                return Ok(());
            };
            let (h, r) = match dir {
                Direction::Read => (&st.reader, st.reader_registered),
                Direction::Write => (&st.writer, st.writer_registered),
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
                    let name = match dir {
                        Direction::Read => intern!(py, "_read_ready"),
                        Direction::Write => intern!(py, "_write_ready"),
                    };
                    let cb = slf.getattr(name)?;
                    Some(new_tracked(py, lpb.new_handle(py, cb, None, None)?)?)
                }
            }
        } else {
            None
        };
        let ours = handle.as_ref().map(|h| h.clone_ref(py));
        let replaced = lpb.set_watcher(py, this.fd, dir, handle)?;
        {
            let mut guard = this.state.borrow_mut(py)?;
            let st = &mut *guard;
            let (slot, flag) = match dir {
                Direction::Read => (&mut st.reader, &mut st.reader_registered),
                Direction::Write => (&mut st.writer, &mut st.writer_registered),
            };
            *flag = on;
            if let Some(h) = ours {
                *slot = Some(h);
            }
        }
        // Someone else's watcher on our fd (not expected) is cancelled as asyncio would.
        if let Some(old) = replaced {
            let mine = this.state.borrow(py)?;
            let slot = match dir {
                Direction::Read => &mine.reader,
                Direction::Write => &mine.writer,
            };
            let is_ours = slot.as_ref().is_some_and(|h| h.is(&old));
            drop(mine);
            if !is_ours {
                old.bind(py).call_method0(intern!(py, "cancel"))?;
            }
        }
        Ok(())
    }

    fn debug_log(slf: &Bound<'_, Self>, message: &str) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let debug = match this.state.borrow(py)?.event_loop.as_ref() {
            Some(lp) => lp.bind(py).get().is_debug(),
            None => false,
        };
        if debug {
            this.owner(py)?
                .bind(py)
                .call_method1(intern!(py, "_debug_log"), (message,))?;
        }
        Ok(())
    }

    /// asyncio's `_fatal_error`, in the owner: KeyboardInterrupt and SystemExit propagate.
    fn fatal(slf: &Bound<'_, Self>, err: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        if is_exit_exception(py, &err) {
            return Err(err);
        }
        let owner = slf.get().owner(py)?;
        owner
            .bind(py)
            .call_method1(intern!(py, "_fatal_error"), (err.into_value(py), message))?;
        Ok(())
    }

    /// Schedules `owner._call_connection_lost(exc)` with `loop.call_soon`.
    fn schedule_connection_lost(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let lp = this.event_loop(py)?;
        let owner = this.owner(py)?;
        let cb = owner
            .bind(py)
            .getattr(intern!(py, "_call_connection_lost"))?;
        lp.bind(py)
            .call_method1(intern!(py, "call_soon"), (cb, exc))?;
        Ok(())
    }

    /// Calls a protocol flow-control method; failures go to the exception handler.
    fn call_flow_control(
        slf: &Bound<'_, Self>,
        method: &Bound<'_, pyo3::types::PyString>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (protocol, lp) = {
            let st = this.state.borrow(py)?;
            (
                st.protocol.as_ref().map(|p| p.clone_ref(py)),
                st.event_loop.as_ref().map(|l| l.clone_ref(py)),
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
            context.set_item("transport", this.owner(py)?)?;
            context.set_item("protocol", protocol)?;
            lp.bind(py)
                .call_method1(intern!(py, "call_exception_handler"), (context,))?;
        }
        Ok(())
    }

    fn maybe_pause_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        {
            let mut st = slf.get().state.borrow_mut(py)?;
            if st.queued <= st.high_water || st.protocol_paused {
                return Ok(());
            }
            st.protocol_paused = true;
        }
        Self::call_flow_control(slf, intern!(py, "pause_writing"))
    }

    fn maybe_resume_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        {
            let mut st = slf.get().state.borrow_mut(py)?;
            if !(st.protocol_paused && st.queued <= st.low_water) {
                return Ok(());
            }
            st.protocol_paused = false;
        }
        Self::call_flow_control(slf, intern!(py, "resume_writing"))
    }

    /// The `bytes` to send for a `write()` argument (bytes as is, other buffers copied, as
    /// asyncio copies them into its buffer).
    fn to_bytes<'py>(data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        if let Ok(b) = data.cast::<PyBytes>() {
            return Ok(b.clone());
        }
        if data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>() {
            // bytes(memoryview) also handles non-contiguous views.
            return Ok(data
                .py()
                .get_type::<PyBytes>()
                .call1((data,))?
                .cast_into::<PyBytes>()?);
        }
        Err(PyTypeError::new_err(format!(
            "data argument must be a bytes-like object, not {:?}",
            data.get_type().name()?.to_string()
        )))
    }

    /// Reading for a BufferedProtocol: recv straight into the buffer it lends.
    fn read_buffered(
        slf: &Bound<'_, Self>,
        get_buffer: Py<PyAny>,
        updated: Py<PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let minus_one = (-1i32).into_pyobject(py)?.into_any();
        let buf = match call_one(py, &get_buffer, &minus_one).and_then(|b| {
            if b.len()? == 0 {
                Err(PyRuntimeError::new_err(
                    "get_buffer() returned an empty buffer",
                ))
            } else {
                Ok(b)
            }
        }) {
            Ok(b) => b,
            Err(e) => {
                return Self::fatal(slf, e, "Fatal error: protocol.get_buffer() call failed.")
            }
        };
        let got = match recv_into(this.fd, this.kind, &buf) {
            Ok(n) => n,
            Err(e) => {
                if let Some(ioe) = e.as_ref().err() {
                    if would_block(ioe) {
                        return Ok(());
                    }
                }
                let err = match e {
                    Err(ioe) => os_error(ioe),
                    Ok(pyerr) => pyerr,
                };
                return Self::fatal(slf, err, this.kind.read_error_message());
            }
        };
        if got == 0 {
            return Self::on_eof(slf);
        }
        let n = got.into_pyobject(py)?.into_any();
        if let Err(e) = call_one(py, &updated, &n) {
            return Self::fatal(
                slf,
                e,
                "Fatal error: protocol.buffer_updated() call failed.",
            );
        }
        Ok(())
    }

    fn on_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.kind == Kind::ReadPipe {
            // _UnixReadPipeTransport: EOF closes the transport; eof_received is a callback.
            Self::debug_log(slf, "was closed by peer")?;
            let (lp, protocol) = {
                let mut st = this.state.borrow_mut(py)?;
                st.closing = true;
                (
                    st.event_loop.as_ref().map(|l| l.clone_ref(py)),
                    st.protocol.as_ref().map(|p| p.clone_ref(py)),
                )
            };
            Self::watch(slf, Direction::Read, false)?;
            if let (Some(lp), Some(protocol)) = (lp, protocol) {
                let cb = protocol.bind(py).getattr(intern!(py, "eof_received"))?;
                lp.bind(py).call_method1(intern!(py, "call_soon"), (cb,))?;
            }
            return Self::schedule_connection_lost(slf, py.None().into_bound(py));
        }
        Self::debug_log(slf, "received EOF")?;
        let protocol = this
            .state
            .borrow(py)?
            .protocol
            .as_ref()
            .map(|p| p.clone_ref(py));
        let Some(protocol) = protocol else {
            return Ok(());
        };
        let keep_open = match protocol
            .bind(py)
            .call_method0(intern!(py, "eof_received"))
            .and_then(|r| r.is_truthy())
        {
            Ok(k) => k,
            Err(e) => {
                return Self::fatal(slf, e, "Fatal error: protocol.eof_received() call failed.")
            }
        };
        if keep_open {
            // The protocol may still write, but nothing more will be received.
            Self::watch(slf, Direction::Read, false)
        } else {
            Self::close(slf)
        }
    }

    /// asyncio's `_force_close`: drop unsent data, stop watching, schedule connection_lost.
    fn force_close(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (dropped, stop_reading) = {
            let mut st = this.state.borrow_mut(py)?;
            if st.conn_lost > 0 {
                return Ok(());
            }
            let dropped = std::mem::take(&mut st.queue);
            st.head = 0;
            st.queued = 0;
            let stop_reading = !st.closing;
            st.closing = true;
            st.conn_lost += 1;
            (dropped, stop_reading)
        };
        drop(dropped);
        Self::watch(slf, Direction::Write, false)?;
        if stop_reading || this.kind == Kind::WritePipe {
            Self::watch(slf, Direction::Read, false)?;
        }
        Self::schedule_connection_lost(slf, exc)
    }

    /// Drops `write()` data once the connection is lost, warning as asyncio does.
    fn count_lost_write(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let n = {
            let mut st = this.state.borrow_mut(py)?;
            st.conn_lost += 1;
            st.conn_lost - 1
        };
        if n >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
            let message = match this.kind {
                Kind::Socket => "socket.send() raised exception.",
                _ => "pipe closed by peer or os.write(pipe, data) raised exception.",
            };
            py.import("asyncio.log")?
                .getattr("logger")?
                .call_method1("warning", (message,))?;
        }
        Ok(())
    }
}

impl StreamTransport {
    /// Switches bulk reading on or off after a read of `n` bytes, and raises a pipe's
    /// capacity once a transfer through it proves to be bulk.
    fn note_read_size(&self, py: Python<'_>, n: usize) -> PyResult<()> {
        let mut st = self.state.borrow_mut(py)?;
        st.bulk = n >= BULK_THRESHOLD;
        if self.kind == Kind::ReadPipe {
            if n >= DEFAULT_PIPE_CAPACITY {
                st.full_pipe_reads = st.full_pipe_reads.saturating_add(1);
                if st.full_pipe_reads >= 4 {
                    self.grow_pipe(&mut st);
                }
            } else {
                st.full_pipe_reads = 0;
            }
        }
        Ok(())
    }

    /// Raises the pipe's kernel buffer from 64 KiB to 1 MiB, once. A bulk transfer through a
    /// 64 KiB pipe costs a wake-up of each side per 64 KiB; measured on `cat`, that was
    /// most of the parent's time. Only pipes that carry bulk data grow, so programs with
    /// many idle pipes stay within `fs.pipe-user-pages-soft`. Failure (a socket or a
    /// character device, or the limit reached) leaves the pipe as it was.
    fn grow_pipe(&self, st: &mut State) {
        if st.pipe_grown || self.kind == Kind::Socket {
            return;
        }
        st.pipe_grown = true;
        // SAFETY: fcntl on our own fd with an int argument; errors are ignored on purpose.
        unsafe {
            libc::fcntl(self.fd, libc::F_SETPIPE_SZ, BULK_PIPE_CAPACITY);
        }
    }
}

extern "C" {
    /// CPython's `_PyBytes_Resize` (exported by every CPython 3; PyO3 does not re-export
    /// it): shrinks a `bytes` that nothing else references yet.
    fn _PyBytes_Resize(bytes: *mut *mut ffi::PyObject, newsize: ffi::Py_ssize_t) -> libc::c_int;
}

/// One recv()/read() straight into a new `bytes` of `BULK_READ` bytes, shrunk to the size
/// received. For large reads this saves copying them out of the loop's buffer; small
/// reads use the shared buffer instead, which avoids allocating 128 KiB per read.
fn read_fresh_bytes(
    py: Python<'_>,
    fd: RawFd,
    socket: bool,
) -> PyResult<io::Result<Bound<'_, PyBytes>>> {
    // SAFETY: PyBytes_FromStringAndSize(NULL, n) returns a new, uninitialised bytes object
    // of n bytes that only we reference (or NULL with an exception set). We write at most
    // BULK_READ bytes into its buffer, then shrink it with _PyBytes_Resize, which is allowed
    // because the object has a single reference and was never shared; on failure
    // _PyBytes_Resize frees it and sets NULL. Every other exit path drops our reference.
    unsafe {
        let mut obj =
            ffi::PyBytes_FromStringAndSize(std::ptr::null(), BULK_READ as ffi::Py_ssize_t);
        if obj.is_null() {
            return Err(PyErr::fetch(py));
        }
        let buf = ffi::PyBytes_AsString(obj).cast::<libc::c_void>();
        let got = loop {
            let n = if socket {
                libc::recv(fd, buf, BULK_READ, 0)
            } else {
                libc::read(fd, buf, BULK_READ)
            };
            if n >= 0 {
                break n as usize;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                ffi::Py_DECREF(obj);
                return Ok(Err(err));
            }
        };
        if got < BULK_READ && _PyBytes_Resize(&mut obj, got as ffi::Py_ssize_t) < 0 {
            return Err(PyErr::fetch(py));
        }
        Ok(Ok(
            Bound::from_owned_ptr(py, obj).cast_into_unchecked::<PyBytes>()
        ))
    }
}

/// Drops `n` sent bytes from the front of the queue.
fn consume(py: Python<'_>, st: &mut State, mut n: usize) {
    st.queued -= n;
    while n > 0 {
        let Some(front) = st.queue.front() else { break };
        let left = front.as_bytes(py).len() - st.head;
        if n < left {
            st.head += n;
            return;
        }
        n -= left;
        st.head = 0;
        // Dropping a `bytes` runs no Python code.
        st.queue.pop_front();
    }
    if st
        .queue
        .front()
        .is_some_and(|f| f.as_bytes(py).len() == st.head)
    {
        st.queue.pop_front();
        st.head = 0;
    }
}

/// `recv_into`/`readinto` for a lent buffer: `Err(Err(io))` for an OS error,
/// `Err(Ok(py))` when the object is not a writable contiguous buffer.
fn recv_into(
    fd: RawFd,
    kind: Kind,
    buf: &Bound<'_, PyAny>,
) -> Result<usize, Result<PyErr, io::Error>> {
    let py = buf.py();
    let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::uninit();
    // SAFETY: `view` is filled by PyObject_GetBuffer on success and released below; a
    // writable simple buffer is one contiguous run of `len` bytes.
    unsafe {
        if ffi::PyObject_GetBuffer(buf.as_ptr(), view.as_mut_ptr(), ffi::PyBUF_WRITABLE) != 0 {
            return Err(Ok(PyErr::fetch(py)));
        }
        let mut view = view.assume_init();
        let n = loop {
            let n = match kind {
                Kind::Socket => libc::recv(fd, view.buf, view.len as usize, 0),
                _ => libc::read(fd, view.buf, view.len as usize),
            };
            if n >= 0 {
                break Ok(n as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                break Err(Err(err));
            }
        };
        ffi::PyBuffer_Release(&mut view);
        n
    }
}

#[pymethods]
impl StreamTransport {
    #[new]
    fn new(
        event_loop: Bound<'_, LoopCore>,
        owner: Py<PyAny>,
        fd: RawFd,
        kind: &str,
    ) -> PyResult<Self> {
        Ok(StreamTransport {
            fd,
            kind: Kind::parse(kind)?,
            state: GilCell::new(State {
                event_loop: Some(event_loop.unbind()),
                owner: Some(owner),
                protocol: None,
                on_data: None,
                on_buffer_updated: None,
                protocol_connected: false,
                reader: None,
                writer: None,
                reader_registered: false,
                writer_registered: false,
                queue: VecDeque::new(),
                head: 0,
                queued: 0,
                closing: false,
                eof: false,
                paused: false,
                conn_lost: 0,
                protocol_paused: false,
                high_water: 64 * 1024,
                low_water: 16 * 1024,
                empty_waiter: None,
                bulk: false,
                full_pipe_reads: 0,
                pipe_grown: false,
            }),
        })
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Some(st) = self.state.borrow_for_traverse() else {
            return Ok(());
        };
        visit.call(&st.event_loop)?;
        visit.call(&st.owner)?;
        visit.call(&st.protocol)?;
        visit.call(&st.on_data)?;
        visit.call(&st.on_buffer_updated)?;
        visit.call(&st.reader)?;
        visit.call(&st.writer)?;
        visit.call(&st.empty_waiter)?;
        Ok(())
    }

    fn __clear__(&self) {
        Python::attach(|py| {
            let dropped = match self.state.borrow_mut(py) {
                Ok(mut st) => (
                    st.event_loop.take(),
                    st.owner.take(),
                    st.protocol.take(),
                    st.on_data.take(),
                    st.on_buffer_updated.take(),
                    st.reader.take(),
                    st.writer.take(),
                    st.empty_waiter.take(),
                ),
                Err(_) => return,
            };
            drop(dropped);
        });
    }

    /// Sets the protocol; `buffered` says whether it is an `asyncio.BufferedProtocol`.
    fn set_protocol(&self, protocol: Bound<'_, PyAny>, buffered: bool) -> PyResult<()> {
        let py = protocol.py();
        let (on_data, on_updated) = if buffered {
            (
                protocol.getattr(intern!(py, "get_buffer"))?,
                Some(protocol.getattr(intern!(py, "buffer_updated"))?.unbind()),
            )
        } else if this_kind_reads(self.kind) {
            (protocol.getattr(intern!(py, "data_received"))?, None)
        } else {
            (py.None().into_bound(py), None)
        };
        let dropped = {
            let mut st = self.state.borrow_mut(py)?;
            st.protocol_connected = true;
            (
                st.protocol.replace(protocol.unbind()),
                st.on_data.replace(on_data.unbind()),
                std::mem::replace(&mut st.on_buffer_updated, on_updated),
            )
        };
        drop(dropped);
        Ok(())
    }

    fn get_protocol(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let st = self.state.borrow(py)?;
        Ok(st
            .protocol
            .as_ref()
            .map_or_else(|| py.None(), |p| p.clone_ref(py)))
    }

    /// Starts watching the fd for reading unless paused or closing (asyncio's deferred
    /// `_add_reader` after `connection_made`). The write-pipe transport watches for the
    /// other end closing.
    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let st = slf.get().state.borrow(slf.py())?;
        let reading = !st.paused && !st.closing;
        drop(st);
        if reading {
            Self::watch(slf, Direction::Read, true)?;
        }
        Ok(())
    }

    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (lp, on_data, on_updated) = {
            let st = this.state.borrow(py)?;
            if st.conn_lost > 0 || !st.reader_registered {
                return Ok(());
            }
            let (Some(lp), Some(on_data)) = (st.event_loop.as_ref(), st.on_data.as_ref()) else {
                return Ok(());
            };
            (
                lp.clone_ref(py),
                on_data.clone_ref(py),
                st.on_buffer_updated.as_ref().map(|u| u.clone_ref(py)),
            )
        };
        if this.kind == Kind::WritePipe {
            // The reader of a write pipe only fires when the other end went away.
            Self::debug_log(slf, "was closed by peer")?;
            let had_data = this.state.borrow(py)?.queued > 0;
            let exc = if had_data {
                py.get_type::<pyo3::exceptions::PyBrokenPipeError>()
                    .call0()?
            } else {
                py.None().into_bound(py)
            };
            return Self::force_close(slf, exc);
        }
        if let Some(updated) = on_updated {
            return Self::read_buffered(slf, on_data, updated);
        }
        let bulk = this.state.borrow(py)?.bulk;
        let read = if bulk {
            read_fresh_bytes(py, this.fd, this.kind == Kind::Socket)?
        } else {
            lp.bind(py)
                .get()
                .read_to_bytes(py, this.fd, this.kind == Kind::Socket, MAX_READ)?
        };
        let data = match read {
            Ok(data) => data,
            Err(e) if would_block(&e) => return Ok(()),
            Err(e) => return Self::fatal(slf, os_error(e), this.kind.read_error_message()),
        };
        this.note_read_size(py, data.as_bytes().len())?;
        if data.as_bytes().is_empty() {
            return Self::on_eof(slf);
        }
        if let Err(e) = call_one(py, &on_data, data.as_any()) {
            if this.kind == Kind::ReadPipe {
                // asyncio's pipe transport lets the loop report it and reads on.
                return Err(e);
            }
            return Self::fatal(slf, e, "Fatal error: protocol.data_received() call failed.");
        }
        Ok(())
    }

    fn _write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let result = {
            let mut st = this.state.borrow_mut(py)?;
            if st.conn_lost > 0 || !st.writer_registered || st.queue.is_empty() {
                return Ok(());
            }
            this.flush(py, &mut st)
        };
        if let Err(e) = result {
            let (dropped, waiter) = {
                let mut st = this.state.borrow_mut(py)?;
                st.head = 0;
                st.queued = 0;
                (
                    std::mem::take(&mut st.queue),
                    st.empty_waiter.as_ref().map(|w| w.clone_ref(py)),
                )
            };
            drop(dropped);
            Self::watch(slf, Direction::Write, false)?;
            let err = os_error(e);
            let value = err.value(py).clone();
            Self::fatal(slf, err, this.kind.write_error_message())?;
            if let Some(w) = waiter {
                w.bind(py)
                    .call_method1(intern!(py, "set_exception"), (value,))?;
            }
            return Ok(());
        }
        Self::maybe_resume_protocol(slf)?;
        let (empty, waiter, closing, eof) = {
            let st = this.state.borrow(py)?;
            (
                st.queue.is_empty(),
                st.empty_waiter.as_ref().map(|w| w.clone_ref(py)),
                st.closing,
                st.eof,
            )
        };
        if !empty {
            return Ok(());
        }
        Self::watch(slf, Direction::Write, false)?;
        if let Some(w) = waiter {
            let w = w.bind(py);
            if !w.call_method0(intern!(py, "done"))?.is_truthy()? {
                w.call_method1(intern!(py, "set_result"), (py.None(),))?;
            }
        }
        if closing {
            if this.kind == Kind::WritePipe {
                Self::watch(slf, Direction::Read, false)?;
            }
            let owner = this.owner(py)?;
            owner
                .bind(py)
                .call_method1(intern!(py, "_call_connection_lost"), (py.None(),))?;
        } else if eof {
            // SAFETY: shutdown on our own fd; a failure is reported like socket.shutdown.
            if unsafe { libc::shutdown(this.fd, libc::SHUT_WR) } != 0 {
                return Err(os_error(io::Error::last_os_error()));
            }
        }
        Ok(())
    }

    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let data = Self::to_bytes(data)?;
        let bytes = data.as_bytes();
        {
            let st = this.state.borrow(py)?;
            if st.eof && this.kind == Kind::Socket {
                return Err(PyRuntimeError::new_err(
                    "Cannot call write() after write_eof()",
                ));
            }
            if st.empty_waiter.is_some() {
                return Err(PyRuntimeError::new_err(
                    "unable to write; sendfile is in progress",
                ));
            }
            if bytes.is_empty() {
                return Ok(());
            }
            let lost = st.conn_lost > 0 || (this.kind == Kind::WritePipe && st.closing);
            drop(st);
            if lost {
                return Self::count_lost_write(slf);
            }
        }
        let mut offset = 0;
        if this.state.borrow(py)?.queue.is_empty() {
            match this.send(bytes) {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(n) => offset = n,
                Err(e) if would_block(&e) => {}
                Err(e) => return Self::fatal(slf, os_error(e), this.kind.write_error_message()),
            }
            Self::watch(slf, Direction::Write, true)?;
        }
        {
            let mut st = this.state.borrow_mut(py)?;
            if st.queue.is_empty() {
                st.head = offset;
            }
            st.queued += bytes.len() - offset;
            st.queue.push_back(data.unbind());
            if this.kind == Kind::WritePipe && st.queued >= BULK_PIPE_QUEUE {
                this.grow_pipe(&mut st);
            }
        }
        Self::maybe_pause_protocol(slf)
    }

    /// `b"".join(list_of_data)` then `write()`, as asyncio 3.11's `writelines`.
    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let joined = PyBytes::new(py, b"").call_method1(intern!(py, "join"), (list_of_data,))?;
        Self::write(slf, &joined)
    }

    fn can_write_eof(&self) -> bool {
        self.kind != Kind::ReadPipe
    }

    fn write_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.kind == Kind::WritePipe {
            // A pipe has no half-close: write_eof closes once the buffer is sent.
            let empty = {
                let mut st = this.state.borrow_mut(py)?;
                if st.closing {
                    return Ok(());
                }
                st.closing = true;
                st.queue.is_empty()
            };
            if empty {
                Self::watch(slf, Direction::Read, false)?;
                Self::schedule_connection_lost(slf, py.None().into_bound(py))?;
            }
            return Ok(());
        }
        let empty = {
            let mut st = this.state.borrow_mut(py)?;
            if st.closing || st.eof {
                return Ok(());
            }
            st.eof = true;
            st.queue.is_empty()
        };
        if empty {
            // SAFETY: shutdown on our own fd.
            if unsafe { libc::shutdown(this.fd, libc::SHUT_WR) } != 0 {
                return Err(os_error(io::Error::last_os_error()));
            }
        }
        Ok(())
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.kind == Kind::WritePipe {
            return Self::write_eof(slf);
        }
        let empty = {
            let mut st = this.state.borrow_mut(py)?;
            if st.closing {
                return Ok(());
            }
            st.closing = true;
            let empty = st.queue.is_empty();
            if empty {
                st.conn_lost += 1;
            }
            empty
        };
        Self::watch(slf, Direction::Read, false)?;
        if empty {
            Self::watch(slf, Direction::Write, false)?;
            Self::schedule_connection_lost(slf, py.None().into_bound(py))?;
        }
        Ok(())
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::force_close(slf, slf.py().None().into_bound(slf.py()))
    }

    fn _force_close(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        Self::force_close(slf, exc)
    }

    fn is_closing(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.state.borrow(py)?.closing)
    }

    fn is_reading(&self, py: Python<'_>) -> PyResult<bool> {
        let st = self.state.borrow(py)?;
        Ok(!st.paused && !st.closing)
    }

    fn pause_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        {
            let mut st = slf.get().state.borrow_mut(slf.py())?;
            if st.paused || st.closing {
                return Ok(());
            }
            st.paused = true;
        }
        Self::watch(slf, Direction::Read, false)?;
        Self::debug_log(slf, "pauses reading")
    }

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        {
            let mut st = slf.get().state.borrow_mut(slf.py())?;
            if st.closing || !st.paused {
                return Ok(());
            }
            st.paused = false;
        }
        Self::watch(slf, Direction::Read, true)?;
        Self::debug_log(slf, "resumes reading")
    }

    fn get_write_buffer_size(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.state.borrow(py)?.queued)
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(
        slf: &Bound<'_, Self>,
        high: Option<i64>,
        low: Option<i64>,
    ) -> PyResult<()> {
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
        {
            let mut st = slf.get().state.borrow_mut(slf.py())?;
            st.high_water = high as usize;
            st.low_water = low as usize;
        }
        Self::maybe_pause_protocol(slf)
    }

    fn get_write_buffer_limits(&self, py: Python<'_>) -> PyResult<(usize, usize)> {
        let st = self.state.borrow(py)?;
        Ok((st.low_water, st.high_water))
    }

    /// asyncio's `_make_empty_waiter` (for `loop.sendfile`).
    fn _make_empty_waiter(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let lp = self.event_loop(py)?;
        if self.state.borrow(py)?.empty_waiter.is_some() {
            return Err(PyRuntimeError::new_err("Empty waiter is already set"));
        }
        let waiter = lp.bind(py).call_method0(intern!(py, "create_future"))?;
        let empty = {
            let mut st = self.state.borrow_mut(py)?;
            st.empty_waiter = Some(waiter.clone().unbind());
            st.queue.is_empty()
        };
        if empty {
            waiter.call_method1(intern!(py, "set_result"), (py.None(),))?;
        }
        Ok(waiter.unbind())
    }

    fn _reset_empty_waiter(&self, py: Python<'_>) -> PyResult<()> {
        let old = self.state.borrow_mut(py)?.empty_waiter.take();
        drop(old);
        Ok(())
    }

    /// Takes the empty waiter (the owner fails it when the connection is lost).
    fn _take_empty_waiter(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        Ok(self.state.borrow_mut(py)?.empty_waiter.take())
    }

    /// Drops every reference once `connection_lost` has run (breaks the owner cycle).
    fn _release(&self, py: Python<'_>) -> PyResult<()> {
        let dropped = {
            let mut st = self.state.borrow_mut(py)?;
            st.reader_registered = false;
            st.writer_registered = false;
            (
                st.event_loop.take(),
                st.owner.take(),
                st.protocol.take(),
                st.on_data.take(),
                st.on_buffer_updated.take(),
                st.reader.take(),
                st.writer.take(),
                std::mem::take(&mut st.queue),
            )
        };
        drop(dropped);
        Ok(())
    }

    #[getter]
    fn _protocol_connected(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.state.borrow(py)?.protocol_connected)
    }

    #[getter]
    fn _protocol_paused(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.state.borrow(py)?.protocol_paused)
    }

    #[getter]
    fn _conn_lost(&self, py: Python<'_>) -> PyResult<u32> {
        Ok(self.state.borrow(py)?.conn_lost)
    }

    #[getter]
    fn _closing(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.state.borrow(py)?.closing)
    }

    #[getter]
    fn _paused(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.state.borrow(py)?.paused)
    }

    #[getter]
    fn _eof(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.state.borrow(py)?.eof)
    }
}

/// Whether a transport of this kind delivers received data to its protocol.
fn this_kind_reads(kind: Kind) -> bool {
    kind != Kind::WritePipe
}
