//! `DatagramTransport`: the native receive and send paths of ferroloop's datagram transport
//! (UDP and Unix datagram sockets).
//!
//! Semantics are CPython 3.11's `selector_events._SelectorDatagramTransport` (with what it
//! inherits from `_SelectorTransport`: close, abort, pause/resume reading, flow control).
//! The Python class `ferroloop._datagram.DatagramTransport` subclasses
//! `asyncio.DatagramTransport` and owns one of these cores; what runs once per endpoint or
//! per error stays there (extra info, `_fatal_error`, `_call_connection_lost`, repr), what
//! runs per datagram is here:
//!
//! - `recvfrom` lands in the loop's reused buffer; the datagram reaches
//!   `datagram_received` as one `bytes`, the sender's address converted here to exactly what
//!   `socket.recvfrom` returns (`(host, port)`, `(host, port, flowinfo, scope_id)`, a path
//!   `str`, an abstract-namespace `bytes`, or None). The last sender's address object is
//!   reused while the same peer keeps sending;
//! - `sendto` tries the socket first (`send` when connected, else `sendto`); only a datagram
//!   the kernel refuses with EAGAIN is queued (copied, as a `bytearray` may change) and sent
//!   when the socket is writable. The destination is converted natively when it is the
//!   address object of the last datagram received (an echo) or a numeric IPv4/IPv6 tuple;
//!   anything else (host names, `<broadcast>`, Unix paths, other families) goes through the
//!   socket's own `sendto`, so conversion, resolution and errors are exactly the socket
//!   module's;
//! - flow control calls `pause_writing`/`resume_writing` at the water marks.
//!
//! As in `stream.rs`, the core registers its own watcher handles with the loop and keeps
//! them for reuse: `_read_ready` and `_sendto_ready` check that they are still registered
//! before touching the fd.

use std::collections::VecDeque;
use std::io;
use std::mem;
use std::os::fd::RawFd;

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError, PyValueError};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};
use pyo3::PyClassInitializer;
use pyo3::{PyTraverseError, PyVisit};

use super::base::{self, is_exit_exception, CoreKind, NativeTransport};
use crate::buffer::with_buffer;
use crate::errors::os_error;
use crate::event_loop::fds::Direction;
use crate::event_loop::metrics::TransportKind;
use crate::event_loop::LoopCore;
use crate::gil_cell::GilCell;
use crate::sockaddr::{address_to_py, parse_inet, SockAddr};
use crate::sys::{self, would_block, would_block_err};

/// The Python name of the write path (`Hooks::write_name`).
const WRITE_READY: &str = "_sendto_ready";
/// Largest datagram read (asyncio's `max_size`); the loop's buffer is reused, so this costs
/// no allocation per read.
const MAX_SIZE: usize = 256 * 1024;
const READ_ERROR: &str = "Fatal read error on datagram transport";
const WRITE_ERROR: &str = "Fatal write error on datagram transport";

/// The outcome of one attempt to send a datagram.
enum Sent {
    /// Sent, this many bytes.
    Done(usize),
    /// EAGAIN or EINTR: try again when the socket is writable.
    WouldBlock,
    Failed(PyErr),
}

fn io_outcome(result: io::Result<usize>) -> Sent {
    match result {
        Ok(n) => Sent::Done(n),
        Err(e) if would_block(&e) => Sent::WouldBlock,
        Err(e) => Sent::Failed(os_error(e)),
    }
}

struct State {
    /// The socket object, for what goes through the socket module (see the module doc).
    sock: Option<Py<PyAny>>,
    /// asyncio's `_address`, when true: the only destination `sendto` accepts.
    address: Option<Py<PyAny>>,
    /// Datagrams the kernel refused for now, with their destinations.
    queue: VecDeque<(Py<PyBytes>, Py<PyAny>)>,
    /// The last sender address received, raw and as handed to the protocol.
    last_peer: Option<(SockAddr, Py<PyAny>)>,
}

#[pyclass(frozen, extends = NativeTransport, module = "ferroloop._ferroloop")]
pub struct DatagramTransport {
    fd: RawFd,
    family: libc::c_int,
    /// Sender addresses are converted here (AF_INET, AF_INET6, AF_UNIX); sockets of other
    /// families use the socket object's own `recvfrom`.
    native_recv: bool,
    /// The socket's class overrides `recvfrom`, `send` or `sendto`: every receive and send
    /// goes through the socket object's methods, as asyncio calls them.
    socket_methods: bool,
    /// asyncio's `self._extra['peername']` is true: send with `send()`.
    connected: bool,
    /// What the running interpreter's asyncio does with datagrams (see `DatagramRules`).
    rules: DatagramRules,
    state: GilCell<State>,
}

/// The parts of `_SelectorDatagramTransport.sendto` that changed between CPython versions.
/// 3.11 and 3.12 drop an empty datagram and count a queued datagram's data bytes; 3.13 sends
/// an empty datagram (it is a valid UDP packet) and counts 8 more bytes per queued datagram
/// for its header (gh-113812), so flow control pauses on many small datagrams too.
#[derive(Clone, Copy)]
struct DatagramRules {
    send_empty: bool,
    header_bytes: usize,
}

impl DatagramRules {
    fn for_interpreter(py: Python<'_>) -> Self {
        let since_313 = py.version_info() >= (3, 13);
        DatagramRules {
            send_empty: since_313,
            header_bytes: if since_313 { 8 } else { 0 },
        }
    }

    /// What one queued datagram adds to `get_write_buffer_size()`.
    fn queued_size(self, data: &[u8]) -> usize {
        data.len() + self.header_bytes
    }
}

impl DatagramTransport {
    /// The sockaddr for `addr` if it can be had without the socket module.
    fn native_sockaddr(
        &self,
        py: Python<'_>,
        addr: &Bound<'_, PyAny>,
    ) -> PyResult<Option<SockAddr>> {
        if let Some((raw, obj)) = self.state.borrow(py)?.last_peer.as_ref() {
            if obj.is(addr) {
                return Ok(Some(*raw));
            }
        }
        Ok(parse_inet(self.family, addr))
    }

    /// One send attempt: `send()` when connected, else `sendto()` (natively or through the
    /// socket module). The datagram is never partly sent.
    fn send_one(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        addr: &Bound<'_, PyAny>,
    ) -> PyResult<Sent> {
        if self.socket_methods {
            return self.send_via_socket(py, data, addr);
        }
        let fd = self.fd;
        let target = if self.connected {
            None
        } else {
            match self.native_sockaddr(py, addr)? {
                Some(sa) => Some(sa),
                None => return self.send_via_socket(py, data, addr),
            }
        };
        let sent = with_buffer(data, |bytes| {
            let addr = target.as_ref().map(|sa| (sa.as_ptr(), sa.len));
            sys::sendto(fd, bytes, addr)
        });
        Ok(match sent {
            Ok(result) => io_outcome(result),
            Err(e) => Sent::Failed(e),
        })
    }

    /// `sock.sendto(data, addr)`: the socket module converts (or resolves) the address.
    fn send_via_socket(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        addr: &Bound<'_, PyAny>,
    ) -> PyResult<Sent> {
        let sock = self
            .state
            .borrow(py)?
            .sock
            .as_ref()
            .map(|s| s.clone_ref(py));
        let Some(sock) = sock else {
            return Ok(Sent::Failed(PyRuntimeError::new_err("transport is closed")));
        };
        // asyncio: `self._sock.send(data)` when connected, else `sendto(data, addr)`.
        let sent = if self.connected && self.socket_methods {
            sock.bind(py).call_method1(intern!(py, "send"), (data,))
        } else {
            sock.bind(py)
                .call_method1(intern!(py, "sendto"), (data, addr))
        };
        Ok(match sent {
            // What the socket method returned, when it says (a count of bytes).
            Ok(n) => Sent::Done(n.extract::<usize>().unwrap_or(0)),
            Err(e) if would_block_err(py, &e) => Sent::WouldBlock,
            Err(e) => Sent::Failed(e),
        })
    }

    /// The Python address of a received datagram's sender, reusing the last one's object
    /// while the same peer keeps sending.
    fn peer_object<'py>(&self, py: Python<'py>, addr: &SockAddr) -> PyResult<Bound<'py, PyAny>> {
        if addr.len == 0 {
            return Ok(py.None().into_bound(py));
        }
        if let Some((raw, obj)) = self.state.borrow(py)?.last_peer.as_ref() {
            if raw.as_bytes() == addr.as_bytes() {
                return Ok(obj.bind(py).clone());
            }
        }
        let obj = address_to_py(py, addr)?;
        let old = self
            .state
            .borrow_mut(py)?
            .last_peer
            .replace((*addr, obj.clone().unbind()));
        drop(old);
        Ok(obj)
    }

    /// `protocol.error_received(exc)`; what it raises propagates, as in asyncio.
    fn error_received(slf: &Bound<'_, Self>, err: PyErr) -> PyResult<()> {
        let py = slf.py();
        let protocol = base::protocol(slf.as_super().get(), py)?;
        if !protocol.is_none(py) {
            protocol
                .bind(py)
                .call_method1(intern!(py, "error_received"), (err.into_value(py),))?;
        }
        Ok(())
    }

    /// A failed send: OSError goes to `error_received`, KeyboardInterrupt and SystemExit
    /// propagate, anything else is fatal.
    fn send_failed(slf: &Bound<'_, Self>, err: PyErr) -> PyResult<()> {
        let py = slf.py();
        if is_exit_exception(py, &err) {
            return Err(err);
        }
        if err.is_instance_of::<PyOSError>(py) {
            return Self::error_received(slf, err);
        }
        base::fatal(slf.as_super(), err, WRITE_ERROR)
    }

    /// Hands a datagram to `protocol.datagram_received`; what it raises propagates.
    fn deliver(
        slf: &Bound<'_, Self>,
        data: &Bound<'_, PyAny>,
        addr: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        let protocol = base::protocol(slf.as_super().get(), py)?;
        if protocol.is_none(py) {
            return Ok(());
        }
        // Looked up on each call, as asyncio does.
        protocol
            .bind(py)
            .call_method1(intern!(py, "datagram_received"), (data, addr))
            .map(drop)
    }

    /// `_read_ready` for sockets of other families: the socket module's `recvfrom`.
    fn read_via_socket(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let sock = slf
            .get()
            .state
            .borrow(py)?
            .sock
            .as_ref()
            .map(|s| s.clone_ref(py));
        let Some(sock) = sock else {
            return Ok(());
        };
        let received = sock
            .bind(py)
            .call_method1(intern!(py, "recvfrom"), (MAX_SIZE,))
            .and_then(|r| r.extract::<(Bound<'_, PyAny>, Bound<'_, PyAny>)>());
        match received {
            Ok((data, addr)) => {
                slf.as_super().get().count_received(data.len().unwrap_or(0));
                Self::deliver(slf, &data, &addr)
            }
            Err(e) if would_block_err(py, &e) => Ok(()),
            Err(e) if is_exit_exception(py, &e) => Err(e),
            Err(e) if e.is_instance_of::<PyOSError>(py) => Self::error_received(slf, e),
            Err(e) => base::fatal(slf.as_super(), e, READ_ERROR),
        }
    }
}

impl CoreKind for DatagramTransport {
    const WRITE_NAME: &'static str = WRITE_READY;

    fn read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::_read_ready(slf)
    }

    fn write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::_sendto_ready(slf)
    }

    /// Drops the queued datagrams.
    fn drop_queue(slf: &Bound<'_, Self>) -> PyResult<()> {
        let dropped = mem::take(&mut slf.get().state.borrow_mut(slf.py())?.queue);
        drop(dropped);
        Ok(())
    }
}

#[pymethods]
impl DatagramTransport {
    /// `connected`: the socket has a peer name (asyncio then uses `send()`); `address`:
    /// asyncio's `_address` if true, else None; `socket_methods`: the socket's class
    /// overrides its I/O methods, which are then called instead of the system.
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        event_loop: Bound<'_, LoopCore>,
        owner: Py<PyAny>,
        sock: Py<PyAny>,
        fd: RawFd,
        family: libc::c_int,
        connected: bool,
        address: Option<Py<PyAny>>,
        socket_methods: bool,
    ) -> PyResult<PyClassInitializer<Self>> {
        let py = event_loop.py();
        let address = address.filter(|a| !a.is_none(py));
        let shared = NativeTransport::new(
            event_loop,
            owner,
            fd,
            TransportKind::of_socket(family, true),
            &<Self as CoreKind>::HOOKS,
        );
        Ok(
            PyClassInitializer::from(shared).add_subclass(DatagramTransport {
                fd,
                family,
                native_recv: !socket_methods
                    && matches!(family, libc::AF_INET | libc::AF_INET6 | libc::AF_UNIX),
                socket_methods,
                connected,
                rules: DatagramRules::for_interpreter(py),
                state: GilCell::new(State {
                    sock: Some(sock),
                    address,
                    queue: VecDeque::new(),
                    last_peer: None,
                }),
            }),
        )
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Some(st) = self.state.borrow_for_traverse() else {
            return Ok(());
        };
        visit.call(&st.sock)?;
        visit.call(&st.address)?;
        for (_, addr) in &st.queue {
            visit.call(addr)?;
        }
        if let Some((_, obj)) = &st.last_peer {
            visit.call(obj)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        Python::attach(|py| {
            let dropped = match self.state.borrow_mut(py) {
                Ok(mut st) => (
                    st.sock.take(),
                    st.address.take(),
                    mem::take(&mut st.queue),
                    st.last_peer.take(),
                ),
                Err(_) => return,
            };
            drop(dropped);
        });
    }

    fn set_protocol(slf: &Bound<'_, Self>, protocol: Bound<'_, PyAny>) -> PyResult<()> {
        let py = protocol.py();
        let dropped = slf
            .as_super()
            .get()
            .link_mut(py)?
            .protocol
            .replace(protocol.unbind());
        drop(dropped);
        Ok(())
    }

    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let lp = {
            let link = slf.as_super().get().link(py)?;
            if link.conn_lost > 0 || !link.reader_registered {
                return Ok(());
            }
            match link.event_loop.as_ref() {
                Some(lp) => lp.clone_ref(py),
                None => return Ok(()),
            }
        };
        if !this.native_recv {
            return Self::read_via_socket(slf);
        }
        let mut addr = SockAddr::new();
        let received = lp.bind(py).get().recvfrom_to_bytes(
            py,
            this.fd,
            MAX_SIZE,
            &mut addr.storage,
            &mut addr.len,
        )?;
        let data = match received {
            Ok(data) => data,
            Err(e) if would_block(&e) => return Ok(()),
            Err(e) => return Self::error_received(slf, os_error(e)),
        };
        slf.as_super().get().count_received(data.as_bytes().len());
        let peer = match this.peer_object(py, &addr) {
            Ok(peer) => peer,
            Err(e) => return base::fatal(slf.as_super(), e, READ_ERROR),
        };
        Self::deliver(slf, data.as_any(), &peer)
    }

    /// Sends queued datagrams now that the socket is writable (asyncio's `_sendto_ready`).
    fn _sendto_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let shared = slf.as_super().get();
        if !shared.link(py)?.writer_registered {
            return Ok(());
        }
        loop {
            let item = {
                let mut st = this.state.borrow_mut(py)?;
                let Some(item) = st.queue.pop_front() else {
                    break;
                };
                shared.link_mut(py)?.queued -= this.rules.queued_size(item.0.bind(py).as_bytes());
                item
            };
            let (data, addr) = (item.0.bind(py), item.1.bind(py));
            match this.send_one(py, data.as_any(), addr)? {
                Sent::Done(n) => shared.count_sent(n),
                Sent::WouldBlock => {
                    let mut st = this.state.borrow_mut(py)?;
                    shared.link_mut(py)?.queued += this.rules.queued_size(data.as_bytes());
                    st.queue.push_front(item);
                    break;
                }
                Sent::Failed(e) => return Self::send_failed(slf, e),
            }
        }
        base::maybe_resume_protocol(slf.as_super())?;
        let (empty, closing) = {
            let st = this.state.borrow(py)?;
            (st.queue.is_empty(), shared.link(py)?.closing)
        };
        if empty {
            base::watch(slf.as_super(), Direction::Write, false)?;
            if closing {
                // Counted as lost (asyncio does not count it, and a later abort() or
                // sendto() then fails on the transport's None loop or socket).
                base::connection_lost_now(shared, py)?;
            }
        }
        Ok(())
    }

    #[pyo3(signature = (data, addr=None))]
    fn sendto(
        slf: &Bound<'_, Self>,
        data: &Bound<'_, PyAny>,
        addr: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let exact_bytes = data.is_exact_instance_of::<PyBytes>();
        if !exact_bytes
            && !data.is_instance_of::<PyBytes>()
            && !data.is_instance_of::<PyByteArray>()
            && !data.is_instance_of::<PyMemoryView>()
        {
            return Err(PyTypeError::new_err(format!(
                "data argument must be a bytes-like object, not {}",
                data.get_type().name()?.repr()?
            )));
        }
        let empty = if exact_bytes {
            data.cast::<PyBytes>()?.as_bytes().is_empty()
        } else {
            !data.is_truthy()?
        };
        if empty && !this.rules.send_empty {
            return Ok(());
        }
        let mut addr = addr.unwrap_or_else(|| py.None().into_bound(py));
        let (address, conn_lost, released, queue_empty) = {
            let st = this.state.borrow(py)?;
            let link = slf.as_super().get().link(py)?;
            (
                st.address.as_ref().map(|a| a.clone_ref(py)),
                link.conn_lost,
                link.event_loop.is_none(),
                st.queue.is_empty(),
            )
        };
        if let Some(address) = address {
            let address = address.into_bound(py);
            if !addr.is_none() && !addr.is(&address) && !address.eq(&addr)? {
                return Err(PyValueError::new_err(format!(
                    "Invalid address: must be None or {}",
                    address.str()?
                )));
            }
            addr = address;
            if conn_lost > 0 {
                return base::count_lost_write(slf.as_super(), "socket.send() raised exception.");
            }
        } else if released {
            // The socket is closed (asyncio would fail on its `None` socket): drop the
            // datagram with asyncio's warning rather than touch a stale fd.
            return base::count_lost_write(slf.as_super(), "socket.send() raised exception.");
        }
        if queue_empty {
            match this.send_one(py, data, &addr)? {
                Sent::Done(n) => {
                    slf.as_super().get().count_sent(n);
                    return Ok(());
                }
                Sent::WouldBlock => base::watch(slf.as_super(), Direction::Write, true)?,
                Sent::Failed(e) => return Self::send_failed(slf, e),
            }
        }
        // Queue a copy: a bytearray or the memory behind a view may change.
        let copy = if exact_bytes {
            data.cast::<PyBytes>()?.clone()
        } else {
            py.get_type::<PyBytes>()
                .call1((data,))?
                .cast_into::<PyBytes>()?
        };
        {
            slf.as_super().get().link_mut(py)?.queued += this.rules.queued_size(copy.as_bytes());
            let mut st = this.state.borrow_mut(py)?;
            st.queue.push_back((copy.unbind(), addr.unbind()));
        }
        base::maybe_pause_protocol(slf.as_super())
    }

    /// Drops every reference once `connection_lost` has run (breaks the owner cycle); the
    /// owner closes the socket.
    fn _release(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let dropped = {
            let mut st = slf.get().state.borrow_mut(py)?;
            (
                st.sock.take(),
                mem::take(&mut st.queue),
                st.last_peer.take(),
            )
        };
        drop(dropped);
        base::release(slf.as_super().get(), py)
    }
}
