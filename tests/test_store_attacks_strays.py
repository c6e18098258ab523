"""
More attacks on writes whose answer is lost and on failing requests beside others, against a
real C{redis-server} (README.md, "The consistency model"); naming as in C{test_store_attacks}.
"""

from __future__ import annotations

import json

from twisted.internet import defer, reactor
from twisted.python.failure import Failure
from twisted.web import resource, server

from tests._proxy import DOWNSTREAM, UPSTREAM
from tests.test_store import sleep
from tests.test_store_attacks import _withCookie, rawGet
from tests.test_store_attacks_renew import _Case, _port, _sendAndHangUp
from tests.test_web import Client
from txsession.store import StoreUnavailable


class _LateFail(resource.Resource):
    """
    C{/latefail?key=K&value=V&delay=S}: takes its session while rendering, changes nothing
    then; C{delay} seconds later (from a callback) sets K to V and fails at once (a 500).
    """

    isLeaf = True

    def render_GET(self, request):
        key = request.args[b"key"][0].decode()
        value = json.loads(request.args[b"value"][0])
        delay = float(request.args[b"delay"][0])
        session = request.getSession()

        def later():
            session.sessionNamespaces[key] = value
            try:
                raise RuntimeError("the page failed after its change")
            except RuntimeError:
                request.processingFailed(Failure())

        reactor.callLater(delay, later)
        return server.NOT_DONE_YET


@defer.inlineCallbacks
def _until(session, key, value):
    """
    Wait (up to a second) until C{session} holds C{value} under C{key}.
    """
    for _ in range(200):
        if session.sessionNamespaces.get(key) == value:
            return
        yield sleep(0.005)


class _Op(resource.Resource):
    """
    C{/op?now=K:V&now=K:&delay=S&end=ok|fail}: while rendering, sets each K to V (a JSON
    value; K: alone deletes K); C{delay} seconds later answers with the session's values, or
    fails (a 500) when C{end=fail}.
    """

    isLeaf = True

    def render_GET(self, request):
        session = request.getSession()
        namespaces = session.sessionNamespaces
        for raw in request.args.get(b"now", []):
            key, _, value = raw.decode().partition(":")
            if value:
                namespaces[key] = json.loads(value)
            else:
                namespaces.pop(key, None)
        delay = float(request.args.get(b"delay", [b"0"])[0])
        failing = request.args.get(b"end", [b"ok"])[0] == b"fail"

        def end():
            if failing:
                try:
                    raise RuntimeError("the page failed on purpose")
                except RuntimeError:
                    request.processingFailed(Failure())
                return
            request.write(json.dumps({"values": dict(namespaces)}).encode())
            request.finish()

        reactor.callLater(delay, end)
        return server.NOT_DONE_YET


class _OpCase(_Case):
    """
    Two sites sharing a Redis, each with L{_Op} at C{/op}; the first behind a fault proxy
    when given a store timeout.
    """

    timeout = 30

    @defer.inlineCallbacks
    def opSites(self, key, value, timeout=None):
        """
        Sites A and B (and A's proxy, or C{None}), a client of A, and the id and A's copy of
        a session stored with C{key} set to C{value}.
        """
        if timeout is None:
            a, proxy = self.makeSite(), None
        else:
            a, proxy = yield self.proxied(timeout=timeout)
        a.resource.putChild(b"op", _Op())
        b = self.makeSite()
        b.resource.putChild(b"op", _Op())
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=%s&value=%d" % (key.encode(), value))
        uid = state["session"]
        return a, b, proxy, client, uid, a.sessions[uid.encode()]

    @defer.inlineCallbacks
    def bWrites(self, there, b, client, a, op):
        """
        B's client C{there} runs C{op} on L{_Op} (a 200); once A has had B's invalidation, a
        GET on A reads B's values. Returns what that GET saw.
        """
        code, _ = yield self.get(there, b, b"op?" + op)
        self.assertEqual(code, 200)
        yield sleep(0.3)
        code, seen = yield self.get(client, a, b"get")
        self.assertEqual(code, 200)
        return seen

    @defer.inlineCallbacks
    def ends(self, a, b, client, there, uid, expected):
        """
        Redis, a GET on A and a GET on B all hold C{expected}.
        """
        self.flushLoggedErrors(RuntimeError)
        stored = self.storedValues(uid)
        _, seenA = yield self.get(client, a, b"get")
        _, seenB = yield self.get(there, b, b"get")
        self.assertEqual((stored, seenA["values"], seenB["values"]), (expected,) * 3)


class StrayHoldsTests(_Case):
    timeout = 30

    @defer.inlineCallbacks
    def test_strayIsTheSessionsOwnEarlierIdThatLaterStored(self):
        """
        README (Renewing): a rename elsewhere leaves the session live under its new id.

        A session made in process A (id U0, its cookie given, nothing stored). R2 sets a key:
        its create of U0 never reaches Redis (a stall, a timeout): a 503, and U0 goes into
        the copy's uncertain ids. R3, on the same session, began while that create was in
        flight (so it read nothing): it writes after, creates U0 and gets a 200, which takes
        U0 out of the uncertain ids. The user logs in on A (U0 -> N4), then on process B
        (N4 -> N5). A stale tab on A with N4 finds N4's tombstone and sets A's copy aside;
        the session lives on under N5. (A deletion of the copy's uncertain ids on setting it
        aside, tried and taken back, followed U0 -> N4 -> N5 and deleted it.)
        """
        a, proxy = yield self.proxied(timeout=0.5)
        b = self.makeSite()
        client = Client(a.base)
        code, state = yield self.get(client, a, b"get")
        self.assertEqual(code, 200)
        u0 = state["session"]
        self.assertEqual(self.dataKeys(), [])
        proxy.stall(UPSTREAM)
        lost = self.get(client, a, b"set?key=a&value=1", sync=False)
        yield sleep(0.05)
        slow = self.get(client, a, b"set?key=b&value=1&delay=0.8", sync=False)
        code, _ = yield lost
        self.assertEqual(code, 503)
        self.flushLoggedErrors(StoreUnavailable)
        yield proxy.reset()
        yield a.store.load([b"warm-up"])
        code, _ = yield slow
        self.assertEqual(code, 200)
        self.assertEqual(self.storedValues(u0), {"b": 1})
        copy = a._flow.copies[a.sessions[u0.encode()]]
        self.assertNotIn(u0.encode(), copy.uncertain)  # stored there now, for certain
        code, state = yield self.get(client, a, b"renew")
        self.assertEqual(code, 200)
        n4 = state["session"]
        self.assertNotEqual(n4, u0)
        # The user logs in again, on process B.
        there = _withCookie(b, n4)
        code, state = yield self.get(there, b, b"renew")
        self.assertEqual(code, 200)
        n5 = state["session"]
        self.assertEqual(self.storedValues(n5), {"b": 1})
        # A stale tab on A, still carrying N4 (once A has B's invalidation).
        yield sleep(0.1)
        code, _ = yield self.get(_withCookie(a, n4), a, b"get")
        self.assertEqual(code, 200)
        yield sleep(0.2)
        self.assertEqual(self.storedValues(n5), {"b": 1}, "the live session N5 was deleted")
        code, seen = yield self.get(there, b, b"get")
        self.assertEqual(seen["session"], n5)
        self.assertEqual(seen["values"], {"b": 1}, "the live session N5 was deleted")


class SharedValueHoldsTests(_Case):
    timeout = 30

    @defer.inlineCallbacks
    def test_failedValueKeptForARequestWhoseLastWriteIsSent(self):
        """
        R_A sets k=1 while rendering and finishes: its last write (k=1) is in flight (slow
        link). R_F, running beside it, sets k=2 from a callback and fails (a 500). _revert
        keeps k=2 (R_A's baseline differs): R_A, once its write answers, writes k=2 too before
        its 200 (the shared-copy rule), so the copy and Redis agree. Holds.
        """
        a, proxy = yield self.proxied(timeout=2)
        a.resource.putChild(b"latefail", _LateFail())
        b = self.makeSite()
        client = Client(a.base)
        code, state = yield self.get(client, a, b"set?key=k&value=0")
        self.assertEqual(code, 200)
        uid = state["session"]
        failing = self.get(client, a, b"latefail?key=k&value=2&delay=0.25", sync=False)
        yield sleep(0.05)
        proxy.latency(400, direction=UPSTREAM)
        writing = self.get(client, a, b"set?key=k&value=1&delay=0.1", sync=False)
        code, _ = yield failing
        self.assertEqual(code, 500)
        self.flushLoggedErrors(RuntimeError)
        code, _ = yield writing
        self.assertEqual(code, 200)
        yield proxy.reset()
        stored = self.storedValues(uid)
        _, here = yield self.get(client, a, b"get")
        _, there = yield self.get(_withCookie(b, uid), b, b"get")
        self.assertEqual(here["values"], stored)
        self.assertEqual(there["values"], stored)


class OverwrittenValueDefectTests(_Case):
    @defer.inlineCallbacks
    def test_failedValueOverAnotherRequestsValue(self):
        """
        README: a failing request never touches another request's changes. R1 sets a=12
        while rendering and answers later; R2, on the same session, sets a=11 while rendering
        and fails (a 500). The copy kept 11 (the key was R1's too), and R1 then wrote R2's
        failed value with its 200 (found by the model test's soak). Now R1's value goes back,
        and R1 writes it.
        """
        a = self.makeSite()
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=b&value=1")
        uid = state["session"]
        session = a.sessions[uid.encode()]
        slow = self.get(client, a, b"set?key=a&value=12&delay=0.3")
        yield _until(session, "a", 12)
        code, _ = yield self.get(client, a, b"fail?key=a&value=11")
        self.assertEqual(code, 500)
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(session.sessionNamespaces.get("a"), 12)
        code, _ = yield slow
        self.assertEqual(code, 200)
        self.assertEqual(self.storedValues(uid), {"a": 12, "b": 1})


class LostWriteOverARenderingValueDefectTests(_Case):
    timeout = 30

    @defer.inlineCallbacks
    def test_lostWriteGivesBackTheRenderingRequestsChange(self):
        """
        README: a failing request never touches another request's changes. R_A sets a=11 and
        is still rendering; R_B, on the same session, starts from what R_A shows (a=11), sets
        a=15 and writes it, and its write is lost (a 503). Putting R_B's change back restored
        a=11, but also gave R_A a=11 as what the store held, so R_A wrote nothing and answered
        200 without its change in Redis (found by the model test in CI). Now R_A sees again
        what it saw before R_B's write (no a), and writes a=11 with its 200.
        """
        a, proxy = yield self.proxied(timeout=0.5)
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=b&value=1")
        uid = state["session"]
        session = a.sessions[uid.encode()]
        slow = self.get(client, a, b"set?key=a&value=11&delay=1.2", sync=False)
        yield _until(session, "a", 11)
        proxy.stall(UPSTREAM)
        code, _ = yield self.get(client, a, b"set?key=a&value=15")
        self.assertEqual(code, 503)
        self.flushLoggedErrors(StoreUnavailable)
        yield proxy.reset()
        self.assertEqual(session.sessionNamespaces.get("a"), 11)
        code, _ = yield slow
        self.assertEqual(code, 200)
        self.assertEqual(self.storedValues(uid), {"a": 11, "b": 1})


class DeletedNewKeyDefectTests(_OpCase):
    """
    README: a failing request never touches another request's changes. R_A adds a key and
    answers later; R_F, on the same session, starts from what R_A shows, deletes that key and
    fails. Putting R_F's change back restored the key, and also gave R_A the key as what the
    store held (its baseline, no key, equalled R_F's deletion), so R_A wrote nothing and
    answered 200 without its key in Redis (found by an attack). Now only a request that began
    after R_F takes R_F's put-back as its baseline.
    """

    @defer.inlineCallbacks
    def start(self):
        a, b, proxy, client, uid, session = yield self.opSites("b", 1, timeout=0.5)
        slow = self.get(client, a, b"op?now=c:3&delay=1.5", sync=False)
        yield _until(session, "c", 3)
        return a, b, proxy, client, uid, slow

    @defer.inlineCallbacks
    def settled(self, a, b, client, uid, slow):
        code, _ = yield slow
        self.assertEqual(code, 200)
        self.assertEqual(self.storedValues(uid), {"b": 1, "c": 3})
        _, here = yield self.get(client, a, b"get")
        _, there = yield self.get(_withCookie(b, uid), b, b"get")
        self.assertEqual(here["values"], {"b": 1, "c": 3})
        self.assertEqual(there["values"], {"b": 1, "c": 3})

    @defer.inlineCallbacks
    def test_failingDeletion(self):
        """
        R_F deletes the key and fails (a 500): nothing of the store is involved.
        """
        a, b, proxy, client, uid, slow = yield self.start()
        code, _ = yield self.get(client, a, b"op?now=c:&delay=0.1&end=fail")
        self.assertEqual(code, 500)
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(a.sessions[uid.encode()].sessionNamespaces.get("c"), 3)
        yield self.settled(a, b, client, uid, slow)

    @defer.inlineCallbacks
    def test_lostDeletion(self):
        """
        R_F deletes the key and sets another, and its write is lost (a 503).
        """
        a, b, proxy, client, uid, slow = yield self.start()
        proxy.stall(UPSTREAM)
        code, _ = yield self.get(client, a, b"op?now=c:&now=a:15")
        self.assertEqual(code, 503)
        self.flushLoggedErrors(StoreUnavailable)
        yield proxy.reset()
        yield a.store.load([b"warm-up"])
        self.assertEqual(a.sessions[uid.encode()].sessionNamespaces.get("c"), 3)
        yield self.settled(a, b, client, uid, slow)


class FailedValueAsALaterPriorDefectTests(_OpCase):
    """
    README: a failing request's changes are not in Redis, and it never touches another
    request's changes. Stored k=0. R_F sets k=5 while rendering and fails later (a 500). R_X
    begins after R_F's change (so it starts from k=5), sets k=7, and sends its write, which
    is still out when R_F fails; then R_X fails too (its write lost, or its client gone).
    R_X's revert put back what was there before its write, k=5: R_F's failed value, which
    the next request then wrote as its own change, with a 200 (found by an attack). Now R_F's
    failure makes k=0 what was there before R_X's write.
    """

    @defer.inlineCallbacks
    def start(self, timeout, delay=0.25):
        a, b, proxy, client, uid, session = yield self.opSites("k", 0, timeout=timeout)
        failing = self.get(client, a, b"op?now=k:5&delay=%g&end=fail" % delay, sync=False)
        yield _until(session, "k", 5)
        return a, b, proxy, client, uid, failing

    @defer.inlineCallbacks
    def settled(self, a, b, client, uid):
        yield _resetAndWarm(a, self.proxy)
        code, seen = yield self.get(client, a, b"get")
        self.assertEqual(code, 200)
        stored = self.storedValues(uid)
        self.assertEqual(seen["values"], stored)
        _, there = yield self.get(_withCookie(b, uid), b, b"get")
        self.assertEqual(there["values"], stored)
        return stored

    @defer.inlineCallbacks
    def test_laterWriteLost(self):
        a, b, self.proxy, client, uid, failing = yield self.start(timeout=0.5)
        self.proxy.stall(UPSTREAM)
        lost = self.get(client, a, b"set?key=k&value=7", sync=False)
        code, _ = yield failing
        self.assertEqual(code, 500)
        code, _ = yield lost
        self.assertEqual(code, 503)
        self.flushLoggedErrors(RuntimeError, StoreUnavailable)
        stored = yield self.settled(a, b, client, uid)
        self.assertEqual(stored, {"k": 0})

    @defer.inlineCallbacks
    def test_laterClientLeft(self):
        """
        R_X's write is slow and its client hangs up after R_F failed: the write may land
        (k=7), and R_F's k=5 never does.
        """
        a, b, self.proxy, client, uid, failing = yield self.start(timeout=2)
        self.proxy.latency(400, direction=UPSTREAM)
        yield _sendAndHangUp(_port(a), rawGet(b"set?key=k&value=7", uid), 0.3)
        code, _ = yield failing
        self.assertEqual(code, 500)
        self.flushLoggedErrors(RuntimeError)
        yield sleep(0.6)
        stored = yield self.settled(a, b, client, uid)
        self.assertIn(stored, ({"k": 0}, {"k": 7}))

    @defer.inlineCallbacks
    def test_failedValueThatA200WroteSinceStays(self):
        """
        R_F's value is the later write's prior only by being equal: R_V then R_W, while R_F
        runs, set k=6 then k=5 with 200s, so Redis's k=5 is R_W's. R_X, begun after, sets
        k=9 and its write is lost; R_F fails while it is out. R_X's revert puts back R_W's
        k=5 (taking it for R_F's and putting back k=0 instead was found by an attack).
        """
        a, b, self.proxy, client, uid, failing = yield self.start(timeout=2, delay=1.5)
        code, _ = yield self.get(client, a, b"op?now=k:6")
        self.assertEqual(code, 200)
        code, _ = yield self.get(client, a, b"op?now=k:5")
        self.assertEqual(code, 200)
        self.assertEqual(self.storedValues(uid), {"k": 5})
        lost = self.get(client, a, b"op?now=k:9&delay=0.2", sync=False)
        session = a.sessions[uid.encode()]
        yield _until(session, "k", 9)
        self.proxy.stall(UPSTREAM)
        code, _ = yield failing
        self.assertEqual(code, 500)
        code, _ = yield lost
        self.assertEqual(code, 503)
        self.flushLoggedErrors(RuntimeError, StoreUnavailable)
        stored = yield self.settled(a, b, client, uid)
        self.assertEqual(stored, {"k": 5})


@defer.inlineCallbacks
def _resetAndWarm(site, proxy):
    yield proxy.reset()
    yield site.store.load([b"warm-up"])


class OtherProcessValueDefectTests(_OpCase):
    """
    README: a failing request never touches another request's changes. Stored k=0. On site
    A, R_F sets k while rendering and fails later (a 500). Meanwhile site B writes k (a 200),
    and a request on A reads B's value: A's copy keeps R_F's unwritten change, and learns
    that Redis holds B's value. R_F's revert put back k=0, what Redis held before B's write,
    and the next plain GET on A wrote it, over B's change (found by an attack). Now what the
    running requests on A took Redis to hold moves with what A reads.
    """

    @defer.inlineCallbacks
    def check(self, theirs):
        a, b, _, client, uid, session = yield self.opSites("k", 0, timeout=2)
        failing = self.get(client, a, b"op?now=k:5&delay=1.0&end=fail", sync=False)
        yield _until(session, "k", 5)
        there = _withCookie(b, uid)
        code, _ = yield self.get(there, b, b"op?now=k:%d" % theirs)
        self.assertEqual(code, 200)
        self.assertEqual(self.storedValues(uid), {"k": theirs})
        yield sleep(0.3)  # A has B's invalidation: this GET reads B's value
        code, _ = yield self.get(client, a, b"get")
        self.assertEqual(code, 200)
        code, _ = yield failing
        self.assertEqual(code, 500)
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(session.sessionNamespaces.get("k"), theirs)
        code, seen = yield self.get(client, a, b"get")
        self.assertEqual(seen["values"], {"k": theirs})
        self.assertEqual(self.storedValues(uid), {"k": theirs})
        _, seen = yield self.get(there, b, b"get")
        self.assertEqual(seen["values"], {"k": theirs})

    def test_sameValue(self):
        return self.check(5)

    def test_otherValue(self):
        return self.check(7)


class TwoFailuresDefectTests(_OpCase):
    """
    README: a failing request's changes are not in Redis. Stored k=0. R_F1 sets k=5 while
    rendering and fails later; R_F2, begun after it (so from k=5), sets k=0 and fails after
    R_F1. R_F1's revert had nothing to put back (k already equalled what it started from),
    and R_F2 kept R_F1's k=5 as what the store holds: its revert put k=5 back, and the next
    plain GET wrote it with a 200 (found by an attack). Now R_F1's failure gives R_F2 k=0 as
    its baseline.
    """

    @defer.inlineCallbacks
    def test_secondSetsBackToStored(self):
        a, b, _, client, uid, session = yield self.opSites("k", 0)
        first = self.get(client, a, b"op?now=k:5&delay=0.6&end=fail", sync=False)
        yield _until(session, "k", 5)
        second = self.get(client, a, b"op?now=k:0&delay=1.2&end=fail", sync=False)
        yield _until(session, "k", 0)
        self.assertEqual((yield first)[0], 500)
        self.assertEqual((yield second)[0], 500)
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(session.sessionNamespaces.get("k"), 0)
        code, seen = yield self.get(client, a, b"get")
        self.assertEqual((code, seen["values"]), (200, {"k": 0}))
        self.assertEqual(self.storedValues(uid), {"k": 0})
        _, seen = yield self.get(_withCookie(b, uid), b, b"get")
        self.assertEqual(seen["values"], {"k": 0})


class ChangedBackToStoredDefectTests(_OpCase):
    """
    README: a 200 means the request's changes are in Redis, the later write winning. Stored
    k=0. On site A, R1 sets k=5 while rendering and answers later; R2, begun after it (so
    from k=5), sets k=0 and answers later still. Site B writes k=7 (a 200), and a request on
    A reads it. A's copy held k=0, what A last read from Redis, so the read took k as
    unchanged here and B's 7 replaced R2's unwritten change: R2 answered 200, having written
    nothing, and Redis kept 7 (found by an attack). Now a key that a running request will
    write (its baseline differs from the copy's value) counts as changed here; and once the
    other process writes that very value, the change counts as written, so that its next
    write replaces it (the first fix left R2's baseline at R1's value, and R1's 200 then wrote
    0 over B's later 6, found by an attack on it).
    """

    @defer.inlineCallbacks
    def test_changeBackToStoredOutlivesAnotherProcessWrite(self):
        a, b, _, client, uid, session = yield self.opSites("k", 0, timeout=2)
        first = self.get(client, a, b"op?now=k:5&delay=1.0", sync=False)
        yield _until(session, "k", 5)
        second = self.get(client, a, b"op?now=k:0&delay=1.3", sync=False)
        yield _until(session, "k", 0)
        there = _withCookie(b, uid)
        code, _ = yield self.get(there, b, b"op?now=k:7")
        self.assertEqual(code, 200)
        yield sleep(0.3)  # A has B's invalidation: this GET reads B's value
        code, _ = yield self.get(client, a, b"get")
        self.assertEqual(code, 200)
        self.assertEqual((yield first)[0], 200)
        code, seen = yield second
        self.assertEqual((code, seen["values"]), (200, {"k": 0}))
        self.assertEqual(self.storedValues(uid), {"k": 0})
        _, seen = yield self.get(client, a, b"get")
        self.assertEqual(seen["values"], {"k": 0})
        _, seen = yield self.get(there, b, b"get")
        self.assertEqual(seen["values"], {"k": 0})

    @defer.inlineCallbacks
    def writtenElsewhereThenReplaced(self, firstOp, end=b"ok"):
        """
        R1 (C{firstOp}), then R2 sets k=0; B writes 3, then 0 (R2's very value), then 6,
        and A reads each. B's 6 replaces R2's change, here and in Redis, whatever R1 and R2
        answer.
        """
        a, b, _, client, uid, session = yield self.opSites("k", 0, timeout=2)
        first = self.get(client, a, b"op?%s&delay=2.0&end=%s" % (firstOp, end), sync=False)
        yield _until(session, "k", None if firstOp == b"now=k:" else 5)
        second = self.get(client, a, b"op?now=k:0&delay=2.3", sync=False)
        yield _until(session, "k", 0)
        there = _withCookie(b, uid)
        for value in (3, 0, 6):
            code, _ = yield self.get(there, b, b"op?now=k:%d" % value)
            self.assertEqual(code, 200)
            yield sleep(0.3)
            code, seen = yield self.get(client, a, b"get")
            self.assertEqual(code, 200)
        self.assertEqual(seen["values"], {"k": 6})
        self.assertEqual((yield first)[0], 200 if end == b"ok" else 500)
        self.assertEqual((yield second)[0], 200)
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(self.storedValues(uid), {"k": 6})
        _, seen = yield self.get(client, a, b"get")
        self.assertEqual(seen["values"], {"k": 6})

    def test_writtenElsewhereThenReplaced(self):
        return self.writtenElsewhereThenReplaced(b"now=k:5")

    def test_writtenElsewhereThenReplacedFirstFails(self):
        return self.writtenElsewhereThenReplaced(b"now=k:5", end=b"fail")

    def test_deletedReAddedWrittenElsewhereThenReplaced(self):
        return self.writtenElsewhereThenReplaced(b"now=k:")


class WrittenElsewhereDefectTests(_OpCase):
    """
    README: a change whose very value another process has written counts as written, and
    that process's next write, once read here, replaces it; a failure undoes only its own
    request's changes. A failing request gave back, over the other process's later write, a
    value set while rendering by another running request that the other process had
    written (that request's 200 then wrote it again); and a read answered after a write of
    the same key had been sent took the other process's value, though the write landed
    after it (the copy then said k=7 while Redis held 0, and a 200 setting k=7 wrote
    nothing). All four found by an attack.
    """

    # 1. R1 sets 5; B writes 5 (R1's change counts as written); R2 (begun after) sets 0;
    # B writes 6; R2 fails. Only R2's change is undone: k is 6 (B's write replaced R1's
    # counted-as-written change), and R1's 200 must not write 5 over B's 6.
    @defer.inlineCallbacks
    def test_failureResurrectsValueCountedAsWritten(self):
        a, b, _, client, uid, session = yield self.opSites("k", 0)
        first = self.get(client, a, b"op?now=k:5&delay=2.5", sync=False)
        yield _until(session, "k", 5)
        there = _withCookie(b, uid)
        yield self.bWrites(there, b, client, a, b"now=k:5")
        second = self.get(client, a, b"op?now=k:0&delay=1.0&end=fail", sync=False)
        yield _until(session, "k", 0)
        yield self.bWrites(there, b, client, a, b"now=k:6")
        self.assertEqual((yield second)[0], 500)
        self.assertEqual((yield first)[0], 200)
        yield self.ends(a, b, client, there, uid, {"k": 6})

    # 2. Same, R2 begun before B writes 5.
    @defer.inlineCallbacks
    def test_failureResurrectsValueWrittenElsewhereR2First(self):
        a, b, _, client, uid, session = yield self.opSites("k", 0)
        first = self.get(client, a, b"op?now=k:5&delay=2.5", sync=False)
        yield _until(session, "k", 5)
        second = self.get(client, a, b"op?now=k:0&delay=1.5&end=fail", sync=False)
        yield _until(session, "k", 0)
        there = _withCookie(b, uid)
        yield self.bWrites(there, b, client, a, b"now=k:5")
        yield self.bWrites(there, b, client, a, b"now=k:6")
        self.assertEqual((yield second)[0], 500)
        self.assertEqual((yield first)[0], 200)
        yield self.ends(a, b, client, there, uid, {"k": 6})

    # 3. Deletion variant: R1 deletes k; R2 (after) sets 5; B deletes k, then writes 6;
    # R2 fails: R1's deletion counts as written, B's 6 replaces it.
    @defer.inlineCallbacks
    def test_failureResurrectsDeletionWrittenElsewhere(self):
        a, b, _, client, uid, session = yield self.opSites("k", 0)
        first = self.get(client, a, b"op?now=k:&delay=2.5", sync=False)
        yield _until(session, "k", None)
        second = self.get(client, a, b"op?now=k:5&delay=1.5&end=fail", sync=False)
        yield _until(session, "k", 5)
        there = _withCookie(b, uid)
        yield self.bWrites(there, b, client, a, b"now=k:")
        yield self.bWrites(there, b, client, a, b"now=k:6")
        self.assertEqual((yield second)[0], 500)
        self.assertEqual((yield first)[0], 200)
        yield self.ends(a, b, client, there, uid, {"k": 6})

    # 4. A read sent before a write of the key and answered after it: R1 sets 5, R2 (after)
    # sets 0; B writes 7; A's GET reads (reply held), R2's write of 0 goes out, then both
    # replies. Redis applied B's 7 then R2's 0: 0. A must not keep 7 as if Redis held it.
    @defer.inlineCallbacks
    def test_readAnsweredAcrossAWriteInFlight(self):
        a, b, proxy, client, uid, session = yield self.opSites("k", 0, timeout=3)
        first = self.get(client, a, b"op?now=k:5&delay=0.8", sync=False)
        yield _until(session, "k", 5)
        second = self.get(client, a, b"op?now=k:0&delay=1.0", sync=False)
        yield _until(session, "k", 0)
        there = _withCookie(b, uid)
        code, _ = yield self.get(there, b, b"op?now=k:7")
        self.assertEqual(code, 200)
        yield sleep(0.3)
        proxy.stall(DOWNSTREAM)
        reading = self.get(client, a, b"get", sync=False)
        yield sleep(1.2)  # R1 ends (nothing to write), R2's write is sent, replies held
        proxy.release(DOWNSTREAM)
        code, seen = yield reading
        self.assertEqual(code, 200)
        self.assertEqual((yield first)[0], 200)
        self.assertEqual((yield second)[0], 200)
        self.assertEqual(self.storedValues(uid), {"k": 0})
        _, seenB = yield self.get(there, b, b"get")
        _, seen = yield self.get(client, a, b"get")
        trips = a.store.roundTrips
        code, _ = yield self.get(client, a, b"op?now=k:7")
        after = (self.storedValues(uid), code, a.store.roundTrips - trips)
        # Observed: A {'k': 7} (from its copy), B {'k': 0}; then A's op?now=k:7 answers 200
        # with no round trip and Redis keeps {'k': 0}.
        self.assertEqual(
            (seen["values"], seenB["values"], after),
            ({"k": 0}, {"k": 0}, ({"k": 7}, 200, 1)),
        )
