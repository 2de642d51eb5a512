//! Accepting a server's connections without a `socket.socket` per connection.
//!
//! asyncio's `_accept_connection` takes each connection as a `socket.socket` (through
//! `sock.accept()`), makes it non-blocking and, in the transport, sets TCP_NODELAY through
//! the socket module. For plain TCP and Unix servers ferroloop does those three system
//! calls here, and the transport makes the socket object only if something asks for it
//! (`_transports._SocketBased._sock`), and the peer's address as Python gives it only when
//! its extra info is first read (`_SocketBased._extra`): until then it keeps the address as
//! the kernel wrote it, a `bytes` object smaller than the tuple and dict it replaces.

use std::os::fd::RawFd;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::os_error;
use crate::sockaddr::{address_to_py, SockAddr};
use crate::sys;

/// `_accept_connection(listen_fd, nodelay)`: accepts one connection on the listening socket
/// `listen_fd`, non-blocking and close-on-exec, with TCP_NODELAY set when `nodelay`.
///
/// Returns `(fd, peer)`: the caller owns the fd; `peer` is the peer's address in the
/// kernel's form (a `struct sockaddr`, for `_socket_address`). Returns None when a
/// connection was accepted but TCP_NODELAY could not be set: it is closed again, as
/// asyncio's accept path drops a connection whose transport could not be made. Raises
/// OSError as `socket.accept()` does (BlockingIOError once nothing waits).
#[pyfunction]
pub(crate) fn _accept_connection(
    py: Python<'_>,
    listen_fd: RawFd,
    nodelay: bool,
) -> PyResult<Option<(RawFd, Py<PyAny>)>> {
    let mut addr = SockAddr::new();
    // Without the GIL, as `socket.accept()`: a listener made blocking would otherwise stop
    // every thread while it waits.
    let fd = py
        .detach(|| {
            sys::accept(
                listen_fd,
                &mut addr.storage,
                &mut addr.len,
                libc::SOCK_NONBLOCK,
            )
        })
        .map_err(os_error)?;
    if nodelay && sys::set_tcp_nodelay(fd).is_err() {
        // SAFETY: `fd` came from accept4 above and nothing else owns it yet.
        unsafe { libc::close(fd) };
        return Ok(None);
    }
    Ok(Some((
        fd,
        PyBytes::new(py, addr.as_bytes()).into_any().unbind(),
    )))
}

/// `_socket_address(raw)`: the address `raw` (a `struct sockaddr` of the AF_INET, AF_INET6
/// or AF_UNIX family, as `_accept_connection` gives it) as the socket module gives it.
/// Raises ValueError for bytes that are no such address.
#[pyfunction]
pub(crate) fn _socket_address(py: Python<'_>, raw: &[u8]) -> PyResult<Py<PyAny>> {
    let mut addr = SockAddr::new();
    let storage = std::mem::size_of::<libc::sockaddr_storage>();
    if raw.len() < std::mem::size_of::<libc::sa_family_t>() || raw.len() > storage {
        return Err(PyValueError::new_err("not a socket address"));
    }
    // SAFETY: `raw` has at most `size_of::<sockaddr_storage>()` bytes (checked above) and
    // the storage is that big; the two do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(
            raw.as_ptr(),
            (&mut addr.storage as *mut libc::sockaddr_storage).cast::<u8>(),
            raw.len(),
        );
    }
    addr.len = raw.len() as libc::socklen_t;
    let family = addr.storage.ss_family as libc::c_int;
    if ![libc::AF_INET, libc::AF_INET6, libc::AF_UNIX].contains(&family) {
        return Err(PyValueError::new_err("not a socket address"));
    }
    Ok(address_to_py(py, &addr)?.unbind())
}

/// `_socket_name(fd)`: what `socket.getsockname()` returns for the socket `fd` (an
/// AF_INET, AF_INET6 or AF_UNIX socket), for a transport whose socket object was never
/// made. Raises OSError as `getsockname()` does.
#[pyfunction]
pub(crate) fn _socket_name(py: Python<'_>, fd: RawFd) -> PyResult<Py<PyAny>> {
    let mut addr = SockAddr::new();
    sys::getsockname(fd, &mut addr.storage, &mut addr.len).map_err(os_error)?;
    Ok(address_to_py(py, &addr)?.unbind())
}
