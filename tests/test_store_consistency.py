"""
The store's consistency model (README.md, "The consistency model"), one promise at a time,
against a real C{redis-server}: which sessions a request may use, what a failure undoes, what
a 200 and a logout promise beside renames, evictions and concurrent requests, atomic writes of
any size, the same values in every process, a bounded Redis under a flood of new sessions,
and no password in any message. Each test reproduces a defect the store once had.
"""

from __future__ import annotations

import json

from twisted.internet import defer, reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web import resource, server

from tests._redis import freePort, sessionKey
from tests.apps import store_app
from tests.test_security import _cookie
from tests.test_store import StoreTestCase, sleep
from tests.test_web import Client
from txsession.redis import RedisStore
from txsession.store import SessionEnded, StoreError, StoreUnavailable, UnserializableValue
from txsession.web import Site


class _Gate(resource.Resource):
    """
    Pages whose timing a test drives: C{/change?key=K&value=V} sets a key and streams one
    chunk (its write goes out), then finishes when the test says; C{/hold?key=K&value=V}
    sets a key and waits for the test to make it fail.
    """

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.finishing = defer.Deferred()
        self.failing = defer.Deferred()
        self.started = defer.Deferred()

    def render_GET(self, request):
        key = request.args[b"key"][0].decode()
        value = json.loads(request.args[b"value"][0])
        session = request.getSession()
        session.sessionNamespaces[key] = value
        if request.path == b"/change":
            request.write(b"{")
            self.started.callback(None)

            def finish(_):
                request.write(b"}")
                request.finish()

            self.finishing.addCallback(finish)
        else:
            self.started.callback(None)
            failing = self.failing.addCallback(lambda _: 1 / 0)
            # processingFailed answers the request and gives the failure back: consumed here.
            failing.addErrback(request.processingFailed).addErrback(lambda _: None)
        return server.NOT_DONE_YET


class ConsistencyTestCase(StoreTestCase):
    def setUp(self):
        super().setUp()
        self.logged = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def uidOf(self, state):
        return state["session"]

    def storedValues(self, uid):
        return {
            k[2:].decode(): json.loads(v)
            for k, v in self.stored(uid).items()
            if k.startswith(b"n:")
        }


class WhichSessionsTests(ConsistencyTestCase):
    @defer.inlineCallbacks
    def test_junkCookiesDoNotHideALogout(self):
        """
        After a logout on one site, a request to another site that holds a copy gets a new
        session, even when it carries junk cookies named like session cookies ahead of the
        real one: the site reads exactly the cookie getSession uses.
        """
        for sliding in (False, True):
            a = self.makeSite()
            b = self.serve(
                store_app.makeSite(RedisStore(self.redis.url), 60.0, slidingExpiry=sliding)
            )
            client = Client(a.base)
            _, state = yield self.get(client, a, b"set?key=k&value=1")
            uid = state["session"]
            _, there = yield self.get(client, b, b"get")
            self.assertEqual(there["values"], {"k": 1})
            code, _ = yield self.get(client, a, b"logout")
            self.assertEqual(code, 200)
            hostile = Client(b.base)
            for i in range(8):
                hostile.jar.set_cookie(_cookie(f"TWISTED_SESSION_{i}", "junk"))
            hostile.jar.set_cookie(_cookie("TWISTED_SESSION", uid))
            for _ in range(3):
                _, served = yield self.get(hostile, b, b"get")
                self.assertNotEqual(served["session"], uid)
                self.assertEqual(served["values"], {})
            self.assertNotIn(uid.encode(), b.sessions)
            self.assertEqual(self.redis.keys(), [])

    @defer.inlineCallbacks
    def test_readsOnlyTheSessionCookies(self):
        """
        However many cookies a request carries, the site reads at most the two session
        cookies getSession can use: one round trip, one or two ids (without the cache, which
        would answer the real one without reading).
        """
        a = self.makeSite(cache=False)
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")
        for i in range(50):
            client.jar.set_cookie(_cookie(f"TWISTED_SESSION_{i}", f"junk{i}"))
            client.jar.set_cookie(_cookie(f"other{i}", "x"))
        before = a.store.roundTrips
        reads = []
        load = a.store.load
        a.store.load = lambda uids: reads.append(list(uids)) or load(uids)
        _, here = yield self.get(client, a, b"get")
        self.assertEqual(here["values"], {"k": 1})
        self.assertEqual(a.store.roundTrips - before, 1)
        self.assertEqual(reads, [[state["session"].encode()]])

    @defer.inlineCallbacks
    def test_appProcessOverrideRuns(self):
        """
        An app's request factory's own process() runs on a store site, for requests with and
        without a session cookie, after the session is read.
        """
        seen = []

        class Audited(server.Request):
            def process(self):
                seen.append(self.getCookie(b"TWISTED_SESSION"))
                self.setHeader(b"x-audited", b"yes")
                return super().process()

        site = store_app.makeSite(RedisStore(self.redis.url))
        site.requestFactory = Audited
        self.serve(site)
        client = Client(site.base)
        response, _ = yield client.get(b"set?key=k&value=1")
        self.assertEqual(response.headers.getRawHeaders(b"x-audited"), [b"yes"])
        response, body = yield client.get(b"get")
        self.assertEqual(response.headers.getRawHeaders(b"x-audited"), [b"yes"])
        self.assertEqual(json.loads(body)["values"], {"k": 1})
        self.assertEqual(len(seen), 2)
        self.assertIsNone(seen[0])
        self.assertEqual(seen[1], json.loads(body)["session"].encode())


class FailureTests(ConsistencyTestCase):
    def gateSite(self):
        gate = _Gate()
        root = resource.Resource()
        root.putChild(b"change", gate)
        root.putChild(b"hold", gate)
        root.putChild(b"set", store_app.Set(None))
        root.putChild(b"get", store_app.Get(None))
        root.putChild(b"fail", store_app.Fail(None))
        return self.serve(Site(root, store=RedisStore(self.redis.url))), gate

    @defer.inlineCallbacks
    def test_failureDoesNotUndoAnotherRequestsWrite(self):
        """
        R2 fails while R1's write of the same session is in flight: R1's change stays, in
        Redis and in the copy, and R1's finishing write does not put the old value back.
        R2's own change is undone.
        """
        site, gate = self.gateSite()
        client = Client(site.base)
        _, state = yield self.get(client, site, b'set?key=cart&value="old"')
        uid = state["session"]
        holding = self.get(client, site, b'hold?key=other&value="r2"')
        yield gate.started
        gate.started = defer.Deferred()
        changing = self.get(client, site, b'change?key=cart&value="new"')
        yield gate.started
        # R1's write is on its way; R2 fails now.
        gate.failing.callback(None)
        code2, _ = yield holding
        self.assertEqual(code2, 500)
        gate.finishing.callback(None)
        code1, _ = yield changing
        self.assertEqual(code1, 200)
        self.assertEqual(self.storedValues(uid), {"cart": "new"})
        self.assertEqual(dict(site.sessions[uid.encode()].sessionNamespaces), {"cart": "new"})
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    @defer.inlineCallbacks
    def test_failureBeforeAnotherRequestsWrite(self):
        """
        R2 fails while R1, on the same session, has changed a key and not written it yet:
        R1's change survives R2's revert and is written by R1.
        """
        site, gate = self.gateSite()
        client = Client(site.base)
        _, state = yield self.get(client, site, b'set?key=cart&value="old"')
        uid = state["session"]
        holding = self.get(client, site, b'hold?key=other&value="r2"')
        yield gate.started
        slow = self.get(client, site, b'set?key=cart&value="r1"&delay=0.2')
        yield sleep(0.05)
        gate.failing.callback(None)
        code2, _ = yield holding
        self.assertEqual(code2, 500)
        code1, _ = yield slow
        self.assertEqual(code1, 200)
        self.assertEqual(self.storedValues(uid), {"cart": "r1"})
        self.flushLoggedErrors(ZeroDivisionError)

    @defer.inlineCallbacks
    def test_twoFailuresOnOneKey(self):
        """
        R1 sets a key and fails later; R2 begins while R1's value is there, sets the same
        key, and fails after R1. Neither value is kept: R2's revert does not put back R1's
        value, which it took as its baseline, and no later request writes it.
        """
        site, _ = self.gateSite()
        client = Client(site.base)
        _, state = yield self.get(client, site, b"set?key=cart&value=1")
        uid = state["session"]
        first = self.get(client, site, b"fail?key=cart&value=12&delay=0.1")
        yield sleep(0.02)
        second = self.get(client, site, b"fail?key=cart&value=14&delay=0.2")
        codes = yield defer.gatherResults([first, second])
        self.assertEqual([code for code, _ in codes], [500, 500])
        self.assertEqual(dict(site.sessions[uid.encode()].sessionNamespaces), {"cart": 1})
        code, state = yield self.get(client, site, b"get")
        self.assertEqual((code, state["values"]), (200, {"cart": 1}))
        self.assertEqual(self.storedValues(uid), {"cart": 1})
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)

    @defer.inlineCallbacks
    def test_secureAndInsecureAllOrNothing(self):
        """
        A request using its secure and its insecure session, where the second value cannot
        be encoded: a 500, and neither session's change is written.
        """
        from tests.test_security import TLSClient, _tls

        class Both(resource.Resource):
            isLeaf = True

            def __init__(self, badOne):
                super().__init__()
                self.badOne = badOne

            def render_GET(self, request):
                for insecure in (False, True):
                    session = request.getSession(forceNotSecure=insecure)
                    bad = insecure == (self.badOne == "insecure")
                    session.sessionNamespaces["bad" if bad else "k"] = {1, 2} if bad else 2
                return b"done"

        root = resource.Resource()
        root.putChild(b"secure", Both("secure"))
        root.putChild(b"insecure", Both("insecure"))
        root.putChild(b"set", store_app.Set(None))
        site = Site(root, store=RedisStore(self.redis.url))
        port = reactor.listenSSL(0, site, _tls().server, interface="127.0.0.1")
        self.addCleanup(site.store.close)
        self.addCleanup(self.endSessions, site)
        self.addCleanup(port.stopListening)
        base = b"https://localhost:%d/" % port.getHost().port
        client = TLSClient(base)
        response, body = yield client.get(b"set?key=k&value=1")
        uid = json.loads(body)["session"]
        for badOne in (b"secure", b"insecure"):
            response, _ = yield client.get(badOne)
            self.assertEqual(response.code, 500)
            self.assertEqual(self.storedValues(uid), {"k": 1})
            self.assertEqual(len(self.redis.keys()), 1)
            self.assertEqual(dict(site.sessions[uid.encode()].sessionNamespaces), {"k": 1})
            self.assertEqual(len(self.flushLoggedErrors(UnserializableValue)), 1)

    @defer.inlineCallbacks
    def test_storeErrorIsNotUnreachable(self):
        """
        An error reply from Redis (here a session key someone made a string) is reported as
        what it is: a 500 logged as the store's error, not a 503 "could not be reached".
        """
        a = self.makeSite()
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")
        self.redis.command(b"SET", sessionKey(state["session"]), b"x")
        code, _ = yield self.get(client, a, b"get")
        self.assertEqual(code, 500)
        self.assertTrue(self.flushLoggedErrors(StoreError))
        self.assertFalse(self.flushLoggedErrors(StoreUnavailable))


class EvictionTests(ConsistencyTestCase):
    @defer.inlineCallbacks
    def test_floodDoesNotDropARunningRequestsWrite(self):
        """
        With maxSessions, a flood of new sessions does not evict the copy a slow request is
        using: its 200 means its write is in Redis.
        """
        site = self.serve(store_app.makeSite(RedisStore(self.redis.url), maxSessions=2))
        client = Client(site.base)
        _, state = yield self.get(client, site, b"set?key=k&value=1")
        uid = state["session"]
        slow = self.get(client, site, b"set?key=k&value=2&delay=0.3")
        yield sleep(0.05)
        for _ in range(6):
            code, _ = yield self.get(Client(site.base), site, b"get")
            self.assertEqual(code, 200)
        self.assertLessEqual(len(site.sessions), 3)
        code, _ = yield slow
        self.assertEqual(code, 200)
        self.assertEqual(self.storedValues(uid), {"k": 2})


class RenameTests(ConsistencyTestCase):
    @defer.inlineCallbacks
    def test_logoutDuringRenameEndsBothNames(self):
        """
        A logout on one site by a request that read the session before another site renamed
        it (the logout reaches Redis after the rename): the session is gone under both ids.
        """
        a, b = self.makeSite(), self.makeSite()
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")
        old = state["session"]
        loggingOut = self.get(client, b, b"logout?delay=0.2")
        yield sleep(0.05)
        _, renewed = yield self.get(client, a, b"renew")
        new = renewed["session"]
        self.assertNotEqual(new, old)
        code, _ = yield loggingOut
        self.assertEqual(code, 200)
        self.assertEqual(self.redis.keys(), [])
        for site in (a, b):
            _, after = yield self.get(client, site, b"get")
            self.assertNotIn(after["session"], (old, new))
            self.assertEqual(after["values"], {})

    @defer.inlineCallbacks
    def test_logoutBeforeRenameFailsTheRename(self):
        """
        The other order: the logout reaches Redis first, and the rename finds nothing to
        rename: the login request gets a 409, not a session.
        """
        a = self.makeSite()
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")
        uid = state["session"].encode()
        store = a.store
        yield store.delete(uid)
        with self.assertRaises(SessionEnded):
            yield store.save(b"new" + uid[3:], uid, 60, {}, [])
        self.assertEqual(self.redis.keys(), [])

    @defer.inlineCallbacks
    def test_writeDuringRenameElsewhere(self):
        """
        A request on another site that read the session before the rename and writes after
        it: no 200 for a write that is not there (a 409), the renamed session keeps its data,
        and that site does not run the session's expire callbacks, since it lives on.
        """
        a = self.makeSite()
        holder = store_app._Holder
        b = self.makeSite()
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")
        old = state["session"]
        writing = self.get(client, b, b"set?key=late&value=2&delay=0.2")
        yield sleep(0.05)
        _, renewed = yield self.get(client, a, b"renew")
        new = renewed["session"]
        code, _ = yield writing
        self.assertEqual(code, 409)
        self.assertEqual(self.storedValues(new), {"k": 1})
        self.assertEqual(self.stored(old), {b"m:f": sessionKey(new, b"")})
        _, ended = yield self.get(Client(b.base), b, b"ended")
        self.assertEqual(ended, [])
        _, there = yield self.get(client, b, b"get")
        self.assertEqual(there, {"session": new, "values": {"k": 1}})
        self.assertTrue(holder)
        self.flushLoggedErrors(SessionEnded)

    @defer.inlineCallbacks
    def test_renameWithManyKeysIsAtomic(self):
        """
        A login that renames a session and writes thousands of keys in the same script: all
        of it is applied, the rename and every key.
        """

        class RenewMany(resource.Resource):
            isLeaf = True

            def render_GET(self, request):
                import txsession

                session = txsession.renewSession(request)
                session.sessionNamespaces.update({f"k{i}": i for i in range(6000)})
                return session.uid

        site = store_app.makeSite(RedisStore(self.redis.url))
        site.resource.putChild(b"renewmany", RenewMany())
        self.serve(site)
        client = Client(site.base)
        _, state = yield self.get(client, site, b"set?key=a&value=1")
        code, new = yield self.get(client, site, b"renewmany")
        self.assertEqual(code, 200)
        values = self.storedValues(new.decode())
        self.assertEqual(len(values), 6001)
        self.assertEqual(self.stored(state["session"]), {b"m:f": sessionKey(new, b"")})


class BigSessionTests(ConsistencyTestCase):
    @defer.inlineCallbacks
    def test_thousandsOfKeys(self):
        """
        A request that sets 9,000 keys, then one that deletes them all: both are written.
        """
        a = self.makeSite()
        client = Client(a.base)
        code, count = yield self.get(client, a, b"many?n=9000")
        self.assertEqual((code, int(count)), (200, 9000))
        uid = list(a.sessions)[0].decode()
        self.assertEqual(len(self.stored(uid)), 9001)
        code, _ = yield self.get(client, a, b"clear")
        self.assertEqual(code, 200)
        self.assertEqual(self.stored(uid), {b"m:t": b"60000"})
        b = self.makeSite()
        _, there = yield self.get(client, b, b"get")
        self.assertEqual(there, {"session": uid, "values": {}})

    @defer.inlineCallbacks
    def test_noPartialWrite(self):
        """
        A write whose session became something other than a session in Redis writes
        nothing: the checks come before the first write.
        """
        a = self.makeSite()
        store = a.store
        yield store.save(b"u", None, 60, {"k": b"1"}, [])
        key = sessionKey(b"u")
        self.redis.command(b"DEL", key)
        self.redis.command(b"RPUSH", key, b"x")
        with self.assertRaises(SessionEnded):
            yield store.save(b"v", b"u", 60, {"k": b"2"}, [])
        self.assertEqual(sorted(self.redis.keys()), [key])
        self.assertEqual(self.redis.command(b"TYPE", key), b"+list\r\n")


class InterleavedReadTests(ConsistencyTestCase):
    @defer.inlineCallbacks
    def test_readDoesNotOverwriteAnUnwrittenChange(self):
        """
        R1 changes a key and has not written it; another process writes the key; an
        unrelated request of R1's process reads the session meanwhile. R1 writes last, and
        its value is the one that stays: the read did not replace R1's change.
        """
        a, b = self.makeSite(), self.makeSite()
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")
        uid = state["session"]
        slow = self.get(client, a, b"set?key=k&value=2&delay=0.3")
        yield sleep(0.05)
        yield self.get(client, b, b"set?key=k&value=3")
        _, seen = yield self.get(client, a, b"get")
        self.assertEqual(seen["values"], {"k": 2})
        code, _ = yield slow
        self.assertEqual(code, 200)
        self.assertEqual(self.storedValues(uid), {"k": 2})


class ValueTests(ConsistencyTestCase):
    @defer.inlineCallbacks
    def test_valuesJSONWouldChangeAreRefused(self):
        """
        A tuple, a dict with int keys, a dict with both 1 and "1": JSON would give each back
        changed (or lose an entry), so each is refused with a 500 naming the key, and nothing
        is written. The writing process never holds what others cannot read.
        """
        a = self.makeSite()
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")
        for kind in (b"tuple", b"intkeys", b"mixed"):
            code, _ = yield self.get(client, a, b"py?key=v_" + kind + b"&kind=" + kind)
            self.assertEqual(code, 500)
            failures = self.flushLoggedErrors(UnserializableValue)
            self.assertIn("'v_" + kind.decode() + "'", str(failures[0].value))
            self.assertEqual(self.storedValues(state["session"]), {"k": 1})
            _, here = yield self.get(client, a, b"get")
            self.assertEqual(here["values"], {"k": 1})

    @defer.inlineCallbacks
    def test_saveSessionFailsThroughItsDeferred(self):
        """
        saveSession with a key that cannot be encoded returns a failed Deferred (it does not
        raise), and the key is taken out of the copy again.
        """
        a = self.makeSite()
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")
        session = a.sessions[state["session"].encode()]
        session.sessionNamespaces["\ud800"] = 1
        saving = a.saveSession(session)
        self.assertIsInstance(saving, defer.Deferred)
        with self.assertRaises(UnserializableValue):
            yield saving
        self.assertEqual(dict(session.sessionNamespaces), {"k": 1})
        self.assertEqual(self.storedValues(state["session"]), {"k": 1})


class FloodTests(ConsistencyTestCase):
    @defer.inlineCallbacks
    def test_emptySessionsAreNotStored(self):
        """
        A flood of requests without cookies that call getSession writes nothing to Redis. A
        new session is still a session in its process, cookie and all; it is stored once it
        holds data. Another process that gets its cookie before then makes a new session.
        """
        a, b = self.makeSite(), self.makeSite()
        for _ in range(30):
            code, _ = yield self.get(Client(a.base), a, b"get")
            self.assertEqual(code, 200)
        self.assertEqual(self.redis.keys(), [])
        client = Client(a.base)
        _, first = yield self.get(client, a, b"get")
        _, again = yield self.get(client, a, b"get")
        self.assertEqual(again["session"], first["session"])
        _, there = yield self.get(client, b, b"get")
        self.assertNotEqual(there["session"], first["session"])
        client = Client(a.base)
        _, state = yield self.get(client, a, b"get")
        yield self.get(client, a, b"set?key=k&value=1")
        self.assertEqual(self.storedValues(state["session"]), {"k": 1})

    @defer.inlineCallbacks
    def test_storeEmptySessions(self):
        """
        storeEmptySessions=True writes every new session, as before.
        """
        a = self.serve(
            store_app.makeSite(RedisStore(self.redis.url), 60.0, storeEmptySessions=True)
        )
        b = self.makeSite()
        client = Client(a.base)
        _, state = yield self.get(client, a, b"get")
        self.assertEqual(self.stored(state["session"]), {b"m:t": b"60000"})
        _, there = yield self.get(client, b, b"get")
        self.assertEqual(there["session"], state["session"])


class SecretTests(ConsistencyTestCase):
    @defer.inlineCallbacks
    def test_passwordNeverShown(self):
        """
        The password of the store's URL is not in its repr, its url, its error messages or
        the log of a 503.
        """
        # A port nothing listens on (on some machines something does on port 1).
        url = f"redis://user:s3cr3t-pw@127.0.0.1:{freePort()}/0"
        store = RedisStore(url, timeout=0.5)
        self.assertNotIn("s3cr3t", repr(store))
        self.assertNotIn("s3cr3t", store.url)
        self.assertIn("***", repr(store))
        site = self.serve(store_app.makeSite(store))
        client = Client(site.base)
        code, _ = yield self.get(client, site, b"set?key=k&value=1")
        self.assertEqual(code, 503)
        failures = self.flushLoggedErrors(StoreUnavailable)
        self.assertTrue(failures)
        text = "\n".join(
            [formatEvent(e) for e in self.logged]
            + [f.getTraceback() for f in failures]
            + [repr(f.value) for f in failures]
        )
        self.assertNotIn("s3cr3t", text)
        for bad in ("redis://u:s3cr3t@h:x/0", "redis://u:s3cr3t@h/notanumber", "http://u:s3cr3t@h"):
            with self.assertRaises(ValueError) as raised:
                RedisStore(bad)
            self.assertNotIn("s3cr3t", str(raised.exception))
