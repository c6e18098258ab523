"""
What a session store is to L{txsession.Site}: L{ISessionStore}, which
L{txsession.redis.RedisStore} implements and another backend could; L{ISerializer} and the
default L{JSONSerializer}; and the errors a store raises.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring as _jsonString
from typing import Any

from zope.interface import Attribute, Interface, implementer


def _shortRepr(value: object) -> str:
    """
    C{repr(value)}, cut to 80 characters: how messages show a value.
    """
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class StoreUnavailable(Exception):
    """
    The session store could not be reached, or did not answer within its timeout. A request
    that asks for its session then gets a 503.
    """


class StoreError(Exception):
    """
    The session store answered with an error.
    """


class SessionEnded(Exception):
    """
    The stored session ended while a request used it: logged out or timed out
    (C{renamedTo} is C{None}), or given a new id by another request (C{renamedTo} is that id,
    which is never shown in the message). The request's writes were not applied; it gets a
    409.
    """

    def __init__(self, renamedTo: bytes | None = None) -> None:
        super().__init__(
            "the session ended while this request used it"
            if renamedTo is None
            else "the session was given a new id while this request used it"
        )
        self.renamedTo = renamedTo


class UnserializableValue(TypeError):
    """
    A session namespace entry the store's serializer cannot encode, or would not give back
    equal (a tuple or a dict with non-C{str} keys under JSON), or a key that is not a C{str}.
    The request sees a 500, and the stored session stays as it was.
    """


class ISerializer(Interface):
    """
    Turns session namespace values into bytes for a store, and back.
    """

    def dumps(value: Any) -> bytes:
        """
        C{value} as bytes; raises for a value it cannot encode.
        """

    def loads(data: bytes) -> Any:
        """
        The value that C{dumps} encoded as C{data}.
        """


@implementer(ISerializer)
class JSONSerializer:
    """
    JSON (UTF-8, compact): loading never runs code. Values round-trip as JSON does: tuples
    come back as lists and dict keys as strings; C{bytes}, sets, C{NaN} and other objects
    cannot be stored.
    """

    def dumps(self, value: Any) -> bytes:
        # The values sessions mostly hold are written here as json.dumps writes them
        # (encode_basestring is what it uses for a str, float.__repr__ for a finite float),
        # without the encoder object it makes on every call; everything else, subclasses
        # and infinities included, goes through it.
        kind = type(value)
        if kind is str:
            return _jsonString(value).encode()
        if kind is int:
            return b"%d" % value
        if kind is bool:
            return b"true" if value else b"false"
        if value is None:
            return b"null"
        if kind is float and value - value == 0.0:
            return float.__repr__(value).encode()
        return json.dumps(
            value, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()

    def loads(self, data: bytes) -> Any:
        return json.loads(data)


class StoredFields(dict):  # type: ignore[type-arg]
    """
    A stored session's fields, as L{ISessionStore.load} gives them: each namespace key
    (C{str}) and its serialized value (C{bytes}); and what the store keeps beside them:
    C{created} and C{ends}, the reactor times it was made and its absolute timeout runs out
    (C{None} when unknown or none), and C{user}, an opaque name of the user it is bound to
    (C{None} when none). C{stamp}: for a store with client-side caching, its token for the
    read that gave these fields (see C{applied}), else C{None}.
    """

    __slots__ = ("created", "ends", "user", "stamp")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.created: float | None = None
        self.ends: float | None = None
        self.user: bytes | None = None
        self.stamp: Any = None


class ISessionStore(Interface):
    """
    Where a L{txsession.Site} keeps its sessions, shared by every process that uses it.

    A session is a set of fields, each a namespace key (C{str}) and its serialized value
    (C{bytes}), under the session's id. A stored session lives until no process has used it
    for its timeout: reading it and writing it both restart that time. Every method returns
    a L{Deferred}, which fails with L{StoreUnavailable} when the store cannot be reached in
    time, and runs on the reactor that L{bind} gave.
    """

    serializer = Attribute("The L{ISerializer} for namespace values.")

    def bind(reactor: Any) -> None:
        """
        Use C{reactor} (the site's) for connecting and for time. C{ValueError} when the store
        is already bound to another.
        """

    def load(uids: list[bytes]) -> Any:
        """
        Read the sessions C{uids} and restart their timeouts, all in one round trip. Fires
        with a list, in the same order, of each session's fields (C{dict[str, bytes]}); the
        new id (C{bytes}) of a session that was renamed from that id; or C{None} for a
        session that is not stored (it never was, it timed out or it was deleted).
        """

    def save(
        uid: bytes,
        storedAs: bytes | None,
        timeout: float,
        changed: dict[str, bytes],
        deleted: list[str],
    ) -> Any:
        """
        In one round trip, atomically whatever the number of fields: set the fields
        C{changed}, delete the fields C{deleted}, and give the session C{timeout} seconds
        from now. C{storedAs} is the id the session is stored under, C{None} for a session
        not stored yet, which this makes; when it differs from C{uid}, the stored session is
        renamed to C{uid} first, and C{storedAs} names C{uid} until C{timeout} runs out (so a
        late write to it fails, and a late delete follows it). Fires with C{None} when
        written. Fails with L{SessionEnded}, writing nothing, when the session C{storedAs}
        is gone or was renamed; with L{UnserializableValue} for a field name that cannot be
        encoded.
        """

    def delete(*uids: bytes) -> Any:
        """
        Delete the sessions C{uids}, everywhere, and any session one of them was renamed to.
        Fires with C{None}.
        """

    def close() -> Any:
        """
        Disconnect and stop reconnecting. Fires when done.
        """

    # Optional, client-side caching: a store whose attribute cache is true has cached(uid,
    # owner) (a true value when the owner's copy of the session is still what the store
    # holds: use it without reading), applied(fields) (the owner took in fields it loaded:
    # until then, and if it fails to, its copy is not what they say) and forget(uid, owner)
    # (the owner dropped its copy), and its load and save take owner= (the copy read or
    # written is that owner's). RedisStore's cache=True; the owner is a site's request flow.
    #
    # Optional: a store whose class that defines save also sets answers = True takes
    # answer= in save: a callable given what the Deferred would fire with (None, or a
    # Failure), and save then returns None. Either save raises, having sent nothing and
    # without calling answer, or answer is called once. (RedisStore answers from the reply,
    # with no Deferred: see storeflow's _send. A subclass that overrides save, or a save
    # set on the store itself, is called without answer=, unless its class sets answers.)
    #
    # Optional: renewedId(uid, fresh) -> bytes. When a store has it, renewSession gives a
    # renamed session the id it returns (made from the fresh random id) instead of the fresh
    # id itself: RedisStore with cluster=True keeps the old id's hash tag, so that the rename
    # stays on one node.
