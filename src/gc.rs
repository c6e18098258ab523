//! Garbage-collector support written once: every field type that can hold a Python object
//! implements [`Traverse`], and each class lists its fields in its `__traverse__`.

use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

pub trait Traverse {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError>;
}

impl<T> Traverse for Py<T> {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(self)
    }
}

impl<T: Traverse> Traverse for &T {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        (*self).traverse(visit)
    }
}

impl<T: Traverse> Traverse for Option<T> {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Some(inner) => inner.traverse(visit),
            None => Ok(()),
        }
    }
}

impl<T: Traverse> Traverse for [T] {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.iter().try_for_each(|item| item.traverse(visit))
    }
}

impl<T: Traverse> Traverse for Vec<T> {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.as_slice().traverse(visit)
    }
}

/// Visits every listed field, stopping at the first error.
#[macro_export]
macro_rules! traverse_fields {
    ($visit:expr; $($field:expr),+ $(,)?) => {{
        $( $crate::gc::Traverse::traverse(&$field, &$visit)?; )+
        Ok(())
    }};
}
