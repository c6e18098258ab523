//! `Session`'s methods, as in `twisted.web.server.Session`.
//!
//! The class holds no Rust state: `site`, `uid`, `_reactor`, `lastModified`, `expireCallbacks`,
//! `sessionNamespaces` and `_expireCall` are instance attributes, where Twisted keeps them, so
//! apps read them at the interpreter's full speed. Every method reaches them, the reactor,
//! `sessionTimeout`, `expire` and `touch` through ordinary attribute lookup at the moment of
//! use and in Twisted's order, so subclasses, patched reactors and odd values behave the same.

use pyo3::exceptions::{PyKeyError, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyType};
use pyo3::{ffi, intern};
use std::collections::HashMap;

use crate::componentized::Componentized;
use crate::delayed_call;
use crate::gil::GilCell;
use crate::namespaces::Namespaces;
use crate::timer::{self, SharedTimer};

#[pyclass(
    module = "txsession._txsession",
    name = "Session",
    extends = Componentized,
    subclass,
    frozen
)]
pub struct Session;

/// What `__init__` needs to stand in for Twisted's `super().__init__()`: the Twisted class whose
/// `__init__` it replaces, and Twisted's `Componentized.__init__`, which is what that call
/// reaches unless a class in between defines its own.
struct Bases {
    twisted_session: Py<PyType>,
    componentized_init: Py<PyAny>,
    /// `txsession.Session.touch`, which `__init__` does itself when the class has it.
    own_touch: Py<PyAny>,
}

static BASES: GilCell<Option<Bases>> = GilCell::new(None);

/// Tells `Session.__init__` which Twisted class it stands in for; called once by the Python
/// package when it builds `txsession.Session`.
#[pyfunction]
pub fn bind_twisted_session(
    twisted_session: &Bound<'_, PyType>,
    componentized_init: &Bound<'_, PyAny>,
    own_touch: &Bound<'_, PyAny>,
) {
    let py = twisted_session.py();
    let old = BASES.borrow_mut(py).replace(Bases {
        twisted_session: twisted_session.clone().unbind(),
        componentized_init: componentized_init.clone().unbind(),
        own_touch: own_touch.clone().unbind(),
    });
    let learned = FACTS.borrow_mut(py).take();
    drop((old, learned));
}

/// What `__init__` learns from an instance's class, remembered per class until the class or
/// one of its bases changes (CPython then gives it a new version tag).
#[derive(Clone, Copy)]
struct ClassFacts {
    /// The `__init__` after Twisted's `Session` in the MRO is Twisted's `Componentized.__init__`.
    plain_componentized_init: bool,
    /// `touch` on the class is `txsession.Session`'s.
    own_touch: bool,
    /// Attributes are set and read by `object`'s own `__setattr__` and `__getattribute__`, and
    /// the class has no `_reactor` of its own: what `__init__` stores is what a read returns.
    plain_attributes: bool,
}

/// The facts learned so far, by class, and the last class asked about, which is nearly always
/// the next one.
#[derive(Default)]
struct Facts {
    last: Option<(usize, u32, ClassFacts)>,
    by_class: HashMap<usize, (u32, ClassFacts)>,
}

static FACTS: GilCell<Option<Facts>> = GilCell::new(None);
const FACTS_LIMIT: usize = 1024;

fn version_tag(ty: &Bound<'_, PyType>) -> Option<u32> {
    // SAFETY: reading two fields of a live type object, with the GIL held.
    unsafe {
        let raw = ty.as_type_ptr();
        ((*raw).tp_flags & ffi::Py_TPFLAGS_VALID_VERSION_TAG != 0 && (*raw).tp_version_tag != 0)
            .then_some((*raw).tp_version_tag)
    }
}

fn class_facts(ty: &Bound<'_, PyType>) -> PyResult<ClassFacts> {
    let py = ty.py();
    let id = ty.as_ptr() as usize;
    if let Some(tag) = version_tag(ty) {
        let mut cache = FACTS.borrow_mut(py);
        if let Some(cache) = cache.as_mut() {
            if let Some((last, seen, facts)) = cache.last {
                if last == id && seen == tag {
                    return Ok(facts);
                }
            }
            if let Some(&(seen, facts)) = cache.by_class.get(&id) {
                if seen == tag {
                    cache.last = Some((id, tag, facts));
                    return Ok(facts);
                }
            }
        }
    }
    let facts = learn(ty)?;
    // Learning looked names up on the class, which gives it a version tag if it had none.
    if let Some(tag) = version_tag(ty) {
        let mut cache = FACTS.borrow_mut(py);
        let cache = cache.get_or_insert_with(Facts::default);
        if cache.by_class.len() >= FACTS_LIMIT {
            cache.by_class.clear();
        }
        cache.by_class.insert(id, (tag, facts));
        cache.last = Some((id, tag, facts));
    }
    Ok(facts)
}

fn learn(ty: &Bound<'_, PyType>) -> PyResult<ClassFacts> {
    let py = ty.py();
    let (twisted_session, componentized_init, own_touch) = bases(py)?;
    let mut plain_componentized_init = false;
    let mut after = false;
    for base in ty.mro().iter() {
        if !after {
            after = base.is(&twisted_session);
            continue;
        }
        let defined = base.getattr(intern!(py, "__dict__"))?;
        match defined.get_item(intern!(py, "__init__")) {
            Ok(init) => {
                plain_componentized_init = init.is(&componentized_init);
                break;
            }
            Err(err) if err.is_instance_of::<PyKeyError>(py) => continue,
            Err(err) => return Err(err),
        }
    }
    // SAFETY: reading two slots of a live type object, with the GIL held. A comparison that
    // fails although the functions are the same only costs the faster path.
    let generic = unsafe {
        let raw = ty.as_type_ptr();
        matches!((*raw).tp_setattro, Some(f)
            if std::ptr::fn_addr_eq(f, ffi::PyObject_GenericSetAttr as ffi::setattrofunc))
            && matches!((*raw).tp_getattro, Some(f)
            if std::ptr::fn_addr_eq(f, ffi::PyObject_GenericGetAttr as ffi::getattrofunc))
    };
    Ok(ClassFacts {
        plain_componentized_init,
        own_touch: ty.getattr(intern!(py, "touch"))?.is(&own_touch),
        plain_attributes: generic && !ty.hasattr(intern!(py, "_reactor"))?,
    })
}

/// `object.__getattribute__(obj, name)`, for a class whose facts say that is what reading an
/// attribute runs: it skips `getattr`'s dispatch through the type's slot.
fn get_plain<'py>(
    obj: &Bound<'py, PyAny>,
    name: &Bound<'py, PyString>,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: two live objects, with the GIL held; the result is a new reference or NULL.
    unsafe {
        Bound::from_owned_ptr_or_err(
            obj.py(),
            ffi::PyObject_GenericGetAttr(obj.as_ptr(), name.as_ptr()),
        )
    }
}

/// `object.__setattr__(obj, name, value)`, for a class whose facts say that is what
/// `setattr` runs: it skips `setattr`'s interning of a name that is already interned.
fn set_plain(
    obj: &Bound<'_, PyAny>,
    name: &Bound<'_, PyString>,
    value: &Bound<'_, PyAny>,
) -> PyResult<()> {
    // SAFETY: three live objects, with the GIL held.
    match unsafe { ffi::PyObject_GenericSetAttr(obj.as_ptr(), name.as_ptr(), value.as_ptr()) } {
        -1 => Err(PyErr::fetch(obj.py())),
        _ => Ok(()),
    }
}

type BoundBases<'py> = (Bound<'py, PyType>, Bound<'py, PyAny>, Bound<'py, PyAny>);

fn bases(py: Python<'_>) -> PyResult<BoundBases<'_>> {
    let bases = BASES.borrow_mut(py);
    let bases = bases
        .as_ref()
        .ok_or_else(|| PyRuntimeError::new_err("txsession.Session is not set up"))?;
    Ok((
        bases.twisted_session.clone_ref(py).into_bound(py),
        bases.componentized_init.clone_ref(py).into_bound(py),
        bases.own_touch.clone_ref(py).into_bound(py),
    ))
}

/// Twisted's `super().__init__()` from `Session.__init__`: the `__init__` that follows
/// Twisted's `Session` in the instance's MRO. When that is Twisted's `Componentized.__init__`
/// its effect, `self._adapterCache = {}`, is done here; anything else is called.
fn init_componentized(slf: &Bound<'_, PyAny>, facts: ClassFacts) -> PyResult<()> {
    let py = slf.py();
    if facts.plain_componentized_init {
        let name = intern!(py, "_adapterCache");
        let cache = PyDict::new(py);
        return if facts.plain_attributes {
            set_plain(slf, name, cache.as_any())
        } else {
            slf.setattr(name, cache)
        };
    }
    let (twisted_session, _, _) = bases(py)?;
    let super_ = py
        .get_type::<pyo3::types::PySuper>()
        .call1((twisted_session, slf))?;
    super_.call_method0(intern!(py, "__init__")).map(drop)
}

#[pymethods]
#[allow(non_snake_case)]
impl Session {
    #[pyo3(signature = (site, uid, reactor = None))]
    fn __init__(
        slf: &Bound<'_, Self>,
        site: &Bound<'_, PyAny>,
        uid: &Bound<'_, PyAny>,
        reactor: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.as_any();
        let facts = class_facts(&slf.get_type())?;
        init_componentized(this, facts)?;
        let reactor = match reactor {
            Some(reactor) => reactor.clone(),
            None => site.getattr(intern!(py, "reactor"))?,
        };
        let set = |name: &Bound<'_, PyString>, value: &Bound<'_, PyAny>| {
            if facts.plain_attributes {
                set_plain(this, name, value)
            } else {
                this.setattr(name, value)
            }
        };
        set(intern!(py, "_reactor"), &reactor)?;
        set(intern!(py, "site"), site)?;
        set(intern!(py, "uid"), uid)?;
        set(intern!(py, "expireCallbacks"), PyList::empty(py).as_any())?;
        // `self.touch()`: done here when the class has `txsession.Session.touch`, which skips a
        // call into Python, with the reactor just stored when reading `self._reactor` is sure
        // to return it. An instance attribute named `touch`,
        // which only a subclass's `__init__` could have set before calling this one, is not
        // looked at.
        match (facts.own_touch, facts.plain_attributes) {
            (true, true) => Session::touch_with(slf, &reactor, true)?,
            (true, false) => Session::touch(slf)?,
            (false, _) => drop(this.call_method0(intern!(py, "touch"))?),
        }
        set(
            intern!(py, "sessionNamespaces"),
            Namespaces::new_untracked(py)?.as_any(),
        )
    }

    /// `self._expireCall = self._reactor.callLater(self.sessionTimeout, self.expire)`; on a
    /// `txsession.Site(sharedTimer=True)` whose reactor is the session's, the site's shared
    /// timer files the expiry instead.
    fn startCheckingExpiration(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let reactor = slf.getattr(intern!(py, "_reactor"))?;
        if let Some(timer) = timer::shared_timer_for(slf.as_any(), &reactor)? {
            let timeout = slf.getattr(intern!(py, "sessionTimeout"))?;
            let call = SharedTimer::add(&timer, slf.as_any(), &timeout)?;
            return slf.setattr(intern!(py, "_expireCall"), call);
        }
        let call_later = reactor.getattr(intern!(py, "callLater"))?;
        let timeout = slf.getattr(intern!(py, "sessionTimeout"))?;
        let expire = slf.getattr(intern!(py, "expire"))?;
        let call = call_later.call1((timeout, expire))?;
        slf.setattr(intern!(py, "_expireCall"), call)
    }

    /// `self.expireCallbacks.append(callback)`.
    fn notifyOnExpire(slf: &Bound<'_, Self>, callback: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let callbacks = slf.getattr(intern!(py, "expireCallbacks"))?;
        match callbacks.cast_exact::<PyList>() {
            Ok(list) => list.append(callback),
            Err(_) => callbacks
                .call_method1(intern!(py, "append"), (callback,))
                .map(drop),
        }
    }
}

impl Session {
    /// `txsession.Session.touch`, for `__init__`.
    fn touch(slf: &Bound<'_, Self>) -> PyResult<()> {
        let reactor = slf.getattr(intern!(slf.py(), "_reactor"))?;
        Session::touch_with(slf, &reactor, false)
    }

    /// `touch` with `self._reactor` already read; `plain` when the class's facts say its
    /// attributes are `object`'s own.
    fn touch_with(slf: &Bound<'_, Self>, reactor: &Bound<'_, PyAny>, plain: bool) -> PyResult<()> {
        let py = slf.py();
        let this = slf.as_any();
        let now = reactor.call_method0(intern!(py, "seconds"))?;
        let call = if plain {
            set_plain(this, intern!(py, "lastModified"), &now)?;
            get_plain(this, intern!(py, "_expireCall"))?
        } else {
            this.setattr(intern!(py, "lastModified"), &now)?;
            this.getattr(intern!(py, "_expireCall"))?
        };
        if call.is_none() {
            return Ok(());
        }
        let timeout = this.getattr(intern!(py, "sessionTimeout"))?;
        delayed_call::reset(&call, &timeout, &now, reactor)
    }
}
