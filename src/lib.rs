//! The compiled core of txsession: the methods of `Session` and `Componentized`, the map behind
//! `sessionNamespaces`, and session ids. The Python-facing docstrings live in `_txsession.pyi`.

mod componentized;
mod delayed_call;
mod gc;
mod gil;
mod ids;
mod keys;
mod layout;
mod lru;
mod namespaces;
mod order;
mod resp;
mod session;
mod timer;
mod twisted;

use pyo3::prelude::*;

/// `gil_used = true`: the state in `gil.rs` cells and the process-wide caches are sound only
/// while the GIL serialises every thread, so a free-threaded interpreter must keep the GIL on
/// while this module is loaded.
#[pymodule(gil_used = true)]
mod _txsession {
    use pyo3::exceptions::PyImportError;
    use pyo3::ffi;
    use pyo3::prelude::*;

    #[pymodule_export]
    use crate::componentized::Componentized;
    #[pymodule_export]
    use crate::namespaces::Namespaces;
    #[pymodule_export]
    use crate::session::Session;

    #[pymodule_export]
    use crate::ids::{reseed_after_fork, session_id};
    #[pymodule_export]
    use crate::lru::SessionLru;
    #[pymodule_export]
    use crate::resp::{encode_commands, key_slot, RespDecoder};
    #[pymodule_export]
    use crate::session::bind_twisted_session;
    #[pymodule_export]
    use crate::timer::{bind_site, SharedCall, SharedTimer};

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        // The caches of Twisted's classes and functions, and the classes themselves, are
        // process-wide: another interpreter would be handed the main interpreter's objects.
        // SAFETY: both calls only read the running interpreter's state, with the GIL held.
        let main = unsafe { ffi::PyInterpreterState_Get() == ffi::PyInterpreterState_Main() };
        if !main {
            return Err(PyImportError::new_err(
                "txsession can only be imported in the main interpreter, not a subinterpreter",
            ));
        }
        let py = m.py();
        crate::layout::construct_as_object(&py.get_type::<crate::componentized::Componentized>())?;
        crate::layout::construct_as_object(&py.get_type::<crate::session::Session>())?;
        m.add("__version__", env!("CARGO_PKG_VERSION"))
    }
}
