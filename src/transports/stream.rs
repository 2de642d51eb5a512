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

use std::io;
use std::os::fd::RawFd;

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};
use pyo3::PyClassInitializer;
use pyo3::{PyTraverseError, PyVisit};

use super::base::{self, CoreKind, Link, NativeTransport};
use super::write_queue::WriteQueue;
use crate::errors::os_error;
use crate::event_loop::fds::Direction;
use crate::event_loop::metrics::{IoStats, TransportKind};
use crate::event_loop::LoopCore;
use crate::gil_cell::GilCell;
use crate::sys::{self, would_block, would_block_err};

/// The Python name of the write path (`Hooks::write_name`).
const WRITE_READY: &str = "_write_ready";
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
    /// Whether the protocol is an `asyncio.BufferedProtocol` (decided in `set_protocol`, as
    /// asyncio does). Its methods are looked up on each call, as asyncio looks them up: a
    /// protocol without `data_received` still connects, and fails when data arrives.
    buffered: bool,
    /// The socket object, when its class overrides `recv`, `recv_into`, `send` or
    /// `sendmsg`: I/O then goes through those methods, as asyncio calls them.
    py_io: Option<Py<PyAny>>,
    /// With `py_io`: flush the queue with `sendmsg` (asyncio 3.12+) rather than `send`.
    py_sendmsg: bool,
    protocol_connected: bool,
    /// Unsent data.
    queue: WriteQueue,
    eof: bool,
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

#[pyclass(frozen, extends = NativeTransport, module = "ferroloop._ferroloop")]
pub struct StreamTransport {
    fd: RawFd,
    kind: Kind,
    state: GilCell<State>,
}

impl StreamTransport {
    /// asyncio's refusals of `write`/`writelines` (`method`): after `write_eof()` on a
    /// socket, and while `loop.sendfile` owns the transport.
    fn check_writable(&self, py: Python<'_>, method: &str) -> PyResult<()> {
        let st = self.state.borrow(py)?;
        if st.eof && self.kind == Kind::Socket {
            return Err(PyRuntimeError::new_err(format!(
                "Cannot call {method}() after write_eof()"
            )));
        }
        if st.empty_waiter.is_some() {
            return Err(PyRuntimeError::new_err(format!(
                "unable to {method}; sendfile is in progress"
            )));
        }
        Ok(())
    }

    /// `send()` (sockets, without SIGPIPE) or `write()` (pipes) of `data`.
    fn send(&self, data: &[u8]) -> io::Result<usize> {
        sys::write(self.fd, data, self.kind == Kind::Socket)
    }

    /// Sends as much of the queue as the kernel takes (one `writev`/`sendmsg` per
    /// `MAX_IOVECS` chunks). `Ok` with data left means the kernel is full.
    fn flush(
        &self,
        py: Python<'_>,
        st: &mut State,
        link: &mut Link,
        io: &IoStats,
    ) -> io::Result<()> {
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let mut iov = [empty; MAX_IOVECS];
        while !st.queue.is_empty() {
            let mut count = 0;
            let mut offered = 0usize;
            for (i, chunk) in st.queue.iter().take(MAX_IOVECS).enumerate() {
                let bytes = chunk.as_bytes(py);
                let part = if i == 0 {
                    &bytes[st.queue.head()..]
                } else {
                    bytes
                };
                offered += part.len();
                iov[i] = libc::iovec {
                    iov_base: part.as_ptr() as *mut _,
                    iov_len: part.len(),
                };
                count = i + 1;
            }
            let sent = if count == 1 {
                // One chunk: a plain send/write.
                // SAFETY: iov[0] points into a `bytes` object held by the queue, unchanged
                // during the call.
                let part = unsafe {
                    std::slice::from_raw_parts(iov[0].iov_base as *const u8, iov[0].iov_len)
                };
                match self.send(part) {
                    Ok(n) => Some(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                    Err(e) => return Err(e),
                }
            } else {
                self.send_vectored(&iov[..count])?
            };
            let Some(sent) = sent else {
                return Ok(());
            };
            io.sent(sent);
            consume(py, st, link, sent);
            if sent < offered {
                return Ok(());
            }
        }
        Ok(())
    }

    /// `flush` through a socket subclass's own methods, as asyncio's `_write_ready` calls
    /// them: `sock.sendmsg(buffers)` (3.12+) or `sock.send(data)` (3.11). No borrow is held
    /// while they run.
    fn flush_through(slf: &Bound<'_, Self>, sock: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (chunks, sendmsg) = {
            let st = this.state.borrow(py)?;
            let mut chunks = Vec::with_capacity(st.queue.len());
            for (i, chunk) in st.queue.iter().enumerate() {
                let part = if i == 0 && st.queue.head() > 0 {
                    PyBytes::new(py, &chunk.as_bytes(py)[st.queue.head()..])
                } else {
                    chunk.bind(py).clone()
                };
                chunks.push(part);
            }
            (chunks, st.py_sendmsg)
        };
        let sent = if sendmsg {
            sock.call_method1(intern!(py, "sendmsg"), (chunks,))
        } else {
            let joined = PyBytes::new(py, b"").call_method1(intern!(py, "join"), (chunks,))?;
            sock.call_method1(intern!(py, "send"), (joined,))
        };
        let sent = match sent.and_then(|n| n.extract::<usize>()) {
            Ok(n) => n,
            Err(e) if would_block_err(py, &e) => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut st = this.state.borrow_mut(py)?;
        let mut link = slf.as_super().get().link_mut(py)?;
        let n = sent.min(link.queued);
        slf.as_super().get().count_sent(n);
        consume(py, &mut st, &mut link, n);
        Ok(())
    }

    /// One `sendmsg` (sockets, without SIGPIPE) or `writev` (pipes) of `iov`.
    /// `Ok(None)` when the fd would block.
    fn send_vectored(&self, iov: &[libc::iovec]) -> io::Result<Option<usize>> {
        match sys::write_vectored(self.fd, iov, self.kind == Kind::Socket) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
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

    /// Reading for a BufferedProtocol: recv straight into the buffer it lends (asyncio's
    /// `_read_ready__get_buffer`), through `sock.recv_into` for a socket subclass that
    /// overrides it.
    fn read_buffered(
        slf: &Bound<'_, Self>,
        protocol: &Bound<'_, PyAny>,
        py_io: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let buf = match protocol
            .call_method1(intern!(py, "get_buffer"), (-1i32,))
            .and_then(|b| {
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
                return base::fatal(
                    slf.as_super(),
                    e,
                    "Fatal error: protocol.get_buffer() call failed.",
                )
            }
        };
        let got = if let Some(sock) = py_io {
            match sock
                .bind(py)
                .call_method1(intern!(py, "recv_into"), (&buf,))
                .and_then(|n| n.extract::<usize>())
            {
                Ok(n) => n,
                Err(e) if would_block_err(py, &e) => return Ok(()),
                Err(e) => return base::fatal(slf.as_super(), e, this.kind.read_error_message()),
            }
        } else {
            match recv_into(this.fd, this.kind, &buf) {
                Ok(n) => n,
                Err(Err(ioe)) if would_block(&ioe) => return Ok(()),
                Err(Err(ioe)) => {
                    return base::fatal(
                        slf.as_super(),
                        os_error(ioe),
                        this.kind.read_error_message(),
                    )
                }
                Err(Ok(pyerr)) => {
                    return base::fatal(slf.as_super(), pyerr, this.kind.read_error_message())
                }
            }
        };
        slf.as_super().get().count_received(got);
        if got == 0 {
            return Self::on_eof(slf);
        }
        if let Err(e) = protocol.call_method1(intern!(py, "buffer_updated"), (got,)) {
            return base::fatal(
                slf.as_super(),
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
            base::debug_log(slf.as_super(), "was closed by peer")?;
            let (lp, protocol) = {
                let mut link = slf.as_super().get().link_mut(py)?;
                link.closing = true;
                (
                    link.event_loop.as_ref().map(|l| l.clone_ref(py)),
                    link.protocol.as_ref().map(|p| p.clone_ref(py)),
                )
            };
            base::watch(slf.as_super(), Direction::Read, false)?;
            if let (Some(lp), Some(protocol)) = (lp, protocol) {
                let cb = protocol.bind(py).getattr(intern!(py, "eof_received"))?;
                lp.bind(py).call_method1(intern!(py, "call_soon"), (cb,))?;
            }
            return base::schedule_connection_lost(slf.as_super(), py.None().into_bound(py));
        }
        base::debug_log(slf.as_super(), "received EOF")?;
        let protocol = base::protocol(slf.as_super().get(), py)?;
        if protocol.is_none(py) {
            return Ok(());
        };
        let keep_open = match protocol
            .bind(py)
            .call_method0(intern!(py, "eof_received"))
            .and_then(|r| r.is_truthy())
        {
            Ok(k) => k,
            Err(e) => {
                return base::fatal(
                    slf.as_super(),
                    e,
                    "Fatal error: protocol.eof_received() call failed.",
                )
            }
        };
        if keep_open {
            // The protocol may still write, but nothing more will be received.
            base::watch(slf.as_super(), Direction::Read, false)
        } else {
            Self::close(slf)
        }
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
        sys::try_set_pipe_size(self.fd, BULK_PIPE_CAPACITY);
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
    // Why this is sound: PyBytes_FromStringAndSize(NULL, n) returns a new, uninitialised
    // bytes object of n bytes that only we reference (or NULL with an exception set). We
    // write at most BULK_READ bytes into its buffer, then shrink it with _PyBytes_Resize,
    // which is allowed because the object has a single reference and was never shared; on
    // failure _PyBytes_Resize frees it and sets NULL. Every other exit path drops our
    // reference.
    // SAFETY: as explained just above.
    unsafe {
        let mut obj =
            ffi::PyBytes_FromStringAndSize(std::ptr::null(), BULK_READ as ffi::Py_ssize_t);
        if obj.is_null() {
            return Err(PyErr::fetch(py));
        }
        let buf =
            std::slice::from_raw_parts_mut(ffi::PyBytes_AsString(obj).cast::<u8>(), BULK_READ);
        let got = match sys::read(fd, buf, socket) {
            Ok(n) => n,
            Err(err) => {
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
fn consume(py: Python<'_>, st: &mut State, link: &mut Link, mut n: usize) {
    link.queued -= n;
    while n > 0 {
        let Some(front) = st.queue.front() else { break };
        let left = front.as_bytes(py).len() - st.queue.head();
        if n < left {
            st.queue.advance_head(n);
            return;
        }
        n -= left;
        // Dropping a `bytes` runs no Python code.
        st.queue.pop_front();
    }
    if st
        .queue
        .front()
        .is_some_and(|f| f.as_bytes(py).len() == st.queue.head())
    {
        st.queue.pop_front();
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
    // writable simple buffer is one contiguous run of `len` bytes, which stays valid (and
    // is only written by the kernel) until the release.
    unsafe {
        if ffi::PyObject_GetBuffer(buf.as_ptr(), view.as_mut_ptr(), ffi::PyBUF_WRITABLE) != 0 {
            // As `socket.recv_into` reports it (asyncio's transport calls that).
            let cause = PyErr::fetch(py);
            let err = PyTypeError::new_err(format!(
                "recv_into() argument 'buffer' must be read-write bytes-like object, not {}",
                buf.get_type()
                    .name()
                    .map_or_else(|_| "?".to_owned(), |n| n.to_string())
            ));
            err.set_cause(py, Some(cause));
            return Err(Ok(err));
        }
        let mut view = view.assume_init();
        let data = sys::exported_bytes(view.buf, view.len.max(0) as usize);
        let n = sys::read(fd, data, kind == Kind::Socket).map_err(Err);
        ffi::PyBuffer_Release(&mut view);
        n
    }
}

impl StreamTransport {
    /// `write()`, as `selector_events._SelectorSocketTransport.write`: with nothing queued
    /// the data goes to the kernel at once; only what it does not take is queued and the fd
    /// watched for writability. With data already queued the new data waits behind it.
    fn write_bytes(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let data = Self::to_bytes(data)?;
        let bytes = data.as_bytes();
        this.check_writable(py, "write")?;
        if bytes.is_empty() {
            return Ok(());
        }
        let lost = {
            let link = slf.as_super().get().link(py)?;
            link.conn_lost > 0 || (this.kind == Kind::WritePipe && link.closing)
        };
        if lost {
            return base::count_lost_write(
                slf.as_super(),
                match this.kind {
                    Kind::Socket => "socket.send() raised exception.",
                    _ => "pipe closed by peer or os.write(pipe, data) raised exception.",
                },
            );
        }
        let mut offset = 0;
        let (idle, py_io) = {
            let st = this.state.borrow(py)?;
            (
                st.queue.is_empty(),
                st.py_io.as_ref().map(|s| s.clone_ref(py)),
            )
        };
        if idle {
            let sent = match py_io {
                // asyncio: `n = self._sock.send(data)`.
                Some(sock) => match sock
                    .bind(py)
                    .call_method1(intern!(py, "send"), (&data,))
                    .and_then(|n| n.extract::<usize>())
                {
                    Ok(n) => Ok(n.min(bytes.len())),
                    Err(e) if would_block_err(py, &e) => Ok(0),
                    Err(e) => Err(e),
                },
                None => match this.send(bytes) {
                    Ok(n) => Ok(n),
                    Err(e) if would_block(&e) => Ok(0),
                    Err(e) => Err(os_error(e)),
                },
            };
            if let Ok(n) = sent {
                slf.as_super().get().count_sent(n);
            }
            match sent {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(n) => offset = n,
                Err(e) => return base::fatal(slf.as_super(), e, this.kind.write_error_message()),
            }
            base::watch(slf.as_super(), Direction::Write, true)?;
        }
        {
            let mut st = this.state.borrow_mut(py)?;
            let mut link = slf.as_super().get().link_mut(py)?;
            link.queued += bytes.len() - offset;
            st.queue.push_back(data.unbind(), offset);
            if this.kind == Kind::WritePipe && link.queued >= BULK_PIPE_QUEUE {
                this.grow_pipe(&mut st);
            }
        }
        base::maybe_pause_protocol(slf.as_super())
    }

    /// Sends what the queue holds (from the write watcher) and settles the transport as asyncio's `_write_ready` does: watch
    /// for writability while data remains; once empty, wake the sendfile waiter and finish a
    /// pending close or write_eof.
    fn send_queue(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let shared = slf.as_super().get();
        let py_io = {
            let st = this.state.borrow(py)?;
            // A socket stops sending once the connection is lost (asyncio's `_write_ready`);
            // a write pipe's count also counts writes dropped while closing, and its queue
            // is still sent (`_UnixWritePipeTransport._write_ready` does not check it).
            let lost = this.kind == Kind::Socket && shared.link(py)?.conn_lost > 0;
            if lost || st.queue.is_empty() {
                return Ok(());
            }
            st.py_io.as_ref().map(|s| s.clone_ref(py))
        };
        let result = match py_io {
            Some(sock) => Self::flush_through(slf, sock.bind(py)),
            None => this
                .flush(
                    py,
                    &mut *this.state.borrow_mut(py)?,
                    &mut *shared.link_mut(py)?,
                    shared.io_stats(),
                )
                .map_err(os_error),
        };
        if let Err(err) = result {
            let (dropped, waiter) = {
                let mut st = this.state.borrow_mut(py)?;
                shared.link_mut(py)?.queued = 0;
                (
                    st.queue.take(),
                    st.empty_waiter.as_ref().map(|w| w.clone_ref(py)),
                )
            };
            drop(dropped);
            base::watch(slf.as_super(), Direction::Write, false)?;
            let value = err.value(py).clone();
            base::fatal(slf.as_super(), err, this.kind.write_error_message())?;
            if let Some(w) = waiter {
                w.bind(py)
                    .call_method1(intern!(py, "set_exception"), (value,))?;
            }
            return Ok(());
        }
        base::maybe_resume_protocol(slf.as_super())?;
        let (empty, waiter, closing, eof) = {
            let st = this.state.borrow(py)?;
            (
                st.queue.is_empty(),
                st.empty_waiter.as_ref().map(|w| w.clone_ref(py)),
                shared.link(py)?.closing,
                st.eof,
            )
        };
        if !empty {
            return base::watch(slf.as_super(), Direction::Write, true);
        }
        base::watch(slf.as_super(), Direction::Write, false)?;
        if let Some(w) = waiter {
            let w = w.bind(py);
            if !w.call_method0(intern!(py, "done"))?.is_truthy()? {
                w.call_method1(intern!(py, "set_result"), (py.None(),))?;
            }
        }
        if closing {
            if this.kind == Kind::WritePipe {
                base::watch(slf.as_super(), Direction::Read, false)?;
            }
            base::connection_lost_now(shared, py)?;
        } else if eof {
            sys::shutdown_write(this.fd).map_err(os_error)?;
        }
        Ok(())
    }
}

impl CoreKind for StreamTransport {
    const WRITE_NAME: &'static str = WRITE_READY;

    fn read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::_read_ready(slf)
    }

    fn write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::_write_ready(slf)
    }

    /// Drops the unsent data.
    fn drop_queue(slf: &Bound<'_, Self>) -> PyResult<()> {
        let dropped = slf.get().state.borrow_mut(slf.py())?.queue.take();
        drop(dropped);
        Ok(())
    }
}

#[pymethods]
impl StreamTransport {
    /// `family`: the socket's address family when the caller knows it (a natively accepted
    /// connection); otherwise the kernel is asked (for the metrics' count by kind).
    #[new]
    #[pyo3(signature = (event_loop, owner, fd, kind, family=None))]
    fn new(
        event_loop: Bound<'_, LoopCore>,
        owner: Py<PyAny>,
        fd: RawFd,
        kind: &str,
        family: Option<libc::c_int>,
    ) -> PyResult<PyClassInitializer<Self>> {
        let kind = Kind::parse(kind)?;
        let metrics_kind = match kind {
            Kind::Socket => {
                TransportKind::of_socket(family.unwrap_or_else(|| sys::socket_domain(fd)), false)
            }
            Kind::ReadPipe | Kind::WritePipe => TransportKind::Pipe,
        };
        let shared = NativeTransport::new(event_loop, owner, fd, metrics_kind, &Self::HOOKS);
        Ok(
            PyClassInitializer::from(shared).add_subclass(StreamTransport {
                fd,
                kind,
                state: GilCell::new(State {
                    buffered: false,
                    py_io: None,
                    py_sendmsg: false,
                    protocol_connected: false,
                    queue: WriteQueue::default(),
                    eof: false,
                    empty_waiter: None,
                    bulk: false,
                    full_pipe_reads: 0,
                    pipe_grown: false,
                }),
            }),
        )
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Some(st) = self.state.borrow_for_traverse() else {
            return Ok(());
        };
        visit.call(&st.py_io)?;
        visit.call(&st.empty_waiter)?;
        Ok(())
    }

    fn __clear__(&self) {
        Python::attach(|py| {
            let dropped = match self.state.borrow_mut(py) {
                Ok(mut st) => (st.py_io.take(), st.empty_waiter.take()),
                Err(_) => return,
            };
            drop(dropped);
        });
    }

    /// Sets the protocol; `buffered` says whether it is an `asyncio.BufferedProtocol`.
    fn set_protocol(
        slf: &Bound<'_, Self>,
        protocol: Bound<'_, PyAny>,
        buffered: bool,
    ) -> PyResult<()> {
        let py = protocol.py();
        {
            let mut st = slf.get().state.borrow_mut(py)?;
            st.protocol_connected = true;
            st.buffered = buffered;
        }
        let dropped = {
            let mut link = slf.as_super().get().link_mut(py)?;
            link.protocol.replace(protocol.unbind())
        };
        drop(dropped);
        Ok(())
    }

    /// Sends and receives through `sock`'s own methods (a socket subclass overriding
    /// `recv`, `recv_into`, `send` or `sendmsg`); `sendmsg` says whether queued data is
    /// flushed with `sock.sendmsg(buffers)` (asyncio 3.12+) or `sock.send(data)` (3.11).
    fn _use_socket_methods(&self, sock: Bound<'_, PyAny>, sendmsg: bool) -> PyResult<()> {
        let py = sock.py();
        let mut st = self.state.borrow_mut(py)?;
        st.py_io = Some(sock.unbind());
        st.py_sendmsg = sendmsg;
        Ok(())
    }

    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (lp, protocol, buffered, py_io, bulk) = {
            let st = this.state.borrow(py)?;
            let link = slf.as_super().get().link(py)?;
            if link.conn_lost > 0 || !link.reader_registered {
                return Ok(());
            }
            let (Some(lp), Some(protocol)) = (&link.event_loop, &link.protocol) else {
                return Ok(());
            };
            (
                lp.clone_ref(py),
                protocol.clone_ref(py),
                st.buffered,
                st.py_io.as_ref().map(|s| s.clone_ref(py)),
                st.bulk,
            )
        };
        if this.kind == Kind::WritePipe {
            // The reader of a write pipe only fires when the other end went away.
            base::debug_log(slf.as_super(), "was closed by peer")?;
            let had_data = slf.as_super().get().link(py)?.queued > 0;
            let exc = if had_data {
                py.get_type::<pyo3::exceptions::PyBrokenPipeError>()
                    .call0()?
            } else {
                py.None().into_bound(py)
            };
            return base::force_close(slf.as_super(), exc);
        }
        if buffered {
            return Self::read_buffered(slf, protocol.bind(py), py_io);
        }
        let data = if let Some(sock) = py_io {
            // asyncio: `self._sock.recv(self.max_size)`.
            match sock.bind(py).call_method1(intern!(py, "recv"), (MAX_READ,)) {
                Ok(data) => {
                    slf.as_super().get().count_received(data.len().unwrap_or(0));
                    data
                }
                Err(e) if would_block_err(py, &e) => return Ok(()),
                Err(e) => return base::fatal(slf.as_super(), e, this.kind.read_error_message()),
            }
        } else {
            let read = if bulk {
                read_fresh_bytes(py, this.fd, this.kind == Kind::Socket)?
            } else {
                lp.bind(py)
                    .get()
                    .read_to_bytes(py, this.fd, this.kind == Kind::Socket, MAX_READ)?
            };
            match read {
                Ok(data) => {
                    let n = data.as_bytes().len();
                    slf.as_super().get().count_received(n);
                    this.note_read_size(py, n)?;
                    data.into_any()
                }
                Err(e) if would_block(&e) => return Ok(()),
                Err(e) => {
                    return base::fatal(slf.as_super(), os_error(e), this.kind.read_error_message())
                }
            }
        };
        if !data.is_truthy()? {
            return Self::on_eof(slf);
        }
        if let Err(e) = protocol
            .bind(py)
            .call_method1(intern!(py, "data_received"), (data,))
        {
            if this.kind == Kind::ReadPipe {
                // asyncio's pipe transport lets the loop report it and reads on.
                return Err(e);
            }
            return base::fatal(
                slf.as_super(),
                e,
                "Fatal error: protocol.data_received() call failed.",
            );
        }
        Ok(())
    }

    fn _write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        if !slf.as_super().get().link(slf.py())?.writer_registered {
            return Ok(());
        }
        Self::send_queue(slf)
    }

    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::write_bytes(slf, data)
    }

    /// The socket transport's `writelines` of asyncio 3.12+ (its own checks and messages),
    /// then `b"".join(list_of_data)` and `write()`. Pipes, and sockets on 3.11, use
    /// `WriteTransport.writelines` instead, which calls `self.write` (`_transports.py`).
    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        slf.get().check_writable(py, "writelines")?;
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
                let mut link = slf.as_super().get().link_mut(py)?;
                if link.closing {
                    return Ok(());
                }
                link.closing = true;
                link.queued == 0
            };
            if empty {
                base::watch(slf.as_super(), Direction::Read, false)?;
                base::schedule_connection_lost(slf.as_super(), py.None().into_bound(py))?;
            }
            return Ok(());
        }
        let empty = {
            let mut st = this.state.borrow_mut(py)?;
            if slf.as_super().get().link(py)?.closing || st.eof {
                return Ok(());
            }
            st.eof = true;
            st.queue.is_empty()
        };
        if empty {
            sys::shutdown_write(this.fd).map_err(os_error)?;
        }
        Ok(())
    }

    /// `close()`; a write pipe has no half-close, so closing it is `write_eof()`.
    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        if slf.get().kind == Kind::WritePipe {
            return Self::write_eof(slf);
        }
        base::close(slf.as_super())
    }

    /// asyncio's `_make_empty_waiter` (for `loop.sendfile`).
    fn _make_empty_waiter(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let lp = base::event_loop(slf.as_super().get(), py)?;
        if this.state.borrow(py)?.empty_waiter.is_some() {
            return Err(PyRuntimeError::new_err("Empty waiter is already set"));
        }
        let waiter = lp.bind(py).call_method0(intern!(py, "create_future"))?;
        let empty = {
            let mut st = this.state.borrow_mut(py)?;
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
    fn _release(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let dropped = {
            let mut st = slf.get().state.borrow_mut(py)?;
            (st.py_io.take(), st.queue.take())
        };
        drop(dropped);
        base::release(slf.as_super().get(), py)
    }

    #[getter]
    fn _protocol_connected(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.state.borrow(py)?.protocol_connected)
    }

    #[getter]
    fn _eof(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.state.borrow(py)?.eof)
    }
}
