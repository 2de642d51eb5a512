//! The hot methods of the Python transports (`write`, `is_closing`, `sendto`...) as C method
//! descriptors on their classes, each forwarding to the same method of the transport's
//! native core (`self._core`).
//!
//! A transport is two objects (docs/architecture.md, "Two objects per transport"); the
//! owner's methods must reach the core's. A Python method (`def write(self, data):
//! self._core.write(data)`) costs a Python frame per call; binding the core's methods into
//! each owner's instance dict (what this replaces) cost a bound method (72 B) per method used
//! and turned the owner's compact attribute array into a real dict (104 B): about 180 B per
//! connection that ever wrote. A method descriptor made with `PyDescr_NewMethod` costs
//! nothing per transport, and CPython calls it without making a bound method (it is a
//! `METHOD_DESCRIPTOR` type, as every C method); the forwarder then finds the core in the
//! owner's attributes and calls the core's method with the same arguments, so the
//! arguments are parsed, and errors raised, exactly as the core's own method does them.

use std::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple, PyType};

/// Most positional and keyword arguments a forwarded call passes on the fast path.
const MAX_FAST_ARGS: usize = 7;

/// `self._core.<name>(*args, **kwargs)`, turning every failure (a Rust panic too) into a
/// raised Python exception.
///
/// # Safety
/// Called by CPython per the METH_FASTCALL | METH_KEYWORDS convention, with the GIL held.
unsafe fn forward(
    name: fn(Python<'_>) -> &Bound<'_, PyString>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls method implementations with the GIL held.
    let py = unsafe { Python::assume_attached() };
    let outcome = catch_unwind(AssertUnwindSafe(|| -> PyResult<Py<PyAny>> {
        // SAFETY: `slf` is the instance the descriptor was called on, a borrowed reference.
        let owner = unsafe { Bound::from_borrowed_ptr(py, slf) };
        let core = owner.getattr(intern!(py, "_core"))?;
        // SAFETY: nargsf from a vectorcall may carry PY_VECTORCALL_ARGUMENTS_OFFSET.
        let nargs = unsafe { ffi::PyVectorcall_NARGS(nargsf as usize) } as usize;
        let nkw = if kwnames.is_null() {
            0
        } else {
            // SAFETY: a non-NULL kwnames is a tuple of str (the vectorcall convention).
            unsafe { Bound::from_borrowed_ptr(py, kwnames) }
                .cast::<PyTuple>()?
                .len()
        };
        let total = nargs + nkw;
        let result = if total <= MAX_FAST_ARGS {
            // [core, *positional, *keyword values]: the core's method called with its
            // instance first, as `PyObject_VectorcallMethod` wants.
            let mut stack = [std::ptr::null_mut(); MAX_FAST_ARGS + 1];
            stack[0] = core.as_ptr();
            for (i, slot) in stack[1..=total].iter_mut().enumerate() {
                // SAFETY: `args` holds `nargs` positional then `nkw` keyword values.
                *slot = unsafe { *args.add(i) };
            }
            // SAFETY: every pointer in `stack[..=total]` is a live borrowed reference for
            // the call; the result is a new reference or NULL with an error set.
            unsafe {
                ffi::PyObject_VectorcallMethod(
                    name(py).as_ptr(),
                    stack.as_ptr(),
                    nargs + 1,
                    kwnames,
                )
            }
        } else {
            let method = core.getattr(name(py))?;
            // SAFETY: the caller's own arguments, forwarded unchanged.
            unsafe { ffi::PyObject_Vectorcall(method.as_ptr(), args, nargsf as usize, kwnames) }
        };
        // SAFETY: a new reference, or NULL with the error set.
        unsafe { Bound::from_owned_ptr_or_err(py, result) }.map(Bound::unbind)
    }));
    crate::errors::c_result(py, outcome, "a transport method")
}

/// One forwarder per method name (a C method gets no data but its instance), with the
/// docstring that starts with its `__text_signature__`.
macro_rules! forwarders {
    ($($method:ident => $doc:literal;)*) => {
        mod entries {
            use super::*;
            $(
                pub(super) unsafe extern "C" fn $method(
                    slf: *mut ffi::PyObject,
                    args: *const *mut ffi::PyObject,
                    nargsf: ffi::Py_ssize_t,
                    kwnames: *mut ffi::PyObject,
                ) -> *mut ffi::PyObject {
                    fn name(py: Python<'_>) -> &Bound<'_, PyString> {
                        intern!(py, stringify!($method))
                    }
                    // SAFETY: called by CPython with the METH_FASTCALL | METH_KEYWORDS
                    // convention.
                    unsafe { forward(name, slf, args, nargsf, kwnames) }
                }
            )*
        }

        /// (name, entry point, docstring) of every method that can be installed.
        const FORWARDERS: &[(&CStr, ffi::PyCFunctionFastWithKeywords, &CStr)] = &[
            $((
                match CStr::from_bytes_with_nul(concat!(stringify!($method), "\0").as_bytes()) {
                    Ok(name) => name,
                    Err(_) => panic!("method name"),
                },
                entries::$method,
                $doc,
            ),)*
        ];
    };
}

forwarders! {
    write => c"write($self, data, /)\n--\n\nSends `data` (bytes-like): to the kernel at once when nothing is queued, else queued (asyncio's `Transport.write`).";
    writelines => c"writelines($self, list_of_data, /)\n--\n\nWrites the concatenation of an iterable of bytes-like objects.";
    write_eof => c"write_eof($self, /)\n--\n\nCloses the write end once queued data is sent.";
    can_write_eof => c"can_write_eof($self, /)\n--\n\nWhether write_eof() is supported.";
    sendto => c"sendto($self, data, addr=None)\n--\n\nSends one datagram to `addr` (the connected peer when None).";
    abort => c"abort($self, /)\n--\n\nCloses at once, dropping queued data; connection_lost(None) follows.";
    is_closing => c"is_closing($self, /)\n--\n\nWhether the transport is closing or closed.";
    is_reading => c"is_reading($self, /)\n--\n\nWhether the transport is receiving.";
    pause_reading => c"pause_reading($self, /)\n--\n\nStops calling the protocol's data_received until resume_reading().";
    resume_reading => c"resume_reading($self, /)\n--\n\nResumes receiving.";
    get_write_buffer_size => c"get_write_buffer_size($self, /)\n--\n\nBytes queued, not yet sent.";
    set_write_buffer_limits => c"set_write_buffer_limits($self, high=None, low=None)\n--\n\nSets the flow-control water marks (bytes).";
    get_write_buffer_limits => c"get_write_buffer_limits($self, /)\n--\n\nThe (low, high) water marks, in bytes.";
    _force_close => c"_force_close($self, exc, /)\n--\n\nasyncio's `_force_close`: drops queued data and schedules connection_lost(exc).";
}

/// `_install_core_methods(cls, names)`: makes each method of `names` on `cls` a C method
/// descriptor forwarding to `self._core.<name>` (see the module documentation). Raises
/// ValueError for a name that has no forwarder.
#[pyfunction]
pub(crate) fn _install_core_methods(cls: &Bound<'_, PyType>, names: Vec<String>) -> PyResult<()> {
    for name in names {
        let Some(&(c_name, entry, doc)) = FORWARDERS
            .iter()
            .find(|(n, _, _)| n.to_bytes() == name.as_bytes())
        else {
            return Err(PyValueError::new_err(format!(
                "no native forwarder for {name:?}"
            )));
        };
        crate::event_loop::fast_call::install_method(cls, c_name, entry, doc)?;
    }
    Ok(())
}
