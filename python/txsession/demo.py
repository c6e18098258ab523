"""
A small web site that uses everything txsession offers, as the README recommends.

    python -m txsession.demo [--port N] [--timeout S] [--absolute-timeout S] [--redis URL]
                             [--https CERT KEY]

- C{/}: counts your visits in C{session.sessionNamespaces}, shows your cart, and shows what
  the session is: whether your browser sent a session cookie (never its value), who is
  logged in, when the session began, and when it ends: if left idle, and at the latest
  (its absolute timeout), however busy;
- C{/add?item=NAME}: puts an item in your cart, a component made by C{registerAdapter};
- C{/state}: the same as JSON (what tests/test_web.py reads), without the session id;
- C{POST /login} (C{user=NAME}): logs you in, giving your session a fresh id bound to you
  (C{txsession.renewSession(request, user=NAME)});
- C{POST /logout}: ends your session (C{txsession.web.logout}); C{notifyOnExpire} logs a
  line when a session ends;
- C{/sessions}: your sessions, wherever you logged in, each with when it began and when it
  was last used (C{site.userSessions}), and a button that ends it (C{POST /sessions/end},
  C{site.endUserSession}); and a button that ends all but this one (C{POST /sessions/others},
  C{site.logoutUser(user, keep=session)}), "log out everywhere else".

Whatever logs in or out, or ends a session, is a POST form: C{SameSite=Lax} keeps the session
cookie off a POST that another site starts, but not off a GET link. No page shows a session
id: C{/sessions} names each session by the opaque id
C{userSessions} gives, which is not its cookie value.

Sessions are L{DemoSession}, a subclass with its own timeout, on a L{txsession.Site} whose
session cookie is C{HttpOnly} and C{SameSite=Lax}, over HTTPS C{__Host-TWISTED_SECURE_SESSION}
(L{SITE_OPTIONS}), with sliding expiry: the timeout counts from each session's last use. An
absolute timeout (C{--absolute-timeout}, 8 hours unless given) ends every session that long
after it began, however busy. Its sessions expire through the site's shared timer, one
reactor call for all of them, which C{txsession.Site} has by default. With C{--https CERT KEY}
it serves over TLS, where the session cookie is the C{Secure} one. With C{--redis URL},
sessions are kept in that Redis server (L{txsession.redis.RedisStore}), so demos run side by
side on two ports share them, and their users' sessions.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from datetime import datetime, timezone
from typing import Any, Callable

from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.python import components, log
from twisted.python.filepath import FilePath
from twisted.web import resource, server
from zope.interface import Attribute, Interface, implementer

import txsession
from txsession.web import Site, logout

# The session options the README recommends for a site behind TLS, which every demo site has.
# cookieHostPrefix names only the secure cookie, the one set over HTTPS.
SITE_OPTIONS: dict[str, Any] = {
    "cookieHttpOnly": True,
    "cookieSameSite": b"Lax",
    "cookieHostPrefix": True,
    "slidingExpiry": True,
}

# OWASP's range for most apps is 4 to 8 hours.
ABSOLUTE_TIMEOUT = 8 * 60 * 60


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


def _cookieSent(request) -> bool:
    """
    Whether C{request} carries a session cookie of its site, live or not.
    """
    return bool(request.site._sessionCookieUids(request))


def _ends(request, session) -> tuple[float | None, float, float | None]:
    """
    When C{session} began, when it ends if left idle, and when it ends however busy (None
    where the site does not know).
    """
    site = request.site
    created = site.createdAt(session)
    absolute = None
    if created is not None and site.absoluteTimeout is not None:
        absolute = created + site.absoluteTimeout
    return created, session.lastModified + session.sessionTimeout, absolute


def _state(request):
    session = request.getSession()
    created, idle, absolute = _ends(request, session)
    return {
        "cookie": _cookieSent(request),
        "visits": session.sessionNamespaces.get("visits", 0),
        "cart": list(ICart(session).items),
        "timeout": session.sessionTimeout,
        "user": session.sessionNamespaces.get("user"),
        "created": created,
        "idleEnd": idle,
        "absoluteEnd": absolute,
    }


def _time(seconds: float | None) -> str:
    if seconds is None:
        return "(unknown)"
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _facts(request, session) -> list[tuple[str, str, str]]:
    """
    What the home page shows of C{session}: (element id, label, value) rows. The id itself
    is never shown, only whether the browser sent one.
    """
    created, idle, absolute = _ends(request, session)
    return [
        ("cookie", "Your browser sent a session cookie", "yes" if _cookieSent(request) else "no"),
        ("user", "Logged in as", session.sessionNamespaces.get("user") or "(nobody)"),
        ("visits", "Visits this session", str(session.sessionNamespaces.get("visits", 0))),
        ("created", "The session began at", _time(created)),
        ("idle-end", "The session ends, if left idle, at", _time(idle)),
        ("absolute-end", "The session ends, however busy, at", _time(absolute)),
    ]


def _page(request, title: str, body: str) -> bytes:
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    return f"<!doctype html><title>{html.escape(title)}</title>{body}".encode()


def _form(id: str, action: str, button: str, fields: str = "") -> str:
    return f'<form id={id} method=post action="{action}">{fields}<button>{button}</button></form>'


def _later(request, d: Deferred, then: Callable[[Any], bytes]) -> object:
    """
    Answer C{request} with what C{then} makes of C{d}'s result, once it has one (a store's
    answer comes later; without a store it has come already).
    """
    gone: list[bool] = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))

    def answer(result: Any) -> None:
        if gone:
            return
        body = then(result)
        if body:
            request.write(body)
        request.finish()

    d.addCallback(answer).addErrback(lambda f: None if gone else request.processingFailed(f))
    return server.NOT_DONE_YET


def _redirect(request, to: bytes) -> bytes:
    request.redirect(to)
    return b""


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
            + _form("login", "/login", "Log in", '<input name=user aria-label="user name">')
            + _form("logout", "/logout", "Log out")
            + '<p><a id=sessions-link href="/sessions">Your sessions</a></p>'
            f"<p>Cart:</p><ul id=cart>{items}</ul>"
            + '<form id=add action="/add"><input name=item aria-label=item><button>Add</button>'
            "</form>",
        )


class Add(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        item = request.args.get(b"item", [b""])[0].decode("utf-8", "replace")
        if item:
            ICart(request.getSession()).items.append(item)
        return _redirect(request, b"/")


class State(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(_state(request)).encode("utf-8")


class Login(resource.Resource):
    isLeaf = True

    def render_POST(self, request):
        user = request.args.get(b"user", [b""])[0].decode("utf-8", "replace")
        if user:
            # A fresh id at login: an id planted or learned before it is worth nothing now.
            # Bound to the user, so that /sessions lists it and can end it from elsewhere.
            session = txsession.renewSession(request, user=user)
            session.sessionNamespaces["user"] = user
        return _redirect(request, b"/")


class Logout(resource.Resource):
    isLeaf = True

    def render_POST(self, request):
        if not _cookieSent(request):
            # getSession() would make a session only to end it, and its cookie would replace
            # any the browser kept back (a cross-site POST, with SameSite).
            return _page(
                request,
                "Log out",
                "<p id=no-session>Your browser sent no session cookie: no session ended.</p>",
            )
        logout(request)
        return _redirect(request, b"/")


def _user(request) -> str | None:
    return request.getSession().sessionNamespaces.get("user")


class Sessions(resource.Resource):
    """
    The logged-in user's sessions, wherever they logged in, and the forms that end them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.putChild(b"end", EndSession())
        self.putChild(b"others", EndOtherSessions())

    def getChild(self, path, request):
        if path == b"":
            return self
        return super().getChild(path, request)

    def render_GET(self, request):
        session = request.getSession()
        user = session.sessionNamespaces.get("user")
        if user is None:
            return _page(
                request,
                "Your sessions",
                '<p id=not-logged-in>Log in to see your sessions.</p><a href="/">Home</a>',
            )
        created, _, _ = _ends(request, session)

        def page(records: list[dict[str, Any]]) -> bytes:
            records = sorted(records, key=lambda r: (r["created"] is None, r["created"] or 0))
            rows = "".join(
                f"<tr class=session id=session-{n}>"
                f"<td>{html.escape(_time(r['created']))}</td>"
                f"<td>{html.escape(_time(r['lastUsed']))}</td><td>"
                + _form(
                    f"end-{n}",
                    "/sessions/end",
                    "End",
                    f'<input type=hidden name=id value="{html.escape(r["id"])}">',
                )
                + "</td></tr>"
                for n, r in enumerate(records)
            )
            return _page(
                request,
                "Your sessions",
                f"<p>The sessions of <span id=user>{html.escape(user)}</span>. This browser's "
                f"began at <span id=created>{html.escape(_time(created))}</span>.</p>"
                "<table id=sessions><tr><th>Began<th>Last used<th></tr>"
                f"{rows}</table>"
                + _form("others", "/sessions/others", "Log out everywhere else")
                + '<p><a id=home href="/">Home</a></p>',
            )

        return _later(request, request.site.userSessions(user), page)


class EndSession(resource.Resource):
    isLeaf = True

    def render_POST(self, request):
        user = _user(request)
        id = request.args.get(b"id", [b""])[0].decode("ascii", "replace")
        if user is None or not id:
            return _redirect(request, b"/sessions")
        d = request.site.endUserSession(user, id)
        return _later(request, d, lambda _: _redirect(request, b"/sessions"))


class EndOtherSessions(resource.Resource):
    isLeaf = True

    def render_POST(self, request):
        session = request.getSession()
        user = session.sessionNamespaces.get("user")
        if user is None:
            return _redirect(request, b"/sessions")
        d = request.site.logoutUser(user, keep=session)
        return _later(request, d, lambda _: _redirect(request, b"/sessions"))


def makeSite(
    timeout: float = 300,
    reactor=None,
    store=None,
    absoluteTimeout: float = ABSOLUTE_TIMEOUT,
) -> Site:
    """
    The demo site, its sessions lasting C{timeout} seconds from their last use and
    C{absoluteTimeout} seconds at most, timed on C{reactor} (the global reactor when None),
    kept in C{store} when given.
    """
    root = resource.Resource()
    root.putChild(b"", Home())
    root.putChild(b"add", Add())
    root.putChild(b"state", State())
    root.putChild(b"login", Login())
    root.putChild(b"logout", Logout())
    root.putChild(b"sessions", Sessions())
    sessionClass = type("DemoSession", (DemoSession,), {"sessionTimeout": timeout})
    components.registerAdapter(Cart, sessionClass, ICart)

    class LoggingSite(Site):
        def makeSession(self):
            session = super().makeSession()
            # Never the id in a log line: it is the login.
            session.notifyOnExpire(lambda: log.msg("a session ended"))
            return session

    site = LoggingSite(
        root, reactor=reactor, store=store, absoluteTimeout=absoluteTimeout, **SITE_OPTIONS
    )
    site.sessionFactory = sessionClass
    return site


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m txsession.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (0: any)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=300,
        metavar="S",
        help="a session ends this long after its last use (default 300)",
    )
    parser.add_argument(
        "--absolute-timeout",
        type=float,
        default=ABSOLUTE_TIMEOUT,
        metavar="S",
        help="a session ends this long after it began, however busy (default 8 hours)",
    )
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
    site = makeSite(args.timeout, store=store, absoluteTimeout=args.absolute_timeout)
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
