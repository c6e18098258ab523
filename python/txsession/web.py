"""
L{Site}: Twisted's L{twisted.web.server.Site} with txsession's sessions, session ids made in
Rust, and opt-in C{HttpOnly} and C{SameSite} flags on the session cookie.
"""

from __future__ import annotations

import os
import weakref
from binascii import hexlify
from typing import Any, Callable

from twisted.web import server

from txsession._session import Session
from txsession._txsession import session_id

_SESSION_COOKIES = (b"TWISTED_SESSION", b"TWISTED_SECURE_SESSION")
_SAME_SITE = (b"lax", b"strict")


class SessionCookieMixin:
    """
    Mixed into a request class: the session cookie that C{getSession} sets gets the flags
    its site asks for (C{cookieHttpOnly}, C{cookieSameSite}).
    """

    _txsessionSettingCookie = False

    def getSession(self, sessionInterface=None, forceNotSecure=False):
        self._txsessionSettingCookie = True
        try:
            return super().getSession(sessionInterface, forceNotSecure)  # type: ignore[misc]
        finally:
            self._txsessionSettingCookie = False

    def addCookie(self, k, v, *args, **kwargs):
        if self._txsessionSettingCookie and k.startswith(_SESSION_COOKIES):
            site = self.site  # type: ignore[attr-defined]
            if getattr(site, "cookieHttpOnly", False):
                kwargs.setdefault("httpOnly", True)
            sameSite = getattr(site, "cookieSameSite", None)
            if sameSite is not None:
                kwargs.setdefault("sameSite", sameSite)
        return super().addCookie(k, v, *args, **kwargs)  # type: ignore[misc]


class Request(SessionCookieMixin, server.Request):
    """
    Twisted's request, setting the session cookie with the flags its L{Site} asks for.
    """


# A request class an app gave, and the same class with the cookie flags mixed in.
_withCookies: weakref.WeakKeyDictionary[type, type] = weakref.WeakKeyDictionary()
_withCookies[server.Request] = Request


def _sessionCookieRequest(factory: Any) -> Any:
    """
    C{factory}, a request class, with L{SessionCookieMixin} mixed in (the same derived class
    each time). C{TypeError} for anything else: the flags could not be applied.
    """
    if isinstance(factory, type) and issubclass(factory, SessionCookieMixin):
        return factory
    if not (isinstance(factory, type) and issubclass(factory, server.Request)):
        raise TypeError(
            "cookieHttpOnly and cookieSameSite need a requestFactory that is a subclass of "
            f"twisted.web.server.Request, to set the session cookie; got {factory!r}"
        )
    derived = _withCookies.get(factory)
    if derived is None:
        derived = _withCookies[factory] = type(
            factory.__name__,
            (SessionCookieMixin, factory),
            {"__module__": factory.__module__, "__qualname__": factory.__qualname__},
        )
    return derived


class Site(server.Site):
    """
    A L{twisted.web.server.Site} whose sessions are L{txsession.Session} and whose session ids
    come from Rust: 32 bytes from a ChaCha generator seeded by the operating system,
    hex-encoded like Twisted's. Setting C{_entropy} (as Twisted's tests do) makes ids from that
    function instead, as in Twisted.

    The cookie options apply whatever the request factory is. With an option set, the
    C{requestFactory} read from the site is the one given (Twisted's L{server.Request} by
    default) with L{SessionCookieMixin} mixed in; without, it is the one given, unchanged.

    @param cookieHttpOnly: Mark the session cookie C{HttpOnly}. Default: Twisted's behaviour,
        no flag.
    @param cookieSameSite: C{b"Lax"} or C{b"Strict"} to set C{SameSite} on the session cookie.
        Default: Twisted's behaviour, no attribute.
    """

    sessionFactory = Session
    cookieHttpOnly = False
    cookieSameSite: bytes | None = None

    def __init__(
        self,
        resource: Any,
        requestFactory: Callable[..., Any] | None = None,
        *args: Any,
        cookieHttpOnly: bool = False,
        cookieSameSite: bytes | str | None = None,
        **kwargs: Any,
    ) -> None:
        if cookieSameSite is not None:
            value = cookieSameSite.encode() if isinstance(cookieSameSite, str) else cookieSameSite
            if not isinstance(value, bytes) or value.lower() not in _SAME_SITE:
                raise ValueError(f"Invalid value for sameSite: {cookieSameSite!r}")
            cookieSameSite = value
        self.cookieHttpOnly = cookieHttpOnly
        self.cookieSameSite = cookieSameSite
        super().__init__(resource, requestFactory, *args, **kwargs)
        # Raises now, not at the first connection, when the flags cannot be applied.
        self.requestFactory  # noqa: B018

    def _cookieOptions(self) -> bool:
        return bool(self.cookieHttpOnly) or self.cookieSameSite is not None

    @property  # type: ignore[override]
    def requestFactory(self) -> Any:
        factory = self.__dict__.get("_givenRequestFactory", server.Request)
        return _sessionCookieRequest(factory) if self._cookieOptions() else factory

    @requestFactory.setter
    def requestFactory(self, factory: Any) -> None:
        self.__dict__["_givenRequestFactory"] = factory

    def _mkuid(self) -> bytes:
        self.counter = self.counter + 1
        entropy = self._entropy
        if entropy is os.urandom:
            return session_id()
        return hexlify(entropy(32))
