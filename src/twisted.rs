//! The Python modules txsession reaches into: Twisted's component registry and zope.interface.
//! Modules are imported once; the functions in them are looked up on every use, because tests
//! (Twisted's own among them) patch them on the live modules.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyModule, PyString};

fn cached_module<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyModule>>,
    name: &str,
) -> PyResult<&'py Bound<'py, PyModule>> {
    cell.get_or_try_init(py, || py.import(name).map(Bound::unbind))
        .map(|m| m.bind(py))
}

pub fn components(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    cached_module(py, &MODULE, "twisted.python.components")
}

pub fn reflect(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    cached_module(py, &MODULE, "twisted.python.reflect")
}

pub fn declarations(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    cached_module(py, &MODULE, "zope.interface.declarations")
}

/// `twisted.python.reflect.qual(interface)`: the key an interface's component is cached under.
/// Computed as Twisted computes it, so that it fails the same way for a non-class.
pub fn qual<'py>(interface: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = interface.py();
    let module = interface.getattr(pyo3::intern!(py, "__module__"))?;
    let name = interface.getattr(pyo3::intern!(py, "__name__"))?;
    if let (Ok(module), Ok(name)) = (
        module.cast_exact::<PyString>(),
        name.cast_exact::<PyString>(),
    ) {
        let key = format!("{}.{}", module.to_str()?, name.to_str()?);
        return Ok(PyString::new(py, &key).into_any());
    }
    module.add(".")?.add(name)
}
