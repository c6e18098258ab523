"""
Sessions used from several threads at once, as Twisted apps do from C{deferToThread} workers.
"""

import sys
import threading

from twisted.internet.base import DelayedCall
from twisted.python import components
from twisted.trial import unittest
from zope.interface import Interface, implementer

import txsession
from tests._support import ScratchRegistryMixin


class IWorker(Interface):
    pass


@implementer(IWorker)
class Worker:
    def __init__(self, original):
        self.original = original
        self.count = 0


class LockedReactor:
    """
    Just enough of a reactor for sessions, safe to use from several threads: real
    L{DelayedCall}s, never run.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.now = 0.0
        self.calls = []

    def seconds(self):
        with self.lock:
            self.now += 0.001
            return self.now

    def callLater(self, delay, f, *args, **kw):
        with self.lock:
            call = DelayedCall(
                self.now + delay, f, args, kw, self._cancel, lambda c: None, self.seconds
            )
            self.calls.append(call)
            return call

    def _cancel(self, call):
        with self.lock:
            self.calls.remove(call)


class Site:
    def __init__(self, reactor):
        self.reactor = reactor
        self.sessions = {}


class ThreadTests(ScratchRegistryMixin, unittest.TestCase):
    def setUp(self):
        super().setUp()
        components.registerAdapter(Worker, txsession.Session, IWorker)
        old = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        self.addCleanup(sys.setswitchinterval, old)

    def test_sharedSessions(self):
        """
        Eight threads use the same sessions while another expires and replaces them: no
        error but the L{KeyError} of expiring a session already gone, no deadlock, and the
        state stays consistent.
        """
        reactor = LockedReactor()
        site = Site(reactor)
        sessions = []
        for i in range(4):
            session = site.sessions[i] = txsession.Session(site, i)
            session.startCheckingExpiration()
            sessions.append(session)
        errors = []
        expired = []
        stop = threading.Event()

        def use(n):
            try:
                for step in range(3000):
                    session = sessions[step % len(sessions)]
                    ns = session.sessionNamespaces
                    ns[f"t{n}"] = ns.get(f"t{n}", 0) + 1
                    IWorker(session).count += 1
                    session.setComponent(IWorker, session.getComponent(IWorker))
                    if step % 50 == 0:
                        session.notifyOnExpire(lambda: None)
                    try:
                        session.touch()
                    except Exception as e:
                        # A session the expirer just ended: its timer was cancelled.
                        if type(e).__name__ != "AlreadyCancelled":
                            raise
            except Exception as e:
                errors.append(e)

        def expire():
            try:
                while not stop.is_set():
                    for i, session in enumerate(list(sessions)):
                        try:
                            session.expire()
                            expired.append(session)
                        except KeyError:
                            pass
                        fresh = site.sessions[i] = txsession.Session(site, i)
                        fresh.startCheckingExpiration()
                        sessions[i] = fresh
            except Exception as e:
                errors.append(e)

        workers = [threading.Thread(target=use, args=(n,)) for n in range(8)]
        expirer = threading.Thread(target=expire)
        expirer.start()
        for t in workers:
            t.start()
        for t in workers:
            t.join(60)
        stop.set()
        expirer.join(60)
        self.assertFalse(any(t.is_alive() for t in workers + [expirer]), "deadlock")
        self.assertEqual(errors, [])
        self.assertTrue(expired)
        self.assertEqual(sorted(site.sessions), [0, 1, 2, 3])
        for session in sessions:
            self.assertIs(site.sessions[session.uid], session)
            for key, value in session.sessionNamespaces.items():
                self.assertTrue(key.startswith("t"))
                self.assertGreater(value, 0)

    def test_sharedMap(self):
        """
        One map written and read by several threads ends with every thread's keys.
        """
        ns = txsession.Namespaces()

        def write(n):
            for i in range(2000):
                ns[(n, i)] = i
                if i % 3 == 0:
                    del ns[(n, i)]

        threads = [threading.Thread(target=write, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        expected = {(n, i): i for n in range(6) for i in range(2000) if i % 3}
        self.assertEqual(dict(ns.items()), expected)
