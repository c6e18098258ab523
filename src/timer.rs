//! The shared expiry timer of a `txsession.Site(sharedTimer=True)`: every session's expiry in
//! one Rust heap, driven by a single pending call on the site's reactor.
//!
//! Each session's `_expireCall` is a [`SharedCall`], which keeps Twisted's `DelayedCall`
//! arithmetic: it is due at `time + delayed_time`, a `reset` to a later time only changes
//! `delayed_time`, and a `reset` to an earlier one moves `time`. The heap is re-filed lazily, as
//! Twisted's reactor does: a `touch` changes no heap entry; an entry found stale when it reaches
//! the top is filed again at the call's current time. The reactor call is always at or before
//! the earliest time due, so a session expires at the first reactor time at which Twisted's own
//! `DelayedCall` would, and when it fires every session then due expires, in the order they
//! became due (filing order among equals). A failing `expire` is handed to the site's logger
//! and the others still expire.

use pyo3::exceptions::{PyAttributeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyType};
use pyo3::{intern, PyTraverseError, PyVisit};
use std::collections::BinaryHeap;

use crate::delayed_call::{AlreadyCalled, AlreadyCancelled};
use crate::gc::Traverse;
use crate::gil::GilCell;
use crate::order::Earliest;
use crate::traverse_fields;

/// A heap entry: the call, the time it was filed at, and the filing's number, which tells a
/// call's current entry from stale ones.
type Filed = Earliest<Py<SharedCall>>;

#[derive(Default)]
struct TimerState {
    reactor: Option<Py<PyAny>>,
    /// The timer's own `_fire`, bound once: what the reactor call runs.
    fire: Option<Py<PyAny>>,
    /// Called with each exception an `expire` raised.
    log_failure: Option<Py<PyAny>>,
    /// Called with each session due in place of its `expire`, when given.
    expire_with: Option<Py<PyAny>>,
    heap: BinaryHeap<Filed>,
    seq: u64,
    /// Calls neither called nor cancelled.
    live: usize,
    /// The reactor call, and the time it was asked for.
    pending: Option<(Py<PyAny>, f64)>,
}

#[pyclass(module = "txsession._txsession", name = "SharedTimer", frozen)]
pub struct SharedTimer {
    state: GilCell<TimerState>,
}

#[derive(Default)]
struct CallState {
    /// The session whose `expire` the call runs; dropped once called or cancelled, as
    /// Twisted's `DelayedCall` drops its function.
    session: Option<Py<PyAny>>,
    time: f64,
    delayed_time: f64,
    called: bool,
    cancelled: bool,
    /// The `seq` of the call's current heap entry.
    filed: u64,
}

/// A session's pending expiry on a [`SharedTimer`]; provides Twisted's `IDelayedCall`.
#[pyclass(module = "txsession", name = "SharedDelayedCall", frozen)]
pub struct SharedCall {
    timer: Py<SharedTimer>,
    state: GilCell<CallState>,
}

fn as_seconds(value: &Bound<'_, PyAny>) -> PyResult<f64> {
    value.extract::<f64>()
}

impl SharedTimer {
    fn runs_on(&self, py: Python<'_>, reactor: &Bound<'_, PyAny>) -> bool {
        self.state
            .borrow_mut(py)
            .reactor
            .as_ref()
            .is_some_and(|r| r.is(reactor))
    }

    fn reactor<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.state
            .borrow_mut(py)
            .reactor
            .as_ref()
            .map(|r| r.clone_ref(py).into_bound(py))
            .ok_or_else(|| PyValueError::new_err("the shared timer was cleared"))
    }

    fn now(&self, py: Python<'_>) -> PyResult<f64> {
        as_seconds(&self.reactor(py)?.call_method0(intern!(py, "seconds"))?)
    }

    /// Files `call` at `due` as its current entry.
    fn file(&self, py: Python<'_>, call: &Bound<'_, SharedCall>, due: f64) {
        let mut state = self.state.borrow_mut(py);
        state.seq += 1;
        let seq = state.seq;
        call.get().state.borrow_mut(py).filed = seq;
        state.heap.push(Filed {
            at: due,
            seq,
            item: call.clone().unbind(),
        });
    }

    /// Makes the reactor call cover `due`: a new one when there is none or it is later.
    fn cover(&self, py: Python<'_>, due: f64) -> PyResult<()> {
        let later = {
            let state = self.state.borrow_mut(py);
            match &state.pending {
                Some((_, at)) if *at <= due => return Ok(()),
                Some((call, _)) => Some(call.clone_ref(py)),
                None => None,
            }
        };
        if let Some(call) = later {
            self.state.borrow_mut(py).pending = None;
            cancel_quietly(call.bind(py))?;
        }
        self.schedule(py, due)
    }

    /// Asks the reactor for a call at `due` at the latest: the delay is `due - now`, made
    /// smaller until `now + delay`, the reactor's own sum, is not after `due`.
    fn schedule(&self, py: Python<'_>, due: f64) -> PyResult<()> {
        let reactor = self.reactor(py)?;
        let fire = self
            .state
            .borrow_mut(py)
            .fire
            .as_ref()
            .map(|f| f.clone_ref(py));
        let Some(fire) = fire else { return Ok(()) };
        let now = as_seconds(&reactor.call_method0(intern!(py, "seconds"))?)?;
        let mut delay = (due - now).max(0.0);
        while delay > 0.0 && now + delay > due {
            delay = next_down(delay);
        }
        let call = reactor.call_method1(intern!(py, "callLater"), (delay, fire))?;
        let old = self
            .state
            .borrow_mut(py)
            .pending
            .replace((call.unbind(), now + delay));
        // An `expire` run by `_fire` may have filed a session, and so asked for a call, before
        // `_fire` asks for the next one: one call at a time.
        match old {
            Some((old, _)) => cancel_quietly(old.bind(py)),
            None => Ok(()),
        }
    }

    /// The live call due first and its time, after re-filing the stale entries above it.
    fn earliest(&self, py: Python<'_>) -> Option<(Py<SharedCall>, f64)> {
        let mut state = self.state.borrow_mut(py);
        loop {
            let top = state.heap.peek()?;
            let call = top.item.get();
            let (current, live, due) = {
                let c = call.state.borrow_mut(py);
                (
                    c.filed == top.seq,
                    !c.called && !c.cancelled,
                    c.time + c.delayed_time,
                )
            };
            if !(current && live) {
                drop(state.heap.pop());
                continue;
            }
            if due > top.at {
                // Touched since it was filed: file it again at its current time, with the
                // delay made part of its time, as Twisted's reactor does (`activate_delay`).
                // A later `reset` to a time before this one then moves it forward again.
                let Filed { item: call, .. } = state.heap.pop()?;
                state.seq += 1;
                let seq = state.seq;
                {
                    let mut c = call.get().state.borrow_mut(py);
                    c.filed = seq;
                    c.time += c.delayed_time;
                    c.delayed_time = 0.0;
                }
                state.heap.push(Filed {
                    at: due,
                    seq,
                    item: call,
                });
                continue;
            }
            return Some((top.item.clone_ref(py), due));
        }
    }

    /// One call fewer is live: with none left, the reactor call and the heap go.
    fn retire(&self, py: Python<'_>) -> PyResult<()> {
        let (pending, heap) = {
            let mut state = self.state.borrow_mut(py);
            state.live = state.live.saturating_sub(1);
            if state.live > 0 {
                // Cancelled entries stay in the heap until they reach the top; past twice the
                // live calls, they are swept.
                if state.heap.len() > 2 * state.live + 64 {
                    let heap = std::mem::take(&mut state.heap);
                    drop(state);
                    let kept: Vec<Filed> = heap
                        .into_iter()
                        .filter(|f| {
                            let c = f.item.get().state.borrow_mut(py);
                            c.filed == f.seq && !c.called && !c.cancelled
                        })
                        .collect();
                    self.state.borrow_mut(py).heap = kept.into();
                }
                return Ok(());
            }
            (state.pending.take(), std::mem::take(&mut state.heap))
        };
        drop(heap);
        if let Some((call, _)) = pending {
            cancel_quietly(call.bind(py))?;
        }
        Ok(())
    }
}

/// `call.cancel()` unless the call already ran or was cancelled.
fn cancel_quietly(call: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = call.py();
    if call.call_method0(intern!(py, "active"))?.is_truthy()? {
        call.call_method0(intern!(py, "cancel"))?;
    }
    Ok(())
}

/// The largest `f64` below a positive `x`.
impl SharedTimer {
    /// One of the state's callables, cloned so that no borrow is held into the call.
    fn callable(
        &self,
        py: Python<'_>,
        field: impl Fn(&TimerState) -> &Option<Py<PyAny>>,
    ) -> Option<Py<PyAny>> {
        field(&self.state.borrow_mut(py))
            .as_ref()
            .map(|c| c.clone_ref(py))
    }
}

fn next_down(x: f64) -> f64 {
    f64::from_bits(x.to_bits() - 1)
}

#[pymethods]
impl SharedTimer {
    /// A timer on `reactor`; `log_failure(exception)` is called for each failing `expire`.
    /// With `expire_with`, a session due is ended by `expire_with(session)` instead.
    #[new]
    #[pyo3(signature = (reactor, log_failure, expire_with=None))]
    fn new(
        py: Python<'_>,
        reactor: Py<PyAny>,
        log_failure: Py<PyAny>,
        expire_with: Option<Py<PyAny>>,
    ) -> PyResult<Py<Self>> {
        let timer = Py::new(
            py,
            SharedTimer {
                state: GilCell::new(TimerState {
                    reactor: Some(reactor),
                    log_failure: Some(log_failure),
                    expire_with,
                    ..TimerState::default()
                }),
            },
        )?;
        let fire = timer.bind(py).getattr(intern!(py, "_fire"))?.unbind();
        timer.get().state.borrow_mut(py).fire = Some(fire);
        Ok(timer)
    }

    /// Files `session`'s expiry `timeout` seconds from now and returns its call.
    pub fn add(
        slf: &Bound<'_, Self>,
        session: &Bound<'_, PyAny>,
        timeout: &Bound<'_, PyAny>,
    ) -> PyResult<Py<SharedCall>> {
        let py = slf.py();
        let this = slf.get();
        let time = this.now(py)? + as_seconds(timeout)?;
        let call = Bound::new(
            py,
            SharedCall {
                timer: slf.clone().unbind(),
                state: GilCell::new(CallState {
                    session: Some(session.clone().unbind()),
                    time,
                    ..CallState::default()
                }),
            },
        )?;
        this.file(py, &call, time);
        this.state.borrow_mut(py).live += 1;
        this.cover(py, time)?;
        Ok(call.unbind())
    }

    /// The reactor of this timer.
    #[getter]
    fn reactor_(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.reactor(py).map(Bound::unbind)
    }

    /// How many sessions are pending.
    fn __len__(&self, py: Python<'_>) -> usize {
        self.state.borrow_mut(py).live
    }

    /// Runs by the reactor call: expires every session due.
    fn _fire(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let old = this.state.borrow_mut(py).pending.take();
        drop(old);
        let now = this.now(py)?;
        while let Some((call, due)) = this.earliest(py) {
            if due > now {
                return this.schedule(py, due);
            }
            let session = {
                let mut c = call.get().state.borrow_mut(py);
                c.called = true;
                c.session.take()
            };
            this.retire(py)?;
            let Some(session) = session else { continue };
            let expired = match this.callable(py, |s| &s.expire_with) {
                Some(expire_with) => expire_with.call1(py, (session,)).map(drop),
                None => session
                    .bind(py)
                    .call_method0(intern!(py, "expire"))
                    .map(drop),
            };
            if let Err(err) = expired {
                match this.callable(py, |s| &s.log_failure) {
                    Some(log) => drop(log.call1(py, (err.into_value(py),))?),
                    None => return Err(err),
                }
            }
        }
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Some(s) = self.state.try_borrow_mut() else {
            return Ok(());
        };
        let pending = s.pending.as_ref().map(|(call, _)| call);
        traverse_fields!(visit; s.reactor, s.fire, s.log_failure, s.expire_with, pending)?;
        s.heap.iter().try_for_each(|f| visit.call(&f.item))
    }

    fn __clear__(&self) {
        self.state.clear_with(std::mem::take);
    }
}

impl SharedCall {
    fn check_pending(&self, py: Python<'_>) -> PyResult<()> {
        let c = self.state.borrow_mut(py);
        if c.cancelled {
            return Err(AlreadyCancelled::new_err(()));
        }
        if c.called {
            return Err(AlreadyCalled::new_err(()));
        }
        Ok(())
    }

    /// `reset(timeout)` with `now` already read from the timer's reactor: Twisted's
    /// `DelayedCall.reset` arithmetic.
    pub fn reset_at(slf: &Bound<'_, Self>, now: f64, timeout: f64) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.check_pending(py)?;
        let new_time = now + timeout;
        let sooner = {
            let mut c = this.state.borrow_mut(py);
            if new_time < c.time {
                c.delayed_time = 0.0;
                c.time = new_time;
                true
            } else {
                c.delayed_time = new_time - c.time;
                false
            }
        };
        if sooner {
            let timer = this.timer.get();
            timer.file(py, slf, new_time);
            timer.cover(py, new_time)?;
        }
        Ok(())
    }

    pub fn is_active(&self, py: Python<'_>) -> bool {
        let c = self.state.borrow_mut(py);
        !c.called && !c.cancelled
    }

    /// Whether `reactor` is the one this call's timer runs on.
    pub fn runs_on(&self, py: Python<'_>, reactor: &Bound<'_, PyAny>) -> bool {
        self.timer.get().runs_on(py, reactor)
    }
}

#[pymethods]
#[allow(non_snake_case)]
impl SharedCall {
    /// The time the call is due: `time + delayed_time`, as `DelayedCall.getTime`.
    fn getTime(&self, py: Python<'_>) -> f64 {
        let c = self.state.borrow_mut(py);
        c.time + c.delayed_time
    }

    fn active(&self, py: Python<'_>) -> bool {
        self.is_active(py)
    }

    pub fn cancel(&self, py: Python<'_>) -> PyResult<()> {
        self.check_pending(py)?;
        let session = {
            let mut c = self.state.borrow_mut(py);
            c.cancelled = true;
            c.session.take()
        };
        drop(session);
        self.timer.get().retire(py)
    }

    /// `reset(timeout)` from `Session.touch`, which just read `now` from `reactor`: the timer
    /// reuses it when it runs on that reactor.
    #[pyo3(name = "_resetFrom")]
    fn reset_from(
        slf: &Bound<'_, Self>,
        reactor: &Bound<'_, PyAny>,
        now: &Bound<'_, PyAny>,
        timeout: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        crate::delayed_call::reset(slf.as_any(), timeout, now, reactor)
    }

    fn reset(slf: &Bound<'_, Self>, secondsFromNow: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        slf.get().check_pending(py)?;
        let now = slf.get().timer.get().now(py)?;
        SharedCall::reset_at(slf, now, as_seconds(secondsFromNow)?)
    }

    fn delay(slf: &Bound<'_, Self>, secondsLater: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.check_pending(py)?;
        let later = as_seconds(secondsLater)?;
        let sooner = {
            let mut c = this.state.borrow_mut(py);
            c.delayed_time += later;
            if c.delayed_time < 0.0 {
                c.time += c.delayed_time;
                c.delayed_time = 0.0;
                Some(c.time)
            } else {
                None
            }
        };
        if let Some(time) = sooner {
            let timer = this.timer.get();
            timer.file(py, slf, time);
            timer.cover(py, time)?;
        }
        Ok(())
    }

    #[getter]
    fn time(&self, py: Python<'_>) -> f64 {
        self.state.borrow_mut(py).time
    }

    #[getter]
    fn delayed_time(&self, py: Python<'_>) -> f64 {
        self.state.borrow_mut(py).delayed_time
    }

    #[getter]
    fn called(&self, py: Python<'_>) -> bool {
        self.state.borrow_mut(py).called
    }

    #[getter]
    fn cancelled(&self, py: Python<'_>) -> bool {
        self.state.borrow_mut(py).cancelled
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let c = self.state.borrow_mut(py);
        format!(
            "<SharedDelayedCall [{}s] called={} cancelled={}>",
            PyFloat::new(py, c.time + c.delayed_time),
            u8::from(c.called),
            u8::from(c.cancelled)
        )
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.timer)?;
        match self.state.try_borrow_mut() {
            Some(c) => c.session.traverse(&visit),
            None => Ok(()),
        }
    }

    fn __clear__(&self) {
        self.state.clear_with(|c| c.session.take());
    }
}

/// `txsession.Site`, whose instances may have a shared timer in `_sharedTimer`.
static SITE: GilCell<Option<Py<PyType>>> = GilCell::new(None);

/// Tells sessions which site class may carry a shared timer; called once by `txsession.web`.
#[pyfunction]
pub fn bind_site(site: &Bound<'_, PyType>) {
    let old = SITE.borrow_mut(site.py()).replace(site.clone().unbind());
    drop(old);
}

/// The shared timer that `session` files its expiry with: its site's, when the site has one
/// running on the session's own reactor.
pub fn shared_timer_for<'py>(
    session: &Bound<'py, PyAny>,
    reactor: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, SharedTimer>>> {
    let py = session.py();
    let Some(site_type) = SITE.borrow_mut(py).as_ref().map(|t| t.clone_ref(py)) else {
        return Ok(None);
    };
    let site = match session.getattr(intern!(py, "site")) {
        Ok(site) => site,
        // Twisted's startCheckingExpiration does not read `site`: nor does it fail for it.
        Err(err) if err.is_instance_of::<PyAttributeError>(py) => return Ok(None),
        Err(err) => return Err(err),
    };
    if !site.get_type().is_subclass(site_type.bind(py))? {
        return Ok(None);
    }
    let timer = site.getattr(intern!(py, "_sharedTimer"))?;
    match timer.cast_into::<SharedTimer>() {
        Ok(timer) if timer.get().runs_on(py, reactor) => Ok(Some(timer)),
        _ => Ok(None),
    }
}
