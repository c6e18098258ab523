"""
A small web site that uses everything txsession offers, as the README recommends.

    python -m txsession.demo [--port N] [--timeout S] [--redis URL] [--https CERT KEY]

- C{/}: counts your visits in C{session.sessionNamespaces}, shows your cart, and shows what
  the session is: whether your browser sent a session cookie (never its value), who is
  logged in, and when the session ends if left idle;
- C{/add?item=NAME}: puts an item in your cart, a component made by C{registerAdapter};
- C{/state}: the same as JSON, with the session id (what the end-to-end tests read);
- C{POST /login} (C{user=NAME}): logs you in, giving your session a fresh id
  (L{txsession.renewSession});
- C{POST /logout}: expires your session; C{notifyOnExpire} logs a line when a session ends.

Login and logout are POST forms: C{SameSite=Lax} keeps the session cookie off a POST that
another site starts, but not off a GET link, so a GET must change nothing.

Sessions are L{DemoSession}, a subclass with its own timeout, on a L{txsession.Site} whose
session cookie is C{HttpOnly} and C{SameSite=Lax} (L{SITE_OPTIONS}), with sliding expiry: the
timeout counts from each session's last use. Its sessions expire through the site's shared
timer, one reactor call for all of them, which C{txsession.Site} has by default. With
C{--https CERT KEY} it serves over TLS, where the session cookie is the C{Secure} one. With
C{--redis URL}, sessions are kept in that Redis server (L{txsession.redis.RedisStore}), so
demos run side by side on two ports share them.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from datetime import datetime, timezone
from typing import Any

from twisted.internet import ssl
from twisted.python import components, log
from twisted.python.filepath import FilePath
from twisted.web import resource
from twisted.web.error import UnsupportedMethod
from zope.interface import Attribute, Interface, implementer

import txsession
from txsession.web import Site

# The session options the README recommends for a site behind TLS, which every demo site has.
SITE_OPTIONS: dict[str, Any] = {
    "cookieHttpOnly": True,
    "cookieSameSite": b"Lax",
    "slidingExpiry": True,
}


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


def _cookieSent(request) -> bool:
    """
    Whether C{request} carries a session cookie of its site, live or not.
    """
    return bool(request.site._sessionCookieUids(request))


def _time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _facts(request, session) -> list[tuple[str, str, str]]:
    """
    What the home page shows of C{session}: (element id, label, value) rows. The id itself
    is never shown, only whether the browser sent one.
    """
    return [
        ("cookie", "Your browser sent a session cookie", "yes" if _cookieSent(request) else "no"),
        ("user", "Logged in as", session.sessionNamespaces.get("user") or "(nobody)"),
        ("visits", "Visits this session", str(session.sessionNamespaces.get("visits", 0))),
        (
            "idle-end",
            "The session ends, if left idle, at",
            _time(session.lastModified + session.sessionTimeout),
        ),
    ]


def _page(request, title: str, body: str) -> bytes:
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    return f"<!doctype html><title>{html.escape(title)}</title>{body}".encode()


class Home(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        session = request.getSession()
        session.sessionNamespaces["visits"] = session.sessionNamespaces.get("visits", 0) + 1
        facts = "".join(
            f"<dt>{html.escape(label)}</dt><dd id={key}>{html.escape(value)}</dd>"
            for key, label, value in _facts(request, session)
        )
        items = "".join(f"<li>{html.escape(item)}</li>" for item in ICart(session).items)
        return _page(
            request,
            "txsession demo",
            f"<dl>{facts}</dl>"
            '<form id=login method=post action="/login">'
            '<input name=user aria-label="user name"><button>Log in</button></form>'
            '<form id=logout method=post action="/logout"><button>Log out</button></form>'
            f"<p>Cart:</p><ul id=cart>{items}</ul>"
            '<form id=add action="/add"><input name=item aria-label=item><button>Add</button>'
            "</form>",
        )


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


class _PostOnly(resource.Resource):
    """
    A resource that changes the session: browsers reach it by POST only. A GET from a client
    that is not a browser (one that sends no C{Sec-Fetch-Site}, as browsers do to this
    loopback address) is still served as a POST, for tests/test_web.py's client.
    """

    isLeaf = True

    def render_GET(self, request):
        if request.getHeader(b"sec-fetch-site") is not None:
            raise UnsupportedMethod([b"POST"])
        return self.render_POST(request)


class Login(_PostOnly):
    def render_POST(self, request):
        user = request.args.get(b"user", [b""])[0].decode("utf-8", "replace")
        if user:
            # A fresh id at login: an id planted or learned before it is worth nothing now.
            txsession.renewSession(request).sessionNamespaces["user"] = user
        request.redirect(b"/")
        return b""


class Logout(_PostOnly):
    def render_POST(self, request):
        if not _cookieSent(request):
            # getSession() would make a session only to end it, and its cookie would replace
            # any the browser kept back (a cross-site POST, with SameSite).
            return _page(
                request,
                "Log out",
                "<p id=no-session>Your browser sent no session cookie: no session ended.</p>",
            )
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
            # Never the id in a log line: it is the login.
            session.notifyOnExpire(lambda: log.msg("a session ended"))
            return session

    site = LoggingSite(root, reactor=reactor, store=store, **SITE_OPTIONS)
    site.sessionFactory = sessionClass
    return site


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m txsession.demo", description=__doc__)
    parser.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (0: any)")
    parser.add_argument("--timeout", type=float, default=300, help="session timeout, seconds")
    parser.add_argument(
        "--redis", metavar="URL", help="keep sessions in Redis, e.g. redis://127.0.0.1:6379/0"
    )
    parser.add_argument(
        "--https",
        nargs=2,
        metavar=("CERT", "KEY"),
        help="serve over TLS with this certificate and private key (PEM files)",
    )
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    from txsession.redis import RedisStore

    store = RedisStore(args.redis) if args.redis else None
    log.startLogging(sys.stdout)
    site = makeSite(args.timeout, store=store)
    if args.https:
        cert, key = (FilePath(path).getContent() for path in args.https)
        options = ssl.PrivateCertificate.loadPEM(cert + b"\n" + key).options()
        port = reactor.listenSSL(args.port, site, options, interface="127.0.0.1")
    else:
        port = reactor.listenTCP(args.port, site, interface="127.0.0.1")
    scheme = "https" if args.https else "http"
    print(f"txsession demo at {scheme}://127.0.0.1:{port.getHost().port}/", flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
