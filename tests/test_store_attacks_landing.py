"""
A write whose outcome this process does not learn with its request's failure: the request
failed (its client left) while its write was in flight, or its write got a 503 that may have
been applied (README: "What a failure undoes", and the 503 row). What the other running
requests write, and what this process's copy says, once that write lands or not. Each test
failed before its fix, or pins a sequence that held while it was made; all were found by
attacking the store with two sites on one Redis.
"""

from __future__ import annotations

from twisted.internet import defer

from tests._proxy import DOWNSTREAM, UPSTREAM
from tests.apps import store_app
from tests.test_store import sleep
from tests.test_store_attacks import _withCookie, rawGet
from tests.test_store_attacks_merge import _Later
from tests.test_store_attacks_renew import _port, _sendAndHangUp
from tests.test_store_attacks_strays import _LateFail, _OpCase
from tests.test_web import Client
from txsession.redis import RedisStore
from txsession.store import SessionEnded, StoreUnavailable


class ClientLeftWriteLandsTests(_OpCase):
    """
    R1 sets k=5 and finishes: its write (k=5) is sent, and its answer held. R2 begins
    meanwhile, from the copy: it sees k=5, and changes k while rendering. R1's client hangs
    up: R1 fails with its write in flight, which may still land. R2's change must be written
    whatever that write's outcome: its revert took R2's baseline to what was there before
    R1's write (0), so that a change of R2's back to 0 answered 200 without a write, and
    Redis kept R1's k=5.
    """

    @defer.inlineCallbacks
    def leaveWithWriteInFlight(self, r1, r2, outcome, r2Fails=False):
        """
        R1 (C{r1}, an L{_Op} query) finishes at 0.3 s, its write held by the proxy; R2
        (C{r2}) begins, R1's client hangs up, and the write lands (C{outcome} "lands": the
        proxy held its answer, then delivers it) or is lost (the proxy held the command, then
        the connection is cut). Returns A, B, A's client, B's client, the id, and R2's
        answer.
        """
        a, b, proxy, client, uid, session = yield self.opSites("k", 0, timeout=1.5)
        direction = DOWNSTREAM if outcome == "lands" else UPSTREAM
        leaving = _sendAndHangUp(_port(a), rawGet(b"op?" + r1 + b"&delay=0.3", uid), 0.8)
        yield sleep(0.15)
        proxy.stall(direction)
        yield sleep(0.35)  # R1's write sent at 0.3 s
        end = b"&end=fail" if r2Fails else b""
        r2done = self.get(client, a, b"op?" + r2 + b"&delay=0.6" + end, sync=False)
        yield sleep(0.1)
        yield leaving  # R1's client hangs up at 0.8 s: R1 fails, its write in flight
        if r2Fails:
            # R2 fails too, before that write answers.
            answer = yield r2done
        yield sleep(0.1)
        if outcome == "lands":
            proxy.release(direction)
        else:
            proxy.cut()
            proxy.release(direction)  # for the store's next connection
        if not r2Fails:
            answer = yield r2done
        yield sleep(0.2)
        self.flushLoggedErrors(StoreUnavailable)
        there = _withCookie(b, uid)
        return a, b, client, there, uid, answer[0]

    @defer.inlineCallbacks
    def test_laterChangeBackWrittenUnderTheLandedWrite(self):
        a, b, client, there, uid, code = yield self.leaveWithWriteInFlight(
            b"now=k:5", b"now=k:0", "lands"
        )
        self.assertEqual((code, self.storedValues(uid)), (200, {"k": 0}))
        yield self.ends(a, b, client, there, uid, {"k": 0})

    @defer.inlineCallbacks
    def test_laterDeletionWrittenUnderTheLandedWrite(self):
        # R1 adds j; R2, from the copy, deletes it.
        a, b, client, there, uid, code = yield self.leaveWithWriteInFlight(
            b"now=j:5", b"now=j:", "lands"
        )
        self.assertEqual((code, self.storedValues(uid)), (200, {"k": 0}))
        yield self.ends(a, b, client, there, uid, {"k": 0})

    @defer.inlineCallbacks
    def test_laterOtherValueWrittenUnderTheLandedWrite(self):
        a, b, client, there, uid, code = yield self.leaveWithWriteInFlight(
            b"now=k:5", b"now=k:7", "lands"
        )
        self.assertEqual((code, self.storedValues(uid)), (200, {"k": 7}))
        yield self.ends(a, b, client, there, uid, {"k": 7})

    @defer.inlineCallbacks
    def test_laterChangeBackWrittenWhenTheWriteIsLost(self):
        a, b, client, there, uid, code = yield self.leaveWithWriteInFlight(
            b"now=k:5", b"now=k:0", "lost"
        )
        self.assertEqual((code, self.storedValues(uid)), (200, {"k": 0}))
        yield self.ends(a, b, client, there, uid, {"k": 0})

    @defer.inlineCallbacks
    def test_laterFailsTooThenTheWriteLands(self):
        # R2 fails as well: nothing of its is written, and the copy says what Redis holds
        # (R1's value, its write having landed).
        a, b, client, there, uid, code = yield self.leaveWithWriteInFlight(
            b"now=k:5", b"now=k:0", "lands", r2Fails=True
        )
        self.assertEqual((code, self.storedValues(uid)), (500, {"k": 5}))
        yield self.ends(a, b, client, there, uid, {"k": 5})

    @defer.inlineCallbacks
    def test_laterFailsTooThenTheWriteIsLost(self):
        # Neither change is anyone's: the next request on A must not write R1's 5.
        a, b, client, there, uid, code = yield self.leaveWithWriteInFlight(
            b"now=k:5", b"now=k:0", "lost", r2Fails=True
        )
        self.assertEqual((code, self.storedValues(uid)), (500, {"k": 0}))
        code, _ = yield self.get(client, a, b"op?now=other:1")
        self.assertEqual(code, 200)
        yield self.ends(a, b, client, there, uid, {"k": 0, "other": 1})


class ReplicaShortfallTests(_OpCase):
    """
    With replicas=N, a write fewer than N replicas confirmed gets a 503, and may have been
    applied (here it was: there is no replica). The connection stays up, and the write's
    reply kept the copy's stamp while the failure put the copy back: the process served k=0
    from its copy without reading (Redis and B: k=5), and a request setting k=0 then
    answered 200 without a write, Redis keeping 5.
    """

    @defer.inlineCallbacks
    def test_unconfirmedWriteIsReadAgain(self):
        a = self.serve(store_app.makeSite(RedisStore(self.redis.url, replicas=1, timeout=1.0)))
        b = self.makeSite()
        there = Client(b.base)
        _, state = yield self.get(there, b, b"set?key=k&value=0")
        uid = state["session"]
        client = _withCookie(a, uid)
        _, seen = yield self.get(client, a, b"get")
        self.assertEqual(seen["values"], {"k": 0})
        code, _ = yield self.get(client, a, b"set?key=k&value=5")
        self.assertEqual(code, 503)
        self.flushLoggedErrors(StoreUnavailable)
        self.assertEqual(self.storedValues(uid), {"k": 5})  # applied on the primary
        _, seenB = yield self.get(there, b, b"get")
        _, seenA = yield self.get(client, a, b"get")
        self.assertEqual((seenB["values"], seenA["values"]), ({"k": 5}, {"k": 5}))
        # A change back is a change: its write is sent (and gets its 503, no replica).
        before = a.store.roundTrips
        code, _ = yield self.get(client, a, b"set?key=k&value=0")
        self.flushLoggedErrors(StoreUnavailable)
        self.assertEqual((code, a.store.roundTrips - before), (503, 1))
        self.assertEqual(self.storedValues(uid), {"k": 0})


class UncertainWriteThenReadTests(_OpCase):
    """
    R1 fails (its client left) with its write of k=5 in flight, and the connection is cut:
    the write may have landed, and nothing will say. R2, begun from the copy (k=5), sets k=0
    and keeps its baseline at 5, its own failure to put back 0. B then writes k=7, and a
    read on A sees it while R2 runs: what R2's failure puts back is 7 now, what Redis holds
    (it put back 0, which the next request on A wrote as its change).
    """

    @defer.inlineCallbacks
    def test_readMovesWhatAFailurePutsBack(self):
        a, b, proxy, client, uid, session = yield self.opSites("k", 0, timeout=1.5)
        leaving = _sendAndHangUp(_port(a), rawGet(b"op?now=k:5&delay=0.3", uid), 0.8)
        yield sleep(0.15)
        proxy.stall(UPSTREAM)
        yield sleep(0.35)  # R1's write held at 0.3 s
        r2 = self.get(client, a, b"op?now=k:0&delay=2.2&end=fail", sync=False)
        yield leaving  # R1 fails at 0.8 s
        yield sleep(0.1)
        proxy.cut()
        proxy.release(UPSTREAM)
        there = _withCookie(b, uid)
        seen = yield self.bWrites(there, b, client, a, b"now=k:7")
        self.assertEqual(seen["values"], {"k": 0})  # R2's change, running
        code, _ = yield r2
        self.flushLoggedErrors(StoreUnavailable)
        self.assertEqual((code, self.storedValues(uid)), (500, {"k": 7}))
        yield self.ends(a, b, client, there, uid, {"k": 7})


class ReadOfTheLandedValueTests(_OpCase):
    """
    R1 sets k=5 and its client leaves with the write in flight; the write reaches Redis, but
    the connection is cut before its answer. R2, begun from the copy (k=5), sets k=0, to fail
    later. A GET on A reads Redis (k=5). R2 fails: it puts back 5, what A read (it put back
    0, and the next GET on A wrote 0 as its change).
    """

    @defer.inlineCallbacks
    def test_failurePutsBackWhatTheReadFound(self):
        a, b, proxy, client, uid, session = yield self.opSites("k", 0, timeout=1.5)
        leaving = _sendAndHangUp(_port(a), rawGet(b"op?now=k:5&delay=0.3", uid), 0.8)
        yield sleep(0.15)
        proxy.stall(DOWNSTREAM)
        yield sleep(0.35)  # R1's write applied at 0.3 s, its answer held
        r2 = self.get(client, a, b"op?now=k:0&delay=1.4&end=fail", sync=False)
        yield leaving  # R1 fails at 0.8 s
        yield sleep(0.1)
        proxy.cut()
        proxy.release(DOWNSTREAM)
        yield sleep(0.2)
        self.assertEqual(self.storedValues(uid), {"k": 5})
        code, seen = yield self.get(client, a, b"get", sync=False)  # reads: k=5
        self.assertEqual((code, seen["values"]), (200, {"k": 0}))  # R2's change, running
        code, _ = yield r2
        self.flushLoggedErrors(StoreUnavailable)
        self.assertEqual((code, self.storedValues(uid)), (500, {"k": 5}))
        yield self.ends(a, b, client, _withCookie(b, uid), uid, {"k": 5})


class TwoFailedWritesTests(_OpCase):
    """
    R1 sets k=5 (its write W1 sent at 0.3 s); R3 begins from the copy (k=5) and sets k=6 (W3
    sent at 0.45 s); R2 begins (k=6) and sets k=0, to fail later. R3's client leaves, then
    R1's, then R2 fails, and the connection is cut. Nothing of theirs stays in A's copy but
    what Redis holds: 6 when both writes landed, 0 when both were lost (A's copy held R1's
    5, and the next GET on A wrote it).
    """

    @defer.inlineCallbacks
    def twoLeave(self, direction):
        a, b, proxy, client, uid, session = yield self.opSites("k", 0, timeout=1.5)
        port = _port(a)
        r1 = _sendAndHangUp(port, rawGet(b"op?now=k:5&delay=0.3", uid), 0.9)
        yield sleep(0.15)
        proxy.stall(direction)
        yield sleep(0.2)
        r3 = _sendAndHangUp(port, rawGet(b"op?now=k:6&delay=0.1", uid), 0.45)
        yield sleep(0.2)
        r2 = self.get(client, a, b"op?now=k:0&delay=0.6&end=fail", sync=False)
        yield r3  # R3's client leaves at 0.8 s
        yield r1  # R1's at 0.9 s
        code, _ = yield r2  # R2 fails at 1.15 s
        proxy.cut()
        proxy.release(direction)
        yield sleep(0.3)
        self.flushLoggedErrors(StoreUnavailable)
        return a, b, client, _withCookie(b, uid), uid, code

    @defer.inlineCallbacks
    def test_bothLanded(self):
        a, b, client, there, uid, code = yield self.twoLeave(DOWNSTREAM)
        self.assertEqual((code, self.storedValues(uid)), (500, {"k": 6}))
        yield self.ends(a, b, client, there, uid, {"k": 6})

    @defer.inlineCallbacks
    def test_bothLost(self):
        a, b, client, there, uid, code = yield self.twoLeave(UPSTREAM)
        self.assertEqual((code, self.storedValues(uid)), (500, {"k": 0}))
        yield self.ends(a, b, client, there, uid, {"k": 0})


class EarlierRequestTests(_OpCase):
    """
    R0 begins first (k=0). R1 sets k=5; its write, sent at 0.35 s, moves R0's baseline to 5.
    At 0.5 s R0 sets k back to 0 (from a callback). R1's client leaves at 0.85 s with its
    write in flight, which lands: R0's change is written after it (its 200 left Redis at 5).
    """

    @defer.inlineCallbacks
    def earlierChangeBack(self, answered):
        a, b, proxy, client, uid, session = yield self.opSites("k", 0, timeout=1.5)
        a.resource.putChild(b"later", _Later())
        r0 = self.get(client, a, b"later?set=k:0&after=0.5&delay=1.2", sync=False)
        yield sleep(0.05)
        leaving = _sendAndHangUp(_port(a), rawGet(b"op?now=k:5&delay=0.3", uid), 0.8)
        yield sleep(0.1)
        proxy.stall(DOWNSTREAM)
        yield leaving
        yield sleep(0.1)
        if not answered:
            # Applied, and its answer lost: the outcome is not known.
            proxy.cut()
        proxy.release(DOWNSTREAM)
        code, seen = yield r0
        self.flushLoggedErrors(StoreUnavailable)
        self.assertEqual(seen["values"], {"k": 0})
        self.assertEqual((code, self.storedValues(uid)), (200, {"k": 0}))
        yield self.ends(a, b, client, _withCookie(b, uid), uid, {"k": 0})

    def test_earlierChangeBackWrittenUnderTheLandedWrite(self):
        return self.earlierChangeBack(answered=True)

    def test_earlierChangeBackWrittenUnderAWriteThatMayHaveLanded(self):
        return self.earlierChangeBack(answered=False)


class LandedThenReadTests(_OpCase):
    """
    R1 sets k=5, its client leaves with the write in flight; R2 (begun from the copy, k=5)
    sets k=0, to fail later. R1's write lands and is answered. B writes k=7, and a GET on A
    reads it. R2 fails: it puts back 7, what A read (it put back 5, which the next GET on A
    wrote).
    """

    @defer.inlineCallbacks
    def test_failureAfterLandingPutsBackWhatTheReadFound(self):
        a, b, proxy, client, uid, session = yield self.opSites("k", 0, timeout=1.5)
        leaving = _sendAndHangUp(_port(a), rawGet(b"op?now=k:5&delay=0.3", uid), 0.8)
        yield sleep(0.15)
        proxy.stall(DOWNSTREAM)
        yield sleep(0.35)
        r2 = self.get(client, a, b"op?now=k:0&delay=2.0&end=fail", sync=False)
        yield leaving  # R1 fails at 0.8 s
        yield sleep(0.1)
        proxy.release(DOWNSTREAM)  # R1's write answered: landed
        yield sleep(0.1)
        self.assertEqual(self.storedValues(uid), {"k": 5})
        there = _withCookie(b, uid)
        seen = yield self.bWrites(there, b, client, a, b"now=k:7")
        self.assertEqual(seen["values"], {"k": 0})  # R2's change, running
        code, _ = yield r2
        self.assertEqual((code, self.storedValues(uid)), (500, {"k": 7}))
        yield self.ends(a, b, client, there, uid, {"k": 7})


class LaterChangeAfterTheFailureTests(_OpCase):
    """
    R1 sets k=5, its client leaves with the write in flight. R2, begun from the copy (k=5),
    changes nothing while rendering; after R1's failure it sets k=0 (from a callback), and
    R1's write lands: R2's change is written after it (its 200 left Redis at 5).
    """

    @defer.inlineCallbacks
    def test_laterChangeBackAfterTheFailure(self):
        a, b, proxy, client, uid, session = yield self.opSites("k", 0, timeout=1.5)
        a.resource.putChild(b"later", _Later())
        leaving = _sendAndHangUp(_port(a), rawGet(b"op?now=k:5&delay=0.3", uid), 0.8)
        yield sleep(0.15)
        proxy.stall(DOWNSTREAM)
        yield sleep(0.35)
        r2 = self.get(client, a, b"later?set=k:0&after=0.5&delay=0.8", sync=False)
        yield leaving  # R1 fails at 0.8 s, R2 sets k=0 at 1.0 s
        yield sleep(0.3)
        proxy.release(DOWNSTREAM)
        code, seen = yield r2
        self.assertEqual(seen["values"], {"k": 0})
        self.assertEqual((code, self.storedValues(uid)), (200, {"k": 0}))
        yield self.ends(a, b, client, _withCookie(b, uid), uid, {"k": 0})


class FailedRiderThenLostWriteTests(_OpCase):
    """
    R0 takes the session and changes nothing while rendering; R1 sets k=5 while rendering,
    to fail later. R0 finishes: its write carries k=5 (a change made while several requests
    use the session counts as each one's), and is lost (a 503). R1 fails (a 500) while that
    write is out. Nothing of theirs is in Redis, and A's copy must not keep k=5: R0's revert
    left it for R1 to write (R1 had seen it changed), but R1 was gone, and the next GET on A
    wrote it.
    """

    @defer.inlineCallbacks
    def test_riderFailsThenTheWriteIsLost(self):
        a, b, proxy, client, uid, session = yield self.opSites("k", 0, timeout=0.6)
        r0 = self.get(client, a, b"op?delay=0.3", sync=False)
        yield sleep(0.1)
        r1 = self.get(client, a, b"op?now=k:5&delay=0.4&end=fail", sync=False)
        yield sleep(0.1)
        proxy.stall(UPSTREAM)
        code0, _ = yield r0  # R0's write (k=5) sent at 0.3 s, lost: a 503 at 0.9 s
        code1, _ = yield r1  # R1 fails at 0.5 s
        yield proxy.reset()
        yield a.store.load([b"warm-up"])
        self.flushLoggedErrors(StoreUnavailable)
        self.assertEqual((code0, code1, self.storedValues(uid)), (503, 500, {"k": 0}))
        self.assertEqual([c.users for c in a._flow.copies.values()], [[]])
        yield self.ends(a, b, client, _withCookie(b, uid), uid, {"k": 0})


class CallbackFailureBesideAFinishedWriteTests(_OpCase):
    """
    R_F takes the session and changes nothing while rendering. R_A sets k=1; its render()
    returns its body, so its one write is sent with the finish, over a slow link. While it
    is out, R_F sets j=2 from a callback and fails. j=2 is R_F's alone and goes back: R_F's
    revert left it for R_A to write (R_A's baseline lacks it), but R_A had no write left,
    and the next GET on A wrote it.
    """

    @defer.inlineCallbacks
    def test_failedCallbackValueNotWrittenByTheNextRequest(self):
        a, b, proxy, client, uid, session = yield self.opSites("k", 0, timeout=2)
        a.resource.putChild(b"latefail", _LateFail())
        failing = self.get(client, a, b"latefail?key=j&value=2&delay=0.25", sync=False)
        yield sleep(0.05)
        proxy.latency(400, direction=UPSTREAM)
        writing = self.get(client, a, b"set?key=k&value=1", sync=False)
        code, _ = yield failing
        self.assertEqual(code, 500)
        code, _ = yield writing
        self.assertEqual(code, 200)
        yield proxy.reset()
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual([c.users for c in a._flow.copies.values()], [[]])
        self.assertEqual(self.storedValues(uid), {"k": 1})
        yield self.ends(a, b, client, _withCookie(b, uid), uid, {"k": 1})


class RiderOfAStaleIdWriteTests(_OpCase):
    """
    Y takes the session under id U and changes nothing. Another tab logs in (renew: U ->
    U2). R, under U2, sets j=1 while rendering. Y finishes: its write, to U, carried j=1 (a
    change Y saw made) and was refused (U is dead after the login): Y's 409 is right. But R,
    which finished while that write was out, had nothing left to write and answered as that
    write did, a 409, though it used the session under its live id after the rename: j=1 was
    nowhere. Now Y's write is refused before it is sent, and R writes its change.
    """

    @defer.inlineCallbacks
    def test_riderOfARefusedStaleWriteIsWritten(self):
        a, b, proxy, client, uid, session = yield self.opSites("k", 0, timeout=2)
        stale = _withCookie(a, uid)
        y = self.get(stale, a, b"op?delay=0.5", sync=False)  # Y: under U, ends at 0.5 s
        yield sleep(0.1)
        code, state = yield self.get(client, a, b"renew")  # U -> U2, at 0.1 s
        self.assertEqual(code, 200)
        new = state["session"]
        r = self.get(client, a, b"op?now=j:1&delay=0.5", sync=False)  # R: under U2
        yield sleep(0.2)
        proxy.stall(DOWNSTREAM)  # answers held from 0.3 s
        yield sleep(0.6)
        proxy.release(DOWNSTREAM)
        codeY, _ = yield y
        codeR, _ = yield r
        self.flushLoggedErrors(SessionEnded)
        self.assertEqual(codeY, 409)
        self.assertEqual((codeR, self.storedValues(new)), (200, {"k": 0, "j": 1}))
        yield self.ends(a, b, client, _withCookie(b, new), new, {"k": 0, "j": 1})

    @defer.inlineCallbacks
    def test_riderWithItsOwnWriteLanded(self):
        # R also sets m=2 from a callback after Y's write was sent: its own write (m=2, to
        # U2) landed, yet it answered 409, with j=1 lost and m=2 in Redis.
        a, b, proxy, client, uid, session = yield self.opSites("k", 0, timeout=2)
        a.resource.putChild(b"later", _Later())
        stale = _withCookie(a, uid)
        y = self.get(stale, a, b"op?delay=0.5", sync=False)
        yield sleep(0.1)
        code, state = yield self.get(client, a, b"renew")
        new = state["session"]
        r = self.get(client, a, b"later?now=j:1&set=m:2&after=0.45&delay=0.5", sync=False)
        yield sleep(0.2)
        proxy.stall(DOWNSTREAM)
        yield sleep(0.6)
        proxy.release(DOWNSTREAM)
        codeY, _ = yield y
        codeR, _ = yield r
        self.flushLoggedErrors(SessionEnded)
        self.assertEqual(
            (codeY, codeR, self.storedValues(new)), (409, 200, {"k": 0, "j": 1, "m": 2})
        )
