//! `SessionLru`: which of a site's sessions was touched least recently, for `maxSessions`.
//!
//! A heap of sessions by the `lastModified` they had when filed, re-filed lazily: a `touch`
//! changes nothing here, and a session whose `lastModified` moved on since it was filed is
//! filed again when it reaches the top. Each `touch` so costs at most one re-filing, O(log n),
//! and only when eviction reaches it. Sessions that ended some other way (expiry, logout, a new
//! id) are dropped when they reach the top, and swept once they are as many as the live ones.

use pyo3::prelude::*;
use pyo3::{intern, PyTraverseError, PyVisit};
use std::collections::BinaryHeap;

use crate::gil::GilCell;
use crate::order::Earliest;

/// A session and the `lastModified` it had when filed.
type Filed = Earliest<Py<PyAny>>;

#[derive(Default)]
struct LruState {
    heap: BinaryHeap<Filed>,
    seq: u64,
}

#[pyclass(module = "txsession._txsession", name = "SessionLru", frozen)]
#[derive(Default)]
pub struct SessionLru {
    state: GilCell<LruState>,
}

/// A session's `lastModified` as a number; one that is not a number counts as oldest.
fn last_modified(session: &Bound<'_, PyAny>) -> PyResult<f64> {
    Ok(session
        .getattr(intern!(session.py(), "lastModified"))?
        .extract::<f64>()
        .unwrap_or(f64::NEG_INFINITY))
}

/// Whether `session` is still the one `sessions` holds under its id.
fn is_live(session: &Bound<'_, PyAny>, sessions: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = session.py();
    let uid = session.getattr(intern!(py, "uid"))?;
    let held = sessions.call_method1(intern!(py, "get"), (uid,))?;
    Ok(held.is(session))
}

impl SessionLru {
    fn push(&self, py: Python<'_>, last_modified: f64, session: Py<PyAny>) {
        let mut state = self.state.borrow_mut(py);
        state.seq += 1;
        let seq = state.seq;
        state.heap.push(Filed {
            at: last_modified,
            seq,
            item: session,
        });
    }
}

#[pymethods]
impl SessionLru {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    /// Files a new session of `sessions` (the site's mapping of id to session).
    fn add(&self, session: &Bound<'_, PyAny>, sessions: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = session.py();
        self.push(py, last_modified(session)?, session.clone().unbind());
        let filed = self.state.borrow_mut(py).heap.len();
        if filed > 2 * sessions.len()? + 64 {
            let heap = std::mem::take(&mut self.state.borrow_mut(py).heap);
            let mut kept = Vec::with_capacity(filed / 2);
            for entry in heap.into_vec() {
                if is_live(entry.item.bind(py), sessions)? {
                    kept.push(entry);
                }
            }
            let swept = std::mem::replace(&mut self.state.borrow_mut(py).heap, kept.into());
            drop(swept);
        }
        Ok(())
    }

    /// The live session of `sessions` touched least recently, or `None`.
    fn oldest(&self, sessions: &Bound<'_, PyAny>) -> PyResult<Option<Py<PyAny>>> {
        let py = sessions.py();
        loop {
            let Some(top) = self.state.borrow_mut(py).heap.pop() else {
                return Ok(None);
            };
            let session = top.item.bind(py);
            if !is_live(session, sessions)? {
                continue;
            }
            let now = last_modified(session)?;
            if now > top.at {
                self.push(py, now, top.item);
                continue;
            }
            return Ok(Some(top.item));
        }
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        self.state.borrow_mut(py).heap.len()
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self.state.try_borrow_mut() {
            Some(s) => s.heap.iter().try_for_each(|f| visit.call(&f.item)),
            None => Ok(()),
        }
    }

    fn __clear__(&self) {
        self.state.clear_with(|s| std::mem::take(&mut s.heap));
    }
}
