"""
Twisted's own tests for L{server.Session} and L{components.Componentized}, run with txsession's
classes put in their place.

Twisted's test modules are loaded again, under private names, while
C{twisted.python.components.Componentized} and C{twisted.web.server.Session} are txsession's,
so that their module-level subclasses (C{Compo}, C{AComp}, ...) derive from txsession. Each test
then runs with the same swap in force, so C{server.Session(...)} and
C{components.Componentized()} in the test bodies build txsession objects.
"""

import importlib.util
import sys

from twisted.python import components
from twisted.web import server

import txsession

COMPONENTIZED = (
    (components, "Componentized", txsession.Componentized),
    (components, "ReprableComponentized", txsession.ReprableComponentized),
)
SESSION = (
    (server, "Session", txsession.Session),
    (server.Site, "sessionFactory", txsession.Session),
)


def _loadSwapped(moduleName, swaps):
    """
    Import a fresh copy of C{moduleName} with the swaps in force during its import.
    """
    spec = importlib.util.find_spec(moduleName)
    package, _, leaf = moduleName.rpartition(".")
    # A sibling of the original, so that its relative imports resolve.
    privateName = f"{package}._txsession_swapped_{leaf}"
    module = importlib.util.module_from_spec(
        importlib.util.spec_from_file_location(privateName, spec.origin)
    )
    saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in swaps]
    for owner, name, replacement in swaps:
        setattr(owner, name, replacement)
    try:
        sys.modules[privateName] = module
        # reflect.namedObject, used by removeComponent, finds modules as package attributes.
        setattr(sys.modules[package], privateName.rpartition(".")[2], module)
        module.__spec__.loader.exec_module(module)
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)
    return module


class SwappedMixin:
    """
    Keep the swaps in force for the duration of each test.
    """

    swaps = ()

    def setUp(self):
        for owner, name, replacement in self.swaps:
            self.patch(owner, name, replacement)
        super().setUp()


_originalComponentized = components.Componentized
_components = _loadSwapped("twisted.python.test.test_components", COMPONENTIZED)
_web = _loadSwapped("twisted.web.test.test_web", SESSION)


class ComponentizedTests(SwappedMixin, _components.ComponentizedTests):
    """
    Twisted's C{ComponentizedTests} with txsession's C{Componentized}.
    """

    swaps = COMPONENTIZED

    def test_swapIsInForce(self):
        mro = _components.Compo.__mro__
        # Twisted's class stays a base, behind txsession's, whose methods come first.
        self.assertLess(mro.index(txsession.Componentized), mro.index(_originalComponentized))
        self.assertIs(_components.Compo.getComponent, txsession.Componentized.getComponent)
        self.assertIs(components.Componentized, txsession.Componentized)


class ComponentizedInteractionTests(SwappedMixin, _components.MetaInterfaceTests):
    """
    Twisted's C{MetaInterfaceTests}, which adapt a C{Componentized} subclass.
    """

    swaps = COMPONENTIZED


class SessionTests(SwappedMixin, _web.SessionTests):
    """
    Twisted's C{SessionTests} with txsession's C{Session}.
    """

    swaps = SESSION

    def test_swapIsInForce(self):
        self.assertIsInstance(self.session, txsession.Session)


class RequestSessionTests(SwappedMixin, _web.RequestTests):
    """
    Twisted's C{RequestTests}: their session tests make sessions through C{Site.makeSession}
    and C{Request.getSession}.
    """

    swaps = SESSION

    def test_swapIsInForce(self):
        request = server.Request(_web.DummyChannel(), 1)
        request.site = server.Site(_web.resource.Resource())
        request.sitepath = []
        session = request.getSession()
        self.addCleanup(session.expire)
        self.assertIsInstance(session, txsession.Session)
