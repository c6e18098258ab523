//! `GilCell`: mutable state that only the thread holding the GIL touches.
//!
//! The module does not declare itself free-threading ready, so the interpreter runs it with the
//! GIL, and every use of a `GilCell` takes a [`Python`] token: one thread at a time. That makes a
//! `RefCell`'s plain borrow flag enough, where a mutex costs two atomic instructions per use
//! (measured: about a third of a cached `getComponent`). As with the locks it replaces, a borrow
//! is never held across a call into Python (DESIGN rule 2), so a re-entrant call never finds the
//! state borrowed; if it ever did, it would panic (a `PanicException`), not deadlock.

use pyo3::{Py, PyTraverseError, PyVisit, Python};
use std::cell::{Cell, RefCell, RefMut};

use crate::gc::Traverse;

pub struct GilCell<T>(RefCell<T>);

// SAFETY: every borrow needs a `Python` token, so it is made by the one thread that holds the
// GIL (the module runs with the GIL, see above), and no borrow outlives the code between two
// calls into Python, where the GIL could pass to another thread. `__traverse__` uses
// `try_borrow_mut`, which the collector only runs with the GIL held.
unsafe impl<T: Send> Sync for GilCell<T> {}

impl<T> GilCell<T> {
    pub const fn new(value: T) -> Self {
        Self(RefCell::new(value))
    }

    pub fn borrow_mut(&self, _py: Python<'_>) -> RefMut<'_, T> {
        self.0.borrow_mut()
    }

    /// For `__traverse__` and `__clear__`, which may run while a method is between a borrow's
    /// start and end (an allocation can start a collection): `None` then.
    pub fn try_borrow_mut(&self) -> Option<RefMut<'_, T>> {
        self.0.try_borrow_mut().ok()
    }
}

impl<T: Default> Default for GilCell<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

/// One optional Python reference, without a borrow flag: it is only ever swapped or copied out
/// whole, so no reference into it escapes and there is no borrow to track. Same rule as
/// [`GilCell`]: used only by the thread that holds the GIL.
pub struct GilSlot<T>(Cell<Option<Py<T>>>);

// SAFETY: as for `GilCell`.
unsafe impl<T> Sync for GilSlot<T> {}

impl<T> GilSlot<T> {
    /// A new reference to the object held, if any.
    pub fn get(&self, py: Python<'_>) -> Option<Py<T>> {
        let held = self.0.take();
        let copy = held.as_ref().map(|v| v.clone_ref(py));
        self.0.set(held);
        copy
    }

    /// Puts `value` in, handing back what was there for the caller to drop.
    pub fn replace(&self, _py: Python<'_>, value: Option<Py<T>>) -> Option<Py<T>> {
        self.0.replace(value)
    }

    /// What was there, handing it back; for `__clear__`, which has no `Python` token.
    pub fn take(&self) -> Option<Py<T>> {
        self.0.take()
    }

    /// Visits the object held; for `__traverse__`, which has no `Python` token.
    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        let held = self.0.take();
        let result = held.traverse(visit);
        self.0.set(held);
        result
    }
}

impl<T> Default for GilSlot<T> {
    fn default() -> Self {
        Self(Cell::new(None))
    }
}
