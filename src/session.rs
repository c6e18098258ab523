//! `Session`: a user's session with a site, as `twisted.web.server.Session`.
//!
//! Every method reaches the reactor, `sessionTimeout`, `expire`, `touch` and the site through
//! ordinary Python attribute lookup at the moment of use, as Twisted's does, so that subclasses
//! and patched reactors behave the same. Rust state is copied out of its cell before any call
//! into Python: callbacks, the reactor and `site.sessions` may all use this session again.

use pyo3::exceptions::PyAttributeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};
use pyo3::{intern, PyTraverseError, PyVisit};

use crate::componentized::{state_dict, Componentized};
use crate::delayed_call;
use crate::gil::GilCell;
use crate::namespaces::Namespaces;
use crate::traverse_fields;

/// Fields are `None` until set (or after `del`), which also makes an all-zero instance valid
/// for the collector. A field set to Python's `None` holds `Some(None)`, as Twisted's instance
/// attribute would.
#[derive(Default)]
struct State {
    site: Option<Py<PyAny>>,
    uid: Option<Py<PyAny>>,
    reactor: Option<Py<PyAny>>,
    last_modified: Option<Py<PyAny>>,
    expire_call: Option<Py<PyAny>>,
    /// `None` stands for a fresh empty list, made when first needed, unless deleted.
    callbacks: Option<Py<PyAny>>,
    /// `None` stands for a fresh empty `Namespaces`, made when first needed, unless deleted.
    /// Whatever is assigned is kept as it is, as Twisted keeps it.
    namespaces: Option<Py<PyAny>>,
    callbacks_deleted: bool,
    namespaces_deleted: bool,
}

/// The Python-visible names of the fields, as pickled state uses them.
const FIELDS: [&str; 7] = [
    "site",
    "uid",
    "_reactor",
    "lastModified",
    "_expireCall",
    "expireCallbacks",
    "sessionNamespaces",
];

#[pyclass(module = "txsession", name = "Session", extends = Componentized, subclass, frozen)]
#[derive(Default)]
pub struct Session {
    state: GilCell<State>,
}

fn missing(slf: &Bound<'_, PyAny>, name: &str) -> PyErr {
    let type_name = slf
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Session".to_owned());
    PyAttributeError::new_err(format!("'{type_name}' object has no attribute '{name}'"))
}

impl Session {
    /// Whether `slf` is exactly `txsession.Session`: then no subclass can have overridden
    /// `touch` or `expire`, and they are called directly rather than looked up.
    fn is_exact(slf: &Bound<'_, Self>) -> bool {
        slf.get_type().is(slf.py().get_type::<Session>())
    }

    /// Replaces one field, dropping the old value only after the borrow ends: dropping
    /// the last reference to an object may run its finalizer, which may use this session.
    fn put<T>(
        &self,
        py: Python<'_>,
        field: impl FnOnce(&mut State) -> &mut Option<T>,
        value: Option<T>,
    ) {
        let old = std::mem::replace(field(&mut self.state.borrow_mut(py)), value);
        drop(old);
    }

    fn read(
        &self,
        py: Python<'_>,
        field: impl FnOnce(&State) -> &Option<Py<PyAny>>,
    ) -> Option<Py<PyAny>> {
        field(&self.state.borrow_mut(py))
            .as_ref()
            .map(|v| v.clone_ref(py))
    }

    fn required<'py>(
        slf: &Bound<'py, Self>,
        name: &str,
        field: impl FnOnce(&State) -> &Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        slf.get()
            .read(slf.py(), field)
            .map(|v| v.into_bound(slf.py()))
            .ok_or_else(|| missing(slf.as_any(), name))
    }

    /// Takes a field as `del` does: an `AttributeError` if it is not set.
    fn delete(
        slf: &Bound<'_, Self>,
        name: &str,
        field: impl FnOnce(&mut State) -> &mut Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let old = field(&mut slf.get().state.borrow_mut(slf.py())).take();
        match old {
            Some(old) => {
                drop(old);
                Ok(())
            }
            None => Err(missing(slf.as_any(), name)),
        }
    }

    fn callbacks<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.callbacks_made_with(py, None).map(|(list, _)| list)
    }

    /// The callbacks list; when none is made yet, a new one holding `first` (if given), and
    /// `true`. It gets room for just those items: an empty list appended to makes room for
    /// four, and most sessions get one callback.
    fn callbacks_made_with<'py>(
        &self,
        py: Python<'py>,
        first: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<(Bound<'py, PyAny>, bool)> {
        if let Some(list) = self.read(py, |s| &s.callbacks) {
            return Ok((list.into_bound(py), false));
        }
        if self.state.borrow_mut(py).callbacks_deleted {
            return Err(PyAttributeError::new_err("expireCallbacks"));
        }
        let fresh = PyList::new(py, first)?.into_any();
        let mut state = self.state.borrow_mut(py);
        // Allocating may have run a collection whose finalizer made the list: keep that one.
        match &state.callbacks {
            Some(list) => Ok((list.clone_ref(py).into_bound(py), false)),
            None => {
                state.callbacks = Some(fresh.clone().unbind());
                Ok((fresh, true))
            }
        }
    }

    fn namespaces(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        if let Some(map) = self.state.borrow_mut(py).namespaces.as_ref() {
            return Ok(map.clone_ref(py));
        }
        if self.state.borrow_mut(py).namespaces_deleted {
            return Err(PyAttributeError::new_err("sessionNamespaces"));
        }
        let fresh = Py::new(py, Namespaces::default())?.into_any();
        Ok(self
            .state
            .borrow_mut(py)
            .namespaces
            .get_or_insert(fresh)
            .clone_ref(py))
    }

    /// Replaces a lazily made field (`None`: made fresh when first read) and sets whether it
    /// counts as deleted, dropping the old value after the borrow ends.
    fn replace_lazy(
        &self,
        py: Python<'_>,
        slot: impl FnOnce(&mut State) -> (&mut Option<Py<PyAny>>, &mut bool),
        value: Option<Py<PyAny>>,
        deleted: bool,
    ) {
        let old = {
            let mut state = self.state.borrow_mut(py);
            let (field, flag) = slot(&mut state);
            *flag = deleted;
            std::mem::replace(field, value)
        };
        drop(old);
    }

    fn set_namespaces(&self, py: Python<'_>, value: Option<Py<PyAny>>, deleted: bool) {
        self.replace_lazy(
            py,
            |s| (&mut s.namespaces, &mut s.namespaces_deleted),
            value,
            deleted,
        );
    }

    fn set_callbacks(&self, py: Python<'_>, value: Option<Py<PyAny>>, deleted: bool) {
        self.replace_lazy(
            py,
            |s| (&mut s.callbacks, &mut s.callbacks_deleted),
            value,
            deleted,
        );
    }

    /// Sets a field from pickled state; `false` when `name` is not one of this class's fields.
    fn restore_field(&self, name: &str, value: &Bound<'_, PyAny>) -> PyResult<bool> {
        let py = value.py();
        let value_py = || Some(value.clone().unbind());
        match name {
            "site" => self.put(py, |s| &mut s.site, value_py()),
            "uid" => self.put(py, |s| &mut s.uid, value_py()),
            "_reactor" => self.put(py, |s| &mut s.reactor, value_py()),
            "lastModified" => self.put(py, |s| &mut s.last_modified, value_py()),
            "_expireCall" => self.put(py, |s| &mut s.expire_call, value_py()),
            "expireCallbacks" => self.set_callbacks(py, value_py(), false),
            // A pickled session's namespaces are a dict: back into a Rust map.
            "sessionNamespaces" if value.is_exact_instance_of::<PyDict>() => {
                let map = Namespaces::from_mapping(value)?;
                self.set_namespaces(py, Some(Py::new(py, map)?.into_any()), false)
            }
            "sessionNamespaces" => self.set_namespaces(py, value_py(), false),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

#[pymethods]
#[allow(non_snake_case)]
impl Session {
    /// Any arguments are accepted here; `__init__` does the work, so that subclasses may have
    /// their own `__init__` signature and call `super().__init__(site, uid)`.
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn py_new(
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyClassInitializer<Self> {
        PyClassInitializer::from(Componentized::default()).add_subclass(Session::default())
    }

    #[pyo3(signature = (site, uid, reactor = None))]
    fn __init__(
        slf: &Bound<'_, Self>,
        site: &Bound<'_, PyAny>,
        uid: &Bound<'_, PyAny>,
        reactor: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        // Twisted's `super().__init__()`: Componentized's, which empties the component cache.
        slf.as_super().get().reset(py);
        let reactor = match reactor {
            Some(reactor) if !reactor.is_none() => reactor.clone(),
            _ => site.getattr(intern!(py, "reactor"))?,
        };
        let this = slf.get();
        this.put(py, |s| &mut s.reactor, Some(reactor.unbind()));
        this.put(py, |s| &mut s.site, Some(site.clone().unbind()));
        this.put(py, |s| &mut s.uid, Some(uid.clone().unbind()));
        this.set_callbacks(py, None, false);
        if Session::is_exact(slf) {
            Session::touch(slf)?;
        } else {
            slf.call_method0(intern!(py, "touch"))?;
        }
        this.set_namespaces(py, None, false);
        Ok(())
    }

    #[classattr]
    fn sessionTimeout() -> i32 {
        900
    }

    #[getter(site)]
    fn get_site<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        Session::required(slf, "site", |s| &s.site)
    }

    #[setter(site)]
    fn set_site(&self, py: Python<'_>, value: Py<PyAny>) {
        self.put(py, |s| &mut s.site, Some(value));
    }

    #[deleter(site)]
    fn delete_site(slf: &Bound<'_, Self>) -> PyResult<()> {
        Session::delete(slf, "site", |s| &mut s.site)
    }

    #[getter(uid)]
    fn get_uid<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        Session::required(slf, "uid", |s| &s.uid)
    }

    #[setter(uid)]
    fn set_uid(&self, py: Python<'_>, value: Py<PyAny>) {
        self.put(py, |s| &mut s.uid, Some(value));
    }

    #[deleter(uid)]
    fn delete_uid(slf: &Bound<'_, Self>) -> PyResult<()> {
        Session::delete(slf, "uid", |s| &mut s.uid)
    }

    #[getter(_reactor)]
    fn get_reactor<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        Session::required(slf, "_reactor", |s| &s.reactor)
    }

    #[setter(_reactor)]
    fn set_reactor(&self, py: Python<'_>, value: Py<PyAny>) {
        self.put(py, |s| &mut s.reactor, Some(value));
    }

    #[deleter(_reactor)]
    fn delete_reactor(slf: &Bound<'_, Self>) -> PyResult<()> {
        Session::delete(slf, "_reactor", |s| &mut s.reactor)
    }

    #[getter(lastModified)]
    fn get_last_modified<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        Session::required(slf, "lastModified", |s| &s.last_modified)
    }

    #[setter(lastModified)]
    fn set_last_modified(&self, py: Python<'_>, value: Py<PyAny>) {
        self.put(py, |s| &mut s.last_modified, Some(value));
    }

    #[deleter(lastModified)]
    fn delete_last_modified(slf: &Bound<'_, Self>) -> PyResult<()> {
        Session::delete(slf, "lastModified", |s| &mut s.last_modified)
    }

    /// The pending expiry call, or `None`.
    #[getter(_expireCall)]
    fn get_expire_call(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.read(py, |s| &s.expire_call)
    }

    /// Unset reads as `None`, as Twisted's class attribute does.
    #[setter(_expireCall)]
    fn set_expire_call(&self, py: Python<'_>, value: Py<PyAny>) {
        self.put(py, |s| &mut s.expire_call, Some(value));
    }

    #[deleter(_expireCall)]
    fn delete_expire_call(slf: &Bound<'_, Self>) -> PyResult<()> {
        Session::delete(slf, "_expireCall", |s| &mut s.expire_call)
    }

    #[getter(expireCallbacks)]
    fn get_expire_callbacks<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.callbacks(py)
    }

    #[setter(expireCallbacks)]
    fn set_expire_callbacks(&self, py: Python<'_>, value: Py<PyAny>) {
        self.set_callbacks(py, Some(value), false);
    }

    /// Twisted's `del`: an `AttributeError` if already deleted.
    #[deleter(expireCallbacks)]
    fn delete_expire_callbacks(&self, py: Python<'_>) -> PyResult<()> {
        self.callbacks(py)?;
        self.set_callbacks(py, None, true);
        Ok(())
    }

    #[getter(sessionNamespaces)]
    fn get_session_namespaces(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.namespaces(py)
    }

    #[setter(sessionNamespaces)]
    fn set_session_namespaces(&self, py: Python<'_>, value: Py<PyAny>) {
        self.set_namespaces(py, Some(value), false);
    }

    /// Twisted's `del`: an `AttributeError` if already deleted.
    #[deleter(sessionNamespaces)]
    fn delete_session_namespaces(&self, py: Python<'_>) -> PyResult<()> {
        self.namespaces(py)?;
        self.set_namespaces(py, None, true);
        Ok(())
    }

    /// Schedules `self.expire` with the reactor's `callLater`, `sessionTimeout` from now.
    fn startCheckingExpiration(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let call_later = Session::required(slf, "_reactor", |s| &s.reactor)?
            .getattr(intern!(py, "callLater"))?;
        let timeout = slf.getattr(intern!(py, "sessionTimeout"))?;
        let expire = slf.getattr(intern!(py, "expire"))?;
        let call = call_later.call1((timeout, expire))?;
        slf.get()
            .put(py, |s| &mut s.expire_call, Some(call.unbind()));
        Ok(())
    }

    fn notifyOnExpire(&self, py: Python<'_>, callback: &Bound<'_, PyAny>) -> PyResult<()> {
        let (callbacks, made) = self.callbacks_made_with(py, Some(callback))?;
        if made {
            return Ok(());
        }
        match callbacks.cast_exact::<PyList>() {
            Ok(list) => list.append(callback),
            Err(_) => callbacks
                .call_method1(intern!(py, "append"), (callback,))
                .map(drop),
        }
    }

    /// Twisted's order, kept on purpose: remove from `site.sessions` (a `KeyError` if it is
    /// already gone), run the callbacks (an exception propagates), then cancel the timer.
    fn expire(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let site = Session::required(slf, "site", |s| &s.site)?;
        let sessions = site.getattr(intern!(py, "sessions"))?;
        let uid = Session::required(slf, "uid", |s| &s.uid)?;
        sessions.del_item(uid)?;
        if let Some(callbacks) = this.read(py, |s| &s.callbacks) {
            let callbacks = callbacks.into_bound(py);
            match callbacks.cast_exact::<PyList>() {
                // A list iterator's walk, without making the iterator: the length is read again
                // after each callback, which may add or remove callbacks.
                Ok(list) => {
                    let mut ix = 0;
                    while ix < list.len() {
                        list.get_item(ix)?.call0()?;
                        ix += 1;
                    }
                }
                Err(_) => {
                    for callback in callbacks.try_iter()? {
                        callback?.call0()?;
                    }
                }
            }
        } else if this.state.borrow_mut(py).callbacks_deleted {
            return Err(missing(slf.as_any(), "expireCallbacks"));
        }
        this.set_callbacks(py, None, false);
        if let Some(call) = this.read(py, |s| &s.expire_call) {
            let call = call.bind(py);
            let active = call.is_truthy()? && delayed_call::active(call)?;
            if active {
                call.call_method0(intern!(py, "cancel"))?;
                // Twisted sets the attribute to None here (it is then an instance attribute).
                this.put(py, |s| &mut s.expire_call, Some(py.None()));
            }
        }
        Ok(())
    }

    /// Records the time and moves the expiry. Raises Twisted's `AlreadyCalled` when the timer
    /// already fired: `Request.getSession` relies on that to replace an expired session.
    fn touch(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (reactor, call) = {
            let state = this.state.borrow_mut(py);
            let clone = |v: &Option<Py<PyAny>>| v.as_ref().map(|v| v.clone_ref(py));
            (clone(&state.reactor), clone(&state.expire_call))
        };
        let reactor = reactor.ok_or_else(|| missing(slf.as_any(), "_reactor"))?;
        let seconds = reactor.bind(py).getattr(intern!(py, "seconds"))?;
        let now = seconds.call0()?;
        this.put(py, |s| &mut s.last_modified, Some(now.clone().unbind()));
        match call {
            Some(call) if !call.is_none(py) => {
                let timeout = slf.getattr(intern!(py, "sessionTimeout"))?;
                delayed_call::reset(call.bind(py), &timeout, &now, &seconds)
            }
            _ => Ok(()),
        }
    }

    fn __getstate__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
        let py = slf.py();
        let base = slf.as_super();
        let state = Componentized::base_state(slf.as_any(), base.get())?;
        let this = slf.get();
        let namespaces =
            this.namespaces(py)
                .ok()
                .map(|ns| match ns.bind(py).cast::<Namespaces>() {
                    Ok(map) => map.get().to_dict(py).map(|d| d.into_any().unbind()),
                    Err(_) => Ok(ns),
                });
        let namespaces = namespaces.transpose()?;
        let callbacks = this.callbacks(py).ok().map(Bound::unbind);
        let values = {
            let s = this.state.borrow_mut(py);
            [
                s.site.as_ref().map(|v| v.clone_ref(py)),
                s.uid.as_ref().map(|v| v.clone_ref(py)),
                s.reactor.as_ref().map(|v| v.clone_ref(py)),
                s.last_modified.as_ref().map(|v| v.clone_ref(py)),
                s.expire_call.as_ref().map(|v| v.clone_ref(py)),
                callbacks,
                namespaces,
            ]
        };
        for (name, value) in FIELDS.iter().zip(values) {
            if let Some(value) = value {
                state.set_item(PyString::new(py, name), value)?;
            }
        }
        Ok(state)
    }

    fn __setstate__(slf: &Bound<'_, Self>, state: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let state = state_dict(state)?;
        let rest = PyDict::new(py);
        for (name, value) in state.iter() {
            let handled = match name.cast::<PyString>() {
                Ok(s) => slf.get().restore_field(s.to_str()?, &value)?,
                Err(_) => false,
            };
            if !handled {
                rest.set_item(name, value)?;
            }
        }
        let base = slf.as_super();
        Componentized::restore_state(slf.as_any(), base.get(), &rest)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Some(s) = self.state.try_borrow_mut() else {
            // Whoever borrows the state keeps these alive; skipping only delays their collection.
            return Ok(());
        };
        traverse_fields!(visit; s.site, s.uid, s.reactor, s.last_modified, s.expire_call,
            s.callbacks, s.namespaces)
    }

    fn __clear__(&self) {
        let old = self
            .state
            .try_borrow_mut()
            .map(|mut s| std::mem::take(&mut *s));
        drop(old);
    }
}
