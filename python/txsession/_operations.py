"""
The operations the main benchmark measures, each for Twisted's L{twisted.web.server.Session}
and for L{txsession.Session}, shared by its timed section and its instruction counts.

Each scenario is C{(name, prepare)}. C{prepare(sessionClass, n)} sets up everything for C{n}
operations and returns C{(run, cleanup)}: C{run(count)} performs the first C{count} of them
(C{count <= n}) and is the only part measured. Setting up for the same C{n} whatever C{count}
is lets the instruction counts subtract everything but the operations themselves.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import reactor
from twisted.python import components
from twisted.web import resource, server
from zope.interface import Interface, implementer

import txsession

IMPLEMENTATIONS = {"Twisted": server.Session, "txsession": txsession.Session}


class ICached(Interface):
    pass


class ITemporary(Interface):
    pass


class IMissing(Interface):
    pass


@implementer(ICached)
class CachedAdapter:
    def __init__(self, original):
        self.original = original


@implementer(ITemporary)
class TemporaryAdapter:
    temporaryAdapter = 1

    def __init__(self, original):
        self.original = original


for _cls in IMPLEMENTATIONS.values():
    components.registerAdapter(CachedAdapter, _cls, ICached)
    components.registerAdapter(TemporaryAdapter, _cls, ITemporary)


def site(sessionClass):
    """
    Twisted's C{Site} on the real reactor, making sessions of C{sessionClass}.
    """
    made = server.Site(resource.Resource(), reactor=reactor)
    made.sessionFactory = sessionClass
    return made


def cancelAll(sessions):
    for session in sessions:
        call = session._expireCall
        if call is not None and call.active():
            call.cancel()


def noop():
    pass


def _construct(cls, n):
    made = site(cls)
    uids = [b"%064d" % i for i in range(n)]

    def run(count):
        for uid in uids[:count]:
            cls(made, uid)

    return run, noop


_SHORT: dict[type, type] = {}


def _short(cls):
    """
    C{class Short(cls): sessionTimeout = 60}, the README's subclass, one per implementation.
    """
    if cls not in _SHORT:
        _SHORT[cls] = type("Short", (cls,), {"sessionTimeout": 60})
    return _SHORT[cls]


def _constructSubclass(cls, n):
    return _construct(_short(cls), n)


def _constructAndStart(cls, n):
    made = site(cls)
    uids = [b"%064d" % i for i in range(n)]
    sessions = []

    def run(count):
        append = sessions.append
        for uid in uids[:count]:
            session = cls(made, uid)
            session.startCheckingExpiration()
            append(session)

    return run, lambda: cancelAll(sessions)


def _touch(cls, n):
    session = cls(site(cls), b"touch")
    session.startCheckingExpiration()
    touch = session.touch

    def run(count):
        for _ in range(count):
            touch()

    return run, lambda: cancelAll([session])


def _touchInTurn(cls, n):
    # What requests do: touch many sessions, one after another.
    made = site(cls)
    sessions = []
    for i in range(100):
        session = cls(made, b"%d" % i)
        session.startCheckingExpiration()
        sessions.append(session)
    order = sessions * (n // 100 + 1)

    def run(count):
        for session in order[:count]:
            session.touch()

    return run, lambda: cancelAll(sessions)


def _getComponent(interface):
    def prepare(cls, n):
        session = cls(site(cls), b"component")
        session.getComponent(interface)
        getComponent = session.getComponent

        def run(count):
            for _ in range(count):
                getComponent(interface)

        return run, noop

    return prepare


def _expire(cls, n):
    made = site(cls)
    sessions = []
    for i in range(n):
        session = made.sessions[b"%d" % i] = cls(made, b"%d" % i)
        session.startCheckingExpiration()
        for _ in range(3):
            session.notifyOnExpire(noop)
        sessions.append(session)

    def run(count):
        for session in sessions[:count]:
            session.expire()

    return run, lambda: cancelAll(sessions)


def _namespaces(cls, n):
    ns = cls(site(cls), b"ns").sessionNamespaces

    def run(count):
        for i in range(count):
            ns["visits"] = i
            ns["visits"]

    return run, noop


def _attributes(cls, n):
    session = cls(site(cls), b"attributes")

    def run(count):
        for _ in range(count):
            session.uid  # noqa: B018 (the read is what is measured)
            session.lastModified  # noqa: B018
            session.sessionNamespaces  # noqa: B018

    return run, noop


def _makeSession(cls, n):
    # txsession's whole session path: its Site (ids made in Rust) with its Session.
    if cls is txsession.Session:
        made = txsession.Site(resource.Resource(), reactor=reactor)
    else:
        made = site(cls)

    def run(count):
        for _ in range(count):
            made.makeSession()

    return run, lambda: cancelAll(made.sessions.values())


SCENARIOS: list[tuple[str, Callable]] = [
    ("construct Session(site, uid)", _construct),
    ("construct a subclass (sessionTimeout = 60)", _constructSubclass),
    ("construct + startCheckingExpiration", _constructAndStart),
    ("touch (checking expiration)", _touch),
    ("touch, 100 started sessions in turn", _touchInTurn),
    ("getComponent, cache hit", _getComponent(ICached)),
    ("getComponent, temporary adapter", _getComponent(ITemporary)),
    ("getComponent, miss", _getComponent(IMissing)),
    ("expire with 3 callbacks", _expire),
    ("sessionNamespaces set + get", _namespaces),
    ("read uid, lastModified, sessionNamespaces", _attributes),
    ("Site.makeSession (txsession.Site)", _makeSession),
]
