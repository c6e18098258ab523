"""
L{Site}: Twisted's L{twisted.web.server.Site} with txsession's sessions, session ids made in
Rust, and opt-in C{HttpOnly} and C{SameSite} flags on the session cookie.
"""

from __future__ import annotations

import os
from binascii import hexlify

from twisted.web import server

from txsession._txsession import Session, session_id

_SESSION_COOKIES = (b"TWISTED_SESSION", b"TWISTED_SECURE_SESSION")
_SAME_SITE = (b"lax", b"strict")


class Request(server.Request):
    """
    Twisted's request, setting the session cookie with the flags its L{Site} asks for.
    """

    _txsessionSettingCookie = False

    def getSession(self, sessionInterface=None, forceNotSecure=False):
        self._txsessionSettingCookie = True
        try:
            return super().getSession(sessionInterface, forceNotSecure)
        finally:
            self._txsessionSettingCookie = False

    def addCookie(self, k, v, *args, **kwargs):
        if self._txsessionSettingCookie and k.startswith(_SESSION_COOKIES):
            site = self.site
            if getattr(site, "cookieHttpOnly", False):
                kwargs.setdefault("httpOnly", True)
            sameSite = getattr(site, "cookieSameSite", None)
            if sameSite is not None:
                kwargs.setdefault("sameSite", sameSite)
        return super().addCookie(k, v, *args, **kwargs)


class Site(server.Site):
    """
    A L{twisted.web.server.Site} whose sessions are L{txsession.Session} and whose session ids
    come from Rust: 32 bytes from a ChaCha generator seeded by the operating system,
    hex-encoded like Twisted's. Setting C{_entropy} (as Twisted's tests do) makes ids from that
    function instead, as in Twisted.

    With either cookie option, requests are L{Request} (or the C{requestFactory} given, which
    should derive from it); without, they are Twisted's own.

    @param cookieHttpOnly: Mark the session cookie C{HttpOnly}. Default: Twisted's behaviour,
        no flag.
    @param cookieSameSite: C{b"Lax"} or C{b"Strict"} to set C{SameSite} on the session cookie.
        Default: Twisted's behaviour, no attribute.
    """

    sessionFactory = Session

    def __init__(
        self,
        resource,
        requestFactory=None,
        *args,
        cookieHttpOnly=False,
        cookieSameSite=None,
        **kwargs,
    ):
        if cookieSameSite is not None:
            value = cookieSameSite.encode() if isinstance(cookieSameSite, str) else cookieSameSite
            if not isinstance(value, bytes) or value.lower() not in _SAME_SITE:
                raise ValueError(f"Invalid value for sameSite: {cookieSameSite!r}")
            cookieSameSite = value
        if requestFactory is None and (cookieHttpOnly or cookieSameSite is not None):
            # Without flags, Twisted's own Request serves: nothing is added to each request.
            requestFactory = Request
        super().__init__(resource, requestFactory, *args, **kwargs)
        self.cookieHttpOnly = cookieHttpOnly
        self.cookieSameSite = cookieSameSite

    def _mkuid(self):
        self.counter = self.counter + 1
        entropy = self._entropy
        if entropy is os.urandom:
            return session_id()
        return hexlify(entropy(32))
