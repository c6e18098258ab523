"""
C{txsession.Site(sharedTimer=True)} and C{maxSessions}: the same expiry instants as Twisted's
own delayed calls (differential, on a L{Clock}), never more than one pending reactor call per
site, failures logged, the cap, collection of the cycles, and HTTP end to end.
"""

import gc
import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, reactor
from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web import resource, server
from twisted.web.test.test_web import DummyChannel
from zope.interface.verify import verifyObject

import txsession
from tests._support import assertCollected
from tests.parallel import parallelUnsafe
from tests.test_web import Client
from txsession.web import Site

_LOGGED = "trial's logged errors are shared by all threads: another thread's would be flushed"


def _sharedSite(clock, **options):
    return Site(resource.Resource(), reactor=clock, sharedTimer=True, **options)


def _siteCalls(clock):
    """
    The clock's pending calls made for sessions: all of them but the HTTP log clock's, which
    a site started by a listening port also schedules.
    """
    return [
        c
        for c in clock.getDelayedCalls()
        if c.active() and getattr(c.func, "__name__", "") != "_updateLogDateTime"
    ]


class Short(txsession.Session):
    sessionTimeout = 60


class TwistedShort(server.Session):
    sessionTimeout = 60


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("make"), st.integers(0, 1)),
        st.tuples(st.just("touch"), st.integers(0, 7)),
        st.tuples(st.just("timeout"), st.integers(0, 7), st.sampled_from([1, 30, 45.5, 2000])),
        st.tuples(st.just("logout"), st.integers(0, 7)),
        st.tuples(st.just("cancel"), st.integers(0, 7)),
        st.tuples(st.just("delay"), st.integers(0, 7), st.sampled_from([-50, 0.25, 100])),
        st.tuples(
            st.just("advance"),
            st.sampled_from([0, 0.1, 0.7, 1, 10, 29.9, 30, 59.5, 60, 300, 899.9, 900, 1000]),
        ),
    ),
    max_size=40,
)


class World:
    """
    One side of the differential: a site on its own clock, its sessions by index, and the
    indices whose expiry ran.
    """

    def __init__(self, site, clock, shortFactory):
        self.site, self.clock, self.short = site, clock, shortFactory
        self.sessions = []
        self.ended = []

    def make(self, short):
        if short:
            self.site.sessionFactory = self.short
        session = self.site.makeSession()
        index = len(self.sessions)
        session.notifyOnExpire(lambda: self.ended.append(index))
        self.sessions.append(session)

    def apply(self, op):
        name = op[0]
        if name == "make":
            return self.make(op[1])
        if name == "advance":
            return self.clock.advance(op[1])
        if not self.sessions:
            return None
        session = self.sessions[op[1] % len(self.sessions)]
        if name == "touch":
            session.touch()
        elif name == "timeout":
            session.sessionTimeout = op[2]
            session.touch()
        elif name == "logout":
            session.expire()
        elif name == "cancel":
            session._expireCall.cancel()
        elif name == "delay":
            session._expireCall.delay(op[2])

    def observe(self):
        return (
            sorted(self.ended),
            sorted(i for i, s in enumerate(self.sessions) if self.site.sessions.get(s.uid) is s),
            [_call(s._expireCall) for s in self.sessions],
            [s.lastModified for s in self.sessions],
        )


def _call(call):
    return None if call is None else (call.getTime(), call.active())


def _outcome(world, op):
    try:
        world.apply(op)
    except Exception as e:
        return type(e)
    return None


class SharedTimerDifferentialTests(unittest.SynchronousTestCase):
    @parallelUnsafe("hypothesis drives this test: its own runs are not made to share threads")
    @given(OPERATIONS)
    def test_sameInstantsAsTwisted(self, ops):
        """
        The same sessions expire at the same instants on Twisted's Site with its own
        sessions and on a shared-timer site; their calls agree on C{getTime()} and
        C{active()}; the site never has more than one reactor call, none when nothing waits.
        """
        twistedClock, ourClock = Clock(), Clock()
        twisted = World(
            server.Site(resource.Resource(), reactor=twistedClock), twistedClock, TwistedShort
        )
        ours = World(_sharedSite(ourClock), ourClock, Short)
        for op in ops:
            self.assertEqual(_outcome(twisted, op), _outcome(ours, op), op)
            self.assertEqual(twisted.observe(), ours.observe(), op)
            pending = _siteCalls(ourClock)
            self.assertLessEqual(len(pending), 1)
            waiting = [s for s in ours.sessions if s._expireCall and s._expireCall.active()]
            self.assertEqual(len(pending), 1 if waiting else 0)
            if waiting:
                # At the earliest time due, or now for a time already past (a reactor takes
                # no negative delay): never after a session's own time.
                due = min(s._expireCall.getTime() for s in waiting)
                self.assertLessEqual(pending[0].getTime(), max(due, ourClock.seconds()))


class SharedTimerTests(unittest.SynchronousTestCase):
    def test_theDefault(self):
        """
        A C{txsession.Site} made without the option has the shared timer: one reactor call for
        all its sessions, each session's C{_expireCall} a C{SharedDelayedCall}.
        """
        clock = Clock()
        site = Site(resource.Resource(), reactor=clock)
        self.assertTrue(site.sharedTimer)
        sessions = [site.makeSession() for _ in range(5)]
        self.assertEqual(len(_siteCalls(clock)), 1)
        for session in sessions:
            self.assertIsInstance(session._expireCall, txsession._txsession.SharedDelayedCall)
        clock.advance(server.Session.sessionTimeout)
        self.assertEqual(site.sessions, {})
        self.assertEqual(_siteCalls(clock), [])

    def test_offGivesOneCallPerSession(self):
        """
        C{sharedTimer=False} schedules one reactor call per session, as Twisted's C{Site}.
        """
        clock = Clock()
        site = Site(resource.Resource(), reactor=clock, sharedTimer=False)
        self.assertFalse(site.sharedTimer)
        sessions = [site.makeSession() for _ in range(5)]
        calls = _siteCalls(clock)
        self.assertEqual(len(calls), 5)
        self.assertEqual({s._expireCall for s in sessions}, set(calls))
        clock.advance(server.Session.sessionTimeout)
        self.assertEqual(site.sessions, {})

    def test_oneReactorCall(self):
        clock = Clock()
        site = _sharedSite(clock)
        sessions = [site.makeSession() for _ in range(50)]
        self.assertEqual(len(_siteCalls(clock)), 1)
        self.assertTrue(site.sharedTimer)
        for session in sessions:
            session.expire()
        self.assertEqual(_siteCalls(clock), [])

    def test_sessionMadeWhileExpiring(self):
        """
        An expire callback that makes a session, while the timer is firing, still leaves one
        reactor call, for the earliest session due.
        """
        clock = Clock()
        site = _sharedSite(clock)
        first = site.makeSession()
        clock.advance(10)
        second = site.makeSession()
        made = []
        first.notifyOnExpire(lambda: made.append(site.makeSession()))
        clock.advance(890)
        self.assertEqual(set(site.sessions), {second.uid, made[0].uid})
        [pending] = _siteCalls(clock)
        self.assertEqual(pending.getTime(), second._expireCall.getTime())
        clock.advance(10)
        self.assertEqual(list(site.sessions), [made[0].uid])
        self.assertEqual(len(_siteCalls(clock)), 1)

    def test_delayedCallInterface(self):
        clock = Clock()
        session = _sharedSite(clock).makeSession()
        call = session._expireCall
        self.assertTrue(verifyObject(IDelayedCall, call))
        self.assertEqual(call.getTime(), 900)
        clock.advance(100)
        call.reset(10)
        self.assertEqual(call.getTime(), 110)
        call.delay(5)
        self.assertEqual(call.getTime(), 115)
        clock.advance(15)
        self.assertFalse(call.active())
        self.assertTrue(call.called)
        self.assertRaises(AlreadyCalled, call.reset, 1)
        self.assertRaises(AlreadyCalled, call.cancel)
        self.assertRaises(AlreadyCalled, session.touch)

    def test_oddTimeoutsAsTwisted(self):
        """
        A C{sessionTimeout} (or C{reset}/C{delay} argument) that is not a plain float gives
        the shared timer's call what Twisted's C{DelayedCall} on a C{Clock} gives: the same
        due time for an C{int}, a C{bool}, a float subclass or a C{Fraction}, and the same
        exception for a C{Decimal} (C{TypeError}: a float plus a C{Decimal}), a string and an
        C{int} too large for a float (C{OverflowError}), at the start, on C{touch}, on
        C{reset} and on C{delay}.
        """
        from decimal import Decimal
        from fractions import Fraction

        class Seconds(float):
            pass

        odd = [7, True, Seconds(2.5), Fraction(1, 3), Decimal(5), "5", 10**400]

        def outcome(f, *args):
            try:
                f(*args)
            except Exception as e:
                return type(e)
            return None

        for value in odd:
            results = []
            for twisted in (True, False):
                clock = Clock()
                clock.advance(100)
                if twisted:
                    site = server.Site(resource.Resource(), reactor=clock)
                    site.sessionFactory = type("S", (server.Session,), {})
                else:
                    site = _sharedSite(clock)
                    site.sessionFactory = type("S", (txsession.Session,), {})
                site.sessionFactory.sessionTimeout = value
                seen = []
                seen.append(outcome(site.makeSession))
                session = next(iter(site.sessions.values()), None)
                if session is None or session._expireCall is None:
                    # Refused at the start: a session with a plain timeout for the rest.
                    site.sessionFactory.sessionTimeout = 60
                    session = site.makeSession()
                    site.sessionFactory.sessionTimeout = value
                call = session._expireCall
                seen.append(call.getTime())
                clock.advance(1)
                seen.append(outcome(session.touch))
                seen.append(call.getTime())
                seen.append(outcome(call.reset, value))
                seen.append(call.getTime())
                seen.append(outcome(call.delay, value))
                seen.append(call.getTime())
                results.append(seen)
            self.assertEqual(results[0], results[1], f"sessionTimeout = {value!r}")

    def test_touchAfterCancelRaises(self):
        clock = Clock()
        session = _sharedSite(clock).makeSession()
        session._expireCall.cancel()
        self.assertRaises(AlreadyCancelled, session.touch)
        self.assertRaises(AlreadyCancelled, session._expireCall.cancel)

    def test_expireCancelsOnce(self):
        """
        expire() cancels an active call (its one call, _cancelIfActive, says so), and leaves
        alone one already cancelled, as Twisted's expire() does through active(); a call
        that ran is not active either.
        """
        clock = Clock()
        site = _sharedSite(clock)
        live, cancelled, ran = (site.makeSession() for _ in range(3))
        ranCall = ran._expireCall
        ranCall.reset(0)
        clock.advance(0)
        self.assertTrue(ranCall.called)
        self.assertFalse(ranCall._cancelIfActive())
        self.assertFalse(ranCall.cancelled)
        liveCall = live._expireCall
        live.expire()
        self.assertTrue(liveCall.cancelled)
        self.assertIsNone(live._expireCall)
        self.assertFalse(liveCall._cancelIfActive())
        cancelledCall = cancelled._expireCall
        cancelledCall.cancel()
        cancelled.expire()
        self.assertIs(cancelled._expireCall, cancelledCall)
        self.assertEqual(dict(site.sessions), {})
        clock.advance(2000)
        self.assertFalse(liveCall.called)

    def test_subclassOverridesRun(self):
        clock = Clock()
        site = _sharedSite(clock)
        seen = []

        class Mine(txsession.Session):
            sessionTimeout = 30

            def touch(self):
                seen.append("touch")
                super().touch()

            def expire(self):
                seen.append("expire")
                super().expire()

        site.sessionFactory = Mine
        session = site.makeSession()
        self.assertEqual(session._expireCall.getTime(), 30)
        clock.advance(30)
        self.assertEqual(seen, ["touch", "expire"])
        self.assertNotIn(session.uid, site.sessions)

    def test_ownReactorIsNotShared(self):
        """
        A session given a reactor of its own is timed on that reactor, as in Twisted.
        """
        clock, other = Clock(), Clock()
        site = _sharedSite(clock)
        session = txsession.Session(site, b"x", reactor=other)
        session.startCheckingExpiration()
        self.assertEqual(len(other.getDelayedCalls()), 1)
        self.assertEqual(_siteCalls(clock), [])
        session._expireCall.cancel()

    @parallelUnsafe(_LOGGED)
    def test_failuresLogged(self):
        """
        An expire that raises is logged as a failing timed call, and the other sessions due
        at that moment still expire.
        """
        clock = Clock()
        site = _sharedSite(clock)
        first, second, third = (site.makeSession() for _ in range(3))
        second.notifyOnExpire(lambda: 1 / 0)
        clock.advance(900)
        self.assertEqual(site.sessions, {})
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(_siteCalls(clock), [])

    def test_renewSession(self):
        clock = Clock()
        site = _sharedSite(clock)
        request = site.requestFactory(DummyChannel(), 1)
        request.site, request.sitepath = site, []
        session = request.getSession()
        old = session.uid
        txsession.renewSession(request)
        self.assertNotIn(old, site.sessions)
        clock.advance(900)
        self.assertEqual(site.sessions, {})

    def test_cyclesCollected(self):
        def build():
            site = _sharedSite(Clock())
            session = site.makeSession()
            session.notifyOnExpire(lambda: session)
            return site

        assertCollected(self, build)

    def test_callIsUntracked(self):
        """
        A session's call holds no Python reference (the timer holds the session), so the
        collector does not track it.
        """
        session = _sharedSite(Clock()).makeSession()
        self.assertFalse(gc.is_tracked(session._expireCall))

    def test_cycleThroughTimerCollected(self):
        """
        session -> call -> timer -> session, with the site and clock reachable only from the
        session: the call's way to its timer is not a Python reference, and the timer's
        reference to the session is visited by the timer.
        """

        def build():
            session = _sharedSite(Clock()).makeSession()
            session.notifyOnExpire(lambda: session)
            return session

        assertCollected(self, build)

    def test_callOutlivesTimer(self):
        """
        A call kept after its site, clock and session were collected still answers, and
        cancelling it is harmless.
        """
        kept = []

        def build():
            session = _sharedSite(Clock()).makeSession()
            kept.append(session._expireCall)
            return session

        assertCollected(self, build)
        [call] = kept
        self.assertTrue(call.active())
        self.assertEqual(call.getTime(), 900)
        call.cancel()
        self.assertTrue(call.cancelled)
        self.assertRaises(AlreadyCancelled, call.reset, 1)

    def test_slotsReused(self):
        """
        Sessions made after others ended reuse their calls' places in the timer: the calls
        compare by due time as before.
        """
        clock = Clock()
        site = _sharedSite(clock)
        first = [site.makeSession() for _ in range(5)]
        for session in first[:3]:
            session.expire()
        del first[:3]
        clock.advance(1)
        later = [site.makeSession() for _ in range(3)]
        self.assertEqual([s._expireCall.getTime() for s in first], [900, 900])
        self.assertEqual([s._expireCall.getTime() for s in later], [901, 901, 901])
        clock.advance(899)
        self.assertEqual(set(site.sessions), {s.uid for s in later})
        clock.advance(1)
        self.assertEqual(site.sessions, {})
        self.assertEqual(len(site._sharedTimer), 0)


class MaxSessionsMixin:
    shared = False

    def site(self, clock, limit):
        return Site(resource.Resource(), reactor=clock, sharedTimer=self.shared, maxSessions=limit)

    def test_capHolds(self):
        clock = Clock()
        site = self.site(clock, 10)
        ended = []
        for i in range(50):
            session = site.makeSession()
            session.notifyOnExpire(lambda i=i: ended.append(i))
            clock.advance(1)
        self.assertEqual(len(site.sessions), 10)
        self.assertEqual(ended, list(range(40)))
        self.assertEqual(len(_siteCalls(clock)), 1 if self.shared else 10)

    def test_leastRecentlyTouchedGoes(self):
        clock = Clock()
        site = self.site(clock, 3)
        a, b, c = [site.makeSession() for _ in range(3)]
        clock.advance(1)
        a.touch()
        clock.advance(1)
        site.makeSession()
        self.assertNotIn(b.uid, site.sessions)
        self.assertIn(a.uid, site.sessions)
        site.makeSession()
        self.assertNotIn(c.uid, site.sessions)
        site.makeSession()
        self.assertNotIn(a.uid, site.sessions)

    def test_endedSessionsAreNotCounted(self):
        clock = Clock()
        site = self.site(clock, 2)
        a = site.makeSession()
        a.expire()
        b = site.makeSession()
        c = site.makeSession()
        self.assertEqual(set(site.sessions), {b.uid, c.uid})

    @parallelUnsafe(_LOGGED)
    def test_failingExpireIsLogged(self):
        clock = Clock()
        site = self.site(clock, 1)
        first = site.makeSession()
        first.notifyOnExpire(lambda: 1 / 0)
        second = site.makeSession()
        self.assertEqual(list(site.sessions), [second.uid])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_badValues(self):
        self.assertRaises(ValueError, Site, resource.Resource(), maxSessions=0)
        self.assertRaises(TypeError, Site, resource.Resource(), maxSessions="10")


class MaxSessionsTests(MaxSessionsMixin, unittest.SynchronousTestCase):
    pass


class MaxSessionsSharedTimerTests(MaxSessionsMixin, unittest.SynchronousTestCase):
    shared = True


class SharedTimerHTTPTests(unittest.TestCase):
    @parallelUnsafe("it waits on the reactor, which only trial's main thread runs")
    @defer.inlineCallbacks
    def test_shortTimeout(self):
        clock = Clock()
        root = resource.Resource()

        class State(resource.Resource):
            isLeaf = True

            def render_GET(self, request):
                session = request.getSession()
                visits = session.sessionNamespaces.get("visits", 0) + 1
                session.sessionNamespaces["visits"] = visits
                return json.dumps([session.uid.decode(), visits]).encode()

        root.putChild(b"state", State())
        site = Site(root, reactor=clock, sharedTimer=True, slidingExpiry=True)
        site.sessionFactory = Short
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = Client(b"http://127.0.0.1:%d/" % port.getHost().port)
        uid, _ = json.loads((yield client.get(b"state"))[1])
        clock.advance(50)
        self.assertEqual(json.loads((yield client.get(b"state"))[1]), [uid, 2])
        clock.advance(50)
        self.assertEqual(json.loads((yield client.get(b"state"))[1]), [uid, 3])
        self.assertEqual(len(_siteCalls(clock)), 1)
        clock.advance(60)
        self.assertEqual(site.sessions, {})
        self.assertEqual(_siteCalls(clock), [])
        other, visits = json.loads((yield client.get(b"state"))[1])
        self.assertNotEqual(other, uid)
        self.assertEqual(visits, 1)
        for session in list(site.sessions.values()):
            session.expire()
