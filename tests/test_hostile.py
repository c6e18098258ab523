"""
Hostile and bad input, differentially: hypothesis feeds arbitrary values (non-interfaces,
interfaces whose hash or name raises, keys whose C{__eq__} raises or re-enters the session,
callbacks that raise, expire again or collect garbage, reactors whose C{callLater} raises or
returns an odd object) to every public method and attribute of Twisted's Session and of
txsession's, side by side. Every step must end the same way on both (the same result, or an
exception of the same type), never with a PanicException (which is not an C{Exception}, so it
fails the test), and each session must work normally once its attributes are put back.
"""

import gc
import math
from collections.abc import MutableMapping

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.base import DelayedCall
from twisted.internet.task import Clock
from twisted.python import components
from twisted.trial import unittest
from twisted.web import resource, server
from zope.interface import Interface, implementedBy, implementer, interface
from zope.interface.adapter import AdapterRegistry
from zope.interface.interface import InterfaceClass

import txsession
from tests._support import globalRegistryHook


class IAdapted(Interface):
    pass


class IUnregistered(Interface):
    pass


class IOther(Interface):
    pass


class RaisingHashInterface(InterfaceClass):
    """
    An interface that cannot be hashed once it is made (zope.interface hashes it while
    making it).
    """

    armed = False

    def __hash__(self):
        if self.armed:
            raise RuntimeError("interface hash")
        return super().__hash__()


IRaisingHash = RaisingHashInterface("IRaisingHash", (), {}, __module__=__name__)
IRaisingHash.armed = True


@implementer(IAdapted)
class Adapted:
    def __init__(self, original):
        self.original = original


@implementer(IAdapted)
class TemporaryAdapted(Adapted):
    temporaryAdapter = True


@implementer(IAdapted, IOther)
class MultiAdapted(components.Adapter):
    multiComponent = True


@implementer(IAdapted)
class RaisingAdapter:
    def __init__(self, original):
        raise ValueError("adapter refuses")


class RaisingQualname:
    """
    Has a module but no usable qualified name.
    """

    __module__ = "hostile"

    def __getattr__(self, name):
        if name == "__qualname__":
            raise RuntimeError("qualname")
        raise AttributeError(name)


class RaisingModule:
    @property
    def __module__(self):
        raise RuntimeError("module")


class Plain:
    pass


class Boom(Exception):
    pass


# A world builds each value from its name, so that values that point back at a session point
# at that world's session.
NAMES = [
    "none",
    "zero",
    "negative",
    "float",
    "nan",
    "str",
    "bytes",
    "list",
    "dict",
    "plain",
    "plainClass",
    "iface",
    "unregistered",
    "other",
    "raisingHashIface",
    "raisingQualname",
    "raisingModule",
    "adapterClass",
    "temporaryClass",
    "multiClass",
    "raisingAdapterClass",
    "hashRaises",
    "eqRaises",
    "eqReenters",
    "eqExpires",
    "cbOk",
    "cbRaises",
    "cbExpiresAgain",
    "cbCollects",
    "cbTouches",
    "cbNotifies",
    "reactorRaises",
    "reactorOdd",
    "reactorBadClock",
    "callOdd",
]
ATTRIBUTES = [
    "site",
    "uid",
    "_reactor",
    "lastModified",
    "sessionTimeout",
    "expireCallbacks",
    "sessionNamespaces",
    "_expireCall",
]

value = st.sampled_from(NAMES)
operation = st.one_of(
    st.tuples(st.just("getComponent"), value),
    st.tuples(st.just("getComponentDefault"), value, value),
    st.tuples(st.just("setComponent"), value, value),
    st.tuples(st.just("addComponent"), value, st.booleans()),
    st.tuples(st.just("setAdapter"), value, value),
    st.tuples(st.just("addAdapter"), value, st.booleans()),
    st.tuples(st.just("unsetComponent"), value),
    st.tuples(st.just("removeComponent"), value),
    st.tuples(st.just("locateAdapterClass"), value, value),
    st.tuples(st.just("conform"), value),
    st.tuples(st.just("notifyOnExpire"), value),
    st.tuples(st.just("expire")),
    st.tuples(st.just("touch")),
    st.tuples(st.just("startCheckingExpiration")),
    st.tuples(st.just("advance"), st.sampled_from([0, 1, 30, 61, 1000])),
    st.tuples(st.just("setattr"), st.sampled_from(ATTRIBUTES), value),
    st.tuples(st.just("delattr"), st.sampled_from(ATTRIBUTES)),
    st.tuples(st.just("nsSet"), value, value),
    st.tuples(st.just("nsGet"), value),
    st.tuples(st.just("nsDel"), value),
    st.tuples(st.just("nsContains"), value),
    st.tuples(st.just("restore")),
)


class World:
    """
    One implementation's site, clock and session, and the log of what ran.
    """

    def __init__(self, sessionClass):
        self.sessionClass = sessionClass
        # Each world has its own adapter registry: zope.interface caches lookups by interface,
        # and a hostile interface from one world must not meet the other's in that cache.
        self.registry = AdapterRegistry()
        self.registry.register([implementedBy(sessionClass)], IAdapted, "", Adapted)
        self.clock = Clock()
        self.site = server.Site(resource.Resource(), reactor=self.clock)
        self.log = []
        self.values = {}
        self.session = sessionClass(self.site, b"uid")
        self.site.sessions[b"uid"] = self.session

    def value(self, name):
        """
        The object called C{name}: made once per world, so identities hold within a world.
        """
        if name not in self.values:
            self.values[name] = getattr(self, "make_" + name)()
        return self.values[name]

    make_none = staticmethod(lambda: None)
    make_zero = staticmethod(lambda: 0)
    make_negative = staticmethod(lambda: -5)
    make_float = staticmethod(lambda: 2.5)
    make_nan = staticmethod(lambda: math.nan)
    make_str = staticmethod(lambda: "visits")
    make_bytes = staticmethod(lambda: b"visits")
    make_list = staticmethod(lambda: [1])
    make_dict = staticmethod(lambda: {"a": 1})
    make_plain = staticmethod(Plain)
    make_plainClass = staticmethod(lambda: Plain)
    make_iface = staticmethod(lambda: IAdapted)
    make_unregistered = staticmethod(lambda: IUnregistered)
    make_other = staticmethod(lambda: IOther)
    make_raisingHashIface = staticmethod(lambda: IRaisingHash)
    make_raisingQualname = staticmethod(RaisingQualname)
    make_raisingModule = staticmethod(RaisingModule)
    make_adapterClass = staticmethod(lambda: Adapted)
    make_temporaryClass = staticmethod(lambda: TemporaryAdapted)
    make_multiClass = staticmethod(lambda: MultiAdapted)
    make_raisingAdapterClass = staticmethod(lambda: RaisingAdapter)

    def make_hashRaises(self):
        class HashRaises:
            def __hash__(self):
                raise Boom("hash")

        return HashRaises()

    def _colliding(self, eq):
        class Colliding:
            def __hash__(self):
                return 7

            __eq__ = eq

        return Colliding()

    def make_eqRaises(self):
        def eq(this, other):
            raise Boom("eq")

        return self._colliding(eq)

    def make_eqReenters(self):
        world = self

        def eq(this, other):
            ns = world.session.sessionNamespaces
            ns["reentered"] = len(world.log)
            world.log.append("eq")
            return False

        return self._colliding(eq)

    def make_eqExpires(self):
        world = self

        def eq(this, other):
            world.log.append("eq-expire")
            world.session.expire()
            return False

        return self._colliding(eq)

    def make_cbOk(self):
        return lambda: self.log.append("ok")

    def make_cbRaises(self):
        def cb():
            self.log.append("raises")
            raise Boom("callback")

        return cb

    def make_cbExpiresAgain(self):
        def cb():
            self.log.append("again")
            self.session.expire()

        return cb

    def make_cbCollects(self):
        def cb():
            self.log.append("collect")
            gc.collect()

        return cb

    def make_cbTouches(self):
        def cb():
            self.log.append("touch")
            self.session.touch()

        return cb

    def make_cbNotifies(self):
        def cb():
            self.log.append("notify")
            self.session.notifyOnExpire(self.value("cbOk"))

        return cb

    def make_reactorRaises(self):
        clock = self.clock

        class Reactor:
            seconds = clock.seconds

            def callLater(self, *args, **kwargs):
                raise Boom("callLater")

        return Reactor()

    def make_reactorOdd(self):
        class Reactor:
            seconds = self.clock.seconds

            def callLater(self, *args, **kwargs):
                return 42

        return Reactor()

    def make_reactorBadClock(self):
        class Reactor:
            callLater = self.clock.callLater

            def seconds(self):
                return "noon"

        return Reactor()

    def make_callOdd(self):
        class Call:
            def active(self):
                return True

            def reset(self, seconds):
                raise Boom("reset")

            def cancel(self):
                raise Boom("cancel")

        return Call()

    # Operations: each returns what is compared across worlds.

    def op_getComponent(self, a):
        return self.session.getComponent(self.value(a))

    def op_getComponentDefault(self, a, b):
        return self.session.getComponent(self.value(a), self.value(b))

    def op_setComponent(self, a, b):
        return self.session.setComponent(self.value(a), self.value(b))

    def op_addComponent(self, a, ignoreClass):
        return self.session.addComponent(self.value(a), ignoreClass)

    def op_setAdapter(self, a, b):
        return self.session.setAdapter(self.value(a), self.value(b))

    def op_addAdapter(self, a, ignoreClass):
        return self.session.addAdapter(self.value(a), ignoreClass)

    def op_unsetComponent(self, a):
        return self.session.unsetComponent(self.value(a))

    def op_removeComponent(self, a):
        return self.session.removeComponent(self.value(a))

    def op_locateAdapterClass(self, a, b):
        return self.session.locateAdapterClass(self.value(a), self.value(b), None)

    def op_conform(self, a):
        return self.session.__conform__(self.value(a))

    def op_notifyOnExpire(self, a):
        return self.session.notifyOnExpire(self.value(a))

    def op_expire(self):
        return self.session.expire()

    def op_touch(self):
        return self.session.touch()

    def op_startCheckingExpiration(self):
        return self.session.startCheckingExpiration()

    def op_advance(self, amount):
        return self.clock.advance(amount)

    def op_setattr(self, name, a):
        return setattr(self.session, name, self.value(a))

    def op_delattr(self, name):
        return delattr(self.session, name)

    def op_nsSet(self, a, b):
        self.session.sessionNamespaces[self.value(a)] = self.value(b)

    def op_nsGet(self, a):
        return self.session.sessionNamespaces[self.value(a)]

    def op_nsDel(self, a):
        del self.session.sessionNamespaces[self.value(a)]

    def op_nsContains(self, a):
        return self.value(a) in self.session.sessionNamespaces

    def op_restore(self):
        """
        Put every attribute back to a working value, keeping the session's components and
        namespaces, and its pending call if it has a real one.
        """
        session = self.session
        session.site = self.site
        session.uid = b"uid"
        session._reactor = self.clock
        session.sessionTimeout = 60
        session.expireCallbacks = []
        session.lastModified = self.clock.seconds()
        if not isinstance(session._expireCall, DelayedCall):
            session._expireCall = None
        if not isinstance(getattr(session, "sessionNamespaces", None), MutableMapping):
            session.sessionNamespaces = {}
        self.site.sessions[b"uid"] = session

    def label(self, obj):
        """
        A description of C{obj} that is the same across worlds for the same kind of value.
        """
        if obj is None or isinstance(obj, (bool, int, str, bytes)):
            return obj
        if isinstance(obj, float):
            return "nan" if math.isnan(obj) else obj
        if isinstance(obj, (list, tuple)):
            return [self.label(o) for o in obj]
        return type(obj).__name__

    def apply(self, op):
        name, *args = op
        components.globalRegistry = self.registry
        try:
            return ("ok", self.label(getattr(self, "op_" + name)(*args)))
        except Exception as e:
            return ("error", type(e).__name__)

    def observe(self):
        session = self.session

        def attempt(f):
            try:
                return ("ok", self.label(f()))
            except Exception as e:
                return ("error", type(e).__name__)

        return {
            "log": list(self.log),
            "live": sorted(self.site.sessions),
            "pending": len(self.clock.calls),
            "callbacks": attempt(lambda: len(session.expireCallbacks)),
            "namespaces": attempt(lambda: len(session.sessionNamespaces)),
            "expireCall": attempt(lambda: session._expireCall),
            "lastModified": attempt(lambda: session.lastModified),
        }


# After restore: what any working session does.
USABLE = [
    ("restore",),
    ("nsSet", "str", "zero"),
    ("nsGet", "str"),
    ("setComponent", "other", "plain"),
    ("getComponent", "other"),
    ("getComponent", "iface"),
    ("notifyOnExpire", "cbOk"),
    ("touch",),
    ("startCheckingExpiration",),
    ("advance", 30),
    ("touch",),
    ("advance", 61),
    ("getComponent", "unregistered"),
]


class HostileInputTests(unittest.SynchronousTestCase):
    def setUp(self):
        # Adaptation goes to whichever world's registry is Twisted's global one at the time.
        self.patch(components, "globalRegistry", components.globalRegistry)
        interface.adapter_hooks.append(globalRegistryHook)
        self.addCleanup(interface.adapter_hooks.remove, globalRegistryHook)

    def assertSame(self, twisted, ours, ops):
        for step, op in enumerate(ops):
            outcome = (twisted.apply(op), ours.apply(op))
            self.assertEqual(outcome[0], outcome[1], f"step {step}: {op}")
            self.assertEqual(twisted.observe(), ours.observe(), f"after step {step}: {op}")

    @given(st.lists(operation, max_size=25))
    def test_sameOutcomes(self, ops):
        """
        Any sequence of hostile operations ends each step the same way on both classes, and
        leaves a session that works once its attributes are put back.
        """
        twisted, ours = World(server.Session), World(txsession.Session)
        self.assertSame(twisted, ours, ops)
        self.assertSame(twisted, ours, USABLE)
        self.assertEqual(ours.apply(("nsGet", "str")), ("ok", 0))

    def test_examples(self):
        """
        Cases worth running every time, whatever hypothesis picks.
        """
        cases = [
            [("getComponent", "raisingQualname")],
            [("getComponent", "raisingModule")],
            [("getComponent", "raisingHashIface")],
            [("setComponent", "raisingHashIface", "plain"), ("getComponent", "raisingHashIface")],
            [("nsSet", "hashRaises", "zero")],
            [("nsSet", "eqRaises", "zero"), ("nsSet", "eqReenters", "float")],
            [("nsSet", "eqReenters", "zero"), ("nsGet", "eqExpires"), ("expire",)],
            [("notifyOnExpire", "cbRaises"), ("expire",), ("expire",)],
            [("notifyOnExpire", "cbExpiresAgain"), ("expire",)],
            [("notifyOnExpire", "cbCollects"), ("notifyOnExpire", "cbNotifies"), ("expire",)],
            [("startCheckingExpiration",), ("notifyOnExpire", "cbTouches"), ("advance", 1000)],
            [("setattr", "_reactor", "reactorRaises"), ("startCheckingExpiration",)],
            [("setattr", "_reactor", "reactorOdd"), ("startCheckingExpiration",), ("touch",)],
            [("startCheckingExpiration",), ("setattr", "_reactor", "reactorBadClock"), ("touch",)],
            [("setattr", "_expireCall", "callOdd"), ("touch",), ("expire",)],
            [("setattr", "sessionTimeout", "str"), ("startCheckingExpiration",), ("touch",)],
            [("startCheckingExpiration",), ("setattr", "sessionTimeout", "nan"), ("touch",)],
            [("setattr", "expireCallbacks", "dict"), ("notifyOnExpire", "cbOk"), ("expire",)],
            [("setattr", "sessionNamespaces", "none"), ("nsSet", "str", "zero")],
            [("setattr", "uid", "list"), ("expire",)],
            [("delattr", "site"), ("expire",), ("delattr", "site")],
            [("setAdapter", "iface", "raisingAdapterClass"), ("getComponent", "iface")],
            [("addAdapter", "multiClass", False), ("getComponent", "other")],
            [("addComponent", "plainClass", True), ("removeComponent", "plainClass")],
            [("locateAdapterClass", "plain", "iface"), ("conform", "str")],
        ]
        for ops in cases:
            twisted, ours = World(server.Session), World(txsession.Session)
            self.assertSame(twisted, ours, ops)
            self.assertSame(twisted, ours, USABLE)
