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

use pyo3::exceptions::{PyAttributeError, PyOverflowError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyType};
use pyo3::{ffi, intern, PyTraverseError, PyVisit};
use std::collections::BinaryHeap;
use std::sync::Arc;

use crate::delayed_call::{later, seconds, AlreadyCalled, AlreadyCancelled};
use crate::gc::Traverse;
use crate::gil::GilCell;
use crate::order::Earliest;
use crate::traverse_fields;

/// A heap entry: the time a call was filed at, the filing's number (the order among equal
/// times), and the call's slot with the slot's filing count then, which tells the slot's
/// current entry from stale ones (its own, and a former call's in the same slot).
type Filed = Earliest<(u32, u32)>;

/// One call's state, in the timer: a `SharedDelayedCall` object only names its slot, so that
/// it holds no Python reference and the garbage collector need not track it. The session is
/// the timer's reference, visited by the timer's `__traverse__`.
struct Slot {
    /// The session whose `expire` the call runs; dropped once called or cancelled, as
    /// Twisted's `DelayedCall` drops its function.
    session: Option<Py<PyAny>>,
    time: f64,
    delayed_time: f64,
    /// How many times the slot was filed, wrapping: its current heap entry has this count.
    filed: u32,
    called: bool,
    cancelled: bool,
    /// A `SharedDelayedCall` names this slot: it is reused only once that is gone and the call
    /// was called or cancelled.
    held: bool,
}

// A million sessions hold a million slots: keep one at 32 bytes.
const _: () = assert!(std::mem::size_of::<Slot>() == 32);

impl Slot {
    fn live(&self) -> bool {
        !self.called && !self.cancelled
    }

    fn due(&self) -> f64 {
        self.time + self.delayed_time
    }
}

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
    slots: Vec<Slot>,
    /// Slots free for a new call.
    free: Vec<u32>,
    seq: u64,
    /// Calls neither called nor cancelled.
    live: usize,
    /// The reactor call, and the time it was asked for.
    pending: Option<(Py<PyAny>, f64)>,
}

impl TimerState {
    /// Frees slot `ix` once no call object names it and it will not run.
    fn release(&mut self, ix: u32) {
        let slot = &self.slots[ix as usize];
        if !slot.held && !slot.live() {
            self.free.push(ix);
        }
    }

    /// Every Python reference, moved out so that it is dropped after the borrow ends.
    fn take_references(&mut self) -> Vec<Py<PyAny>> {
        let mut taken: Vec<Py<PyAny>> = [
            self.reactor.take(),
            self.fire.take(),
            self.log_failure.take(),
            self.expire_with.take(),
            self.pending.take().map(|(call, _)| call),
        ]
        .into_iter()
        .flatten()
        .collect();
        taken.extend(self.slots.iter_mut().filter_map(|s| s.session.take()));
        taken
    }
}

/// The timer's state, shared by the timer and its calls. Only the `SharedTimer` object's
/// `__traverse__` visits the Python references in it, and when that object goes they go with
/// it: a call that outlives its timer still answers `active()` and `getTime()`.
struct Core(GilCell<TimerState>);

#[pyclass(module = "txsession._txsession", name = "SharedTimer", frozen)]
pub struct SharedTimer {
    core: Arc<Core>,
}

/// A session's pending expiry on a [`SharedTimer`]; provides Twisted's `IDelayedCall`.
#[pyclass(module = "txsession", name = "SharedDelayedCall", frozen)]
pub struct SharedCall {
    core: Arc<Core>,
    slot: u32,
}

impl Core {
    fn state<'a>(&'a self, py: Python<'_>) -> std::cell::RefMut<'a, TimerState> {
        self.0.borrow_mut(py)
    }

    fn runs_on(&self, py: Python<'_>, reactor: &Bound<'_, PyAny>) -> bool {
        self.state(py)
            .reactor
            .as_ref()
            .is_some_and(|r| r.is(reactor))
    }

    fn reactor<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.state(py)
            .reactor
            .as_ref()
            .map(|r| r.clone_ref(py).into_bound(py))
            .ok_or_else(|| PyValueError::new_err("the shared timer was cleared"))
    }

    fn now(&self, py: Python<'_>) -> PyResult<f64> {
        seconds(&self.reactor(py)?.call_method0(intern!(py, "seconds"))?)
    }

    /// Files slot `ix` at `due` as its current entry.
    fn file(&self, py: Python<'_>, ix: u32, due: f64) {
        let mut state = self.state(py);
        state.seq += 1;
        let seq = state.seq;
        let slot = &mut state.slots[ix as usize];
        slot.filed = slot.filed.wrapping_add(1);
        let filed = slot.filed;
        state.heap.push(Filed {
            at: due,
            seq,
            item: (ix, filed),
        });
    }

    /// Makes the reactor call cover `due`: a new one when there is none or it is later.
    fn cover(&self, py: Python<'_>, due: f64) -> PyResult<()> {
        let later = {
            let mut state = self.state(py);
            match &state.pending {
                Some((_, at)) if *at <= due => return Ok(()),
                Some(_) => state.pending.take().map(|(call, _)| call),
                None => None,
            }
        };
        if let Some(call) = later {
            cancel_quietly(call.bind(py))?;
        }
        self.schedule(py, due)
    }

    /// Asks the reactor for a call at `due` at the latest: the delay is `due - now`, made
    /// smaller until `now + delay`, the reactor's own sum, is not after `due`.
    fn schedule(&self, py: Python<'_>, due: f64) -> PyResult<()> {
        let reactor = self.reactor(py)?;
        let fire = self.state(py).fire.as_ref().map(|f| f.clone_ref(py));
        let Some(fire) = fire else { return Ok(()) };
        let now = seconds(&reactor.call_method0(intern!(py, "seconds"))?)?;
        let mut delay = (due - now).max(0.0);
        while delay > 0.0 && now + delay > due {
            delay = next_down(delay);
        }
        let call = reactor.call_method1(intern!(py, "callLater"), (delay, fire))?;
        let old = self.state(py).pending.replace((call.unbind(), now + delay));
        // An `expire` run by `_fire` may have filed a session, and so asked for a call, before
        // `_fire` asks for the next one: one call at a time.
        match old {
            Some((old, _)) => cancel_quietly(old.bind(py)),
            None => Ok(()),
        }
    }

    /// The live call due first (its slot) and its time, after re-filing the stale entries
    /// above it.
    fn earliest(&self, py: Python<'_>) -> Option<(u32, f64)> {
        let mut guard = self.state(py);
        let state = &mut *guard;
        loop {
            let top = state.heap.peek()?;
            let ((ix, filed), at) = (top.item, top.at);
            let slot = &mut state.slots[ix as usize];
            if slot.filed != filed || !slot.live() {
                state.heap.pop();
                continue;
            }
            let due = slot.due();
            if due > at {
                // Touched since it was filed: file it again at its current time, with the
                // delay made part of its time, as Twisted's reactor does (`activate_delay`).
                // A later `reset` to a time before this one then moves it forward again.
                state.heap.pop();
                state.seq += 1;
                slot.filed = slot.filed.wrapping_add(1);
                slot.time += slot.delayed_time;
                slot.delayed_time = 0.0;
                state.heap.push(Filed {
                    at: due,
                    seq: state.seq,
                    item: (ix, slot.filed),
                });
                continue;
            }
            return Some((ix, due));
        }
    }

    /// One call fewer is live: with none left, the reactor call and the heap go.
    fn retire(&self, py: Python<'_>) -> PyResult<()> {
        let pending = {
            let mut guard = self.state(py);
            let state = &mut *guard;
            state.live = state.live.saturating_sub(1);
            if state.live > 0 {
                // Cancelled entries stay in the heap until they reach the top; past twice the
                // live calls, they are swept.
                if state.heap.len() > 2 * state.live + 64 {
                    let slots = &state.slots;
                    let kept: Vec<Filed> = std::mem::take(&mut state.heap)
                        .into_iter()
                        .filter(|f| {
                            let slot = &slots[f.item.0 as usize];
                            slot.filed == f.item.1 && slot.live()
                        })
                        .collect();
                    state.heap = kept.into();
                }
                return Ok(());
            }
            state.heap = BinaryHeap::new();
            state.pending.take()
        };
        if let Some((call, _)) = pending {
            cancel_quietly(call.bind(py))?;
        }
        Ok(())
    }

    /// Drops every Python reference the timer holds, after the borrow ends.
    fn clear(&self) {
        let taken = self.0.try_borrow_mut().map(|mut s| s.take_references());
        drop(taken);
    }

    /// One of the state's callables, cloned so that no borrow is held into the call.
    fn callable(
        &self,
        py: Python<'_>,
        field: impl Fn(&TimerState) -> &Option<Py<PyAny>>,
    ) -> Option<Py<PyAny>> {
        field(&self.state(py)).as_ref().map(|c| c.clone_ref(py))
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
fn next_down(x: f64) -> f64 {
    f64::from_bits(x.to_bits() - 1)
}

impl SharedTimer {
    fn runs_on(&self, py: Python<'_>, reactor: &Bound<'_, PyAny>) -> bool {
        self.core.runs_on(py, reactor)
    }
}

impl Drop for SharedTimer {
    /// Its calls may outlive it, and with them the state: the references go now.
    fn drop(&mut self) {
        self.core.clear();
    }
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
                core: Arc::new(Core(GilCell::new(TimerState {
                    reactor: Some(reactor),
                    log_failure: Some(log_failure),
                    expire_with,
                    ..TimerState::default()
                }))),
            },
        )?;
        let fire = timer.bind(py).getattr(intern!(py, "_fire"))?.unbind();
        timer.get().core.state(py).fire = Some(fire);
        Ok(timer)
    }

    /// Files `session`'s expiry `timeout` seconds from now and returns its call.
    pub fn add(
        slf: &Bound<'_, Self>,
        session: &Bound<'_, PyAny>,
        timeout: &Bound<'_, PyAny>,
    ) -> PyResult<Py<SharedCall>> {
        let py = slf.py();
        let core = &slf.get().core;
        let time = later(core.now(py)?, timeout)?;
        let slot = Slot {
            session: Some(session.clone().unbind()),
            time,
            delayed_time: 0.0,
            filed: 0,
            called: false,
            cancelled: false,
            held: true,
        };
        let ix = {
            let mut state = core.state(py);
            let ix = match state.free.pop() {
                Some(ix) => {
                    // A freed slot holds no session. Its filing count goes on, so that its
                    // former call's stale entries stay stale.
                    let old = std::mem::replace(&mut state.slots[ix as usize], slot);
                    state.slots[ix as usize].filed = old.filed;
                    ix
                }
                None => {
                    let ix = u32::try_from(state.slots.len())
                        .map_err(|_| PyOverflowError::new_err("too many pending sessions"))?;
                    state.slots.push(slot);
                    ix
                }
            };
            state.live += 1;
            ix
        };
        let call = SharedCall {
            core: Arc::clone(core),
            slot: ix,
        };
        core.file(py, ix, time);
        let call = Bound::new(py, call)?;
        // SAFETY: a live GC object of ours, with the GIL held. It holds no Python reference
        // (its session is the timer's), so it can be in no cycle: the collector may skip it.
        unsafe { ffi::PyObject_GC_UnTrack(call.as_ptr().cast()) };
        core.cover(py, time)?;
        Ok(call.unbind())
    }

    /// The reactor of this timer.
    #[getter]
    fn reactor_(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.core.reactor(py).map(Bound::unbind)
    }

    /// How many sessions are pending.
    fn __len__(&self, py: Python<'_>) -> usize {
        self.core.state(py).live
    }

    /// Runs by the reactor call: expires every session due.
    fn _fire(&self, py: Python<'_>) -> PyResult<()> {
        let core = &self.core;
        let old = core.state(py).pending.take();
        drop(old);
        let now = core.now(py)?;
        while let Some((ix, due)) = core.earliest(py) {
            if due > now {
                return core.schedule(py, due);
            }
            let session = {
                let mut state = core.state(py);
                let slot = &mut state.slots[ix as usize];
                slot.called = true;
                let session = slot.session.take();
                state.release(ix);
                session
            };
            core.retire(py)?;
            let Some(session) = session else { continue };
            let expired = match core.callable(py, |s| &s.expire_with) {
                Some(expire_with) => expire_with.call1(py, (session,)).map(drop),
                None => session
                    .bind(py)
                    .call_method0(intern!(py, "expire"))
                    .map(drop),
            };
            if let Err(err) = expired {
                match core.callable(py, |s| &s.log_failure) {
                    Some(log) => drop(log.call1(py, (err.into_value(py),))?),
                    None => return Err(err),
                }
            }
        }
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Some(s) = self.core.0.try_borrow_mut() else {
            return Ok(());
        };
        let pending = s.pending.as_ref().map(|(call, _)| call);
        traverse_fields!(visit; s.reactor, s.fire, s.log_failure, s.expire_with, pending)?;
        s.slots
            .iter()
            .try_for_each(|slot| slot.session.traverse(&visit))
    }

    fn __clear__(&self) {
        self.core.clear();
    }
}

impl SharedCall {
    /// Reads the call's slot.
    fn read<R>(&self, py: Python<'_>, f: impl FnOnce(&Slot) -> R) -> R {
        f(&self.core.state(py).slots[self.slot as usize])
    }

    fn check_pending(&self, py: Python<'_>) -> PyResult<()> {
        self.read(py, |c| {
            if c.cancelled {
                Err(AlreadyCancelled::new_err(()))
            } else if c.called {
                Err(AlreadyCalled::new_err(()))
            } else {
                Ok(())
            }
        })
    }

    /// `reset` to `new_time`, the reactor's time now plus the timeout: Twisted's
    /// `DelayedCall.reset` arithmetic.
    pub fn reset_to(slf: &Bound<'_, Self>, new_time: f64) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let sooner = {
            let mut state = this.core.state(py);
            let c = &mut state.slots[this.slot as usize];
            if c.cancelled {
                return Err(AlreadyCancelled::new_err(()));
            }
            if c.called {
                return Err(AlreadyCalled::new_err(()));
            }
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
            this.core.file(py, this.slot, new_time);
            this.core.cover(py, new_time)?;
        }
        Ok(())
    }

    pub fn is_active(&self, py: Python<'_>) -> bool {
        self.read(py, Slot::live)
    }

    /// Whether `reactor` is the one this call's timer runs on.
    pub fn runs_on(&self, py: Python<'_>, reactor: &Bound<'_, PyAny>) -> bool {
        self.core.runs_on(py, reactor)
    }
}

impl Drop for SharedCall {
    /// Gives the slot back once the call will not run. Nothing drops a call while the state is
    /// borrowed (no Python object is dropped then); if something did, the slot stays unused.
    fn drop(&mut self) {
        if let Some(mut state) = self.core.0.try_borrow_mut() {
            state.slots[self.slot as usize].held = false;
            state.release(self.slot);
        }
    }
}

#[pymethods]
#[allow(non_snake_case)]
impl SharedCall {
    /// The time the call is due: `time + delayed_time`, as `DelayedCall.getTime`.
    fn getTime(&self, py: Python<'_>) -> f64 {
        self.read(py, Slot::due)
    }

    fn active(&self, py: Python<'_>) -> bool {
        self.is_active(py)
    }

    pub fn cancel(&self, py: Python<'_>) -> PyResult<()> {
        self.check_pending(py)?;
        let session = {
            let mut state = self.core.state(py);
            let c = &mut state.slots[self.slot as usize];
            c.cancelled = true;
            c.session.take()
        };
        drop(session);
        self.core.retire(py)
    }

    /// `if call.active(): call.cancel()` in one call, from `Session.expire`: whether the call
    /// was active (and is cancelled now).
    #[pyo3(name = "_cancelIfActive")]
    fn cancel_if_active(&self, py: Python<'_>) -> PyResult<bool> {
        if !self.is_active(py) {
            return Ok(false);
        }
        self.cancel(py)?;
        Ok(true)
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
        let now = slf.get().core.now(py)?;
        SharedCall::reset_to(slf, later(now, secondsFromNow)?)
    }

    fn delay(slf: &Bound<'_, Self>, secondsLater: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.check_pending(py)?;
        // `delayed_time += secondsLater`, with no borrow held while Python's `+` may run.
        let delayed = later(this.read(py, |c| c.delayed_time), secondsLater)?;
        let sooner = {
            let mut state = this.core.state(py);
            let c = &mut state.slots[this.slot as usize];
            c.delayed_time = delayed;
            if c.delayed_time < 0.0 {
                c.time += c.delayed_time;
                c.delayed_time = 0.0;
                Some(c.time)
            } else {
                None
            }
        };
        if let Some(time) = sooner {
            this.core.file(py, this.slot, time);
            this.core.cover(py, time)?;
        }
        Ok(())
    }

    #[getter]
    fn time(&self, py: Python<'_>) -> f64 {
        self.read(py, |c| c.time)
    }

    #[getter]
    fn delayed_time(&self, py: Python<'_>) -> f64 {
        self.read(py, |c| c.delayed_time)
    }

    #[getter]
    fn called(&self, py: Python<'_>) -> bool {
        self.read(py, |c| c.called)
    }

    #[getter]
    fn cancelled(&self, py: Python<'_>) -> bool {
        self.read(py, |c| c.cancelled)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let (due, called, cancelled) = self.read(py, |c| (c.due(), c.called, c.cancelled));
        format!(
            "<SharedDelayedCall [{}s] called={} cancelled={}>",
            PyFloat::new(py, due),
            u8::from(called),
            u8::from(cancelled)
        )
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
