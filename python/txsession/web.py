"""
L{Site}: Twisted's L{twisted.web.server.Site} with txsession's sessions, session ids made in
Rust, opt-in session cookie options (C{HttpOnly}, C{SameSite}, C{Max-Age}, its name),
sliding expiry, a shared expiry timer, a session cap and a session store shared by processes;
and L{renewSession}, which gives a request's session a fresh id at login.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import weakref
from binascii import hexlify
from functools import partial
from types import SimpleNamespace
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server
from zope.interface import classImplements

from txsession import _txsession
from txsession._session import Session
from txsession._txsession import SessionLru, SharedTimer, session_id
from txsession._users import UserIndex, endSessions
from txsession.store import ISessionStore, SessionEnded, StoreError, StoreUnavailable
from txsession.storeflow import RequestSessions, StoreFlow

_log = Logger()

DEFAULT_COOKIE_NAME = b"TWISTED_SESSION"
# Browsers take a cookie so named only with Secure, Path=/ and no Domain (RFC 6265bis).
_HOST_PREFIX = b"__Host-"
_SAME_SITE = (b"lax", b"strict", b"none")
# RFC 6265's cookie-name: a token, no control characters or separators.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _isSessionId(value: bytes) -> bool:
    """
    Whether a session cookie's value can be a session id, to be looked up in the store: a
    token of at most 256 bytes.
    """
    # Letters and digits (as this site's ids are) need no regular expression.
    return len(value) <= 256 and (value.isalnum() or _TOKEN.fullmatch(value) is not None)


def secureCookieName(name: bytes) -> bytes:
    """
    The name of the secure session cookie for the insecure one C{name}, derived as Twisted
    derives C{TWISTED_SECURE_SESSION} from C{TWISTED_SESSION}: C{_SECURE} goes before a
    final C{_SESSION}, or at the end of a name without one.
    """
    if name.endswith(b"_SESSION"):
        return name[: -len(b"_SESSION")] + b"_SECURE_SESSION"
    return name + b"_SECURE"


def _cookieName(
    site: Any, request: Any, secure: bool, sitepath: list[bytes] | None = None
) -> bytes:
    """
    The session cookie's name for C{request}: Twisted's own names for a request that is not
    a L{SessionCookieMixin} (Twisted's C{getSession} hard-codes them), the site's otherwise,
    then joined with the site path as Twisted joins it.
    """
    if isinstance(request, SessionCookieMixin):
        name = getattr(site, "cookieName", DEFAULT_COOKIE_NAME)
        if secure:
            name = secureCookieName(name)
            if getattr(site, "cookieHostPrefix", False):
                name = _HOST_PREFIX + name
    else:
        name = secureCookieName(DEFAULT_COOKIE_NAME) if secure else DEFAULT_COOKIE_NAME
    return b"_".join([name] + (request.sitepath if sitepath is None else sitepath))


def _addSessionCookie(request: Any, name: bytes, uid: bytes, secure: bool) -> None:
    """
    Twisted's C{addCookie(name, uid, path=b"/", secure=secure)}, with the options the
    request's site sets, when it has any.
    """
    site = request.site
    options: dict[str, Any] = {}
    if getattr(site, "cookieHttpOnly", False):
        options["httpOnly"] = True
    sameSite = getattr(site, "cookieSameSite", None)
    # SameSite=None is only valid with Secure, which a cookie set over plain HTTP cannot
    # have: browsers drop such a cookie whole, so the attribute is left off there.
    if sameSite is not None and (secure or sameSite.lower() != b"none"):
        options["sameSite"] = sameSite
    maxAge = getattr(site, "cookieMaxAge", None)
    if maxAge is not None:
        options["max_age"] = str(maxAge)
    request.addCookie(name, uid, path=b"/", secure=secure, **options)


class SessionCookieMixin:
    """
    Mixed into a request class: C{getSession} is Twisted's, with the session cookie named and
    set as the request's L{Site} says (C{cookieName}, C{cookieHttpOnly}, C{cookieSameSite},
    C{cookieMaxAge}). On a site with a store, the request reads its sessions before it renders
    and writes what it changed before its response (L{txsession.storeflow}).
    """

    # What the request does with its sessions, and with its response while they are
    # written, on a site with a store: the one attribute this class adds to a request.
    # CPython 3.11+ keeps at most 30 attribute names inline for a class's instances; past
    # that, a request's attributes move to a dict and no attribute or method lookup on it
    # is specialised, and Twisted's Request alone sets some 25.
    _txsStore: RequestSessions | None = None

    def getSession(self, sessionInterface=None, forceNotSecure=False):
        # Twisted's Request.getSession, with the cookie's name and options from the site.
        site = self.site  # type: ignore[attr-defined]
        flow = getattr(site, "_flow", None)
        secure = self.isSecure() and not forceNotSecure  # type: ignore[attr-defined]
        sessionAttribute = "_secureSession" if secure else "_insecureSession"
        session = getattr(self, sessionAttribute)
        if session is not None and flow is not None and not flow.isLive(session):
            session = None
        if session is not None:
            try:
                session.touch()
            except (AlreadyCalled, AlreadyCancelled):
                session = None
        if session is None:
            cookiename = _cookieName(site, self, secure)
            if flow is not None:
                # Only a session read from the store for this request, or a new one.
                session, made = flow.getSession(self, secure, cookiename)
                if made:
                    _addSessionCookie(self, cookiename, session.uid, secure)
            else:
                sessionCookie = self.getCookie(cookiename)  # type: ignore[attr-defined]
                if sessionCookie:
                    try:
                        session = site.getSession(sessionCookie)
                    except KeyError:
                        pass
                if not session:
                    session = site.makeSession()
                    _addSessionCookie(self, cookiename, session.uid, secure)
        setattr(self, sessionAttribute, session)
        if sessionInterface:
            return session.getComponent(sessionInterface)
        return session

    def process(self):
        site = self.channel.site  # type: ignore[attr-defined]
        flow = getattr(site, "_flow", None)
        reading = None if flow is None else flow.read(self, site._sessionCookieUids(self))
        if reading is None:
            return super().process()  # type: ignore[misc]

        def render(_: object) -> None:
            if not self._disconnected:  # type: ignore[attr-defined]
                # On through the request class's own process(), as without a store.
                super(SessionCookieMixin, self).process()  # type: ignore[misc]

        reading.addCallback(render)
        reading.addErrback(_logFailure, "while rendering after the session read")
        return None

    def render(self, resrc):
        flow = getattr(self.site, "_flow", None)  # type: ignore[attr-defined]
        if flow is None:
            return super().render(resrc)  # type: ignore[misc]
        state = self._txsStore or flow.stateOf(self)
        # A logout (expire()) while this renders is this request's own.
        outer, flow.rendering = flow.rendering, self
        state.rendering = True
        try:
            result = super().render(resrc)  # type: ignore[misc]
        except BaseException:
            # What the resource wrote before it failed never went out: the request fails
            # whole (a 500, nothing of it written).
            if state.writeAfterRender:
                state.writeAfterRender = False
                state.held = None
                state.finishHeld = False
            flow.rendered(self)
            raise
        finally:
            flow.rendering = outer
            state.rendering = False
        if state.writeAfterRender:
            # What the resource wrote while rendering (its whole response, when render()
            # returned bytes) is written with the session changes of the whole render:
            # one write, after which nothing of this request's can change if it finished.
            state.writeAfterRender = False
            held, state.held = state.held or [], None
            finishing, state.finishHeld = state.finishHeld, False
            self._txsFlush(held, finishing)
        flow.rendered(self)
        return result

    def write(self, data):
        state = self._txsStore
        if state is None:
            return super().write(data)  # type: ignore[misc]
        if state.held is not None:
            state.held.append(data)
            return None
        if state.failed:
            return None
        # The first write of a request whose session changes are not written yet.
        if not (self.startedWriting or state.settled or self._disconnected):  # type: ignore[attr-defined]
            if state.rendering:
                # Held until render() returns (see render).
                state.held = [data]
                state.writeAfterRender = True
                return None
            self._txsFlush([data], finishing=False)
            return None
        return super().write(data)  # type: ignore[misc]

    def finish(self):
        state = self._txsStore
        if state is None:
            # No store, or a request that never read one: nothing of txsession's to do.
            return super().finish()  # type: ignore[misc]
        if state.held is not None:
            state.finishHeld = True
            return None
        if state.failed:
            return None
        if not (state.settled or self._disconnected):  # type: ignore[attr-defined]
            self._txsFlush([], finishing=True)
            return None
        return self._txsFinish()

    def processingFailed(self, reason):
        flow = getattr(self.site, "_flow", None)  # type: ignore[attr-defined]
        if flow is None:
            return super().processingFailed(reason)  # type: ignore[misc]
        state = flow.stateOf(self)
        if state.failed:
            return super().processingFailed(reason)  # type: ignore[misc]
        if state.held is not None:
            # A session write is in flight for what the resource wrote before it failed: once
            # it has answered, what the resource wrote goes out, then the failure, as Twisted
            # answers a page that fails after writing (the write's changes are the store's,
            # so the response is not a clean error).
            state.finishHeld = False
            state.pendingFailure = reason
            return reason
        # A failed request changes nothing in the store, and what it changed in this
        # process's copies goes back; no one else's changes do.
        flow.fail(self)
        self._txsForgetCookies()
        answer = _storeFailureAnswer(reason)
        if answer is not None and not self.startedWriting:  # type: ignore[attr-defined]
            code, body, message = answer
            _log.failure(message, reason, uri=_safeUri(self))
            state.failed = True
            self.setResponseCode(code)  # type: ignore[attr-defined]
            self.setHeader(b"Content-Type", b"text/html; charset=utf-8")  # type: ignore[attr-defined]
            self.setHeader(b"Content-Length", b"%d" % (len(body),))  # type: ignore[attr-defined]
            super().write(body)  # type: ignore[misc]
            self._txsFinish()
            return reason
        result = super().processingFailed(reason)  # type: ignore[misc]
        state.failed = True
        return result

    def connectionLost(self, reason):
        super().connectionLost(reason)  # type: ignore[misc]
        self._txsRelease(reason)

    def _txsRelease(self, reason: Failure | None = None) -> None:
        """
        The request is over (finished, or its connection lost): its session records go.
        """
        state = self._txsStore
        if state is not None:
            # Through the flow that made the state: a request whose client left while its
            # sessions were read has no site yet.
            state.flow.release(self, reason)

    def _txsFinish(self) -> Any:
        """
        Finish the response, its session records let go first. Twisted's C{finish()} hands
        the connection to the next request pipelined on it, and that request renders there,
        before the finish notifications run: released first, this request is no longer a
        user of the sessions the next one uses. So the next one starts from what the store
        holds, as a request arriving alone does, instead of from an encoding of every key,
        and its write carries no other request's answer.
        """
        self._txsRelease()
        return super().finish()  # type: ignore[misc]

    def _txsFlush(self, held: list[bytes], finishing: bool) -> None:
        """
        Write this request's session changes to the store; hold C{held} (and the finish,
        when C{finishing}) until they are written.
        """
        flow = self.site._flow  # type: ignore[attr-defined]
        state = self._txsStore
        state.flushedFinished = finishing  # type: ignore[union-attr]
        # Held from now: the writes may answer before flush() returns (a store that cannot
        # be reached fails them at once).
        state.held = held  # type: ignore[union-attr]
        state.finishHeld = finishing  # type: ignore[union-attr]
        try:
            writing = flow.flush(self, self._txsWritten)
        except Exception:
            self._txsFlushFailed(Failure())
            return
        if writing:
            return
        state.held = None  # type: ignore[union-attr]
        state.finishHeld = False  # type: ignore[union-attr]
        if finishing:
            state.settled = True  # type: ignore[union-attr]
        for chunk in held:
            super().write(chunk)  # type: ignore[misc]
        if finishing:
            self._txsFinish()

    def _txsWritten(self, result: object) -> None:
        """
        The session writes of L{_txsFlush} have answered, with C{None} or a failure.
        """
        try:
            if isinstance(result, Failure):
                self._txsFlushFailed(result)
            else:
                self._txsFlushed()
        except Exception:
            _logFailure(Failure(), "while answering after a session store write")

    def _txsFlushed(self) -> None:
        state: RequestSessions = self._txsStore  # type: ignore[assignment]
        held, state.held = state.held or [], None
        finishing, state.finishHeld = state.finishHeld, False
        pending, state.pendingFailure = state.pendingFailure, None
        if pending is not None:
            if not self._disconnected:  # type: ignore[attr-defined]
                for chunk in held:
                    super().write(chunk)  # type: ignore[misc]
            self.processingFailed(pending)
            return
        if self._disconnected:  # type: ignore[attr-defined]
            return
        if finishing and not state.flushedFinished:
            # The request finished while this write was in flight: what it changed since is
            # written before any of the response goes out, so a failure there can still be
            # answered. (A request that had finished when its write was sent changed
            # nothing since.)
            self._txsFlush(held, finishing=True)
            return
        if finishing:
            state.settled = True
            for chunk in held:
                super().write(chunk)  # type: ignore[misc]
            self._txsFinish()
            return
        for chunk in held:
            super().write(chunk)  # type: ignore[misc]

    def _txsFlushFailed(self, reason: Failure) -> None:
        state: RequestSessions = self._txsStore  # type: ignore[assignment]
        state.held = None
        state.finishHeld = False
        state.pendingFailure = None
        if self._disconnected:  # type: ignore[attr-defined]
            self.site._flow.fail(self)  # type: ignore[attr-defined]
            _log.failure("The session store failed after the client left", reason)
        elif not self.startedWriting:  # type: ignore[attr-defined]
            self.processingFailed(reason)
        else:
            # The response has started: it must not end as if its session were written.
            self.site._flow.fail(self)  # type: ignore[attr-defined]
            _log.failure(
                "The session store failed while answering {uri}", reason, uri=_safeUri(self)
            )
            state.failed = True
            self.loseConnection()  # type: ignore[attr-defined]

    def _txsForgetCookies(self) -> None:
        """
        Take back the session cookies this response would set for sessions that no longer
        exist here (a new session, or a new id, that a failure undid).
        """
        site = self.site  # type: ignore[attr-defined]
        kept = []
        for cookie in self.cookies:  # type: ignore[attr-defined]
            name, _, rest = cookie.partition(b"=")
            uid = rest.split(b";", 1)[0]
            if not site._isSessionCookie(name) or uid in site.sessions:
                kept.append(cookie)
        self.cookies[:] = kept  # type: ignore[attr-defined]


def _storeFailureAnswer(reason: Failure) -> tuple[int, bytes, str] | None:
    """
    The status, body and log message for a request that failed in the session store;
    C{None} for any other failure, answered as Twisted answers it.
    """
    if reason.check(StoreUnavailable):
        return http.SERVICE_UNAVAILABLE, _UNAVAILABLE, "The session store failed for {uri}"
    if reason.check(SessionEnded):
        return http.CONFLICT, _ENDED, "The session ended while {uri} used it"
    if reason.check(StoreError):
        return (
            http.INTERNAL_SERVER_ERROR,
            _STORE_ERROR,
            "The session store answered {uri} with an error",
        )
    return None


def _safeUri(request: Any) -> str:
    """
    The request's path for a log line, without its query (which may carry secrets).
    """
    return repr(request.uri.split(b"?", 1)[0])


_UNAVAILABLE = (
    b"<!doctype html><title>503 Service Unavailable</title><h1>Service Unavailable</h1>"
    b"<p>The session store could not be reached. Try again later.</p>"
)
_ENDED = (
    b"<!doctype html><title>409 Conflict</title><h1>Conflict</h1>"
    b"<p>The session ended while this request used it. Nothing it changed was kept.</p>"
)
_STORE_ERROR = (
    b"<!doctype html><title>500 Internal Server Error</title><h1>Internal Server Error</h1>"
    b"<p>The session store answered with an error. Nothing this request changed was kept.</p>"
)


def _logFailure(failure: Failure, why: str) -> None:
    _log.failure(why, failure)


class Request(SessionCookieMixin, server.Request):
    """
    Twisted's request, naming and setting the session cookie as its L{Site} asks.
    """


# A request class an app gave, and the same class with the cookie logic mixed in.
_withCookies: weakref.WeakKeyDictionary[type, type] = weakref.WeakKeyDictionary()
_withCookies[server.Request] = Request


def _sessionCookieRequest(factory: Any) -> Any:
    """
    C{factory}, a request class, with L{SessionCookieMixin} mixed in (the same derived class
    each time). C{TypeError} for anything else: the options could not be applied.
    """
    if isinstance(factory, type) and issubclass(factory, SessionCookieMixin):
        return factory
    if not (isinstance(factory, type) and issubclass(factory, server.Request)):
        raise TypeError(
            "the session cookie options (cookieName, cookieHttpOnly, cookieSameSite, "
            "cookieMaxAge) need a requestFactory that is a subclass of "
            f"twisted.web.server.Request, to set the session cookie; got {factory!r}"
        )
    derived = _withCookies.get(factory)
    if derived is None:
        if factory.getSession is not server.Request.getSession:
            # Mixed in first, ours would hide the app's override; mixed in last, the other way.
            raise TypeError(
                f"{factory!r} overrides getSession: derive it from txsession.Request, whose "
                "getSession its override then reaches through super(), to use the session "
                "cookie options"
            )
        derived = _withCookies[factory] = type(
            factory.__name__,
            (SessionCookieMixin, factory),
            {"__module__": factory.__module__, "__qualname__": factory.__qualname__},
        )
    return derived


def _twistedAcceptsSameSiteNone() -> bool:
    """
    Whether the installed Twisted's C{addCookie} takes C{SameSite=None} (with C{Secure}).
    """
    try:
        http.Request.addCookie(
            SimpleNamespace(cookies=[]),  # type: ignore[arg-type]
            b"k",
            b"v",
            secure=True,
            sameSite=b"none",
        )
    except ValueError:
        return False
    return True


def _cookieNameBytes(value: bytes | str) -> bytes:
    name = value.encode("ascii", "replace") if isinstance(value, str) else value
    if not isinstance(name, bytes) or not _TOKEN.fullmatch(name):
        raise ValueError(f"Invalid cookie name: {value!r}")
    return name


def _sameSiteBytes(value: bytes | str) -> bytes:
    sameSite = value.encode("ascii", "replace") if isinstance(value, str) else value
    if not isinstance(sameSite, bytes) or sameSite.lower() not in _SAME_SITE:
        raise ValueError(f"Invalid value for sameSite: {value!r}")
    if sameSite.lower() == b"none" and not _twistedAcceptsSameSiteNone():
        raise ValueError(
            "Invalid value for sameSite: this Twisted's addCookie does not accept "
            f"SameSite=None: {value!r}"
        )
    return sameSite


def sessionTag(uid: Any) -> str:
    """
    What a log line or an exception message says of session id C{uid}: a short hash, salted
    per process, so that lines about one session can be matched and none gives its id away.
    """
    data = uid if isinstance(uid, bytes) else str(uid).encode("utf-8", "surrogatepass")
    return "session#" + hashlib.blake2b(data, key=_TAG_SALT, digest_size=6).hexdigest()


_TAG_SALT = os.urandom(16)


def _logExpiryFailure(exception: BaseException) -> None:
    """
    How a failing C{expire} run by a shared timer is logged: as the reactor logs a failing
    delayed call, through C{twisted.logger} with the failure. Twisted's C{expire} raises
    C{KeyError(uid)} for a session its site no longer holds: the id is logged as its tag.
    """
    if isinstance(exception, KeyError) and len(exception.args) == 1:
        (arg,) = exception.args
        if isinstance(arg, bytes):
            exception = KeyError(sessionTag(arg)).with_traceback(exception.__traceback__)
    _log.failure(
        "while handling timed call {call}",
        failure=Failure(exception, type(exception), exception.__traceback__),
        call="session expiry (txsession shared timer)",
    )


def _seconds(option: str, value: float) -> float:
    """
    C{value} for C{option}, a positive number of seconds: C{TypeError} unless a number (not
    a bool), C{ValueError} unless positive and finite.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{option} must be a number of seconds, not {value!r}")
    if not 0 < value < float("inf"):
        raise ValueError(f"{option} must be a positive, finite number of seconds: {value!r}")
    return float(value)


def _wholeNumber(option: str, value: int, minimum: int) -> int:
    """
    C{value} for C{option}: C{TypeError} unless a whole number (not a bool), C{ValueError}
    below C{minimum}.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{option} must be a whole number, not {value!r}")
    if value < minimum:
        raise ValueError(f"{option} must be at least {minimum}: {value!r}")
    return value


class Site(server.Site):
    """
    A L{twisted.web.server.Site} whose sessions are L{txsession.Session} and whose session ids
    come from Rust: 32 bytes from a ChaCha generator seeded by the operating system,
    hex-encoded like Twisted's. Setting C{_entropy} (as Twisted's tests do) makes ids from that
    function instead, as in Twisted. Every default but C{sharedTimer} is Twisted's behaviour.

    The cookie options apply whatever the request factory is. With an option set, the
    C{requestFactory} read from the site is the one given (Twisted's L{server.Request} by
    default) with L{SessionCookieMixin} mixed in; without, it is the one given, unchanged.

    @param cookieName: The session cookie's name over HTTP, C{b"TWISTED_SESSION"} by default;
        over HTTPS the name is derived from it by L{secureCookieName}
        (C{b"TWISTED_SECURE_SESSION"}).
    @param cookieHttpOnly: Mark the session cookie C{HttpOnly}.
    @param cookieSameSite: C{b"Lax"}, C{b"Strict"} or C{b"None"} (where Twisted's
        C{addCookie} takes it) for the cookie's C{SameSite}. C{None} needs C{Secure}, so it
        is only sent on cookies set over HTTPS.
    @param cookieMaxAge: Seconds for the cookie's C{Max-Age}, counted from when the cookie is
        set; by default none, so the cookie lasts as long as the browser session.
    @param slidingExpiry: Touch the session that a request's cookie finds, so that its
        timeout counts from its last use rather than from its creation.
    @param sharedTimer: Expire every session of this site through one pending call on its
        reactor, driven by a Rust heap, instead of one reactor call per session (the default;
        C{False} gives one reactor call per session, as Twisted). Sessions expire at the same
        reactor times, and their C{_expireCall} is a C{SharedDelayedCall} (Twisted's
        C{IDelayedCall}). A failing C{expire} is logged as the reactor logs a failing timed
        call, and the other sessions due still expire.
    @param maxSessions: At most this many sessions: making one more first expires, through
        C{expire()}, the session touched least recently (ties: the one made first). A failing
        C{expire} is logged and the next session is made all the same. With a C{store}, this
        caps the copies this process keeps, and the one evicted is only dropped here.
    @param store: An L{ISessionStore}, such as L{txsession.redis.RedisStore}: sessions are
        kept there, shared by every process using it. The sessions of a request's cookies are
        read (and their idle timeouts restarted) before the resource renders, and what the
        request changed is written before its response starts. See README.md, "Several
        processes".
    @param absoluteTimeout: Seconds after which a session ends, through C{expire()}, however
        active it is (OWASP's absolute timeout); by default none. L{renewSession} keeps the
        session's creation time.
    @param cookieHostPrefix: Name the secure session cookie C{__Host-} plus its name: browsers
        then take it only with C{Secure}, C{Path=/} and no C{Domain}, so a sibling subdomain
        cannot plant or overwrite it. The insecure cookie is unchanged.
    """

    sessionFactory = Session
    cookieName = DEFAULT_COOKIE_NAME
    cookieHttpOnly = False
    cookieSameSite: bytes | None = None
    cookieMaxAge: int | None = None
    _slidingExpiry = False
    maxSessions: int | None = None
    absoluteTimeout: float | None = None
    cookieHostPrefix = False
    store: Any = None
    _flow: StoreFlow | None = None
    _sharedTimer: SharedTimer | None = None
    _lru: SessionLru | None = None
    # With absoluteTimeout: each live session's call that ends it, and the timer filing them.
    _absolute: dict[Any, Any] | None = None
    _absoluteTimer: SharedTimer | None = None
    # Without a store: the sessions renewSession bound to each user, made at the first one.
    _users: UserIndex | None = None

    def __init__(
        self,
        resource: Any,
        requestFactory: Callable[..., Any] | None = None,
        *args: Any,
        cookieName: bytes | str = DEFAULT_COOKIE_NAME,
        cookieHttpOnly: bool = False,
        cookieSameSite: bytes | str | None = None,
        cookieMaxAge: int | None = None,
        slidingExpiry: bool = False,
        sharedTimer: bool = True,
        maxSessions: int | None = None,
        store: Any = None,
        storeEmptySessions: bool = False,
        absoluteTimeout: float | None = None,
        cookieHostPrefix: bool = False,
        **kwargs: Any,
    ) -> None:
        self.cookieName = _cookieNameBytes(cookieName)
        self.cookieHttpOnly = cookieHttpOnly
        self.cookieSameSite = None if cookieSameSite is None else _sameSiteBytes(cookieSameSite)
        self.cookieMaxAge = (
            None if cookieMaxAge is None else _wholeNumber("cookieMaxAge", cookieMaxAge, 0)
        )
        self.slidingExpiry = slidingExpiry
        self.maxSessions = (
            None if maxSessions is None else _wholeNumber("maxSessions", maxSessions, 1)
        )
        self.absoluteTimeout = (
            None if absoluteTimeout is None else _seconds("absoluteTimeout", absoluteTimeout)
        )
        self.cookieHostPrefix = bool(cookieHostPrefix)
        if store is not None and not ISessionStore.providedBy(store):
            raise TypeError(f"store must provide txsession.store.ISessionStore: {store!r}")
        super().__init__(resource, requestFactory, *args, **kwargs)
        if store is not None:
            store.bind(self.reactor)
            self.store = store
            self._flow = StoreFlow(self, store, bool(storeEmptySessions))
            # A copy's own idle timeout ends the copy, not the stored session.
            self._sharedTimer = SharedTimer(self.reactor, _logExpiryFailure, self._dropLocally)
        elif sharedTimer:
            self._sharedTimer = SharedTimer(self.reactor, _logExpiryFailure)
        self._lru = SessionLru() if self.maxSessions is not None else None
        if self.absoluteTimeout is not None:
            self._absolute = {}
            if self._sharedTimer is not None:
                # Its own timer: with a store, the shared timer only drops copies, and an
                # absolute timeout ends the session everywhere.
                self._absoluteTimer = SharedTimer(self.reactor, _logExpiryFailure)
        # Raises now, not at the first connection, when the options cannot be applied.
        self.requestFactory  # noqa: B018

    def _cookieOptions(self) -> bool:
        return (
            bool(self.cookieHttpOnly)
            or self.cookieSameSite is not None
            or self.cookieMaxAge is not None
            or self.cookieName != DEFAULT_COOKIE_NAME
            or self.cookieHostPrefix
            or self.store is not None
        )

    # Read and set as an ordinary attribute, not through the instance's __dict__: on
    # CPython 3.11+ touching __dict__ turns the site's inline attribute values into a dict,
    # and every later attribute read of the site takes the slower path.
    _givenRequestFactory: Any = server.Request

    @property  # type: ignore[override]
    def requestFactory(self) -> Any:
        factory = self._givenRequestFactory
        return _sessionCookieRequest(factory) if self._cookieOptions() else factory

    @requestFactory.setter
    def requestFactory(self, factory: Any) -> None:
        self._givenRequestFactory = factory

    @property
    def slidingExpiry(self) -> bool:
        """
        Whether C{getSession(uid)} touches the session it finds. Without it, C{getSession} is
        Twisted's own, at Twisted's cost.
        """
        return self._slidingExpiry

    @slidingExpiry.setter
    def slidingExpiry(self, value: bool) -> None:
        # Only a change of the option touches the instance's getSession: on CPython 3.11+
        # even deleting an attribute the instance does not have adds its name to the keys
        # its class's instances share, and a method whose name is among them is looked up
        # the slow way (not specialized) on every site of the class.
        value = bool(value)
        if value == self._slidingExpiry:
            return
        self._slidingExpiry = value
        if value:
            self.getSession = self._slidingGetSession  # type: ignore[method-assign]
        else:
            del self.getSession

    def _slidingGetSession(self, uid: bytes) -> Any:
        """
        The session with id C{uid} (C{KeyError} when there is none), touched first. A session
        whose timer already ran out counts as none.
        """
        session = self.sessions.get(uid)
        if session is None:
            raise KeyError(sessionTag(uid))
        try:
            session.touch()
        except (AlreadyCalled, AlreadyCancelled):
            raise KeyError(sessionTag(uid)) from None
        return session

    @property
    def sharedTimer(self) -> bool:
        """
        Whether this site's sessions expire through its shared timer.
        """
        return self._sharedTimer is not None

    def getResourceFor(self, request: Any) -> Any:
        """
        Twisted's C{getResourceFor}, copying the site path of a list by a slice rather than
        C{copy.copy}, which gives the same list in about 700 fewer instructions.
        """
        request.site = self
        prepath = request.prepath
        request.sitepath = prepath[:] if type(prepath) is list else copy.copy(prepath)
        return resource.getChildForRequest(self.resource, request)

    def makeSession(self) -> Any:
        """
        Twisted's C{makeSession}, after making room under C{maxSessions}. With a C{store},
        the new session is written there by the request that made it, before its response.
        """
        lru = self._lru
        if lru is not None:
            self._makeRoom(lru)
        session = super().makeSession()
        if lru is not None:
            lru.add(session, self.sessions)
        if self.absoluteTimeout is not None:
            self._endAt(session, self.reactor.seconds() + self.absoluteTimeout)
        if self._flow is not None:
            self._flow.adopt(session, None)
        return session

    def _endAt(self, session: Any, end: float) -> None:
        """
        End C{session} through its C{expire()} at reactor time C{end} (its absolute timeout),
        unless it ends before.
        """
        if self._absolute is None:
            # A stored session with an absolute end, read by a site without the option: this
            # process ends it then too.
            self._absolute = {}
            if self._sharedTimer is not None:
                self._absoluteTimer = SharedTimer(self.reactor, _logExpiryFailure)
        left = max(0.0, end - self.reactor.seconds())
        timer = self._absoluteTimer
        call = (
            timer.add(session, left)
            if timer is not None
            else self.reactor.callLater(left, _expireLogged, session)
        )
        self._absolute[session] = call  # type: ignore[index]
        # First: an app's callback that raises stops expire() there.
        session.expireCallbacks.insert(
            0, partial(_absoluteEnded, weakref.ref(self), weakref.ref(session))
        )

    def createdAt(self, session: Any) -> float | None:
        """
        The reactor time C{session} was made, when this site knows it: with
        C{absoluteTimeout}, or with a store. C{renewSession} keeps it.
        """
        if self._flow is not None:
            return self._flow.createdAt(session)
        absolute = self._absolute
        call = None if absolute is None else absolute.get(session)
        if call is not None and self.absoluteTimeout is not None:
            return call.getTime() - self.absoluteTimeout  # type: ignore[no-any-return]
        return None

    # The sessions of a user.

    def userSessions(self, user: str) -> Deferred[list[dict[str, Any]]]:
        """
        The live sessions that L{renewSession} bound to C{user}: a L{Deferred} firing with a
        list of one dict per session, C{"id"} (opaque: not its cookie value), C{"created"}
        and C{"lastUsed"} (reactor seconds). Without a store it has fired already.
        """
        user = _userName(user)
        if self.store is not None:
            return self.store.userSessions(user).addCallback(
                lambda found: [{"id": i, "created": c, "lastUsed": u} for i, c, u in found]
            )
        users = self._users
        return succeed([] if users is None else users.records(user))

    def logoutUser(self, user: str, keep: Any = None) -> Deferred[int]:
        """
        End every session of C{user} (through C{expire()}), except the session C{keep}: "log
        out everywhere". A L{Deferred} firing with how many ended.
        """
        user = _userName(user)
        if self.store is not None:
            kept: list[bytes] = []
            if keep is not None and self._flow.isLive(keep):  # type: ignore[union-attr]
                # Every name it has or is being given (a login's rename may be in flight),
                # but not an id a failed login may have stored it under: no client holds
                # that one, so it is logged out with the rest.
                copy = self._flow.copies[keep]  # type: ignore[union-attr]
                names = [copy.storedAs, copy.creating, copy.renaming, keep.uid]
                kept = [name for name in names if name is not None]
            return self.store.logoutUser(user, *kept)
        users = self._users
        if users is None:
            return succeed(0)
        sessions = [s for s in users.sessions(user).values() if s is not keep]
        return succeed(endSessions(users, sessions))

    def endUserSession(self, user: str, id: str) -> Deferred[bool]:
        """
        End the session of C{user} whose opaque id (from L{userSessions}) is C{id}. A
        L{Deferred} firing with whether it did: C{False} for an id that is not one of the
        user's live sessions.
        """
        user = _userName(user)
        if not isinstance(id, str):
            raise TypeError(f"a session's id from userSessions is a str, not {id!r}")
        if self.store is not None:
            return self.store.endUserSession(user, id)
        users = self._users
        session = None if users is None else users.sessions(user).get(id)
        if session is None:
            return succeed(False)
        return succeed(endSessions(users, [session]) == 1)  # type: ignore[arg-type]

    def _bindUser(self, session: Any, user: str) -> None:
        users = self._users
        if users is None:
            users = self._users = UserIndex()
        created = self.createdAt(session)
        users.bind(session, user, self.reactor.seconds() if created is None else created)

    def _makeRoom(self, lru: SessionLru) -> None:
        flow = self._flow
        # A copy that a running request uses is not evicted (its touch files it as recent):
        # the cap gives way while every session is in use.
        tries = len(self.sessions)
        while len(self.sessions) >= self.maxSessions and tries > 0:  # type: ignore[operator]
            tries -= 1
            oldest = lru.oldest(self.sessions)
            if oldest is None:
                break
            try:
                if flow is None:
                    oldest.expire()
                elif flow.inUse(oldest):
                    oldest.touch()
                else:
                    flow.dropLocally(oldest)
            except Exception:
                _log.failure("while evicting a session")

    def _dropLocally(self, session: Any) -> None:
        """
        With a store: end this process's copy of C{session} (its idle timeout, an eviction),
        leaving the stored session as it is.
        """
        self._flow.dropLocally(session)  # type: ignore[union-attr]

    def _sessionCookieUids(self, request: Any) -> list[bytes]:
        """
        The values of the session cookies C{request}'s C{getSession} can look at (the
        insecure one, and over HTTPS the secure one): what a store site reads for it, and no
        more, whatever else the request carries.
        """
        # A store site's requests are SessionCookieMixins, named as the site says, and the
        # site path is empty until the resource is looked up. isSecure() (an adapter lookup
        # on the transport) is asked only of a request that sends the secure cookie.
        cookies = request.received_cookies
        uids: list[bytes] = []
        value = cookies.get(self.cookieName)
        if value and _isSessionId(value):
            uids.append(value)
        # A request whose only cookie is the insecure one has no secure one to look for.
        if len(cookies) > len(uids):
            value = cookies.get(self._secureCookieName())
            if value and _isSessionId(value) and value not in uids and request.isSecure():
                uids.append(value)
        return uids

    def _isSessionCookie(self, name: bytes) -> bool:
        """
        Whether a cookie named C{name} is one of this site's session cookies: its name or its
        secure name, alone or joined with a site path (as L{_cookieName} makes them).
        """
        return any(
            name == n or name.startswith(n + b"_")
            for n in (self.cookieName, self._secureCookieName())
        )

    def _secureCookieName(self) -> bytes:
        name = secureCookieName(self.cookieName)
        return _HOST_PREFIX + name if self.cookieHostPrefix else name

    def saveSession(self, session: Any) -> Deferred[None]:
        """
        Write C{session}'s changes to the store now, for a session changed outside a
        request (a request writes its own). Fires when written; fails with
        L{UnserializableValue} or the store's error, with the change put back.
        """
        if self._flow is None:
            raise RuntimeError("saveSession needs a site with a store")
        return self._flow.saveSession(session)

    def _mkuid(self) -> bytes:
        self.counter = self.counter + 1
        entropy = self._entropy
        if entropy is os.urandom:
            return session_id()
        return hexlify(entropy(32))


def renewSession(request: Any, forceNotSecure: bool = False, user: str | None = None) -> Any:
    """
    Give C{request}'s session a new id, as at login, and return it.

    The session keeps its namespaces, components, expire callbacks and expiry; only its id
    changes. The old id is dead: C{site.sessions} forgets it, and a request carrying it gets a
    new, empty session. The response carries the new cookie, with the site's options, in
    place of any session cookie set earlier in this request, and C{request.getSession()}
    returns the renewed session. Works with Twisted's own L{server.Request} (its cookie names)
    and with L{Request}, on any site with C{sessions} and C{_mkuid}.

    @param forceNotSecure: As for C{getSession}: renew the session of the insecure cookie on
        an HTTPS request.
    @param user: Bind the renewed session to this user (a str), in place of any user it was
        bound to, so that the L{Site}'s C{userSessions}, C{logoutUser} and C{endUserSession}
        find it.
    """
    if user is not None:
        user = _userName(user)
        if not hasattr(request.site, "_bindUser"):
            raise TypeError("renewSession(user=...) needs a txsession.Site")
        if getattr(request.site.store, "cluster", False):
            # The store says why (a user's set and its sessions would be in different slots).
            request.site.store._userKey(user)
    site = request.site
    secure = request.isSecure() and not forceNotSecure
    # The session this request already has, live, as is: getSession would touch it again.
    session = getattr(request, "_secureSession" if secure else "_insecureSession", None)
    if session is None or site.sessions.get(session.uid) is not session:
        session = request.getSession(forceNotSecure=forceNotSecure)
    cookiename = _cookieName(site, request, secure)
    old = session.uid
    new = site._mkuid()
    renewedId = getattr(getattr(site, "store", None), "renewedId", None)
    if renewedId is not None:
        # A store may need the new id to keep part of the old (Cluster: its hash tag).
        new = renewedId(old, new)
    if site.sessions.get(old) is session:
        del site.sessions[old]
    session.uid = new
    site.sessions[new] = session
    flow = getattr(site, "_flow", None)
    if flow is not None and flow.isLive(session):
        flow.renew(request, session, old, user)
    elif flow is None and user is not None:
        site._bindUser(session, user)
    prefix = cookiename + b"="
    request.cookies[:] = [c for c in request.cookies if not c.startswith(prefix)]
    _addSessionCookie(request, cookiename, new, secure)
    return session


def logout(request: Any, forceNotSecure: bool = False) -> None:
    """
    End C{request}'s session (its C{expire()}) as that request's own logout, also from a
    callback after the resource's C{render()} returned (after asynchronous work). With a
    store, a logout while the resource renders is known to be the request's own; from a
    callback it is not, and a request that changed the session then answers 409 as for a
    logout elsewhere. This makes it the request's: the request answers once the session is
    deleted. Without a store it is C{request.getSession(forceNotSecure=...).expire()}.
    """
    session = request.getSession(forceNotSecure=forceNotSecure)
    flow = getattr(request.site, "_flow", None)
    if flow is None:
        session.expire()
        return
    outer, flow.rendering = flow.rendering, request
    try:
        session.expire()
    finally:
        flow.rendering = outer


def _userName(user: Any) -> str:
    if not isinstance(user, str):
        raise TypeError(f"a user is named by a str, not {user!r}")
    return user


def _expireLogged(session: Any) -> None:
    """
    C{session.expire()} from a reactor call, a failure logged as the shared timer logs it
    (a session id as its tag).
    """
    try:
        session.expire()
    except Exception as e:
        _logExpiryFailure(e)


def _absoluteEnded(siteRef: Any, sessionRef: Any) -> None:
    site, session = siteRef(), sessionRef()
    if site is None or session is None or site._absolute is None:
        return
    call = site._absolute.pop(session, None)
    if call is not None and call.active():
        call.cancel()


_txsession.bind_site(Site)
classImplements(_txsession.SharedDelayedCall, IDelayedCall)
