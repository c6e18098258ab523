//! `Componentized` and `Session` have the memory layout of a plain `object`: their Rust structs
//! are empty and `frozen`, so PyO3 adds nothing to the object header. They are made by
//! `object.__new__`, as Twisted's classes are, and not by a constructor of PyO3's.
//!
//! That matters where Twisted mixes `Componentized` with other classes. A class such as
//! `twisted.web.distrib.Request(RemoteCopy, server.Request)` takes `object.__new__` from its
//! first base, and `jelly` makes blank instances with `cls.__new__(cls)`: with a constructor of
//! PyO3's in the MRO, CPython refuses both ("`__new__` is not safe"). Python subclasses created
//! after this runs inherit `object.__new__` too.

use pyo3::prelude::*;
use pyo3::types::PyType;
use pyo3::{ffi, intern};

/// Makes `ty` construct its instances with `object.__new__`. `ty` must be a class whose Rust
/// struct is zero-sized and `frozen`, so that an object of its size with no Rust value written
/// is a complete instance, and it must have no subclasses yet (they copied its `tp_new`).
pub fn construct_as_object(ty: &Bound<'_, PyType>) -> PyResult<()> {
    let py = ty.py();
    // SAFETY: `ty` is a live heap type, written with the GIL held before any instance or
    // subclass of it exists; `PyType_Modified` then drops what the type cache knew of it.
    unsafe {
        let raw = ty.as_type_ptr();
        if (*raw).tp_basicsize != ffi::PyBaseObject_Type.tp_basicsize {
            return Err(pyo3::exceptions::PySystemError::new_err(
                "txsession's compiled classes must have object's layout",
            ));
        }
        (*raw).tp_new = ffi::PyBaseObject_Type.tp_new;
        let dict = (*raw).tp_dict;
        if !dict.is_null()
            && ffi::PyDict_Contains(dict, intern!(py, "__new__").as_ptr()) == 1
            && ffi::PyDict_DelItem(dict, intern!(py, "__new__").as_ptr()) != 0
        {
            return Err(PyErr::fetch(py));
        }
        ffi::PyType_Modified(raw);
    }
    Ok(())
}
