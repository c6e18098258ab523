"""
txsession as a drop-in: its classes are Twisted's (isinstance, adapters registered for
Twisted's classes), Twisted's own session tutorial runs unchanged over real HTTP, a swap made
after Twisted's modules were imported keeps them working, and the module is safe to import
where Twisted runs (no fork, the GIL kept on, subinterpreters refused).
"""

import copy
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

from twisted.internet import defer, reactor
from twisted.python import components
from twisted.trial import unittest
from twisted.web import resource, server
from zope.interface import Interface, implementer

import txsession
from tests._support import INIT_ATTRIBUTES, ScratchRegistryMixin, implementations, makeSite
from tests.apps import session_store
from tests.test_web import Client


class IThing(Interface):
    pass


@implementer(IThing)
class Thing:
    def __init__(self, original):
        self.original = original


def _runPython(code):
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True
    )


class IdentityTests(ScratchRegistryMixin, unittest.SynchronousTestCase):
    def test_isinstance(self):
        site, _ = makeSite()
        session = txsession.Session(site, b"a")
        self.assertIsInstance(session, server.Session)
        self.assertIsInstance(session, components.Componentized)
        self.assertIsInstance(session, txsession.Componentized)
        self.assertIsInstance(txsession.Componentized(), components.Componentized)
        self.assertIsInstance(txsession.ReprableComponentized(), components.ReprableComponentized)

    def test_adapterForTwistedSession(self):
        """
        An adapter registered for Twisted's Session adapts txsession's, and is cached.
        """
        components.registerAdapter(Thing, server.Session, IThing)
        site, _ = makeSite()
        session = txsession.Session(site, b"a")
        thing = IThing(session)
        self.assertIsInstance(thing, Thing)
        self.assertIs(thing.original, session)
        self.assertIs(IThing(session, None), thing)
        self.assertIs(session.getComponent(IThing), thing)

    def test_adapterForTwistedComponentized(self):
        components.registerAdapter(Thing, components.Componentized, IThing)
        site, _ = makeSite()
        for obj in (txsession.Session(site, b"a"), txsession.Componentized()):
            self.assertIsInstance(IThing(obj), Thing)

    def test_notAdaptable(self):
        """
        The control: without a registration nothing adapts, and a default is returned.
        """
        site, _ = makeSite()
        session = txsession.Session(site, b"a")
        self.assertIsNone(IThing(session, None))
        self.assertRaises(TypeError, IThing, session)


class StateMixin:
    """
    The session's state is where Twisted keeps it, and copies share what Twisted's share.
    """

    def test_varsLikeTwisted(self):
        site, _ = makeSite()
        session = self.sessionClass(site, b"a")
        self.assertEqual(
            list(vars(session)),
            INIT_ATTRIBUTES,
        )
        session.startCheckingExpiration()
        self.assertIn("_expireCall", vars(session))
        session.site.sessions[b"a"] = session
        session.expire()

    def test_shallowCopyShares(self):
        site, _ = makeSite()
        session = self.sessionClass(site, b"a")
        session.setComponent(IThing, "component")
        clone = copy.copy(session)
        clone.sessionNamespaces["k"] = 1
        self.assertEqual(session.sessionNamespaces["k"], 1)
        clone.notifyOnExpire(print)
        self.assertEqual(session.expireCallbacks, [print])
        clone.unsetComponent(IThing)
        self.assertIsNone(session.getComponent(IThing))

    def test_deepCopyDoesNotShare(self):
        site, _ = makeSite()
        session = self.sessionClass(site, b"a")
        clone = copy.deepcopy(session)
        clone.sessionNamespaces["k"] = 1
        self.assertNotIn("k", session.sessionNamespaces)


implementations(StateMixin, globals())


class SessionStoreTutorialTests(unittest.TestCase):
    """
    Twisted's web-in-60 session-store example over real HTTP with a cookie-keeping client.
    """

    def serve(self, site):
        # The tutorial serves the resource from a .rpy file: here, as a child of the root.
        site.resource.putChild(b"counter", session_store.resource)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)

        def expireAll():
            for session in list(site.sessions.values()):
                session.expire()

        self.addCleanup(expireAll)
        return b"http://127.0.0.1:%d/" % port.getHost().port

    @defer.inlineCallbacks
    def visits(self, site):
        base = self.serve(site)
        one, two = Client(base), Client(base)
        bodies = []
        for client in (one, one, one, two):
            _, body = yield client.get(b"counter")
            bodies.append(body)
        self.assertEqual(
            bodies,
            [
                b"Visit #1 for you!",
                b"Visit #2 for you!",
                b"Visit #3 for you!",
                b"Visit #1 for you!",
            ],
        )
        return site

    def test_twisted(self):
        """
        The control: Twisted's own Site and Session.
        """
        return self.visits(server.Site(resource.Resource()))

    @defer.inlineCallbacks
    def test_oneLineSwitch(self):
        site = server.Site(resource.Resource())
        site.sessionFactory = txsession.Session
        yield self.visits(site)
        for session in site.sessions.values():
            self.assertIsInstance(session, txsession.Session)

    @defer.inlineCallbacks
    def test_txsessionSite(self):
        site = yield self.visits(txsession.Site(resource.Resource(), cookieHttpOnly=True))
        self.assertEqual(len(site.sessions), 2)


class LateSwapTests(unittest.SynchronousTestCase):
    def test_componentizedInitOnAnyObject(self):
        """
        C{txsession.Componentized.__init__} is Twisted's: it works on any object.
        """

        class Plain:
            pass

        obj = Plain()
        txsession.Componentized.__init__(obj)
        self.assertEqual(obj._adapterCache, {})

    def test_swapAfterImport(self):
        """
        Replacing Twisted's Componentized after twisted.web.server was imported keeps Twisted's
        requests and sessions working, and later subclasses derive from txsession's.
        """
        result = _runPython(
            """
            from twisted.web import server, resource
            from twisted.web.test.test_web import DummyChannel
            from twisted.python import components
            import txsession

            components.Componentized = txsession.Componentized
            server.Site.sessionFactory = txsession.Session
            site = server.Site(resource.Resource())
            request = server.Request(DummyChannel(), 1)
            request.site, request.sitepath = site, []
            session = request.getSession()
            assert isinstance(session, txsession.Session), session
            assert request.getSession() is session

            class Later(components.Componentized):
                pass

            assert Later.getComponent is txsession.Componentized.getComponent
            session.expire()
            print("ok")
            """
        )
        self.assertEqual(result.stdout.strip(), "ok", result.stderr)


class ImportTests(unittest.SynchronousTestCase):
    def test_withoutRegisterAtFork(self):
        """
        Where C{os.register_at_fork} does not exist (Windows), txsession imports and works.
        """
        result = _runPython(
            """
            import os
            from twisted.web import resource, server  # the standard library's use of it
            del os.register_at_fork
            import txsession
            site = txsession.Site(resource.Resource())
            session = site.makeSession()
            assert len(session.uid) == 64
            session.expire()
            print("ok")
            """
        )
        self.assertEqual(result.stdout.strip(), "ok", result.stderr)

    def test_subinterpreterRefused(self):
        """
        A legacy subinterpreter (shared GIL) gets a clear ImportError.
        """
        try:
            import _testcapi
        except ImportError:
            raise unittest.SkipTest("no _testcapi in this interpreter") from None
        if not hasattr(_testcapi, "run_in_subinterp"):
            raise unittest.SkipTest("no _testcapi.run_in_subinterp")
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        out = os.path.join(folder, "outcome")
        result = _runPython(
            f"""
            import _testcapi
            import txsession._txsession
            code = '''
            try:
                import txsession._txsession
                outcome = "imported"
            except ImportError as e:
                outcome = "ImportError: " + str(e)
            with open({out!r}, "w") as f:
                f.write(outcome)
            '''
            _testcapi.run_in_subinterp(code.replace("\\n            ", "\\n"))
            """
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        with open(out) as f:
            outcome = f.read()
        self.assertTrue(outcome.startswith("ImportError: "), outcome)
        self.assertIn("main interpreter", outcome)

    def test_gilDeclared(self):
        """
        On CPython 3.13 and later the module's definition carries C{Py_mod_gil} =
        C{Py_MOD_GIL_USED}, so that a free-threaded interpreter keeps the GIL on for it.
        """
        if sys.version_info < (3, 13):
            raise unittest.SkipTest("Py_mod_gil exists from CPython 3.13")
        result = _runPython(
            """
            import ctypes
            import txsession._txsession as m

            class Slot(ctypes.Structure):
                _fields_ = [("slot", ctypes.c_int), ("value", ctypes.c_void_p)]

            class Base(ctypes.Structure):
                _fields_ = [("ob", ctypes.c_byte * object.__basicsize__),
                            ("init", ctypes.c_void_p), ("index", ctypes.c_ssize_t),
                            ("copy", ctypes.c_void_p)]

            class Def(ctypes.Structure):
                _fields_ = [("base", Base), ("name", ctypes.c_char_p),
                            ("doc", ctypes.c_char_p), ("size", ctypes.c_ssize_t),
                            ("methods", ctypes.c_void_p), ("slots", ctypes.POINTER(Slot))]

            get = ctypes.pythonapi.PyModule_GetDef
            get.restype = ctypes.POINTER(Def)
            get.argtypes = [ctypes.py_object]
            d = get(m).contents
            assert d.name == b"_txsession", d.name
            PY_MOD_GIL = 4
            i, found = 0, {}
            while d.slots[i].slot:
                found[d.slots[i].slot] = d.slots[i].value
                i += 1
            print(found.get(PY_MOD_GIL, "missing"))
            """
        )
        # Py_MOD_GIL_USED is the null pointer: ctypes shows it as None.
        self.assertEqual(result.stdout.strip(), "None", result.stderr)
