//! `Componentized`: a per-object cache of components keyed by interface, as in
//! `twisted.python.components.Componentized`.

use pyo3::exceptions::{PyAttributeError, PyKeyError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use pyo3::{intern, PyTraverseError, PyVisit};

use crate::gil::GilSlot;
use crate::keys::key_for;
use crate::namespaces::Namespaces;
use crate::twisted;

/// `frozen`: the cache is never borrowed across a call into Python, so an adapter's
/// constructor may use the same object without an "Already borrowed" error.
/// An all-zero `Option<Py<..>>` is `None`, so the collector can safely traverse an instance
/// whose `__dict__` CPython created before the Rust fields were written.
#[pyclass(
    module = "txsession",
    name = "Componentized",
    subclass,
    frozen,
    dict,
    weakref
)]
#[derive(Default)]
pub struct Componentized {
    cache: GilSlot<Namespaces>,
}

/// `getattr(obj, name)` made `hasattr(obj, name) and obj.name`, as Twisted tests its adapters.
fn flag(obj: &Bound<'_, PyAny>, name: &Bound<'_, pyo3::types::PyString>) -> PyResult<bool> {
    match obj.getattr(name) {
        Ok(value) => value.is_truthy(),
        Err(err) if err.is_instance_of::<PyAttributeError>(obj.py()) => Ok(false),
        Err(err) => Err(err),
    }
}

impl Componentized {
    /// The cache map, if any component was ever stored.
    fn map(&self, py: Python<'_>) -> Option<Py<Namespaces>> {
        self.cache.get(py)
    }

    fn map_or_create(&self, py: Python<'_>) -> PyResult<Py<Namespaces>> {
        if let Some(map) = self.map(py) {
            return Ok(map);
        }
        let fresh = Py::new(py, Namespaces::default())?;
        // Allocating may have run a collection, and a finalizer may have stored a map meanwhile.
        if let Some(map) = self.map(py) {
            return Ok(map);
        }
        drop(self.cache.replace(py, Some(fresh.clone_ref(py))));
        Ok(fresh)
    }

    pub fn reset(&self, py: Python<'_>) {
        self.replace_map(py, None);
    }

    fn replace_map(&self, py: Python<'_>, map: Option<Py<Namespaces>>) {
        drop(self.cache.replace(py, map));
    }

    pub fn cached(&self, key: &Bound<'_, PyAny>) -> PyResult<Option<Py<PyAny>>> {
        match self.map(key.py()) {
            Some(map) => map.get().get(key),
            None => Ok(None),
        }
    }

    pub fn store(&self, key: &Bound<'_, PyAny>, component: Py<PyAny>) -> PyResult<()> {
        let map = self.map_or_create(key.py())?;
        drop(map.get().set(key, component)?);
        Ok(())
    }

    /// The `_adapterCache` entries as a plain dict, as Twisted's `__dict__` would hold them.
    pub fn cache_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        match self.map(py) {
            Some(map) => map.get().to_dict(py),
            None => Ok(PyDict::new(py)),
        }
    }

    pub fn set_cache_from(&self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let map = match value.cast::<Namespaces>() {
            Ok(ns) => ns.clone().unbind(),
            Err(_) => Py::new(value.py(), Namespaces::from_mapping(value)?)?,
        };
        self.replace_map(value.py(), Some(map));
        Ok(())
    }

    /// The state pickling keeps: the instance `__dict__` plus the cache, under Twisted's names.
    pub fn base_state<'py>(slf: &Bound<'py, PyAny>, this: &Self) -> PyResult<Bound<'py, PyDict>> {
        let py = slf.py();
        let state = PyDict::new(py);
        state.set_item(intern!(py, "_adapterCache"), this.cache_dict(py)?)?;
        let dict = slf.getattr(intern!(py, "__dict__"))?;
        state.update(dict.cast::<PyDict>()?.as_mapping())?;
        Ok(state)
    }

    /// Restores what [`Self::base_state`] saved; names it does not own go to `__dict__`.
    pub fn restore_state(
        slf: &Bound<'_, PyAny>,
        this: &Self,
        state: &Bound<'_, PyDict>,
    ) -> PyResult<()> {
        let py = slf.py();
        let dict = slf.getattr(intern!(py, "__dict__"))?;
        let dict = dict.cast::<PyDict>()?;
        for (name, value) in state.iter() {
            if name.eq(intern!(py, "_adapterCache"))? {
                this.set_cache_from(&value)?;
            } else {
                dict.set_item(name, value)?;
            }
        }
        Ok(())
    }
}

pub fn state_dict<'py>(state: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyDict>> {
    state.cast::<PyDict>().cloned().map_err(|_| {
        PyTypeError::new_err(format!(
            "state must be a dict, not {}",
            state
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })
}

#[pymethods]
#[allow(non_snake_case)]
impl Componentized {
    /// Any arguments are accepted so that subclasses may have their own `__init__` signature.
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn py_new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        Self::default()
    }

    fn __init__(&self, py: Python<'_>) {
        self.reset(py);
    }

    #[classattr]
    fn persistenceVersion() -> i32 {
        1
    }

    fn locateAdapterClass<'py>(
        &self,
        klass: &Bound<'py, PyAny>,
        interfaceClass: &Bound<'py, PyAny>,
        default: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = klass.py();
        twisted::components(py)?
            .getattr(intern!(py, "getAdapterFactory"))?
            .call1((klass, interfaceClass, default))
    }

    fn setAdapter(
        slf: &Bound<'_, Self>,
        interfaceClass: &Bound<'_, PyAny>,
        adapterClass: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let adapter = adapterClass.call1((slf,))?;
        slf.call_method1(intern!(slf.py(), "setComponent"), (interfaceClass, adapter))?;
        Ok(())
    }

    #[pyo3(
        signature = (adapterClass, ignoreClass = None),
        text_signature = "($self, adapterClass, ignoreClass=0)"
    )]
    fn addAdapter<'py>(
        slf: &Bound<'py, Self>,
        adapterClass: &Bound<'py, PyAny>,
        ignoreClass: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let adapter = adapterClass.call1((slf,))?;
        let ignore = match ignoreClass {
            Some(value) => value.clone(),
            None => 0i32.into_pyobject(py)?.into_any(),
        };
        slf.call_method1(intern!(py, "addComponent"), (&adapter, ignore))?;
        Ok(adapter)
    }

    fn setComponent(
        &self,
        interfaceClass: &Bound<'_, PyAny>,
        component: Py<PyAny>,
    ) -> PyResult<()> {
        self.store(&key_for(interfaceClass)?, component)
    }

    #[pyo3(
        signature = (component, ignoreClass = None),
        text_signature = "($self, component, ignoreClass=0)"
    )]
    fn addComponent(
        slf: &Bound<'_, Self>,
        component: &Bound<'_, PyAny>,
        ignoreClass: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let ignore = match ignoreClass {
            Some(value) => value.is_truthy()?,
            None => false,
        };
        let provided = twisted::declarations(py)?
            .getattr(intern!(py, "providedBy"))?
            .call1((component,))?;
        for iface in provided.try_iter()? {
            let iface = iface?;
            let appropriate = ignore || {
                let klass = slf.getattr(intern!(py, "__class__"))?;
                let located = slf.call_method1(
                    intern!(py, "locateAdapterClass"),
                    (klass, &iface, py.None()),
                )?;
                located.eq(component.getattr(intern!(py, "__class__"))?)?
            };
            if appropriate {
                slf.get()
                    .store(&key_for(&iface)?, component.clone().unbind())?;
            }
        }
        Ok(())
    }

    fn unsetComponent(&self, interfaceClass: &Bound<'_, PyAny>) -> PyResult<()> {
        let key = key_for(interfaceClass)?;
        let removed = match self.map(key.py()) {
            Some(map) => map.get().remove(&key)?,
            None => None,
        };
        match removed {
            Some(entry) => {
                drop(entry);
                Ok(())
            }
            None => Err(PyKeyError::new_err(key.unbind())),
        }
    }

    fn removeComponent<'py>(&self, component: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        let py = component.py();
        let removed = PyList::empty(py);
        let Some(map) = self.map(py) else {
            return Ok(removed);
        };
        let named_object = twisted::reflect(py)?.getattr(intern!(py, "namedObject"))?;
        // One at a time, as Twisted does: each entry goes before its interface is resolved.
        loop {
            let entry = map.get().lock(py).take_value(component);
            let Some(entry) = entry else { break };
            removed.append(named_object.call1((entry.key.bind(py),))?)?;
        }
        Ok(removed)
    }

    #[pyo3(signature = (interface, default = None))]
    fn getComponent(
        slf: &Bound<'_, Self>,
        interface: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let key = key_for(interface)?;
        let this = slf.get();
        if let Some(component) = this.cached(&key)? {
            return Ok(component);
        }
        let adapter = interface.call_method1(intern!(py, "__adapt__"), (slf,))?;
        if adapter.is_none() {
            return Ok(default.unwrap_or_else(|| py.None()));
        }
        if !flag(&adapter, intern!(py, "temporaryAdapter"))? {
            this.store(&key, adapter.clone().unbind())?;
            if flag(&adapter, intern!(py, "multiComponent"))? {
                slf.call_method1(intern!(py, "addComponent"), (&adapter,))?;
            }
        }
        Ok(adapter.unbind())
    }

    fn __conform__<'py>(
        slf: &Bound<'py, Self>,
        interface: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        slf.call_method1(intern!(slf.py(), "getComponent"), (interface,))
    }

    /// The live cache, a dict-like map from interface names to components.
    #[getter]
    fn _adapterCache(&self, py: Python<'_>) -> PyResult<Py<Namespaces>> {
        self.map_or_create(py)
    }

    #[setter(_adapterCache)]
    fn set_adapter_cache(&self, value: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        match value {
            Some(value) => self.set_cache_from(value),
            None => Err(PyAttributeError::new_err(
                "can't delete attribute '_adapterCache'",
            )),
        }
    }

    fn __getstate__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
        Self::base_state(slf.as_any(), slf.get())
    }

    fn __setstate__(slf: &Bound<'_, Self>, state: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::restore_state(slf.as_any(), slf.get(), &state_dict(state)?)
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let py = slf.py();
        let newobj = twisted::copyreg(py)?.getattr(intern!(py, "__newobj__"))?;
        let state = slf.call_method0(intern!(py, "__getstate__"))?;
        (newobj, (slf.get_type(),), state).into_pyobject(py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.cache.traverse(&visit)
    }

    fn __clear__(&self) {
        drop(self.cache.take());
    }
}
