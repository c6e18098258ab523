"""
Reference cycles through every field that holds a Python object are collected, and the
collector can run at any moment, including while sessions are being built.
"""

import gc
import weakref

from twisted.python import components
from twisted.trial import unittest
from zope.interface import Interface, implementer

import txsession
from tests._support import ScratchRegistryMixin, assertCollected, makeSite


class IHolder(Interface):
    pass


@implementer(IHolder)
class Holder:
    def __init__(self, original):
        self.original = original


class CollectionTests(ScratchRegistryMixin, unittest.TestCase):
    def assertCollected(self, build):
        assertCollected(self, build)

    def test_cycleThroughCallback(self):
        def build():
            site, clock = makeSite()
            session = txsession.Session(site, b"a")
            session.notifyOnExpire(lambda: session)
            return session

        self.assertCollected(build)

    def test_cycleThroughTimer(self):
        """
        session -> delayed call -> bound C{expire} -> session.
        """

        def build():
            site, clock = makeSite()
            session = txsession.Session(site, b"a")
            site.sessions[b"a"] = session
            session.startCheckingExpiration()
            return session

        self.assertCollected(build)

    def test_cycleThroughComponent(self):
        components.registerAdapter(Holder, txsession.Session, IHolder)

        def build():
            site, clock = makeSite()
            session = txsession.Session(site, b"a")
            session.getComponent(IHolder)
            return session

        self.assertCollected(build)

    def test_cycleThroughNamespaces(self):
        def build():
            site, clock = makeSite()
            session = txsession.Session(site, b"a")
            session.sessionNamespaces["me"] = session
            return session

        self.assertCollected(build)

    def test_cycleThroughDict(self):
        def build():
            site, clock = makeSite()
            session = txsession.Session(site, b"a")
            session.me = session
            return session

        self.assertCollected(build)

    def test_cycleThroughAdapterCache(self):
        def build():
            thing = txsession.Componentized()
            thing.setComponent(IHolder, Holder(thing))
            return thing

        self.assertCollected(build)

    def test_collectWhileBuilding(self):
        """
        With the collector running on nearly every allocation, building, using and dropping
        many sessions neither crashes nor leaks.
        """
        site, clock = makeSite()
        old = gc.get_threshold()
        gc.set_threshold(1)
        try:
            refs = []
            for i in range(3000):
                session = txsession.Session(site, b"%d" % i)
                session.sessionNamespaces["n"] = session
                session.notifyOnExpire(lambda s=session: s)
                session.setComponent(IHolder, session)
                refs.append(weakref.ref(session))
                del session
        finally:
            gc.set_threshold(*old)
        gc.collect()
        self.assertEqual([r for r in refs if r() is not None], [])
