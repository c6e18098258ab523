"""
A read of a session another process changed, beside this process's running requests and
writes in flight (README: "The consistency model"): what the read takes, what it leaves to
the running requests, and what a failure or a logout does after it. Each test failed before
the fix it names, or pins a sequence that held while those fixes were made; all were found
by attacking the store with two sites on one Redis.
"""

from __future__ import annotations

import json

from twisted.internet import defer, reactor
from twisted.web import resource, server

from tests._proxy import DOWNSTREAM, UPSTREAM
from tests.test_store import sleep
from tests.test_store_attacks import _withCookie
from tests.test_store_attacks_strays import _OpCase, _until
from txsession.store import SessionEnded, StoreUnavailable


class _Later(resource.Resource):
    """
    /later?set=K:V&after=S&delay=S2: takes its session while rendering, changes nothing
    then; after S seconds (from a callback) sets K to V (K: deletes); answers after S2.
    """

    isLeaf = True

    def render_GET(self, request):
        session = request.getSession()
        namespaces = session.sessionNamespaces
        for raw in request.args.get(b"now", []):
            key, _, value = raw.decode().partition(":")
            namespaces[key] = json.loads(value)
        after = float(request.args[b"after"][0])
        delay = float(request.args[b"delay"][0])

        def change():
            for raw in request.args.get(b"set", []):
                key, _, value = raw.decode().partition(":")
                if value:
                    namespaces[key] = json.loads(value)
                else:
                    namespaces.pop(key, None)

        def end():
            request.write(json.dumps({"values": dict(namespaces)}).encode())
            request.finish()

        reactor.callLater(after, change)
        reactor.callLater(delay, end)
        return server.NOT_DONE_YET


class ReadAcrossWriteTests(_OpCase):
    """
    A read answered while a write of the same key was in flight (sent after the read, on the
    same connection, so it lands after what the read saw). The running requests' baselines
    used to move to the other process's value: a failing request then put that value back
    over the write's (the next GET wrote it), a request whose change was that value answered
    200 without writing it, and the copy disagreed with Redis. Now the baselines stay while
    the write may land, and take the other process's value if it fails.
    """

    @defer.inlineCallbacks
    def finalState(self, a, b, client, there, uid):
        self.flushLoggedErrors(RuntimeError, StoreUnavailable, SessionEnded)
        stored0 = self.storedValues(uid)
        _, seenA = yield self.get(client, a, b"get")
        stored1 = self.storedValues(uid)
        _, seenB = yield self.get(there, b, b"get")
        return stored0, seenA["values"], stored1, seenB["values"]

    # D1. R1 sets 5 (fails later); R2 (after) sets 0, the stored value; B writes 7; A's read
    # is answered across R2's write of 0 (which lands after B's 7: Redis 0, R2 200). R1
    # fails: its revert must not bring back B's overwritten 7.
    @defer.inlineCallbacks
    def test_setBackInFlightOtherFails(self):
        a, b, proxy, client, uid, session = yield self.opSites("k", 0, timeout=3)
        first = self.get(client, a, b"op?now=k:5&delay=2.5&end=fail", sync=False)
        yield _until(session, "k", 5)
        second = self.get(client, a, b"op?now=k:0&delay=1.0", sync=False)
        yield _until(session, "k", 0)
        there = _withCookie(b, uid)
        code, _ = yield self.get(there, b, b"op?now=k:7")
        self.assertEqual(code, 200)
        yield sleep(0.3)
        proxy.stall(DOWNSTREAM)
        reading = self.get(client, a, b"get", sync=False)
        yield sleep(1.2)
        proxy.release(DOWNSTREAM)
        code, _ = yield reading
        self.assertEqual(code, 200)
        self.assertEqual((yield second)[0], 200)
        self.assertEqual(self.storedValues(uid), {"k": 0})
        self.assertEqual((yield first)[0], 500)
        got = yield self.finalState(a, b, client, there, uid)
        self.assertEqual(got, ({"k": 0}, {"k": 0}, {"k": 0}, {"k": 0}))

    # D1b. As D1, R1 succeeds, having set k=7 from a callback after A's read: its 200
    # must mean Redis holds 7.
    @defer.inlineCallbacks
    def test_setBackInFlightOtherSetsTheirValueLater(self):
        a, b, proxy, client, uid, session = yield self.opSites("k", 0, timeout=3)
        a.resource.putChild(b"later", _Later())
        first = self.get(client, a, b"later?now=k:5&set=k:7&after=2.0&delay=2.6", sync=False)
        yield _until(session, "k", 5)
        second = self.get(client, a, b"op?now=k:0&delay=1.0", sync=False)
        yield _until(session, "k", 0)
        there = _withCookie(b, uid)
        code, _ = yield self.get(there, b, b"op?now=k:7")
        self.assertEqual(code, 200)
        yield sleep(0.3)
        proxy.stall(DOWNSTREAM)
        reading = self.get(client, a, b"get", sync=False)
        yield sleep(1.2)
        proxy.release(DOWNSTREAM)
        code, _ = yield reading
        self.assertEqual(code, 200)
        self.assertEqual((yield second)[0], 200)
        self.assertEqual(self.storedValues(uid), {"k": 0})
        code, seen = yield first
        self.assertEqual((code, seen["values"], self.storedValues(uid)), (200, {"k": 7}, {"k": 7}))

    # D2. R3 takes the session; R_W sets 5 and writes it; while that write is in flight R3
    # sets 7 from a callback; B wrote 7 before; A's read (sent before R_W's write) answers
    # 7. Redis: B's 7, then R_W's 5, then R3's 7 (its change, written by its 200); A's copy
    # used to keep 7 as what Redis held after R_W's write, and R3 wrote nothing.
    @defer.inlineCallbacks
    def test_inFlightBaselineMovedByStoredEqualsHere(self):
        a, b, proxy, client, uid, session = yield self.opSites("k", 0, timeout=3)
        a.resource.putChild(b"later", _Later())
        third = self.get(client, a, b"later?set=k:7&after=1.1&delay=2.5", sync=False)
        yield sleep(0.1)
        writer = self.get(client, a, b"op?now=k:5&delay=0.8", sync=False)
        yield _until(session, "k", 5)
        there = _withCookie(b, uid)
        code, _ = yield self.get(there, b, b"op?now=k:7")
        self.assertEqual(code, 200)
        yield sleep(0.3)
        proxy.stall(DOWNSTREAM)
        reading = self.get(client, a, b"get", sync=False)
        yield sleep(1.0)  # R_W's write sent (0.8), R3 sets 7 (1.1)
        proxy.release(DOWNSTREAM)
        code, _ = yield reading
        self.assertEqual(code, 200)
        self.assertEqual((yield writer)[0], 200)
        code3, _ = yield third
        got = yield self.finalState(a, b, client, there, uid)
        trips = a.store.roundTrips
        code, _ = yield self.get(client, a, b"op?now=k:7")
        after = (self.storedValues(uid), code, a.store.roundTrips - trips)
        # R3 set k=7 after the writer's 5 was sent, and answers 200: 7 is in Redis.
        self.assertEqual(
            (code3, got, after[:2]),
            (200, ({"k": 7}, {"k": 7}, {"k": 7}, {"k": 7}), ({"k": 7}, 200)),
        )


class WrittenElsewhereLogoutTests(_OpCase):
    """
    A change counted as written because another process wrote that very value is still the
    request's change for a logout: the request gets a 409, as in one process (it got a 200).
    """

    # L1. R sets 5 while rendering; B writes 5 (R's change counts as written); A logs the
    # session out; R answers: README wants 409 ("never a 200").
    @defer.inlineCallbacks
    def test_ownDroppedThenLogoutHere(self):
        a, b, _, client, uid, session = yield self.opSites("k", 0)
        r = self.get(client, a, b"op?now=k:5&delay=1.5", sync=False)
        yield _until(session, "k", 5)
        there = _withCookie(b, uid)
        yield self.bWrites(there, b, client, a, b"now=k:5")
        code, _ = yield self.get(client, a, b"logout")
        self.assertEqual(code, 200)
        self.assertEqual(self.redis.keys(), [])
        code, _ = yield r
        self.flushLoggedErrors(SessionEnded)
        self.assertEqual(code, 409)

    # L1 control: same process. R1 sets 5; R0 (begun before, changes nothing) writes R1's
    # change (a 200); A logs out; R1 answers.
    @defer.inlineCallbacks
    def test_writtenByAnotherRequestHereThenLogout(self):
        a, b, _, client, uid, session = yield self.opSites("k", 0)
        r0 = self.get(client, a, b"op?delay=0.5", sync=False)
        yield sleep(0.15)
        r1 = self.get(client, a, b"op?now=k:5&delay=1.5", sync=False)
        yield _until(session, "k", 5)
        self.assertEqual((yield r0)[0], 200)
        self.assertEqual(self.storedValues(uid), {"k": 5})
        code, _ = yield self.get(client, a, b"logout")
        self.assertEqual(code, 200)
        code, _ = yield r1
        self.flushLoggedErrors(SessionEnded)
        self.assertEqual(code, 409)

    # L2. As L1, B logs out and A's next GET finds it gone.
    @defer.inlineCallbacks
    def test_ownDroppedThenLogoutThereSeenHere(self):
        a, b, _, client, uid, session = yield self.opSites("k", 0)
        r = self.get(client, a, b"op?now=k:5&delay=1.5", sync=False)
        yield _until(session, "k", 5)
        there = _withCookie(b, uid)
        yield self.bWrites(there, b, client, a, b"now=k:5")
        code, _ = yield self.get(there, b, b"logout")
        self.assertEqual(code, 200)
        yield sleep(0.3)
        _, seen = yield self.get(_withCookie(a, uid), a, b"get")
        self.assertNotEqual(seen["session"], uid)
        code, _ = yield r
        self.flushLoggedErrors(SessionEnded)
        self.assertEqual(code, 409)


class ReadAcrossLostWriteTests(_OpCase):
    """
    As L{ReadAcrossWriteTests}, the write in flight lost (a 503): what the read saw is what
    its failure leaves.
    """

    @defer.inlineCallbacks
    def acrossLost(self, ops, writerIndex, expectCodes, expected):
        """
        Start each op on A (waiting until k holds its value); B writes 7; A's read is sent
        (reply held), then upstream is stalled, so the writer's write is held and lost
        (503); the read's reply is released while that write is in flight.
        """
        a, b, proxy, client, uid, session = yield self.opSites("k", 0, timeout=2)
        running = []
        for op, value in ops:
            running.append(self.get(client, a, b"op?" + op, sync=False))
            yield _until(session, "k", value)
        there = _withCookie(b, uid)
        code, _ = yield self.get(there, b, b"op?now=k:7")
        self.assertEqual(code, 200)
        yield sleep(0.3)
        proxy.stall(DOWNSTREAM)
        reading = self.get(client, a, b"get", sync=False)
        yield sleep(0.1)
        proxy.stall(UPSTREAM)
        yield sleep(1.0)  # the writer's write is sent (held upstream)
        proxy.release(DOWNSTREAM)
        code, _ = yield reading
        self.assertEqual(code, 200)
        lostCode = (yield running[writerIndex])[0]
        yield proxy.reset()
        yield a.store.load([b"warm-up"])
        codes = []
        for i, r in enumerate(running):
            codes.append(lostCode if i == writerIndex else (yield r)[0])
        self.flushLoggedErrors(RuntimeError, StoreUnavailable)
        stored0 = self.storedValues(uid)
        _, seenA = yield self.get(client, a, b"get")
        stored1 = self.storedValues(uid)
        _, seenB = yield self.get(there, b, b"get")
        self.assertEqual(
            (codes, stored0, seenA["values"], stored1, seenB["values"]),
            (expectCodes, expected, expected, expected, expected),
        )

    # H1. R_W sets 5 and its write (sent after the read) is lost: its revert puts back 7.
    def test_lostWriteAcrossRead(self):
        return self.acrossLost([(b"now=k:5&delay=0.9", 5)], 0, [503], {"k": 7})

    # H2. R1 sets 5 (200 later); R2 sets 0 and its write is lost: R1 writes 5.
    def test_setBackLostAcrossRead(self):
        return self.acrossLost(
            [(b"now=k:5&delay=4.0", 5), (b"now=k:0&delay=0.8", 0)], 1, [200, 503], {"k": 5}
        )

    # H3. R1 sets 5 and fails; R2 sets 0 and its write is lost: 7 (B's).
    def test_setBackLostFirstFails(self):
        return self.acrossLost(
            [(b"now=k:5&delay=4.0&end=fail", 5), (b"now=k:0&delay=0.8", 0)],
            1,
            [500, 503],
            {"k": 7},
        )


class MergeSequenceTests(_OpCase):
    """
    Sequences of running requests, another process's writes and failures that held.
    """

    # T1. Two keys: k changed here (R1, fails), j B's; R2 begun after the read sets j=4.
    @defer.inlineCallbacks
    def test_twoKeysOneEach(self):
        a, b, _, client, uid, session = yield self.opSites("k", 0)
        r1 = self.get(client, a, b"op?now=k:5&delay=1.5&end=fail", sync=False)
        yield _until(session, "k", 5)
        there = _withCookie(b, uid)
        yield self.bWrites(there, b, client, a, b"now=k:7&now=j:3")
        r2 = self.get(client, a, b"op?now=j:4&delay=1.5", sync=False)
        yield _until(session, "j", 4)
        self.assertEqual((yield r1)[0], 500)
        self.assertEqual((yield r2)[0], 200)
        yield self.ends(a, b, client, there, uid, {"k": 7, "j": 4})

    # T2. R deletes k; B deletes k (R's change counts as written); R2 begun after sets k=3
    # and fails; R 200: k absent.
    @defer.inlineCallbacks
    def test_deletionWrittenElsewhereLaterFails(self):
        a, b, _, client, uid, session = yield self.opSites("k", 0)
        r = self.get(client, a, b"op?now=k:&now=j:1&delay=2.0", sync=False)
        yield _until(session, "k", None)
        there = _withCookie(b, uid)
        yield self.bWrites(there, b, client, a, b"now=k:")
        r2 = self.get(client, a, b"op?now=k:3&delay=0.5&end=fail", sync=False)
        yield _until(session, "k", 3)
        self.assertEqual((yield r2)[0], 500)
        self.assertEqual((yield r)[0], 200)
        yield self.ends(a, b, client, there, uid, {"j": 1})

    # T3. R1 5, R2 0 (set back), B 7, R3 begun after the read (changes nothing); R2 fails;
    # R1 200: 5.
    @defer.inlineCallbacks
    def test_laterRequestSetBackFails(self):
        a, b, _, client, uid, session = yield self.opSites("k", 0)
        r1 = self.get(client, a, b"op?now=k:5&delay=2.0", sync=False)
        yield _until(session, "k", 5)
        r2 = self.get(client, a, b"op?now=k:0&delay=1.2&end=fail", sync=False)
        yield _until(session, "k", 0)
        there = _withCookie(b, uid)
        yield self.bWrites(there, b, client, a, b"now=k:7")
        r3 = self.get(client, a, b"op?delay=1.5", sync=False)
        yield sleep(0.1)
        self.assertEqual((yield r2)[0], 500)
        self.assertEqual((yield r1)[0], 200)
        self.assertEqual((yield r3)[0], 200)
        yield self.ends(a, b, client, there, uid, {"k": 5})

    # T4. As T3, R1 fails, R2 200: 0.
    @defer.inlineCallbacks
    def test_laterRequestFirstFails(self):
        a, b, _, client, uid, session = yield self.opSites("k", 0)
        r1 = self.get(client, a, b"op?now=k:5&delay=1.2&end=fail", sync=False)
        yield _until(session, "k", 5)
        r2 = self.get(client, a, b"op?now=k:0&delay=2.0", sync=False)
        yield _until(session, "k", 0)
        there = _withCookie(b, uid)
        yield self.bWrites(there, b, client, a, b"now=k:7")
        r3 = self.get(client, a, b"op?delay=1.5", sync=False)
        yield sleep(0.1)
        self.assertEqual((yield r1)[0], 500)
        self.assertEqual((yield r2)[0], 200)
        self.assertEqual((yield r3)[0], 200)
        yield self.ends(a, b, client, there, uid, {"k": 0})


class LostLaterWriteTests(_OpCase):
    """
    Two writes of one key in flight from two requests: W1 (k=5) lands, W2 (k=0, sent after
    it) is lost. W2's write had moved W1's baseline to 0, and W1's answer recorded that as
    what Redis held; after W2's revert the copy showed 5 while this process took Redis to
    hold 0, so the next request that changed nothing wrote 5, over another process's later
    200 (found by an attack). Now an answered write records the values it carried.
    """

    @defer.inlineCallbacks
    def secondWriteLost(self, theirs):
        a, b, proxy, client, uid, session = yield self.opSites("k", 0, timeout=2)
        a.resource.putChild(b"later", _Later())
        first = self.get(client, a, b"op?now=k:5&delay=0.7", sync=False)
        yield _until(session, "k", 5)
        second = self.get(client, a, b"later?set=k:0&after=0.95&delay=1.0", sync=False)
        yield sleep(0.3)
        proxy.stall(DOWNSTREAM)
        yield sleep(0.55)  # W1 (k=5) sent at 0.7; its answer held
        proxy.stall(UPSTREAM)
        yield sleep(0.5)  # W2 (k=0) sent at 1.0; held on its way, so lost
        proxy.release(DOWNSTREAM)
        yield first
        yield second
        yield proxy.reset()
        yield a.store.load([b"warm-up"])
        self.flushLoggedErrors(RuntimeError, StoreUnavailable)
        self.assertEqual(
            (self.storedValues(uid), session.sessionNamespaces.get("k")), ({"k": 5}, 5)
        )
        there = _withCookie(b, uid)
        code, _ = yield self.get(there, b, b"op?now=k:%d" % theirs)
        self.assertEqual(code, 200)
        yield sleep(0.3)
        _, seen = yield self.get(client, a, b"get")
        self.assertEqual((seen["values"], self.storedValues(uid)), ({"k": theirs}, {"k": theirs}))

    def test_otherProcessWritesAfter(self):
        return self.secondWriteLost(9)

    def test_otherProcessWritesTheLostValue(self):
        return self.secondWriteLost(0)
