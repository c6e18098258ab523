"""
L{txsession.Namespaces}, the Rust map behind C{sessionNamespaces}, checked against a real dict.
"""

import gc
import pickle
import sys
from collections.abc import MutableMapping

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

import txsession
from tests._support import assertCollected
from txsession import Namespaces


class Collider:
    """
    A key whose hash always collides and whose equality is Python code.
    """

    def __init__(self, name, onEq=None):
        self.name = name
        self.onEq = onEq

    def __hash__(self):
        return 7

    def __eq__(self, other):
        if self.onEq is not None:
            self.onEq()
        return isinstance(other, Collider) and other.name == self.name

    def __repr__(self):
        return f"Collider({self.name!r})"


keys = st.one_of(
    st.text(max_size=4), st.integers(-5, 40), st.binary(max_size=3), st.tuples(st.integers(0, 3))
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("set"), keys, st.integers()),
        st.tuples(st.just("del"), keys, st.none()),
        st.tuples(st.just("pop"), keys, st.none()),
        st.tuples(st.just("setdefault"), keys, st.integers()),
        st.tuples(st.just("popitem"), st.none(), st.none()),
        st.tuples(st.just("clear"), st.none(), st.none()),
    ),
    max_size=120,
)


def apply(mapping, op, key, value):
    try:
        if op == "set":
            mapping[key] = value
        elif op == "del":
            del mapping[key]
        elif op == "pop":
            return mapping.pop(key)
        elif op == "setdefault":
            return mapping.setdefault(key, value)
        elif op == "popitem":
            return mapping.popitem()
        elif op == "clear":
            mapping.clear()
    except KeyError:
        return KeyError
    return None


class NamespacesTests(unittest.SynchronousTestCase):
    @given(operations)
    def test_behavesLikeDict(self, ops):
        """
        Any sequence of operations leaves the same items, in the same order, as on a dict.
        """
        ns, reference = Namespaces(), {}
        for op, key, value in ops:
            self.assertEqual(apply(ns, op, key, value), apply(reference, op, key, value))
            self.assertEqual(list(ns.items()), list(reference.items()))
            self.assertEqual(len(ns), len(reference))
        for key in reference:
            self.assertIn(key, ns)
            self.assertEqual(ns[key], reference[key])

    def test_manyKeysAndDeletions(self):
        """
        Large maps, with the index and the compaction after deletions, keep order and content.
        """
        ns, reference = Namespaces(), {}
        for i in range(2000):
            ns[i] = reference[i] = str(i)
            ns[f"s{i}"] = reference[f"s{i}"] = i
        for i in range(0, 2000, 3):
            del ns[i], reference[i]
        self.assertEqual(list(ns.items()), list(reference.items()))
        self.assertEqual(ns, reference)

    def test_dictApi(self):
        ns = Namespaces({"a": 1}, b=2)
        self.assertEqual(ns.get("a"), 1)
        self.assertIsNone(ns.get("zz"))
        self.assertEqual(ns.get("zz", 5), 5)
        self.assertEqual(ns.pop("zz", None), None)
        self.assertRaises(KeyError, ns.pop, "zz")
        ns.update([("c", 3)], d=4)
        ns.update({"e": 5})
        ns |= {"f": 6}
        self.assertEqual(list(ns), ["a", "b", "c", "d", "e", "f"])
        self.assertEqual(list(ns.keys()), ["a", "b", "c", "d", "e", "f"])
        self.assertEqual(list(ns.values()), [1, 2, 3, 4, 5, 6])
        self.assertEqual(list(reversed(ns)), ["f", "e", "d", "c", "b", "a"])
        self.assertEqual(ns.keys() & {"a", "q"}, {"a"})
        self.assertEqual(ns.popitem(), ("f", 6))
        self.assertEqual(ns.copy(), {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5})
        self.assertEqual(ns | {"z": 0}, {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "z": 0})
        self.assertEqual(repr(Namespaces(a=[1])), "{'a': [1]}")
        ns.clear()
        self.assertEqual(len(ns), 0)
        self.assertFalse(ns)
        self.assertRaises(KeyError, ns.popitem)

    def test_equality(self):
        self.assertEqual(Namespaces(a=1), {"a": 1})
        self.assertEqual({"a": 1}, Namespaces(a=1))
        self.assertNotEqual(Namespaces(a=1), {"a": 2})
        self.assertEqual(Namespaces(a=1), Namespaces(a=1))
        self.assertNotEqual(Namespaces(a=1), [("a", 1)])

    def test_isMutableMapping(self):
        self.assertIsInstance(Namespaces(), MutableMapping)

    def test_unhashable(self):
        """
        Unhashable keys raise L{TypeError} as in a dict, and the map itself is unhashable.
        """
        ns = Namespaces()
        self.assertRaises(TypeError, ns.__setitem__, [], 1)
        self.assertRaises(TypeError, ns.get, {})
        self.assertRaises(TypeError, hash, ns)

    def test_missingKeyError(self):
        ns = Namespaces()
        with self.assertRaises(KeyError) as caught:
            ns["nope"]
        self.assertEqual(caught.exception.args, ("nope",))

    def test_collidingPythonKeys(self):
        """
        Keys with equal hashes are told apart by their own C{__eq__}.
        """
        ns = Namespaces()
        a, b = Collider("a"), Collider("b")
        ns[a] = 1
        ns[b] = 2
        self.assertEqual(ns[Collider("a")], 1)
        self.assertEqual(ns[Collider("b")], 2)
        del ns[Collider("a")]
        self.assertEqual(list(ns), [b])

    def test_reentrantEq(self):
        """
        A key's C{__eq__} may change the map being searched; the lookup starts again.
        """
        ns = Namespaces()
        calls = []

        def mutate():
            if not calls:
                calls.append(1)
                ns["other"] = "added"

        ns[Collider("x", onEq=mutate)] = 1
        self.assertEqual(ns[Collider("x")], 1)
        self.assertEqual(calls, [1])
        self.assertEqual(ns["other"], "added")

    def test_eqRaises(self):
        """
        An exception from a key's C{__eq__} propagates and the map stays usable.
        """

        class Bad(Collider):
            def __eq__(self, other):
                raise ValueError("no")

            __hash__ = Collider.__hash__

        ns = Namespaces()
        ns[Collider("x")] = 1
        self.assertRaises(ValueError, ns.get, Bad("x"))
        self.assertEqual(ns[Collider("x")], 1)

    def test_changeDuringIteration(self):
        ns = Namespaces(a=1, b=2)
        with self.assertRaises(RuntimeError):
            for key in ns:
                ns[key + "x"] = 0

    def test_recursiveRepr(self):
        ns = Namespaces()
        ns["self"] = ns
        self.assertEqual(repr(ns), "{'self': {...}}")

    def test_pickle(self):
        ns = Namespaces(a=1, b=[2])
        clone = pickle.loads(pickle.dumps(ns))
        self.assertIsInstance(clone, Namespaces)
        self.assertEqual(list(clone.items()), [("a", 1), ("b", [2])])


class _Key:
    """
    A hashable key whose instances the collector tracks.
    """


class GarbageCollectorTrackingTests(unittest.SynchronousTestCase):
    """
    A new session's map is left untracked by the collector while it holds only objects that
    can be in no cycle, as CPython does with a dict, and tracked once one that can is stored.
    """

    def session(self):
        from tests._support import makeSite

        site, _ = makeSite()
        return txsession.Session(site, b"a")

    def test_atomsKeepItUntracked(self):
        ns = self.session().sessionNamespaces
        self.assertFalse(gc.is_tracked(ns))
        ns["visits"] = 1
        ns.setdefault("user", "ann")
        ns.update({"n": 2.5}, k=b"v")
        ns |= {"t": (1, "x")}
        self.assertFalse(gc.is_tracked(ns))
        # The control: a dict with the same content is untracked too.
        self.assertFalse(gc.is_tracked(dict(ns)))

    def test_containersTrackIt(self):
        for store in (
            lambda ns: ns.__setitem__("cart", []),
            lambda ns: ns.setdefault("cart", {}),
            lambda ns: ns.update(cart=[]),
            lambda ns: ns.__ior__({"cart": []}),
            lambda ns: ns.__setitem__(_Key(), 1),
        ):
            ns = self.session().sessionNamespaces
            store(ns)
            self.assertTrue(gc.is_tracked(ns))

    def test_cycleThroughUntrackedMapCollected(self):
        def build():
            session = self.session()
            session.sessionNamespaces["me"] = session
            return session

        assertCollected(self, build)

    def test_emptyMapIsSmall(self):
        """
        A map never written is the object alone, 48 bytes with the collector's header, and
        reading it allocates nothing; the first entry is kept inline.
        """
        ns = self.session().sessionNamespaces
        self.assertEqual(sys.getsizeof(ns), 48)
        self.assertEqual(
            (len(ns), bool(ns), ns.get("a"), "a" in ns, list(ns)), (0, False, None, False, [])
        )
        self.assertRaises(KeyError, ns.__getitem__, "a")
        self.assertRaises(TypeError, ns.get, [])
        ns["a"] = 1
        ns.clear()
        self.assertEqual(dict(ns), {})
        ns["b"] = 2
        self.assertEqual(dict(ns), {"b": 2})

    def test_otherMapsAreTracked(self):
        self.assertTrue(gc.is_tracked(txsession.Namespaces()))
