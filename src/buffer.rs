//! Access to the bytes of Python buffer objects (bytes-like arguments), as the socket
//! module's argument parsing sees them.

use std::mem::MaybeUninit;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// Runs `f` on the bytes of a bytes-like object, as the socket module's `y*` argument
/// parsing sees them (a BufferError for a non-contiguous view). `f` must not call Python.
pub fn with_buffer<R>(obj: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(f(b.as_bytes()));
    }
    let py = obj.py();
    let mut view = MaybeUninit::<ffi::Py_buffer>::uninit();
    // SAFETY: `view` is filled by PyObject_GetBuffer on success and released below, after
    // `f` (which calls no Python code) is done with the bytes; a simple buffer is one
    // contiguous run of `len` readable bytes.
    unsafe {
        if ffi::PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), ffi::PyBUF_SIMPLE) != 0 {
            return Err(PyErr::fetch(py));
        }
        let mut view = view.assume_init();
        let bytes: &[u8] = if view.len <= 0 || view.buf.is_null() {
            &[]
        } else {
            std::slice::from_raw_parts(view.buf.cast::<u8>(), view.len as usize)
        };
        let result = f(bytes);
        ffi::PyBuffer_Release(&mut view);
        Ok(result)
    }
}
