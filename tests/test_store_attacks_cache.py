"""
Attacks on the store's client-side caching (README.md, "Client-side caching"), against a real
C{redis-server}: each test in a class named C{...DefectTests} reproduces a defect found by
attacking the cache as a hostile client and a busy site would (it failed on the code before
its fix); tests in C{...HoldsTests} are attacks the code withstood, kept as evidence.

The promise attacked: a process uses its copy of a session without a round trip only while
Redis has not invalidated it, never after the invalidation's push was processed; a session
used only by cached reads stays alive in Redis (within a tenth of its timeout) and an unused
one expires.
"""

from __future__ import annotations

import json

from twisted.internet import defer, reactor
from twisted.internet.protocol import ClientCreator, Protocol
from twisted.web import resource
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from tests._proxy import DOWNSTREAM, FaultProxy, _Item
from tests._redis import decoded, sessionKey
from tests.apps import store_app
from tests.test_security import _cookie
from tests.test_store import StoreTestCase, sleep
from tests.test_store_attacks import _withCookie, rawGet
from tests.test_web import Client
from txsession.redis import RedisStore
from txsession.store import StoreError

# A Lua script filling Redis with ARGV[1] keys that expire in an hour: what a busy site's
# Redis holds (every session key has an expiry). Redis's active expiry then scans about 20
# keys per cycle, ten cycles a second, so a key whose expiry has passed stays until someone
# touches it, with no invalidation pushed, for minutes.
_FILL = b"for i = 1, tonumber(ARGV[1]) do redis.call('SET', 'filler:' .. i, 'x', 'EX', 3600) end"


class CacheAttackTestCase(StoreTestCase):
    @defer.inlineCallbacks
    def trips(self, site, client, path):
        """
        Request C{path}: its status, its JSON state, and how many round trips to Redis it cost.
        """
        before = site.store.roundTrips
        code, state = yield self.get(client, site, path)
        return code, state, site.store.roundTrips - before

    @defer.inlineCallbacks
    def settle(self):
        # Lets every push already sent by Redis reach the sites.
        yield sleep(0.05)

    @defer.inlineCallbacks
    def copyBehindAProxy(self, port=None, url="redis://127.0.0.1", **storeOptions):
        """
        A site that reaches Redis (C{self.redis}, or its port C{port} as C{url}) through a
        fault proxy, and holds a copy of a session (k=1), which it stored and has used since
        without reading; another site on C{self.redis}, reached directly. Returns the proxy,
        the two sites, the session's client and its id.
        """
        proxy = FaultProxy(port or self.redis.port)
        self.addCleanup(proxy.stop)
        store = RedisStore(f"{url}:{proxy.port}/0", **storeOptions)
        site = self.serve(store_app.makeSite(store))
        other = self.makeSite()
        client = Client(site.base)
        yield self.trips(site, client, b"set?key=k&value=1")
        _, state, trips = yield self.trips(site, client, b"get")
        self.assertEqual((state["values"], trips), ({"k": 1}, 0))
        return proxy, site, other, client, state["session"]

    def fillRedis(self, keys=20000):
        self.redis.command(b"EVAL", _FILL, b"0", b"%d" % keys)


class _Short(resource.Resource):
    """
    C{/short}: sets C{k} and gives this one session a short idle timeout (one second), as an
    app does for a sensitive session (an admin's, say): the write stores it as the session's
    C{m:t}, which every process's scripts then use.
    """

    isLeaf = True

    def render_GET(self, request):
        session = request.getSession()
        session.sessionTimeout = 1.0
        session.sessionNamespaces["k"] = 1
        return json.dumps({"session": session.uid.decode()}).encode()


class StaleCopyDefectTests(CacheAttackTestCase):
    @defer.inlineCallbacks
    def test_readThatFailsToApplyLeavesTheOldCopyStamped(self):
        """
        Promise broken before the fix: a copy is never used after its invalidation push was
        processed.

        Another writer stores a value this process cannot decode (a newer release of the app,
        an admin tool). The push ends the copy's stamp; the next request reads, and Redis's
        reply makes a new stamp (L{_redistracking.Tracker.replied}, as the reply is decoded)
        before the flow applies the fields to the copy (L{StoreFlow._loaded}); applying
        them fails (a 500), and the stamp stays. The request after that is served the old
        copy from the cache, a 200 with a value Redis no longer holds (with C{cache=False}
        every request is a 500, as the stored value says).
        """
        a = self.makeSite()
        client = Client(a.base)
        code, state, _ = yield self.trips(a, client, b"set?key=k&value=1")
        uid = state["session"]
        code, state, trips = yield self.trips(a, client, b"get")
        self.assertEqual((code, trips), (200, 0))
        self.redis.command(b"HSET", sessionKey(uid), b"n:k", b"{not json")
        yield self.settle()
        code, _, trips = yield self.trips(a, client, b"get")
        self.assertEqual((code, trips), (500, 1))
        self.flushLoggedErrors(StoreError)
        code, state, trips = yield self.trips(a, client, b"get")
        self.flushLoggedErrors(StoreError)
        self.assertNotEqual(
            (code, state),
            (200, {"session": uid, "values": {"k": 1}}),
            "served the copy Redis invalidated, from the cache, without reading",
        )

    @defer.inlineCallbacks
    def test_twoCookieReadSplitInTransit(self):
        """
        Promise broken before the fix: a copy is never used after its invalidation push was
        processed.

        Over HTTPS a request's read is one batch of two loads (its insecure and its secure
        cookie). The first reply makes its key's stamp as soon as it is decoded; the copy
        takes the reply's fields only when the whole batch has answered. When the second
        reply arrives in a later read of the socket (a big reply, a slow network; here a
        proxy that cuts Redis's answer at the first reply's end), a request served in
        between finds a fresh stamp, nothing unread on the socket and nothing half-decoded,
        and is given the copy as it was before the invalidation: the old value, although the
        push of the write that changed it was processed before.
        """
        from tests.test_security import _tls, _TrustTestCertificate

        proxy = FaultProxy(self.redis.port)
        self.addCleanup(proxy.stop)
        a = store_app.makeSite(RedisStore(f"redis://127.0.0.1:{proxy.port}/0", timeout=3.0))
        port = reactor.listenSSL(0, a, _tls().server, interface="127.0.0.1")
        self.addCleanup(a.store.close)
        self.addCleanup(self.endSessions, a)
        self.addCleanup(port.stopListening)
        base = b"https://localhost:%d/" % port.getHost().port
        agent = Agent(reactor, contextFactory=_TrustTestCertificate())

        @defer.inlineCallbacks
        def fetch(path, cookie=None):
            headers = Headers({b"cookie": [cookie]} if cookie else {})
            response = yield agent.request(b"GET", base + path, headers)
            body = yield readBody(response)
            return response.code, json.loads(body)

        b = self.makeSite()
        code, state = yield fetch(b"set?key=k&value=1")
        uid = state["session"].encode()
        secure = b"TWISTED_SECURE_SESSION=" + uid
        code, state = yield fetch(b"get", secure)
        self.assertEqual(state["values"], {"k": 1})
        self.assertEqual(a._flow.cachedReads, 1)
        # Another process changes it: Redis pushes the invalidation to this one.
        other = Client(b.base)
        other.jar.set_cookie(_cookie("TWISTED_SESSION", uid.decode()))
        code, _ = yield self.get(other, b, b"set?key=k&value=2")
        self.assertEqual(code, 200)
        yield self.settle()
        # How many bytes Redis's answer to a load of this session takes.
        before = proxy.bytes[DOWNSTREAM]
        yield a.store.load([uid])
        first = proxy.bytes[DOWNSTREAM] - before
        proxy.slicer(first, 0, delay=400, direction=DOWNSTREAM)
        # The session's id under the insecure name (read first), an unknown one under the
        # secure name (read second).
        both = fetch(b"get", b"TWISTED_SESSION=" + uid + b"; TWISTED_SECURE_SESSION=" + b"x" * 40)
        yield sleep(0.2)
        cachedReads = a._flow.cachedReads
        code, state = yield fetch(b"get", secure)
        servedFromCopy = a._flow.cachedReads - cachedReads
        proxy.slicer(None)
        yield both
        self.assertEqual(code, 200)
        self.assertEqual(
            (state["values"], servedFromCopy),
            ({"k": 2}, 0),
            "served the copy whose invalidation push was processed, from the cache",
        )


class IdleTimeoutDefectTests(CacheAttackTestCase):
    @defer.inlineCallbacks
    def test_copyUsedPastTheExpiryItKnowsOf(self):
        """
        Promises broken before the fix: a copy is used only while Redis has not invalidated it (an
        expiry is an invalidation), and what a copy may miss is bounded by the network's delay.

        Redis pushes an expiry's invalidation only when it deletes the key, and on a busy
        Redis (here 20,000 session-like keys with expiries) its active expiry takes minutes
        to reach a given key. A cached read a moment after the write restarts nothing (less
        than a tenth of the timeout has run); the key runs out in Redis, but this process's
        own copy is timed from that later read. A request in between is served the copy
        from the cache although the stamp itself says the key's timeout ended
        (L{RedisStore.cached} only asks whether less than nine tenths are left, and then
        queues a restart that finds the session gone): the session is shown alive, and the
        next request finds it gone. The stamp knows: a copy whose known expiry has passed
        must be read, not served.
        """
        self.fillRedis()
        a = self.makeSite(timeout=4.0)
        client = Client(a.base)
        code, state, _ = yield self.trips(a, client, b"set?key=k&value=1")
        uid = state["session"]
        yield sleep(0.3)
        code, state, trips = yield self.trips(a, client, b"get")
        self.assertEqual((code, state["session"], trips), (200, uid, 0))
        # The key's timeout (4 s from the write) has run; this process's copy was last used
        # 0.3 s after the write.
        # (Nothing may touch the key meanwhile: a touch deletes it, and pushes.)
        yield sleep(3.85)
        cachedReads = a._flow.cachedReads
        code, state, _ = yield self.trips(a, client, b"get")
        servedFromCopy = a._flow.cachedReads - cachedReads
        self.assertEqual(self.redis.command(b"PTTL", sessionKey(uid)), b":-2\r\n")
        code, after, _ = yield self.trips(a, client, b"get")
        self.assertNotEqual(after["session"], uid)
        self.assertEqual(
            (state["session"] == uid, servedFromCopy),
            (False, 0),
            "a session gone from Redis was served from the cache",
        )

    @defer.inlineCallbacks
    def test_cachedReadsKeepAShortTimeoutSessionAlive(self):
        """
        Promise broken before the fix: a session used only by cached reads stays alive in Redis
        (within a tenth of its timeout).

        One session has a one-second idle timeout (the app set it on that session; the
        write stores it as C{m:t}, which every script uses). Another process, whose copies
        have the class's 60 s, serves it from the cache every 0.25 s. Its first cached read
        queues a restart and notes the key as good for 60 s (L{RedisStore.cached}:
        C{stamp.expires = now + timeout}, the local timeout); the script restarts it for 1 s
        (the stored one); no restart is queued again for 6 s, so the key expires while in
        use, and the user is logged out. Without the cache every read restarts the stored
        timeout when a tenth has run, and the session lives.
        """
        a = self.makeSite(timeout=60.0)
        a.resource.putChild(b"short", _Short())
        b = self.makeSite(timeout=60.0)
        client = Client(a.base)
        _, state = yield self.get(client, a, b"short")
        uid = state["session"]
        seen = []
        for _ in range(12):
            code, state, _ = yield self.trips(b, client, b"get")
            seen.append((code, state["session"], state["values"]))
            yield sleep(0.25)
        self.assertEqual(seen, [(200, uid, {"k": 1})] * 12)


class TrackingTableDefectTests(CacheAttackTestCase):
    @defer.inlineCallbacks
    def test_smallTrackingTable(self):
        """
        Promise broken before the fix: a copy is used only while Redis has not invalidated it
        (pushes are never lost while the connection lives).

        Redis's tracking table is full (C{tracking-table-max-keys}, 1,000,000 by default:
        a site with a million live sessions; here 5 keys and 20 sessions). Redis trims it
        when a command arrives, forgetting random keys and pushing their invalidation to
        the connections that read them, except to the connection whose command triggered
        the trim when it asked for C{NOLOOP} (C{trackingInvalidateKey} skips the current
        client): the site's own commands make Redis forget the site's keys without a word.
        Another process's later write to such a key pushes nothing, and the site serves its
        old copy from the cache until C{cacheMaxAge}.
        """
        limit = decoded(self.redis.command(b"CONFIG", b"GET", b"tracking-table-max-keys"))[1]
        self.redis.command(b"CONFIG", b"SET", b"tracking-table-max-keys", b"5")
        self.addCleanup(self.redis.command, b"CONFIG", b"SET", b"tracking-table-max-keys", limit)
        a, b = self.makeSite(), self.makeSite()
        clients = [Client(a.base) for _ in range(20)]
        for client in clients:
            yield self.trips(a, client, b"set?key=k&value=1")
        for client in clients:
            yield self.trips(a, client, b"get")
        # Redis trims the table on its cron (ten times a second).
        yield sleep(0.3)
        for client in clients:
            code, _ = yield self.get(client, b, b"set?key=k&value=2")
            self.assertEqual(code, 200)
        yield self.settle()
        for client in clients:
            code, state, _ = yield self.trips(a, client, b"get")
            self.assertEqual(
                (code, state["values"]), (200, {"k": 2}), "served a copy changed elsewhere"
            )


class CacheHoldsTests(CacheAttackTestCase):
    @defer.inlineCallbacks
    def test_pushesAmidBigReplies(self):
        """
        Pushes that Redis sends between the parts of big replies (a 5,000-key session read
        three times while another process changes five cached sessions) are each decoded
        as pushes: the changed sessions are read again, the big one is whole.
        """
        a, b = self.makeSite(), self.makeSite()
        big = Client(a.base)
        yield self.trips(a, big, b"many?n=5000")
        small = [Client(a.base) for _ in range(5)]
        for client in small:
            yield self.trips(a, client, b"set?key=k&value=1")
        other = self.makeSite()
        # The big session, changed elsewhere, is read again by the next request.
        yield self.get(big, other, b"set?key=x&value=0")
        yield self.settle()
        reads = [self.get(big, a, b"get") for _ in range(3)]
        writes = [self.get(client, b, b"set?key=k&value=2") for client in small]
        for code, state in (yield defer.gatherResults(reads)):
            self.assertEqual((code, len(state["values"])), (200, 5001))
        for code, _ in (yield defer.gatherResults(writes)):
            self.assertEqual(code, 200)
        yield self.settle()
        for client in small:
            code, state, _ = yield self.trips(a, client, b"get")
            self.assertEqual((code, state["values"]), (200, {"k": 2}))

    @defer.inlineCallbacks
    def test_logoutElsewhereUnderPushLatency(self):
        """
        Another process logs the session out while this one's pushes are 150 ms late: once
        the push has had time to arrive, no request is served the copy.
        """
        proxy, a, b, client, uid = yield self.copyBehindAProxy()
        proxy.latency(150, direction=DOWNSTREAM)
        code, _ = yield self.get(client, b, b"logout")
        self.assertEqual(code, 200)
        yield sleep(0.3)
        code, state, _ = yield self.trips(a, client, b"get")
        self.assertEqual(code, 200)
        self.assertNotEqual(state["session"], uid)


class _Collect(Protocol):
    received = b""

    def dataReceived(self, data):
        self.received += data


class PushReadWithAReplyDefectTests(CacheAttackTestCase):
    """
    README: "A logout on process A is therefore seen by process B at the latest when B
    reads A's push". B's client pipelines a write and a read of its session; the write's
    reply is held on the way back while A logs the session out, so B reads the reply and
    A's push together. The reply answers the write, which lets the read behind it run at
    once: it was served the copy, the push read but not handed out yet. No copy is used now
    while a push read with the replies waits to be handed out: on a plain connection
    (decoded in the same piece), over TLS (where each record reached the decoder on its own,
    the push's still in the TLS layer), or cut after its head.
    """

    @defer.inlineCallbacks
    def pipelinedOverALogout(self, proxy, b, a, uid, deliver=None):
        """
        Pipeline a write and a read of C{uid} to C{b}, the write's reply held back while
        C{a} logs C{uid} out; then deliver what was held (C{deliver(proxy)}, else all at
        once). Returns the JSON bodies of the two answers.
        """
        proxy.stall(DOWNSTREAM)
        port = int(b.base.rsplit(b":", 1)[1].strip(b"/"))
        conn = yield ClientCreator(reactor, _Collect).connectTCP("127.0.0.1", port)
        self.addCleanup(conn.transport.loseConnection)
        conn.transport.write(rawGet(b"set?key=k&value=2", uid) + rawGet(b"get", uid))
        yield sleep(0.2)
        # The write has landed; its reply waits in the proxy. A's logout pushes an
        # invalidation to B, behind it.
        self.assertEqual(self.redis.hgetall(sessionKey(uid.encode())).get(b"n:k"), b"2")
        code, _ = yield self.get(_withCookie(a, uid), a, b"logout")
        self.assertEqual(code, 200)
        yield sleep(0.1)
        (deliver or (lambda proxy: proxy.release(DOWNSTREAM)))(proxy)
        yield sleep(0.3)
        bodies = [
            json.loads(part.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1", 1)[0])
            for part in conn.received.split(b"HTTP/1.1 ")[1:]
        ]
        self.assertEqual(len(bodies), 2, conn.received)
        self.assertEqual(bodies[0]["values"], {"k": 2})
        self.assertEqual(bodies[1]["values"], {}, "the read was served the logged-out copy")
        self.assertNotEqual(bodies[1]["session"], uid)

    @defer.inlineCallbacks
    def test_pushReadWithTheReplyThatLetsAPipelinedRequestRun(self):
        proxy, b, a, _, uid = yield self.copyBehindAProxy()
        yield self.pipelinedOverALogout(proxy, b, a, uid)

    @defer.inlineCallbacks
    def test_pushCutAfterItsHead(self):
        """
        The reply and the push's head (up to "invalidate") arrive in one read, the key it
        names 50 ms later, as a TCP segment boundary may cut them.
        """
        proxy, b, a, _, uid = yield self.copyBehindAProxy()

        def cutThenRelease(proxy):
            (link,) = [link for link in proxy._links if link.pipes[DOWNSTREAM].queue]
            pipe = link.pipes[DOWNSTREAM]
            data = b"".join(item.data for item in pipe.queue)
            self.assertTrue(data.startswith(b":1\r\n>2\r\n"), data)
            cut = data.index(b"invalidate\r\n") + len(b"invalidate\r\n")
            now = reactor.seconds()
            pipe.queue.clear()
            pipe.queue.append(_Item(now, data[:cut]))
            pipe.queue.append(_Item(now + 0.05, data[cut:]))
            pipe.lastDue = now + 0.05
            proxy.release(DOWNSTREAM)

        yield self.pipelinedOverALogout(proxy, b, a, uid, cutThenRelease)

    @defer.inlineCallbacks
    def test_overTLS(self):
        from twisted.internet import ssl

        from tests.test_store_tls import servers

        tls = servers()
        self.redis = tls.plain[0]
        options = ssl.optionsForClientTLS("localhost", trustRoot=tls.ca.trustRoot())
        proxy, b, a, _, uid = yield self.copyBehindAProxy(
            tls.plain[1], "rediss://localhost", tls=options
        )
        yield self.pipelinedOverALogout(proxy, b, a, uid)
