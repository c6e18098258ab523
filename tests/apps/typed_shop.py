"""
A small typed shop app written to Twisted's documentation, with txsession swapped in the ways
the README shows. tests/test_typing.py runs mypy on it, and on the same app with Twisted's own
classes, and expects both to pass the same way.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.python.components import Componentized, registerAdapter
from twisted.web import server
from twisted.web.resource import Resource
from zope.interface import Attribute, Interface, implementer  # type: ignore[import-untyped]

import txsession

SessionClass = txsession.Session  # SWAP: server.Session


class ICart(Interface):
    items = Attribute("the items in the cart")


@implementer(ICart)
class Cart:
    def __init__(self, session: server.Session) -> None:
        self.items: list[str] = []


registerAdapter(Cart, server.Session, ICart)


class ShortSession(SessionClass):
    sessionTimeout = 60


class Shop(Resource):
    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        session = request.getSession()
        cart = ICart(session)
        cart.items.append("book")
        session.sessionNamespaces["visits"] = session.sessionNamespaces.get("visits", 0) + 1
        session.touch()
        return b"%d" % len(cart.items)


def configure(site: server.Site) -> None:
    site.sessionFactory = SessionClass
    site.sessionFactory = ShortSession


def fiddle(session: server.Session) -> float:
    session.sessionTimeout = 5
    session.sessionNamespaces = {}
    session.notifyOnExpire(lambda: None)
    assert isinstance(session, Componentized)
    return float(session.lastModified)


def makeSite() -> server.Site:
    site = server.Site(Shop(), reactor=reactor)  # SWAP: server.Site(Shop(), reactor=reactor)
    configure(site)
    return site


def makeTxsessionSite() -> server.Site:
    # The shared timer is txsession.Site's default: one reactor call for every session.
    return txsession.Site(
        Shop(),
        cookieName=b"SHOP_SESSION",
        cookieHttpOnly=True,
        cookieSameSite=b"Lax",
        cookieMaxAge=3600,
        slidingExpiry=True,
    )


def makeStoreSite(url: str) -> server.Site:
    store = txsession.RedisStore(url, keyPrefix="shop:", timeout=1.5)
    return txsession.Site(Shop(), store=store, maxSessions=10_000)


def login(request: server.Request) -> None:
    session = txsession.renewSession(request)
    session.sessionNamespaces["user"] = "ann"


def makeSession(site: server.Site) -> server.Session:
    session = SessionClass(site, b"uid")
    session.startCheckingExpiration()
    session.expire()
    return session
