//! `Handle` and `TimerHandle`: what `call_soon`, `call_later`, `call_at` and `add_reader`
//! return, and what the loop's ready queue and timer heap hold.
//!
//! Semantics follow `asyncio.events.Handle`/`TimerHandle`: a handle keeps its callback, its
//! arguments and the `contextvars.Context` to run them in; `cancel()` drops the callback and
//! arguments at once (breaking reference cycles) and the loop skips it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::types::PyTuple;
use pyo3::{PyTraverseError, PyVisit};

use crate::gil_cell::GilCell;

/// The positional arguments of a callback. A single argument (the common case after no
/// argument: a Future's done callback is `call_soon(cb, fut, context=ctx)`) is kept as is,
/// so scheduling builds no tuple and running it is a one-argument vectorcall; a tuple is
/// made only if Python code asks for `handle._args`.
pub enum Args {
    Empty,
    One(Py<PyAny>),
    Tuple(Py<PyTuple>),
}

impl Args {
    /// From an arguments tuple (e.g. `add_reader(fd, cb, *args)`); an empty one is `Empty`.
    pub fn from_tuple(args: Bound<'_, PyTuple>) -> Self {
        if args.is_empty() {
            Args::Empty
        } else {
            Args::Tuple(args.unbind())
        }
    }

    fn clone_ref(&self, py: Python<'_>) -> Self {
        match self {
            Args::Empty => Args::Empty,
            Args::One(a) => Args::One(a.clone_ref(py)),
            Args::Tuple(t) => Args::Tuple(t.clone_ref(py)),
        }
    }

    /// asyncio's `Handle._args`: always a tuple.
    fn to_tuple(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(match self {
            Args::Empty => PyTuple::empty(py).into_any().unbind(),
            Args::One(a) => PyTuple::new(py, [a.bind(py)])?.into_any().unbind(),
            Args::Tuple(t) => t.clone_ref(py).into_any(),
        })
    }
}

/// What a handle runs. Cleared on cancel.
struct Payload {
    callback: Option<Py<PyAny>>,
    args: Args,
    context: Py<PyAny>,
    /// `asyncio.format_helpers.extract_stack()` at creation, in debug mode only.
    source_traceback: Option<Py<PyAny>>,
    /// In debug mode, the repr taken just before cancel() clears the callback.
    repr_at_cancel: Option<Py<PyAny>>,
}

/// Recycled through a free list (`crate::freelist`): a busy loop creates and drops one
/// handle per callback. Reusing them skips the allocator and, more importantly, CPython's GC
/// allocation count, which otherwise triggers a young-generation collection every 700
/// handles (measured: call_soon 220 -> 180 ns/op). Always create instances with
/// `new_tracked`.
#[pyclass(frozen, subclass, weakref, module = "ferroloop._ferroloop")]
pub struct Handle {
    payload: GilCell<Payload>,
    cancelled: AtomicBool,
}

/// The callback, arguments and context of a handle about to run, each with its own
/// reference so that the handle may be cancelled (or dropped) while the callback runs.
pub struct Runnable {
    pub callback: Py<PyAny>,
    pub args: Args,
    pub context: Py<PyAny>,
}

impl Handle {
    pub fn new(
        callback: Py<PyAny>,
        args: Args,
        context: Py<PyAny>,
        source_traceback: Option<Py<PyAny>>,
    ) -> Self {
        Handle {
            payload: GilCell::new(Payload {
                callback: Some(callback),
                args,
                context,
                source_traceback,
                repr_at_cancel: None,
            }),
            cancelled: AtomicBool::new(false),
        }
    }

    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Clones out what is needed to run the handle; `None` if it was cancelled.
    pub fn runnable(&self, py: Python<'_>) -> PyResult<Option<Runnable>> {
        if self.is_cancelled() {
            return Ok(None);
        }
        let p = self.payload.borrow(py)?;
        Ok(p.callback.as_ref().map(|cb| Runnable {
            callback: cb.clone_ref(py),
            args: p.args.clone_ref(py),
            context: p.context.clone_ref(py),
        }))
    }

    pub fn source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        let p = self.payload.borrow(py).ok()?;
        p.source_traceback.as_ref().map(|t| t.clone_ref(py))
    }

    /// Marks the handle cancelled and drops its callback and arguments.
    /// Returns false if it was already cancelled.
    pub(crate) fn cancel_inner(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        if this.cancelled.swap(true, Ordering::Relaxed) {
            return Ok(false);
        }
        let keep_repr = this.payload.borrow(py)?.source_traceback.is_some();
        let repr = if keep_repr {
            Some(handle_repr(slf.as_any())?.unbind())
        } else {
            None
        };
        // Take the references out and drop them after the borrow ends: dropping them may
        // run arbitrary Python code (__del__) that could touch this handle again.
        let dropped = {
            let mut p = this.payload.borrow_mut(py)?;
            p.repr_at_cancel = repr;
            (
                p.callback.take(),
                std::mem::replace(&mut p.args, Args::Empty),
            )
        };
        drop(dropped);
        Ok(true)
    }

    /// Runs the callback inside its context. `Err` carries the exception it raised.
    pub fn run_runnable(py: Python<'_>, r: &Runnable) -> PyResult<()> {
        in_context(py, &r.context, || {
            // SAFETY: the callback and its arguments are live objects kept alive by `r` for
            // the whole call, made with the GIL held; a NULL result has the error set, which
            // is fetched at once (before the context is left, so it is not disturbed).
            unsafe {
                let result = match &r.args {
                    Args::Empty => ffi::PyObject_CallNoArgs(r.callback.as_ptr()),
                    Args::One(arg) => ffi::PyObject_CallOneArg(r.callback.as_ptr(), arg.as_ptr()),
                    Args::Tuple(args) => {
                        ffi::PyObject_Call(r.callback.as_ptr(), args.as_ptr(), std::ptr::null_mut())
                    }
                };
                if result.is_null() {
                    Err(PyErr::fetch(py))
                } else {
                    ffi::Py_DECREF(result);
                    Ok(())
                }
            }
        })
    }
}

/// Runs `f` inside `context` (a `contextvars.Context`), as `Context.run` does: `Err` carries
/// what `f` raised, or the error entering or leaving the context raised.
pub fn in_context<T>(
    py: Python<'_>,
    context: &Py<PyAny>,
    f: impl FnOnce() -> PyResult<T>,
) -> PyResult<T> {
    let ctx = context.as_ptr();
    // SAFETY: `ctx` is a live contextvars.Context (checked when it was stored) kept alive by
    // `context` for the whole call; enter and exit are paired on this thread with the GIL
    // held, as the C API requires.
    if unsafe { ffi::PyContext_Enter(ctx) } < 0 {
        return Err(PyErr::fetch(py));
    }
    let result = f();
    // SAFETY: as above; this exits the context entered above.
    if unsafe { ffi::PyContext_Exit(ctx) } < 0 {
        return Err(match result {
            Err(e) => e,
            Ok(_) => PyErr::fetch(py),
        });
    }
    result
}

crate::gil_freelist!(HANDLE_FREELIST, handle_alloc, handle_free);
crate::gil_freelist!(TIMER_HANDLE_FREELIST, timer_handle_alloc, timer_handle_free);

/// Points the allocation slots of `Handle` and `TimerHandle` at their free lists. Called once
/// by module initialisation, after both classes are created.
pub fn install_freelists(py: Python<'_>) {
    crate::freelist::FreeList::install(
        &HANDLE_FREELIST,
        &py.get_type::<Handle>(),
        handle_alloc,
        handle_free,
    );
    crate::freelist::FreeList::install(
        &TIMER_HANDLE_FREELIST,
        &py.get_type::<TimerHandle>(),
        timer_handle_alloc,
        timer_handle_free,
    );
}

/// `Py::new` for the recycled classes below, making sure the object is tracked by the cycle
/// collector: a recycled object comes back untracked (its dealloc untracked it), which would
/// make cycles through a reused handle uncollectable; fresh allocations are already tracked.
pub fn new_tracked<T: pyo3::PyClass>(
    py: Python<'_>,
    init: impl Into<PyClassInitializer<T>>,
) -> PyResult<Py<T>> {
    let obj = Py::new(py, init)?;
    let ptr = obj.as_ptr();
    // SAFETY: `ptr` is a live, fully initialised instance of a GC type (every pyclass is),
    // so its traverse slot only sees initialised fields; we track it only if it is not
    // tracked already, as PyObject_GC_Track requires.
    unsafe {
        if ffi::PyObject_GC_IsTracked(ptr) == 0 {
            ffi::PyObject_GC_Track(ptr.cast());
        }
    }
    Ok(obj)
}

/// Formats a handle like asyncio does, by asking `ferroloop._helpers` (not a hot path).
fn handle_repr<'py>(handle: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = handle.py();
    py.import("ferroloop._helpers")?
        .getattr("handle_repr")?
        .call1((handle,))
}

#[pymethods]
impl Handle {
    /// Lets the cycle collector see what the handle holds (a handle stored on the object its
    /// callback is bound to is a common cycle).
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(p) = self.payload.borrow_for_traverse() {
            visit.call(&p.callback)?;
            match &p.args {
                Args::Empty => {}
                Args::One(a) => visit.call(a)?,
                Args::Tuple(t) => visit.call(t)?,
            }
            visit.call(&p.context)?;
            visit.call(&p.source_traceback)?;
            visit.call(&p.repr_at_cancel)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        Python::attach(|py| {
            let dropped = match self.payload.borrow_mut(py) {
                Ok(mut p) => (
                    p.callback.take(),
                    std::mem::replace(&mut p.args, Args::Empty),
                    p.source_traceback.take(),
                ),
                Err(_) => return,
            };
            drop(dropped);
        });
    }

    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        Handle::cancel_inner(slf).map(|_| ())
    }

    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }

    fn get_context(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self.payload.borrow(py)?.context.clone_ref(py))
    }

    /// Runs the callback now, reporting an exception like the loop would. Provided for
    /// code that calls `handle._run()` on asyncio handles.
    fn _run(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        match slf.get().runnable(py)? {
            None => Ok(()),
            Some(r) => Handle::run_runnable(py, &r),
        }
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        Ok(self
            .payload
            .borrow(py)?
            .callback
            .as_ref()
            .map(|c| c.clone_ref(py)))
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let p = self.payload.borrow(py)?;
        if p.callback.is_none() {
            return Ok(None);
        }
        Ok(Some(p.args.to_tuple(py)?))
    }

    #[getter]
    fn _cancelled(&self) -> bool {
        self.is_cancelled()
    }

    #[getter]
    fn _context(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.get_context(py)
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.source_traceback(py)
    }

    #[getter]
    fn _repr(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        Ok(self
            .payload
            .borrow(py)?
            .repr_at_cancel
            .as_ref()
            .map(|r| r.clone_ref(py)))
    }

    fn __repr__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        if let Some(r) = slf.get().payload.borrow(slf.py())?.repr_at_cancel.as_ref() {
            return Ok(r.bind(slf.py()).clone());
        }
        handle_repr(slf.as_any())
    }
}

fn timers_equal(a: &Bound<'_, TimerHandle>, b: &Bound<'_, TimerHandle>) -> PyResult<bool> {
    if a.get().when != b.get().when {
        return Ok(false);
    }
    let (ha, hb) = (a.as_super(), b.as_super());
    if ha.get().is_cancelled() != hb.get().is_cancelled() {
        return Ok(false);
    }
    let py = a.py();
    Ok(Handle::_callback(ha.get(), py)?
        .into_pyobject(py)?
        .eq(Handle::_callback(hb.get(), py)?)?
        && Handle::_args(ha.get(), py)?
            .into_pyobject(py)?
            .eq(Handle::_args(hb.get(), py)?)?)
}

/// A handle scheduled for a point in time (`call_later`/`call_at`).
/// Recycled through its own free list, like `Handle`.
#[pyclass(frozen, extends = Handle, module = "ferroloop._ferroloop")]
pub struct TimerHandle {
    when: f64,
    /// The `when` given to `call_at` when it was not a float (asyncio keeps it: an int
    /// `when` stays an int); ordering always uses `when`.
    when_given: Option<Py<PyAny>>,
    /// True while the handle sits in the loop's timer heap.
    scheduled: AtomicBool,
    /// The loop's count of cancelled-but-still-scheduled timers (drives heap compaction).
    cancelled_in_heap: Arc<AtomicUsize>,
}

impl TimerHandle {
    pub fn new(
        when: f64,
        when_given: Option<Py<PyAny>>,
        cancelled_in_heap: Arc<AtomicUsize>,
    ) -> Self {
        TimerHandle {
            when,
            when_given,
            scheduled: AtomicBool::new(false),
            cancelled_in_heap,
        }
    }

    pub fn when_value(&self) -> f64 {
        self.when
    }

    pub fn set_scheduled(&self, scheduled: bool) {
        self.scheduled.store(scheduled, Ordering::Relaxed);
    }
}

#[pymethods]
impl TimerHandle {
    fn when(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self._when(py)
    }

    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        if Handle::cancel_inner(slf.as_super())? && slf.get().scheduled.load(Ordering::Relaxed) {
            slf.get().cancelled_in_heap.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    #[getter]
    fn _when(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(match &self.when_given {
            Some(given) => given.clone_ref(py),
            None => pyo3::types::PyFloat::new(py, self.when).into_any().unbind(),
        })
    }

    /// asyncio's TimerHandle hashes by `when`, as `hash(self._when)`.
    fn __hash__(&self, py: Python<'_>) -> PyResult<isize> {
        self._when(py)?.bind(py).hash()
    }

    /// asyncio's ordering: by `when`; `==` also compares callback, args and cancelled state;
    /// `<=`/`>=` are "strictly before/after, or equal".
    fn __richcmp__(
        slf: &Bound<'_, Self>,
        other: &Bound<'_, PyAny>,
        op: CompareOp,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let Ok(other) = other.cast::<TimerHandle>() else {
            return Ok(py.NotImplemented());
        };
        let (a, b) = (slf.get().when, other.get().when);
        let result = match op {
            CompareOp::Lt => a < b,
            CompareOp::Gt => a > b,
            CompareOp::Le => a < b || timers_equal(slf, other)?,
            CompareOp::Ge => a > b || timers_equal(slf, other)?,
            CompareOp::Eq => timers_equal(slf, other)?,
            CompareOp::Ne => !timers_equal(slf, other)?,
        };
        Ok(pyo3::types::PyBool::new(py, result)
            .to_owned()
            .into_any()
            .unbind())
    }

    #[getter]
    fn _scheduled(&self) -> bool {
        self.scheduled.load(Ordering::Relaxed)
    }
}
