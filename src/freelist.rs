//! Free lists for the objects a busy loop makes and drops once per callback (`Handle`,
//! `TimerHandle`), guarded by the GIL instead of a mutex.
//!
//! Why not `#[pyclass(freelist = N)]`: PyO3 0.30 keeps that list behind a `Mutex`, and the
//! locked compare-and-swap on every allocation and every free was 4.8% of an `await
//! sleep(0)` iteration under perf on CPython 3.13 (`FreeList::get` alone 2.6%). Recycling
//! itself is worth keeping: it skips the allocator and CPython's GC allocation count, which
//! otherwise starts a young-generation collection every 700 handles.
//!
//! How: after the class is created, its `tp_alloc` and `tp_free` slots are pointed at the
//! functions below. PyO3 allocates instances through the type's `tp_alloc` and releases them
//! through its `tp_free`, so nothing else changes. Python subclasses get CPython's own
//! allocator (`type_new` sets both slots) and are never recycled; `free` also checks the exact
//! type, so a type that inherited these slots without its own list is never mixed in.

use std::cell::UnsafeCell;
use std::ffi::c_void;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyType;

/// Recycled objects of one exact type, at most `CAPACITY`.
pub struct FreeList {
    inner: UnsafeCell<Inner>,
}

struct Inner {
    ty: *mut ffi::PyTypeObject,
    items: Vec<*mut ffi::PyObject>,
}

const CAPACITY: usize = 1024;

// SAFETY: `inner` is only touched by `alloc`/`free`/`install`, which CPython calls with the
// GIL held (they are a type's tp_alloc and tp_free, and module initialisation); the module is
// `gil_used = true`, so even a free-threaded build keeps the GIL while it is imported. The GIL
// serialises every access.
unsafe impl Sync for FreeList {}

impl FreeList {
    pub const fn new() -> Self {
        FreeList {
            inner: UnsafeCell::new(Inner {
                ty: std::ptr::null_mut(),
                items: Vec::new(),
            }),
        }
    }

    /// Makes `list` the allocator of `ty` (exact instances only).
    ///
    /// Must be called once, right after the class is created and before any instance exists.
    pub fn install(
        list: &'static FreeList,
        ty: &Bound<'_, PyType>,
        alloc: ffi::allocfunc,
        free: ffi::freefunc,
    ) {
        let tp = ty.as_type_ptr();
        // SAFETY: module initialisation runs with the GIL held (see `Sync` above); `tp` is a
        // live heap type object created by PyO3, whose slots may be written before instances
        // exist (tp_alloc and tp_free are read at each allocation and free, never cached).
        unsafe {
            let inner = &mut *list.inner.get();
            inner.ty = tp;
            inner.items.reserve_exact(CAPACITY);
            (*tp).tp_alloc = Some(alloc);
            (*tp).tp_free = Some(free);
        }
    }

    /// tp_alloc: a recycled object for the exact type, else `PyType_GenericAlloc`.
    ///
    /// # Safety
    /// Called by CPython or PyO3 as a tp_alloc slot, with the GIL held.
    pub unsafe fn alloc(
        &self,
        subtype: *mut ffi::PyTypeObject,
        nitems: ffi::Py_ssize_t,
    ) -> *mut ffi::PyObject {
        // SAFETY: the GIL is held (see `Sync` above) and no reference into `inner` outlives
        // this block.
        let recycled = unsafe {
            let inner = &mut *self.inner.get();
            if nitems == 0 && subtype == inner.ty {
                inner.items.pop()
            } else {
                None
            }
        };
        match recycled {
            // `obj` was released by `free` below after its dealloc ran (untracked, contents
            // dropped); PyObject_Init sets its type (a new reference to the heap type, as
            // PyType_GenericAlloc takes) and reference count, and the caller initialises and
            // tracks it (`handles::new_tracked`).
            Some(obj) => {
                // SAFETY: `obj` is dead memory of `subtype`'s exact size (see above).
                unsafe { ffi::PyObject_Init(obj, subtype) }
            }
            // SAFETY: `subtype` is a valid type object; returns a new object or NULL with an
            // exception set.
            None => unsafe { ffi::PyType_GenericAlloc(subtype, nitems) },
        }
    }

    /// tp_free: keeps the object for reuse if it is of the exact type and there is room,
    /// else releases it as `PyType_GenericAlloc`'s inverse for GC types.
    ///
    /// # Safety
    /// Called by a tp_dealloc as the tp_free slot, with the GIL held, on an object whose
    /// contents were already dropped and which is no longer tracked by the GC.
    pub unsafe fn free(&self, obj: *mut c_void) {
        if obj.is_null() {
            return;
        }
        let obj = obj.cast::<ffi::PyObject>();
        // SAFETY: the GIL is held (see `Sync` above); `obj` is a valid, dead object whose
        // header still names its type.
        let kept = unsafe {
            let inner = &mut *self.inner.get();
            if ffi::Py_TYPE(obj) == inner.ty && inner.items.len() < CAPACITY {
                inner.items.push(obj);
                true
            } else {
                false
            }
        };
        if !kept {
            // SAFETY: every instance of these GC types was allocated by PyType_GenericAlloc
            // (directly or before being recycled), whose inverse is PyObject_GC_Del.
            unsafe { ffi::PyObject_GC_Del(obj.cast()) };
        }
    }
}

/// Declares a free list and its `extern "C"` tp_alloc / tp_free slot functions.
#[macro_export]
macro_rules! gil_freelist {
    ($list:ident, $alloc:ident, $free:ident) => {
        static $list: $crate::freelist::FreeList = $crate::freelist::FreeList::new();

        unsafe extern "C" fn $alloc(
            subtype: *mut pyo3::ffi::PyTypeObject,
            nitems: pyo3::ffi::Py_ssize_t,
        ) -> *mut pyo3::ffi::PyObject {
            // SAFETY: called as a tp_alloc slot with the GIL held.
            unsafe { $list.alloc(subtype, nitems) }
        }

        unsafe extern "C" fn $free(obj: *mut std::ffi::c_void) {
            // SAFETY: called as a tp_free slot with the GIL held.
            unsafe { $list.free(obj) }
        }
    };
}
