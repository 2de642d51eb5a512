//! Accepting a server's connections without a `socket.socket` per connection.
//!
//! asyncio's `_accept_connection` takes each connection as a `socket.socket` (through
//! `sock.accept()`), makes it non-blocking and, in the transport, sets TCP_NODELAY through
//! the socket module. For plain TCP and Unix servers ferroloop does those three system
//! calls here, and the transport makes the socket object only if something asks for it
//! (`_transports._SocketBased._sock`).

use std::os::fd::RawFd;

use pyo3::prelude::*;

use crate::errors::os_error;
use crate::sockaddr::{address_to_py, SockAddr};
use crate::sys;

/// `_accept_connection(listen_fd, nodelay)`: accepts one connection on the listening socket
/// `listen_fd`, non-blocking and close-on-exec, with TCP_NODELAY set when `nodelay`.
///
/// Returns `(fd, peer_address)`, the address as `socket.accept()` gives it; the caller owns
/// the fd. Returns None when a connection was accepted but TCP_NODELAY could not be set: it
/// is closed again, as asyncio's accept path drops a connection whose transport could not
/// be made. Raises OSError as `socket.accept()` does (BlockingIOError once nothing waits);
/// an address the socket module could not convert closes the connection and raises.
#[pyfunction]
pub(crate) fn _accept_connection(
    py: Python<'_>,
    listen_fd: RawFd,
    nodelay: bool,
) -> PyResult<Option<(RawFd, Py<PyAny>)>> {
    let mut addr = SockAddr::new();
    let fd = sys::accept(
        listen_fd,
        &mut addr.storage,
        &mut addr.len,
        libc::SOCK_NONBLOCK,
    )
    .map_err(os_error)?;
    let close = || {
        // SAFETY: `fd` came from accept4 above and nothing else owns it yet.
        unsafe { libc::close(fd) };
    };
    if nodelay && sys::set_tcp_nodelay(fd).is_err() {
        close();
        return Ok(None);
    }
    match address_to_py(py, &addr) {
        Ok(address) => Ok(Some((fd, address.unbind()))),
        Err(err) => {
            close();
            Err(err)
        }
    }
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
