//! The insertion-ordered Rust map behind `Session.sessionNamespaces`, also used as
//! `Componentized._adapterCache`.
//!
//! It behaves like a dict: any hashable key, insertion order, `KeyError` for a missing key,
//! `RuntimeError` when it changes size during iteration. Keys whose `__eq__` is Python code are
//! compared with the map not borrowed (the comparison may touch this very map); if the map changed
//! meanwhile, the lookup starts again, as CPython's dict does.

use pyo3::exceptions::{PyKeyError, PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyIterator, PyList, PyTuple, PyType};
use pyo3::{ffi, PyTraverseError, PyVisit};
use smallvec::SmallVec;
use std::cell::{RefCell, RefMut};

use crate::gc::Traverse;
use crate::gil::GilCell;

/// Below this many slots a linear scan beats an index.
const INDEX_FROM: usize = 8;
const EMPTY: u32 = u32::MAX;

pub struct Entry {
    pub hash: isize,
    pub key: Py<PyAny>,
    pub value: Py<PyAny>,
}

impl Traverse for Entry {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.key)?;
        visit.call(&self.value)
    }
}

/// The slots, in insertion order (`None` for a deleted entry). Most session maps hold one
/// entry, which is kept inline.
type Slots = SmallVec<[Option<Entry>; 1]>;

/// Slots in insertion order and, once the map is large enough, an open-addressing index from
/// hash to slot, probed the way CPython probes a dict.
#[derive(Default)]
pub struct MapCore {
    slots: Slots,
    indices: Box<[u32]>,
    len: u32,
    /// Bumped (wrapping) whenever a key is added or removed: iterators check it to notice that
    /// the map changed under them.
    version: u32,
    /// Bumped whenever slots move (a rebuild or emptying): a lookup that ran Python code starts
    /// again if it changed, as CPython's dict lookup does when its keys table is replaced.
    layout: u32,
    /// An entry that may be in a cycle was stored: the map must be tracked by the garbage
    /// collector if it is not. As CPython does with a dict, a new session's map is left
    /// untracked while it holds only objects that can be in no reference cycle (strings,
    /// numbers, ...), which spares the collector most sessions' maps.
    track_pending: bool,
}

// An empty map is the object's header and this: the object is 48 bytes with the collector's
// header, and the core is allocated when the first entry comes.
const _: () = assert!(std::mem::size_of::<Namespaces>() == 16);

/// Whether `obj` could be part of a reference cycle, as CPython's `_PyObject_GC_MAY_BE_TRACKED`.
fn may_be_tracked(obj: &Bound<'_, PyAny>) -> bool {
    // SAFETY: both only read the object's type and GC header, with the GIL held.
    unsafe {
        ffi::PyObject_IS_GC(obj.as_ptr()) != 0
            && (!obj.is_exact_instance_of::<PyTuple>()
                || ffi::PyObject_GC_IsTracked(obj.as_ptr()) != 0)
    }
}

enum Probe {
    Found(usize),
    Missing,
    /// Candidates with an equal hash whose equality needs Python code.
    Compare(Vec<(usize, Py<PyAny>)>),
}

/// Whether `a == b` can be decided without running user code or allocating: both of the same
/// exact builtin type whose comparison is plain C.
fn plain_pair(a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> bool {
    let ta = a.get_type_ptr();
    if ta != b.get_type_ptr() {
        return false;
    }
    ta == &raw mut ffi::PyUnicode_Type
        || ta == &raw mut ffi::PyBytes_Type
        || ta == &raw mut ffi::PyLong_Type
}

/// Whether `entry`, of an equal hash, holds `key`, when telling needs no Python code (the
/// same object, or two of one exact builtin type whose comparison is plain C); `None` when
/// it needs Python code.
#[inline(always)]
fn holds_plain(py: Python<'_>, entry: &Entry, key: &Bound<'_, PyAny>) -> Option<bool> {
    if entry.key.as_ptr() == key.as_ptr() {
        return Some(true);
    }
    let stored = entry.key.bind(py);
    // No user code runs for these types, so comparing while borrowed is safe.
    plain_pair(stored, key).then(|| stored.eq(key).unwrap_or(false))
}

impl MapCore {
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Notes that `key` and `value` were stored, for a map that may be untracked.
    fn stored(&mut self, key: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) {
        if !self.track_pending && (may_be_tracked(key) || may_be_tracked(value)) {
            self.track_pending = true;
        }
    }

    fn candidates(&self, hash: isize) -> impl Iterator<Item = usize> + '_ {
        let indexed = !self.indices.is_empty();
        let mask = self.indices.len().wrapping_sub(1);
        let mut perturb = hash as usize;
        let mut i = (hash as usize) & mask;
        let mut linear = 0usize;
        std::iter::from_fn(move || loop {
            if indexed {
                let ix = self.indices[i];
                if ix == EMPTY {
                    return None;
                }
                perturb >>= 5;
                i = (i.wrapping_mul(5).wrapping_add(perturb).wrapping_add(1)) & mask;
                if matches!(&self.slots[ix as usize], Some(e) if e.hash == hash) {
                    return Some(ix as usize);
                }
            } else {
                let ix = linear;
                if ix >= self.slots.len() {
                    return None;
                }
                linear += 1;
                if matches!(&self.slots[ix], Some(e) if e.hash == hash) {
                    return Some(ix);
                }
            }
        })
    }

    /// Looks `key` up among the slots from `from` on. A key found without Python code is
    /// found even when a candidate before it needs Python code to compare.
    #[inline]
    fn probe(&self, py: Python<'_>, key: &Bound<'_, PyAny>, hash: isize, from: usize) -> Probe {
        let mut compare = false;
        let mut check = |ix: usize, entry: &Entry| match holds_plain(py, entry, key) {
            Some(true) => Some(Probe::Found(ix)),
            Some(false) => None,
            None => {
                compare = true;
                None
            }
        };
        if self.indices.is_empty() {
            // A small map: a plain scan, which most session maps take.
            for (ix, entry) in self.slots.iter().enumerate().skip(from) {
                if let Some(entry) = entry.as_ref().filter(|e| e.hash == hash) {
                    if let Some(found) = check(ix, entry) {
                        return found;
                    }
                }
            }
        } else {
            for ix in self.candidates(hash).filter(|&ix| ix >= from) {
                let entry = self.slots[ix].as_ref().expect("candidate slots are live");
                if let Some(found) = check(ix, entry) {
                    return found;
                }
            }
        }
        if compare {
            Probe::Compare(self.needing_python(py, key, hash, from))
        } else {
            Probe::Missing
        }
    }

    /// The candidates for `key` from slot `from` on whose comparison with it needs Python code,
    /// in probe order, with their keys.
    #[cold]
    fn needing_python(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        hash: isize,
        from: usize,
    ) -> Vec<(usize, Py<PyAny>)> {
        let pick = |ix: usize| {
            let entry = self.slots[ix].as_ref()?;
            let stored = entry.key.bind(py);
            (entry.hash == hash && stored.as_ptr() != key.as_ptr() && !plain_pair(stored, key))
                .then(|| (ix, entry.key.clone_ref(py)))
        };
        if self.indices.is_empty() {
            (from..self.slots.len()).filter_map(pick).collect()
        } else {
            self.candidates(hash)
                .filter(|&ix| ix >= from)
                .filter_map(pick)
                .collect()
        }
    }

    fn insert_index(&mut self, hash: isize, slot: usize) {
        let mask = self.indices.len() - 1;
        let mut perturb = hash as usize;
        let mut i = (hash as usize) & mask;
        while self.indices[i] != EMPTY {
            perturb >>= 5;
            i = (i.wrapping_mul(5).wrapping_add(perturb).wrapping_add(1)) & mask;
        }
        self.indices[i] = slot as u32;
    }

    /// Whether slot `ix` still holds `key`, with the slots where they were.
    fn holds(&self, layout: u32, ix: usize, key: &Py<PyAny>) -> bool {
        self.layout == layout
            && matches!(&self.slots[ix], Some(e) if e.key.as_ptr() == key.as_ptr())
    }

    /// Drops deleted slots and rebuilds the index when it is due.
    fn rebuild(&mut self) {
        self.layout = self.layout.wrapping_add(1);
        if self.len() < self.slots.len() {
            self.slots.retain(|e| e.is_some());
        }
        self.indices = Box::default();
        if self.slots.len() > INDEX_FROM {
            let size = (self.slots.len() * 3).next_power_of_two();
            self.indices = vec![EMPTY; size].into_boxed_slice();
            for ix in 0..self.slots.len() {
                let hash = self.slots[ix].as_ref().map_or(0, |e| e.hash);
                self.insert_index(hash, ix);
            }
        }
    }

    pub fn push(&mut self, hash: isize, key: Py<PyAny>, value: Py<PyAny>) {
        self.slots.push(Some(Entry { hash, key, value }));
        self.len += 1;
        self.version = self.version.wrapping_add(1);
        let ix = self.slots.len() - 1;
        if self.indices.is_empty() {
            if self.slots.len() > INDEX_FROM {
                self.rebuild();
            }
        } else if self.slots.len() * 3 > self.indices.len() * 2 {
            self.rebuild();
        } else {
            self.insert_index(hash, ix);
        }
    }

    /// Removes the entry in slot `ix`, returning it so that it is dropped after the borrow.
    fn take(&mut self, ix: usize) -> Option<Entry> {
        let entry = self.slots[ix].take();
        if entry.is_some() {
            self.len -= 1;
            self.version = self.version.wrapping_add(1);
            let dead = self.slots.len() - self.len();
            if self.len == 0 {
                self.layout = self.layout.wrapping_add(1);
                self.slots.clear();
                self.indices = Box::default();
            } else if dead > INDEX_FROM && dead > self.len() {
                self.rebuild();
            }
        }
        entry
    }

    /// Empties the map, handing back the entries to drop once the borrow ends.
    pub fn take_all(&mut self) -> Slots {
        self.layout = self.layout.wrapping_add(1);
        self.indices = Box::default();
        self.len = 0;
        self.version = self.version.wrapping_add(1);
        std::mem::take(&mut self.slots)
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.slots.iter().flatten()
    }

    /// The entry at or after slot `pos`, with the slot after it.
    fn entry_from(&self, pos: usize) -> Option<(usize, &Entry)> {
        self.slots
            .iter()
            .enumerate()
            .skip(pos)
            .find_map(|(ix, e)| e.as_ref().map(|e| (ix + 1, e)))
    }

    /// Removes the first entry whose value is `value` (by identity).
    pub fn take_value(&mut self, value: &Bound<'_, PyAny>) -> Option<Entry> {
        let ix = self
            .slots
            .iter()
            .position(|e| matches!(e, Some(e) if e.value.as_ptr() == value.as_ptr()))?;
        self.take(ix)
    }
}

impl Traverse for MapCore {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.slots.traverse(visit)
    }
}

/// The dict-like map. `frozen`: all state sits in one cell that is never borrowed while
/// Python code runs.
#[pyclass(module = "txsession", name = "Namespaces", frozen, mapping)]
#[derive(Default)]
pub struct Namespaces {
    /// `None` until the map is first written, or read with a borrow that may write.
    core: GilCell<Option<Box<MapCore>>>,
}

/// The outcome of a lookup: the guard, still held, and the slot holding the key, if any.
type Located<'a> = (RefMut<'a, MapCore>, Option<usize>);

impl Namespaces {
    /// The map's state, allocated if it was not yet.
    #[inline]
    pub fn lock(&self, py: Python<'_>) -> RefMut<'_, MapCore> {
        RefMut::map(self.core.borrow_mut(py), |core| {
            &mut **core.get_or_insert_with(Box::default)
        })
    }

    /// Finds `key`, comparing with Python code only while the map is not borrowed.
    ///
    /// As CPython's dict lookup: after a comparison that ran Python code, the lookup starts
    /// again only if the slots moved or the compared entry is gone; keys added meanwhile are
    /// compared after the ones already found.
    fn locate<'a>(
        &'a self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        hash: isize,
    ) -> PyResult<Located<'a>> {
        'retry: loop {
            let mut guard = self.lock(py);
            let layout = guard.layout;
            let mut from = 0;
            loop {
                let candidates = match guard.probe(py, key, hash, from) {
                    Probe::Found(ix) => return Ok((guard, Some(ix))),
                    Probe::Missing => return Ok((guard, None)),
                    Probe::Compare(candidates) => candidates,
                };
                from = guard.slots.len();
                drop(guard);
                let mut found = None;
                for (ix, stored) in &candidates {
                    let equal = stored.bind(py).eq(key)?;
                    if !self.lock(py).holds(layout, *ix, stored) {
                        drop(candidates);
                        continue 'retry;
                    }
                    if equal {
                        found = Some((*ix, stored.clone_ref(py)));
                        break;
                    }
                }
                // Dropped before borrowing: the last reference to a key may run its finalizer.
                drop(candidates);
                if let Some((ix, stored)) = found {
                    let guard = self.lock(py);
                    if guard.holds(layout, ix, &stored) {
                        // `stored` is still in the map: dropping this reference frees nothing.
                        drop(stored);
                        return Ok((guard, Some(ix)));
                    }
                    drop(guard);
                    continue 'retry;
                }
                guard = self.lock(py);
                if guard.layout != layout {
                    continue 'retry;
                }
            }
        }
    }

    pub fn get(&self, key: &Bound<'_, PyAny>) -> PyResult<Option<Py<PyAny>>> {
        let py = key.py();
        let hash = key.hash()?;
        // Found or missing without running Python code, in one borrow: the usual case.
        let probe = {
            let guard = self.core.borrow_mut(py);
            let Some(core) = guard.as_deref() else {
                return Ok(None);
            };
            match core.probe(py, key, hash, 0) {
                Probe::Found(ix) => {
                    return Ok(core.slots[ix].as_ref().map(|e| e.value.clone_ref(py)));
                }
                Probe::Missing => return Ok(None),
                compare => compare,
            }
        };
        // Dropped after the borrow, as `locate` does.
        drop(probe);
        let (guard, slot) = self.locate(py, key, hash)?;
        Ok(slot.and_then(|ix| guard.slots[ix].as_ref().map(|e| e.value.clone_ref(py))))
    }

    /// Stores `value` under `key`, returning the value it replaced.
    pub fn set(&self, key: &Bound<'_, PyAny>, value: Py<PyAny>) -> PyResult<Option<Py<PyAny>>> {
        let py = key.py();
        let hash = key.hash()?;
        // Found or missing without running Python code, in one borrow: the usual case.
        let probe = {
            let mut guard = self.lock(py);
            match guard.probe(py, key, hash, 0) {
                Probe::Found(ix) => {
                    guard.stored(key, value.bind(py));
                    let entry = guard.slots[ix].as_mut().expect("found slots are live");
                    return Ok(Some(std::mem::replace(&mut entry.value, value)));
                }
                Probe::Missing => {
                    guard.stored(key, value.bind(py));
                    guard.push(hash, key.clone().unbind(), value);
                    return Ok(None);
                }
                compare => compare,
            }
        };
        // Dropped after the borrow, as `locate` does.
        drop(probe);
        let (mut guard, slot) = self.locate(py, key, hash)?;
        guard.stored(key, value.bind(key.py()));
        match slot.and_then(|ix| guard.slots[ix].as_mut()) {
            Some(entry) => Ok(Some(std::mem::replace(&mut entry.value, value))),
            None => {
                guard.push(hash, key.clone().unbind(), value);
                Ok(None)
            }
        }
    }

    /// `setdefault`: the value for `key`, storing `default` (or `None`) first when absent.
    pub fn set_default(
        &self,
        key: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let py = key.py();
        let hash = key.hash()?;
        let (mut guard, slot) = self.locate(py, key, hash)?;
        if let Some(entry) = slot.and_then(|ix| guard.slots[ix].as_ref()) {
            return Ok(entry.value.clone_ref(py));
        }
        let value = default.unwrap_or_else(|| py.None());
        guard.stored(key, value.bind(py));
        guard.push(hash, key.clone().unbind(), value.clone_ref(py));
        Ok(value)
    }

    /// A new empty map that the garbage collector does not track until an entry that may be in
    /// a reference cycle is stored: what a new session's `sessionNamespaces` is.
    pub fn new_untracked(py: Python<'_>) -> PyResult<Bound<'_, Namespaces>> {
        let map = Bound::new(py, Namespaces::default())?;
        // SAFETY: a live GC object of ours, with the GIL held; it holds nothing yet.
        unsafe { ffi::PyObject_GC_UnTrack(map.as_ptr().cast()) };
        Ok(map)
    }

    /// Tracks the map once an entry that may be in a cycle was stored while it was untracked.
    /// Every method that stores entries calls this after storing, whether it succeeded or not.
    pub fn settle_tracking(slf: &Bound<'_, Self>) {
        let track = {
            let mut core = slf.get().core.borrow_mut(slf.py());
            match core.as_mut() {
                Some(core) => std::mem::take(&mut core.track_pending),
                None => false,
            }
        };
        // SAFETY: a live GC object of ours, with the GIL held: tracked only if it is not.
        if track && unsafe { ffi::PyObject_GC_IsTracked(slf.as_ptr()) } == 0 {
            unsafe { ffi::PyObject_GC_Track(slf.as_ptr().cast()) };
        }
    }

    /// Removes `key`, returning its entry, or `None` when it is absent.
    pub fn remove(&self, key: &Bound<'_, PyAny>) -> PyResult<Option<Entry>> {
        let hash = key.hash()?;
        let (mut guard, slot) = self.locate(key.py(), key, hash)?;
        Ok(slot.and_then(|ix| guard.take(ix)))
    }

    pub fn clear_all(&self, py: Python<'_>) {
        let old = self
            .core
            .borrow_mut(py)
            .as_mut()
            .map(|core| core.take_all());
        drop(old);
    }

    /// A snapshot of the entries, to run Python code over without a borrow.
    pub fn items_vec(&self, py: Python<'_>) -> Vec<(Py<PyAny>, Py<PyAny>)> {
        let core = self.core.borrow_mut(py);
        core.as_deref()
            .into_iter()
            .flat_map(MapCore::entries)
            .map(|e| (e.key.clone_ref(py), e.value.clone_ref(py)))
            .collect()
    }

    pub fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (k, v) in self.items_vec(py) {
            dict.set_item(k, v)?;
        }
        Ok(dict)
    }

    /// Adds every pair of `other` (a mapping, or an iterable of pairs) as `dict.update` does.
    pub fn update_from(&self, other: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = other.py();
        if let Ok(ns) = other.cast::<Namespaces>() {
            for (k, v) in ns.get().items_vec(py) {
                drop(self.set(k.bind(py), v)?);
            }
        } else if let Ok(dict) = other.cast::<PyDict>() {
            for (k, v) in dict.iter() {
                drop(self.set(&k, v.unbind())?);
            }
        } else if other.hasattr(pyo3::intern!(py, "keys"))? {
            for k in other.call_method0(pyo3::intern!(py, "keys"))?.try_iter()? {
                let k = k?;
                let v = other.get_item(&k)?;
                drop(self.set(&k, v.unbind())?);
            }
        } else {
            for (n, item) in other.try_iter()?.enumerate() {
                let item = item?;
                let pair: Vec<Bound<'_, PyAny>> = item
                    .try_iter()
                    .map_err(|_| {
                        PyTypeError::new_err(format!(
                            "cannot convert update sequence element #{n} to a sequence"
                        ))
                    })?
                    .collect::<PyResult<_>>()?;
                let [k, v]: [Bound<'_, PyAny>; 2] = pair.try_into().map_err(|p: Vec<_>| {
                    pyo3::exceptions::PyValueError::new_err(format!(
                        "update sequence element #{n} has length {}; 2 is required",
                        p.len()
                    ))
                })?;
                drop(self.set(&k, v.unbind())?);
            }
        }
        Ok(())
    }

    pub fn from_mapping(other: &Bound<'_, PyAny>) -> PyResult<Self> {
        let map = Self::default();
        map.update_from(other)?;
        Ok(map)
    }
}

fn key_error(key: &Bound<'_, PyAny>) -> PyErr {
    PyKeyError::new_err(key.clone().unbind())
}

thread_local! {
    /// Maps being repr'd on this thread, so that a map containing itself prints `{...}`.
    static IN_REPR: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

fn abc_view<'py>(
    py: Python<'py>,
    name: &str,
    map: &Bound<'py, Namespaces>,
) -> PyResult<Bound<'py, PyAny>> {
    py.import("collections.abc")?.getattr(name)?.call1((map,))
}

#[pymethods]
impl Namespaces {
    #[new]
    #[pyo3(signature = (other = None, /, **kwargs))]
    fn py_new(
        other: Option<&Bound<'_, PyAny>>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let map = Self::default();
        if let Some(other) = other {
            map.update_from(other)?;
        }
        if let Some(kwargs) = kwargs {
            map.update_from(kwargs.as_any())?;
        }
        Ok(map)
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        self.core
            .borrow_mut(py)
            .as_ref()
            .map_or(0, |core| core.len())
    }

    fn __bool__(&self, py: Python<'_>) -> bool {
        self.__len__(py) > 0
    }

    fn __getitem__(&self, key: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        self.get(key)?.ok_or_else(|| key_error(key))
    }

    fn __setitem__(
        slf: &Bound<'_, Self>,
        key: &Bound<'_, PyAny>,
        value: Py<PyAny>,
    ) -> PyResult<()> {
        let result = slf.get().set(key, value).map(drop);
        Namespaces::settle_tracking(slf);
        result
    }

    fn __delitem__(&self, key: &Bound<'_, PyAny>) -> PyResult<()> {
        match self.remove(key)? {
            Some(entry) => {
                drop(entry);
                Ok(())
            }
            None => Err(key_error(key)),
        }
    }

    fn __contains__(&self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        Ok(self.get(key)?.is_some())
    }

    fn __iter__(slf: &Bound<'_, Self>) -> NamespacesIter {
        NamespacesIter::new(slf, IterKind::Keys)
    }

    fn __reversed__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let keys: Vec<Py<PyAny>> = slf
            .get()
            .lock(py)
            .entries()
            .map(|e| e.key.clone_ref(py))
            .collect();
        let list = PyList::new(py, keys.into_iter().rev())?;
        Ok(PyIterator::from_object(&list)?.into_any())
    }

    #[pyo3(name = "get", signature = (key, default = None))]
    fn py_get<'py>(
        &self,
        key: &Bound<'py, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Option<Py<PyAny>>> {
        Ok(self.get(key)?.or(default))
    }

    #[pyo3(signature = (key, default = None))]
    fn setdefault(
        slf: &Bound<'_, Self>,
        key: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let result = slf.get().set_default(key, default);
        Namespaces::settle_tracking(slf);
        result
    }

    #[pyo3(signature = (key, *default))]
    fn pop(&self, key: &Bound<'_, PyAny>, default: &Bound<'_, PyTuple>) -> PyResult<Py<PyAny>> {
        if default.len() > 1 {
            return Err(PyTypeError::new_err(format!(
                "pop expected at most 2 arguments, got {}",
                default.len() + 1
            )));
        }
        match self.remove(key)? {
            Some(entry) => Ok(entry.value),
            None if default.len() == 1 => Ok(default.get_item(0)?.unbind()),
            None => Err(key_error(key)),
        }
    }

    fn popitem(&self, py: Python<'_>) -> PyResult<(Py<PyAny>, Py<PyAny>)> {
        let entry = {
            let mut core = self.lock(py);
            let last = core.slots.iter().rposition(Option::is_some);
            last.and_then(|ix| core.take(ix))
        };
        entry
            .map(|e| (e.key, e.value))
            .ok_or_else(|| PyKeyError::new_err("popitem(): Namespaces is empty"))
    }

    #[pyo3(signature = (other = None, /, **kwargs))]
    fn update(
        slf: &Bound<'_, Self>,
        other: Option<&Bound<'_, PyAny>>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let this = slf.get();
        let result = other
            .map_or(Ok(()), |other| this.update_from(other))
            .and_then(|()| kwargs.map_or(Ok(()), |kw| this.update_from(kw.as_any())));
        Namespaces::settle_tracking(slf);
        result
    }

    fn clear(&self, py: Python<'_>) {
        self.clear_all(py);
    }

    /// A shallow copy, as a plain dict.
    fn copy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.to_dict(py)
    }

    fn keys<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        abc_view(slf.py(), "KeysView", slf)
    }

    fn values<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        abc_view(slf.py(), "ValuesView", slf)
    }

    fn items<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        abc_view(slf.py(), "ItemsView", slf)
    }

    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let mine = self.to_dict(py)?;
        let theirs = if let Ok(ns) = other.cast::<Namespaces>() {
            ns.get().to_dict(py)?
        } else if let Ok(dict) = other.cast::<PyDict>() {
            dict.clone()
        } else if is_mapping(other)? {
            PyDict::from_sequence(&other.call_method0("items")?)?
        } else {
            return Ok(py.NotImplemented());
        };
        Ok(mine
            .eq(theirs)?
            .into_pyobject(py)?
            .to_owned()
            .into_any()
            .unbind())
    }

    fn __ne__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let eq = self.__eq__(py, other)?;
        if eq.is(py.NotImplemented()) {
            return Ok(eq);
        }
        let ne = !eq.bind(py).is_truthy()?;
        Ok(ne.into_pyobject(py)?.to_owned().into_any().unbind())
    }

    fn __or__<'py>(&self, py: Python<'py>, other: &Bound<'py, PyAny>) -> PyResult<Py<PyAny>> {
        if !(other.is_instance_of::<PyDict>() || other.is_instance_of::<Namespaces>()) {
            return Ok(py.NotImplemented());
        }
        let merged = self.to_dict(py)?;
        merged.call_method1("update", (other,))?;
        Ok(merged.into_any().unbind())
    }

    fn __ror__<'py>(&self, py: Python<'py>, other: &Bound<'py, PyAny>) -> PyResult<Py<PyAny>> {
        if !other.is_instance_of::<PyDict>() {
            return Ok(py.NotImplemented());
        }
        let merged = other.cast::<PyDict>()?.copy()?;
        merged.update(self.to_dict(py)?.as_mapping())?;
        Ok(merged.into_any().unbind())
    }

    fn __ior__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<()> {
        let result = slf.get().update_from(other);
        Namespaces::settle_tracking(slf);
        result
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let id = slf.as_ptr() as usize;
        if IN_REPR.with(|s| s.borrow().contains(&id)) {
            return Ok("{...}".to_owned());
        }
        IN_REPR.with(|s| s.borrow_mut().push(id));
        let result = (|| {
            let parts = slf
                .get()
                .items_vec(slf.py())
                .into_iter()
                .map(|(k, v)| {
                    Ok(format!(
                        "{}: {}",
                        k.bind(slf.py()).repr()?,
                        v.bind(slf.py()).repr()?
                    ))
                })
                .collect::<PyResult<Vec<_>>>()?;
            Ok(format!("{{{}}}", parts.join(", ")))
        })();
        IN_REPR.with(|s| s.borrow_mut().retain(|x| *x != id));
        result
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let py = slf.py();
        let cls: Bound<'py, PyType> = slf.get_type();
        let items = PyList::new(py, slf.get().items_vec(py))?;
        (cls, (items,)).into_pyobject(py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self.core.try_borrow_mut() {
            Some(core) => core.as_deref().traverse(&visit),
            // Whoever borrows the map keeps these objects alive anyway: skipping them
            // only makes the collector treat them as reachable.
            None => Ok(()),
        }
    }

    fn __clear__(&self) {
        self.core
            .clear_with(|core| core.as_mut().map(|core| core.take_all()));
    }
}

fn is_mapping(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    static MAPPING: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    obj.is_instance(MAPPING.import(obj.py(), "collections.abc", "Mapping")?)
}

#[derive(Clone, Copy)]
enum IterKind {
    Keys,
}

/// Iterates a [`Namespaces`] in insertion order, failing like a dict iterator when the map
/// changes size underneath it.
#[pyclass(module = "txsession", name = "NamespacesIterator", frozen)]
pub struct NamespacesIter {
    map: Py<Namespaces>,
    state: GilCell<(usize, u64, usize)>,
    kind: IterKind,
}

impl NamespacesIter {
    fn new(map: &Bound<'_, Namespaces>, kind: IterKind) -> Self {
        let core = map.get().lock(map.py());
        let state = (0, u64::from(core.version), core.len());
        drop(core);
        Self {
            map: map.clone().unbind(),
            state: GilCell::new(state),
            kind,
        }
    }
}

#[pymethods]
impl NamespacesIter {
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let map = self.map.get();
        let core = map.lock(py);
        let mut state = self.state.borrow_mut(py);
        let (pos, version, len) = *state;
        if u64::from(core.version) != version {
            let message = if core.len() != len {
                "Namespaces changed size during iteration"
            } else {
                "Namespaces keys changed during iteration"
            };
            // Stay broken, as a dict iterator does.
            state.1 = u64::MAX;
            return Err(PyRuntimeError::new_err(message));
        }
        match core.entry_from(pos) {
            Some((next, entry)) => {
                state.0 = next;
                Ok(Some(match self.kind {
                    IterKind::Keys => entry.key.clone_ref(py),
                }))
            }
            None => {
                state.0 = usize::MAX;
                Ok(None)
            }
        }
    }

    fn __length_hint__(&self, py: Python<'_>) -> usize {
        let (pos, _, _) = *self.state.borrow_mut(py);
        let core = self.map.get().lock(py);
        core.slots.iter().skip(pos).flatten().count()
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.map)
    }
}
