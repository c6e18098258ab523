"""
L{txsession.Site} on a L{RedisStore}, against a real C{redis-server} started for these tests:
sessions shared by sites (each with its own store, as separate processes have) and by server
processes over real HTTP with cookies; per-key writes, idle timeouts, logout, restarts,
unserializable values, Redis stopped and started again, and the round trips each request
costs.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time

from twisted.internet import defer, protocol, reactor, task
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web import resource
from twisted.web.client import ResponseFailed

import txsession
from tests._redis import RedisServer, sessionKey
from tests.apps import store_app
from tests.test_security import _cookie
from tests.test_web import Client
from txsession.redis import RedisStore
from txsession.store import (
    ISessionStore,
    JSONSerializer,
    SessionEnded,
    StoreError,
    StoreUnavailable,
)
from txsession.web import Site

_server: RedisServer | None = None


def redis() -> RedisServer:
    """
    The tests' Redis server, started once and emptied for each test.
    """
    global _server
    if _server is None:
        _server = RedisServer()
        atexit.register(_server.close)
    if _server.process is None:
        _server.start()
    _server.command(b"FLUSHALL")
    return _server


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


class StoreTestCase(unittest.TestCase):
    def setUp(self):
        self.redis = redis()

    def makeSite(self, timeout=60.0, **storeOptions):
        """
        A site with a store of its own, as a separate process would have, on loopback.
        """
        return self.serve(store_app.makeSite(RedisStore(self.redis.url, **storeOptions), timeout))

    def serve(self, site, secure=False):
        """
        Serve C{site} on loopback (HTTPS when C{secure}), its address in C{site.base}; stop,
        drop its copies and close its store afterwards.
        """
        if secure:
            from tests.test_security import _tls

            port = reactor.listenSSL(0, site, _tls().server, interface="127.0.0.1")
        else:
            port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(site.store.close)
        self.addCleanup(self.endSessions, site)
        self.addCleanup(port.stopListening)
        scheme, host = (b"https", b"localhost") if secure else (b"http", b"127.0.0.1")
        site.base = b"%s://%s:%d/" % (scheme, host, port.getHost().port)
        return site

    def endSessions(self, site):
        for session in list(site.sessions.values()):
            site._dropLocally(session)

    @defer.inlineCallbacks
    def sync(self, site):
        """
        Wait until C{site} has processed every invalidation Redis pushed to it so far: a PING
        answered on its connection comes after them (client-side caching: a copy may be
        used until its invalidation is processed, README's "What a copy may not see"). Only
        for a site on the tests' own Redis, reached directly (not through a fault proxy).
        """
        store = getattr(site, "store", None)
        tracker = getattr(store, "_tracker", None)
        client = getattr(store, "_client", None)
        protocol = getattr(client, "_protocol", None)
        if tracker is None or protocol is None or not protocol.live:
            return
        if store._address.nodes[:1] != [("127.0.0.1", self.redis.port)]:
            return
        pinging = protocol.send([[b"PING"]])
        waited = task.deferLater(reactor, 1.0, lambda: None)
        yield defer.DeferredList([pinging, waited], fireOnOneCallback=True, consumeErrors=True)
        if waited.called is False:
            waited.cancel()

    @defer.inlineCallbacks
    def get(self, client, site, path, sync=True):
        """
        Request C{path} from C{site} as C{client}: its status and its JSON. With C{sync}
        (the default), first let the site process the invalidations Redis has pushed it.
        """
        if sync:
            yield self.sync(site)
        response, body = yield client.agent.request(
            b"GET", site.base + path, None, None
        ).addCallback(lambda r: _read(r))
        return response.code, json.loads(body) if body.startswith((b"{", b"[", b'"')) else body

    def stored(self, uid):
        """
        The fields Redis holds for session C{uid}, but for the times it was made and last
        used (m:c, m:l), which differ from run to run.
        """
        fields = self.redis.hgetall(sessionKey(uid))
        return {k: v for k, v in fields.items() if k not in (b"m:c", b"m:l")}


@defer.inlineCallbacks
def _read(response):
    from twisted.web.client import readBody

    body = yield readBody(response)
    return response, body


class SharedTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_madeHereFoundThere(self):
        """
        A session made on one site is found on another with its namespaces, and changes made
        there are seen here on the next request.
        """
        a, b = self.makeSite(), self.makeSite()
        client = Client(a.base)
        _, state = yield self.get(client, a, b'set?key=cart&value=["book"]')
        uid = state["session"]
        _, there = yield self.get(client, b, b"get")
        self.assertEqual(there, {"session": uid, "values": {"cart": ["book"]}})
        yield self.get(client, b, b"set?key=visits&value=2")
        _, here = yield self.get(client, a, b"get")
        self.assertEqual(here["values"], {"cart": ["book"], "visits": 2})
        self.assertEqual(here["session"], uid)
        self.assertIsInstance(a.sessions[uid.encode()], txsession.Session)

    @defer.inlineCallbacks
    def test_writtenBeforeTheResponse(self):
        """
        When a response arrives, its changes are in Redis (read-your-writes from anywhere).
        """
        a = self.makeSite()
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")
        self.assertEqual(self.stored(state["session"])[b"n:k"], b"1")
        _, state = yield self.get(client, a, b"set?key=k&value=2&delay=0.05")
        self.assertEqual(self.stored(state["session"])[b"n:k"], b"2")

    @defer.inlineCallbacks
    def test_roundTrips(self):
        """
        No cookie, no session: no round trip. A new session: no round trip until it holds
        data, then one write. A returning stored session, without the cache: one read, and
        one write only when the request changed something; with it (the default), no read
        while the copy is valid.
        """
        yield self.roundTrips(cache=False, read=1)
        yield self.roundTrips(cache=True, read=0)

    @defer.inlineCallbacks
    def roundTrips(self, cache, read):
        a = self.makeSite(cache=cache)
        client = Client(a.base)
        store = a.store

        @defer.inlineCallbacks
        def trips(path):
            before = store.roundTrips
            code, _ = yield self.get(client, a, path)
            self.assertEqual(code, 200)
            return store.roundTrips - before

        self.assertEqual((yield trips(b"plain")), 0)
        self.assertEqual((yield trips(b"get")), 0)
        self.assertEqual((yield trips(b"get")), 0)
        self.assertEqual((yield trips(b"set?key=a&value=1")), 1)
        self.assertEqual((yield trips(b"plain")), read)
        self.assertEqual((yield trips(b"get")), read)
        self.assertEqual((yield trips(b"set?key=a&value=1")), read)
        self.assertEqual((yield trips(b"set?key=a&value=2")), read + 1)
        self.assertEqual((yield trips(b"del?key=a")), read + 1)

    @defer.inlineCallbacks
    def test_onlyChangedKeysWritten(self):
        """
        A request writes the keys it changed or deleted and nothing else: a key written in
        Redis meanwhile by someone else survives.
        """
        a = self.makeSite()
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=x&value=1")
        key = sessionKey(state["session"])
        pending = self.get(client, a, b"set?key=x&value=2&delay=0.2")
        yield sleep(0.05)
        self.redis.command(b"HSET", key, b"n:y", b"7")
        yield pending
        self.assertEqual(self.redis.hgetall(key)[b"n:y"], b"7")
        self.assertEqual(self.redis.hgetall(key)[b"n:x"], b"2")

    @defer.inlineCallbacks
    def differentKeysAtOnce(self, first, second):
        """
        One session; a request to C{first} and one to C{second} at the same time, each
        changing its own key: both keys persist. Returns the client and the session's id.
        """
        client = Client(first.base)
        _, state = yield self.get(client, first, b"set?key=zero&value=0")
        yield defer.gatherResults(
            [
                self.get(client, first, b"set?key=one&value=1&delay=0.2"),
                self.get(client, second, b"set?key=two&value=2&delay=0.05"),
            ]
        )
        self.assertEqual(self.stored(state["session"])[b"n:one"], b"1")
        self.assertEqual(self.stored(state["session"])[b"n:two"], b"2")
        return client, state["session"]

    @defer.inlineCallbacks
    def test_concurrentKeys(self):
        """
        Two requests on one session, on two sites, changing different keys: both persist.
        For the same key, the last writer wins.
        """
        a, b = self.makeSite(), self.makeSite()
        client, uid = yield self.differentKeysAtOnce(a, b)
        yield defer.gatherResults(
            [
                self.get(client, a, b'set?key=same&value="a"&delay=0.2'),
                self.get(client, b, b'set?key=same&value="b"&delay=0.05'),
            ]
        )
        self.assertEqual(self.stored(uid)[b"n:same"], b'"a"')
        _, here = yield self.get(client, b, b"get")
        self.assertEqual(here["values"], {"zero": 0, "one": 1, "two": 2, "same": "a"})

    def test_concurrentKeysInOneProcess(self):
        """
        Two requests on one session in one process, changing different keys: both persist.
        """
        site = self.makeSite()
        return self.differentKeysAtOnce(site, site)

    @defer.inlineCallbacks
    def test_renewIsARename(self):
        """
        renewSession moves the stored session to its new id. The old id only names the new
        one (so that a late logout follows it), for the session's timeout, and reads as gone:
        a request carrying it gets a new session.
        """
        a, b = self.makeSite(), self.makeSite()
        client = Client(a.base)
        _, old = yield self.get(client, a, b"set?key=k&value=1")
        _, new = yield self.get(client, a, b"renew")
        self.assertNotEqual(old["session"], new["session"])
        self.assertEqual(self.stored(old["session"]), {b"m:f": sessionKey(new["session"], b"")})
        oldKey = sessionKey(old["session"])
        ttl = int(self.redis.command(b"PTTL", oldKey)[1:-2])
        self.assertTrue(0 < ttl <= 60000, ttl)
        oldClient = Client(b.base)
        oldClient.jar.set_cookie(_cookie("TWISTED_SESSION", old["session"]))
        _, fixated = yield self.get(oldClient, b, b"get")
        self.assertNotEqual(fixated["session"], old["session"])
        self.assertEqual(fixated["values"], {})
        self.assertEqual(self.stored(new["session"])[b"n:k"], b"1")
        _, there = yield self.get(client, b, b"get")
        self.assertEqual(there, {"session": new["session"], "values": {"k": 1}})

    @defer.inlineCallbacks
    def test_componentsStayPerProcess(self):
        """
        Components are not stored: each site's copy has its own.
        """
        a, b = self.makeSite(), self.makeSite()
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")
        yield self.get(client, b, b"get")
        uid = state["session"].encode()
        a.sessions[uid].setComponent(ISessionStore, "here")
        self.assertIsNone(b.sessions[uid].getComponent(ISessionStore))


class TimeoutTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_idleTimeoutEverywhere(self):
        """
        A session lives until no site used it for its timeout: a site's own copy timing out
        ends that copy, not the session another site keeps using; once nobody uses it, Redis
        removes it, leaving no key.
        """
        a, b = self.makeSite(timeout=0.6), self.makeSite(timeout=0.6)
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")
        uid = state["session"]
        for _ in range(5):
            yield sleep(0.25)
            _, there = yield self.get(client, b, b"get")
            self.assertEqual(there["session"], uid)
        self.assertNotIn(uid.encode(), a.sessions)
        _, here = yield self.get(client, a, b"get")
        self.assertEqual(here, {"session": uid, "values": {"k": 1}})
        yield sleep(1.0)
        self.assertEqual(self.redis.keys(), [])
        _, later = yield self.get(client, b, b"get")
        self.assertNotEqual(later["session"], uid)

    @defer.inlineCallbacks
    def test_ttlFollowsSessionTimeout(self):
        a = self.makeSite(timeout=30)
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")
        ttl = int(self.redis.command(b"PTTL", sessionKey(state["session"]))[1:-2])
        self.assertTrue(29000 < ttl <= 30000, ttl)


class LogoutTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_logoutIsGlobal(self):
        """
        expire() deletes the session in Redis; the other site drops its copy and runs its
        expire callbacks at its next request for it, which gets a new session.
        """
        a, b = self.makeSite(), self.makeSite()
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")
        uid = state["session"]
        yield self.get(client, b, b"get")
        yield self.get(client, a, b"logout")
        self.assertEqual(self.redis.keys(), [])
        self.assertIn(uid.encode(), b.sessions)
        _, there = yield self.get(client, b, b"get")
        self.assertNotEqual(there["session"], uid)
        self.assertEqual(there["values"], {})
        _, ended = yield self.get(client, b, b"ended")
        self.assertEqual(ended, [uid])

    @defer.inlineCallbacks
    def test_failingCallbackOfADroppedCopy(self):
        """
        An expire callback that raises when a copy is found to be over is logged; the
        request goes on with a new session.
        """
        a, b = self.makeSite(), self.makeSite()
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")
        yield self.get(client, b, b"get")
        b.sessions[state["session"].encode()].notifyOnExpire(lambda: 1 / 0)
        yield self.get(client, a, b"logout")
        code, there = yield self.get(client, b, b"get")
        self.assertEqual(code, 200)
        self.assertNotEqual(there["session"], state["session"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    @defer.inlineCallbacks
    def test_writeAfterLogoutElsewhere(self):
        """
        A write that finishes after a logout elsewhere neither brings the session back nor
        leaves its data behind, and its request does not answer as if it had written: a 409.
        """
        a, b = self.makeSite(), self.makeSite()
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")
        pending = self.get(client, b, b"set?key=late&value=1&delay=0.3")
        yield sleep(0.1)
        yield self.get(Client(a.base), a, b"plain")
        a.sessions[state["session"].encode()].expire()
        yield sleep(0.05)
        self.assertEqual(self.redis.keys(), [])
        code, _ = yield pending
        self.assertEqual(code, 409)
        self.assertEqual(self.redis.keys(), [])
        self.assertNotIn(state["session"].encode(), b.sessions)
        self.flushLoggedErrors(SessionEnded)

    @defer.inlineCallbacks
    def test_logoutDoneBeforeTheResponse(self):
        a = self.makeSite()
        client = Client(a.base)
        yield self.get(client, a, b"set?key=k&value=1")
        self.assertEqual(len(self.redis.keys()), 1)
        code, _ = yield self.get(client, a, b"logout")
        self.assertEqual(code, 200)
        self.assertEqual(self.redis.keys(), [])


class ValueTests(StoreTestCase):
    def setUp(self):
        super().setUp()
        self.logged = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    @defer.inlineCallbacks
    def test_unserializable(self):
        """
        A value JSON cannot encode: a 500, a logged traceback naming the key, and the stored
        session (and this site's copy of it) as it was.
        """
        a = self.makeSite()
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")
        code, _ = yield self.get(client, a, b"bad?key=oops")
        self.assertEqual(code, 500)
        failures = [e["log_failure"] for e in self.logged if "log_failure" in e]
        self.assertTrue(any("'oops'" in str(f.value) for f in failures), failures)
        self.flushLoggedErrors()
        self.assertEqual(self.stored(state["session"]), {b"m:t": b"60000", b"n:k": b"1"})
        _, here = yield self.get(client, a, b"get")
        self.assertEqual(here, {"session": state["session"], "values": {"k": 1}})

    @defer.inlineCallbacks
    def test_unserializableInANewSession(self):
        """
        A new session whose first write fails is not made: no cookie, no key.
        """
        a = self.makeSite()
        client = Client(a.base)
        code, _ = yield self.get(client, a, b"bad?key=oops")
        self.assertEqual(code, 500)
        self.flushLoggedErrors()
        self.assertEqual(self.redis.keys(), [])
        self.assertEqual(list(client.jar), [])
        self.assertEqual(dict(a.sessions), {})

    @defer.inlineCallbacks
    def test_badSessionTimeout(self):
        """
        A session whose sessionTimeout a page set to something that is not a number: its
        write is refused before anything is sent (ValueError, logged), the request gets a
        500, and the session is as it was, in the store and in this site's copy. Its next
        request gets a 500 too, from touch(), until the timeout is a number again.
        """

        class Soon(resource.Resource):
            isLeaf = True

            def render_GET(self, request):
                session = request.getSession()
                session.sessionNamespaces["k"] = 2
                session.sessionTimeout = "soon"
                return b"changed"

        a = self.makeSite()
        a.resource.putChild(b"soon", Soon())
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")
        code, _ = yield self.get(client, a, b"soon")
        self.assertEqual(code, 500)
        failures = [e["log_failure"] for e in self.logged if "log_failure" in e]
        self.assertTrue(
            any(isinstance(f.value, ValueError) and "'soon'" in str(f.value) for f in failures),
            failures,
        )
        self.flushLoggedErrors(ValueError)
        self.assertEqual(self.stored(state["session"]), {b"m:t": b"60000", b"n:k": b"1"})
        # Its next use touches it, which raises as Twisted's touch() would: a 500, as
        # without a store (not a request left unanswered).
        code, _ = yield self.get(client, a, b"get")
        self.assertEqual(code, 500)
        self.assertTrue(self.flushLoggedErrors(TypeError))
        a.sessions[state["session"].encode()].sessionTimeout = 60.0
        code, here = yield self.get(client, a, b"get")
        self.assertEqual((code, here), (200, {"session": state["session"], "values": {"k": 1}}))

    @defer.inlineCallbacks
    def test_subclassThatOverridesSave(self):
        """
        A RedisStore subclass whose save() adds to the Deferred that RedisStore's returns (as
        one written before save took answer=) is called as before, without answer=: each
        write answered once, with its 200, and stored; so is a save set on a store itself,
        after its site was made. One that does not override save() answers from the reply.
        """
        saved = []

        class Counting(RedisStore):
            def save(self, uid, *args, **kwargs):
                return (
                    super().save(uid, *args, **kwargs).addCallback(lambda result: saved.append(uid))
                )

        class Plain(RedisStore):
            pass

        a = self.serve(store_app.makeSite(Counting(self.redis.url), 60.0))
        b = self.serve(store_app.makeSite(Plain(self.redis.url), 60.0))
        self.assertIsNone(a._flow._answering)
        self.assertIs(b._flow._answering, RedisStore.save)
        client = Client(a.base)
        for value in (1, 2):
            code, state = yield self.get(client, a, b"set?key=k&value=%d" % value)
            self.assertEqual(code, 200)
        self.assertEqual(saved, [state["session"].encode()] * 2)
        self.assertEqual(self.stored(state["session"]), {b"m:t": b"60000", b"n:k": b"2"})
        code, here = yield self.get(client, b, b"set?key=k&value=3")
        self.assertEqual((code, here["values"]), (200, {"k": 3}))

        plain = b.store.save
        b.store.save = lambda uid, *args, **kwargs: plain(uid, *args, **kwargs).addCallback(
            lambda result: saved.append(uid)
        )
        code, here = yield self.get(client, b, b"set?key=k&value=4")
        self.assertEqual((code, here["values"]), (200, {"k": 4}))
        self.assertEqual(len(saved), 3)
        self.assertEqual(self.stored(state["session"]), {b"m:t": b"60000", b"n:k": b"4"})
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_jsonRoundTrip(self):
        serializer = JSONSerializer()
        value = {"a": [1, 2.5, None, True, "é"]}
        self.assertEqual(serializer.loads(serializer.dumps(value)), value)
        self.assertRaises(TypeError, serializer.dumps, b"bytes")
        self.assertRaises(ValueError, serializer.dumps, float("nan"))

    def test_jsonAsJsonDumps(self):
        """
        JSONSerializer.dumps writes every value as compact json.dumps (no ASCII escaping, no
        NaN) writes it, or raises the same exception, including the plain values it writes
        without json.dumps and their subclasses and edge cases.
        """
        import enum
        from fractions import Fraction

        class Colour(enum.IntEnum):
            RED = 1

        class Text(str):
            pass

        class Number(float):
            pass

        def reference(value):
            return json.dumps(
                value, separators=(",", ":"), ensure_ascii=False, allow_nan=False
            ).encode()

        def outcome(f, value):
            try:
                return f(value)
            except Exception as e:
                return type(e)

        values = [
            0,
            -1,
            2**63,
            -(2**64) - 1,
            10**5000,
            True,
            False,
            None,
            0.0,
            -0.0,
            1.5,
            1e300,
            5e-324,
            1e16,
            float("inf"),
            float("-inf"),
            float("nan"),
            "",
            "é",
            'a"b\\c\n\t\x00\x7f',
            "\u2028\u2029",
            "\ud800",
            "😀",
            Colour.RED,
            Text("t"),
            Number(2.5),
            Fraction(1, 2),
            [1, "x"],
            {"k": None},
            b"x",
        ]
        serializer = JSONSerializer()
        for i, value in enumerate(values):
            self.assertEqual(
                outcome(serializer.dumps, value),
                outcome(reference, value),
                f"values[{i}], a {type(value).__name__}",
            )

    @defer.inlineCallbacks
    def test_otherSerializer(self):
        """
        The serializer can be replaced.
        """

        class Upper(JSONSerializer):
            def dumps(self, value):
                return super().dumps(value).upper()

            def loads(self, data):
                return super().loads(data.lower())

        a = self.makeSite(serializer=Upper())
        client = Client(a.base)
        _, state = yield self.get(client, a, b'set?key=k&value="abc"')
        self.assertEqual(self.stored(state["session"])[b"n:k"], b'"ABC"')


class RedisDownTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_downAndBack(self):
        """
        With Redis stopped, a request that asks for its session gets a 503 within the store's
        timeout, logged; one that does not is served. When Redis returns the site recovers.
        """
        a = self.makeSite()
        client = Client(a.base)
        yield self.get(client, a, b"set?key=k&value=1")
        self.redis.stop()
        self.addCleanup(self.redis.start)
        for path in (b"get", b"get", b"set?key=k&value=2"):
            started = time.monotonic()
            code, _ = yield self.get(client, a, path)
            self.assertEqual(code, 503)
            self.assertLess(time.monotonic() - started, a.store.timeout + 1)
        self.assertTrue(self.flushLoggedErrors(StoreUnavailable))
        code, body = yield self.get(client, a, b"plain")
        self.assertEqual((code, body), (200, "plain"))
        # A new session needs no store until it holds data.
        code, _ = yield self.get(Client(a.base), a, b"get")
        self.assertEqual(code, 200)
        code, _ = yield self.get(Client(a.base), a, b"set?key=k&value=1")
        self.assertEqual(code, 503)
        self.flushLoggedErrors(StoreUnavailable)
        self.redis.start()
        for _ in range(100):
            code, state = yield self.get(client, a, b"get")
            if code == 200:
                break
            self.flushLoggedErrors(StoreUnavailable)
            yield sleep(0.05)
        self.assertEqual(code, 200)
        # Redis lost everything (no persistence): a new session, working.
        yield self.get(client, a, b"set?key=k&value=3")
        _, state = yield self.get(client, a, b"get")
        self.assertEqual(state["values"], {"k": 3})

    @defer.inlineCallbacks
    def test_notAnsweringIsATimeout(self):
        """
        A Redis that accepts connections but does not answer: a 503 after the store's
        timeout.
        """
        listening = reactor.listenTCP(
            0, protocol.Factory.forProtocol(protocol.Protocol), interface="127.0.0.1"
        )
        self.addCleanup(listening.stopListening)
        store = RedisStore(f"redis://127.0.0.1:{listening.getHost().port}/0", timeout=0.3)
        site = Site(resource.Resource(), store=store)
        self.assertIs(site.store, store)
        self.addCleanup(store.close)
        started = time.monotonic()
        with self.assertRaises(StoreUnavailable) as raised:
            yield store.load([b"x"])
        self.assertGreaterEqual(time.monotonic() - started, 0.25)
        self.assertIn("did not answer within 0.3 s", str(raised.exception))

    @defer.inlineCallbacks
    def test_timeoutOnTheSitesClock(self):
        """
        The store's timeouts run on the site's reactor: on a Clock, a round trip that gets
        no answer fails when the clock passes the timeout, not before.
        """
        listening = reactor.listenTCP(
            0, protocol.Factory.forProtocol(protocol.Protocol), interface="127.0.0.1"
        )
        self.addCleanup(listening.stopListening)
        clock = task.Clock()
        # Without the cache: this server answers nothing but the scripts and one read.
        store = RedisStore(
            f"redis://127.0.0.1:{listening.getHost().port}/0", timeout=5, cache=False
        )
        Site(resource.Resource(), store=store, reactor=clock)
        loading = store.load([b"x"])
        failures = []
        loading.addErrback(failures.append)
        yield sleep(0.2)
        self.assertEqual(failures, [])
        clock.advance(4.9)
        self.assertEqual(failures, [])
        clock.advance(0.1)
        self.assertEqual(len(failures), 1)
        self.assertIsInstance(failures[0].value, StoreUnavailable)
        yield store.close()

    @defer.inlineCallbacks
    def test_eachRoundTripTimesOutOnItsOwn(self):
        """
        One timer per connection keeps the time, and each round trip still gets its whole
        timeout from when it was sent: on a Clock, a read sent 3 s after an answered one
        fails 5 s after it was sent, not when the first one's 5 s are up.
        """

        class AnswerFirst(protocol.Protocol):
            # Answers the connection's SCRIPT LOADs and the first read, then nothing.
            def connectionMade(self):
                self.received = b""
                self.answered = 0

            def dataReceived(self, data):
                self.received += data
                loads = self.received.count(b"SCRIPT")
                while self.answered < loads:
                    self.answered += 1
                    self.transport.write(b"$2\r\nok\r\n")
                if self.answered == loads and b"EVALSHA" in self.received:
                    self.answered += 1
                    self.transport.write(b"$-1\r\n")

        listening = reactor.listenTCP(
            0, protocol.Factory.forProtocol(AnswerFirst), interface="127.0.0.1"
        )
        self.addCleanup(listening.stopListening)
        clock = task.Clock()
        # Without the cache: this server answers nothing but the scripts and one read.
        store = RedisStore(
            f"redis://127.0.0.1:{listening.getHost().port}/0", timeout=5, cache=False
        )
        Site(resource.Resource(), store=store, reactor=clock)
        self.assertEqual((yield store.load([b"x"])), [None])
        clock.advance(3)
        failures = []
        store.load([b"y"]).addErrback(failures.append)
        yield sleep(0.1)
        clock.advance(2.5)
        self.assertEqual(failures, [])
        clock.advance(2.4)
        self.assertEqual(failures, [])
        clock.advance(0.1)
        self.assertEqual(len(failures), 1)
        self.assertIn("did not answer within 5", str(failures[0].value))
        yield store.close()


class ProcessTests(StoreTestCase):
    """
    Server processes sharing one Redis, driven over HTTP with cookies.
    """

    def startServers(self, count):
        servers = []
        for _ in range(count):
            process = subprocess.Popen(
                [sys.executable, "-m", "tests.apps.store_app", "--redis", self.redis.url],
                stdout=subprocess.PIPE,
                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            )
            line = process.stdout.readline().decode()
            if not line.startswith("PORT "):
                process.kill()
                raise RuntimeError(f"the server process did not start: {line!r}")
            servers.append((process, b"http://127.0.0.1:%d/" % int(line.split()[1])))
            self.addCleanup(self.stopServer, process)
        return servers

    def stopServer(self, process):
        if process.poll() is None:
            process.terminate()
            process.wait(10)

    @defer.inlineCallbacks
    def fetch(self, client, base, path):
        response = yield client.agent.request(b"GET", base + path)
        code, body = yield _read(response).addCallback(lambda rb: (rb[0].code, rb[1]))
        return code, json.loads(body)

    @defer.inlineCallbacks
    def test_threeProcessesAndRestart(self):
        """
        Three processes: a session goes from one to the next, each adding to it; all three
        are stopped and new ones started; the session continues; a logout on one ends it on
        all.
        """
        servers = self.startServers(3)
        client = Client(servers[0][1])
        _, state = yield self.fetch(client, servers[0][1], b"set?key=n&value=0")
        uid = state["session"]
        for i in range(1, 7):
            base = servers[i % 3][1]
            _, state = yield self.fetch(client, base, b"get")
            self.assertEqual(state["session"], uid)
            n = state["values"]["n"] + 1
            _, state = yield self.fetch(client, base, b"set?key=n&value=%d" % n)
        self.assertEqual(state["values"], {"n": 6})
        for process, _ in servers:
            self.stopServer(process)
        servers = self.startServers(2)
        for _, base in servers:
            _, state = yield self.fetch(client, base, b"get")
            self.assertEqual(state, {"session": uid, "values": {"n": 6}})
        yield self.fetch(client, servers[1][1], b"logout")
        _, state = yield self.fetch(client, servers[0][1], b"get")
        self.assertNotEqual(state["session"], uid)
        _, ended = yield self.fetch(client, servers[0][1], b"ended")
        self.assertEqual(ended, [uid])


class ClockTests(StoreTestCase):
    """
    A site whose reactor is a L{Clock}: its sessions' own timeouts run on the clock, while
    the store talks to the real Redis.
    """

    def makeClockSite(self, timeout=60.0, **siteOptions):
        clock = task.Clock()
        store = RedisStore(self.redis.url)
        site = store_app.makeSite(store, timeout, reactor=clock, **siteOptions)
        return self.serve(site), clock

    @defer.inlineCallbacks
    def test_copyTimesOutAlone(self):
        """
        A copy whose own timeout ran out is dropped, with its expire callbacks, and the
        stored session is untouched: the next request reads it back.
        """
        site, clock = self.makeClockSite(timeout=10)
        client = Client(site.base)
        _, state = yield self.get(client, site, b"set?key=k&value=1")
        uid = state["session"].encode()
        self.assertEqual(len(site._sharedTimer), 1)
        clock.advance(9)
        self.assertIn(uid, site.sessions)
        clock.advance(1)
        self.assertNotIn(uid, site.sessions)
        self.assertEqual(self.stored(state["session"])[b"n:k"], b"1")
        _, again = yield self.get(client, site, b"get")
        self.assertEqual(again, {"session": state["session"], "values": {"k": 1}})
        _, ended = yield self.get(client, site, b"ended")
        self.assertEqual(ended, [state["session"]])

    @defer.inlineCallbacks
    def test_maxSessionsDropsCopiesOnly(self):
        """
        With C{maxSessions}, the least recently used copy is dropped to make room, and its
        stored session lives on.
        """
        site, clock = self.makeClockSite(maxSessions=2)
        clients = [Client(site.base) for _ in range(3)]
        uids = []
        for client in clients:
            _, state = yield self.get(client, site, b"set?key=k&value=1")
            uids.append(state["session"].encode())
            clock.advance(1)
        self.assertEqual(sorted(site.sessions), sorted(uids[1:]))
        self.assertEqual(len(self.redis.keys()), 3)
        _, first = yield self.get(clients[0], site, b"get")
        self.assertEqual(first, {"session": uids[0].decode(), "values": {"k": 1}})
        self.assertEqual(len(site.sessions), 2)


class ScriptTests(StoreTestCase):
    def calls(self):
        text = self.redis.command(b"INFO", b"commandstats").decode()
        calls = dict(re.findall(r"cmdstat_(\w+(?:\|\w+)?):calls=(\d+)", text))
        return {name: int(calls.get(name, 0)) for name in ("eval", "evalsha", "script|load")}

    @defer.inlineCallbacks
    def test_scriptsGoByTheirHash(self):
        """
        The store's Lua scripts are named by their SHA1 (EVALSHA): each connection loads
        them once when it is made, and no script's text goes over the wire with a command.
        A server that lost them (SCRIPT FLUSH) makes the request that finds out a 503 (the
        commands pipelined behind the refused one may have run), and the next connection
        loads them again.
        """
        site = self.makeSite()
        client = Client(site.base)
        start = self.calls()
        _, state = yield self.get(client, site, b"set?key=a&value=1")
        uid = state["session"]
        for value in range(2, 12):
            code, _ = yield self.get(client, site, b"set?key=a&value=%d" % value)
            self.assertEqual(code, 200)
        done = self.calls()
        self.assertEqual(done["eval"], start["eval"])
        # The first write makes the session; each later request writes, its read cached.
        self.assertEqual(done["evalsha"] - start["evalsha"], 11)
        loads = done["script|load"] - start["script|load"]
        self.assertGreater(loads, 0)
        self.redis.command(b"SCRIPT", b"FLUSH")
        code, _ = yield self.get(client, site, b"set?key=a&value=99")
        self.assertEqual(code, 503)
        self.flushLoggedErrors(StoreUnavailable)
        code, state = yield self.get(client, site, b"set?key=a&value=100")
        self.assertEqual((code, state["values"]), (200, {"a": 100}))
        self.assertEqual(self.stored(uid)[b"n:a"], b"100")
        after = self.calls()
        self.assertEqual(after["eval"], start["eval"])
        self.assertEqual(after["script|load"] - done["script|load"], loads)


class ConfigurationTests(unittest.TestCase):
    def test_providesTheInterface(self):
        from zope.interface.verify import verifyObject

        self.assertIs(txsession.RedisStore, RedisStore)
        self.assertTrue(verifyObject(ISessionStore, RedisStore()))

    def test_badURLs(self):
        for url in ("http://x", "redis://h/zero", "unix://", "redis-sentinel://h/0", "redis://a,b"):
            self.assertRaises(ValueError, RedisStore, url)

    def test_badOptions(self):
        self.assertRaises(ValueError, RedisStore, timeout=0)
        self.assertRaises(ValueError, RedisStore, timeout=True)
        self.assertRaises(TypeError, RedisStore, keyPrefix=1)
        self.assertRaises(TypeError, RedisStore, serializer=object())
        self.assertRaises(TypeError, Site, resource.Resource(), store=object())

    def test_keyExpiry(self):
        """
        A session timeout as the milliseconds of its key's expiry, whatever timeout was asked
        for before it (the last one is kept): a bool, NaN or a string is refused even right
        after the number it equals (True == 1), and 1 and 1.0 give the same.
        """
        from txsession.redis import _milliseconds

        for timeout, expected in [
            (1800, b"1800000"),
            (1800, b"1800000"),
            (60, b"60000"),
            (1800.0, b"1800000"),
            (1, b"1000"),
            (1.0, b"1000"),
            (0.0001, b"1"),
            (float("inf"), b"9007199254740992"),
            (-5, b"1"),
            (float("-inf"), b"1"),
            (0.0006, b"1"),
            (1800, b"1800000"),
        ]:
            self.assertEqual(_milliseconds(timeout), expected)
        for bad in (True, float("nan"), "1", None):
            self.assertEqual(_milliseconds(1), b"1000")
            self.assertRaises(ValueError, _milliseconds, bad)

    def test_oneReactor(self):
        store = RedisStore()
        store.bind(task.Clock())
        self.assertRaises(ValueError, store.bind, task.Clock())

    def test_requestFactory(self):
        """
        A store needs the request class that reads and writes sessions.
        """
        site = Site(resource.Resource(), store=RedisStore())
        self.assertTrue(issubclass(site.requestFactory, txsession.Request))


class UnixSocketTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_unixSocketAndDatabase(self):
        """
        C{unix://path?db=N}: the store connects over the socket and selects the database.
        """
        path = os.path.join(self.redis.dir, "redis.sock")
        server = RedisServer()
        server.start(b"--unixsocket", path.encode())
        self.addCleanup(server.close)
        store = RedisStore(f"unix://{path}?db=3")
        store.bind(reactor)
        self.addCleanup(store.close)
        saved = yield store.save(b"u", None, 5, {"k": b"1"}, [])
        self.assertIsNone(saved)
        inDatabase3 = b"redis.call('SELECT', 3) return redis.call('HGET', KEYS[1], 'n:k')"
        key = sessionKey(b"u")
        self.assertEqual(server.command(b"EVAL", inDatabase3, b"1", key), b"$1\r\n1\r\n")
        self.assertEqual(server.command(b"EXISTS", key), b":0\r\n")
        loaded = yield store.load([b"u", b"v"])
        self.assertEqual(loaded, [{"k": b"1"}, None])


class HTTPSTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_secureCookie(self):
        """
        Over HTTPS the session is under the secure cookie, and found through it by another
        site.
        """
        from tests.test_security import TLSClient

        a, b = (
            self.serve(store_app.makeSite(RedisStore(self.redis.url)), secure=True)
            for _ in range(2)
        )
        client = TLSClient(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")
        self.assertEqual([c.name for c in client.jar], ["TWISTED_SECURE_SESSION"])
        _, there = yield self.get(client, b, b"get")
        self.assertEqual(there, {"session": state["session"], "values": {"k": 1}})


class ReadTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_secureCookieOverPlainHTTPIsNotRead(self):
        """
        Over plain HTTP, a request that names a stored session only under the secure cookie
        gets a new session (Twisted's getSession looks at the secure cookie only over HTTPS),
        and the site reads nothing from Redis for it.
        """
        a = self.makeSite()
        owner = Client(a.base)
        _, state = yield self.get(owner, a, b"set?key=k&value=1")
        other = Client(a.base)
        other.jar.set_cookie(_cookie("TWISTED_SECURE_SESSION", state["session"]))
        trips = a.store.roundTrips
        _, seen = yield self.get(other, a, b"get")
        self.assertNotEqual(seen["session"], state["session"])
        self.assertEqual(seen["values"], {})
        self.assertEqual(a.store.roundTrips, trips)

    @defer.inlineCallbacks
    def test_readBeforeRendering(self):
        """
        What is in Redis when a request arrives is what its resource sees, whoever wrote it.
        """
        a = self.makeSite()
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")
        key = sessionKey(state["session"])
        self.redis.command(b"HSET", key, b"n:k", b"2", b"n:other", b'"x"')
        _, here = yield self.get(client, a, b"get")
        self.assertEqual(here["values"], {"k": 2, "other": "x"})
        self.redis.command(b"HDEL", key, b"n:other")
        _, here = yield self.get(client, a, b"get")
        self.assertEqual(here["values"], {"k": 2})

    @defer.inlineCallbacks
    def test_requestAttributes(self):
        """
        A store request has one attribute of txsession's, C{_txsStore}, whether it writes
        or is served from a copy, and no more attributes than CPython keeps inline (30):
        past that they move to a dict, and no lookup on the request is specialised.
        """
        kept = []

        class Keep(resource.Resource):
            isLeaf = True

            def render_GET(self, request):
                kept.append(request)
                namespaces = request.getSession().sessionNamespaces
                if request.args.get(b"write"):
                    namespaces["k"] = namespaces.get("k", 0) + 1
                return b"{}"

        a = self.makeSite()
        a.resource.putChild(b"keep", Keep())
        client = Client(a.base)
        for path in (b"keep?write=1", b"keep?write=1", b"keep", b"keep"):
            yield self.get(client, a, path)
        yield task.deferLater(reactor, 0, lambda: None)
        self.assertGreater(a._flow.cachedReads, 0)
        for request in kept:
            names = list(vars(request))
            self.assertEqual([n for n in names if n.startswith("_txs")], ["_txsStore"])
            self.assertLessEqual(len(names), 30, names)

    @defer.inlineCallbacks
    def test_pipelinedRequestFindsTheSessionAlone(self):
        """
        Requests pipelined on one connection, each changing the session: Twisted renders the
        next one inside the previous one's finish(). By then the previous one has let the
        session go, so each renders as the session's only user (it starts from what the
        store holds, and its write carries no other request's answer), and every change is
        written.
        """
        seen = []

        class Count(resource.Resource):
            isLeaf = True

            def render_GET(self, request):
                session = request.getSession()
                seen.append(len(a._flow.copies[session].users))
                namespaces = session.sessionNamespaces
                namespaces["k"] = namespaces.get("k", 0) + 1
                return b"%d" % namespaces["k"]

        a = self.makeSite()
        a.resource.putChild(b"count", Count())
        _, state = yield self.get(Client(a.base), a, b"set?key=k&value=0")
        uid = state["session"].encode()
        received = []

        class Collect(protocol.Protocol):
            def dataReceived(self, data):
                received.append(data)

        conn = yield protocol.ClientCreator(reactor, Collect).connectTCP(
            "127.0.0.1", int(a.base.rsplit(b":", 1)[1].strip(b"/"))
        )
        self.addCleanup(conn.transport.loseConnection)
        request = b"GET /count HTTP/1.1\r\nHost: x\r\nCookie: TWISTED_SESSION=%s\r\n\r\n" % uid
        conn.transport.write(request * 5)
        deadline = time.monotonic() + 10
        while b"".join(received).count(b"HTTP/1.1 200") < 5:
            self.assertLess(time.monotonic(), deadline, b"".join(received))
            yield sleep(0.01)
        bodies = [
            part.rsplit(b"\r\n\r\n", 1)[1] for part in b"".join(received).split(b"HTTP/1.1 ")[1:]
        ]
        self.assertEqual(bodies, [b"1", b"2", b"3", b"4", b"5"])
        self.assertEqual(seen, [1] * 5)
        self.assertEqual(self.redis.hgetall(sessionKey(uid)).get(b"n:k"), b"5")

    @defer.inlineCallbacks
    def test_demo(self):
        """
        The demo on the store: a cart filled on one site is there on the other.
        """
        from txsession import demo

        sites = [self.serve(demo.makeSite(store=RedisStore(self.redis.url))) for _ in range(2)]
        client = Client(sites[0].base)
        yield client.agent.request(b"GET", sites[0].base + b"add?item=book")
        _, state = yield self.get(client, sites[1], b"state")
        self.assertEqual(state["cart"], ["book"])
        self.assertEqual(state["visits"], 0)


class SessionClassTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_twistedSessionClass(self):
        """
        With Twisted's own Session as the factory, a copy's timeout still ends only the copy:
        its reactor call is replaced by the site's timer.
        """
        from twisted.web import server

        clock = task.Clock()
        site = self.serve(store_app.makeSite(RedisStore(self.redis.url), reactor=clock))
        site.sessionFactory = type("Short", (server.Session,), {"sessionTimeout": 5})
        client = Client(site.base)
        _, state = yield self.get(client, site, b"set?key=k&value=1")
        # The site timer's one call; the session's own was cancelled.
        timed = [c.func for c in clock.getDelayedCalls()]
        self.assertEqual(timed.count(site._sharedTimer._fire), 1)
        self.assertNotIn(site.sessions[state["session"].encode()].expire, timed)
        self.assertIsInstance(site.sessions[state["session"].encode()], server.Session)
        clock.advance(5)
        self.assertEqual(dict(site.sessions), {})
        self.assertEqual(self.stored(state["session"])[b"n:k"], b"1")
        _, again = yield self.get(client, site, b"get")
        self.assertEqual(again, {"session": state["session"], "values": {"k": 1}})


class StreamingTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_unserializableWhileStreaming(self):
        """
        A value that cannot be encoded, set after the response started: the connection is
        closed rather than the response finished, the failure is logged, and the stored
        session stays as it was.
        """
        a = self.makeSite()
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")

        class Streaming(resource.Resource):
            isLeaf = True

            def render_GET(self, request):
                session = request.getSession()

                def stream():
                    request.write(b"started")
                    session.sessionNamespaces["k"] = {1}
                    request.finish()

                reactor.callLater(0, stream)
                return server.NOT_DONE_YET

        from twisted.web import server

        a.resource.putChild(b"stream", Streaming())
        with self.assertRaises(ResponseFailed):
            yield client.agent.request(b"GET", a.base + b"stream").addCallback(_read)
        self.assertTrue(self.flushLoggedErrors())
        self.assertEqual(self.stored(state["session"])[b"n:k"], b"1")
        _, here = yield self.get(client, a, b"get")
        self.assertEqual(here["values"], {"k": 1})

    @defer.inlineCallbacks
    def test_unserializableWhileRendering(self):
        """
        The same within render(): what the resource wrote is held until render() returns
        and written with its session changes, so the request fails whole: a 500, nothing
        of it sent or stored.
        """
        a = self.makeSite()
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")

        class Streaming(resource.Resource):
            isLeaf = True

            def render_GET(self, request):
                session = request.getSession()
                request.write(b"started")
                session.sessionNamespaces["k"] = {1}
                request.finish()
                return server.NOT_DONE_YET

        from twisted.web import server

        a.resource.putChild(b"stream", Streaming())
        code, body = yield self.get(client, a, b"stream")
        self.assertEqual(code, 500)
        self.assertNotIn(b"started", body)
        self.flushLoggedErrors()
        self.assertEqual(self.stored(state["session"])[b"n:k"], b"1")
        _, here = yield self.get(client, a, b"get")
        self.assertEqual(here["values"], {"k": 1})


class ClientTests(StoreTestCase):
    @defer.inlineCallbacks
    def connected(self, **options):
        """
        A store on the test's Redis (with C{options}), closed after the test, and its client,
        connected.
        """
        store = RedisStore(self.redis.url, **options)
        store.bind(reactor)
        self.addCleanup(store.close)
        yield store._client.execute([[b"PING"]])
        return store, store._client

    @defer.inlineCallbacks
    def test_closeAndUseAgain(self):
        """
        A closed store reconnects when used again, and counts its round trips.
        """
        store = RedisStore(self.redis.url)
        store.bind(reactor)
        self.assertIsNone((yield store.save(b"u", None, 5, {"k": b"1"}, [])))
        yield store.close()
        self.assertEqual((yield store.load([b"u"])), [{"k": b"1"}])
        self.assertEqual(store.roundTrips, 2)
        yield store.delete(b"u")
        self.assertEqual((yield store.load([b"u"])), [None])
        with self.assertRaises(SessionEnded):
            yield store.save(b"u", b"u", 5, {"k": b"2"}, [])
        self.assertEqual(self.redis.keys(), [])
        yield store.close()

    @defer.inlineCallbacks
    def test_errorReply(self):
        """
        An error reply from Redis fails the call with StoreError.
        """
        from txsession.store import StoreError

        store = RedisStore(self.redis.url)
        store.bind(reactor)
        self.addCleanup(store.close)
        self.redis.command(b"SET", sessionKey(b"s"), b"a string, not a hash")
        with self.assertRaises(StoreError):
            yield store.load([b"s"])
        self.assertEqual((yield store.load([b"t"])), [None])

    @defer.inlineCallbacks
    def test_writtenAtOnce(self):
        """
        A command goes to the socket when it is sent, not on the reactor's next turn: the
        connection is not watched for writing, and Redis applies the write while the
        reactor has not turned.
        """
        store = RedisStore(self.redis.url)
        store.bind(reactor)
        self.addCleanup(store.close)
        self.assertEqual((yield store.load([b"u"])), [None])
        transport = store._client._protocol.transport
        saving = store.save(b"u", None, 5, {"k": b"1"}, [])
        self.assertNotIn(transport, reactor.getWriters())
        deadline = time.monotonic() + 10
        while self.redis.hgetall(sessionKey(b"u")).get(b"n:k") != b"1":
            # Without turning the reactor: only a write made at once can get there.
            self.assertLess(time.monotonic(), deadline, "the write did not reach Redis")
            time.sleep(0.01)
        self.assertIsNone((yield saving))

    @defer.inlineCallbacks
    def test_sentFromRepliesGoOutInOneWrite(self):
        """
        What the callbacks of replies that arrived together send (a request answered, then
        the one pipelined behind it, say) goes to the socket in one write, once they have
        all run, in the order it was sent; each command gets its own reply.
        """
        from tests._proxy import DOWNSTREAM, FaultProxy

        proxy = FaultProxy(self.redis.port)
        self.addCleanup(proxy.stop)
        store = RedisStore(f"redis://127.0.0.1:{proxy.port}/0")
        store.bind(reactor)
        self.addCleanup(store.close)
        client = store._client
        yield client.execute([[b"PING"]])
        protocol = client._protocol
        writes = []

        class Recording:
            def __init__(self, sock):
                self.sock = sock

            def send(self, data):
                writes.append(data)
                return self.sock.send(data)

        protocol._sock = Recording(protocol._sock)
        answers = []

        def then(replies, name):
            answers.append(replies[0])
            return client.execute([[b"ECHO", name]]).addCallback(lambda r: answers.append(r[0]))

        # The replies are held back, then delivered together.
        proxy.stall(DOWNSTREAM)
        first = client.execute([[b"ECHO", b"a"]]).addCallback(then, b"c")
        second = client.execute([[b"ECHO", b"b"]]).addCallback(then, b"d")
        yield sleep(0.1)
        self.assertEqual(len(writes), 2)
        proxy.release(DOWNSTREAM)
        yield defer.gatherResults([first, second])
        self.assertEqual(answers, [b"a", b"b", b"c", b"d"])
        self.assertEqual(len(writes), 3)
        self.assertIn(b"$1\r\nc\r\n", writes[2])
        self.assertLess(writes[2].index(b"$1\r\nc"), writes[2].index(b"$1\r\nd"))

    @defer.inlineCallbacks
    def test_sentAfterAnAbortWaitsForTheNextConnection(self):
        """
        A command sent after the client aborted its connection (by cancelling a command, as
        a timeout does, or by dropping it, as a failover does), before the reactor has ended
        it, waits for the next connection and is answered there: nothing of it goes to the
        aborted one, whose replies no one would read.
        """
        store = RedisStore(self.redis.url)
        store.bind(reactor)
        self.addCleanup(store.close)
        client = store._client
        for i in range(6):
            (old,) = yield client.execute([[b"CLIENT", b"ID"]])
            aborted = client._protocol
            if i % 2:
                client.drop()
            else:
                pinging = client.execute([[b"PING"]])
                pinging.addErrback(lambda f: f.trap(defer.CancelledError, StoreUnavailable))
                pinging.cancel()
            self.assertTrue(aborted.ending)
            key = b"after-%d" % i
            setting = client.execute([[b"SET", key, b"1"], [b"CLIENT", b"ID"]])
            getting = client.execute([[b"GET", key]])
            replies = yield defer.gatherResults([setting, getting])
            self.assertEqual(replies[0][0], "OK")
            self.assertNotEqual(replies[0][1], old)
            self.assertEqual(replies[1], [b"1"])
            self.assertIsNot(client._protocol, aborted)

    @defer.inlineCallbacks
    def test_waitingForARedisThatIsDown(self):
        """
        A command waiting for the next connection fails with StoreUnavailable when that
        connection cannot be made, and the client recovers when Redis is back.
        """
        store, client = yield self.connected()
        client.drop()
        self.redis.stop()
        self.addCleanup(self.redis.start)
        with self.assertRaises(StoreUnavailable) as raised:
            yield client.execute([[b"SET", b"k", b"1"]])
        self.assertIn("cannot be reached", str(raised.exception))
        self.redis.start()
        for _ in range(100):
            try:
                self.assertEqual((yield client.execute([[b"PING"]])), ["PONG"])
                break
            except StoreUnavailable:
                yield sleep(0.05)
        self.assertEqual(self.redis.keys(), [])

    @defer.inlineCallbacks
    def test_waitingTimesOutUnsent(self):
        """
        A command that waits for the next connection fails within the store's timeout when
        that connection does not become ready (Redis stopped, its kernel still accepting
        connections), and is never sent, not even once Redis runs again.
        """

        store, client = yield self.connected(timeout=0.3)
        pid = self.redis.process.pid
        os.kill(pid, signal.SIGSTOP)
        self.addCleanup(os.kill, pid, signal.SIGCONT)
        client.drop()
        with self.assertRaises(StoreUnavailable) as raised:
            yield client.execute([[b"SET", b"k", b"1"]])
        self.assertIn("did not answer within", str(raised.exception))
        self.assertEqual(client._next, [])
        os.kill(pid, signal.SIGCONT)
        for _ in range(100):
            try:
                self.assertEqual((yield client.execute([[b"PING"]])), ["PONG"])
                break
            except StoreUnavailable:
                yield sleep(0.05)
        self.flushLoggedErrors(StoreUnavailable)
        self.assertEqual(self.redis.command(b"EXISTS", b"k"), b":0\r\n")

    @defer.inlineCallbacks
    def test_droppedThenDown(self):
        """
        After the client drops its connection (as a failover or a READONLY reply makes it
        do), a Redis that cannot be reached is noted, as after any lost connection: the
        commands sent meanwhile fail at once, without waiting for an attempt each.
        """
        store, client = yield self.connected()
        self.redis.stop()
        self.addCleanup(self.redis.start)
        client.drop()
        with self.assertRaises(StoreUnavailable):
            yield client.execute([[b"PING"]])
        for _ in range(100):
            if client._down is not None:
                break
            yield sleep(0.02)
        self.assertIsNotNone(client._down)
        failing = client.execute([[b"PING"]])
        self.assertTrue(failing.called)
        with self.assertRaises(StoreUnavailable):
            yield failing

    @defer.inlineCallbacks
    def test_waitingWhenClosed(self):
        """
        Closing the store fails the commands that wait for the next connection.
        """
        store = RedisStore(self.redis.url)
        store.bind(reactor)
        client = store._client
        yield client.execute([[b"PING"]])
        client.drop()
        waiting = client.execute([[b"SET", b"k", b"1"]])
        yield store.close()
        with self.assertRaises(StoreUnavailable):
            yield waiting
        self.assertEqual(self.redis.keys(), [])
        self.assertEqual(client._next, [])

    @defer.inlineCallbacks
    def test_cancelledByAnotherWhileWaiting(self):
        """
        A waiting command that a callback of another cancels (here, as the closing store
        fails them) fails once, as cancelled commands do; the others fail as the rest do,
        and close() is not disturbed.
        """
        store, client = yield self.connected()
        client.drop()
        a, b, c = (client.execute([[b"SET", b"k%d" % i, b"1"]]) for i in range(3))
        failures = []
        a.addErrback(lambda f: (failures.append(("a", str(f.value))), b.cancel()))
        b.addErrback(lambda f: failures.append(("b", str(f.value))))
        c.addErrback(lambda f: failures.append(("c", str(f.value))))
        yield store.close()
        self.assertEqual([name for name, _ in failures], ["a", "b", "c"])
        self.assertIn("the store closed", failures[0][1])
        self.assertIn("did not answer", failures[1][1])
        self.assertIn("the store closed", failures[2][1])
        self.assertEqual(self.redis.keys(), [])

    def answering(self, client, commands, then=None):
        """
        C{client.execute(commands, then, answer=...)}, which returns C{None}: a Deferred
        that fires once the answer is called, and the list of everything it was given.
        """
        given = []
        answered = defer.Deferred()

        def answer(result):
            given.append(result)
            if not answered.called:
                answered.callback(None)

        self.assertIsNone(client.execute(commands, then, answer=answer))
        return answered, given

    @defer.inlineCallbacks
    def test_answerIsWhatTheDeferredFires(self):
        """
        execute(..., answer=) gives its answer, once, what execute's Deferred fires with: the
        replies, what then makes of them, an error reply's StoreError, or what then raised;
        on a connection that is ready, and for commands that wait for the next one.
        """
        store, client = yield self.connected()
        self.redis.command(b"SET", b"text", b"x")

        def double(replies):
            return replies * 2

        def refuse(replies):
            raise ValueError(f"refused {replies!r}")

        def outcome(result):
            if isinstance(result, Failure):
                return type(result.value), str(result.value)
            return result

        cases = [
            ([[b"ECHO", b"a"], [b"PING"]], None, [b"a", "PONG"]),
            ([[b"ECHO", b"b"]], double, [b"b", b"b"]),
            ([[b"HGETALL", b"text"]], None, StoreError),
            ([[b"ECHO", b"c"]], refuse, ValueError),
        ]
        for waiting in (False, True):
            for commands, then, expected in cases:
                if waiting:
                    client.drop()
                fired = yield client.execute(commands, then).addErrback(outcome)
                if waiting:
                    client.drop()
                answered, given = self.answering(client, commands, then)
                if not waiting:
                    self.assertFalse(answered.called)
                yield answered
                yield client.execute([[b"PING"]])
                self.assertEqual([outcome(result) for result in given], [fired])
                if isinstance(expected, list):
                    self.assertEqual(fired, expected)
                else:
                    self.assertIs(fired[0], expected)

    @defer.inlineCallbacks
    def test_answerThatRaisesIsLogged(self):
        """
        An exception an answer raises is logged, and the replies read with its reply still
        go to their own commands, on the same connection.
        """
        store, client = yield self.connected()
        protocol = client._protocol

        def broken(result):
            raise ZeroDivisionError("a broken answer")

        self.assertIsNone(client.execute([[b"ECHO", b"a"]], answer=broken))
        after = [client.execute([[b"ECHO", b"%d" % i]]) for i in range(3)]
        last, given = self.answering(client, [[b"ECHO", b"z"]])
        self.assertEqual((yield defer.gatherResults(after)), [[b"0"], [b"1"], [b"2"]])
        yield last
        self.assertEqual(given, [[b"z"]])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertIs(client._protocol, protocol)

    @defer.inlineCallbacks
    def test_answerWhenRedisFails(self):
        """
        An answer is given StoreUnavailable, once, when its reply is late, when its connection
        is lost, and when Redis cannot be reached.
        """
        store, client = yield self.connected(timeout=5)
        answered, given = self.answering(client, [[b"BLPOP", b"nothing", b"3"]])
        yield sleep(0.2)
        self.redis.command(b"CLIENT", b"KILL", b"TYPE", b"normal")
        yield answered
        self.assertIsInstance(given[0].value, StoreUnavailable)
        self.assertIn("was lost", str(given[0].value))

        store, client = yield self.connected(timeout=0.3)
        pid = self.redis.process.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            answered, late = self.answering(client, [[b"SET", b"k", b"1"]])
            yield answered
        finally:
            os.kill(pid, signal.SIGCONT)
        self.assertIsInstance(late[0].value, StoreUnavailable)
        self.assertIn("did not answer within", str(late[0].value))

        store, client = yield self.connected()
        self.redis.stop()
        self.addCleanup(self.redis.start)
        client.drop()
        answered, down = self.answering(client, [[b"SET", b"k", b"2"]])
        yield answered
        self.assertIsInstance(down[0].value, StoreUnavailable)
        self.assertIn("cannot be reached", str(down[0].value))
        yield sleep(0.1)
        self.assertEqual([len(given), len(late), len(down)], [1, 1, 1])

    @defer.inlineCallbacks
    def test_sentByALateCommandsCaller(self):
        """
        What the caller of a command that timed out sends from its errback waits for the next
        connection, and is answered there: it does not go to the connection the timeout
        ends, whose replies no one would read.
        """
        store, client = yield self.connected(timeout=1.0)
        pid = self.redis.process.pid
        again = []

        def retry(failure):
            failure.trap(StoreUnavailable)
            again.append(client.execute([[b"SET", b"k", b"2"]]))

        os.kill(pid, signal.SIGSTOP)
        try:
            yield client.execute([[b"SET", b"k", b"1"]]).addErrback(retry)
        finally:
            os.kill(pid, signal.SIGCONT)
        self.assertEqual((yield again[0]), ["OK"])
        self.assertEqual(self.redis.command(b"GET", b"k"), b"$1\r\n2\r\n")

    @defer.inlineCallbacks
    def test_unencodableWithAnAnswer(self):
        """
        A command that cannot be encoded raises when sent with an answer too, which is never
        called; the commands around it are answered.
        """
        store, client = yield self.connected()
        given = []
        for waiting in (False, True):
            if waiting:
                client.drop()
            before = client.execute([[b"ECHO", b"before"]])
            with self.assertRaises(TypeError):
                client.execute([[b"ECHO", "not bytes"]], answer=given.append)
            self.assertEqual((yield before), [b"before"])
            self.assertEqual((yield client.execute([[b"PING"]])), ["PONG"])
        self.assertEqual(given, [])

    @defer.inlineCallbacks
    def test_unencodableLeavesNothingBehind(self):
        """
        A command that cannot be encoded raises to its caller, whether a connection is up
        or it would wait for the next one, and the replies to the commands around it go to
        them.
        """
        store, client = yield self.connected()
        for waiting in (False, True):
            if waiting:
                client.drop()
            before = client.execute([[b"ECHO", b"before"]])
            with self.assertRaises(TypeError):
                client.execute([[b"ECHO", "not bytes"]])
            after = [client.execute([[b"ECHO", b"%d" % i]]) for i in range(3)]
            replies = yield defer.gatherResults([before, *after])
            self.assertEqual(replies, [[b"before"], [b"0"], [b"1"], [b"2"]])

    @defer.inlineCallbacks
    def test_sentAgainWhenClosed(self):
        """
        A command sent again by a caller whose waiting command the closing store failed is
        not left waiting on the stopped store: it is sent on a new connection, as any
        command sent to a closed store is.
        """
        store, client = yield self.connected()
        client.drop()
        again = []

        def retry(failure):
            failure.trap(StoreUnavailable)
            again.append(client.execute([[b"SET", b"k", b"2"]]))

        client.execute([[b"SET", b"k", b"1"]]).addErrback(retry)
        yield store.close()
        self.assertEqual(len(again), 1)
        self.assertEqual((yield again[0]), ["OK"])
        self.assertEqual(self.redis.command(b"GET", b"k"), b"$1\r\n2\r\n")

    @defer.inlineCallbacks
    def test_recoversAfterAnAbortOnASlowLink(self):
        """
        On a link whose round trip is a good part of the timeout, one abort under steady
        traffic is followed by the next connection serving every command: the commands that
        waited for it wait for their replies for the timeout from when they are sent, and do
        not time out there for the time they waited (ending that connection too, and the
        next, for as long as the traffic lasts).
        """
        from tests._proxy import FaultProxy

        proxy = FaultProxy(self.redis.port)
        self.addCleanup(proxy.stop)
        store = RedisStore(f"redis://127.0.0.1:{proxy.port}/0", timeout=0.5)
        store.bind(reactor)
        self.addCleanup(store.close)
        client = store._client
        yield client.execute([[b"PING"]])
        proxy.latency(150)
        yield client.execute([[b"PING"]])
        outcomes = []

        def issue(i):
            echoing = client.execute([[b"ECHO", b"%d" % i]])
            echoing.addCallbacks(
                lambda replies: outcomes.append(replies == [b"%d" % i]),
                lambda f: (f.trap(StoreUnavailable), outcomes.append(False)),
            )

        numbers = itertools.count()
        sending = task.LoopingCall(lambda: issue(next(numbers)))
        sending.start(0.01)
        pinging = client.execute([[b"PING"]])
        pinging.addErrback(lambda f: f.trap(defer.CancelledError, StoreUnavailable))
        pinging.cancel()
        # Until 50 commands in a row have been answered (at most 15 seconds).
        for _ in range(150):
            yield sleep(0.1)
            if len(outcomes) > 50 and all(outcomes[-50:]):
                break
        sending.stop()
        self.assertTrue(all(outcomes[-50:]), outcomes.count(False))
        self.flushLoggedErrors(StoreUnavailable)

    @defer.inlineCallbacks
    def test_usedInTheTurnItCloses(self):
        """
        A command sent while the store is closing, before its connection has ended, is
        answered on a new connection: the closing one would not read its reply.
        """
        store = RedisStore(self.redis.url)
        store.bind(reactor)
        self.addCleanup(store.close)
        client = store._client
        (old,) = yield client.execute([[b"CLIENT", b"ID"]])
        closing = store.close()
        replies = yield client.execute([[b"SET", b"k", b"1"], [b"CLIENT", b"ID"]])
        self.assertEqual(replies[0], "OK")
        self.assertNotEqual(replies[1], old)
        yield closing
        self.assertEqual((yield client.execute([[b"GET", b"k"]])), [b"1"])

    @defer.inlineCallbacks
    def test_writeBehindAPartialOne(self):
        """
        What the socket does not take of a command is left to the transport, and a command
        sent after it goes behind it: both are answered, in order.
        """
        store = RedisStore(self.redis.url)
        store.bind(reactor)
        self.addCleanup(store.close)
        yield store.load([b"u"])
        client = store._client
        transport = client._protocol.transport
        big = os.urandom(1 << 20) * 24
        setting = client.execute([[b"SET", b"big", big]])
        self.assertIn(transport, reactor.getWriters())
        getting = client.execute([[b"GET", b"big"], [b"STRLEN", b"big"]])
        self.assertIn(transport, reactor.getWriters())
        replies = yield defer.gatherResults([setting, getting])
        self.assertEqual([r[-1] for r in replies], ["OK", len(big)])
        self.assertTrue(replies[1][0] == big)
        self.assertNotIn(transport, reactor.getWriters())


class SaveSessionTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_outsideARequest(self):
        """
        site.saveSession writes a session made and changed outside any request, and
        another site then finds it.
        """
        from txsession.store import UnserializableValue

        a, b = self.makeSite(), self.makeSite()
        session = a.makeSession()
        session.sessionNamespaces["k"] = [1]
        yield a.saveSession(session)
        self.assertEqual(self.stored(session.uid.decode())[b"n:k"], b"[1]")
        yield a.saveSession(session)  # nothing changed: nothing to write
        session.sessionNamespaces["bad"] = b"bytes"
        with self.assertRaises(UnserializableValue):
            yield a.saveSession(session)
        self.assertNotIn("bad", session.sessionNamespaces)
        client = Client(b.base)
        client.jar.set_cookie(_cookie("TWISTED_SESSION", session.uid.decode()))
        _, there = yield self.get(client, b, b"get")
        self.assertEqual(there, {"session": session.uid.decode(), "values": {"k": [1]}})

    def test_needsAStore(self):
        site = Site(resource.Resource())
        self.assertRaises(RuntimeError, site.saveSession, site.makeSession())
        for session in list(site.sessions.values()):
            session.expire()
