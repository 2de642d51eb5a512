//! Socket addresses in the kernel's form, and their conversion to and from what the socket
//! module uses (CPython's `makesockaddr` / `getsockaddrarg`) for the families converted
//! natively: AF_INET, AF_INET6 and AF_UNIX. Shared by the datagram transport and the
//! `sock_*` operations.

use std::io;
use std::mem;

use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt, PyString, PyTuple};

use crate::errors::os_error;

/// A socket address in the kernel's form.
#[derive(Clone, Copy)]
pub struct SockAddr {
    pub storage: libc::sockaddr_storage,
    pub len: libc::socklen_t,
}

impl SockAddr {
    pub fn new() -> Self {
        SockAddr {
            // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
            storage: unsafe { mem::zeroed() },
            len: 0,
        }
    }

    pub fn as_ptr(&self) -> *const libc::sockaddr {
        (&self.storage as *const libc::sockaddr_storage).cast()
    }

    /// The `len` bytes the kernel reads or wrote.
    pub fn as_bytes(&self) -> &[u8] {
        let len = (self.len as usize).min(mem::size_of::<libc::sockaddr_storage>());
        // SAFETY: the storage is `size_of::<sockaddr_storage>()` initialised bytes and `len`
        // is clamped to that.
        unsafe { std::slice::from_raw_parts(self.as_ptr().cast::<u8>(), len) }
    }

    /// The storage viewed as the family-specific struct `T`.
    ///
    /// # Safety
    /// `T` must be one of the libc sockaddr structs (plain old data no larger than
    /// sockaddr_storage, whose alignment covers theirs).
    pub unsafe fn view<T>(&self) -> &T {
        // SAFETY: per the contract, every bit pattern is a valid `T` and the storage is big
        // and aligned enough.
        unsafe { &*self.as_ptr().cast::<T>() }
    }

    /// # Safety
    /// As `view`.
    pub unsafe fn view_mut<T>(&mut self) -> &mut T {
        // SAFETY: as `view`; the borrow of `self` is exclusive.
        unsafe { &mut *(&mut self.storage as *mut libc::sockaddr_storage).cast::<T>() }
    }
}

// glibc's address text conversions (the ones CPython's socket module uses); the libc crate
// does not declare them.
extern "C" {
    fn inet_ntop(
        af: libc::c_int,
        src: *const libc::c_void,
        dst: *mut libc::c_char,
        size: libc::socklen_t,
    ) -> *const libc::c_char;
    fn inet_pton(af: libc::c_int, src: *const libc::c_char, dst: *mut libc::c_void) -> libc::c_int;
}

/// `inet_ntop` as a Python `str` (what CPython's `make_ipv4_addr`/`make_ipv6_addr` return).
fn ntop<'py>(
    py: Python<'py>,
    family: libc::c_int,
    src: *const libc::c_void,
) -> PyResult<Bound<'py, PyString>> {
    let mut buf = [0 as libc::c_char; 64];
    // SAFETY: `src` points to an in_addr/in6_addr matching `family`; `buf` has room for 64
    // bytes, more than INET6_ADDRSTRLEN (46), and inet_ntop writes a NUL-terminated string.
    let p = unsafe { inet_ntop(family, src, buf.as_mut_ptr(), buf.len() as libc::socklen_t) };
    if p.is_null() {
        return Err(os_error(io::Error::last_os_error()));
    }
    // SAFETY: on success `buf` holds a NUL-terminated string.
    let text = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Ok(PyString::new(py, &text.to_string_lossy()))
}

/// What `socket.recvfrom` returns as the address for `addr` (CPython's `makesockaddr` for
/// the families this transport converts natively).
pub fn address_to_py<'py>(py: Python<'py>, addr: &SockAddr) -> PyResult<Bound<'py, PyAny>> {
    if addr.len == 0 {
        return Ok(py.None().into_bound(py));
    }
    match addr.storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in (family AF_INET).
            let sin = unsafe { addr.view::<libc::sockaddr_in>() };
            let host = ntop(
                py,
                libc::AF_INET,
                (&sin.sin_addr as *const libc::in_addr).cast(),
            )?;
            let port = u16::from_be(sin.sin_port);
            Ok((host, port).into_pyobject(py)?.into_any())
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 (family AF_INET6).
            let sin6 = unsafe { addr.view::<libc::sockaddr_in6>() };
            let host = ntop(
                py,
                libc::AF_INET6,
                (&sin6.sin6_addr as *const libc::in6_addr).cast(),
            )?;
            let port = u16::from_be(sin6.sin6_port);
            let flowinfo = u32::from_be(sin6.sin6_flowinfo);
            Ok((host, port, flowinfo, sin6.sin6_scope_id)
                .into_pyobject(py)?
                .into_any())
        }
        libc::AF_UNIX => {
            // SAFETY: the kernel wrote a sockaddr_un (family AF_UNIX).
            let sun = unsafe { addr.view::<libc::sockaddr_un>() };
            let offset = mem::offset_of!(libc::sockaddr_un, sun_path);
            let n = (addr.len as usize)
                .saturating_sub(offset)
                .min(sun.sun_path.len());
            // SAFETY: `sun_path` is an array of at least `n` c_char, viewed as bytes.
            let path = unsafe { std::slice::from_raw_parts(sun.sun_path.as_ptr().cast::<u8>(), n) };
            if path.first() == Some(&0) {
                // Linux abstract namespace: the whole name, as bytes.
                return Ok(PyBytes::new(py, path).into_any());
            }
            let end = path.iter().position(|&b| b == 0).unwrap_or(n);
            // SAFETY: `path[..end]` is valid for reads; the result is a new reference or
            // NULL with an exception set.
            unsafe {
                Bound::from_owned_ptr_or_err(
                    py,
                    ffi::PyUnicode_DecodeFSDefaultAndSize(
                        path.as_ptr().cast(),
                        end as ffi::Py_ssize_t,
                    ),
                )
            }
        }
        other => Err(PyValueError::new_err(format!(
            "unexpected address family {other} from recvfrom"
        ))),
    }
}

/// An exact `int` in `lo..=hi`, else None.
fn small_int(obj: &Bound<'_, PyAny>, lo: i64, hi: i64) -> Option<i64> {
    if !obj.is_exact_instance_of::<PyInt>() {
        return None;
    }
    obj.extract::<i64>().ok().filter(|v| (lo..=hi).contains(v))
}

/// The sockaddr for a numeric `(host, port)` / `(host, port[, flowinfo[, scope_id]])` tuple
/// of plain `str` and `int`, exactly as the socket module would build it; None for anything
/// else (host names, `""`, `<broadcast>`, scoped `%` hosts, subclasses, out-of-range
/// numbers), which the caller leaves to `socket.sendto`.
pub fn parse_inet(family: libc::c_int, addr: &Bound<'_, PyAny>) -> Option<SockAddr> {
    let tuple = addr.cast_exact::<PyTuple>().ok()?;
    let n = tuple.len();
    let expected = match family {
        libc::AF_INET => n == 2,
        libc::AF_INET6 => (2..=4).contains(&n),
        _ => false,
    };
    if !expected {
        return None;
    }
    let host_obj = tuple.get_item(0).ok()?;
    let host = host_obj.cast_exact::<PyString>().ok()?.to_str().ok()?;
    let mut chost = [0 as libc::c_char; 64];
    if host.len() >= chost.len() || host.bytes().any(|b| b == 0 || !b.is_ascii()) {
        return None;
    }
    for (dst, src) in chost.iter_mut().zip(host.bytes()) {
        *dst = src as libc::c_char;
    }
    let port = small_int(&tuple.get_item(1).ok()?, 0, 0xffff)? as u16;
    let mut sa = SockAddr::new();
    if family == libc::AF_INET {
        // SAFETY: sockaddr_in is one of the libc sockaddr structs.
        let sin = unsafe { sa.view_mut::<libc::sockaddr_in>() };
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_port = port.to_be();
        // SAFETY: `chost` is NUL-terminated; `sin_addr` is a writable in_addr.
        let ok = unsafe {
            inet_pton(
                libc::AF_INET,
                chost.as_ptr(),
                (&mut sin.sin_addr as *mut libc::in_addr).cast(),
            )
        };
        if ok != 1 {
            return None;
        }
        sa.len = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    } else {
        let flowinfo = match n {
            2 => 0,
            _ => small_int(&tuple.get_item(2).ok()?, 0, 0xfffff)?,
        };
        let scope_id = match n {
            4 => small_int(&tuple.get_item(3).ok()?, 0, i64::from(u32::MAX))?,
            _ => 0,
        };
        // SAFETY: sockaddr_in6 is one of the libc sockaddr structs.
        let sin6 = unsafe { sa.view_mut::<libc::sockaddr_in6>() };
        sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sin6.sin6_port = port.to_be();
        sin6.sin6_flowinfo = (flowinfo as u32).to_be();
        sin6.sin6_scope_id = scope_id as u32;
        // SAFETY: `chost` is NUL-terminated; `sin6_addr` is a writable in6_addr.
        let ok = unsafe {
            inet_pton(
                libc::AF_INET6,
                chost.as_ptr(),
                (&mut sin6.sin6_addr as *mut libc::in6_addr).cast(),
            )
        };
        if ok != 1 {
            return None;
        }
        sa.len = mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    }
    Some(sa)
}
