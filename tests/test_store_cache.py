"""
Client-side caching of the Redis store (C{RedisStore(cache=True)}, the default), against a real
C{redis-server}: a session a site read or wrote, and that Redis has not invalidated since, is
used without a round trip; every way Redis can change it (another process's write or logout,
an expiry, a flush, a lost connection, a logout of the user's other sessions) ends the copy,
and its next use reads it again.
"""

from __future__ import annotations

import json

from twisted.internet import defer, reactor
from twisted.web import resource

from tests._redis import sessionKey
from tests.apps import store_app
from tests.test_store import StoreTestCase, sleep
from tests.test_store_attacks_accounts import AccountPages
from tests.test_web import Client
from txsession.redis import RedisStore
from txsession.web import Site


class CacheTestCase(StoreTestCase):
    @defer.inlineCallbacks
    def trips(self, site, client, path, sync=True):
        """
        Request C{path}; its state and how many round trips to Redis it cost.
        """
        before = site.store.roundTrips
        code, state = yield self.get(client, site, path, sync=sync)
        self.assertEqual(code, 200)
        return state, site.store.roundTrips - before

    @defer.inlineCallbacks
    def settle(self):
        # Lets every push already sent by Redis reach the sites.
        yield sleep(0.05)


class CachedReadTests(CacheTestCase):
    @defer.inlineCallbacks
    def test_readsCostNoRoundTrip(self):
        """
        A session the site made and wrote, then only read: no round trip per request.
        """
        a = self.makeSite()
        client = Client(a.base)
        state, trips = yield self.trips(a, client, b"set?key=k&value=1")
        self.assertEqual(trips, 1)
        for _ in range(3):
            state, trips = yield self.trips(a, client, b"get")
            self.assertEqual((state["values"], trips), ({"k": 1}, 0))
        self.assertEqual(a._flow.cachedReads, 3)

    @defer.inlineCallbacks
    def test_writeCostsOneRoundTrip(self):
        """
        A request that changes a key of a cached session: its write, and no read.
        """
        a = self.makeSite()
        client = Client(a.base)
        yield self.trips(a, client, b"set?key=k&value=1")
        for value in (2, 3):
            state, trips = yield self.trips(a, client, b"set?key=k&value=%d" % value)
            self.assertEqual((state["values"], trips), ({"k": value}, 1))
        uid = state["session"]
        self.assertEqual(self.stored(uid)[b"n:k"], b"3")

    @defer.inlineCallbacks
    def test_readElsewhereStaysCached(self):
        """
        Two sites that only read a session, in turn: after each has read it once, neither
        reads it again (a read restarts no timeout that is not due, so it changes nothing).
        """
        a, b = self.makeSite(), self.makeSite()
        client = Client(a.base)
        yield self.trips(a, client, b"set?key=k&value=1")
        yield self.trips(b, client, b"get")
        yield self.settle()
        for _ in range(3):
            for site in (a, b):
                state, trips = yield self.trips(site, client, b"get")
                self.assertEqual((state["values"], trips), ({"k": 1}, 0))

    @defer.inlineCallbacks
    def test_writeElsewhereInvalidates(self):
        """
        Another process's write ends this site's copy: the next request reads the new value.
        """
        a, b = self.makeSite(), self.makeSite()
        client = Client(a.base)
        yield self.trips(a, client, b"set?key=k&value=1")
        yield self.trips(b, client, b"set?key=k&value=2")
        yield self.settle()
        state, trips = yield self.trips(a, client, b"get")
        self.assertEqual((state["values"], trips), ({"k": 2}, 1))
        state, trips = yield self.trips(a, client, b"get")
        self.assertEqual((state["values"], trips), ({"k": 2}, 0))

    @defer.inlineCallbacks
    def test_writeElsewhereAtOnce(self):
        """
        The request right after another process's write, once Redis's push has reached this
        site's socket and before the reactor has read it: it never sees the old value (the
        site finds the push waiting, and reads instead).
        """
        a, b = self.makeSite(), self.makeSite()
        client = Client(a.base)
        state, _ = yield self.trips(a, client, b"set?key=k&value=0")
        key = sessionKey(state["session"])
        for value in range(1, 30):
            yield self.trips(b, client, b"set?key=k&value=%d" % value, sync=False)
            for _ in range(2000):
                protocol = a.store._client._protocol
                if protocol.pushMayWait() or key not in a.store._tracker.stamps:
                    break
                yield sleep(0.001)
            state, _ = yield self.trips(a, client, b"get", sync=False)
            self.assertEqual(state["values"], {"k": value})

    @defer.inlineCallbacks
    def test_logoutElsewhereEndsTheCopy(self):
        """
        A logout on another process: this site never serves its copy again.
        """
        a, b = self.makeSite(), self.makeSite()
        client = Client(a.base)
        state, _ = yield self.trips(a, client, b"set?key=k&value=1")
        uid = state["session"]
        yield self.trips(b, client, b"get")
        yield self.trips(b, client, b"logout")
        state, _ = yield self.trips(a, client, b"get")
        self.assertNotEqual(state["session"], uid)
        self.assertEqual(state["values"], {})

    @defer.inlineCallbacks
    def test_secondSiteOnTheSameStore(self):
        """
        Two sites of one process on one store (one connection, whose own writes Redis does
        not report): a write or a logout through one ends the other's copy.
        """
        store = RedisStore(self.redis.url)
        a = self.serve(store_app.makeSite(store))
        b = self.serve(store_app.makeSite(store))
        client = Client(a.base)
        state, _ = yield self.trips(a, client, b"set?key=k&value=1")
        uid = state["session"]
        yield self.trips(b, client, b"get")
        yield self.trips(b, client, b"set?key=k&value=2")
        state, trips = yield self.trips(a, client, b"get")
        self.assertEqual((state["values"], trips), ({"k": 2}, 1))
        yield self.trips(b, client, b"get")
        yield self.trips(a, client, b"logout")
        state, _ = yield self.trips(b, client, b"get")
        self.assertNotEqual(state["session"], uid)

    @defer.inlineCallbacks
    def test_renewedStaysCached(self):
        """
        A renewed session (a rename): the new id is cached as the old one was.
        """
        a = self.makeSite()
        client = Client(a.base)
        yield self.trips(a, client, b"set?key=k&value=1")
        state, _ = yield self.trips(a, client, b"renew")
        state, trips = yield self.trips(a, client, b"get")
        self.assertEqual((state["values"], trips), ({"k": 1}, 0))
        self.assertEqual(self.stored(state["session"])[b"n:k"], b"1")


class InvalidationTests(CacheTestCase):
    @defer.inlineCallbacks
    def cachedSession(self, **storeOptions):
        a = self.makeSite(**storeOptions)
        client = Client(a.base)
        state, _ = yield self.trips(a, client, b"set?key=k&value=1")
        state, trips = yield self.trips(a, client, b"get")
        self.assertEqual(trips, 0)
        return a, client, state["session"]

    @defer.inlineCallbacks
    def test_changedByAnyone(self):
        """
        A change made to the key by any client of Redis ends the copy.
        """
        a, client, uid = yield self.cachedSession()
        self.redis.command(b"HSET", sessionKey(uid), b"n:k", b"5")
        yield self.settle()
        state, trips = yield self.trips(a, client, b"get")
        self.assertEqual((state["values"], trips), ({"k": 5}, 1))

    @defer.inlineCallbacks
    def test_flushAll(self):
        """
        FLUSHALL (an invalidation that names no key): every copy ends.
        """
        a, client, uid = yield self.cachedSession()
        self.redis.command(b"FLUSHALL")
        yield self.settle()
        state, _ = yield self.trips(a, client, b"get")
        self.assertNotEqual(state["session"], uid)

    @defer.inlineCallbacks
    def test_expiredInRedis(self):
        """
        The key expires in Redis (here its timeout cut short by hand): the copy ends.
        """
        a, client, uid = yield self.cachedSession()
        self.redis.command(b"PEXPIRE", sessionKey(uid), b"100")
        yield sleep(0.4)
        state, _ = yield self.trips(a, client, b"get")
        self.assertNotEqual(state["session"], uid)

    @defer.inlineCallbacks
    def test_connectionLost(self):
        """
        The connection to Redis is lost: every copy ends, and is read on the next one.
        """
        a, client, uid = yield self.cachedSession()
        self.redis.command(b"CLIENT", b"KILL", b"TYPE", b"normal", b"SKIPME", b"yes")
        yield self.settle()
        state, trips = yield self.trips(a, client, b"get")
        self.assertEqual((state["session"], state["values"]), (uid, {"k": 1}))
        self.assertGreaterEqual(trips, 1)
        state, trips = yield self.trips(a, client, b"get")
        self.assertEqual(trips, 0)

    @defer.inlineCallbacks
    def test_maxAge(self):
        """
        A copy is read again once older than cacheMaxAge, invalidated or not.
        """
        a, client, uid = yield self.cachedSession(cacheMaxAge=0.2)
        yield sleep(0.3)
        state, trips = yield self.trips(a, client, b"get")
        self.assertEqual((state["values"], trips), ({"k": 1}, 1))

    @defer.inlineCallbacks
    def test_noCopyOnAConnectionBeingEnded(self):
        """
        A connection this client is ending (a reply to no command, a timeout, a drop) is
        lost only on the reactor's next turn, and what was read with the reply that ended it
        is never handed out, pushes included: none of its copies is used meanwhile.
        """
        a, client, uid = yield self.cachedSession()
        store = a.store
        self.assertTrue(store.cached(uid.encode(), a._flow))
        store._client._protocol.abort()
        self.assertIsNone(store.cached(uid.encode(), a._flow))

    @defer.inlineCallbacks
    def test_unreadBytesMeanARead(self):
        """
        Bytes from Redis that the reactor has not read yet (a push may be among them): the
        request reads the session instead of trusting the copy.
        """
        a, client, uid = yield self.cachedSession()
        protocol = a.store._client._protocol
        protocol.pushMayWait = lambda: True
        state, trips = yield self.trips(a, client, b"get")
        self.assertEqual((state["values"], trips), ({"k": 1}, 1))

    def test_pushMayWait(self):
        """
        What waits unread on a connection: nothing, or replies to other commands, is no
        reason to read; an invalidation, bytes under TLS, part of a reply already taken in
        (with or without bytes waiting), more than can be looked at, or the stream's end is.
        """
        import socket

        from txsession._redistracking import PEEK, Waiting
        from txsession._txsession import RespDecoder
        from txsession.store import StoreError

        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        ours.setblocking(False)
        decoder, partway = RespDecoder(StoreError), RespDecoder(StoreError)
        partway.feed(b"$5\r\nab")
        plain, tls = Waiting(ours, True, decoder), Waiting(ours, False, decoder)
        holding = Waiting(ours, True, partway)
        self.assertFalse(plain.pushMayWait())
        theirs.sendall(b":1\r\n*2\r\n$3\r\nm:t\r\n$2\r\n10\r\n")
        self.assertFalse(plain.pushMayWait())
        self.assertTrue(tls.pushMayWait())
        self.assertTrue(holding.pushMayWait())
        theirs.sendall(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n")
        self.assertTrue(plain.pushMayWait())
        ours.recv(1 << 16)
        self.assertFalse(plain.pushMayWait())
        # Nothing waits, but the decoder holds the head of what was cut off (a push's,
        # perhaps).
        self.assertTrue(holding.pushMayWait())
        theirs.sendall(b"x" * PEEK)
        self.assertTrue(plain.pushMayWait())
        while True:
            try:
                ours.recv(1 << 16)
            except BlockingIOError:
                break
        theirs.close()
        self.assertTrue(plain.pushMayWait())
        self.assertTrue(Waiting(None, True, decoder).pushMayWait())

    @defer.inlineCallbacks
    def test_cacheOff(self):
        """
        cache=False: every request reads.
        """
        a = self.makeSite(cache=False)
        client = Client(a.base)
        yield self.trips(a, client, b"set?key=k&value=1")
        state, trips = yield self.trips(a, client, b"get")
        self.assertEqual((state["values"], trips), ({"k": 1}, 1))
        self.assertEqual(a._flow.cachedReads, 0)

    @defer.inlineCallbacks
    def test_tableCannotBeWatched(self):
        """
        A Redis user that may not run INFO (an ACL, as managed services set): the tracking
        table cannot be watched, so no copy is used (every request reads), and the log says
        why.
        """
        from twisted.logger import globalLogPublisher

        self.redis.command(
            b"ACL", b"SETUSER", b"noinfo", b"on", b">secret", b"~*", b"+@all", b"-info"
        )
        self.addCleanup(self.redis.command, b"ACL", b"DELUSER", b"noinfo")
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        url = self.redis.url.replace("redis://", "redis://noinfo:secret@")
        a = self.serve(store_app.makeSite(RedisStore(url)))
        client = Client(a.base)
        yield self.trips(a, client, b"set?key=k&value=1")
        state, trips = yield self.trips(a, client, b"get")
        self.assertEqual((state["values"], trips), ({"k": 1}, 1))
        self.assertTrue(
            any("does not show its tracking table" in e.get("log_format", "") for e in logged)
        )
        self.assertFalse(any("secret" in repr(e) for e in logged))

    def test_badMaxAge(self):
        for bad in (0, -1, "1", True, float("nan")):
            self.assertRaises(ValueError, RedisStore, self.redis.url, cacheMaxAge=bad)


class IdleTimeoutTests(CacheTestCase):
    @defer.inlineCallbacks
    def test_cachedReadsKeepTheSessionAlive(self):
        """
        A session used only by cached reads lives on in Redis: its idle timeout is restarted
        off the request path, once a tenth of it has run, and not at every request.
        """
        a = self.makeSite(timeout=1.0)
        client = Client(a.base)
        state, _ = yield self.trips(a, client, b"set?key=k&value=1")
        uid = state["session"]
        writes = self.redis.command(b"INFO", b"commandstats")
        for _ in range(12):
            yield sleep(0.25)
            state, trips = yield self.trips(a, client, b"get")
            self.assertEqual((state["session"], state["values"]), (uid, {"k": 1}))
        self.assertTrue(self.redis.hgetall(sessionKey(uid)))
        stats = self.redis.command(b"INFO", b"commandstats")
        self.assertNotEqual(stats, writes)
        # At most one restart per tenth of the timeout (0.1 s): well under one per request
        # would need more requests; here each request is 0.25 s apart, so each may restart
        # it, and the key must never have run out.
        pttl = int(self.redis.command(b"PTTL", sessionKey(uid)).strip(b":\r\n"))
        self.assertGreater(pttl, 0)

    @defer.inlineCallbacks
    def test_refreshAtMostOncePerTenth(self):
        """
        Many cached reads in a short time: at most one restart of the timeout is written.
        """
        a = self.makeSite(timeout=60.0)
        client = Client(a.base)
        yield self.trips(a, client, b"set?key=k&value=1")
        before = a.store.roundTrips
        for _ in range(10):
            yield self.get(client, a, b"get")
        yield self.settle()
        self.assertEqual(a.store.roundTrips - before, 0)


class UserLogoutTests(CacheTestCase):
    @defer.inlineCallbacks
    def test_logoutUserEndsCopiesHere(self):
        """
        logoutUser on this site deletes the user's other sessions, which this site has
        cached too: Redis does not report the site's own deletions, and still neither
        session is served again.
        """
        site = self.serve(Site(AccountPages(), store=RedisStore(self.redis.url)))
        first, second = Client(site.base), Client(site.base)
        yield self.get(first, site, b"login?user=ann")
        yield self.get(second, site, b"login?user=ann")
        code, who = yield self.get(second, site, b"whoami")
        self.assertEqual(who["user"], "ann")
        code, _ = yield self.get(first, site, b"others")
        self.assertEqual(code, 200)
        code, who = yield self.get(second, site, b"whoami")
        self.assertIsNone(who["user"])


class ClusterAndSentinelNote(CacheTestCase):
    def test_trackingIsPerConnection(self):
        """
        The cluster client gives each node's connection the store's one tracker; the
        Sentinel client gives it to its data connection (both tested with the cache on, the
        default, in their own test modules).
        """
        store = RedisStore("redis://127.0.0.1:1,127.0.0.1:2", cluster=True)
        store.bind(reactor)
        self.addCleanup(store.close)
        self.assertIs(store._client._node(("127.0.0.1", 1))._tracker, store._tracker)
        self.assertIsNotNone(store._tracker)


del resource, json
