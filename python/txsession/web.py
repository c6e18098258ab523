"""
L{Site}: Twisted's L{twisted.web.server.Site} with txsession's sessions, session ids made in
Rust, opt-in session cookie options (C{HttpOnly}, C{SameSite}, C{Max-Age}, its name),
sliding expiry, a shared expiry timer, a session cap and a session store shared by processes;
and L{renewSession}, which gives a request's session a fresh id at login.
"""

from __future__ import annotations

import os
import re
import weakref
from binascii import hexlify
from functools import partial
from types import SimpleNamespace
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from zope.interface import classImplements

from txsession import _txsession
from txsession._session import Session
from txsession._txsession import SessionLru, SharedTimer, session_id
from txsession.store import ISessionStore, StoreError, StoreUnavailable, UnserializableValue

_log = Logger()

DEFAULT_COOKIE_NAME = b"TWISTED_SESSION"
_SAME_SITE = (b"lax", b"strict", b"none")
# RFC 6265's cookie-name: a token, no control characters or separators.
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def secureCookieName(name: bytes) -> bytes:
    """
    The name of the secure session cookie for the insecure one C{name}, derived as Twisted
    derives C{TWISTED_SECURE_SESSION} from C{TWISTED_SESSION}: C{_SECURE} goes before a
    final C{_SESSION}, or at the end of a name without one.
    """
    if name.endswith(b"_SESSION"):
        return name[: -len(b"_SESSION")] + b"_SECURE_SESSION"
    return name + b"_SECURE"


def _cookieName(site: Any, request: Any, secure: bool) -> bytes:
    """
    The session cookie's name for C{request}: Twisted's own names for a request that is not
    a L{SessionCookieMixin} (Twisted's C{getSession} hard-codes them), the site's otherwise,
    then joined with the site path as Twisted joins it.
    """
    name = DEFAULT_COOKIE_NAME
    if isinstance(request, SessionCookieMixin):
        name = getattr(site, "cookieName", DEFAULT_COOKIE_NAME)
    if secure:
        name = secureCookieName(name)
    return b"_".join([name] + request.sitepath)


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
    C{cookieMaxAge}).
    """

    # What a store-backed site's request is doing with its sessions (see Site's store).
    _txsReadFailure: Failure | None = None
    _txsHeld: list[bytes] | None = None
    _txsFinishHeld = False
    _txsNoFlush = False
    _txsFailed = False

    def getSession(self, sessionInterface=None, forceNotSecure=False):
        # Twisted's Request.getSession, with the cookie's name and options from the site.
        if self._txsReadFailure is not None:
            _raiseReadFailure(self._txsReadFailure)
        secure = self.isSecure() and not forceNotSecure  # type: ignore[attr-defined]
        sessionAttribute = "_secureSession" if secure else "_insecureSession"
        session = getattr(self, sessionAttribute)
        if session is not None:
            try:
                session.touch()
            except (AlreadyCalled, AlreadyCancelled):
                session = None
        if session is None:
            site = self.site  # type: ignore[attr-defined]
            cookiename = _cookieName(site, self, secure)
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

    # A site with a session store reads the sessions of a request's cookies before the
    # resource renders, and writes what the request changed before its response starts (or,
    # for what changed while streaming, before it finishes); see Site.

    def process(self):
        site = self.channel.site  # type: ignore[attr-defined]
        reading = site._readSessions(self) if getattr(site, "store", None) is not None else None
        if reading is None:
            return super().process()  # type: ignore[misc]

        def render(_: object) -> None:
            if not self._disconnected:  # type: ignore[attr-defined]
                server.Request.process(self)  # type: ignore[arg-type]

        reading.addCallback(render)
        reading.addErrback(_logFailure, "while rendering after the session read")
        return None

    def write(self, data):
        if self._txsHeld is not None:
            self._txsHeld.append(data)
            return None
        if self._txsFailed:
            return None
        if not self.startedWriting and self._txsMustFlush():  # type: ignore[attr-defined]
            self._txsFlush([data], finishing=False)
            return None
        return super().write(data)  # type: ignore[misc]

    def finish(self):
        if self._txsHeld is not None:
            self._txsFinishHeld = True
            return None
        if self._txsFailed:
            return None
        if self._txsMustFlush():
            self._txsFlush([], finishing=True)
            return None
        return super().finish()  # type: ignore[misc]

    def processingFailed(self, reason):
        site = self.site  # type: ignore[attr-defined]
        if getattr(site, "store", None) is None or self._txsFailed:
            return super().processingFailed(reason)  # type: ignore[misc]
        # A failed request changes nothing in the store, and its local copies go back to it.
        self._txsNoFlush = True
        for session in self._txsSessions():
            site._revert(session)
        self._txsForgetCookies()
        if reason.check(StoreUnavailable, StoreError) and not self.startedWriting:  # type: ignore[attr-defined]
            _log.failure("The session store failed for {uri!r}", reason, uri=self.uri)  # type: ignore[attr-defined]
            body = _UNAVAILABLE
            self.setResponseCode(http.SERVICE_UNAVAILABLE)  # type: ignore[attr-defined]
            self.setHeader(b"Content-Type", b"text/html; charset=utf-8")  # type: ignore[attr-defined]
            self.setHeader(b"Content-Length", b"%d" % (len(body),))  # type: ignore[attr-defined]
            self.write(body)
            self.finish()
            self._txsFailed = True
            return reason
        result = super().processingFailed(reason)  # type: ignore[misc]
        self._txsFailed = True
        return result

    def _txsSessions(self) -> list[Any]:
        sessions = []
        for session in (self._insecureSession, self._secureSession):  # type: ignore[attr-defined]
            if session is not None and session not in sessions:
                sessions.append(session)
        return sessions

    def _txsMustFlush(self) -> bool:
        return (
            not self._txsNoFlush
            and getattr(self.site, "store", None) is not None  # type: ignore[attr-defined]
            and not self._disconnected  # type: ignore[attr-defined]
        )

    def _txsFlush(self, held: list[bytes], finishing: bool) -> None:
        """
        Write this request's session changes to the store; hold C{held} (and the finish,
        when C{finishing}) until they are written.
        """
        site = self.site  # type: ignore[attr-defined]
        waits = []
        try:
            for session in self._txsSessions():
                saving = site._saveSession(session)
                if saving is not None:
                    waits.append(saving)
        except Exception:
            self._txsFlushFailed(Failure())
            return
        if not waits:
            for chunk in held:
                super().write(chunk)  # type: ignore[misc]
            if finishing:
                super().finish()  # type: ignore[misc]
            return
        self._txsHeld = held
        self._txsFinishHeld = finishing
        if len(waits) == 1:
            writing = waits[0].addErrback(self._txsFlushFailed)
        else:
            writing = gatherResults(waits, consumeErrors=True).addErrback(
                lambda reason: self._txsFlushFailed(reason.value.subFailure)
            )
        writing.addCallback(self._txsFlushed)
        writing.addErrback(_logFailure, "while answering after a session store write")

    def _txsFlushed(self, _: object) -> None:
        if self._txsHeld is None:
            return  # the write failed, and _txsFlushFailed answered
        held, self._txsHeld = self._txsHeld, None
        finishing, self._txsFinishHeld = self._txsFinishHeld, False
        if self._disconnected:  # type: ignore[attr-defined]
            return
        for chunk in held:
            super().write(chunk)  # type: ignore[misc]
        if finishing:
            self.finish()

    def _txsFlushFailed(self, reason: Failure) -> None:
        self._txsHeld = None
        self._txsFinishHeld = False
        if self._disconnected:  # type: ignore[attr-defined]
            _log.failure("The session store failed after the client left", reason)
        elif not self.startedWriting:  # type: ignore[attr-defined]
            self.processingFailed(reason)
        else:
            # The response has started: it must not end as if its session were written.
            _log.failure("The session store failed while answering {uri!r}", reason, uri=self.uri)  # type: ignore[attr-defined]
            for session in self._txsSessions():
                self.site._revert(session)  # type: ignore[attr-defined]
            self._txsFailed = True
            self.loseConnection()  # type: ignore[attr-defined]

    def _txsForgetCookies(self) -> None:
        """
        Take back the session cookies this response would set for sessions that no longer
        exist (a new session whose first write failed).
        """
        site = self.site  # type: ignore[attr-defined]
        kept = []
        for cookie in self.cookies:  # type: ignore[attr-defined]
            name, _, rest = cookie.partition(b"=")
            uid = rest.split(b";", 1)[0]
            if not site._isSessionCookie(name) or uid in site.sessions:
                kept.append(cookie)
        self.cookies[:] = kept  # type: ignore[attr-defined]


_UNAVAILABLE = (
    b"<!doctype html><title>503 Service Unavailable</title><h1>Service Unavailable</h1>"
    b"<p>The session store could not be reached. Try again later.</p>"
)


def _logFailure(failure: Failure, why: str) -> None:
    _log.failure(why, failure)


def _raiseReadFailure(failure: Failure) -> None:
    if failure.check(StoreUnavailable, StoreError):
        raise StoreUnavailable(f"the session could not be read: {failure.value}") from failure.value
    failure.raiseException()


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
    if not isinstance(name, bytes) or not _TOKEN.match(name):
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


def _logExpiryFailure(exception: BaseException) -> None:
    """
    How a failing C{expire} run by a shared timer is logged: as the reactor logs a failing
    delayed call, through C{twisted.logger} with the failure.
    """
    _log.failure(
        "while handling timed call {call}",
        failure=Failure(exception, type(exception), exception.__traceback__),
        call="session expiry (txsession shared timer)",
    )


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
    function instead, as in Twisted. Every default is Twisted's behaviour.

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
        reactor, driven by a Rust heap, instead of one reactor call per session. Sessions then
        expire at the same reactor times, and their C{_expireCall} is a
        C{SharedDelayedCall} (Twisted's C{IDelayedCall}). A failing C{expire} is logged as the
        reactor logs a failing timed call, and the other sessions due still expire.
    @param maxSessions: At most this many sessions: making one more first expires, through
        C{expire()}, the session touched least recently (ties: the one made first). A failing
        C{expire} is logged and the next session is made all the same. With a C{store}, this
        caps the copies this process keeps, and the one evicted is only dropped here.
    @param store: An L{ISessionStore}, such as L{txsession.redis.RedisStore}: sessions are
        kept there, shared by every process using it. The sessions of a request's cookies are
        read (and their idle timeouts restarted) before the resource renders, and what the
        request changed is written before its response starts. See README.md, "Several
        processes".
    """

    sessionFactory = Session
    cookieName = DEFAULT_COOKIE_NAME
    cookieHttpOnly = False
    cookieSameSite: bytes | None = None
    cookieMaxAge: int | None = None
    slidingExpiry = False
    maxSessions: int | None = None
    store: Any = None
    _sharedTimer: SharedTimer | None = None
    _lru: SessionLru | None = None

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
        sharedTimer: bool = False,
        maxSessions: int | None = None,
        store: Any = None,
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
        if store is not None and not ISessionStore.providedBy(store):
            raise TypeError(f"store must provide txsession.store.ISessionStore: {store!r}")
        super().__init__(resource, requestFactory, *args, **kwargs)
        if store is not None:
            store.bind(self.reactor)
            self.store = store
            # This process's copies of stored sessions: the copy, and each session ended
            # by expire() (a logout) whose deletion in the store was asked for.
            self._copies: dict[Any, _Copy] = {}
            self._logouts: weakref.WeakKeyDictionary[Any, _Outcome] = weakref.WeakKeyDictionary()
            self._droppingLocally: Any = None
            # A copy's own idle timeout ends the copy, not the stored session.
            self._sharedTimer = SharedTimer(self.reactor, _logExpiryFailure, self._dropLocally)
        elif sharedTimer:
            self._sharedTimer = SharedTimer(self.reactor, _logExpiryFailure)
        self._lru = SessionLru() if self.maxSessions is not None else None
        # Raises now, not at the first connection, when the options cannot be applied.
        self.requestFactory  # noqa: B018

    def _cookieOptions(self) -> bool:
        return (
            bool(self.cookieHttpOnly)
            or self.cookieSameSite is not None
            or self.cookieMaxAge is not None
            or self.cookieName != DEFAULT_COOKIE_NAME
            or self.store is not None
        )

    @property  # type: ignore[override]
    def requestFactory(self) -> Any:
        factory = self.__dict__.get("_givenRequestFactory", server.Request)
        return _sessionCookieRequest(factory) if self._cookieOptions() else factory

    @requestFactory.setter
    def requestFactory(self, factory: Any) -> None:
        self.__dict__["_givenRequestFactory"] = factory

    def getSession(self, uid: bytes) -> Any:
        """
        The session with id C{uid} (C{KeyError} when there is none), touched first with
        C{slidingExpiry}. A session whose timer already ran out counts as none.
        """
        session = self.sessions[uid]
        if self.slidingExpiry:
            try:
                session.touch()
            except (AlreadyCalled, AlreadyCancelled):
                raise KeyError(uid) from None
        return session

    @property
    def sharedTimer(self) -> bool:
        """
        Whether this site's sessions expire through its shared timer.
        """
        return self._sharedTimer is not None

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
        if self.store is not None:
            self._adopt(session, None)
        return session

    def _makeRoom(self, lru: SessionLru) -> None:
        while len(self.sessions) >= self.maxSessions:  # type: ignore[operator]
            oldest = lru.oldest(self.sessions)
            if oldest is None:
                break
            try:
                if self.store is not None:
                    self._dropLocally(oldest)
                else:
                    oldest.expire()
            except Exception:
                _log.failure("while evicting session {uid!r}", uid=oldest.uid)

    # The session store. A session of this process is a copy of the stored one; the
    # request's cookies name the sessions to read before rendering, and the sessions it used
    # are written before its response. expire() is a logout: it deletes the stored session.
    # A copy's own timeout, an eviction, or finding the stored session gone drop the copy
    # alone (its expire() runs, with its callbacks, but nothing is deleted).

    def _adopt(self, session: Any, storedAs: bytes | None) -> None:
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
            session._expireCall = self._sharedTimer.add(session, session.sessionTimeout)  # type: ignore[union-attr]
        self._copies[session] = _Copy(storedAs, {})
        session.notifyOnExpire(partial(_copyEnded, weakref.ref(self), weakref.ref(session)))

    def _dropLocally(self, session: Any) -> None:
        """
        End this process's copy of C{session}, leaving the stored session as it is.
        """
        outer, self._droppingLocally = self._droppingLocally, session
        try:
            session.expire()
        finally:
            self._droppingLocally = outer
            self._copies.pop(session, None)
            # An expire callback that raised left the copy's timer filed, as Twisted's
            # expire() leaves it; the copy is over all the same.
            call = getattr(session, "_expireCall", None)
            if call is not None and call.active():
                call.cancel()

    def _dropFound(self, session: Any) -> None:
        """
        L{_dropLocally}, for a copy found to be over in the course of a request: an expire
        callback's exception is logged, not raised into the request.
        """
        try:
            self._dropLocally(session)
        except Exception:
            _log.failure("while dropping this process's copy of session {uid!r}", uid=session.uid)

    def _ended(self, session: Any) -> None:
        copy = self._copies.pop(session, None)
        if copy is None or self._droppingLocally is session or copy.storedAs is None:
            return
        self._logouts[session] = _Outcome(self.store.delete(copy.storedAs), copy.storedAs)

    def _sessionCookies(self, request: Any) -> list[bytes]:
        """
        The ids in C{request}'s cookies that this site's session cookies could hold.
        """
        uids: list[bytes] = []
        for name, value in request.received_cookies.items():
            if self._isSessionCookie(name):
                if value and len(value) <= 256 and _TOKEN.match(value) and value not in uids:
                    uids.append(value)
        return uids[:8]

    def _isSessionCookie(self, name: bytes) -> bool:
        """
        Whether a cookie named C{name} is one of this site's session cookies: its name or its
        secure name, alone or joined with a site path (as L{_cookieName} makes them).
        """
        return any(
            name == n or name.startswith(n + b"_")
            for n in (self.cookieName, secureCookieName(self.cookieName))
        )

    def _readSessions(self, request: Any) -> Deferred[None] | None:
        """
        Read the sessions of C{request}'s cookies from the store; C{None} when it has none.
        A failure is kept on the request: its C{getSession} raises it.
        """
        uids = self._sessionCookies(request)
        if not uids:
            return None

        def failed(reason: Failure) -> None:
            request._txsReadFailure = reason

        return self.store.load(uids).addCallback(partial(self._loaded, uids)).addErrback(failed)

    def _loaded(self, uids: list[bytes], results: list[dict[str, bytes] | None]) -> None:
        loads = self.store.serializer.loads
        for uid, fields in zip(uids, results):
            session = self.sessions.get(uid)
            copy = None if session is None else self._copies.get(session)
            if fields is None:
                # Gone from the store: logged out, or timed out, elsewhere.
                if session is not None and copy is not None and copy.storedAs is not None:
                    self._dropFound(session)
                continue
            if session is not None and copy is not None:
                try:
                    session.touch()
                except (AlreadyCalled, AlreadyCancelled):
                    self._dropFound(session)
                    session = None
            if session is None or copy is None:
                if self._lru is not None:
                    self._makeRoom(self._lru)
                session = self.sessions[uid] = self.sessionFactory(self, uid)
                session.startCheckingExpiration()
                if self._lru is not None:
                    self._lru.add(session, self.sessions)
                self._adopt(session, uid)
                copy = self._copies[session]
            # What changed in the store since this copy last saw it wins; entries this
            # process changed and has not written yet stay.
            namespaces = session.sessionNamespaces
            for key, value in fields.items():
                if copy.fields.get(key) != value:
                    namespaces[key] = loads(value)
            for key in copy.fields:
                if key not in fields:
                    namespaces.pop(key, None)
            copy.fields = dict(fields)
            copy.storedAs = uid

    def _revert(self, session: Any) -> None:
        """
        Put C{session}'s namespaces back as the store has them; drop it when it was never
        stored.
        """
        copy = self._copies.get(session)
        if copy is None:
            return
        if copy.storedAs is None:
            self._dropFound(session)
            return
        loads = self.store.serializer.loads
        namespaces = session.sessionNamespaces
        namespaces.clear()
        namespaces.update({key: loads(value) for key, value in copy.fields.items()})

    def _encode(self, session: Any) -> dict[str, bytes]:
        dumps = self.store.serializer.dumps
        encoded = {}
        for key, value in session.sessionNamespaces.items():
            if not isinstance(key, str):
                raise UnserializableValue(
                    f"session {session.uid!r}: the session store needs str namespace keys, "
                    f"not {key!r}"
                )
            try:
                data = dumps(value)
            except Exception as e:
                raise UnserializableValue(
                    f"session {session.uid!r}: namespace key {key!r}: the store's serializer "
                    f"cannot encode {type(value).__name__} {value!r}: {e}"
                ) from e
            if not isinstance(data, bytes):
                raise UnserializableValue(
                    f"session {session.uid!r}: namespace key {key!r}: the store's serializer "
                    f"gave {type(data).__name__}, not bytes"
                )
            encoded[key] = data
        return encoded

    def _saveSession(self, session: Any) -> Deferred[None] | None:
        """
        Write what changed in C{session} since the store last saw it; C{None} when nothing
        did. L{UnserializableValue}, with the session put back as stored, when a value
        cannot be encoded.
        """
        copy = self._copies.get(session)
        if copy is None:
            logout = self._logouts.get(session)
            return None if logout is None else logout.wait()
        try:
            encoded = self._encode(session)
        except UnserializableValue:
            self._revert(session)
            raise
        changed = {k: v for k, v in encoded.items() if copy.fields.get(k) != v}
        deleted = [k for k in copy.fields if k not in encoded]
        uid = session.uid
        if not changed and not deleted and copy.storedAs == uid:
            return None
        new = copy.storedAs is None

        def saved(written: bool) -> None:
            if not written:
                # Logged out or timed out elsewhere: this copy is all that is left of it.
                self._dropFound(session)
                return
            copy.storedAs = uid
            copy.fields.update(changed)
            for key in deleted:
                copy.fields.pop(key, None)

        def failed(reason: Failure) -> Failure:
            if new:
                self._dropFound(session)
            return reason

        saving = self.store.save(uid, copy.storedAs, session.sessionTimeout, changed, deleted)
        return saving.addCallbacks(saved, failed)

    def saveSession(self, session: Any) -> Deferred[None]:
        """
        Write C{session}'s changes to the store now, for a session changed outside a
        request (a request writes its own). Fires when written; fails with
        L{UnserializableValue} or the store's error.
        """
        if self.store is None:
            raise RuntimeError("saveSession needs a site with a store")
        try:
            saving = self._saveSession(session)
        except UnserializableValue:
            return fail()
        return saving if saving is not None else succeed(None)

    def _mkuid(self) -> bytes:
        self.counter = self.counter + 1
        entropy = self._entropy
        if entropy is os.urandom:
            return session_id()
        return hexlify(entropy(32))


class _Copy:
    """
    What this process knows of a stored session: the id it is stored under (C{None} until
    first written) and its fields as last read or written.
    """

    __slots__ = ("storedAs", "fields")

    def __init__(self, storedAs: bytes | None, fields: dict[str, bytes]) -> None:
        self.storedAs = storedAs
        self.fields = fields


class _Outcome:
    """
    A store deletion's outcome, which any number of requests can wait for.
    """

    __slots__ = ("_result", "_waiters")

    def __init__(self, deleting: Deferred[None], uid: bytes) -> None:
        self._result: object = _PENDING
        self._waiters: list[Deferred[None]] = []

        def done(result: object) -> None:
            if isinstance(result, Failure):
                _log.failure("while deleting session {uid!r} from the store", result, uid=uid)
            self._result = result
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                _fire(waiter, result)

        deleting.addBoth(done)

    def wait(self) -> Deferred[None] | None:
        """
        A L{Deferred} for the outcome; C{None} once the deletion succeeded.
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


def _fire(waiter: Deferred[None], result: object) -> None:
    if isinstance(result, Failure):
        waiter.errback(result)
    else:
        waiter.callback(None)


def _copyEnded(siteRef: Any, sessionRef: Any) -> None:
    site, session = siteRef(), sessionRef()
    if site is not None and session is not None:
        site._ended(session)


def renewSession(request: Any, forceNotSecure: bool = False) -> Any:
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
    """
    site = request.site
    secure = request.isSecure() and not forceNotSecure
    # The session this request already has, live, as is: getSession would touch it again.
    session = getattr(request, "_secureSession" if secure else "_insecureSession", None)
    if session is None or site.sessions.get(session.uid) is not session:
        session = request.getSession(forceNotSecure=forceNotSecure)
    cookiename = _cookieName(site, request, secure)
    new = site._mkuid()
    if site.sessions.get(session.uid) is session:
        del site.sessions[session.uid]
    session.uid = new
    site.sessions[new] = session
    prefix = cookiename + b"="
    request.cookies[:] = [c for c in request.cookies if not c.startswith(prefix)]
    _addSessionCookie(request, cookiename, new, secure)
    return session


_txsession.bind_site(Site)
classImplements(_txsession.SharedDelayedCall, IDelayedCall)
