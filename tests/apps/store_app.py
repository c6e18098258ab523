"""
A site on a Redis session store, for the store tests to run as server processes and to
drive in-process.

    python -m tests.apps.store_app --redis URL [--timeout S] [--port N]

prints C{PORT n} once listening. Pages (all JSON):
- C{/get}: the session's id and namespaces;
- C{/set?key=K&value=JSON[&delay=S]}: sets one key, answering after C{delay} seconds;
- C{/del?key=K}, C{/logout[?delay=S]}, C{/renew}: delete a key, expire the session (after
  C{delay} seconds, the session got at once), give it a new id;
- C{/py?key=K&kind=tuple|intkeys|mixed}: stores a value JSON would give back changed;
- C{/many?n=N} and C{/clear}: sets N keys at once, deletes every key;
- C{/bad?key=K}: stores a value JSON cannot encode (a set);
- C{/fail?key=K&value=JSON[&delay=S]}: sets one key, then fails (a 500), after C{delay}
  seconds when given;
- C{/plain}: never asks for its session;
- C{/trips}: how many round trips the store made;
- C{/ended}: the ids of this process's copies whose expire callbacks ran.
"""

from __future__ import annotations

import argparse
import json
import sys

from twisted.web import resource, server

import txsession
from txsession.redis import RedisStore
from txsession.web import Site


def _arg(request, name, default=None):
    values = request.args.get(name.encode())
    return values[0].decode() if values else default


def later(request, delay, f, *args):
    """
    C{reactor.callLater(delay, f, *args)}, for the delayed part of a page. For the store
    model test, which gives the site C{modelPages} and the request an C{rid}: that part is
    in C{site.modelPages[rid]} until it has run (what a request whose client hung up does
    after its end must have happened before it).
    """
    from twisted.internet import reactor

    pages = getattr(request.site, "modelPages", None)
    rid = _arg(request, "rid")

    def run():
        if pages is not None:
            pages.pop(rid, None)
        f(*args)

    call = reactor.callLater(delay, run)
    if pages is not None and rid is not None:
        pages[rid] = call
    return call


class _Page(resource.Resource):
    isLeaf = True

    def __init__(self, site_holder):
        super().__init__()
        self.holder = site_holder

    def answer(self, request, value):
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(value).encode()

    def state(self, request):
        session = request.getSession()
        return cachedFrom(
            request,
            session.uid,
            {"session": session.uid.decode(), "values": dict(session.sessionNamespaces)},
        )


def cachedFrom(request, uid, answer):
    """
    C{answer}, with (for the store model test, which gives the site C{modelTick} and
    C{modelStampTicks}) when the copy of session C{uid} that the request used without
    reading it was read, and when the request rendered.
    """
    ticks = getattr(request.site, "modelStampTicks", None)
    state = getattr(request, "_txsStore", None)
    stamp = None if state is None else state.cached.get(uid)
    if ticks is not None and stamp is not None:
        answer["cachedFrom"] = ticks.get(stamp, 0)
        rendered = getattr(request, "modelRendered", None)
        answer["rendered"] = request.site.modelTick() if rendered is None else rendered
    return answer


def noteRendered(request):
    """
    For the store model test: note when a page that answers later took its session (its
    copy was used then, when the request rendered, not when the answer is made).
    """
    tick = getattr(request.site, "modelTick", None)
    if tick is not None:
        request.modelRendered = tick()


class Get(_Page):
    def render_GET(self, request):
        return self.answer(request, self.state(request))


class Set(_Page):
    def render_GET(self, request):
        session = request.getSession()
        session.sessionNamespaces[_arg(request, "key")] = json.loads(_arg(request, "value"))
        delay = float(_arg(request, "delay", "0"))
        if not delay:
            return self.answer(request, self.state(request))

        def answer():
            if not request._disconnected:  # nothing to answer when the client has left
                request.write(self.answer(request, {"session": session.uid.decode()}))
                request.finish()

        later(request, delay, answer)
        return server.NOT_DONE_YET


class Del(_Page):
    def render_GET(self, request):
        request.getSession().sessionNamespaces.pop(_arg(request, "key"), None)
        return self.answer(request, self.state(request))


class Bad(_Page):
    def render_GET(self, request):
        request.getSession().sessionNamespaces[_arg(request, "key")] = {1, 2}
        return self.answer(request, "stored")


class Fail(_Page):
    def render_GET(self, request):
        session = request.getSession()
        session.sessionNamespaces[_arg(request, "key")] = json.loads(_arg(request, "value"))
        delay = float(_arg(request, "delay", "0"))
        if not delay:
            raise RuntimeError("the page failed on purpose")

        def fail():
            from twisted.internet import defer

            failing = defer.maybeDeferred(lambda: 1 / 0)
            # processingFailed answers the request and gives the failure back: consumed here.
            failing.addErrback(request.processingFailed).addErrback(lambda _: None)

        later(request, delay, fail)
        return server.NOT_DONE_YET


class Py(_Page):
    values = {"tuple": (1, 2), "intkeys": {1: "one"}, "mixed": {1: "a", "1": "b"}}

    def render_GET(self, request):
        request.getSession().sessionNamespaces[_arg(request, "key")] = self.values[
            _arg(request, "kind")
        ]
        return self.answer(request, "stored")


class Many(_Page):
    def render_GET(self, request):
        namespaces = request.getSession().sessionNamespaces
        namespaces.update({f"k{i}": i for i in range(int(_arg(request, "n")))})
        return self.answer(request, len(namespaces))


class Clear(_Page):
    def render_GET(self, request):
        request.getSession().sessionNamespaces.clear()
        return self.answer(request, "cleared")


class Logout(_Page):
    def render_GET(self, request):
        session = request.getSession()
        delay = float(_arg(request, "delay", "0"))
        if not delay:
            session.expire()
            return self.answer(request, "bye")

        def bye():
            session.expire()
            request.write(self.answer(request, "bye"))
            request.finish()

        later(request, delay, bye)
        return server.NOT_DONE_YET


class Renew(_Page):
    """
    C{/renew[?delay=S[&finishFirst=1][&key=K&value=V][&times=N][&user=U]]}: renews the
    session; with a delay, sets K (when given) at once, and renews S seconds later (N times
    in a row, the last bound to U when given), answering then, or at once with finishFirst.
    """

    def renew(self, request):
        times = int(_arg(request, "times", "1"))
        for i in range(times):
            user = _arg(request, "user") if i == times - 1 else None
            txsession.renewSession(request, user=user)

    def render_GET(self, request):
        delay = float(_arg(request, "delay", "0"))
        if not delay:
            txsession.renewSession(request)
            return self.answer(request, self.state(request))
        session = request.getSession()
        if _arg(request, "key"):
            session.sessionNamespaces[_arg(request, "key")] = json.loads(_arg(request, "value"))
        if _arg(request, "finishFirst", ""):
            # Answered at once (the response goes out once its write has answered); the
            # renewal comes after.
            request.write(self.answer(request, {"session": session.uid.decode()}))
            request.finish()
            later(request, delay, self.renew, request)
            return server.NOT_DONE_YET

        def renewThenAnswer():
            self.renew(request)
            if not request._disconnected:  # nothing to answer when the client has left
                request.write(self.answer(request, {"session": session.uid.decode()}))
                request.finish()

        later(request, delay, renewThenAnswer)
        return server.NOT_DONE_YET


class Plain(_Page):
    def render_GET(self, request):
        return self.answer(request, "plain")


class Trips(_Page):
    def render_GET(self, request):
        return self.answer(request, self.holder.site.store.roundTrips)


class Ended(_Page):
    def render_GET(self, request):
        return self.answer(request, self.holder.ended)


class _Holder:
    site: Site
    ended: list[str]


def makeSite(store, timeout=60.0, reactor=None, **siteOptions) -> Site:
    """
    The app's site on C{store}, its sessions lasting C{timeout} idle seconds.
    """
    holder = _Holder()
    holder.ended = []
    root = resource.Resource()
    for name, page in [
        (b"get", Get),
        (b"set", Set),
        (b"del", Del),
        (b"bad", Bad),
        (b"fail", Fail),
        (b"py", Py),
        (b"many", Many),
        (b"clear", Clear),
        (b"logout", Logout),
        (b"renew", Renew),
        (b"plain", Plain),
        (b"trips", Trips),
        (b"ended", Ended),
    ]:
        root.putChild(name, page(holder))

    class AppSession(txsession.Session):
        sessionTimeout = timeout

        def __init__(self, site, uid, reactor=None):
            super().__init__(site, uid, reactor)
            self.notifyOnExpire(lambda: holder.ended.append(self.uid.decode()))

    site = Site(root, store=store, reactor=reactor, **siteOptions)
    site.sessionFactory = AppSession
    holder.site = site
    return site


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", required=True)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    from twisted.internet import reactor

    site = makeSite(RedisStore(args.redis, timeout=2.0), args.timeout)
    port = reactor.listenTCP(args.port, site, interface="127.0.0.1")
    print(f"PORT {port.getHost().port}", flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
