//! Conversion of OS errors to Python exceptions at the boundary (GUIDE §2.9).

use std::any::Any;
use std::io;

use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PySystemExit};
use pyo3::ffi;
use pyo3::panic::PanicException;
use pyo3::{Py, PyAny, PyErr, PyResult, Python};

/// Whether an exception must propagate out of a callback instead of being reported to the
/// protocol or the loop (asyncio's `except (SystemExit, KeyboardInterrupt): raise`).
pub fn is_exit_exception(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyKeyboardInterrupt>(py) || err.is_instance_of::<PySystemExit>(py)
}

/// `OSError(errno, strerror)`, which Python turns into the matching subclass
/// (`BlockingIOError`, `ConnectionResetError`, `BrokenPipeError`…) with `errno` set, exactly
/// as a failed `socket` or `os` call raises it. PyO3's own `From<io::Error>` picks the
/// subclass but leaves `errno` None, and asyncio's code reads `exc.errno`.
pub fn os_error(err: io::Error) -> PyErr {
    match err.raw_os_error() {
        Some(errno) => {
            // SAFETY: strerror returns a pointer to a static or thread-local NUL-terminated
            // string; it is copied before any other libc call on this thread.
            let message = unsafe { std::ffi::CStr::from_ptr(libc::strerror(errno)) }
                .to_string_lossy()
                .into_owned();
            PyOSError::new_err((errno, message))
        }
        None => PyErr::from(err),
    }
}

/// What a hand-written C entry point returns to CPython: the object as a new reference, or
/// NULL with the error set. A Rust panic (the `Err` of `catch_unwind`) becomes a
/// `PanicException` naming `what`, so it never unwinds into CPython.
pub fn c_result(
    py: Python<'_>,
    outcome: std::thread::Result<PyResult<Py<PyAny>>>,
    what: &str,
) -> *mut ffi::PyObject {
    let err = match outcome {
        Ok(Ok(obj)) => return obj.into_ptr(),
        Ok(Err(e)) => e,
        Err(payload) => panic_to_pyerr(payload, what),
    };
    err.restore(py);
    std::ptr::null_mut()
}

fn panic_to_pyerr(payload: Box<dyn Any + Send>, what: &str) -> PyErr {
    let message = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        format!("ferroloop: panic in {what}")
    };
    PanicException::new_err(message)
}
