//! The system calls under the transports and the `sock_*` operations, after mio's
//! `sys/unix`: one small layer so that transport files hold only asyncio's semantics.
//!
//! Every call here is retried on EINTR (PEP 475, as the socket module does) by
//! `retry_eintr`, the one place that loop is written. Errors come back as `io::Error`;
//! turning them into Python exceptions happens at the boundary (`crate::errors`).

use std::io;
use std::os::fd::RawFd;

use pyo3::exceptions::{PyBlockingIOError, PyInterruptedError};
use pyo3::{PyErr, Python};

/// Runs `syscall` until it does not fail with EINTR; a negative result is the error in
/// `errno`. `op` names the call for fault injection (test builds only).
pub(crate) fn retry_eintr(op: Op, mut syscall: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        if let Some(errno) = fault::errno(op) {
            let err = io::Error::from_raw_os_error(errno);
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        let n = syscall();
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// The calls of this layer, as fault injection names them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Op {
    Read,
    Write,
    WriteVectored,
    RecvFrom,
    SendTo,
    Accept,
    /// `epoll_wait` in `event_loop/poller.rs` (EINTR there runs Python's signal handlers).
    EpollWait,
}

/// Whether a failed syscall only means "not now" (asyncio's
/// `except (BlockingIOError, InterruptedError)`).
pub(crate) fn would_block(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// The same test for an exception raised by a Python socket method.
pub(crate) fn would_block_err(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyBlockingIOError>(py) || err.is_instance_of::<PyInterruptedError>(py)
}

/// The writable bytes of an exported Python buffer (`Py_buffer.buf`, `.len`) as a slice;
/// empty when `len` is 0, whatever `ptr` is (an empty buffer may export NULL).
///
/// # Safety
/// `ptr` must point to `len` writable bytes that stay exported, and are not otherwise
/// accessed, for the lifetime `'a`.
pub(crate) unsafe fn exported_bytes<'a>(ptr: *mut libc::c_void, len: usize) -> &'a mut [u8] {
    if len == 0 || ptr.is_null() {
        return &mut [];
    }
    // SAFETY: non-null, and the caller guarantees `len` writable bytes for `'a`.
    unsafe { std::slice::from_raw_parts_mut(ptr.cast::<u8>(), len) }
}

/// `send()` without SIGPIPE (a socket) or `write()` (a pipe or character device).
pub(crate) fn write(fd: RawFd, data: &[u8], socket: bool) -> io::Result<usize> {
    let data = &data[..fault::partial(Op::Write, data.len())];
    retry_eintr(Op::Write, || {
        // SAFETY: `data` is a live byte slice for the duration of the call; the kernel only
        // reads `data.len()` bytes from it.
        unsafe {
            if socket {
                libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL)
            } else {
                libc::write(fd, data.as_ptr().cast(), data.len())
            }
        }
    })
}

/// `sendmsg()` without SIGPIPE (a socket) or `writev()` (a pipe) of `iov`.
///
/// Every `iovec` must point to memory that stays readable and unchanged for the call.
pub(crate) fn write_vectored(fd: RawFd, iov: &[libc::iovec], socket: bool) -> io::Result<usize> {
    if !cfg!(feature = "fault-injection") {
        return write_vectored_now(fd, iov, socket);
    }
    let total: usize = iov.iter().map(|v| v.iov_len).sum();
    let limit = fault::partial(Op::WriteVectored, total);
    if limit < total {
        // An injected partial write: only the first `limit` bytes, as a short writev.
        let mut left = limit;
        let mut cut = Vec::with_capacity(iov.len());
        for v in iov {
            if left == 0 {
                break;
            }
            let len = v.iov_len.min(left);
            cut.push(libc::iovec {
                iov_base: v.iov_base,
                iov_len: len,
            });
            left -= len;
        }
        if cut.is_empty() {
            return Err(io::Error::from_raw_os_error(libc::EAGAIN));
        }
        return write_vectored_now(fd, &cut, socket);
    }
    write_vectored_now(fd, iov, socket)
}

fn write_vectored_now(fd: RawFd, iov: &[libc::iovec], socket: bool) -> io::Result<usize> {
    retry_eintr(Op::WriteVectored, || {
        // SAFETY: the caller guarantees each iovec points to readable memory of its length;
        // the kernel only reads from them. `msg` is zeroed but for the iov fields.
        unsafe {
            if socket {
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
                msg.msg_iovlen = iov.len() as _;
                libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL)
            } else {
                libc::writev(fd, iov.as_ptr(), iov.len() as libc::c_int)
            }
        }
    })
}

/// `recv()` (a socket) or `read()` (a pipe) into `buf`.
pub(crate) fn read(fd: RawFd, buf: &mut [u8], socket: bool) -> io::Result<usize> {
    retry_eintr(Op::Read, || {
        // SAFETY: `buf` is a live, writable slice; the kernel writes at most `buf.len()`
        // bytes into it.
        unsafe {
            if socket {
                libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0)
            } else {
                libc::read(fd, buf.as_mut_ptr().cast(), buf.len())
            }
        }
    })
}

/// `recvfrom()` into `buf`; the sender's address is written to `addr`, its length to
/// `addrlen` (0 when there is none).
pub(crate) fn recvfrom(
    fd: RawFd,
    buf: &mut [u8],
    addr: &mut libc::sockaddr_storage,
    addrlen: &mut libc::socklen_t,
) -> io::Result<usize> {
    retry_eintr(Op::RecvFrom, || {
        *addrlen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: `buf` is a live writable slice and `addr` a writable sockaddr_storage
        // whose size `addrlen` gives; the kernel writes at most that much to each.
        unsafe {
            libc::recvfrom(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (addr as *mut libc::sockaddr_storage).cast(),
                addrlen,
            )
        }
    })
}

/// `send()` (connected) or `sendto()` of one datagram, without SIGPIPE. `addr` is a
/// sockaddr of `addrlen` bytes.
pub(crate) fn sendto(
    fd: RawFd,
    data: &[u8],
    addr: Option<(*const libc::sockaddr, libc::socklen_t)>,
) -> io::Result<usize> {
    retry_eintr(Op::SendTo, || {
        // SAFETY: `data` is a live byte slice; `addr`, when given, points to a sockaddr of
        // `addrlen` bytes that the caller keeps alive for the call. The kernel only reads.
        unsafe {
            match addr {
                None => libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL),
                Some((sa, len)) => libc::sendto(
                    fd,
                    data.as_ptr().cast(),
                    data.len(),
                    libc::MSG_NOSIGNAL,
                    sa,
                    len,
                ),
            }
        }
    })
}

/// `shutdown(fd, SHUT_WR)`: the half-close of `write_eof()`.
pub(crate) fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // SAFETY: shutdown takes only integers; a bad fd is reported through errno.
    if unsafe { libc::shutdown(fd, libc::SHUT_WR) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// An int-valued SOL_SOCKET option of socket `fd` (`getsockopt`).
pub(crate) fn socket_int_option(fd: RawFd, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live locals of the sizes given; the kernel writes at
    // most `len` bytes into `value` and reports a bad fd or option through the return value.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `getsockname(fd)`: the socket's own address is written to `addr`, its length to
/// `addrlen`.
pub(crate) fn getsockname(
    fd: RawFd,
    addr: &mut libc::sockaddr_storage,
    addrlen: &mut libc::socklen_t,
) -> io::Result<()> {
    *addrlen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `addr` is a writable sockaddr_storage whose size `addrlen` gives; a bad fd is
    // reported through the return value.
    let rc =
        unsafe { libc::getsockname(fd, (addr as *mut libc::sockaddr_storage).cast(), addrlen) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, 1)`: small writes leave without waiting for
/// the peer's ACK.
pub(crate) fn set_tcp_nodelay(fd: RawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: `one` is a live c_int and its size is given; the kernel only reads it and
    // reports a bad fd through the return value.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The address family of socket `fd` (`SO_DOMAIN`), or AF_UNSPEC when the kernel does not
/// say (not a socket). Used once per transport, to count it by kind.
pub(crate) fn socket_domain(fd: RawFd) -> libc::c_int {
    socket_int_option(fd, libc::SO_DOMAIN).unwrap_or(libc::AF_UNSPEC)
}

/// Asks the kernel to grow a pipe's buffer to `size` bytes (`F_SETPIPE_SZ`). Best effort:
/// a failure (not a pipe, the user's limit reached) leaves the pipe as it was.
pub(crate) fn try_set_pipe_size(fd: RawFd, size: libc::c_int) {
    // SAFETY: fcntl with an int argument; errors are ignored on purpose.
    unsafe {
        libc::fcntl(fd, libc::F_SETPIPE_SZ, size);
    }
}

/// `accept4(fd, SOCK_CLOEXEC | flags)`: the new connection's fd; the peer's address is
/// written to `addr`, its length to `addrlen`. `flags` is 0 or `SOCK_NONBLOCK`.
pub(crate) fn accept(
    fd: RawFd,
    addr: &mut libc::sockaddr_storage,
    addrlen: &mut libc::socklen_t,
    flags: libc::c_int,
) -> io::Result<RawFd> {
    retry_eintr(Op::Accept, || {
        *addrlen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: `addr` is a writable sockaddr_storage whose size `addrlen` gives.
        unsafe {
            libc::accept4(
                fd,
                (addr as *mut libc::sockaddr_storage).cast(),
                addrlen,
                libc::SOCK_CLOEXEC | flags,
            ) as isize
        }
    })
    .map(|n| n as RawFd)
}

/// Fault injection for tests: a plan of errors and short writes the calls above take
/// before touching the kernel. Compiled only with the `fault-injection` feature; otherwise
/// these are empty inline functions and the release build pays nothing.
#[cfg(feature = "fault-injection")]
pub(crate) mod fault {
    #![allow(clippy::needless_pass_by_value)]
    use super::Op;
    use std::sync::Mutex;

    /// One planned fault: after `skip` matching calls, the next `count` fail with `errno`
    /// (or, with errno 0, write at most `partial` bytes).
    pub(crate) struct Plan {
        pub op: Op,
        pub errno: i32,
        pub partial: usize,
        pub skip: u32,
        pub count: u32,
    }

    static PLANS: Mutex<Vec<Plan>> = Mutex::new(Vec::new());

    pub(crate) fn add(plan: Plan) {
        if let Ok(mut plans) = PLANS.lock() {
            plans.push(plan);
        }
    }

    pub(crate) fn clear() {
        if let Ok(mut plans) = PLANS.lock() {
            plans.clear();
        }
    }

    /// Takes the next fault of kind `want` for `op`, if one is due.
    fn take(op: Op, want_errno: bool) -> Option<(i32, usize)> {
        let mut plans = PLANS.lock().ok()?;
        let i = plans
            .iter()
            .position(|p| p.op == op && (p.errno != 0) == want_errno && p.count > 0)?;
        let plan = &mut plans[i];
        if plan.skip > 0 {
            plan.skip -= 1;
            return None;
        }
        plan.count -= 1;
        let fault = (plan.errno, plan.partial);
        if plan.count == 0 {
            plans.remove(i);
        }
        Some(fault)
    }

    /// An errno to fail this call with, if one is planned.
    pub(crate) fn errno(op: Op) -> Option<i32> {
        take(op, true).map(|(errno, _)| errno)
    }

    fn parse_op(name: &str) -> pyo3::PyResult<Op> {
        Ok(match name {
            "read" => Op::Read,
            "write" => Op::Write,
            "write_vectored" => Op::WriteVectored,
            "recvfrom" => Op::RecvFrom,
            "sendto" => Op::SendTo,
            "accept" => Op::Accept,
            "epoll_wait" => Op::EpollWait,
            _ => {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "unknown syscall {name:?}"
                )))
            }
        })
    }

    /// `_inject_faults(op, errno=0, partial=0, count=1, skip=0)`: after `skip` calls of
    /// `op`, the next `count` fail with `errno`, or with errno 0 write at most `partial`
    /// bytes. Test builds only.
    #[pyo3::pyfunction]
    #[pyo3(signature = (op, errno=0, partial=0, count=1, skip=0))]
    pub(crate) fn _inject_faults(
        op: &str,
        errno: i32,
        partial: usize,
        count: u32,
        skip: u32,
    ) -> pyo3::PyResult<()> {
        add(Plan {
            op: parse_op(op)?,
            errno,
            partial,
            skip,
            count,
        });
        Ok(())
    }

    /// `_clear_faults()`: drops every planned fault.
    #[pyo3::pyfunction]
    pub(crate) fn _clear_faults() {
        clear();
    }

    /// How many of `len` bytes this write may take.
    pub(crate) fn partial(op: Op, len: usize) -> usize {
        take(op, false).map_or(len, |(_, n)| n.min(len))
    }
}

#[cfg(not(feature = "fault-injection"))]
pub(crate) mod fault {
    use super::Op;

    #[inline(always)]
    pub(crate) fn errno(_op: Op) -> Option<i32> {
        None
    }

    #[inline(always)]
    pub(crate) fn partial(_op: Op, len: usize) -> usize {
        len
    }
}

/// `_unlink_if_inode(path, inode)`: removes the file `path` if it is still the inode
/// `inode`; returns whether it did. Raises FileNotFoundError or another OSError as
/// `os.stat`/`os.unlink` would.
///
/// 3.13's `_UnixSelectorEventLoop._stop_serving` unlinks a closed Unix server's socket path
/// this way with `os.stat` and `os.unlink`. Tools that flag blocking calls made inside a
/// running loop (blockbuster, which aiohttp's and others' test suites enable) allow those two
/// calls in asyncio's own `_stop_serving` only, by file and function name; made from
/// ferroloop's Python they were flagged on every Unix server close. The same two system
/// calls, made here, are not Python calls and so are not flagged, as asyncio's are not.
#[pyo3::pyfunction]
pub(crate) fn _unlink_if_inode(path: std::path::PathBuf, inode: u64) -> pyo3::PyResult<bool> {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata(&path)?.ino() != inode {
        return Ok(false);
    }
    std::fs::remove_file(&path)?;
    Ok(true)
}
