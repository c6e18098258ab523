"""
Attacks on the store's consistency model (README.md, "The consistency model") and on the
rules the project keeps (no raw session id in a log line), against a real C{redis-server}:
each test in a class named C{...DefectTests} reproduces a defect found by attacking the store
as a hostile client and a busy site would, and failed on the code before its fix. Tests in
C{...HoldsTests} are attacks that the code withstood, kept as evidence.
"""

from __future__ import annotations

import json

from twisted.internet import defer, reactor
from twisted.logger import formatEvent
from twisted.web import resource, server

import txsession
from tests._proxy import DOWNSTREAM, UPSTREAM, FaultProxy
from tests.apps import store_app
from tests.test_security import _cookie
from tests.test_store import sleep
from tests.test_store_consistency import ConsistencyTestCase
from tests.test_web import Client
from txsession.redis import RedisStore
from txsession.store import SessionEnded, StoreError, StoreUnavailable
from txsession.web import logout


def _withCookie(site, uid):
    client = Client(site.base)
    client.jar.set_cookie(_cookie("TWISTED_SESSION", uid))
    return client


class _Pages(resource.Resource):
    """
    Pages for the attacks:
    - C{/chunkfail?key=K}: sets a key, streams one chunk, then raises (a streaming page
      that fails after its first write);
    - C{/logoutfail}: gets (or makes) its session, logs it out, then raises;
    - C{/late}: finishes at once, and calls getSession() a moment after it finished.
    """

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.lateDone = defer.Deferred()

    def render_GET(self, request):
        if request.path == b"/chunkfail":
            session = request.getSession()
            session.sessionNamespaces[request.args[b"key"][0].decode()] = "streamed"
            request.write(b"{")
            raise RuntimeError("the streaming page failed after its first chunk")
        if request.path == b"/logoutfail":
            request.getSession().expire()
            raise RuntimeError("the page failed after a logout")
        if request.path == b"/asyncget":
            # Some asynchronous work (an auth or DB lookup) before the page asks for its
            # session.
            def later():
                session = request.getSession()
                request.write(
                    json.dumps(
                        {"session": session.uid.decode(), "values": dict(session.sessionNamespaces)}
                    ).encode()
                )
                request.finish()

            reactor.callLater(0.2, later)
            return server.NOT_DONE_YET
        if request.path == b"/late":

            def late():
                try:
                    request.getSession()
                finally:
                    self.lateDone.callback(None)

            reactor.callLater(0.05, late)
            return b"done"
        return b"?"


def _pagesSite(store, **options):
    site = store_app.makeSite(store, **options)
    pages = _Pages()
    for name in (b"chunkfail", b"logoutfail", b"late", b"asyncget"):
        site.resource.putChild(name, pages)
    site.pages = pages
    return site


class AttackTestCase(ConsistencyTestCase):
    def loggedText(self):
        texts = []
        for event in self.logged:
            texts.append(formatEvent(event))
            failure = event.get("log_failure")
            if failure is not None:
                texts.append(failure.getTraceback())
                texts.append(repr(failure.value))
        return "\n".join(texts)

    @defer.inlineCallbacks
    def proxied(self, timeout=0.3, **siteOptions):
        """
        A site whose store reaches Redis through a fault-injecting proxy, its connection to
        Redis made already (the scripts loaded).
        """
        proxy = FaultProxy(self.redis.port)
        self.addCleanup(proxy.stop)
        store = RedisStore(f"redis://127.0.0.1:{proxy.port}/0", timeout=timeout)
        site = self.serve(store_app.makeSite(store, **siteOptions))
        yield store.load([b"warm-up"])
        return site, proxy


class LogoutDefectTests(AttackTestCase):
    @defer.inlineCallbacks
    def test_logoutSeenByAnotherRequestGives200ForAnUnwrittenWrite(self):
        """
        README: "A request that read the session before the logout and writes after it
        writes nothing and gets a 409, never a 200."

        R1 on site B reads the session and changes a key (its write comes later). The
        session is logged out on site A. Before R1 writes, an unrelated request R2 on B
        carrying the same cookie finds the session gone and drops B's copy. R1 then ends
        with a 200, though nothing of it is in Redis: its flush skips a session that is no
        longer live, and only waits (and answers 200) as if it were a logout of its own.
        """
        a, b = self.makeSite(), self.makeSite()
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")
        uid = state["session"]
        slow = self.get(client, b, b"set?key=late&value=2&delay=0.3")
        yield sleep(0.05)
        code, _ = yield self.get(client, a, b"logout")
        self.assertEqual(code, 200)
        # Another request on B with the same cookie sees that the session is gone.
        _, other = yield self.get(_withCookie(b, uid), b, b"get")
        self.assertNotEqual(other["session"], uid)
        code, _ = yield slow
        self.assertEqual(self.redis.keys(), [])
        self.assertEqual(code, 409, "a 200 for a write that is not in Redis")
        self.flushLoggedErrors(SessionEnded)

    @defer.inlineCallbacks
    def test_renameSeenByAnotherRequestGives200ForAnUnwrittenWrite(self):
        """
        README: "A request that read the session under the old id and writes after the
        rename gets a 409 (its write is refused)."

        As above with a rename on site A: R2 on site B finds the old id's tombstone and sets
        B's copy aside; R1's change is then never sent, and R1 answers 200.
        """
        a, b = self.makeSite(), self.makeSite()
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")
        old = state["session"]
        slow = self.get(client, b, b"set?key=late&value=2&delay=0.3")
        yield sleep(0.05)
        _, renewed = yield self.get(client, a, b"renew")
        new = renewed["session"]
        yield self.get(_withCookie(b, old), b, b"get")
        code, _ = yield slow
        self.assertEqual(self.storedValues(new), {"k": 1})
        self.assertEqual(code, 409, "a 200 for a write that is not in Redis")
        self.flushLoggedErrors(SessionEnded)

    @defer.inlineCallbacks
    def test_logoutInTheSameProcessGives200ForAnUnwrittenWrite(self):
        """
        The same promise within one process: R1 reads the session and changes a key; R2 on
        the same site logs the session out before R1 writes. R1 answers 200 with nothing of
        it in Redis (its flush waits for the logout's deletion, as if it were the logout).
        """
        a = self.makeSite()
        client = Client(a.base)
        yield self.get(client, a, b"set?key=k&value=1")
        slow = self.get(client, a, b"set?key=late&value=2&delay=0.3")
        yield sleep(0.05)
        code, _ = yield self.get(client, a, b"logout")
        self.assertEqual(code, 200)
        code, _ = yield slow
        self.assertEqual(self.redis.keys(), [])
        self.assertEqual(code, 409, "a 200 for a write that is not in Redis")
        self.flushLoggedErrors(SessionEnded)


@defer.inlineCallbacks
def rawExchange(port, requests, wait=1.5):
    """
    Send C{requests} (raw bytes) one after the other on one keep-alive connection, each
    once the answer to the one before has started; everything received within C{wait}
    seconds of the last.
    """
    from twisted.internet.protocol import ClientCreator, Protocol

    class Collect(Protocol):
        def connectionMade(self):
            self.received = b""
            self.arrived = None

        def dataReceived(self, data):
            self.received += data
            if self.arrived is not None:
                arrived, self.arrived = self.arrived, None
                arrived.callback(None)

    proto = yield ClientCreator(reactor, Collect).connectTCP("127.0.0.1", port)
    try:
        for raw in requests:
            proto.arrived = defer.Deferred()
            proto.transport.write(raw)
            try:
                yield proto.arrived.addTimeout(wait, reactor)
            except defer.TimeoutError:
                break
            yield sleep(0.2)
        yield sleep(wait if len(requests) == 1 else 0.2)
    finally:
        proto.transport.abortConnection()
        yield sleep(0.05)
    return proto.received


def rawGet(path, uid):
    return b"GET /%s HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: TWISTED_SESSION=%s\r\n\r\n" % (
        path,
        uid.encode(),
    )


class HangDefectTests(AttackTestCase):
    @defer.inlineCallbacks
    def test_streamingPageFailingAfterItsFirstChunkNeverFinishes(self):
        """
        DESIGN/README: a failing request is answered (a 500), and no response hangs.

        A streaming page changes a key, writes its first chunk (which starts the session
        write and holds the chunk until Redis answers) and then raises. processingFailed
        writes Twisted's error page behind the held chunk (its Content-Length counts the
        error page only: one stray byte on the wire) and sets _txsFailed; when the write
        answers, _txsFlushed calls self.finish(), which _txsFailed swallows. The request
        never finishes: on a keep-alive connection the next request is never answered, and
        the session's copy stays pinned by the unreleased change record.
        """
        site = self.serve(_pagesSite(RedisStore(self.redis.url)))
        client = Client(site.base)
        _, state = yield self.get(client, site, b"set?key=k&value=1")
        uid = state["session"]
        port = int(site.base.rsplit(b":", 1)[1].strip(b"/"))
        received = yield rawExchange(port, [rawGet(b"chunkfail?key=k", uid), rawGet(b"get", uid)])
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(
            received.count(b"HTTP/1.1 "), 2, "the next request on the connection got no answer"
        )
        self.assertEqual([c.users for c in site._flow.copies.values()], [[]])
        # What the page wrote while rendering was held until render() returned, so it
        # fails whole: a clean 500, nothing of it in Redis (README, the 500 row).
        self.assertTrue(received.startswith(b"HTTP/1.1 500"), received[:80])
        self.assertEqual(self.storedValues(uid), {"k": 1})


class SecretDefectTests(AttackTestCase):
    @defer.inlineCallbacks
    def test_failureAfterALogoutLogsTheRawSessionId(self):
        """
        DESIGN rule 9: no raw session id in a log line or an exception message.

        A request that makes a session, logs it out and then fails: flow.fail reverts its
        change record, sees a new session never stored (change.made, storedAs None) and calls
        dropFound, which runs session.expire() a second time. Twisted's expire raises
        KeyError(uid) when the entry is gone, and dropFound logs it, traceback and all:
        "KeyError: b'<the session id>'".
        """
        site = self.serve(_pagesSite(RedisStore(self.redis.url)))
        made = []
        makeSession = site.makeSession
        site.makeSession = lambda: made.append(makeSession()) or made[-1]
        code, _ = yield self.get(Client(site.base), site, b"logoutfail")
        self.assertEqual(code, 500)
        uid = made[0].uid.decode()
        self.flushLoggedErrors(RuntimeError)
        leaked = self.flushLoggedErrors(KeyError)
        text = self.loggedText() + "".join(f.getTraceback() for f in leaked)
        self.assertNotIn(uid, text, "the raw session id is in the log")


class StuckDefectTests(AttackTestCase):
    @defer.inlineCallbacks
    def test_createThatTimedOutButWasAppliedBlocksEveryLaterWrite(self):
        """
        README: a 503 after a timeout means "a write already sent may have been applied";
        the site recovers when Redis answers again.

        A new session (never stored, so its requests never read it) gets its first data;
        the write that creates it reaches Redis, but the reply is lost (a stalled link) and
        the request times out: a 503, fine. The copy stays "not stored" (storedAs None) while
        Redis holds the session. From then on every request that writes the session sends
        another 'new' write, which the script refuses ("session key exists already"): a 500
        on every write, for as long as the key lives. This process never reads the session
        (read() trusts an unstored copy), so it never learns that it is stored.
        """
        site, proxy = yield self.proxied()
        client = Client(site.base)
        _, state = yield self.get(client, site, b"get")
        uid = state["session"]
        self.assertEqual(self.redis.keys(), [])
        proxy.stall(DOWNSTREAM)
        code, _ = yield self.get(client, site, b"set?key=k&value=1")
        self.assertEqual(code, 503)
        self.flushLoggedErrors(StoreUnavailable)
        yield proxy.reset()
        # The create was applied all the same.
        self.assertEqual(self.storedValues(uid), {"k": 1})
        codes = []
        for value in (2, 3):
            code, answer = yield self.get(client, site, b"set?key=k&value=%d" % value)
            codes.append(code)
        self.flushLoggedErrors(StoreError)
        self.assertEqual(codes, [200, 200], "every later write of the session fails")
        self.assertEqual(self.storedValues(uid), {"k": 3})


class RidingDefectTests(AttackTestCase):
    @defer.inlineCallbacks
    def test_changeCarriedByAnotherRequestsWriteThatFails(self):
        """
        README: "Two requests in one process that change the same key: the later write
        wins", and a 200 means the request's change is in Redis, or was overwritten by a
        later write that is.

        R1 sets C{a=6} and answers a moment later. Meanwhile R2 sets C{a=12} and writes it;
        that write carries the key for R1 too (R1's baseline moves to 12, so R1 has nothing
        left to write). R2's write never reaches Redis (the link stalls, R2 times out: a
        503). R1 used to answer 200 as soon as it ended, before R2's write had answered, so
        neither 6 nor 12 was ever stored. (Found by the model test: the session, new, was
        never stored at all.)
        """
        site, proxy = yield self.proxied()
        client = Client(site.base)
        _, state = yield self.get(client, site, b"set?key=a&value=1")
        uid = state["session"]
        session = site.sessions[uid.encode()]
        first = self.get(client, site, b"set?key=a&value=6&delay=0.25")
        for _ in range(1000):
            if session.sessionNamespaces.get("a") == 6:
                break
            yield sleep(0.005)
        second = self.get(client, site, b"set?key=a&value=12&delay=0.05")
        for _ in range(1000):
            if session.sessionNamespaces.get("a") == 12:
                break
            yield sleep(0.005)
        self.assertEqual(
            session.sessionNamespaces.get("a"), 12, "the second request did not render"
        )
        # R2 has read and rendered; its write, due in 0.05 s, never gets through.
        proxy.stall(DOWNSTREAM)
        proxy.stall(UPSTREAM)
        codes = yield defer.gatherResults([first, second])
        yield proxy.reset()
        self.flushLoggedErrors(StoreUnavailable)
        stored = self.storedValues(uid)
        self.assertEqual(codes[1][0], 503)
        if codes[0][0] == 200:
            self.assertIn(stored.get("a"), (6, 12), "a 200 for a change that is not in Redis")
        self.assertEqual((codes[0][0], stored), (503, {"a": 1}))


class SaveSessionDefectTests(AttackTestCase):
    @defer.inlineCallbacks
    def test_saveSessionWritesARunningRequestsChangeThatThenFails(self):
        """
        README: a 500 leaves "nothing of this request's" in Redis; "What a failure undoes...
        nothing is written."

        A timer changes its own key and calls site.saveSession(session) while a request R1
        on the same session has changed another key and not written it yet. saveSession's
        change record starts from copy.fields (what the store held), so it takes R1's
        unwritten change as its own and writes it; its _claim moves R1's baseline, so when R1
        then fails, its revert sees nothing of its own to undo. R1 answers 500 and its value
        is in Redis (and in every process that reads the session).
        """
        a = self.makeSite()
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")
        uid = state["session"]
        failing = self.get(client, a, b'fail?key=r1&value="from-a-failed-request"&delay=0.3')
        yield sleep(0.05)
        session = a.sessions[uid.encode()]
        session.sessionNamespaces["timer"] = 1
        yield a.saveSession(session)
        code, _ = yield failing
        self.assertEqual(code, 500)
        self.flushLoggedErrors(ZeroDivisionError)
        self.assertEqual(
            self.storedValues(uid), {"k": 1, "timer": 1}, "a failed request's change is stored"
        )


class TimeoutDefectTests(AttackTestCase):
    @defer.inlineCallbacks
    def test_hugeSessionTimeoutLeavesAKeyWithoutTTL(self):
        """
        README: each write "is one Lua script that checks everything before its first write
        and cannot fail after it"; "Redis deletes the key itself when it runs out"; a 500
        means nothing of the request is in Redis.

        A session class with sessionTimeout = sys.maxsize (a common "never" idiom that
        Twisted's callLater accepts): _milliseconds() sends 9223372036854775807000, the
        script's HSETs succeed and its final PEXPIRE fails ("value is not an integer or out
        of range"). The request gets a 500, yet its data is in Redis under a key with no TTL
        at all (PTTL -1): it never expires, and every later read of it fails too (the load
        script's PEXPIRE reads the same m:t).
        """
        import sys

        site = self.serve(store_app.makeSite(RedisStore(self.redis.url), sys.maxsize))
        client = Client(site.base)
        code, _ = yield self.get(client, site, b"set?key=k&value=1")
        self.flushLoggedErrors(StoreError)
        keys = self.redis.keys()
        ttls = [self.redis.command(b"PTTL", key) for key in keys]
        self.assertNotIn(b":-1\r\n", ttls, "a session key without a TTL")
        if code != 200:
            self.assertEqual(keys, [], f"a {code} with the request's data in Redis")


class LeakHoldsTests(AttackTestCase):
    """
    HOLDS (evidence, not a defect on the current code): found on b0264c1, fixed by c52e709
    while this review ran.
    """

    @defer.inlineCallbacks
    def test_getSessionAfterFinishDoesNotPinTheCopy(self):
        """
        README: "A copy that a running request uses is not evicted by maxSessions and does
        not time out" -- a copy no request uses must still go.

        A page that finishes, then (in a callback a moment later, e.g. audit logging) calls
        request.getSession() for the first time. attach() hangs the change record's release
        on request.notifyFinish(), which Twisted never fires once the request has finished.
        The record stays in copy.users forever: the copy counts as in use, so neither its idle
        timeout (dropLocally re-files it) nor maxSessions (the cap "gives way") ever ends it.
        A flood of such requests grows the process without bound, past maxSessions.
        """
        site = self.serve(_pagesSite(RedisStore(self.redis.url), timeout=0.2, maxSessions=3))
        for _ in range(8):
            site.resource.children[b"late"].lateDone = defer.Deferred()
            code, _ = yield self.get(Client(site.base), site, b"late")
            self.assertEqual(code, 200)
            yield site.resource.children[b"late"].lateDone
        # Well past the sessions' idle timeout.
        yield sleep(0.6)
        pinned = [copy for copy in site._flow.copies.values() if copy.users]
        self.assertEqual(len(pinned), 0, f"{len(pinned)} copies held by finished requests")
        self.assertLessEqual(len(site.sessions), 3)


class EvictionDefectTests(AttackTestCase):
    @defer.inlineCallbacks
    def test_floodEvictsASessionReadForARunningRequest(self):
        """
        README: "A copy that a running request uses is not evicted by maxSessions"; a request
        uses the session read from Redis for it.

        A request's session is read before it renders, but it joins copy.users only when the
        page calls getSession(). A page that does asynchronous work first (an auth or a
        database lookup) leaves that window open: a flood of cookieless requests (each a new
        session, under maxSessions) evicts the copy, and the page's getSession() then finds
        its confirmed copy dead and makes a NEW, empty session, whose cookie replaces the
        user's: the user's session is lost to them, by anyone able to send requests.
        """
        site = self.serve(_pagesSite(RedisStore(self.redis.url), maxSessions=2))
        client = Client(site.base)
        _, state = yield self.get(client, site, b"set?key=k&value=1")
        uid = state["session"]
        pending = self.get(client, site, b"asyncget")
        yield sleep(0.05)
        for _ in range(4):
            code, _ = yield self.get(Client(site.base), site, b"get")
            self.assertEqual(code, 200)
        code, seen = yield pending
        self.assertEqual(code, 200)
        self.assertEqual(seen, {"session": uid, "values": {"k": 1}}, "the user's session was lost")


# The second round of attacks: each class reproduced a defect on the code before its fix.


class _Kick(resource.Resource):
    """
    C{/kick?uid=U}: logs out another session (an admin's "log this user out").
    """

    isLeaf = True

    def render_GET(self, request):
        request.site.sessions[request.args[b"uid"][0]].expire()
        return b'"kicked"'


class _StreamThenLogout(resource.Resource):
    """
    A new session gets a value, the page streams its first chunk (the session's create goes
    out), then logs the session out (its deletion goes out right behind the create).
    """

    isLeaf = True

    def render_GET(self, request):
        session = request.getSession()
        session.sessionNamespaces["k"] = 1
        request.write(b"{")
        session.expire()
        request.write(b"}")
        request.finish()
        return server.NOT_DONE_YET


class _AsyncLogout(resource.Resource):
    """
    Changes its session, then logs it out from a callback (after asynchronous work): with
    C{?helper=1} through L{txsession.web.logout}, else with C{expire()}.
    """

    isLeaf = True

    def render_GET(self, request):
        session = request.getSession()
        session.sessionNamespaces["loggedOutAt"] = 123

        def later():
            if request.args.get(b"helper"):
                logout(request)
            else:
                session.expire()
            request.write(b'"bye"')
            request.finish()

        reactor.callLater(0.05, later)
        return server.NOT_DONE_YET


def _rawHangUp(port, uid):
    from twisted.internet.protocol import ClientCreator, Protocol

    raw = b"GET /get HTTP/1.1\r\nHost: x\r\nCookie: TWISTED_SESSION=%s\r\n\r\n" % uid.encode()

    def sent(proto):
        proto.transport.write(raw)
        proto.transport.loseConnection()

    return ClientCreator(reactor, Protocol).connectTCP("127.0.0.1", port).addCallback(sent)


class HangUpDefectTests(AttackTestCase):
    @defer.inlineCallbacks
    def test_hangUpDuringTheReadPinsTheCopy(self):
        """
        README: a copy is kept only while a running request uses it, and maxSessions caps
        the copies. A client that sends its cookie and hangs up at once, before the
        session read answers, left the copy pinned for good (its release went to a site the
        request did not have yet, and the read's answer pinned it for a request that was
        over), so maxSessions stopped capping the process.
        """
        site = self.serve(
            store_app.makeSite(RedisStore(self.redis.url), timeout=0.3, maxSessions=5)
        )
        port = int(site.base.rsplit(b":", 1)[1].strip(b"/"))
        uids = []
        for _ in range(12):
            _, state = yield self.get(Client(site.base), site, b"set?key=k&value=1")
            uids.append(state["session"])
        for uid in uids:
            yield _rawHangUp(port, uid)
        yield sleep(0.8)
        for _ in range(6):
            yield self.get(Client(site.base), site, b"get")
        self.assertEqual(self.flushLoggedErrors(AttributeError), [])
        self.assertEqual([c for c in site._flow.copies.values() if c.readers], [])
        self.assertLessEqual(len(site.sessions), 5)


class UncertainLogoutDefectTests(AttackTestCase):
    @defer.inlineCallbacks
    def test_logoutAfterACreateThatTimedOutButApplied(self):
        """
        README: after a logout no process serves the session. A new session's first write
        reached Redis but its answer was lost (a 503); its logout then deleted nothing (the
        copy no longer named the id its create went to), so every process served it.
        """
        a, proxy = yield self.proxied()
        b = self.makeSite()
        # The store's connection is up before the stall.
        yield self.get(Client(a.base), a, b"set?key=x&value=1")
        client = Client(a.base)
        _, state = yield self.get(client, a, b"get")
        uid = state["session"]
        proxy.stall(DOWNSTREAM)
        code, _ = yield self.get(client, a, b"set?key=k&value=1")
        self.assertEqual(code, 503)
        self.flushLoggedErrors(StoreUnavailable)
        yield proxy.reset()
        self.assertEqual(self.storedValues(uid), {"k": 1})
        a.sessions[uid.encode()].expire()
        yield sleep(0.2)
        self.assertEqual(self.storedValues(uid), {})
        _, seen = yield self.get(_withCookie(b, uid), b, b"get")
        self.assertNotEqual(seen["session"], uid)


class _RenewAndSet(resource.Resource):
    """C{/renewset?key=K&value=V}: renews the request's session, then sets a key in it."""

    isLeaf = True

    def render_GET(self, request):
        session = txsession.renewSession(request)
        session.sessionNamespaces[request.args[b"key"][0].decode()] = json.loads(
            request.args[b"value"][0]
        )
        return json.dumps({"session": session.uid.decode()}).encode()


class UncertainRenewDefectTests(AttackTestCase):
    @defer.inlineCallbacks
    def renewLost(self):
        """
        A session made on a proxied site and never stored, then renewed by a request whose
        write (made the session under the new id) reached Redis and whose answer was lost:
        a 503. The site, the client (holding the old cookie) and the old id.
        """
        a, proxy = yield self.proxied()
        a.resource.putChild(b"renewset", _RenewAndSet())
        client = Client(a.base)
        _, state = yield self.get(client, a, b"get")
        old = state["session"]
        self.assertEqual(self.redis.keys(), [])
        proxy.stall(DOWNSTREAM)
        code, _ = yield self.get(client, a, b"renewset?key=k&value=1")
        self.assertEqual(code, 503)
        self.flushLoggedErrors(StoreUnavailable)
        yield proxy.reset()
        # The write was applied, under an id no answer showed.
        self.assertEqual(len(self.redis.keys()), 1)
        self.assertEqual(self.storedValues(old), {})
        self.assertEqual(client.session(), old.encode())
        return a, client, old

    @defer.inlineCallbacks
    def test_logoutAfterARenewThatTimedOutButApplied(self):
        """
        README: a logout deletes the session in Redis. The session went back to its old id
        when the renew failed, and the next read of the old id (which found nothing) forgot
        that a write may have stored it under the new one: the logout deleted nothing, and
        the failed renew's session stayed in Redis until its timeout.
        """
        a, client, old = yield self.renewLost()
        code, _ = yield self.get(client, a, b"logout")
        self.assertEqual(code, 200)
        self.assertEqual(self.redis.keys(), [])

    @defer.inlineCallbacks
    def test_logoutAfterARenewThatTimedOutThenAWrite(self):
        """
        As above, with the session then stored under its old id by a later request (found
        by the model test): the logout deletes both.
        """
        a, client, old = yield self.renewLost()
        code, _ = yield self.get(client, a, b"set?key=j&value=2")
        self.assertEqual(code, 200)
        self.assertEqual(self.storedValues(old), {"j": 2})
        code, _ = yield self.get(client, a, b"logout")
        self.assertEqual(code, 200)
        self.assertEqual(self.redis.keys(), [])


class ScriptOrderDefectTests(AttackTestCase):
    @defer.inlineCallbacks
    def test_logoutBehindACreateAfterAScriptFlush(self):
        """
        README: after a logout no process serves the session. With the server's script
        cache flushed, a create whose script was refused (NOSCRIPT) was sent again after
        the logout pipelined behind it, whose script was cached: the logout ran first, then
        the create, and the session lived on. Scripts are now loaded when a connection is
        made, and a refused script drops the connection (a 503).
        """
        a = store_app.makeSite(RedisStore(self.redis.url))
        a.resource.putChild(b"streamlogout", _StreamThenLogout())
        a = self.serve(a)
        b = self.makeSite()
        other = Client(b.base)
        yield self.get(other, b, b"set?key=x&value=1")
        self.redis.command(b"SCRIPT", b"FLUSH")
        # B's logout brings back the scripts it uses (before, by sending their text), not
        # the one that writes; A then makes its first connection.
        yield self.get(other, b, b"logout")
        self.flushLoggedErrors(StoreUnavailable)
        before = self.redis.keys()
        code, body = yield self.get(Client(a.base), a, b"streamlogout")
        self.flushLoggedErrors(StoreUnavailable, SessionEnded)
        yield sleep(0.2)
        self.assertEqual(self.redis.keys(), before, f"answered {code} {body!r}")


class KickDefectTests(AttackTestCase):
    @defer.inlineCallbacks
    def test_logoutOfAnotherSessionIsWaitedFor(self):
        """
        README: a logout's deletion is done before the response of the request that logged
        out. A page logging out another session answered 200 at once, whatever the
        deletion's outcome: with Redis not answering, the deletion failed, the page said
        200, and the session lived on.
        """
        site, proxy = yield self.proxied()
        site.resource.putChild(b"kick", _Kick())
        victim = Client(site.base)
        _, state = yield self.get(victim, site, b"set?key=role&value=1")
        uid = state["session"]
        proxy.stall(UPSTREAM)
        code, _ = yield self.get(Client(site.base), site, b"kick?uid=" + uid.encode())
        yield proxy.reset()
        self.flushLoggedErrors(StoreUnavailable)
        self.assertEqual(code, 503)

    @defer.inlineCallbacks
    def test_noProcessServesItAfterThe200(self):
        """
        The same with a slow link only (300 ms): after the kick's 200, another process did
        not serve the session.
        """
        site, proxy = yield self.proxied(timeout=2)
        site.resource.putChild(b"kick", _Kick())
        b = self.makeSite()
        _, state = yield self.get(Client(site.base), site, b"set?key=role&value=1")
        uid = state["session"]
        proxy.latency(300, direction=UPSTREAM)
        code, _ = yield self.get(Client(site.base), site, b"kick?uid=" + uid.encode())
        self.assertEqual(code, 200)
        _, seen = yield self.get(_withCookie(b, uid), b, b"get")
        yield proxy.reset()
        self.assertNotEqual(seen["session"], uid)


class AsyncLogoutTests(AttackTestCase):
    @defer.inlineCallbacks
    def logout(self, query):
        site = store_app.makeSite(RedisStore(self.redis.url))
        site.resource.putChild(b"asynclogout", _AsyncLogout())
        site = self.serve(site)
        client = Client(site.base)
        yield self.get(client, site, b"set?key=k&value=1")
        code, _ = yield self.get(client, site, b"asynclogout" + query)
        self.flushLoggedErrors(SessionEnded)
        # A 409 does not wait for the logout's deletion, which another request made.
        for _ in range(200):
            if not any(o.pending for o in site._flow.logouts.values()):
                break
            yield sleep(0.01)
        self.assertEqual(self.redis.keys(), [])
        return code

    @defer.inlineCallbacks
    def test_logoutHelperFromACallback(self):
        """
        A page that changed its session and logs it out after asynchronous work, through
        txsession.web.logout(request): its own logout, a 200.
        """
        self.assertEqual((yield self.logout(b"?helper=1")), 200)

    @defer.inlineCallbacks
    def test_expireFromACallback(self):
        """
        The limit the README states: a bare expire() from a callback is not known to be the
        request's, and a request that changed the session answers 409 (its change is not in
        Redis); the session is logged out all the same.
        """
        self.assertEqual((yield self.logout(b"")), 409)


class RenameChainDefectTests(AttackTestCase):
    @defer.inlineCallbacks
    def test_logoutFollowsEveryRename(self):
        """
        README: a logout that reaches the old id after a rename follows it. It followed at
        most 16: a session renewed 17 times while another process's logout ran survived it.
        """
        a, b = self.makeSite(), self.makeSite()
        client = Client(a.base)
        yield self.get(client, a, b"set?key=k&value=1")
        logout = self.get(client, b, b"logout?delay=1.0")
        yield sleep(0.1)
        for _ in range(20):
            _, state = yield self.get(client, a, b"renew")
        code, _ = yield logout
        self.assertEqual(code, 200)
        _, seen = yield self.get(client, a, b"get")
        self.assertEqual(self.redis.keys(), [])
        self.assertNotEqual(seen["session"], state["session"])


class FailedValueDefectTests(AttackTestCase):
    @defer.inlineCallbacks
    def test_failedValueNotWrittenByAnother(self):
        """
        README: a 500 leaves nothing of its request in Redis. A slow request (sets a) beside
        a failing one (sets b, then fails) on the same session in one process: the slow
        request's 200 wrote the failed request's b, though b was set after the slow
        request's render() had returned (so it was not among its own changes).
        """
        a = self.makeSite()
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=0")
        uid = state["session"]
        slow = self.get(client, a, b"set?key=a&value=1&delay=0.3")
        yield sleep(0.05)
        code, _ = yield self.get(client, a, b"fail?key=b&value=2")
        self.assertEqual(code, 500)
        self.flushLoggedErrors(RuntimeError)
        code, _ = yield slow
        self.assertEqual(code, 200)
        self.assertEqual(self.storedValues(uid), {"k": 0, "a": 1})


class SharedFailureDefectTests(AttackTestCase):
    def test_eachCallerFailsWithAnExceptionOfItsOwn(self):
        """
        While Redis cannot be reached for a reason the client keeps as a StoreUnavailable
        (a Sentinel that names no primary, say), each command fails with an exception of its
        own, saying the same with the same cause: one shared by several requests, raised in
        each one's getSession, carried every earlier request's frames into the next one's
        logged traceback (and kept them alive).
        """
        store = RedisStore("redis://127.0.0.1:1/0")
        store.bind(reactor)
        self.addCleanup(store.close)
        cause = ConnectionRefusedError("refused")
        down = StoreUnavailable("Redis at redis://127.0.0.1:1/0 cannot be reached")
        down.__cause__ = cause
        store._client._down = down
        failures = [store._client._unreachable() for _ in range(3)]
        self.assertEqual(len({id(failure) for failure in failures + [down]}), 4)
        for failure in failures:
            self.assertIs(type(failure), StoreUnavailable)
            self.assertEqual(failure.args, down.args)
            self.assertIs(failure.__cause__, cause)

    @defer.inlineCallbacks
    def test_requestsFailedTogetherLogTracebacksOfTheirOwn(self):
        """
        Requests on a site whose Redis stops answering connections, sent together (they wait
        for the same connection, which cannot be made) and then one after the other: each
        gets a 503, and each 503 is logged with a traceback as long as the first one's.
        """
        site, proxy = yield self.proxied(timeout=2.0)
        client = Client(site.base)
        _, state = yield self.get(client, site, b"set?key=k&value=1", sync=False)
        uid = state["session"]
        yield proxy.down()
        together = yield defer.gatherResults(
            [self.get(_withCookie(site, uid), site, b"get", sync=False) for _ in range(12)]
        )
        after = []
        for _ in range(4):
            after.append((yield self.get(_withCookie(site, uid), site, b"get", sync=False)))
        self.assertEqual([code for code, _ in together + after], [503] * 16)
        lengths = [
            len(event["log_failure"].getTraceback().splitlines())
            for event in self.logged
            if isinstance(getattr(event.get("log_failure"), "value", None), StoreUnavailable)
        ]
        self.assertEqual(len(lengths), 16)
        self.assertLessEqual(max(lengths), min(lengths) + 2, lengths)
        self.flushLoggedErrors(StoreUnavailable)

    @defer.inlineCallbacks
    def test_aStoresOwnFailureIsLoggedAsItWasRaised(self):
        """
        A store's own exception reaches the log as the store raised it: the very exception,
        its message as its class made it (a copy made from its arguments would run its
        __init__ again, and say something else).
        """

        class Refused(Exception):
            def __init__(self, backend):
                super().__init__(f"the session backend {backend} refused the read")

        raised = Refused("users-db")

        class Failing(RedisStore):
            def load(self, uids, owner=None):
                return defer.fail(raised)

        site = self.serve(store_app.makeSite(Failing(self.redis.url, cache=False)))
        client = Client(site.base)
        _, state = yield self.get(client, site, b"set?key=k&value=1", sync=False)
        code, _ = yield self.get(_withCookie(site, state["session"]), site, b"get", sync=False)
        self.assertEqual(code, 500)
        logged = [
            event["log_failure"].value
            for event in self.logged
            if isinstance(getattr(event.get("log_failure"), "value", None), Refused)
        ]
        self.assertEqual(logged, [raised])
        self.assertIs(logged[0], raised)
        self.flushLoggedErrors(Refused)
