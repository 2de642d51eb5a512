//! Small helpers every native transport shares.

use std::io;

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::prelude::*;

/// asyncio's `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
pub(crate) const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

/// Whether an exception must propagate out of the transport instead of being reported to
/// the protocol or the loop (asyncio's `except (SystemExit, KeyboardInterrupt): raise`).
pub(crate) fn is_exit_exception(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyKeyboardInterrupt>(py) || err.is_instance_of::<PySystemExit>(py)
}

/// Whether a failed syscall only means "not now" (asyncio's
/// `except (BlockingIOError, InterruptedError)`).
pub(crate) fn would_block(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}
