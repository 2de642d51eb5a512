//! Hand-written `METH_FASTCALL | METH_KEYWORDS` entry points for `call_soon`,
//! `call_soon_threadsafe`, `call_later` and `call_at`.
//!
//! Why not `#[pymethods]`: these are the hottest calls in any asyncio program (the C `Task`
//! calls `loop.call_soon(step, context=ctx)` for every step, the C `Future` for every done
//! callback). PyO3's generic argument extraction (a `*args` tuple always built, keyword
//! names matched by string comparison, a trampoline around it) was the largest single cost
//! in our `sleep(0)` iteration under callgrind. Here the arguments are read straight from
//! the vectorcall array; the rest (checks, handle creation, queueing) is shared with the
//! rest of the loop (`LoopCore::schedule_callback`).

use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};

use super::LoopCore;
use crate::handles::Args;

/// The parsed arguments of `call_soon(callback, *args, context=None)` and of
/// `call_later(delay, ...)` / `call_at(when, ...)` (`time` holds delay or when).
pub struct CallArgs<'py> {
    pub time: Option<Bound<'py, PyAny>>,
    pub callback: Bound<'py, PyAny>,
    pub args: Args,
    pub context: Option<Bound<'py, PyAny>>,
}

#[derive(Clone, Copy)]
enum Method {
    Soon,
    SoonThreadsafe,
    Later,
    At,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Soon => "call_soon",
            Method::SoonThreadsafe => "call_soon_threadsafe",
            Method::Later => "call_later",
            Method::At => "call_at",
        }
    }

    /// The leading time argument (`delay` or `when`), if the method takes one.
    fn time_arg(self) -> Option<&'static str> {
        match self {
            Method::Soon | Method::SoonThreadsafe => None,
            Method::Later => Some("delay"),
            Method::At => Some("when"),
        }
    }
}

/// Reads `([time,] callback, *args, context=None)` from a vectorcall argument array.
///
/// # Safety
/// `args` must point to `nargs` positional arguments followed by one value per name in
/// `kwnames` (a tuple of str, or NULL), all borrowed for the duration of the call: the
/// METH_FASTCALL | METH_KEYWORDS calling convention.
unsafe fn parse<'py>(
    py: Python<'py>,
    method: Method,
    args: *const *mut ffi::PyObject,
    nargs: usize,
    kwnames: *mut ffi::PyObject,
) -> PyResult<CallArgs<'py>> {
    let name = method.name();
    let lead = usize::from(method.time_arg().is_some());
    if nargs <= lead {
        let missing: Vec<&str> = method.time_arg().into_iter().chain(["callback"]).collect();
        let missing = &missing[nargs..];
        let quoted: Vec<String> = missing.iter().map(|m| format!("'{m}'")).collect();
        return Err(PyTypeError::new_err(format!(
            "{name}() missing {} required positional argument{}: {}",
            missing.len(),
            if missing.len() > 1 { "s" } else { "" },
            quoted.join(" and ")
        )));
    }
    // SAFETY: the caller guarantees `args[0..nargs]` are valid borrowed references.
    let positional = unsafe { std::slice::from_raw_parts(args, nargs) };
    // SAFETY: valid borrowed references (see above).
    let time = (lead == 1).then(|| unsafe { Bound::from_borrowed_ptr(py, positional[0]) });
    // SAFETY: a valid borrowed reference (see above).
    let callback = unsafe { Bound::from_borrowed_ptr(py, positional[lead]) };
    let extra = match &positional[lead + 1..] {
        [] => Args::Empty,
        // SAFETY: a valid borrowed reference (see above); `from_borrowed_ptr` takes its own.
        [one] => Args::One(unsafe { Bound::from_borrowed_ptr(py, *one) }.unbind()),
        more => {
            // SAFETY: each pointer is a valid borrowed reference; `new` takes its own references.
            let items = more
                .iter()
                .map(|&p| unsafe { Bound::from_borrowed_ptr(py, p) });
            Args::Tuple(PyTuple::new(py, items)?.unbind())
        }
    };
    let mut context = None;
    if !kwnames.is_null() {
        // SAFETY: `kwnames` is a tuple of str per the calling convention.
        let names = unsafe { Bound::from_borrowed_ptr(py, kwnames) };
        let names = names.cast::<PyTuple>()?;
        let context_name = intern!(py, "context");
        for (i, key) in names.iter().enumerate() {
            // The C Task and Future pass CPython's interned "context", the same object as
            // ours: a pointer comparison settles the common case.
            let is_context =
                key.is(context_name) || key.cast_into::<PyString>()?.to_str()? == "context";
            if !is_context {
                let key = names.get_item(i)?;
                return Err(PyTypeError::new_err(format!(
                    "{name}() got an unexpected keyword argument '{key}'"
                )));
            }
            // SAFETY: keyword values follow the positional ones in the same array.
            context = Some(unsafe { Bound::from_borrowed_ptr(py, *args.add(nargs + i)) });
        }
    }
    Ok(CallArgs {
        time,
        callback,
        args: extra,
        context,
    })
}

/// Shared body of both entry points: parse, schedule, and turn every failure (including a
/// Rust panic) into a raised Python exception.
///
/// # Safety
/// Called by CPython per the METH_FASTCALL | METH_KEYWORDS convention, with the GIL held.
unsafe fn entry(
    method: Method,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls method implementations with the GIL held.
    let py = unsafe { Python::assume_attached() };
    let outcome = catch_unwind(AssertUnwindSafe(|| -> PyResult<Py<PyAny>> {
        // SAFETY: `slf` is the bound instance, a valid borrowed reference.
        let slf = unsafe { Bound::from_borrowed_ptr(py, slf) };
        // The method descriptor already checked the type; this check is cheap insurance.
        let slf = slf.cast::<LoopCore>()?;
        // SAFETY: nargsf from a vectorcall may carry PY_VECTORCALL_ARGUMENTS_OFFSET.
        let nargs = unsafe { ffi::PyVectorcall_NARGS(nargsf as usize) } as usize;
        // SAFETY: forwarded from CPython's calling convention (see `parse`).
        let parsed = unsafe { parse(py, method, args, nargs, kwnames) }?;
        Ok(match method {
            Method::Soon => LoopCore::schedule_callback(slf, parsed, "call_soon", true)?.into_any(),
            Method::SoonThreadsafe => LoopCore::schedule_threadsafe(slf, parsed)?.into_any(),
            Method::Later => LoopCore::schedule_timer(slf, parsed, true)?.into_any(),
            Method::At => LoopCore::schedule_timer(slf, parsed, false)?.into_any(),
        })
    }));
    crate::errors::c_result(py, outcome, method.name())
}

unsafe extern "C" fn call_soon(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: called by CPython with the METH_FASTCALL | METH_KEYWORDS convention.
    unsafe { entry(Method::Soon, slf, args, nargsf, kwnames) }
}

unsafe extern "C" fn call_soon_threadsafe(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: called by CPython with the METH_FASTCALL | METH_KEYWORDS convention.
    unsafe { entry(Method::SoonThreadsafe, slf, args, nargsf, kwnames) }
}

unsafe extern "C" fn call_later(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: called by CPython with the METH_FASTCALL | METH_KEYWORDS convention.
    unsafe { entry(Method::Later, slf, args, nargsf, kwnames) }
}

unsafe extern "C" fn call_at(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: called by CPython with the METH_FASTCALL | METH_KEYWORDS convention.
    unsafe { entry(Method::At, slf, args, nargsf, kwnames) }
}

// Each doc starts with CPython's `__text_signature__` form for builtin methods
// (`name($self, ...)\n--\n\n`), so `inspect.signature` and stubtest see the real signature.
const CALL_SOON_DOC: &CStr = c"call_soon($self, callback, *args, context=None)\n--\n\nArrange for callback(*args) to be called soon, in FIFO order, inside `context` (a copy of the current context by default). Returns a Handle.";
const CALL_SOON_THREADSAFE_DOC: &CStr = c"call_soon_threadsafe($self, callback, *args, context=None)\n--\n\nLike call_soon(), from any thread: wakes the loop if it is waiting. Returns a Handle.";
const CALL_LATER_DOC: &CStr = c"call_later($self, delay, callback, *args, context=None)\n--\n\nArrange for callback(*args) to be called after `delay` seconds. Returns a TimerHandle.";
const CALL_AT_DOC: &CStr = c"call_at($self, when, callback, *args, context=None)\n--\n\nArrange for callback(*args) to be called at loop time `when`. Returns a TimerHandle.";

/// Installs the entry points as methods of `LoopCore` (replacing nothing: the class does
/// not define them through `#[pymethods]`).
pub fn install(class: &Bound<'_, pyo3::types::PyType>) -> PyResult<()> {
    type Entry = ffi::PyCFunctionFastWithKeywords;
    let methods: [(&CStr, Entry, &CStr); 4] = [
        (c"call_soon", call_soon, CALL_SOON_DOC),
        (
            c"call_soon_threadsafe",
            call_soon_threadsafe,
            CALL_SOON_THREADSAFE_DOC,
        ),
        (c"call_later", call_later, CALL_LATER_DOC),
        (c"call_at", call_at, CALL_AT_DOC),
    ];
    for (name, func, doc) in methods {
        install_method(class, name, func, doc)?;
    }
    Ok(())
}

/// Sets `class.<name>` to a C method descriptor of `func` (METH_FASTCALL | METH_KEYWORDS)
/// with the docstring `doc` (which starts with its `__text_signature__`). CPython calls such
/// a method without making a bound method (it is a `METHOD_DESCRIPTOR` type).
pub(crate) fn install_method(
    class: &Bound<'_, pyo3::types::PyType>,
    name: &'static CStr,
    func: ffi::PyCFunctionFastWithKeywords,
    doc: &'static CStr,
) -> PyResult<()> {
    // Leaked on purpose: CPython keeps a pointer to the definition for the lifetime of the
    // descriptor, i.e. of the class. One small struct per method and class, made once.
    let def: &'static mut ffi::PyMethodDef = Box::leak(Box::new(ffi::PyMethodDef {
        ml_name: name.as_ptr() as *const c_char,
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunctionFastWithKeywords: func,
        },
        ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
        ml_doc: doc.as_ptr() as *const c_char,
    }));
    // SAFETY: `class` is a live type object and `def` lives forever; the result is a new
    // reference or NULL with an exception set.
    let descr = unsafe {
        Bound::from_owned_ptr_or_err(
            class.py(),
            ffi::PyDescr_NewMethod(class.as_type_ptr(), def as *mut ffi::PyMethodDef),
        )
    }?;
    class.setattr(name.to_str().unwrap_or_default(), descr)
}
