//! The key a component is cached under: the interface's qualified name, as Twisted's
//! `reflect.qual(interface)` gives it. Computing it means two attribute reads and a new string
//! on every `getComponent`, so each interface's key is remembered, by the interface's
//! identity, the first time it is seen. The map holds a reference to the interface, so an
//! address is never reused while it is remembered. It is emptied when it grows past `LIMIT`,
//! which bounds it for apps that make interfaces on the fly.

use pyo3::prelude::*;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::gil::GilCell;
use crate::twisted;

const LIMIT: usize = 4096;

/// Object addresses are already well spread: mix them once instead of SipHashing them.
#[derive(Default)]
struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = (n as u64 >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type Remembered = HashMap<usize, (Py<PyAny>, Py<PyAny>), BuildHasherDefault<AddressHasher>>;

static KEYS: GilCell<Option<Remembered>> = GilCell::new(None);

/// The cache key for `interface`.
pub fn key_for<'py>(interface: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = interface.py();
    let id = interface.as_ptr() as usize;
    if let Some((_, key)) = KEYS.borrow_mut(py).as_ref().and_then(|keys| keys.get(&id)) {
        return Ok(key.bind(py).clone());
    }
    // Computed without a borrow: `__module__` and `__name__` may be Python code.
    let key = twisted::qual(interface)?;
    let released = {
        let mut keys = KEYS.borrow_mut(py);
        let keys = keys.get_or_insert_with(Remembered::default);
        let evicted = (keys.len() >= LIMIT).then(|| std::mem::take(keys));
        let replaced = keys.insert(id, (interface.clone().unbind(), key.clone().unbind()));
        (evicted, replaced)
    };
    // Dropped after the borrow: releasing an interface may run Python code.
    drop(released);
    Ok(key)
}
