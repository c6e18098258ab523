"""
The adapter cache, checked on Twisted's L{components.Componentized} and on
L{txsession.Componentized} alike.
"""

import copy
import pickle

from twisted.python import components
from zope.interface import Interface, implementer

from tests._support import ScratchRegistryMixin, implementations


class IA(Interface):
    pass


class IB(Interface):
    pass


class IC(Interface):
    pass


@implementer(IA, IB, IC)
class Multi(components.Adapter):
    """
    Cached, and added for every interface it is registered for (C{multiComponent}).
    """


@implementer(IB)
class Temporary:
    temporaryAdapter = 1

    def __init__(self, original):
        self.original = original


@implementer(IA)
class Plain:
    def __init__(self, original):
        self.original = original


class ComponentizedMixin(ScratchRegistryMixin):
    componentizedClass: type

    def setUp(self):
        super().setUp()

        class Thing(self.componentizedClass):
            pass

        self.Thing = Thing
        self.thing = Thing()

    def test_defaults(self):
        """
        With nothing registered, C{getComponent} returns the default, or None.
        """
        sentinel = object()
        self.assertIsNone(self.thing.getComponent(IA))
        self.assertIs(self.thing.getComponent(IA, sentinel), sentinel)
        self.assertIs(self.thing.getComponent(IA, default=sentinel), sentinel)

    def test_cachedAdapter(self):
        """
        A registered adapter is made once and cached.
        """
        components.registerAdapter(Plain, self.Thing, IA)
        first = self.thing.getComponent(IA)
        self.assertIsInstance(first, Plain)
        self.assertIs(first.original, self.thing)
        self.assertIs(self.thing.getComponent(IA), first)
        self.assertIs(IA(self.thing), first)

    def test_temporaryAdapter(self):
        """
        An adapter with a true C{temporaryAdapter} is made anew each time.
        """
        components.registerAdapter(Temporary, self.Thing, IB)
        self.assertIsNot(self.thing.getComponent(IB), self.thing.getComponent(IB))

    def test_multiComponent(self):
        """
        A C{multiComponent} adapter is cached for each interface its class is registered for,
        and not for the ones it is not.
        """
        components.registerAdapter(Multi, self.Thing, IA, IB)
        adapter = self.thing.getComponent(IA)
        self.assertIs(self.thing.getComponent(IB), adapter)
        self.assertIsNone(self.thing.getComponent(IC))

    def test_setUnsetComponent(self):
        """
        C{setComponent} caches a component; C{unsetComponent} removes it and raises
        L{KeyError} when there is none.
        """
        self.thing.setComponent(IA, "a")
        self.assertEqual(self.thing.getComponent(IA), "a")
        self.thing.unsetComponent(IA)
        self.assertIsNone(self.thing.getComponent(IA))
        self.assertRaises(KeyError, self.thing.unsetComponent, IA)

    def test_sameNameSharesSlot(self):
        """
        Two interfaces with the same qualified name share one slot, as keys are names.
        """
        self.thing.setComponent(IA, "first")
        twin = type(IA)("IA", __module__=IA.__module__)
        self.assertEqual(self.thing.getComponent(twin), "first")

    def test_setAdapterAndAddAdapter(self):
        """
        C{setAdapter} wraps the object with an adapter class; C{addAdapter} does so and adds it
        for every interface it provides when C{ignoreClass} is true, returning it.
        """
        self.thing.setAdapter(IB, Plain)
        self.assertIsInstance(self.thing.getComponent(IB), Plain)
        added = self.thing.addAdapter(Multi, ignoreClass=True)
        self.assertIs(self.thing.getComponent(IA), added)
        self.assertIs(self.thing.getComponent(IC), added)
        self.assertIs(added.original, self.thing)

    def test_addComponentChecksClass(self):
        """
        Without C{ignoreClass}, C{addComponent} adds a component only for interfaces its class
        is the registered adapter of.
        """
        components.registerAdapter(Multi, self.Thing, IA)
        component = Multi(self.thing)
        self.thing.addComponent(component)
        self.assertIs(self.thing.getComponent(IA), component)
        self.assertIsNone(self.thing.getComponent(IC))

    def test_removeComponent(self):
        """
        C{removeComponent} removes a component from every slot it fills and returns those
        interfaces, resolved from their names.
        """
        component = Multi(self.thing)
        self.thing.addComponent(component, ignoreClass=1)
        self.thing.setComponent(IB, "other")
        removed = self.thing.removeComponent(component)
        self.assertEqual(removed, [IA, IC])
        self.assertIsNone(self.thing.getComponent(IA))
        self.assertEqual(self.thing.getComponent(IB), "other")
        self.assertEqual(self.thing.removeComponent(component), [])

    def test_locateAdapterClass(self):
        """
        C{locateAdapterClass} reads Twisted's registry, even one swapped in after import.
        """
        self.assertIsNone(self.thing.locateAdapterClass(self.Thing, IA, None))
        components.registerAdapter(Plain, self.Thing, IA)
        self.assertIs(self.thing.locateAdapterClass(self.Thing, IA, None), Plain)

    def test_conform(self):
        """
        C{__conform__} answers with C{getComponent}, so calling an interface adapts.
        """
        self.thing.setComponent(IC, "c")
        self.assertEqual(self.thing.__conform__(IC), "c")
        self.assertEqual(IC(self.thing), "c")
        self.assertRaises(TypeError, IA, self.thing)

    def test_badInterface(self):
        """
        An object without a qualified name fails the way C{reflect.qual} fails.
        """
        self.assertRaises(AttributeError, self.thing.getComponent, object())
        self.assertRaises(AttributeError, self.thing.setComponent, 3, "x")

    def test_subclassInitBeforeBase(self):
        """
        A subclass may set attributes before calling the base C{__init__}, which empties the
        cache.
        """
        base = self.componentizedClass

        class Numbered(base):
            def __init__(self):
                self.num = 0
                base.__init__(self)

        numbered = Numbered()
        numbered.setComponent(IA, 1)
        numbered.__init__()
        self.assertEqual(numbered.num, 0)
        self.assertIsNone(numbered.getComponent(IA))

    def test_persistenceVersion(self):
        self.assertEqual(self.componentizedClass.persistenceVersion, 1)

    def test_pickleAndDeepcopy(self):
        """
        Pickling and deep-copying keep the components and the instance attributes.
        """
        thing = self.componentizedClass()
        thing.setComponent(IA, ["listy"])
        thing.name = "app"
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            clone = pickle.loads(pickle.dumps(thing, protocol))
            self.assertEqual(clone.getComponent(IA), ["listy"])
            self.assertEqual(clone.name, "app")
        clone = copy.deepcopy(thing)
        self.assertEqual(clone.getComponent(IA), ["listy"])
        self.assertIsNot(clone.getComponent(IA), thing.getComponent(IA))


implementations(ComponentizedMixin, globals())
