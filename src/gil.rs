//! `GilCell`: mutable state that only the thread holding the GIL touches.
//!
//! The module declares `gil_used = true`, so every interpreter, a free-threaded build included,
//! runs it with the GIL held, and every use of a `GilCell` takes a [`Python`] token: one thread
//! at a time. That makes a `RefCell`'s plain borrow flag enough, where a mutex costs two atomic
//! instructions per use. A borrow is never held across a call into Python (DESIGN rule 2), so a
//! re-entrant call never finds the state borrowed; if it ever did, it would panic (a
//! `PanicException`), not deadlock.

use pyo3::Python;
use std::cell::{RefCell, RefMut};

pub struct GilCell<T>(RefCell<T>);

// SAFETY: every borrow needs a `Python` token, so it is made by the one thread that holds the
// GIL (the module is declared `gil_used`, see above), and no borrow outlives the code between
// two calls into Python, where the GIL could pass to another thread. `try_borrow_mut` is only
// used by `__traverse__` and `__clear__`, which the collector runs with the GIL held.
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

    /// For `__clear__`: `take` moves the references out of the state, and they are dropped
    /// after the borrow ends, since dropping one can run Python code (a `__del__`, a weakref
    /// callback) that reaches this object again. Nothing is taken while the state is borrowed.
    pub fn clear_with<R>(&self, take: impl FnOnce(&mut T) -> R) {
        let taken = self.try_borrow_mut().map(|mut state| take(&mut state));
        drop(taken);
    }
}

impl<T: Default> Default for GilCell<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}
