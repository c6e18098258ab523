//! The compiled core of txsession: `Session`, `Componentized` and the map behind
//! `sessionNamespaces`. The Python-facing docstrings live in `_txsession.pyi`.

mod componentized;
mod delayed_call;
mod gc;
mod gil;
mod ids;
mod keys;
mod namespaces;
mod session;
mod twisted;

use pyo3::prelude::*;

#[pymodule]
mod _txsession {
    use pyo3::prelude::*;

    #[pymodule_export]
    use crate::componentized::Componentized;
    #[pymodule_export]
    use crate::namespaces::Namespaces;
    #[pymodule_export]
    use crate::session::Session;

    #[pymodule_export]
    use crate::ids::{reseed_after_fork, session_id};

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))
    }
}
