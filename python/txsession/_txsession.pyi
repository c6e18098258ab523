"""
The compiled core of txsession. Drop-in replacements for
C{twisted.python.components.Componentized} and C{twisted.web.server.Session}.
"""

from collections.abc import Callable, ItemsView, Iterator, KeysView, ValuesView
from typing import Any, ClassVar, SupportsIndex, TypeVar, final

_T = TypeVar("_T")

__all__ = [
    "Componentized",
    "Namespaces",
    "Session",
    "__version__",
    "RespDecoder",
    "SessionLru",
    "SharedDelayedCall",
    "SharedTimer",
    "bind_site",
    "bind_twisted_session",
    "encode_commands",
    "key_slot",
    "reseed_after_fork",
    "session_id",
]
__version__: str

@final
class Namespaces:
    """
    An insertion-ordered map held in Rust that behaves like a dict: any hashable key,
    C{KeyError} for a missing key, C{RuntimeError} when it changes size during iteration.
    Registered as a C{collections.abc.MutableMapping}. A new session's C{sessionNamespaces} is
    one.
    """

    def __new__(cls, other: Any = None, /, **kwargs: Any) -> Namespaces: ...
    def __len__(self) -> int: ...
    def __bool__(self) -> bool: ...
    def __getitem__(self, key: Any, /) -> Any: ...
    def __setitem__(self, key: Any, value: Any, /) -> None: ...
    def __delitem__(self, key: Any, /) -> None: ...
    def __contains__(self, key: object, /) -> bool: ...
    def __iter__(self) -> Iterator[Any]: ...
    def __reversed__(self) -> Iterator[Any]: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __ne__(self, other: object, /) -> bool: ...
    def __or__(self, other: Any, /) -> dict[Any, Any]: ...
    def __ror__(self, other: Any, /) -> dict[Any, Any]: ...
    def __ior__(self, other: Any, /) -> Namespaces: ...
    __hash__: ClassVar[None]  # type: ignore[assignment]
    def get(self, key: Any, default: Any = None) -> Any:
        """The value for C{key}, or C{default}."""
    def setdefault(self, key: Any, default: Any = None) -> Any:
        """The value for C{key}, storing C{default} first when it is absent."""
    def pop(self, key: Any, *default: Any) -> Any:
        """Remove C{key} and return its value, or C{default}; C{KeyError} without one."""
    def popitem(self) -> tuple[Any, Any]:
        """Remove and return the last pair added; C{KeyError} when empty."""
    def update(self, other: Any = None, /, **kwargs: Any) -> None:
        """Add the pairs of a mapping or of an iterable of pairs, then C{kwargs}."""
    def clear(self) -> None: ...
    def copy(self) -> dict[Any, Any]:
        """A shallow copy, as a plain dict."""
    def keys(self) -> KeysView[Any]: ...
    def values(self) -> ValuesView[Any]: ...
    def items(self) -> ItemsView[Any, Any]: ...
    def __reduce__(self) -> tuple[Any, ...]: ...

class Componentized:
    """
    The methods of C{twisted.python.components.Componentized}, run in Rust over the instance's
    C{_adapterCache} dict, where Twisted keeps it. C{txsession.Componentized} puts them ahead of
    Twisted's class; instances are made by C{object.__new__} and set up by Twisted's
    C{__init__}. Adapters are found through Twisted's global registry.
    """

    _adapterCache: dict[str, Any]

    def locateAdapterClass(self, klass: type, interfaceClass: Any, default: _T) -> Any | _T:
        """The adapter factory registered for C{klass} and C{interfaceClass}, or C{default}."""
    def setAdapter(self, interfaceClass: Any, adapterClass: Callable[[Any], Any]) -> None:
        """Cache C{adapterClass(self)} as the component for C{interfaceClass}."""
    def addAdapter(self, adapterClass: Callable[[Any], _T], ignoreClass: Any = 0) -> _T:
        """Make C{adapterClass(self)}, add it with C{addComponent} and return it."""
    def setComponent(self, interfaceClass: Any, component: Any) -> None:
        """Cache C{component} as the provider of C{interfaceClass}."""
    def addComponent(self, component: Any, ignoreClass: Any = 0) -> None:
        """
        Cache C{component} for each interface it provides: all of them when C{ignoreClass}
        is true, otherwise those for which its class is the registered adapter of mine.
        """
    def unsetComponent(self, interfaceClass: Any) -> None:
        """Forget the component for C{interfaceClass}; C{KeyError} when there is none."""
    def removeComponent(self, component: Any) -> list[Any]:
        """Forget C{component} wherever it is cached; return those interfaces."""
    def getComponent(self, interface: Any, default: Any = None) -> Any:
        """
        The cached component for C{interface}, else C{interface.__adapt__(self)}, cached
        unless the adapter has a true C{temporaryAdapter} and added for all its interfaces
        when it has a true C{multiComponent}; C{default} when nothing adapts.
        """
    def __conform__(self, interface: Any) -> Any:
        """C{getComponent(interface)}, so that calling an interface adapts me."""
    def __reduce_ex__(self, protocol: SupportsIndex, /) -> str | tuple[Any, ...]:
        """C{object.__reduce_ex__} at protocol 2 at least, so that every protocol pickles."""

class Session(Componentized):
    """
    The methods of C{twisted.web.server.Session} but C{touch} and C{expire}, run in Rust over
    the instance attributes where Twisted keeps the session's state. C{txsession.Session}
    puts them ahead of Twisted's class.
    """

    sessionTimeout: float
    site: Any
    uid: bytes
    _reactor: Any
    lastModified: float
    _expireCall: Any
    expireCallbacks: list[Callable[[], object]]
    sessionNamespaces: Any

    def __init__(self, site: Any, uid: bytes, reactor: Any = None) -> None:
        """
        Start a session for C{site} with id C{uid}, timed on C{reactor} or else
        C{site.reactor}: Twisted's C{super().__init__()}, then the attributes, then
        C{self.touch()}.
        """
    def startCheckingExpiration(self) -> None:
        """Schedule C{self.expire} in C{sessionTimeout} seconds with the reactor's callLater."""
    def notifyOnExpire(self, callback: Callable[[], object]) -> None:
        """Call C{callback} when the session expires or logs out."""
    # touch and expire are Python, in txsession.Session (python/txsession/_session.py).

@final
class SharedTimer:
    """
    A site's shared expiry timer: every session's expiry in one Rust heap, driven by one
    pending call on C{reactor}. C{log_failure(exception)} is called for each C{expire} that
    raises. With C{expire_with}, a session due is ended by C{expire_with(session)} in place of
    its C{expire()}.
    """

    def __new__(
        cls,
        reactor: Any,
        log_failure: Callable[[BaseException], object],
        expire_with: Callable[[Any], object] | None = None,
    ) -> SharedTimer: ...
    def add(self, session: Any, timeout: float) -> SharedDelayedCall:
        """File C{session}'s expiry C{timeout} seconds from now; return its call."""
    @property
    def reactor_(self) -> Any:
        """The reactor the timer runs on."""
    def __len__(self) -> int:
        """How many sessions are pending."""
    def _fire(self) -> None:
        """Run by the reactor call: expire every session due, then ask for the next call."""

@final
class SharedDelayedCall:
    """
    A session's expiry on a L{SharedTimer}. Provides C{IDelayedCall} with Twisted's
    C{DelayedCall} arithmetic: due at C{time + delayed_time}.
    """

    def getTime(self) -> float:
        """C{time + delayed_time}."""
    def active(self) -> bool:
        """Neither called nor cancelled."""
    def cancel(self) -> None:
        """Unschedule; C{AlreadyCancelled} or C{AlreadyCalled} when that is too late."""
    def _cancelIfActive(self) -> bool:
        """C{cancel()} if C{active()}, from C{Session.expire}: whether it was active."""
    def _resetFrom(self, reactor: Any, now: float, timeout: float) -> None:
        """C{reset(timeout)} from C{Session.touch}, which just read C{now} from C{reactor}."""
    def reset(self, secondsFromNow: float) -> None:
        """Reschedule C{secondsFromNow} seconds from the reactor's now."""
    def delay(self, secondsLater: float) -> None:
        """Reschedule C{secondsLater} seconds after the current time due."""
    @property
    def time(self) -> float: ...
    @property
    def delayed_time(self) -> float: ...
    @property
    def called(self) -> bool: ...
    @property
    def cancelled(self) -> bool: ...

@final
class SessionLru:
    """
    A site's sessions by how recently they were touched, for C{maxSessions}.
    """

    def add(self, session: Any, sessions: Any) -> None:
        """File a new session of C{sessions}, the site's mapping of id to session."""
    def oldest(self, sessions: Any) -> Any:
        """The live session of C{sessions} touched least recently, or C{None}."""
    def __len__(self) -> int: ...

def bind_site(site: type) -> None:
    """Name the site class whose instances may carry a shared timer; called once."""

def bind_twisted_session(twisted_session: type, componentized_init: Any, own_touch: Any) -> None:
    """
    Name the Twisted class C{Session.__init__} stands in for, Twisted's
    C{Componentized.__init__}, and C{txsession.Session.touch}, which C{__init__} does itself
    when an instance's class has it; called once by C{txsession}.
    """

def session_id() -> bytes:
    """
    A new session id: 32 bytes from a ChaCha generator seeded by the operating system,
    hex-encoded to 64 lowercase ASCII bytes.
    """

def reseed_after_fork() -> None:
    """Forget the id generator's state, so that a forked child seeds its own."""

@final
class RespDecoder:
    """
    Redis replies (RESP2) from a byte stream fed in pieces of any size, decoded in Rust:
    C{bytes} for bulk strings, C{str} for simple strings, C{int}, C{None} for null, lists for
    arrays, and C{error_type(message)} for an error reply.

    With C{resp3=True} it decodes RESP3 too (after C{HELLO 3}), RESP2's nulls C{$-1} and
    C{*-1} included: C{None} for C{_}, C{True}/C{False} for booleans, C{float} for doubles
    (C{inf}, C{-inf} and C{nan} too), C{int} for big numbers (of any size within Python's limit
    on an C{int}'s digits), C{bytes} for a verbatim string's text (without its format), a
    C{dict} for a map and a C{list} for a set (both in no particular order, and keyed and
    converted as above), and C{error_type(message)} for a blob error. A push (out-of-band data,
    such as a client-side caching invalidation) is a C{tuple}, and no reply ever is: an
    invalidation comes out as C{(b"invalidate", [b"key", ...])}, or with C{None} for a flush.
    An attribute is dropped and the reply it comes before is the value. Streamed RESP3 types
    (C{$?}, C{*?}, chunks), which Redis does not send to clients, raise C{ValueError}, as do a
    set element or map key that is an aggregate.

    Each byte is looked at once to find where its reply ends, and the complete reply is then
    decoded once, so a reply costs time linear in its size however it is split. A reply over
    C{max_size} bytes (default 512 MiB, Redis's C{proto-max-bulk-len}) raises C{ValueError}
    as soon as that is known: from a bulk string's length, from an array's (or a map's, a
    set's, a push's) length at 3 bytes an element, or from the bytes received, never after
    buffering it whole. Arrays (and RESP3's other aggregates) nest at most 64 deep. After a
    C{ValueError} the stream's place is lost and every later C{feed} raises C{ValueError}:
    close the connection. With C{resp3=True} that is so for any exception from C{feed}, such
    as one from C{error_type}, since the replies after it in the same call are lost.
    """

    def __new__(
        cls,
        error_type: Callable[[str], Any],
        max_size: int = 512 * 1024 * 1024,
        resp3: bool = False,
    ) -> RespDecoder: ...
    def feed(self, data: bytes) -> list[Any]:
        """
        Every reply that C{data} completes, in order; C{ValueError} for bytes not RESP2 (nor
        RESP3, with C{resp3=True}) or for a reply over C{max_size} bytes.
        """
    @property
    def max_size(self) -> int:
        """The most bytes one reply (a top-level frame, all its bytes counted) may take."""
    @property
    def scanned(self) -> int:
        """
        Bytes looked at so far: each received byte once to find its reply's end, and each
        complete reply's bytes once more to decode it. At most twice the bytes fed.
        """
    @property
    def capacity(self) -> int:
        """
        Bytes allocated for the received bytes not yet decoded. Given back once a reply that
        made it grow over 1 MiB is consumed.
        """
    @property
    def buffered(self) -> int:
        """
        Bytes received and held as the start of a reply not complete yet: 0 when the stream
        was fed up to a reply's end.
        """

def encode_commands(commands: list[list[bytes]]) -> bytes:
    """Each command (its arguments, as C{bytes}) as a RESP2 array, one after the other."""

def key_slot(key: bytes) -> int:
    """
    The Redis Cluster hash slot of C{key}: CRC16 of the key, or of its first non-empty
    C{{...}} hash tag, modulo 16384.
    """
