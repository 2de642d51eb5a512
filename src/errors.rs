//! Conversion of OS errors to Python exceptions at the boundary (GUIDE §2.9).

use std::io;

use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PySystemExit};
use pyo3::{PyErr, Python};

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
