//! `Componentized`'s methods, as in `twisted.python.components.Componentized`.
//!
//! The class holds no Rust state: the component cache is the instance's `_adapterCache` dict,
//! where Twisted keeps it, read through ordinary attribute lookup. So these methods work on
//! any object Twisted's `Componentized.__init__` set up, a shallow copy shares the cache as
//! Twisted's does, and `txsession.Componentized` can take Twisted's place after other classes
//! were already built on it.

use pyo3::exceptions::PyAttributeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyString, PyType};

use crate::keys::key_for;
use crate::twisted;

#[pyclass(
    module = "txsession._txsession",
    name = "Componentized",
    subclass,
    frozen
)]
pub struct Componentized;

/// `hasattr(obj, name) and obj.name`, as Twisted tests its adapters' flags.
fn flag(obj: &Bound<'_, PyAny>, name: &Bound<'_, PyString>) -> PyResult<bool> {
    match obj.getattr(name) {
        Ok(value) => value.is_truthy(),
        Err(err) if err.is_instance_of::<PyAttributeError>(obj.py()) => Ok(false),
        Err(err) => Err(err),
    }
}

fn cache<'py>(slf: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    slf.getattr(intern!(slf.py(), "_adapterCache"))
}

/// `self._adapterCache[key] = component`, the cache read first as Python evaluates it.
fn store(
    slf: &Bound<'_, PyAny>,
    key: &Bound<'_, PyAny>,
    component: &Bound<'_, PyAny>,
) -> PyResult<()> {
    cache(slf)?.set_item(key, component)
}

#[pymethods]
#[allow(non_snake_case)]
impl Componentized {
    fn locateAdapterClass<'py>(
        slf: &Bound<'py, Self>,
        klass: &Bound<'py, PyAny>,
        interfaceClass: &Bound<'py, PyAny>,
        default: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let slf = slf.as_any();
        let py = slf.py();
        twisted::components(py)?
            .getattr(intern!(py, "getAdapterFactory"))?
            .call1((klass, interfaceClass, default))
    }

    fn setAdapter(
        slf: &Bound<'_, Self>,
        interfaceClass: &Bound<'_, PyAny>,
        adapterClass: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let slf = slf.as_any();
        let py = slf.py();
        let set_component = slf.getattr(intern!(py, "setComponent"))?;
        let adapter = adapterClass.call1((slf,))?;
        set_component.call1((interfaceClass, adapter)).map(drop)
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
        let slf = slf.as_any();
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
        slf: &Bound<'_, Self>,
        interfaceClass: &Bound<'_, PyAny>,
        component: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let slf = slf.as_any();
        let cache = cache(slf)?;
        cache.set_item(key_for(interfaceClass)?, component)
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
        let slf = slf.as_any();
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
                let cache = cache(slf)?;
                cache.set_item(key_for(&iface)?, component)?;
            }
        }
        Ok(())
    }

    fn unsetComponent(slf: &Bound<'_, Self>, interfaceClass: &Bound<'_, PyAny>) -> PyResult<()> {
        let slf = slf.as_any();
        let cache = cache(slf)?;
        cache.del_item(key_for(interfaceClass)?)
    }

    fn removeComponent<'py>(
        slf: &Bound<'py, Self>,
        component: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let slf = slf.as_any();
        let py = slf.py();
        let removed = PyList::empty(py);
        let items = cache(slf)?.call_method0(intern!(py, "items"))?;
        let items = PyList::new(py, items.try_iter()?.collect::<PyResult<Vec<_>>>()?)?;
        for item in items.iter() {
            let (key, value): (Bound<'py, PyAny>, Bound<'py, PyAny>) = item.extract()?;
            if value.is(component) {
                cache(slf)?.del_item(&key)?;
                let named_object = twisted::reflect(py)?.getattr(intern!(py, "namedObject"))?;
                removed.append(named_object.call1((key,))?)?;
            }
        }
        Ok(removed)
    }

    #[pyo3(signature = (interface, default = None))]
    fn getComponent<'py>(
        slf: &Bound<'py, Self>,
        interface: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let slf = slf.as_any();
        let py = slf.py();
        let key = key_for(interface)?;
        let cached = cache(slf)?;
        match cached.cast_exact::<PyDict>() {
            // A plain dict and a plain str key run no Python code, so one lookup tells what
            // Twisted's `k in cache` followed by `cache[k]` would.
            Ok(dict) if key.is_exact_instance_of::<PyString>() => {
                if let Some(component) = dict.get_item(&key)? {
                    return Ok(component);
                }
            }
            _ => {
                if cached.contains(&key)? {
                    return cache(slf)?.get_item(&key);
                }
            }
        }
        drop(cached);
        let adapter = interface.call_method1(intern!(py, "__adapt__"), (slf,))?;
        if adapter.is_none() {
            return Ok(default.unwrap_or_else(|| py.None().into_bound(py)));
        }
        if !flag(&adapter, intern!(py, "temporaryAdapter"))? {
            store(slf, &key, &adapter)?;
            if flag(&adapter, intern!(py, "multiComponent"))? {
                slf.call_method1(intern!(py, "addComponent"), (&adapter,))?;
            }
        }
        Ok(adapter)
    }

    fn __conform__<'py>(
        slf: &Bound<'py, Self>,
        interface: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let slf = slf.as_any();
        slf.call_method1(intern!(slf.py(), "getComponent"), (interface,))
    }

    /// `object.__reduce_ex__` at protocol 2 or above. Protocols 0 and 1 would rebuild the
    /// object with `object.__new__`, which refuses a class with a compiled base; protocol 2's
    /// `copyreg.__newobj__` calls the class's own `__new__` and pickles at every protocol.
    fn __reduce_ex__<'py>(slf: &Bound<'py, Self>, protocol: i32) -> PyResult<Bound<'py, PyAny>> {
        let slf = slf.as_any();
        let py = slf.py();
        static OBJECT: PyOnceLock<Py<PyType>> = PyOnceLock::new();
        OBJECT
            .import(py, "builtins", "object")?
            .getattr(intern!(py, "__reduce_ex__"))?
            .call1((slf, protocol.max(2)))
    }
}
