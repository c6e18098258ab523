"""
Attacks on renewals and writes whose answer is lost, and on a request's held response,
against a real C{redis-server} (README.md, "The consistency model"): as in
C{test_store_attacks}, a class named C{...DefectTests} reproduces a defect the attack found,
and failed on the code before its fix; C{...HoldsTests} are attacks the code withstood.
"""

from __future__ import annotations

import json

from twisted.internet import defer, reactor
from twisted.internet.protocol import ClientCreator, Protocol
from twisted.python.failure import Failure
from twisted.web import resource, server

import txsession
from tests._proxy import DOWNSTREAM, UPSTREAM
from tests.test_store import sleep
from tests.test_store_attacks import (
    AttackTestCase,
    _RenewAndSet,
    _withCookie,
    rawExchange,
    rawGet,
)
from tests.test_web import Client
from txsession.store import StoreUnavailable


class _RenewUser(resource.Resource):
    """C{/renewuser?user=U}: renews the request's session bound to U, sets key "who"."""

    isLeaf = True

    def render_GET(self, request):
        user = request.args[b"user"][0].decode()
        session = txsession.renewSession(request, user=user)
        session.sessionNamespaces["who"] = user
        return json.dumps({"session": session.uid.decode()}).encode()


class _OthersOut(resource.Resource):
    """C{/others?user=U}: "log out everywhere else" for U, keeping this request's session."""

    isLeaf = True

    def render_GET(self, request):
        user = request.args[b"user"][0].decode()
        session = request.getSession()
        d = request.site.logoutUser(user, keep=session)

        def done(n):
            request.write(json.dumps({"ended": n}).encode())
            request.finish()

        d.addCallback(done)
        d.addErrback(request.processingFailed)
        return server.NOT_DONE_YET


class _CallbackChunkFail(resource.Resource):
    """
    C{/cbchunkfail?key=K}: after rendering (from a callback), sets K, streams one chunk (the
    session write goes out and the chunk is held), then fails at once, while that write is
    in flight.
    """

    isLeaf = True

    def render_GET(self, request):
        key = request.args[b"key"][0].decode()
        session = request.getSession()

        def later():
            session.sessionNamespaces[key] = "streamed"
            request.write(b"{")
            try:
                raise RuntimeError("the streaming page failed after its first chunk")
            except RuntimeError:
                request.processingFailed(Failure())

        reactor.callLater(0.01, later)
        return server.NOT_DONE_YET


def _port(site):
    return int(site.base.rsplit(b":", 1)[1].strip(b"/"))


@defer.inlineCallbacks
def _sendAndHangUp(port, raw, after):
    """Send C{raw} on a new connection and abort it C{after} seconds later."""
    proto = yield ClientCreator(reactor, Protocol).connectTCP("127.0.0.1", port)
    proto.transport.write(raw)
    yield sleep(after)
    proto.transport.abortConnection()
    yield sleep(0.05)


class _Case(AttackTestCase):
    def dataKeys(self):
        """Keys holding a session (not a rename's tombstone, not a user's set)."""
        return [k for k in self.redis.keys() if b"m:t" in self.redis.hgetall(k)]


class UncertainRenewHoldsTests(_Case):
    @defer.inlineCallbacks
    def renewsLost(self, times):
        a, proxy = yield self.proxied()
        a.resource.putChild(b"renewset", _RenewAndSet())
        client = Client(a.base)
        _, state = yield self.get(client, a, b"get")
        old = state["session"]
        for i in range(times):
            proxy.stall(DOWNSTREAM)
            code, _ = yield self.get(client, a, b"renewset?key=k%d&value=1" % i)
            self.assertEqual(code, 503)
            self.flushLoggedErrors(StoreUnavailable)
            yield proxy.reset()
            # The timed-out connection was dropped: connect again before the next stall.
            yield a.store.load([b"warm-up"])
        self.assertEqual(len(self.redis.keys()), times)
        self.assertEqual(client.session(), old.encode())
        return a, proxy, client, old

    @defer.inlineCallbacks
    def test_threeFailedRenewalsThenLogout(self):
        """Three failed renewals in a row (each applied under its own new id), then a logout."""
        a, proxy, client, old = yield self.renewsLost(3)
        copy = a._flow.copies[a.sessions[old.encode()]]
        self.assertEqual(len(copy.uncertain), 3)
        code, _ = yield self.get(client, a, b"logout")
        self.assertEqual(code, 200)
        self.assertEqual(self.redis.keys(), [])

    @defer.inlineCallbacks
    def test_failedRenewalsThenWriteThenRenewThenLogout(self):
        """Two lost renewals, a write under the old id, a renewal that works, a logout."""
        a, proxy, client, old = yield self.renewsLost(2)
        code, _ = yield self.get(client, a, b"set?key=j&value=2")
        self.assertEqual(code, 200)
        self.assertEqual(self.storedValues(old), {"j": 2})
        code, state = yield self.get(client, a, b"renew")
        self.assertEqual(code, 200)
        self.assertNotEqual(state["session"], old)
        self.assertEqual(self.storedValues(state["session"]), {"j": 2})
        code, _ = yield self.get(client, a, b"logout")
        self.assertEqual(code, 200)
        # A rename's tombstone (m:f only) may stay for the timeout; no session data may.
        self.assertEqual(self.dataKeys(), [])

    @defer.inlineCallbacks
    def test_controlRenewThenLogoutLeavesOnlyATombstone(self):
        """Control: with no fault, set, renew, logout leaves only the tombstone."""
        a = self.makeSite()
        client = Client(a.base)
        yield self.get(client, a, b"set?key=j&value=2")
        yield self.get(client, a, b"renew")
        yield self.get(client, a, b"logout")
        self.assertEqual(self.dataKeys(), [])
        self.assertEqual(len(self.redis.keys()), 1)

    @defer.inlineCallbacks
    def test_failedRenewalThenAnotherProcessServesNothing(self):
        """After the lost renewal and a logout, no process serves the old id or data."""
        a, proxy, client, old = yield self.renewsLost(1)
        b = self.makeSite()
        code, _ = yield self.get(client, a, b"logout")
        self.assertEqual(code, 200)
        _, seen = yield self.get(_withCookie(b, old), b, b"get")
        self.assertNotEqual(seen["session"], old)
        self.assertEqual(seen["values"], {})

    @defer.inlineCallbacks
    def test_failedRenewalCutConnection(self):
        """
        The renewal's connection is cut (not timed out) after the write reached Redis: a
        503, and a logout still deletes what it may have stored.
        """
        a, proxy = yield self.proxied(timeout=2)
        a.resource.putChild(b"renewset", _RenewAndSet())
        client = Client(a.base)
        yield self.get(client, a, b"get")
        proxy.stall(DOWNSTREAM)
        pending = self.get(client, a, b"renewset?key=k&value=1")
        for _ in range(100):
            if self.redis.keys():
                break
            yield sleep(0.01)
        proxy.cut()
        code, _ = yield pending
        self.assertEqual(code, 503)
        self.flushLoggedErrors(StoreUnavailable)
        yield proxy.reset()
        self.assertEqual(len(self.redis.keys()), 1)
        code, _ = yield self.get(client, a, b"logout")
        self.assertEqual(code, 200)
        self.assertEqual(self.redis.keys(), [])

    @defer.inlineCallbacks
    def test_failedRenewalWhileAnotherRequestWrites(self):
        """
        A slow request R1 on the (never stored) session changes a key; R2 renews the session
        and its create goes out; R1's write follows it (same connection); Redis applies both
        and neither answer arrives: two 503s. A logout then leaves nothing in Redis.
        """
        a, proxy = yield self.proxied()
        a.resource.putChild(b"renewset", _RenewAndSet())
        client = Client(a.base)
        _, state = yield self.get(client, a, b"get")
        old = state["session"]
        slow = self.get(client, a, b"set?key=a&value=1&delay=0.15")
        yield sleep(0.05)
        proxy.stall(DOWNSTREAM)
        renewing = self.get(client, a, b"renewset?key=k&value=1")
        codes = yield defer.gatherResults([slow, renewing])
        self.flushLoggedErrors(StoreUnavailable)
        yield proxy.reset()
        self.assertEqual([c for c, _ in codes], [503, 503])
        self.assertEqual(client.session(), old.encode())
        code, _ = yield self.get(client, a, b"logout")
        self.assertEqual(code, 200)
        self.assertEqual(self.redis.keys(), [])

    @defer.inlineCallbacks
    def test_logoutUserKeepAfterFailedRenewal(self):
        """
        "Log out everywhere else" on the session whose login renewal was lost: the other
        session of the user ends, and so does the lost login's (no client holds its id);
        the session's own logout then leaves nothing.
        """
        a, proxy = yield self.proxied()
        a.resource.putChild(b"renewuser", _RenewUser())
        a.resource.putChild(b"others", _OthersOut())
        other = Client(a.base)
        yield self.get(other, a, b"get")
        code, st = yield self.get(other, a, b"renewuser?user=alice")
        self.assertEqual(code, 200)
        otherUid = st["session"]
        client = Client(a.base)
        _, state = yield self.get(client, a, b"get")
        proxy.stall(DOWNSTREAM)
        code, _ = yield self.get(client, a, b"renewuser?user=alice")
        self.assertEqual(code, 503)
        self.flushLoggedErrors(StoreUnavailable)
        yield proxy.reset()
        self.assertEqual(len(self.redis.keys()), 3)  # other, the lost one, alice's set
        code, answer = yield self.get(client, a, b"others?user=alice")
        self.assertEqual(code, 200)
        self.assertEqual(answer, {"ended": 2})
        self.assertEqual(self.storedValues(otherUid), {})
        code, _ = yield self.get(client, a, b"logout")
        self.assertEqual(code, 200)
        self.assertEqual(self.dataKeys(), [])


class UncertainRenameTests(_Case):
    @defer.inlineCallbacks
    def renameLost(self):
        """
        A session stored under OLD is renewed (a rename); the rename reaches Redis and its
        answer is lost: a 503. The client keeps OLD.
        """
        a, proxy = yield self.proxied()
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")
        old = state["session"]
        proxy.stall(DOWNSTREAM)
        code, _ = yield self.get(client, a, b"renew")
        self.assertEqual(code, 503)
        self.flushLoggedErrors(StoreUnavailable)
        yield proxy.reset()
        self.assertEqual(client.session(), old.encode())
        return a, client, old

    @defer.inlineCallbacks
    def test_oldIdConfersNothingAfterALostRename(self):
        """
        README (Renewing): a rename whose answer was lost may have been applied; the old id
        confers nothing then, and the client's next request gets a new, empty session.
        """
        a, client, old = yield self.renameLost()
        self.assertEqual(len(self.dataKeys()), 1)
        code, seen = yield self.get(client, a, b"get")
        self.assertEqual(code, 200)
        self.assertNotEqual(seen["session"], old)
        self.assertEqual(seen["values"], {})

    @defer.inlineCallbacks
    def test_logoutThereDeletesTheLostRename(self):
        """
        README (Renewing): the process that sent the lost rename keeps its new id with the
        copy, and a logout of the session there (before the copy finds the tombstone)
        deletes it too. It used to keep only a create's new id.
        """
        a, client, old = yield self.renameLost()
        session = a.sessions[old.encode()]
        session.expire()
        # Until the deletion has answered (Redis may show it done first): a failure fails
        # the test, and the store is not closed under a command in flight.
        deleting = a._flow.logouts[session].wait()
        if deleting is not None:
            yield deleting
        self.assertEqual(self.dataKeys(), [])


class HangUpWhileHeldDefectTests(AttackTestCase):
    @defer.inlineCallbacks
    def test_clientLeavesWhileItsWriteIsInFlight(self):
        """
        README: a request uses "a copy that Redis has not invalidated since this process
        last read or wrote it" -- the copy is what this process last wrote; "Redis is the
        truth".

        A request changes k (1 -> 2) and its write goes out (slow link); the client hangs up
        before the answer, so the request fails and this process's copy goes back to k=1.
        The write then succeeded: Redis holds 2, and the tracking stamp stayed valid (a
        write keeps the writer's stamp), so this process served k=1 from its copy without
        reading, while every other process read 2. Now the request's failure waits for its
        write's answer, and the copy keeps what a write that landed carried.
        """
        a, proxy = yield self.proxied(timeout=2)
        b = self.makeSite()
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")
        uid = state["session"]
        proxy.latency(300, direction=UPSTREAM)
        yield _sendAndHangUp(_port(a), rawGet(b"set?key=k&value=2&delay=0.02", uid), 0.15)
        yield sleep(0.4)
        yield proxy.reset()
        self.assertEqual(self.storedValues(uid), {"k": 2})
        _, there = yield self.get(_withCookie(b, uid), b, b"get")
        _, here = yield self.get(client, a, b"get")
        self.assertEqual(there["values"], {"k": 2})
        self.assertEqual(here["values"], there["values"], "this process serves a stale copy")


class StreamingFailHoldsTests(AttackTestCase):
    @defer.inlineCallbacks
    def test_callbackChunkThenFailureWhileTheWriteIsInFlight(self):
        """
        README, the 500 row: a streaming page that fails after a chunk went out, from a
        callback, is answered as Twisted answers it (the chunk, then the error page, on a
        response that started as a 200), and that chunk's write is in. The next request on
        the connection is answered; no change record stays pinned.
        """
        a, proxy = yield self.proxied(timeout=2)
        a.resource.putChild(b"cbchunkfail", _CallbackChunkFail())
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")
        uid = state["session"]
        proxy.latency(100)
        received = yield rawExchange(
            _port(a), [rawGet(b"cbchunkfail?key=s", uid), rawGet(b"get", uid)], wait=2
        )
        yield proxy.reset()
        self.flushLoggedErrors(RuntimeError)
        self.assertTrue(received.startswith(b"HTTP/1.1 200"), received[:80])
        self.assertEqual(received.count(b"HTTP/1.1 "), 2, received)
        self.assertEqual(self.storedValues(uid), {"k": 1, "s": "streamed"})
        self.assertEqual([c.users for c in a._flow.copies.values()], [[]])

    @defer.inlineCallbacks
    def test_callbackChunkFailsAndItsWriteFails(self):
        """
        As above, but the chunk's write never reaches Redis (a stall, then a timeout): the
        held chunk never goes out; a clean 503, nothing written, the key put back.
        """
        a, proxy = yield self.proxied()
        a.resource.putChild(b"cbchunkfail", _CallbackChunkFail())
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")
        uid = state["session"]
        proxy.stall(UPSTREAM)
        code, body = yield self.get(client, a, b"cbchunkfail?key=s")
        yield proxy.reset()
        self.flushLoggedErrors(RuntimeError, StoreUnavailable)
        self.assertEqual(code, 503)
        self.assertEqual(self.storedValues(uid), {"k": 1})
        session = a.sessions[uid.encode()]
        self.assertNotIn("s", session.sessionNamespaces)


class HangUpWhileHeldStreamingDefectTests(_Case):
    @defer.inlineCallbacks
    def test_callbackChunkFailsAndClientLeaves(self):
        """
        The page streams a chunk (write in flight), fails, and the client leaves before the
        write answers: no copy stays pinned, and this process serves what Redis holds, the
        chunk's write included (it used to serve its reverted copy, as in
        HangUpWhileHeldDefectTests).
        """
        a, proxy = yield self.proxied(timeout=2)
        a.resource.putChild(b"cbchunkfail", _CallbackChunkFail())
        b = self.makeSite()
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")
        uid = state["session"]
        proxy.latency(300, direction=UPSTREAM)
        yield _sendAndHangUp(_port(a), rawGet(b"cbchunkfail?key=s", uid), 0.1)
        yield sleep(0.4)
        yield proxy.reset()
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual([c.users for c in a._flow.copies.values()], [[]])
        _, there = yield self.get(_withCookie(b, uid), b, b"get")
        _, here = yield self.get(client, a, b"get")
        self.assertEqual(here["values"], there["values"])


class NoRawIdInLogsHoldsTests(_Case):
    @defer.inlineCallbacks
    def test_failurePathsLogNoSessionId(self):
        """
        DESIGN rule 9: no raw session id in a log line. Lost renewals (create and rename), a
        logout after them, a client leaving while its write is held, and a streaming page
        failing with its write in flight: every id the site made stays out of the log.
        """
        a, proxy = yield self.proxied(timeout=0.3)
        a.resource.putChild(b"renewset", _RenewAndSet())
        a.resource.putChild(b"cbchunkfail", _CallbackChunkFail())
        made = []
        mkuid = a._mkuid
        a._mkuid = lambda: made.append(mkuid()) or made[-1]
        client = Client(a.base)
        _, state = yield self.get(client, a, b"get")
        proxy.stall(DOWNSTREAM)
        yield self.get(client, a, b"renewset?key=k&value=1")
        yield proxy.reset()
        yield a.store.load([b"warm-up"])
        _, state = yield self.get(client, a, b"set?key=j&value=1")
        uid = state["session"]
        proxy.stall(DOWNSTREAM)
        yield self.get(client, a, b"renew")
        yield proxy.reset()
        yield a.store.load([b"warm-up"])
        other = Client(a.base)
        _, st = yield self.get(other, a, b"set?key=x&value=1")
        proxy.latency(200, direction=UPSTREAM)
        yield _sendAndHangUp(_port(a), rawGet(b"cbchunkfail?key=s", st["session"]), 0.05)
        yield _sendAndHangUp(_port(a), rawGet(b"set?key=x&value=3&delay=0.01", st["session"]), 0.05)
        yield sleep(0.4)
        yield proxy.reset()
        yield self.get(client, a, b"logout")
        yield self.get(other, a, b"logout")
        failures = self.flushLoggedErrors()
        text = self.loggedText() + "".join(f.getTraceback() for f in failures)
        self.assertTrue(made)
        for name in [*made, uid]:
            self.assertNotIn(name.decode() if isinstance(name, bytes) else name, text)


class _Sessions(resource.Resource):
    """C{/sessions?user=U}: how many sessions userSessions lists for U."""

    isLeaf = True

    def render_GET(self, request):
        user = request.args[b"user"][0].decode()
        d = request.site.userSessions(user)

        def done(found):
            request.write(json.dumps(len(found)).encode())
            request.finish()

        d.addCallback(done)
        return server.NOT_DONE_YET


class GhostUserSessionDefectTests(_Case):
    @defer.inlineCallbacks
    def test_logOutEverywhereElseEndsALostLogin(self):
        """
        README: userSessions lists "one dict per live session of the user";
        logoutUser(user, keep=session) "ends every other session of the user".

        A login (renewSession(user="alice")) on a session never stored is lost (503, applied
        under U1, bound to alice). The user logs in again, successfully (U2). userSessions now
        lists two sessions of alice; "log out everywhere else" from U2 kept U1 as well,
        because Site.logoutUser kept every id the copy may be stored under, the lost
        login's among them: the ghost, which no cookie reaches, stayed listed.
        """
        a, proxy = yield self.proxied()
        a.resource.putChild(b"renewuser", _RenewUser())
        a.resource.putChild(b"others", _OthersOut())
        a.resource.putChild(b"sessions", _Sessions())
        client = Client(a.base)
        yield self.get(client, a, b"get")
        proxy.stall(DOWNSTREAM)
        code, _ = yield self.get(client, a, b"renewuser?user=alice")
        self.assertEqual(code, 503)
        self.flushLoggedErrors(StoreUnavailable)
        yield proxy.reset()
        yield a.store.load([b"warm-up"])
        code, _ = yield self.get(client, a, b"renewuser?user=alice")
        self.assertEqual(code, 200)
        code, answer = yield self.get(client, a, b"others?user=alice")
        self.assertEqual(code, 200)
        code, listed = yield self.get(client, a, b"sessions?user=alice")
        self.assertEqual(int(listed), 1, "a session of alice outlived 'log out everywhere else'")


class LostCreateLoggedOutDefectTests(AttackTestCase):
    @defer.inlineCallbacks
    def test_lostCreateThenLogoutElsewhere(self):
        """
        README: after a logout no process serves the session. A session made on A whose
        first write was applied but not answered (a 503) is logged out on B. A's next read
        of it found nothing, took that to mean the write had never landed, and served its
        copy again (found by the model test's soak). Now a copy whose create may have been
        applied, found absent, is over.
        """
        a, proxy = yield self.proxied()
        b = self.makeSite()
        client = Client(a.base)
        _, state = yield self.get(client, a, b"get")
        uid = state["session"]
        proxy.stall(DOWNSTREAM)
        code, _ = yield self.get(client, a, b"set?key=k&value=1")
        self.assertEqual(code, 503)
        self.flushLoggedErrors(StoreUnavailable)
        yield proxy.reset()
        self.assertEqual(self.storedValues(uid), {"k": 1})
        code, _ = yield self.get(_withCookie(b, uid), b, b"logout")
        self.assertEqual(code, 200)
        _, seen = yield self.get(client, a, b"get")
        self.assertNotEqual(seen["session"], uid)
        self.assertEqual(seen["values"], {})


class _RenewThenLater(resource.Resource):
    """
    C{/renewthenlater?delay=S}: renews while rendering (a login) and finishes, its response
    held while the rename is written; renews again S seconds later, from a callback.
    """

    isLeaf = True

    def render_GET(self, request):
        session = txsession.renewSession(request)
        request.write(json.dumps({"session": session.uid.decode()}).encode())
        request.finish()
        delay = float(request.args[b"delay"][0])
        reactor.callLater(delay, txsession.renewSession, request)
        return server.NOT_DONE_YET


class LateRenewalDefectTests(_Case):
    """
    README: a renewal's old id "is dead for every process". A page that renews its session
    after its request is over (its client hung up, or its response went out first) renamed
    the session in its own process only: nothing wrote the rename, so that process gave the
    old id a new, empty session while every other process still served the session under
    it. Now the rename is written at once, as a change made outside any request is by
    C{site.saveSession}, and given back here when Redis does not take it.
    """

    def sessionWith(self, site, key):
        """The one session of C{site}'s that has C{key} set."""
        found = [s for s in site.sessions.values() if key in s.sessionNamespaces]
        self.assertEqual(len(found), 1)
        return found[0]

    @defer.inlineCallbacks
    def renewedLate(self, a, raw, hangUpAfter=None):
        b = self.makeSite()
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")
        old = state["session"]
        if hangUpAfter is None:
            yield rawExchange(_port(a), [raw(old)], wait=0.05)
        else:
            yield _sendAndHangUp(_port(a), raw(old), hangUpAfter)
        # The renewal runs 0.1 s after the request was sent; its write answers soon after.
        yield sleep(0.4)
        return b, old

    @defer.inlineCallbacks
    def assertRenamedEverywhere(self, a, b, old, values=None):
        values = values or {"k": 1}
        session = self.sessionWith(a, "k")
        new = session.uid.decode()
        self.assertNotEqual(new, old)
        self.assertEqual(self.storedValues(old), {})
        self.assertEqual(self.storedValues(new), values)
        self.assertEqual(len(self.dataKeys()), 1)
        for site in (a, b):
            _, there = yield self.get(_withCookie(site, old), site, b"get")
            self.assertNotEqual(there["session"], old)
            self.assertEqual(there["values"], {}, "the old id still opens the session")
        _, there = yield self.get(_withCookie(b, new), b, b"get")
        self.assertEqual(there["values"], values)

    @defer.inlineCallbacks
    def test_renewalAfterTheClientHungUpIsWritten(self):
        a = self.makeSite()
        b, old = yield self.renewedLate(a, lambda uid: rawGet(b"renew?delay=0.1", uid), 0.03)
        yield self.assertRenamedEverywhere(a, b, old)

    @defer.inlineCallbacks
    def test_renewalAfterTheResponseWentOutIsWritten(self):
        a = self.makeSite()
        b, old = yield self.renewedLate(
            a, lambda uid: rawGet(b"renew?delay=0.1&finishFirst=1", uid)
        )
        yield self.assertRenamedEverywhere(a, b, old)

    @defer.inlineCallbacks
    def test_renewalAfterTheClientHungUpGoesBackWhenRedisDoesNotTakeIt(self):
        a, proxy = yield self.proxied()
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1", sync=False)
        old = state["session"]
        b = self.makeSite()
        made = []
        mkuid = a._mkuid
        a._mkuid = lambda: made.append(mkuid()) or made[-1]
        # Nothing reaches Redis: the rename times out (0.3 s), and never ran.
        proxy.stall(UPSTREAM)
        yield _sendAndHangUp(_port(a), rawGet(b"renew?delay=0.1", old), 0.03)
        yield sleep(0.6)
        self.flushLoggedErrors(StoreUnavailable)
        yield proxy.reset()
        self.assertEqual(self.storedValues(old), {"k": 1})
        self.assertEqual(len(self.dataKeys()), 1)
        for site in (a, b):
            _, there = yield self.get(_withCookie(site, old), site, b"get", sync=site is b)
            self.assertEqual((there["session"], there["values"]), (old, {"k": 1}))
        # Logged, without the old id or the new one.
        logged = self.loggedText()
        self.assertIn("while renaming a session after its request", logged)
        self.assertEqual(len(made), 1)
        for uid in [old, made[0].decode()]:
            self.assertNotIn(uid, logged)

    @defer.inlineCallbacks
    def test_renewalWhileTheLastWriteIsInFlightIsWritten(self):
        """
        The page finished, and renews while the write sent with its finish is in flight (a
        slow link): that write was its last, so the rename is written on its own.
        """
        a, proxy = yield self.proxied(timeout=2)
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1", sync=False)
        old = state["session"]
        b = self.makeSite()
        proxy.latency(200, direction=UPSTREAM)
        yield rawExchange(
            _port(a), [rawGet(b"renew?delay=0.05&finishFirst=1&key=j&value=2", old)], wait=0.05
        )
        yield sleep(0.8)
        yield proxy.reset()
        yield self.assertRenamedEverywhere(a, b, old, {"k": 1, "j": 2})

    @defer.inlineCallbacks
    def test_twoLateRenewalsInARowBothLand(self):
        """
        Two renewals in a row after the response went out, the second bound to a user: the
        second follows the first's rename, still in flight, instead of renaming the id that
        is a tombstone by then (which Redis refused, the binding lost with it).
        """
        a = self.makeSite()
        b, old = yield self.renewedLate(
            a, lambda uid: rawGet(b"renew?delay=0.1&finishFirst=1&times=2&user=ann", uid)
        )
        yield self.assertRenamedEverywhere(a, b, old)
        mine = yield b.userSessions("ann")
        self.assertEqual(len(mine), 1)

    @defer.inlineCallbacks
    def test_renewalAfterALoginWhoseWriteIsInFlight(self):
        """
        A page renews while rendering (a login) and finishes; its response waits for the
        rename, sent over a slow link; a callback renews again meanwhile, and the response
        carries that id. That rename follows the login's, so the id the 200 gives opens the
        session, in every process.
        """
        a, proxy = yield self.proxied(timeout=2)
        a.resource.putChild(b"renewthenlater", _RenewThenLater())
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1", sync=False)
        old = state["session"]
        b = self.makeSite()
        proxy.latency(200, direction=UPSTREAM)
        received = yield rawExchange(
            _port(a), [rawGet(b"renewthenlater?delay=0.05", old)], wait=0.6
        )
        yield proxy.reset()
        self.assertTrue(received.startswith(b"HTTP/1.1 200"), received[:40])
        cookies = [
            line.split(b"=", 1)[1].split(b";")[0].decode()
            for line in received.split(b"\r\n")
            if line.lower().startswith(b"set-cookie: twisted_session=")
        ]
        self.assertEqual(cookies, [self.sessionWith(a, "k").uid.decode()])
        yield self.assertRenamedEverywhere(a, b, old)
