//! Session ids: 32 bytes from a cryptographically secure generator, hex-encoded to 64
//! lowercase ASCII bytes, as Twisted's `hexlify(os.urandom(32))`.
//!
//! The generator is rand's `StdRng` (ChaCha12), seeded from the operating system's entropy
//! (`getrandom`) on first use. It runs in user space, so an id costs no system call. A
//! forked child must not continue its parent's stream: `txsession` registers
//! [`reseed_after_fork`] with `os.register_at_fork`, which drops the state in the child so that
//! its first id seeds a fresh generator from the operating system.

use parking_lot::Mutex;
use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

static GENERATOR: Mutex<Option<StdRng>> = Mutex::new(None);

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex(raw: &[u8; 32]) -> [u8; 64] {
    let mut out = [0u8; 64];
    for (i, byte) in raw.iter().enumerate() {
        out[2 * i] = HEX[usize::from(byte >> 4)];
        out[2 * i + 1] = HEX[usize::from(byte & 0x0f)];
    }
    out
}

/// A new session id: 64 lowercase hex bytes encoding 32 random bytes.
#[pyfunction]
pub fn session_id(py: Python<'_>) -> PyResult<Bound<'_, PyBytes>> {
    let mut raw = [0u8; 32];
    {
        let mut generator = GENERATOR.lock();
        let rng = match generator.as_mut() {
            Some(rng) => rng,
            None => generator.insert(
                StdRng::try_from_os_rng()
                    .map_err(|e| PyOSError::new_err(format!("no entropy for session ids: {e}")))?,
            ),
        };
        rng.fill_bytes(&mut raw);
    }
    Ok(PyBytes::new(py, &hex(&raw)))
}

/// Forget the generator's state in a forked child, so that it seeds its own.
#[pyfunction]
pub fn reseed_after_fork() {
    // The lock is only ever held with the interpreter attached and without calling into
    // Python, so the thread that forked cannot have left it held: `os.fork` runs with the
    // interpreter attached too.
    *GENERATOR.lock() = None;
}

#[cfg(test)]
mod tests {
    use super::hex;

    #[test]
    fn hex_matches_hexlify() {
        let mut raw = [0u8; 32];
        raw[0] = 0x00;
        raw[1] = 0xff;
        raw[2] = 0x5a;
        raw[31] = 0x01;
        let out = hex(&raw);
        assert_eq!(&out[..6], b"00ff5a");
        assert_eq!(&out[62..], b"01");
        assert!(out
            .iter()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
}
