"""
How a request of a L{txsession.Site} with a session store uses its sessions, and the
consistency model that this keeps (README.md, "The consistency model").

Redis is the truth. A I{copy} is this process's session object for a stored session, and
L{SessionCopy} says what the store holds of it: the id it is stored under and its fields, as
last read or written here. A request uses only the sessions it read from the store (or made):
L{StoreFlow.read} reads the sessions its cookies name, before the resource renders, and
L{StoreFlow.getSession} returns nothing else.

A I{change record} (L{Change}) is one request's use of one session. Its baseline is the
session's namespaces, encoded, as the request first saw them, kept up to date with every
change that is not the request's own: a value read from the store, another request's write, a
revert. So what differs from the baseline when the request ends is what the request changed
(with one ambiguity, in one process: a change made while several requests use the session
counts as each one's). A request writes only that, in one atomic script per session before
its response; a failure reverts only that; and a copy that a running request uses is not
evicted or timed out.
"""

from __future__ import annotations

import weakref
from functools import partial
from itertools import count
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.logger import Logger
from twisted.python.failure import Failure

from txsession import _txsession
from txsession.store import (
    JSONSerializer,
    SessionEnded,
    StoreError,
    StoreUnavailable,
    UnserializableValue,
    _shortRepr,
)

_log = Logger()

# Values that JSONSerializer gives back equal and of the same type.
_JSON_ATOMS = frozenset([str, int, float, bool, type(None)])

# A key a session's namespaces do not hold (in a baseline, or in the store).
_ABSENT: Any = object()
# A key a request did not change while rendering.
_NOT_OWN: Any = object()


class _Unencodable:
    """
    In a baseline: a value the serializer could not encode, kept as it is so that a revert
    can put it back.
    """

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Unencodable) and other.value is self.value

    __hash__ = None  # type: ignore[assignment]


class SessionCopy:
    """
    What this process knows of a stored session: the id it is stored under (C{None} until
    first written), its fields as last read or written here, and the requests using it.
    """

    __slots__ = (
        "storedAs",
        "fields",
        "users",
        "readers",
        "creating",
        "renaming",
        "uncertain",
        "created",
        "ends",
        "atoms",
    )

    def __init__(self, storedAs: bytes | None, fields: dict[str, bytes]) -> None:
        self.storedAs = storedAs
        self.fields = fields
        # When the session was made and when its absolute timeout ends it (reactor times;
        # None when unknown or none), as stored.
        self.created: float | None = None
        self.ends: float | None = None
        self.users: list[Change] = []
        # Requests that read (or found) this copy and are not over, whether or not they have
        # asked for it yet: while there are any, the copy is not evicted or timed out.
        self.readers = 0
        # Ids a write that would have made the session did not answer for: it may be stored
        # under each. While the session goes by one of them, a request reads it rather than
        # trust this copy; a logout deletes them all (one a failed renew gave back is an id
        # nobody holds, so only a logout or its timeout ends what it may hold).
        self.uncertain: tuple[bytes, ...] = ()
        # The id a write that creates the session, or renames it, is taking it to.
        self.creating: bytes | None = None
        self.renaming: bytes | None = None
        # With the JSON serializer: for each key whose value was a str, int, float, bool or
        # None when last encoded, that value and its encoding. Such a value cannot change in
        # place, so while the key holds that very object its encoding is known.
        self.atoms: dict[str, tuple[Any, bytes]] = {}

    def names(self) -> list[bytes]:
        """
        Every id the session may be stored under, or is being written to: what a logout
        deletes.
        """
        names = [self.storedAs, self.creating, self.renaming, *self.uncertain]
        return [name for name in dict.fromkeys(names) if name is not None]


class Change:
    """
    One request's use of one session: what it saw, what it sent, what it renamed.
    """

    __slots__ = (
        "session",
        "copy",
        "name",
        "baseline",
        "made",
        "inFlight",
        "contested",
        "priors",
        "renamedFrom",
        "endedHere",
        "own",
        "riding",
        "user",
        "serial",
        "ownBefore",
        "ownWritten",
        "sending",
        "mayHaveLanded",
        "abandoned",
        "final",
        "undoneTo",
    )

    def __init__(self, session: Any, copy: SessionCopy, baseline: dict[str, Any], made: bool):
        self.session = session
        self.copy = copy
        # Which of two records began first (the greater began later): one that began after
        # a failing request changed a key may have taken that change as its baseline, one
        # that began before took its baseline without it.
        self.serial = next(_SERIALS)
        # The id this request found the session under in the store; its writes go there.
        self.name = copy.storedAs
        self.baseline = baseline
        self.made = made
        # Keys of a write sent and not answered: the baseline's value before it.
        self.inFlight: dict[str, Any] = {}
        # Keys of that write that another request's baseline also saw changed, and what that
        # baseline held (restored when the write fails, so that the other request writes it).
        self.contested: set[str] = set()
        self.priors: list[tuple[Change, str, Any]] = []
        # The id the session had before this request renewed it.
        self.renamedFrom: bytes | None = None
        # This request logged the session out (called its expire() while rendering).
        self.endedHere = False
        # Keys it had changed when its resource's render() returned, with their values then
        # (encoded): its own for certain (what changes later, from a callback, could be
        # anyone's).
        self.own: dict[str, Any] = {}
        # For each of those keys, what was there before this request's change.
        self.ownBefore: dict[str, Any] = {}
        # A key of those left them when another process wrote that very value (the change
        # counts as written): still a change of this request's, for a logout's 409.
        self.ownWritten = False
        # Other requests' writes that moved this baseline: a change this request made to
        # those keys is carried by them, so while one is in flight when the request ends,
        # the request answers as it does.
        self.riding: list[_Outcome] = []
        # The user this request binds the session to (renewSession's user), until written.
        self.user: str | None = None
        # Writes sent and not answered; and what those that failed in a way that may have
        # been applied all the same (a timeout, a cut connection, too few replicas) carried,
        # by key (None if none did).
        self.sending = 0
        self.mayHaveLanded: dict[str, Any] | None = None
        # The request failed (its client left, say) while a write was in flight: what the
        # write leaves in the store is its outcome, as for a request waiting for it. The
        # record stays one of the copy's users until the write answers, then is reverted
        # (what the write did not carry, or all of it if the write failed).
        self.abandoned = False
        # Its request's last write was sent (with the finish): it writes nothing more.
        self.final = False
        # Keys whose baseline is the value a failed request's write carried, a write that may
        # have landed: what this request's own failure puts back instead (what was there
        # before that write), as [that value, what was there before] (a read of the key moves
        # the latter, as it moves the other records of what was there). None until there is
        # one.
        self.undoneTo: dict[str, list[Any]] | None = None


class RequestSessions:
    """
    What one request of a store site does with its sessions, and with its response while
    they are written (the request's C{_txsStore}).
    """

    __slots__ = (
        "flow",
        "confirmed",
        "changes",
        "readFailure",
        "settled",
        "watching",
        "pinned",
        "logouts",
        "cached",
        "held",
        "finishHeld",
        "pendingFailure",
        "failed",
        "rendering",
        "writeAfterRender",
        "flushedFinished",
    )

    def __init__(self, flow: StoreFlow) -> None:
        self.flow = flow
        # Each id read for this request from the store (or made here and not stored), and
        # its session.
        self.confirmed: dict[bytes, Any] = {}
        self.changes: dict[Any, Change] = {}
        self.readFailure: Failure | None = None
        # Written at the end, or reverted: nothing more to do.
        self.settled = False
        self.watching = False
        # The copies this request counts as a reader of.
        self.pinned: list[SessionCopy] = []
        # The deletions of the sessions it logged out while rendering: its answer waits.
        self.logouts: list[_Outcome] = []
        # The ids it used from this process's copies without reading them, each with what
        # the store said of the copy (RedisStore: its stamp).
        self.cached: dict[bytes, Any] = {}
        # The response: bytes (and the finish) held until the session writes answer.
        self.held: list[bytes] | None = None
        self.finishHeld = False
        # The resource failed while a session write was in flight.
        self.pendingFailure: Failure | None = None
        # The request failed: nothing more is written, or answered.
        self.failed = False
        # The resource is rendering; what it writes meanwhile is held, and written with its
        # session changes once render() returns.
        self.rendering = False
        self.writeAfterRender = False
        # The write in flight was sent after the request finished.
        self.flushedFinished = False

    def readFailed(self, reason: Failure) -> None:
        self.readFailure = reason


def _set(mapping: dict[str, Any], key: str, value: Any) -> None:
    if value is _ABSENT:
        mapping.pop(key, None)
    else:
        mapping[key] = value


class StoreFlow:
    """
    The store's request flow for one site: its copies, its renames and logouts in flight.
    """

    def __init__(self, site: Any, store: Any, storeEmptySessions: bool) -> None:
        self.site = site
        self.store = store
        self.storeEmptySessions = storeEmptySessions
        self.copies: dict[Any, SessionCopy] = {}
        # Old ids of sessions renewed here whose rename has not reached the store yet: dead
        # already, as Twisted's renewed ids are.
        self.renamedAway: dict[bytes, Any] = {}
        # Each session ended by expire() (a logout) whose deletion was asked for.
        self.logouts: weakref.WeakKeyDictionary[Any, _Outcome] = weakref.WeakKeyDictionary()
        self.droppingLocally: Any = None
        # The request whose resource is rendering, if any: the one a logout belongs to.
        self.rendering: Any = None
        # Client-side caching, when the store offers it (RedisStore's cache=True): whether
        # a copy is still what the store holds, so a request may use it without reading.
        caching = getattr(store, "cache", False)
        self._cached = getattr(store, "cached", None) if caching else None
        self._forget = getattr(store, "forget", None) if caching else None
        self._applied = getattr(store, "applied", None) if caching else None
        # The save that takes answer= (ISessionStore), if the store's does: while
        # store.save is that one, a lone write is answered without a Deferred.
        self._answering = _answeringSave(store)
        # Reads this flow answered from copies, without the store: for tests and the bench.
        self.cachedReads = 0

    # Reading: which sessions a request may use.

    def read(self, request: Any, uids: list[bytes]) -> Deferred[None] | None:
        """
        Start C{request}'s use of the store: read the sessions C{uids} (the values of the
        session cookies its C{getSession} can look at); C{None} when there is nothing to
        read. A failure is kept: C{getSession} raises it.
        """
        state = request._txsStore = RequestSessions(self)
        if not uids:
            return None
        state.watching = True
        if not hasattr(request, "_txsRelease"):
            request.notifyFinish().addBoth(partial(self.release, request))
        sessions = self.site.sessions
        cached = self._cached
        reading = []
        for uid in uids:
            if uid in self.renamedAway:
                continue
            session = sessions.get(uid)
            copy = None if session is None else self.copies.get(session)
            if (
                copy is not None
                and copy.storedAs is None
                and (not copy.uncertain or uid not in copy.uncertain)
            ):
                # Made here and not stored yet: nothing in the store can say otherwise.
                self._confirm(state, uid, session, copy)
            elif (
                cached is not None
                and copy is not None
                and copy.storedAs == uid
                and copy.renaming is None
                and self._useCached(state, uid, session, copy)
            ):
                # As the store holds it: used as a read that found it unchanged would (or
                # failed as a read does, see _useCached).
                continue
            else:
                reading.append(uid)
        if not reading:
            return None
        if cached is not None:
            loading = self.store.load(reading, owner=self)
        else:
            loading = self.store.load(reading)
        loading.addCallback(partial(self._loaded, state, reading))
        loading.addErrback(state.readFailed)
        return loading

    def _watch(self, request: Any, state: RequestSessions) -> None:
        # The request's finish() or connectionLost() calls release(); a request that has
        # no such hooks (one that is not a SessionCookieMixin) is watched through
        # notifyFinish. (read() does the same, inline.)
        if not state.watching:
            state.watching = True
            if not hasattr(request, "_txsRelease"):
                request.notifyFinish().addBoth(partial(self.release, request))

    def _confirm(self, state: RequestSessions, uid: bytes, session: Any, copy: SessionCopy) -> None:
        state.confirmed[uid] = session
        if not state.settled:
            # Not for a request already over (its client left while the read was out).
            copy.readers += 1
            state.pinned.append(copy)

    def _useCached(
        self, state: RequestSessions, uid: bytes, session: Any, copy: SessionCopy
    ) -> bool:
        stamp = self._cached(uid, self)  # type: ignore[misc]
        if not stamp:
            return False
        try:
            session.touch()
        except (AlreadyCalled, AlreadyCancelled):
            self.dropFound(session)
            return False
        except Exception:
            # What else touch() raises (a sessionTimeout that is not a number, say) fails
            # the request as a failed read does: its getSession raises it.
            state.readFailed(Failure())
            return True
        self._confirm(state, uid, session, copy)
        state.cached[uid] = stamp
        self.cachedReads += 1
        return True

    def _loaded(self, state: RequestSessions, uids: list[bytes], results: list[Any]) -> None:
        sessions = self.site.sessions
        for uid, result in zip(uids, results):
            session = sessions.get(uid)
            copy = None if session is None else self.copies.get(session)
            if copy is not None and copy.storedAs is None and copy.creating is None:
                # Made here; its first write did not answer. Stored after all, or not.
                lost = uid in copy.uncertain
                copy.uncertain = tuple(name for name in copy.uncertain if name != uid)
                if result is None:
                    if lost:
                        # Perhaps stored, and ended since (logged out, or timed out,
                        # elsewhere): over here too.
                        self.dropFound(session)
                    else:
                        self._confirm(state, uid, session, copy)
                    continue
            if result is None:
                if copy is not None and copy.storedAs == uid:
                    # Logged out, or timed out, elsewhere.
                    self.dropFound(session)
                continue
            if not isinstance(result, dict):
                if copy is not None and copy.storedAs in (uid, None):
                    # Renamed elsewhere: this copy is of a name that is dead.
                    self._setAside(session)
                continue
            if uid in self.renamedAway:
                continue
            if copy is not None:
                try:
                    session.touch()
                except (AlreadyCalled, AlreadyCancelled):
                    self.dropFound(session)
                    copy = None
            if copy is None:
                session = self._newCopy(uid, result)
                copy = self.copies[session]
            else:
                self._merge(session, copy, result)
                copy.storedAs = uid
            if self._applied is not None:
                # The copy is what the store said: it may be used without reading from now.
                self._applied(result)
            self._confirm(state, uid, session, copy)

    def _decode(self, fields: dict[str, bytes]) -> dict[str, Any]:
        """
        C{fields} from the store, decoded; L{StoreError} naming the key of one that cannot be.
        """
        loads = self.store.serializer.loads
        decoded = {}
        for key, value in fields.items():
            try:
                decoded[key] = loads(value)
            except Exception as e:
                raise StoreError(
                    f"a stored value of the namespace key {key!r} cannot be decoded: {e}"
                ) from e
        return decoded

    def _newCopy(self, uid: bytes, fields: dict[str, bytes]) -> Any:
        decoded = self._decode(fields)
        site = self.site
        lru = site._lru
        if lru is not None:
            site._makeRoom(lru)
        session = site.sessions[uid] = site.sessionFactory(site, uid)
        session.startCheckingExpiration()
        if lru is not None:
            lru.add(session, site.sessions)
        self.adopt(session, uid)
        session.sessionNamespaces.update(decoded)
        copy = self.copies[session]
        copy.fields = dict(fields)
        copy.created = getattr(fields, "created", None)
        copy.ends = getattr(fields, "ends", None)
        if copy.ends is not None:
            # Every process ends it at its absolute timeout, whatever its own options.
            site._endAt(session, copy.ends)
        return session

    def _merge(self, session: Any, copy: SessionCopy, fields: dict[str, bytes]) -> None:
        """
        Bring C{copy} up to what the store holds, C{fields}: what changed there since this
        process last saw it wins, except a key changed here and not written yet (its value
        differs from what this process last read, or from what a running request started
        from), which stays: its request writes it later, so the later write wins, as in the
        store.
        """
        known = copy.fields
        if fields == known:
            return
        namespaces = session.sessionNamespaces
        theirs = {}
        for key in [*fields, *(k for k in known if k not in fields)]:
            stored = fields.get(key, _ABSENT)
            was = known.get(key, _ABSENT)
            if stored == was:
                continue
            for user in copy.users:
                if user.own.get(key, _NOT_OWN) == stored:
                    # The other process wrote this very value: the change the request made
                    # while rendering counts as written, and is its own no longer (a
                    # failure does not give it back over that process's next write).
                    del user.own[key]
                    user.ownBefore.pop(key, None)
                    user.ownWritten = True
            here = self.encoded(namespaces, key)
            # A write of the key in flight was sent after this read, on the same connection:
            # it lands after what the read saw, so its value is what the store will hold.
            flying = any(key in user.inFlight for user in copy.users)
            if (
                not flying
                and here == was
                and all(user.baseline.get(key, _ABSENT) == here for user in copy.users)
            ):
                theirs[key] = stored
            else:
                # Changed here and not written: the change stays. That includes a value set
                # back to what the store held, over a running request's change, which the
                # request that set it back still writes (its baseline differs). What the
                # running requests took the store to hold is what it holds now, so that a
                # request that fails puts that back, not what the store held before; but
                # while a write of the key is in flight, what the store will hold is that
                # write's value, and only what its failure would put back moves.
                self._restored(copy, key, was, stored, baselines=not flying)
                if flying:
                    self._whenLost(copy, key, was, stored)
                elif stored == here:
                    # The other process wrote this very value: every running request's
                    # change to it counts as written (its next write there replaces it).
                    for user in copy.users:
                        _set(user.baseline, key, stored)
        decoded = self._decode({k: v for k, v in theirs.items() if v is not _ABSENT})
        for key, stored in theirs.items():
            if stored is _ABSENT:
                namespaces.pop(key, None)
            else:
                namespaces[key] = decoded[key]
            for user in copy.users:
                _set(user.baseline, key, stored)
        copy.fields = dict(fields)

    def _whenLost(self, copy: SessionCopy, key: str, was: Any, stored: Any) -> None:
        """
        The store holds C{stored} for C{key} where C{copy}'s users knew C{was}, and writes of
        the key are in flight: a request whose baseline says C{was} keeps it while they may
        land (it is what they carry, or what they leave), and has C{stored} as its baseline
        if they fail, as a prior of each (L{_unclaim}).
        """
        writers = [user for user in copy.users if key in user.inFlight]
        for user in copy.users:
            if key not in user.inFlight and user.baseline.get(key, _ABSENT) == was:
                for writer in writers:
                    if not any(other is user and k == key for other, k, _ in writer.priors):
                        writer.priors.append((user, key, stored))

    def _restored(
        self, copy: SessionCopy, key: str, was: Any, stored: Any, baselines: bool = True
    ) -> None:
        """
        The store holds C{stored} for C{key} where C{copy}'s users knew C{was}: each record
        of theirs that says C{was} is there (a baseline, unless C{baselines} is false; what
        was there before a change or a write) says C{stored} now.
        """
        for user in copy.users:
            if baselines and user.baseline.get(key, _ABSENT) == was:
                _set(user.baseline, key, stored)
            # These two hold _ABSENT itself for a key that was not there.
            for record in (user.ownBefore, user.inFlight):
                if key in record and record[key] == was:
                    record[key] = stored
            undone = user.undoneTo.get(key) if user.undoneTo else None
            if undone is not None and undone[1] == was:
                undone[1] = stored
            if user.priors:
                user.priors = [
                    (other, k, stored if k == key and prior == was else prior)
                    for other, k, prior in user.priors
                ]

    def isLive(self, session: Any) -> bool:
        return session in self.copies

    def getSession(self, request: Any, secure: bool, cookiename: bytes) -> tuple[Any, bool]:
        """
        The session C{request} may use for the cookie C{cookiename}, and whether it is new:
        the one read for it, or else a new one (C{site.makeSession()}).
        """
        state = request._txsStore or self.stateOf(request)
        if state.readFailure is not None:
            _raiseReadFailure(state.readFailure)
        uid = request.getCookie(cookiename)
        session = state.confirmed.get(uid) if uid else None
        if session is not None and (session.uid != uid or session not in self.copies):
            # Renewed, logged out or dropped since it was read: its id is dead.
            session = None
        made = session is None
        if made:
            session = self.site.makeSession()
        self.attach(request, session, made)
        return session, made

    def stateOf(self, request: Any) -> RequestSessions:
        state = request._txsStore
        if state is None:
            state = request._txsStore = RequestSessions(self)
        return state

    def attach(self, request: Any, session: Any, made: bool = False) -> Change:
        """
        C{request}'s change record for C{session}, started now if it has none.
        """
        state = request._txsStore or self.stateOf(request)
        change = state.changes.get(session)
        if change is not None:
            return change
        copy = self.copies[session]
        if request.finished or request._disconnected:
            # Nothing is written for a request that is over: the session is used as outside
            # any request (saveSession writes it), and nothing waits for the request's end.
            return Change(session, copy, dict(copy.fields), made)
        # Alone, a request sees what the store holds (an unwritten change made outside any
        # request becomes its own); beside others, what they see, their changes included.
        baseline = self.snapshot(session) if copy.users else dict(copy.fields)
        change = state.changes[session] = Change(session, copy, baseline, made)
        copy.users.append(change)
        if not state.watching:
            self._watch(request, state)
        return change

    def inUse(self, session: Any) -> bool:
        """
        Whether a running request reads or uses C{session}'s copy.
        """
        copy = self.copies.get(session)
        return copy is not None and bool(copy.users or copy.readers)

    def release(self, request: Any, result: object = None) -> None:
        """
        C{request} is over: one whose connection was lost before its changes were written
        has them reverted (once its writes in flight have answered); every record is let go,
        but one whose write is in flight, which goes when that write answers.
        """
        state = request._txsStore
        if state is None:
            return
        if isinstance(result, Failure) and not state.settled:
            self.fail(request)
        state.settled = True
        for copy in state.pinned:
            copy.readers -= 1
        state.pinned.clear()
        for change in state.changes.values():
            if change in change.copy.users and not change.abandoned:
                change.copy.users.remove(change)

    def _answeredAbandoned(self, change: Change) -> None:
        """
        The last write of C{change}, whose request failed while it was in flight, has
        answered: what the request changed that the store does not now hold goes back, and
        the record goes.
        """
        change.abandoned = False
        self._revert(change)
        if change in change.copy.users:
            change.copy.users.remove(change)

    # Encoding.

    def encoded(self, namespaces: Any, key: str) -> Any:
        """
        The value of C{key} in C{namespaces} as the store would hold it: bytes, C{_ABSENT},
        or an L{_Unencodable}.
        """
        value = namespaces.get(key, _ABSENT)
        if value is _ABSENT:
            return _ABSENT
        try:
            data = self.store.serializer.dumps(value)
        except Exception:
            return _Unencodable(value)
        return data if isinstance(data, bytes) else _Unencodable(value)

    def snapshot(self, session: Any) -> dict[str, Any]:
        namespaces = session.sessionNamespaces
        return {key: self.encoded(namespaces, key) for key in namespaces}

    def diff(self, change: Change) -> tuple[dict[str, bytes], list[str]]:
        """
        What C{change}'s request changed in its session: the keys it set, encoded, and the
        keys it deleted. L{UnserializableValue}, naming the key, for a value it set that the
        serializer cannot encode or would not give back equal.
        """
        serializer = self.store.serializer
        exactJSON = type(serializer) is JSONSerializer
        atoms = change.copy.atoms
        baseline = change.baseline
        changed: dict[str, bytes] = {}
        namespaces = change.session.sessionNamespaces
        # A dict's items, iterated in C (Namespaces' items() is a Python mapping view).
        current = namespaces.copy()
        for key, value in current.items():
            was = baseline.get(key, _ABSENT)
            if exactJSON:
                known = atoms.get(key)
                if known is not None and known[0] is value:
                    if known[1] != was:
                        changed[key] = known[1]
                    continue
            if not isinstance(key, str):
                raise UnserializableValue(
                    f"the session store needs str namespace keys, not {key!r}"
                )
            try:
                data = serializer.dumps(value)
            except Exception as e:
                if isinstance(was, _Unencodable):
                    continue  # not this request's value
                raise UnserializableValue(
                    f"namespace key {key!r}: the store's serializer cannot encode "
                    f"{type(value).__name__} {_shortRepr(value)}: {e}"
                ) from e
            if not isinstance(data, bytes):
                raise UnserializableValue(
                    f"namespace key {key!r}: the store's serializer gave "
                    f"{type(data).__name__}, not bytes"
                )
            if exactJSON and type(value) in _JSON_ATOMS:
                if data == was:
                    atoms[key] = (value, data)
                    continue
            elif data == was:
                continue
            try:
                key.encode()
                # JSON gives these back as they were; anything else is decoded and compared.
                same = (exactJSON and type(value) in _JSON_ATOMS) or serializer.loads(data) == value
            except Exception as e:
                raise UnserializableValue(f"namespace key {key!r} cannot be stored: {e}") from e
            if not same:
                # Another process would read something else: a tuple as a list, or a dict's
                # int keys as strings. Refused, rather than read back differently.
                raise UnserializableValue(
                    f"namespace key {key!r}: {type(value).__name__} {_shortRepr(value)} would "
                    f"read back from the store as {_shortRepr(serializer.loads(data))}; store "
                    f"it in a form the serializer keeps"
                )
            if exactJSON and type(value) in _JSON_ATOMS:
                atoms[key] = (value, data)
            changed[key] = data
        # In the baseline's order; a request that deleted nothing pays one set difference.
        gone = baseline.keys() - current.keys()
        deleted = [key for key in baseline if key in gone] if gone else []
        if len(atoms) > len(namespaces):
            # Keys deleted since: their values are not kept alive here.
            for key in [key for key in atoms if key not in namespaces]:
                del atoms[key]
        return changed, deleted

    # Writing.

    def flush(self, request: Any, then: Callable[[object], None]) -> bool:
        """
        Write what C{request} changed in its sessions, each in one atomic script; C{False}
        when nothing needs writing or waiting for. Every session is encoded before anything
        is sent: L{UnserializableValue} raised here means nothing was sent. Otherwise, once
        every write has answered, C{then} is called with C{None}, or the first failure.
        """
        state = request._txsStore
        if state is None or state.settled:
            return False
        if state.flushedFinished:
            for change in state.changes.values():
                change.final = True
        plans = []
        waits: list[Deferred[Any]] = []
        for change in state.changes.values():
            session = change.session
            if session not in self.copies:
                # Ended while this request used it: by a logout here (the answer waits for
                # its deletion), elsewhere, or by a rename elsewhere. What it changed (now,
                # or while rendering, even if another request undid it since) cannot be
                # written: a 409, unless this request is the one that logged it out.
                changed, _ = self.diff(change)
                mine = changed or change.own or change.ownWritten or change.renamedFrom is not None
                if mine and not change.endedHere:
                    raise SessionEnded()
                logout = self.logouts.get(session)
                waiting = None if logout is None else logout.wait()
                if waiting is not None:
                    waits.append(waiting)
                continue
            changed, deleted = self.diff(change)
            plan = self._plan(change, changed, deleted)
            if plan is not None:
                plans.append(plan)
        # What else the answer waits for; none of it is moved by this request's own writes
        # (which other requests ride, not this one's other sessions).
        for outcome in state.logouts:
            waiting = outcome.wait()
            if waiting is not None:
                waits.append(waiting)
        for change in state.changes.values():
            if change.riding:
                # Only the writes still in flight: one that failed already has had the
                # baseline put back (its request's revert), so this request wrote the change.
                change.riding = [outcome for outcome in change.riding if outcome.pending]
                waits.extend(outcome.wait() for outcome in change.riding)  # type: ignore[misc]
        if len(plans) == 1 and not waits:
            # The usual case, one write and nothing else: the request is answered from the
            # write's own outcome (see L{_send}).
            self._send(*plans[0], answer=(state, then))
            return True
        for plan in plans:
            waits.append(self._send(*plan))  # type: ignore[arg-type]
        if not waits:
            self._written(state)
            return False
        answered = waits[0] if len(waits) == 1 else _allAnswered(waits)
        answered.addBoth(self._answered, state, then)
        return True

    def _answered(
        self, result: object, state: RequestSessions, then: Callable[[object], None]
    ) -> None:
        if not isinstance(result, Failure):
            self._written(state)
            result = None
        then(result)

    def _written(self, state: RequestSessions) -> None:
        for change in state.changes.values():
            if change.renamedFrom is not None:
                self._renameDone(change)

    def _plan(
        self, change: Change, changed: dict[str, bytes], deleted: list[str]
    ) -> tuple[Change, bytes | None, bytes, dict[str, bytes], list[str]] | None:
        """
        Where C{change}'s write goes: the id it is stored under (C{None} to create it) and the
        id to write; C{None} when there is nothing to write.
        """
        copy = change.copy
        uid = change.session.uid
        if change.renamedFrom is not None and uid != copy.storedAs:
            # This request renewed the session: its write renames it, or makes it.
            source = copy.storedAs or copy.creating
            if source is not None or changed or deleted or change.user or self.storeEmptySessions:
                return change, source, uid, changed, deleted
            return None
        if not changed and not deleted and change.user is None:
            if copy.storedAs is not None or copy.creating is not None:
                return None
            if not (self.storeEmptySessions and change.made):
                return None
        if copy.storedAs is None:
            if copy.creating is not None:
                # Another request's write is making it: this one follows it.
                return change, copy.creating, copy.creating, changed, deleted
            return change, None, uid, changed, deleted
        # Where this request found it; a session renamed since is not this request's to
        # write (the store would refuse it, and the request fails). Renamed here: refused
        # now, without a write that would carry other requests' changes to an id that is
        # dead (they would answer as it does, their own changes unwritten).
        if change.name is not None and copy.storedAs is not None and change.name != copy.storedAs:
            raise SessionEnded()
        target = change.name if change.name is not None else copy.storedAs
        return change, target, target, changed, deleted

    def _send(
        self,
        change: Change,
        source: bytes | None,
        target: bytes,
        changed: dict[str, bytes],
        deleted: list[str],
        answer: tuple[RequestSessions, Callable[[object], None]] | None = None,
    ) -> Deferred[None] | None:
        """
        Send C{change}'s write. The L{Deferred} fires once it has answered, and once the
        writes that carry what the other requests using the session see have (C{None} or a
        failure). With C{answer}, the request's state and continuation, the answer is given
        (L{_answered}) when that Deferred would fire; and when no other request rides the
        write, from the write's own outcome (L{_writeAnswered}), with C{None} returned: a
        store that L{answers<txsession.redis.RedisStore.answers>} calls it from the reply,
        with no Deferred at all.
        """
        copy = change.copy
        riders: dict[Change, None] = {}
        for key, data in changed.items():
            self._claim(change, key, data, riders)
        for key in deleted:
            self._claim(change, key, _ABSENT, riders)
        if source is None:
            copy.creating = target
        elif source != target:
            copy.renaming = target
        options = {}
        if source is None:
            options["created"], options["ends"] = copy.created, copy.ends
        if change.user is not None:
            options["user"] = change.user
        if self._cached is not None:
            options["owner"] = self
        change.sending += 1
        save = self.store.save
        args = (target, source, change.session.sessionTimeout, changed, deleted)
        written = (change, source, target, changed, deleted)
        if answer is not None and not riders:
            answered = partial(self._writeAnswered, written, answer)
            answering = self._answering
            if answering is not None and getattr(save, "__func__", None) is answering:
                try:
                    save(*args, answer=answered, **options)
                except BaseException:
                    # Nothing was sent.
                    answered(Failure())
            else:
                maybeDeferred(save, *args, **options).addBoth(answered)
            return None
        saving = maybeDeferred(save, *args, **options)
        saving.addCallbacks(self._saved, self._notSaved, callbackArgs=written, errbackArgs=written)
        if riders:
            outcome = _Outcome(saving)
            for user in riders:
                user.riding.append(outcome)
            waiting = outcome.wait()
            saving = succeed(None) if waiting is None else waiting
        if answer is not None:
            saving.addBoth(self._answered, *answer)
        return saving

    def _writeAnswered(
        self,
        written: tuple[Any, ...],
        answer: tuple[RequestSessions, Callable[[object], None]],
        result: object,
    ) -> None:
        """
        The write of L{_send} has answered, and it is all its request waits for: the flow's
        bookkeeping for it (L{_saved} or L{_notSaved}), then the request's answer.
        """
        try:
            if isinstance(result, Failure):
                result = self._notSaved(result, *written)
            else:
                result = self._saved(result, *written)
        except BaseException:
            result = Failure()
        self._answered(result, *answer)

    def _claim(self, change: Change, key: str, value: Any, riders: dict[Change, None]) -> None:
        """
        C{change}'s write carries C{key} as C{value}: the other requests using the session
        no longer count it as changed, unless the write fails. Each of them that saw
        another value (C{riders}) may have changed it, so it answers as the write does.
        """
        change.inFlight.setdefault(key, change.baseline.get(key, _ABSENT))
        _set(change.baseline, key, value)
        for user in change.copy.users:
            if user is change:
                continue
            prior = user.baseline.get(key, _ABSENT)
            if prior != value:
                change.contested.add(key)
                change.priors.append((user, key, prior))
                _set(user.baseline, key, value)
                riders[user] = None

    def _saved(
        self,
        _: object,
        change: Change,
        source: bytes | None,
        target: bytes,
        changed: dict[str, bytes],
        deleted: list[str],
    ) -> None:
        copy = change.copy
        change.sending -= 1
        # What the store holds now: what this write carried (not the request's baseline,
        # which a later write of the key, still in flight, has moved to its own value). A
        # request is put back only once its writes have answered (an abandoned one too), so
        # no write answers for a copy already put back.
        fields = copy.fields
        fields.update(changed)
        for key in deleted:
            fields.pop(key, None)
        change.inFlight.clear()
        change.contested.clear()
        change.priors.clear()
        if change.undoneTo:
            # What it wrote is what the store holds: a failure puts that back.
            for key in (*changed, *deleted):
                change.undoneTo.pop(key, None)
        copy.storedAs = target
        if target in copy.uncertain:
            # Stored there now, for certain.
            copy.uncertain = tuple(name for name in copy.uncertain if name != target)
        change.name = target
        change.user = None
        if copy.creating == target:
            copy.creating = None
        if copy.renaming == target:
            copy.renaming = None
        if change.abandoned and not change.sending:
            # Its renewal, if it made one, is done: the store holds the session under the
            # new id.
            self._renameDone(change)
            self._answeredAbandoned(change)

    def _notSaved(
        self,
        reason: Failure,
        change: Change,
        source: bytes | None,
        target: bytes,
        changed: dict[str, bytes],
        deleted: list[str],
    ) -> Failure:
        copy = change.copy
        change.sending -= 1
        unavailable = reason.check(StoreUnavailable)
        if unavailable:
            # Perhaps applied all the same: this process's copy may not be what the store
            # holds (its stamp may even have outlived the write, which answered before
            # too few replicas confirmed it), so the next request reads it.
            carried = change.mayHaveLanded = change.mayHaveLanded or {}
            carried.update(changed)
            carried.update(dict.fromkeys(deleted, _ABSENT))
            if self._forget is not None:
                self._forget(target, self)
                if source is not None and source != target:
                    self._forget(source, self)
        if copy.creating == target:
            copy.creating = None
        if copy.renaming == target:
            copy.renaming = None
        if source != target and unavailable and target not in copy.uncertain:
            # A create or a rename that may have been applied: the session may be stored
            # under target, an id no client was given.
            copy.uncertain += (target,)
        ended = reason.check(SessionEnded)
        if ended and source is not None and copy.storedAs == source:
            if reason.value.renamedTo is None:
                self.dropFound(change.session)
            else:
                self._setAside(change.session)
        if change.abandoned and not change.sending:
            self._answeredAbandoned(change)
        return reason

    def _renameDone(self, change: Change) -> None:
        if change.renamedFrom is None:
            return
        change.renamedFrom = None
        session = change.session
        # Not an id another rename of the session's, still to answer, renames from: the
        # store may hold the session under it until then.
        pending = {user.renamedFrom for user in change.copy.users if user is not change}
        for old in [old for old, s in self.renamedAway.items() if s is session]:
            if old not in pending:
                del self.renamedAway[old]

    # Failing.

    def fail(self, request: Any) -> None:
        """
        C{request} failed: put back what it changed in its sessions, and nothing else;
        drop a session it made that was never stored. Where its write is in flight, that
        write's outcome comes first: its record is put back when the write answers
        (L{Change.abandoned}).
        """
        state = self.stateOf(request)
        if state.settled:
            return
        state.settled = True
        for change in state.changes.values():
            if change.sending:
                change.abandoned = True
            else:
                self._revert(change)

    def rendered(self, request: Any) -> None:
        """
        C{request}'s resource returned from render(): what its sessions differ by now is its
        own doing.
        """
        state = request._txsStore
        if state is None or state.settled:
            return
        finishing = state.held is not None and state.finishHeld
        for change in state.changes.values():
            # Finished while rendering: what it changed is what its last write carries.
            if finishing:
                keys: Any = change.inFlight
                values = change.baseline
            else:
                keys = self._changedKeys(change)
                namespaces = change.session.sessionNamespaces
                values = {key: self.encoded(namespaces, key) for key in keys}
            if keys:
                own, ownBefore = change.own, change.ownBefore
                inFlight, baseline = change.inFlight, change.baseline
                for key in keys:
                    own[key] = values.get(key, _ABSENT)
                    ownBefore[key] = inFlight.get(key, baseline.get(key, _ABSENT))

    def _changedKeys(self, change: Change) -> list[str]:
        """
        The keys whose value in the session differs from C{change}'s baseline, or whose
        write is in flight: what C{change}'s request has changed, as far as anyone can tell.
        """
        namespaces = change.session.sessionNamespaces
        baseline = change.baseline
        keys = dict.fromkeys(change.inFlight)
        for key in namespaces:
            if key not in keys and self.encoded(namespaces, key) != baseline.get(key, _ABSENT):
                keys[key] = None
        for key in baseline:
            if key not in namespaces:
                keys[key] = None
        return list(keys)

    def _revert(self, change: Change) -> None:
        session, copy = change.session, change.copy
        others = [user for user in copy.users if user is not change]
        namespaces = session.sessionNamespaces
        keys = self._changedKeys(change)
        loads = self.store.serializer.loads
        # Its writes answered (a request is put back only then): those that failed in a way
        # that may have been applied all the same, the keys they carried, with their values.
        carried = change.mayHaveLanded
        landing = (
            {key: value for key, value in carried.items() if key in change.inFlight}
            if carried
            else {}
        )
        undoneTo = change.undoneTo
        if undoneTo:
            # A key it keeps another failed request's value for as its baseline, a value that
            # may not be in the store: changed, as far as its revert goes, from what was
            # there before.
            baseline = change.baseline
            keys += [
                key
                for key, entry in undoneTo.items()
                if key not in keys and baseline.get(key, _ABSENT) == entry[0]
            ]
        for key in keys:
            before = change.inFlight.get(key, change.baseline.get(key, _ABSENT))
            if undoneTo:
                entry = undoneTo.get(key)
                if entry is not None and before == entry[0]:
                    # Another failed request's value, whose write may have landed: not
                    # put back.
                    before = entry[1]
            current = self.encoded(namespaces, key)
            setters = [user for user in others if key in user.own]
            if setters and change.own.get(key, _NOT_OWN) == current:
                # This request's value, set while rendering over a value another running
                # request set while rendering: that one's goes back, and it writes it.
                before = setters[-1].own[key]
            else:
                # This request's for certain: it set this value while rendering, it is
                # still there, and no other request set the key while rendering.
                mine = change.own.get(key, _NOT_OWN) == current and not setters
                # A value nobody can write is nobody's to keep: it goes back whoever else
                # saw it.
                # (Another request that saw it changed writes it: one still running, and
                # with a write left to send.)
                theirs = not (mine or isinstance(current, _Unencodable)) and (
                    (
                        key in change.contested
                        and any(k == key and user in copy.users for user, k, _ in change.priors)
                    )
                    or any(
                        user.baseline.get(key, _ABSENT) != current
                        for user in others
                        if not user.final
                    )
                    # Another request's write in flight carries the value there now, a value
                    # this request did not set: whether it stays is that write's outcome (its
                    # own revert if it fails).
                    or (
                        change.own.get(key, _NOT_OWN) != current
                        and any(
                            key in user.inFlight and user.baseline.get(key, _ABSENT) == current
                            for user in others
                        )
                    )
                )
                if theirs:
                    # Another request changed it too: it stays, and that request writes it.
                    # The baselines this request's write moved go back to what they were,
                    # unless that write may have landed and its value is not there now: then
                    # they keep its value, and what they were is what their own failure
                    # puts back.
                    mayHold = landing.get(key)  # encoded, or _ABSENT: never None
                    self._unclaim(change, key, None if mayHold == current else mayHold)
                    # A request that began while this one's value was there took it as its
                    # baseline: that value is undone, so what was there before is its
                    # baseline now (else its own revert would put back this failed request's
                    # value).
                    set_ = change.own.get(key, _NOT_OWN)
                    if set_ is not _NOT_OWN:
                        # Unless this request's write carried that value and may have landed:
                        # then the store may hold it, so such a request keeps it as its baseline
                        # (it writes its own change over it, whatever that write's outcome),
                        # and puts back what was there before if it fails too.
                        kept = key in landing and landing[key] == set_
                        for user in others:
                            if (
                                user.serial > change.serial
                                and user.baseline.get(key, _ABSENT) == set_
                            ):
                                if kept:
                                    self._leaveUndone(user, key, set_, before)
                                else:
                                    _set(user.baseline, key, before)
                    continue
            if before is _ABSENT:
                namespaces.pop(key, None)
            elif isinstance(before, _Unencodable):
                namespaces[key] = before.value
            else:
                namespaces[key] = loads(before)
            # A request whose baseline this request's write moved sees again what it saw
            # before: where that differs from the value put back (a change of its own, made
            # while it rendered, which this request started from), it still writes it.
            claimed = self._unclaim(change, key)
            for user in others:
                # A request that began after this one and saw its value as unchanged (it
                # took it as its baseline) has what was there before as its baseline now.
                # Not one that saw it changed (its own, or another failing request's): it
                # still does, and writes or reverts it. Nor one that began before this one,
                # whose baseline this request's change never was, although it may be equal
                # (a key that request added, which this one deleted): it writes its change.
                if (
                    user not in claimed
                    and user.serial > change.serial
                    and user.baseline.get(key, _ABSENT) == current
                ):
                    _set(user.baseline, key, before)
        if change.own:
            later = [user for user in others if user.serial > change.serial]
            if later:
                self._disown(change, later, landing)
        change.inFlight.clear()
        change.contested.clear()
        change.priors.clear()
        if change.renamedFrom is not None:
            self._unrename(change)
        if change.made and copy.storedAs is None and copy.creating is None:
            self.dropFound(session)

    def _leaveUndone(self, user: Change, key: str, carried: Any, before: Any) -> None:
        """
        C{user} keeps C{carried}, the value a failed request's write carried for C{key} and
        that may have landed, as its baseline; its own failure puts back C{before}.
        """
        if user.undoneTo is None:
            user.undoneTo = {}
        user.undoneTo[key] = [carried, before]

    def _disown(self, change: Change, later: list[Change], landing: dict[str, Any]) -> None:
        """
        C{change}'s request failed. Where a request that began after it took a value it set
        while rendering as what the store holds, or as what was there before its own write
        in flight (the write's prior, or one it keeps for another such request), what was
        there before the failed change takes its place: if that request or its write fails
        too, its revert puts that back, not the failed value (which the next request would
        then write as its own change). Not where the value is also another's: the store
        holds it, or another request's write carries it.
        """
        fields = change.copy.fields
        users = change.copy.users
        # Not a value the store holds, or that another request's write in flight carries:
        # that is no longer only the failed request's, whoever set it first.
        failed = {
            key: value
            for key, value in change.own.items()
            if fields.get(key, _ABSENT) != value
            and not any(
                key in user.inFlight and user.baseline.get(key, _ABSENT) == value
                for user in users
                if user is not change
            )
        }
        if not failed:
            return
        befores = change.ownBefore
        # Values the failed request's own write carried, and may have landed: the store may
        # hold them, so they stay where they are, and what was there before is what a failure
        # puts back (L{_leaveUndone}).
        namespaces = change.session.sessionNamespaces
        maybe = {
            key: value
            for key, value in failed.items()
            if landing.get(key, _NOT_OWN) == value and self.encoded(namespaces, key) != value
        }
        for key in maybe:
            del failed[key]
        for user in later:
            # Its baseline, too, where it took the failed value as what the store holds
            # (a key the failing request's revert did not put back, because a request after
            # it changed the key again).
            baseline = user.baseline
            for key, value in maybe.items():
                if (
                    baseline.get(key, _ABSENT) == value or user.inFlight.get(key, _NOT_OWN) == value
                ) and not (user.undoneTo and key in user.undoneTo):
                    self._leaveUndone(user, key, value, befores[key])
            if not failed:
                continue
            for key, value in failed.items():
                if baseline.get(key, _ABSENT) == value:
                    _set(baseline, key, befores[key])
            inFlight = user.inFlight
            for key, prior in inFlight.items():
                if key in failed and prior == failed[key]:
                    inFlight[key] = befores[key]
            if user.priors:
                user.priors = [
                    (
                        other,
                        key,
                        befores[key]
                        if key in failed and prior == failed[key] and other.serial > change.serial
                        else prior,
                    )
                    for other, key, prior in user.priors
                ]

    def _unclaim(self, change: Change, key: str, carried: Any = None) -> set[Change]:
        """
        Undo what C{change}'s writes in flight did to the other requests' baselines for
        C{key} (L{_claim}): each has what it saw before the first of them again. Returns
        those requests.

        With C{carried}: a write of C{change}'s that may have landed carried that value for
        C{key}, which the session no longer holds. A request whose baseline it moved to that
        value keeps it (L{_leaveUndone}), so that it writes what the session holds now
        whether or not the write landed. (Where the session holds the carried value, the
        caller passes none, and the baselines go back, so that those requests write it
        themselves.)
        """
        restored: set[Change] = set()
        for user, userKey, prior in change.priors:
            if userKey != key or user in restored:
                continue
            restored.add(user)
            if carried is not None and user.baseline.get(key, _ABSENT) == carried:
                self._leaveUndone(user, key, carried, prior)
            else:
                _set(user.baseline, key, prior)
        return restored

    def _unrename(self, change: Change) -> None:
        """
        Give back the id C{change}'s request renewed its session from, when the store
        did not take the rename.
        """
        session, old = change.session, change.renamedFrom
        change.renamedFrom = None
        for name in [name for name, s in self.renamedAway.items() if s is session]:
            del self.renamedAway[name]
        copy = change.copy
        if not self.isLive(session) or copy.storedAs == session.uid or old is None:
            return
        sessions = self.site.sessions
        if sessions.get(session.uid) is session:
            del sessions[session.uid]
        session.uid = old
        sessions[old] = session

    # Copies: made, renewed, ended.

    def adopt(self, session: Any, storedAs: bytes | None) -> None:
        """
        Make C{session} this process's copy of the session stored as C{storedAs} (C{None}:
        not stored yet), its fields unknown until read or written.
        """
        call = session._expireCall
        if not isinstance(call, _txsession.SharedDelayedCall):
            # A session class that files its own reactor call (Twisted's): that call would
            # run expire(), a logout; the site's timer drops the copy instead.
            if call is not None and call.active():
                call.cancel()
            session._expireCall = self.site._sharedTimer.add(session, session.sessionTimeout)
        copy = self.copies[session] = SessionCopy(storedAs, {})
        if storedAs is None:
            copy.created = self.site.reactor.seconds()
            absolute = self.site.absoluteTimeout
            copy.ends = None if absolute is None else copy.created + absolute
        # First: an app's callback that raises stops expire() there, and the logout must
        # not be left undone.
        session.expireCallbacks.insert(
            0, partial(_copyEnded, weakref.ref(self), weakref.ref(session))
        )

    def renew(self, request: Any, session: Any, old: bytes, user: str | None = None) -> None:
        """
        C{request} gave C{session} a new id in place of C{old} (and bound it to C{user}, when
        given): its write renames the stored session (and binds it), and C{old} is dead here
        from now on. A request that writes nothing more (its client left, its response went
        out, or its last write was sent with its finish) has the rename written at once, as
        L{saveSession} writes a change made outside any request, and given back here if
        the store does not take it.
        """
        over = request.finished or request._disconnected
        change = None if over else self.attach(request, session)
        if change is None or change.final:
            self.renamedAway[old] = session
            writing = self._writeOutside(session, old, user)
            writing.addErrback(
                lambda reason: _log.failure("while renaming a session after its request", reason)
            )
            return
        if change.renamedFrom is None:
            change.renamedFrom = old
        if user is not None:
            change.user = user
        self.renamedAway[old] = session

    def createdAt(self, session: Any) -> float | None:
        copy = self.copies.get(session)
        return None if copy is None else copy.created

    def ended(self, session: Any) -> None:
        """
        C{session}'s C{expire()} ran: unless this process is only dropping its copy, a
        logout, which deletes it in the store, under every id it has or is being given.
        """
        copy = self.copies.pop(session, None)
        for name in [name for name, s in self.renamedAway.items() if s is session]:
            del self.renamedAway[name]
        if copy is not None and copy.storedAs is not None and self._forget is not None:
            self._forget(copy.storedAs, self)
        if copy is None or self.droppingLocally is session:
            return
        # The copy's timer goes now, whatever the expire callbacks after this one do.
        _cancel(session)
        state = None if self.rendering is None else self.rendering._txsStore
        mine = None if state is None else state.changes.get(session)
        if mine is not None:
            mine.endedHere = True
        names = copy.names()
        if names:
            deleting = self.store.delete(*names)
            outcome = self.logouts[session] = _Outcome(
                deleting, "while deleting a session from the store"
            )
            if state is not None:
                state.logouts.append(outcome)

    def dropLocally(self, session: Any) -> None:
        """
        End this process's copy of C{session} (its idle timeout here, or an eviction),
        leaving the stored session as it is; a copy a running request uses stays.
        """
        copy = self.copies.get(session)
        if copy is not None and (copy.users or copy.readers):
            call = getattr(session, "_expireCall", None)
            if call is None or not call.active():
                session._expireCall = self.site._sharedTimer.add(session, session.sessionTimeout)
            return
        self._endCopy(session)

    def _endCopy(self, session: Any) -> None:
        if not self.isLive(session):
            return
        outer, self.droppingLocally = self.droppingLocally, session
        try:
            session.expire()
        finally:
            self.droppingLocally = outer
            self.copies.pop(session, None)
            # An expire callback that raised left the copy's timer filed, as Twisted's
            # expire() leaves it; the copy is over all the same.
            _cancel(session)

    def dropFound(self, session: Any) -> None:
        """
        End this process's copy of C{session}, found to be over in the course of a request:
        an expire callback's exception is logged, not raised into the request.
        """
        try:
            self._endCopy(session)
        except KeyError:
            # Twisted's expire() raises KeyError(uid) when the site no longer holds the
            # session: logged without the id.
            _log.error("while dropping this process's copy of a session: the site had no entry")
        except Exception:
            _log.failure("while dropping this process's copy of a session")

    def _setAside(self, session: Any) -> None:
        """
        Forget this process's copy of C{session}, which another process renamed: the
        session lives on under its new id, so its expire callbacks do not run.
        """
        copy = self.copies.pop(session, None)
        if copy is not None and copy.storedAs is not None and self._forget is not None:
            self._forget(copy.storedAs, self)
        sessions = self.site.sessions
        if sessions.get(session.uid) is session:
            del sessions[session.uid]
        _cancel(session)
        absolute = self.site._absolute
        call = None if absolute is None else absolute.pop(session, None)
        if call is not None and call.active():
            call.cancel()

    def saveSession(self, session: Any) -> Deferred[None]:
        """
        Write C{session}'s unwritten changes now, for a session changed outside a request.
        """
        return self._writeOutside(session)

    def _writeOutside(
        self, session: Any, renamedFrom: bytes | None = None, user: str | None = None
    ) -> Deferred[None]:
        """
        Write C{session}'s unwritten changes, outside any request; with C{renamedFrom}, as
        the rename of the stored session from that id to its own (binding it to C{user},
        when given), which is given back if it fails.
        """
        copy = self.copies.get(session)
        if copy is None:
            logout = self.logouts.get(session)
            waiting = None if logout is None else logout.wait()
            return succeed(None) if waiting is None else waiting
        # What the store holds, except the keys running requests changed while rendering,
        # which they write or revert themselves.
        baseline = dict(copy.fields)
        namespaces = session.sessionNamespaces
        for other in copy.users:
            for key in other.own.keys() & set(self._changedKeys(other)):
                _set(baseline, key, self.encoded(namespaces, key))
        change = Change(session, copy, baseline, made=False)
        change.final = True
        change.renamedFrom = renamedFrom
        change.user = user
        copy.users.append(change)

        def done(result: object) -> object:
            if isinstance(result, Failure):
                self._revert(change)
            else:
                self._renameDone(change)
            if change in copy.users:
                copy.users.remove(change)
            return result

        try:
            plan = self._plan(change, *self.diff(change))
        except Exception:
            return fail().addBoth(done)
        if plan is None:
            return succeed(None).addBoth(done)
        if renamedFrom is not None and renamedFrom == copy.renaming:
            # A rename to the id it renames from is in flight (a request's, or another
            # renewal's after its request): this one follows it, from there. Sent after it
            # on the same connection, it runs after it, and fails if that one did.
            plan = (plan[0], renamedFrom, *plan[2:])
        return self._send(*plan).addBoth(done)


def _cancel(session: Any) -> None:
    call = getattr(session, "_expireCall", None)
    if call is not None and call.active():
        call.cancel()


def _answeringSave(store: Any) -> Any:
    """
    The function of C{store}'s C{save} if it takes C{answer=} (L{ISessionStore}), as the
    class that defines it says; else C{None}. A subclass or a wrapper that overrides
    C{save} (written against the Deferred it returns, say), or a C{save} set on the store
    itself, is called as a store without the option is, unless its class says so.
    """
    for klass in type(store).__mro__:
        if "save" in vars(klass):
            return vars(klass)["save"] if vars(klass).get("answers", False) else None
    return None


def _raiseReadFailure(failure: Failure) -> None:
    failure.raiseException()


def _allAnswered(waits: list[Deferred[Any]]) -> Deferred[None]:
    """
    Fires once every one of C{waits} has answered: with C{None}, or the first failure.
    """
    done: Deferred[None] = Deferred()
    results: list[object] = []

    def answered(result: object) -> None:
        results.append(result)
        if len(results) == len(waits):
            failures = [r for r in results if isinstance(r, Failure)]
            if failures:
                done.errback(failures[0])
            else:
                done.callback(None)

    for waiting in waits:
        waiting.addBoth(answered)
    return done


class _Outcome:
    """
    The outcome of a store write or deletion, which any number of requests can wait for.
    """

    __slots__ = ("_result", "_waiters")

    def __init__(self, operation: Deferred[None], logFailure: str | None = None) -> None:
        self._result: object = _PENDING
        self._waiters: list[Deferred[None]] = []

        def done(result: object) -> None:
            if isinstance(result, Failure) and logFailure is not None:
                _log.failure(logFailure, result)
            self._result = result
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                _fire(waiter, result)

        operation.addBoth(done)

    @property
    def pending(self) -> bool:
        return self._result is _PENDING

    def wait(self) -> Deferred[None] | None:
        """
        A L{Deferred} for the outcome; C{None} once the operation succeeded.
        """
        if self._result is None:
            return None
        waiter: Deferred[None] = Deferred()
        if self._result is _PENDING:
            self._waiters.append(waiter)
        else:
            _fire(waiter, self._result)
        return waiter


_PENDING = object()
_SERIALS = count()


def _fire(waiter: Deferred[None], result: object) -> None:
    if isinstance(result, Failure):
        waiter.errback(result)
    else:
        waiter.callback(None)


def _copyEnded(flowRef: Any, sessionRef: Any) -> None:
    flow, session = flowRef(), sessionRef()
    if flow is not None and session is not None:
        flow.ended(session)
