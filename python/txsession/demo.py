"""
A small web site that uses everything txsession offers.

    python -m txsession.demo [--port N] [--timeout S] [--redis URL]

- C{/}: counts your visits in C{session.sessionNamespaces} and shows your cart;
- C{/add?item=NAME}: puts an item in your cart, a component made by C{registerAdapter};
- C{/state}: the same as JSON (what the end-to-end tests read);
- C{/login?user=NAME}: logs you in, giving your session a fresh id (L{txsession.renewSession});
- C{/logout}: expires your session; C{notifyOnExpire} logs a line when a session ends.

Sessions are L{DemoSession}, a subclass with its own timeout, on a L{txsession.Site} whose
session cookie is C{HttpOnly} and C{SameSite=Lax}, with sliding expiry: the timeout counts
from each session's last use. Its sessions expire through the site's shared timer, one
reactor call for all of them, which C{txsession.Site} has by default. With C{--redis URL},
sessions are kept in that Redis server (L{txsession.redis.RedisStore}), so demos run side by
side on two ports share them.
"""

from __future__ import annotations

import argparse
import html
import json
import sys

from twisted.python import components, log
from twisted.web import resource
from zope.interface import Attribute, Interface, implementer

import txsession
from txsession.web import Site


class ICart(Interface):
    items = Attribute("The items in the cart, in order.")


@implementer(ICart)
class Cart:
    """
    A component that keeps its state in the session's namespaces, where a session store
    shares it with every process (components themselves are per process).
    """

    def __init__(self, session):
        self.session = session

    @property
    def items(self):
        return self.session.sessionNamespaces.setdefault("cart", [])


class DemoSession(txsession.Session):
    """
    A session with the demo's own timeout, set with C{--timeout}.
    """

    sessionTimeout = 300


components.registerAdapter(Cart, DemoSession, ICart)


def _state(request):
    session = request.getSession()
    return {
        "session": session.uid.decode("ascii"),
        "visits": session.sessionNamespaces.get("visits", 0),
        "cart": list(ICart(session).items),
        "timeout": session.sessionTimeout,
        "user": session.sessionNamespaces.get("user"),
    }


class Home(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        session = request.getSession()
        session.sessionNamespaces["visits"] = session.sessionNamespaces.get("visits", 0) + 1
        state = _state(request)
        items = "".join(f"<li>{html.escape(item)}</li>" for item in state["cart"])
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return (
            "<!doctype html><title>txsession demo</title>"
            f"<p>Visits this session: {state['visits']}</p>"
            f"<p>Logged in as: {html.escape(state['user'] or '(nobody)')}</p>"
            '<form action="/login"><input name="user"><button>Log in</button></form>'
            f"<p>Cart:</p><ul>{items}</ul>"
            '<form action="/add"><input name="item"><button>Add</button></form>'
            '<p><a href="/logout">Log out</a></p>'
        ).encode()


class Add(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        item = request.args.get(b"item", [b""])[0].decode("utf-8", "replace")
        if item:
            ICart(request.getSession()).items.append(item)
        request.redirect(b"/")
        return b""


class State(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(_state(request)).encode("utf-8")


class Login(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        user = request.args.get(b"user", [b""])[0].decode("utf-8", "replace")
        if user:
            # A fresh id at login: an id planted or learned before it is worth nothing now.
            txsession.renewSession(request).sessionNamespaces["user"] = user
        request.redirect(b"/")
        return b""


class Logout(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        request.getSession().expire()
        request.redirect(b"/")
        return b""


def makeSite(timeout: float = 300, reactor=None, store=None) -> Site:
    """
    The demo site, its sessions lasting C{timeout} seconds, timed on C{reactor} (the global
    reactor when None), kept in C{store} when given.
    """
    root = resource.Resource()
    root.putChild(b"", Home())
    root.putChild(b"add", Add())
    root.putChild(b"state", State())
    root.putChild(b"login", Login())
    root.putChild(b"logout", Logout())
    sessionClass = type("DemoSession", (DemoSession,), {"sessionTimeout": timeout})
    components.registerAdapter(Cart, sessionClass, ICart)

    class LoggingSite(Site):
        def makeSession(self):
            session = super().makeSession()
            session.notifyOnExpire(lambda: log.msg(f"session {session.uid.decode()} ended"))
            return session

    site = LoggingSite(
        root,
        cookieHttpOnly=True,
        cookieSameSite=b"Lax",
        slidingExpiry=True,
        reactor=reactor,
        store=store,
    )
    site.sessionFactory = sessionClass
    return site


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m txsession.demo", description=__doc__)
    parser.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (0: any)")
    parser.add_argument("--timeout", type=float, default=300, help="session timeout, seconds")
    parser.add_argument(
        "--redis", metavar="URL", help="keep sessions in Redis, e.g. redis://127.0.0.1:6379/0"
    )
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    from txsession.redis import RedisStore

    store = RedisStore(args.redis) if args.redis else None
    log.startLogging(sys.stdout)
    site = makeSite(args.timeout, store=store)
    port = reactor.listenTCP(args.port, site, interface="127.0.0.1")
    print(f"txsession demo at http://127.0.0.1:{port.getHost().port}/", flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
