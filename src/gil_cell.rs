//! `GilCell`: interior mutability for state that is only touched while attached to the
//! interpreter (holding the GIL).
//!
//! Our `#[pyclass]`es are `frozen` (no PyO3 borrow flag on every method call) and keep their
//! mutable state in `GilCell`s. Every access needs a `Python<'_>` token, so two threads can
//! never touch the same cell at once: the module is declared `gil_used = true`, so even a
//! free-threaded interpreter keeps the GIL while ferroloop is imported. The inner `RefCell`
//! turns re-entrant access (a destructor or callback running while a borrow is live) into a
//! clean `RuntimeError` instead of aliasing `&mut`.
//!
//! Rules for callers: keep borrows short, never call into Python while holding one (take
//! what you need out, drop the borrow, then call), and never hold one across
//! `Python::detach`.

use std::cell::{Ref, RefCell, RefMut};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

pub struct GilCell<T> {
    inner: RefCell<T>,
}

// SAFETY: the `RefCell` is only reachable through `borrow`/`borrow_mut`, which require a
// `Python<'_>` token, i.e. the calling thread holds the GIL (the module is `gil_used = true`).
// The GIL serialises all access, so the non-atomic borrow flag and the data are never touched
// by two threads at once. `T: Send` is required because the value may be dropped or accessed
// from whichever thread holds the GIL.
unsafe impl<T: Send> Sync for GilCell<T> {}

impl<T> GilCell<T> {
    pub fn new(value: T) -> Self {
        Self {
            inner: RefCell::new(value),
        }
    }

    pub fn borrow<'a>(&'a self, _py: Python<'a>) -> PyResult<Ref<'a, T>> {
        self.inner.try_borrow().map_err(|_| reentrant())
    }

    /// Shared access from `__traverse__`, where PyO3 gives no `Python` token. The cycle
    /// collector only runs with the GIL held, so the GIL rule still holds; `None` if a
    /// mutable borrow is live (the GC interrupted code that holds one: report no references
    /// rather than read a value being changed).
    pub fn borrow_for_traverse(&self) -> Option<Ref<'_, T>> {
        self.inner.try_borrow().ok()
    }

    pub fn borrow_mut<'a>(&'a self, _py: Python<'a>) -> PyResult<RefMut<'a, T>> {
        self.inner.try_borrow_mut().map_err(|_| reentrant())
    }
}

fn reentrant() -> PyErr {
    PyRuntimeError::new_err(
        "ferroloop: re-entrant access to loop state (called from a destructor?)",
    )
}
