//! The bookkeeping behind a session's expiry timer.
//!
//! Twisted's `touch` calls `DelayedCall.reset` on every request. When the new expiry is later
//! than the call's `time`, `reset` only records `delayed_time = newTime - time`, and the call
//! fires at `time + delayed_time`. A session here records the same deadline itself instead,
//! without calling into Python. When its call runs, it works out the same instant,
//! `time + (deadline - time)`, and if that is still ahead it schedules the rest.
//! An earlier expiry still goes through `reset`, as it would in Twisted.
//! Only calls the session scheduled itself are handled this way; a `_expireCall` that an
//! app put in place is always `reset`, as Twisted does.

use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyInt};

/// What a session knows about the delayed call it scheduled itself.
#[derive(Default)]
pub struct Timer {
    /// The call this session scheduled; `_expireCall` is this one unless the app replaced it.
    pub call: Option<Py<PyAny>>,
    /// Counts the calls scheduled by `startCheckingExpiration`, so that an older one that
    /// still runs is told apart from the current one.
    pub generation: u64,
    /// The call's `time`, when the reactor gave a plain number.
    time: Option<f64>,
    /// A later expiry that `touch` recorded and the reactor does not know of yet.
    deadline: Option<f64>,
    /// The call ran and went on to expire the session: a later `touch` must raise
    /// `AlreadyCalled`, as `DelayedCall.reset` would.
    pub fired: bool,
}

pub enum Touch {
    /// Recorded here; nothing to tell the reactor.
    Recorded,
    /// Call `_expireCall.reset(sessionTimeout)`, as Twisted does.
    Reset,
    AlreadyCalled,
}

pub enum Due {
    /// Not this session's current call: behave as Twisted's stale call, and expire.
    Stale,
    /// Expire now.
    Now,
    /// The expiry moved to this instant; expire only if it has come.
    At(f64),
}

/// A time or timeout as an `f64`, only for a plain `float` or `int`: anything else (a
/// `Decimal` from a custom reactor, say) takes Twisted's own path, so that its arithmetic and
/// its errors are Twisted's.
pub fn plain_f64(value: &Bound<'_, PyAny>) -> Option<f64> {
    if let Ok(f) = value.cast_exact::<PyFloat>() {
        return Some(f.value());
    }
    if value.is_exact_instance_of::<PyInt>() {
        return value.extract::<f64>().ok();
    }
    None
}

impl Timer {
    pub fn is_own(&self, call: &Bound<'_, PyAny>) -> bool {
        self.call
            .as_ref()
            .is_some_and(|own| own.as_ptr() == call.as_ptr())
    }

    /// A fresh call was scheduled by `startCheckingExpiration`; returns the old one to drop.
    pub fn start(&mut self, call: Py<PyAny>, time: Option<f64>) -> Option<Py<PyAny>> {
        self.time = time;
        self.deadline = None;
        self.fired = false;
        self.call.replace(call)
    }

    /// Decides what `touch` does for `call`, the current `_expireCall`.
    pub fn touch(
        &mut self,
        call: &Bound<'_, PyAny>,
        now: Option<f64>,
        timeout: Option<f64>,
    ) -> Touch {
        if !self.is_own(call) {
            return Touch::Reset;
        }
        if self.fired {
            return Touch::AlreadyCalled;
        }
        let (Some(time), Some(now), Some(timeout)) = (self.time, now, timeout) else {
            return Touch::Reset;
        };
        let new_time = now + timeout;
        if new_time < time {
            // Twisted moves the call sooner: `time = newTime`, no delay.
            self.time = Some(new_time);
            self.deadline = None;
            Touch::Reset
        } else {
            self.deadline = Some(new_time);
            Touch::Recorded
        }
    }

    /// The call of `generation` ran while `current` is `_expireCall`.
    pub fn due(&mut self, generation: u64, current: Option<&Bound<'_, PyAny>>) -> Due {
        let own = current.is_some_and(|c| self.is_own(c));
        if generation != self.generation || !own {
            return Due::Stale;
        }
        match (self.time, self.deadline) {
            // DelayedCall.getTime(): time + delayed_time, computed the same way.
            (Some(time), Some(deadline)) => Due::At(time + (deadline - time)),
            _ => {
                self.fired = true;
                Due::Now
            }
        }
    }

    /// The expiry of `generation` was moved to `call`, which the reactor runs at `time`.
    /// Returns the old call to drop, or gives `call` back when `generation` is no longer current.
    pub fn moved(
        &mut self,
        generation: u64,
        call: Py<PyAny>,
        time: f64,
    ) -> Result<Option<Py<PyAny>>, Py<PyAny>> {
        if generation != self.generation {
            return Err(call);
        }
        self.time = Some(time);
        self.deadline = None;
        Ok(self.call.replace(call))
    }
}
