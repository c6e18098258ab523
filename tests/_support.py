"""
Shared helpers: each behaviour test is a mixin run once against Twisted's own class and once
against txsession's, so that a passing pair shows the two behave the same.
"""

import gc
import time
import weakref

from twisted.internet.task import Clock
from twisted.python import components
from twisted.web import resource, server
from zope.interface import providedBy
from zope.interface.adapter import AdapterRegistry

import txsession


def implementations(mixin, namespace, **extra):
    """
    Define C{<Mixin>Twisted} and C{<Mixin>Txsession} TestCases in C{namespace}, with
    C{sessionClass} and C{componentizedClass} set to Twisted's and txsession's classes.
    """
    from twisted.trial import unittest

    base = mixin.__name__.removesuffix("Mixin")
    for label, session, componentized in (
        ("Twisted", server.Session, components.Componentized),
        ("Txsession", txsession.Session, txsession.Componentized),
    ):
        name = f"{base}{label}Tests"
        attrs = dict(sessionClass=session, componentizedClass=componentized, **extra)
        attrs["__module__"] = namespace["__name__"]
        namespace[name] = type(name, (mixin, unittest.SynchronousTestCase), attrs)


# Set by tests.parallel while it runs the suites in several threads at once: there each thread
# has its own scratch registry behind one thread-aware stand-in for Twisted's global one.
perThread = None


def globalRegistryHook(iface, ob):
    """
    An adapter hook, as C{components._addHook} makes, that looks adapters up in whatever
    Twisted's global registry is at the moment of the call, not when the hook was made.
    """
    factory = components.globalRegistry.lookup1(providedBy(ob), iface)
    return None if factory is None else factory(ob)


class ScratchRegistryMixin:
    """
    Put a fresh adapter registry in place of Twisted's global one for each test, as Twisted's
    own component tests do, so registrations do not leak between tests.
    """

    def setUp(self):
        registry = AdapterRegistry()
        if perThread is not None:
            perThread.registry = registry
            self.addCleanup(delattr, perThread, "registry")
            return
        self.patch(components, "globalRegistry", registry)
        hook = components._addHook(registry)
        self.addCleanup(components._removeHook, hook)


def assertCollected(case, build):
    """
    C{build()} returns an object whose only remaining references form a cycle: after a
    collection it must be gone. C{gc.collect()} returns at once while another thread's
    collection runs (the thread runner), so a few tries, letting that one finish in between.
    """
    gc.collect()
    ref = weakref.ref(build())
    for _ in range(50):
        gc.collect()
        if ref() is None:
            break
        time.sleep(0.001)
    case.assertIsNone(ref())


# The attributes Twisted's Session.__init__ sets, in the order it sets them.
INIT_ATTRIBUTES = [
    "_adapterCache",
    "_reactor",
    "site",
    "uid",
    "expireCallbacks",
    "lastModified",
    "sessionNamespaces",
]


def makeSite(clock=None):
    """
    A real L{server.Site} on a deterministic clock.
    """
    clock = Clock() if clock is None else clock
    return server.Site(resource.Resource(), reactor=clock), clock
