"""
L{Site}: Twisted's L{twisted.web.server.Site} with txsession's sessions, session ids made in
Rust, opt-in session cookie options (C{HttpOnly}, C{SameSite}, C{Max-Age}, its name) and
sliding expiry; and L{renewSession}, which gives a request's session a fresh id at login.
"""

from __future__ import annotations

import os
import re
import weakref
from binascii import hexlify
from types import SimpleNamespace
from typing import Any, Callable

from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from zope.interface import classImplements

from txsession import _txsession
from txsession._session import Session
from txsession._txsession import SessionLru, SharedTimer, session_id

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

    def getSession(self, sessionInterface=None, forceNotSecure=False):
        # Twisted's Request.getSession, with the cookie's name and options from the site.
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
        C{expire} is logged and the next session is made all the same.
    """

    sessionFactory = Session
    cookieName = DEFAULT_COOKIE_NAME
    cookieHttpOnly = False
    cookieSameSite: bytes | None = None
    cookieMaxAge: int | None = None
    slidingExpiry = False
    maxSessions: int | None = None
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
        super().__init__(resource, requestFactory, *args, **kwargs)
        if sharedTimer:
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
        Twisted's C{makeSession}, after making room under C{maxSessions}.
        """
        lru = self._lru
        if lru is not None:
            while len(self.sessions) >= self.maxSessions:
                oldest = lru.oldest(self.sessions)
                if oldest is None:
                    break
                try:
                    oldest.expire()
                except Exception:
                    _log.failure("while evicting session {uid!r}", uid=oldest.uid)
        session = super().makeSession()
        if lru is not None:
            lru.add(session, self.sessions)
        return session

    def _mkuid(self) -> bytes:
        self.counter = self.counter + 1
        entropy = self._entropy
        if entropy is os.urandom:
            return session_id()
        return hexlify(entropy(32))


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
