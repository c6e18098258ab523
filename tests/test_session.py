"""
Session behaviour, checked on Twisted's L{server.Session} and on L{txsession.Session} alike.
"""

import copy
import pickle
import weakref

from twisted.internet.error import AlreadyCalled
from twisted.internet.task import Clock
from twisted.python import components
from twisted.trial import unittest
from twisted.web import resource, server
from twisted.web.test.test_web import DummyChannel
from zope.interface import Interface, alsoProvides, implementer

import txsession
from tests._support import INIT_ATTRIBUTES, ScratchRegistryMixin, implementations, makeSite
from tests.parallel import parallelUnsafe


class IMarker(Interface):
    pass


class ICart(Interface):
    pass


@implementer(ICart)
class Cart:
    def __init__(self, session):
        self.session = session
        self.items = []


class SessionMixin(ScratchRegistryMixin):
    sessionClass: type

    def setUp(self):
        super().setUp()
        self.site, self.clock = makeSite()
        self.site.sessionFactory = self.sessionClass
        self.uid = b"unique"
        self.session = self.sessionClass(self.site, self.uid)
        self.site.sessions[self.uid] = self.session

    def test_attributes(self):
        """
        The constructor stores the site, uid and reactor, starts with empty callbacks and
        namespaces, and records the creation time from the reactor.
        """
        self.clock.advance(7)
        session = self.sessionClass(self.site, b"other")
        self.assertIs(session.site, self.site)
        self.assertEqual(session.uid, b"other")
        self.assertIs(session._reactor, self.clock)
        self.assertEqual(session.lastModified, 7)
        self.assertEqual(session.sessionTimeout, 900)
        self.assertEqual(list(session.expireCallbacks), [])
        self.assertEqual(dict(session.sessionNamespaces), {})
        self.assertIsNone(session._expireCall)
        self.assertEqual(session.persistenceVersion, 1)

    def test_explicitReactor(self):
        """
        A reactor passed to the constructor wins over the site's.
        """
        other = Clock()
        other.advance(42)
        session = self.sessionClass(self.site, b"x", reactor=other)
        self.assertIs(session._reactor, other)
        self.assertEqual(session.lastModified, 42)

    def test_sessionIsTrue(self):
        """
        A session is true: C{Request.getSession} tests C{if not session}.
        """
        self.assertTrue(self.session)

    def test_expiresAfterTimeout(self):
        """
        A checking session expires exactly C{sessionTimeout} seconds after its last touch and
        leaves no delayed call behind.
        """
        self.session.startCheckingExpiration()
        self.assertEqual(len(self.clock.calls), 1)
        self.clock.advance(899)
        self.assertIn(self.uid, self.site.sessions)
        self.clock.advance(1)
        self.assertNotIn(self.uid, self.site.sessions)
        self.assertEqual(self.clock.calls, [])

    def test_touchMovesExpiry(self):
        """
        C{touch} records the reactor's time and moves the expiry by C{sessionTimeout}.
        """
        self.session.startCheckingExpiration()
        self.clock.advance(500)
        self.session.touch()
        self.assertEqual(self.session.lastModified, 500)
        self.clock.advance(899)
        self.assertIn(self.uid, self.site.sessions)
        self.clock.advance(1)
        self.assertNotIn(self.uid, self.site.sessions)

    def test_touchAfterTimedExpiryRaises(self):
        """
        After the timer fired, C{touch} raises L{AlreadyCalled}, as C{Request.getSession}
        expects; before checking starts, C{touch} only records the time.
        """
        self.clock.advance(3)
        self.session.touch()
        self.assertEqual(self.session.lastModified, 3)
        self.session.startCheckingExpiration()
        self.clock.advance(900)
        self.assertRaises(AlreadyCalled, self.session.touch)

    def test_touchInsideTimedExpiryRaises(self):
        """
        A callback that touches the session while the timer is firing gets L{AlreadyCalled}:
        the delayed call is already marked as called.
        """
        errors = []

        def callback():
            try:
                self.session.touch()
            except AlreadyCalled as e:
                errors.append(e)

        self.session.notifyOnExpire(callback)
        self.session.startCheckingExpiration()
        self.clock.advance(900)
        self.assertEqual(len(errors), 1)

    def test_touchAfterExplicitExpire(self):
        """
        After an explicit C{expire}, the timer is cancelled and forgotten, so C{touch} works.
        """
        self.session.startCheckingExpiration()
        self.session.expire()
        self.assertIsNone(self.session._expireCall)
        self.assertEqual(self.clock.calls, [])
        self.clock.advance(5)
        self.session.touch()
        self.assertEqual(self.session.lastModified, 5)

    def test_expireOrder(self):
        """
        C{expire} removes the session from C{site.sessions} before running callbacks in the
        order they were added, then empties the callback list and cancels the timer.
        """
        self.session.startCheckingExpiration()
        seen = []
        self.session.notifyOnExpire(lambda: seen.append(("a", self.uid in self.site.sessions)))
        self.session.notifyOnExpire(lambda: seen.append(("b", len(self.clock.calls))))
        self.session.expire()
        self.assertEqual(seen, [("a", False), ("b", 1)])
        self.assertEqual(list(self.session.expireCallbacks), [])
        self.assertEqual(self.clock.calls, [])

    def test_expireTwiceRaisesKeyError(self):
        """
        A second C{expire} fails with L{KeyError}: the entry is gone from C{site.sessions}.
        """
        self.session.expire()
        self.assertRaises(KeyError, self.session.expire)

    def test_callbackErrorPropagates(self):
        """
        An exception from a callback propagates; later callbacks do not run and the timer is
        left pending.
        """
        self.session.startCheckingExpiration()
        ran = []

        def broken():
            raise ZeroDivisionError()

        self.session.notifyOnExpire(broken)
        self.session.notifyOnExpire(lambda: ran.append(1))
        self.assertRaises(ZeroDivisionError, self.session.expire)
        self.assertEqual(ran, [])
        self.assertEqual(len(self.clock.calls), 1)

    def test_callbackAddedDuringExpireRuns(self):
        """
        A callback registered by another callback while expiring also runs.
        """
        seen = []

        def first():
            seen.append("first")
            self.session.notifyOnExpire(lambda: seen.append("second"))

        self.session.notifyOnExpire(first)
        self.session.expire()
        self.assertEqual(seen, ["first", "second"])

    def test_expireCallbacksIsAList(self):
        """
        C{expireCallbacks} is a list that can be changed in place or replaced.
        """
        seen = []
        self.session.expireCallbacks.append(lambda: seen.append(1))
        self.session.notifyOnExpire(lambda: seen.append(2))
        self.assertEqual(len(self.session.expireCallbacks), 2)
        self.session.expireCallbacks = [lambda: seen.append(3)]
        self.session.expire()
        self.assertEqual(seen, [3])

    def test_firstCallbackThenMore(self):
        """
        The first C{notifyOnExpire} makes the list; later ones and direct appends add to that
        same list, and all run in order.
        """
        seen = []
        self.session.notifyOnExpire(lambda: seen.append(1))
        callbacks = self.session.expireCallbacks
        self.assertIs(type(callbacks), list)
        self.session.notifyOnExpire(lambda: seen.append(2))
        callbacks.append(lambda: seen.append(3))
        self.assertIs(self.session.expireCallbacks, callbacks)
        self.session.expire()
        self.assertEqual(seen, [1, 2, 3])

    def test_callbackRemovedDuringExpire(self):
        """
        Callbacks run as a list iterator walks the list: one that removes a later callback
        keeps it from running.
        """
        seen = []

        def second():
            seen.append("second")

        def first():
            seen.append("first")
            self.session.expireCallbacks.remove(second)

        self.session.notifyOnExpire(first)
        self.session.notifyOnExpire(second)
        self.session.notifyOnExpire(lambda: seen.append("third"))
        self.session.expire()
        self.assertEqual(seen, ["first", "third"])

    def test_expireCallbacksSubclassAppend(self):
        """
        C{notifyOnExpire} calls the C{append} of an assigned list subclass.
        """
        appended = []

        class Recording(list):
            def append(self, item):
                appended.append(item)
                super().append(item)

        self.session.expireCallbacks = Recording()

        def callback():
            pass

        self.session.notifyOnExpire(callback)
        self.assertEqual(appended, [callback])
        self.assertEqual(list(self.session.expireCallbacks), [callback])

    def test_subclassTimeout(self):
        """
        A subclass's C{sessionTimeout} class attribute and an instance assignment both win, and
        are read when the timer is scheduled or moved.
        """

        class Short(self.sessionClass):
            sessionTimeout = 60

        session = Short(self.site, b"short")
        self.site.sessions[b"short"] = session
        session.startCheckingExpiration()
        self.clock.advance(30)
        session.sessionTimeout = 10
        session.touch()
        self.clock.advance(9)
        self.assertIn(b"short", self.site.sessions)
        self.clock.advance(1)
        self.assertNotIn(b"short", self.site.sessions)

    def test_subclassInitAndOverrides(self):
        """
        A subclass may have its own C{__init__} signature; C{__init__} reaches an overridden
        C{touch} and the timer reaches an overridden C{expire}.
        """
        calls = []
        base = self.sessionClass

        class Custom(base):
            def __init__(self, site, uid, user, *, role="guest"):
                self.user = user
                self.role = role
                super().__init__(site, uid)

            def touch(self):
                calls.append("touch")
                base.touch(self)

            def expire(self):
                calls.append("expire")
                base.expire(self)

        session = Custom(self.site, b"c", "alice", role="admin")
        self.site.sessions[b"c"] = session
        self.assertEqual((session.user, session.role), ("alice", "admin"))
        self.assertEqual(calls, ["touch"])
        session.startCheckingExpiration()
        self.clock.advance(900)
        self.assertEqual(calls, ["touch", "expire"])
        self.assertNotIn(b"c", self.site.sessions)

    def test_subclassAttributeHooks(self):
        """
        A subclass's C{__setattr__} sees every attribute C{__init__} and C{touch} set, in
        Twisted's order, and a C{_reactor} property is what C{touch} reads the time from.
        """
        base = self.sessionClass
        seen = []

        class Watched(base):
            def __setattr__(self, name, value):
                seen.append(name)
                super().__setattr__(name, value)

        Watched(self.site, b"w")
        self.assertEqual(
            seen,
            INIT_ATTRIBUTES,
        )

        later = Clock()
        later.advance(500)

        class Redirected(base):
            # Stores the reactor it is given, and reads another one back.
            @property
            def _reactor(self):
                return later

            @_reactor.setter
            def _reactor(self, value):
                self.__dict__["given"] = value

        session = Redirected(self.site, b"r")
        self.assertIs(session.given, self.clock)
        self.assertEqual(session.lastModified, 500)

    def test_instanceAttributesAndWeakref(self):
        """
        Sessions take arbitrary attributes, weak references and directly provided interfaces.
        """
        self.session.custom = {"x": 1}
        self.assertEqual(self.session.custom, {"x": 1})
        self.assertIn("custom", self.session.__dict__)
        ref = weakref.ref(self.session)
        self.assertIs(ref(), self.session)
        alsoProvides(self.session, IMarker)
        self.assertTrue(IMarker.providedBy(self.session))

    @parallelUnsafe(
        "registers an adapter for a session class that every thread shares; run that way, "
        "zope.interface's lookup intermittently misses it, for Twisted's class as for ours"
    )
    def test_registerAdapterForSessionClass(self):
        """
        An adapter registered for the session class is found and cached by C{getComponent}.
        """
        components.registerAdapter(Cart, self.sessionClass, ICart)
        cart = self.session.getComponent(ICart)
        self.assertIsInstance(cart, Cart)
        self.assertIs(cart.session, self.session)
        self.assertIs(self.session.getComponent(ICart), cart)
        self.assertIs(ICart(self.session), cart)

    def test_namespacesMapping(self):
        """
        C{sessionNamespaces} behaves as a dict; whatever is assigned to it is kept as it is.
        """
        ns = self.session.sessionNamespaces
        ns["visits"] = 1
        ns.setdefault("cart", []).append("book")
        self.assertEqual(ns, {"visits": 1, "cart": ["book"]})
        fresh = {"fresh": True}
        self.session.sessionNamespaces = fresh
        self.assertIs(self.session.sessionNamespaces, fresh)
        self.assertEqual(ns, {"visits": 1, "cart": ["book"]})

    def test_attributesHoldNone(self):
        """
        Every attribute can be set to C{None} and reads back C{None}; a deleted attribute is
        gone (C{_expireCall} and C{sessionTimeout} fall back to the class's value).
        """
        names = [
            "site",
            "uid",
            "_reactor",
            "lastModified",
            "expireCallbacks",
            "sessionNamespaces",
            "_expireCall",
            "sessionTimeout",
        ]
        for name in names:
            setattr(self.session, name, None)
            self.assertIsNone(getattr(self.session, name), name)
            delattr(self.session, name)
        for name in names[:6]:
            self.assertRaises(AttributeError, getattr, self.session, name)
            self.assertRaises(AttributeError, delattr, self.session, name)
        self.assertIsNone(self.session._expireCall)
        self.assertEqual(self.session.sessionTimeout, 900)
        self.assertRaises(AttributeError, self.session.notifyOnExpire, lambda: None)
        self.session.site = self.site
        self.session.uid = b"back"
        self.site.sessions[b"back"] = self.session
        self.assertRaises(AttributeError, self.session.expire)

    def test_requestGetSession(self):
        """
        C{Request.getSession} on a site using this factory makes a session, starts its timer,
        finds it again from the cookie, and replaces it once it has expired.
        """
        request = server.Request(DummyChannel(), 1)
        request.site = self.site
        request.sitepath = []
        session = request.getSession()
        self.assertIsInstance(session, self.sessionClass)
        self.assertIs(self.site.sessions[session.uid], session)
        self.assertEqual(len(self.clock.calls), 1)
        self.assertIs(request.getSession(), session)

        again = server.Request(DummyChannel(), 1)
        again.site = self.site
        again.sitepath = []
        again.received_cookies[b"TWISTED_SESSION"] = session.uid
        self.assertIs(again.getSession(), session)

        self.clock.advance(900)
        self.assertNotIn(session.uid, self.site.sessions)
        replacement = again.getSession()
        self.assertIsNot(replacement, session)
        self.assertIn(replacement.uid, self.site.sessions)

    def test_pickleAndCopy(self):
        """
        A session pickles and deep-copies with its attributes, components and namespaces.
        """
        site = server.Site(resource.Resource(), reactor=Clock())
        session = self.sessionClass(site, b"p")
        session.sessionNamespaces["k"] = [1, 2]
        session.setComponent(IMarker, "component")
        session.extra = "yes"
        for clone in (pickle.loads(pickle.dumps(session)), copy.deepcopy(session)):
            self.assertIsInstance(clone, self.sessionClass)
            self.assertEqual(clone.uid, b"p")
            self.assertEqual(dict(clone.sessionNamespaces), {"k": [1, 2]})
            self.assertEqual(clone.getComponent(IMarker), "component")
            self.assertEqual(clone.extra, "yes")
            self.assertEqual(clone.lastModified, session.lastModified)
            self.assertIsNot(clone.site, site)


implementations(SessionMixin, globals())


class ReentrancyTests(ScratchRegistryMixin, unittest.SynchronousTestCase):
    """
    Callbacks and adapters may use the very session that is calling them.
    """

    def setUp(self):
        super().setUp()
        self.site, self.clock = makeSite()
        self.session = txsession.Session(self.site, b"r")
        self.site.sessions[b"r"] = self.session

    def test_callbackUsesSession(self):
        """
        An expire callback may touch, add callbacks, read namespaces and set components.
        """
        session = self.session
        seen = []

        def callback():
            session.touch()
            session.sessionNamespaces["seen"] = True
            session.setComponent(IMarker, "m")
            seen.append(session.getComponent(IMarker))
            seen.append(dict(session.sessionNamespaces))

        session.startCheckingExpiration()
        session.notifyOnExpire(callback)
        session.expire()
        self.assertEqual(seen, ["m", {"seen": True}])
        self.assertEqual(self.clock.calls, [])

    @parallelUnsafe(
        "registers an adapter for a session class that every thread shares; run that way, "
        "zope.interface's lookup intermittently misses it, for Twisted's class as for ours"
    )
    def test_adapterUsesSession(self):
        """
        An adapter's constructor may call C{getComponent}, C{setComponent} and C{touch} on the
        session it adapts.
        """
        session = self.session

        @implementer(ICart)
        class Reentrant:
            def __init__(self, original):
                original.setComponent(IMarker, "inner")
                self.inner = original.getComponent(IMarker)
                original.touch()

        components.registerAdapter(Reentrant, txsession.Session, ICart)
        cart = session.getComponent(ICart)
        self.assertEqual(cart.inner, "inner")
        self.assertIs(session.getComponent(ICart), cart)

    def test_secondExpireInsideCallback(self):
        """
        A callback that expires the session again gets Twisted's L{KeyError}, and the session
        stays usable.
        """
        session = self.session
        errors = []

        def again():
            try:
                session.expire()
            except KeyError as e:
                errors.append(e)

        session.notifyOnExpire(again)
        session.expire()
        self.assertEqual(len(errors), 1)
        session.touch()
        self.assertEqual(list(session.expireCallbacks), [])
