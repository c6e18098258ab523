"""
The second round of attacks on the store and the session security options, against a real
C{redis-server}: each test reproduced a defect on the code before its fix.
"""

from __future__ import annotations

import json

from twisted.internet import defer, reactor, task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest
from twisted.web import resource, server

import txsession
from tests._proxy import UPSTREAM, FaultProxy
from tests._redis import sessionKey
from tests.apps import store_app
from tests.test_store import sleep
from tests.test_store_attacks import AttackTestCase, _withCookie
from tests.test_web import Client
from txsession.redis import RedisStore
from txsession.web import Site, renewSession


def _answer(request, d):
    def done(result):
        request.write(json.dumps(result).encode())
        request.finish()

    def failed(f):
        request.processingFailed(f)

    d.addCallbacks(done, failed)
    return server.NOT_DONE_YET


class AccountPages(resource.Resource):
    """
    /login?user=U[&delay=S]   renewSession(user=U); sets namespace user
    /whoami                   {"session", "user"}
    /mine                     userSessions(user)
    /others?delay=S           getSession() now, logoutUser(user, keep=session) after S seconds
    /end?id=ID                endUserSession(user, id)
    /set?key=K&value=V        a write
    /logout                   expire()
    """

    isLeaf = True

    def render_GET(self, request):
        path = request.path
        args = {k.decode(): v[0].decode() for k, v in request.args.items()}
        site = request.site
        if path == b"/login":
            user = args["user"]
            s = renewSession(request, user=user)
            s.sessionNamespaces["user"] = user
            delay = float(args.get("delay", "0"))
            if delay:
                d = defer.Deferred()
                reactor.callLater(delay, d.callback, {"session": s.uid.decode()})
                return _answer(request, d)
            return json.dumps({"session": s.uid.decode()}).encode()
        session = request.getSession()
        user = session.sessionNamespaces.get("user")
        if path == b"/set":
            session.sessionNamespaces[args["key"]] = json.loads(args["value"])
            return b"ok"
        if path == b"/logout":
            session.expire()
            return b"bye"
        if user is None and "as" not in args and path in (b"/mine", b"/others", b"/end"):
            return b"null"
        if path == b"/mine":
            return _answer(request, site.userSessions(args.get("as", user)))
        if path == b"/others":
            delay = float(args.get("delay", "0"))
            d = defer.Deferred()
            reactor.callLater(
                delay,
                lambda: site.logoutUser(user, keep=session).chainDeferred(d),
            )
            return _answer(request, d)
        if path == b"/end":
            return _answer(request, site.endUserSession(args.get("as", user), args["id"]))
        return json.dumps({"session": session.uid.decode(), "user": user}).encode()


def accountSite(store, **options):
    return Site(AccountPages(), store=store, **options)


class KeepDefectTests(AttackTestCase):
    @defer.inlineCallbacks
    def test_keptSessionSurvivesItsRenameInFlight(self):
        """
        README: logoutUser(user, keep=session) "ends every other session of the user". It
        deleted the kept session itself when that session's re-login (a rename) was in
        flight: the set's member had moved to the new id, and the kept name was the old.
        """
        proxy = FaultProxy(self.redis.port)
        self.addCleanup(proxy.stop)
        store = RedisStore(f"redis://127.0.0.1:{proxy.port}/0", timeout=3)
        site = self.serve(accountSite(store))
        yield store.load([b"warm-up"])
        phone, laptop = Client(site.base), Client(site.base)
        yield phone.get(b"login?user=alice")
        yield laptop.get(b"login?user=alice")
        others = laptop.get(b"others?delay=0.3")
        yield sleep(0.05)
        relogin = laptop.get(b"login?user=alice&delay=0.15")
        yield sleep(0.1)
        proxy.latency(500, direction=UPSTREAM)
        response, body = yield relogin
        kept = json.loads(body)["session"]
        _, ended = yield others
        yield proxy.reset()
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(ended), 1)
        self.assertTrue(self.redis.hgetall(sessionKey(kept)), "the kept session was deleted")
        _, body = yield laptop.get(b"whoami")
        self.assertEqual(json.loads(body)["user"], "alice")


class RaisingCallbackDefectTests(AttackTestCase):
    @defer.inlineCallbacks
    def test_logoutWithARaisingExpireCallback(self):
        """
        README: a logout deletes the session in Redis, and no process serves it after. A
        session class whose __init__ registers an expire callback that raises (before the
        site's own) left the deletion undone.
        """

        def audit():
            raise RuntimeError("audit log unavailable")

        class Audited(txsession.Session):
            def __init__(self, site, uid, reactor=None):
                super().__init__(site, uid, reactor)
                self.notifyOnExpire(audit)

        site = store_app.makeSite(RedisStore(self.redis.url))
        site.sessionFactory = Audited
        site = self.serve(site)
        other = self.makeSite()
        client = Client(site.base)
        _, state = yield self.get(client, site, b'set?key=role&value="admin"')
        uid = state["session"]
        yield self.get(client, site, b"logout")
        self.flushLoggedErrors(RuntimeError)
        yield sleep(0.2)
        _, there = yield self.get(_withCookie(other, uid), other, b"get")
        self.assertNotEqual(there["session"], uid)
        self.assertEqual(self.redis.keys(), [])


class SetAsideDefectTests(AttackTestCase):
    @defer.inlineCallbacks
    def test_setAsideCopyIsNotEndedAtTheAbsoluteEnd(self):
        """
        README: a copy found renamed is set aside without running its expire callbacks. Its
        absolute-end timer still ran its expire() (a logged KeyError per login, in every
        other process that had read the session).
        """
        a = self.serve(store_app.makeSite(RedisStore(self.redis.url), absoluteTimeout=1.0))
        b = self.serve(store_app.makeSite(RedisStore(self.redis.url), absoluteTimeout=1.0))
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")
        old = state["session"]
        yield self.get(client, b, b"get")
        oldCopy = b.sessions[old.encode()]
        yield self.get(client, a, b"renew")
        _, seen = yield self.get(_withCookie(b, old), b, b"get")
        self.assertNotEqual(seen["session"], old)
        self.assertNotIn(oldCopy, b._absolute)
        yield sleep(1.2)
        self.assertEqual(self.flushLoggedErrors(KeyError), [])


class ReactorCallLogDefectTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_absoluteReactorCallLogsATag(self):
        """
        README: no log line txsession writes carries a session id. With sharedTimer=False
        the absolute end's reactor call logged an expire() that raised KeyError(uid) with
        the raw id.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        site = Site(resource.Resource(), sharedTimer=False, absoluteTimeout=0.1)
        session = site.makeSession()
        session.sessionTimeout = 0.2
        session.touch()
        del site.sessions[session.uid]
        yield task.deferLater(reactor, 0.15, lambda: None)
        self.flushLoggedErrors(KeyError)
        if session._expireCall is not None and session._expireCall.active():
            session._expireCall.cancel()
        text = "\n".join(
            formatEvent(e) + (e["log_failure"].getTraceback() if "log_failure" in e else "")
            for e in events
        )
        self.assertIn("session#", text)
        self.assertNotIn(session.uid.decode(), text)
