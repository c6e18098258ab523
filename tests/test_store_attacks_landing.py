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
from tests.test_store_attacks_renew import _port, _sendAndHangUp
from tests.test_store_attacks_strays import _OpCase
from tests.test_web import Client
from txsession.redis import RedisStore
from txsession.store import StoreUnavailable


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
