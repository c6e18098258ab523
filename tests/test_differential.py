"""
Differential tests: random sequences of operations run on Twisted's Session and on
txsession's side by side, each on its own site and L{Clock}; after every step everything that
can be observed must be the same.

The number of sequences comes from the hypothesis profile (HYPOTHESIS_PROFILE=soak for
thousands).
"""

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.python import components
from twisted.trial import unittest
from twisted.web import resource, server
from zope.interface import Interface, implementer
from zope.interface.adapter import AdapterRegistry

import txsession


class IKept(Interface):
    pass


class ITemporary(Interface):
    pass


class IMulti(Interface):
    pass


class IUnregistered(Interface):
    pass


INTERFACES = [IKept, ITemporary, IMulti, IUnregistered]


@implementer(IKept)
class Kept:
    def __init__(self, original):
        self.original = original


@implementer(ITemporary)
class Temporary:
    temporaryAdapter = True

    def __init__(self, original):
        self.original = original


@implementer(IMulti, IKept)
class Multi(components.Adapter):
    pass


SESSIONS = 3
TIMEOUTS = [None, 1, 2.5, 60, 0.3]
ADVANCES = [0, 0.1, 0.25, 1, 1.5, 2.5, 10, 59.9, 60, 900]

session_index = st.integers(0, SESSIONS - 1)
operation = st.one_of(
    st.tuples(st.just("make"), session_index, st.sampled_from(TIMEOUTS)),
    st.tuples(st.just("start"), session_index),
    st.tuples(st.just("advance"), st.sampled_from(ADVANCES)),
    st.tuples(st.just("touch"), session_index),
    st.tuples(st.just("expire"), session_index),
    st.tuples(st.just("notify"), session_index, st.integers(0, 3)),
    st.tuples(st.just("nsset"), session_index, st.sampled_from("abc"), st.integers(0, 9)),
    st.tuples(st.just("nsdel"), session_index, st.sampled_from("abc")),
    st.tuples(st.just("timeout"), session_index, st.sampled_from([0.5, 3, 60])),
    st.tuples(st.just("cancel"), session_index),
    st.tuples(st.just("get"), session_index, st.sampled_from(INTERFACES)),
    st.tuples(st.just("set"), session_index, st.sampled_from(INTERFACES), st.integers(0, 2)),
    st.tuples(st.just("unset"), session_index, st.sampled_from(INTERFACES)),
    st.tuples(st.just("remove"), session_index, st.integers(0, 2)),
)

# Most of what can differ is timing: weight the operations that move time and the expiry.
timing = st.one_of(
    st.tuples(st.just("advance"), st.sampled_from(ADVANCES)),
    st.tuples(st.just("touch"), session_index),
    st.tuples(st.just("start"), session_index),
)


class World:
    """
    One implementation's site, clock, sessions and the log of what they did.
    """

    def __init__(self, sessionClass):
        self.sessionClass = sessionClass
        self.clock = Clock()
        self.site = server.Site(resource.Resource(), reactor=self.clock)
        self.sessions = {}
        self.log = []
        self.labels = {}
        self.values = [object(), object(), object()]

    def label(self, obj):
        """
        Name an object by the order it was first seen in, so that identities can be compared
        across worlds.
        """
        if obj is None or isinstance(obj, (int, str)):
            return obj
        if id(obj) not in self.labels:
            self.labels[id(obj)] = (type(obj).__name__, len(self.labels), obj)
        return self.labels[id(obj)][:2]

    def apply(self, op):
        name, *args = op
        try:
            return ("ok", self.label(getattr(self, "op_" + name)(*args)))
        except Exception as e:
            return ("error", type(e).__name__)

    def op_make(self, index, timeout):
        cls = self.sessionClass
        if timeout is not None:
            cls = type("Timed", (cls,), {"sessionTimeout": timeout})
        uid = b"uid%d" % index
        session = self.sessions[index] = cls(self.site, uid)
        self.site.sessions[uid] = session

    def op_start(self, index):
        self.sessions[index].startCheckingExpiration()

    def op_advance(self, amount):
        self.clock.advance(amount)

    def op_touch(self, index):
        self.sessions[index].touch()

    def op_expire(self, index):
        self.sessions[index].expire()

    def op_notify(self, index, tag):
        self.sessions[index].notifyOnExpire(lambda: self.log.append((index, tag)))

    def op_nsset(self, index, key, value):
        self.sessions[index].sessionNamespaces[key] = value

    def op_nsdel(self, index, key):
        del self.sessions[index].sessionNamespaces[key]

    def op_timeout(self, index, value):
        self.sessions[index].sessionTimeout = value

    def op_cancel(self, index):
        self.sessions[index]._expireCall.cancel()

    def op_get(self, index, interface):
        return self.sessions[index].getComponent(interface)

    def op_set(self, index, interface, value):
        self.sessions[index].setComponent(interface, self.values[value])

    def op_unset(self, index, interface):
        self.sessions[index].unsetComponent(interface)

    def op_remove(self, index, value):
        return tuple(self.sessions[index].removeComponent(self.values[value]))

    def observe(self):
        return {
            "live": sorted(self.site.sessions),
            "log": list(self.log),
            "pending": len(self.clock.calls),
            "sessions": {
                index: (
                    session.lastModified,
                    sorted(session.sessionNamespaces.items()),
                    session._expireCall is None,
                    len(session.expireCallbacks),
                )
                for index, session in self.sessions.items()
            },
        }


class DifferentialTests(unittest.TestCase):
    def setUp(self):
        registry = AdapterRegistry()
        self.patch(components, "globalRegistry", registry)
        hook = components._addHook(registry)
        self.addCleanup(components._removeHook, hook)
        for cls in (server.Session, txsession.Session):
            components.registerAdapter(Kept, cls, IKept)
            components.registerAdapter(Temporary, cls, ITemporary)
            components.registerAdapter(Multi, cls, IMulti)

    @given(
        st.lists(st.sampled_from(TIMEOUTS), min_size=SESSIONS, max_size=SESSIONS),
        st.lists(st.booleans(), min_size=SESSIONS, max_size=SESSIONS),
        st.lists(st.one_of(timing, timing, operation), max_size=60),
    )
    def test_sameObservableBehaviour(self, timeouts, started, ops):
        twisted, ours = World(server.Session), World(txsession.Session)
        setup = [("make", i, timeout) for i, timeout in enumerate(timeouts)]
        setup += [("start", i) for i, start in enumerate(started) if start]
        for step, op in enumerate(setup + ops):
            outcome = (twisted.apply(op), ours.apply(op))
            self.assertEqual(outcome[0], outcome[1], f"step {step}: {op}")
            self.assertEqual(twisted.observe(), ours.observe(), f"after step {step}: {op}")
