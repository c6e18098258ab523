//! Twisted's `DelayedCall.reset`, done from Rust for the exact class
//! `twisted.internet.base.DelayedCall`, the one every Twisted reactor and `task.Clock` return,
//! for `Session.__init__` and a `SharedDelayedCall`'s reset from `Session.touch`.
//!
//! `reset(secondsFromNow)` raises `AlreadyCancelled` or `AlreadyCalled`, and otherwise computes
//! `newTime = self.seconds() + secondsFromNow`. When `newTime` is not earlier than `self.time`,
//! the only thing it does is `self.delayed_time = newTime - self.time`. That is the case on
//! almost every `touch`, so it is done here with the same checks, in the same order and with
//! the same arithmetic, without running the Python method. An earlier time (the reactor must
//! move the call), another class of delayed call, or a time that is not a plain number goes
//! through `reset` itself.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyFloat, PyInt, PyType};
use pyo3::{ffi, intern};

use crate::timer::SharedCall;

pyo3::import_exception!(twisted.internet.error, AlreadyCalled);
pyo3::import_exception!(twisted.internet.error, AlreadyCancelled);

fn delayed_call_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    static TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    TYPE.import(py, "twisted.internet.base", "DelayedCall")
}

/// A time or timeout as an `f64`, only for a plain `float` or `int`: anything else (a
/// `Decimal` from a custom reactor, say) takes Twisted's own path.
fn plain_f64(value: &Bound<'_, PyAny>) -> Option<f64> {
    if let Ok(f) = value.cast_exact::<PyFloat>() {
        return Some(f.value());
    }
    if value.is_exact_instance_of::<PyInt>() {
        // `float(value)` as `int.__float__` computes it, without the `float` object it
        // makes; an `int` too large for a float is `None` here, and raises on the slow path.
        // SAFETY: `value` is a live object, and the GIL is held.
        let x = unsafe { ffi::PyLong_AsDouble(value.as_ptr()) };
        if x == -1.0 && PyErr::take(value.py()).is_some() {
            return None;
        }
        return Some(x);
    }
    None
}

/// A number of seconds as an `f64`, as `float(value)` gives it: a plain `float` or `int`
/// directly, anything else through its `__float__`.
pub fn seconds(value: &Bound<'_, PyAny>) -> PyResult<f64> {
    match plain_f64(value) {
        Some(x) => Ok(x),
        // Anything else, and an `int` too large for a float (its `OverflowError` again).
        None => value.extract::<f64>(),
    }
}

/// `time + by`, as Twisted's `DelayedCall` computes a time from a float and a delay: a plain
/// `float` or `int` added here, anything else by Python's `+`, so that what Twisted refuses
/// (a `Decimal`, a string) raises the same `TypeError`.
pub fn later(time: f64, by: &Bound<'_, PyAny>) -> PyResult<f64> {
    if let Some(by) = plain_f64(by) {
        return Ok(time + by);
    }
    seconds(&PyFloat::new(by.py(), time).add(by)?)
}

fn is_exact(call: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(call.get_type().is(delayed_call_type(call.py())?))
}

/// `call.reset(timeout)`. `now` is the time the caller just read from `reactor.seconds()`; it
/// is reused when the call's own clock is that same one.
pub fn reset(
    call: &Bound<'_, PyAny>,
    timeout: &Bound<'_, PyAny>,
    now: &Bound<'_, PyAny>,
    reactor: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = call.py();
    if let Ok(shared) = call.cast_exact::<SharedCall>() {
        // The timer's clock is the one `now` came from when it runs on the same reactor.
        if let (Some(timeout), Some(now)) = (plain_f64(timeout), plain_f64(now)) {
            if shared.get().runs_on(py, reactor) {
                return SharedCall::reset_to(shared, now + timeout);
            }
        }
        return call
            .call_method1(intern!(py, "reset"), (timeout,))
            .map(drop);
    }
    if !is_exact(call)? {
        return call
            .call_method1(intern!(py, "reset"), (timeout,))
            .map(drop);
    }
    if call.getattr(intern!(py, "cancelled"))?.is_truthy()? {
        return Err(AlreadyCancelled::new_err(()));
    }
    if call.getattr(intern!(py, "called"))?.is_truthy()? {
        return Err(AlreadyCalled::new_err(()));
    }
    let own_seconds = call.getattr(intern!(py, "seconds"))?;
    let seconds = reactor.getattr(intern!(py, "seconds"))?;
    // Same function object (the usual case: both are the reactor's `seconds`) or an equal one.
    let now = if own_seconds.is(&seconds) || own_seconds.eq(&seconds)? {
        now.clone()
    } else {
        own_seconds.call0()?
    };
    let time = call.getattr(intern!(py, "time"))?;
    if let (Some(now), Some(timeout), Some(time)) =
        (plain_f64(&now), plain_f64(timeout), plain_f64(&time))
    {
        let new_time = now + timeout;
        if new_time >= time {
            return call.setattr(intern!(py, "delayed_time"), new_time - time);
        }
    }
    call.call_method1(intern!(py, "reset"), (timeout,))
        .map(drop)
}
