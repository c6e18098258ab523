"""
txsession: a faster drop-in replacement for Twisted's web L{Session} and its base
L{Componentized}, written in Rust.

Switch a Twisted web app with one line::

    site.sessionFactory = txsession.Session
"""

import os
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from txsession._componentized import Componentized, ReprableComponentized
from txsession._txsession import Namespaces, __version__, reseed_after_fork

if TYPE_CHECKING:
    from txsession._session import Session
    from txsession.redis import RedisStore
    from txsession.web import Request, Site, renewSession

MutableMapping.register(Namespaces)

# A forked child must not continue its parent's stream of session ids. Windows has no fork.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=reseed_after_fork)

_LAZY = {
    "Session": "txsession._session",
    "Site": "txsession.web",
    "Request": "txsession.web",
    "renewSession": "txsession.web",
    "RedisStore": "txsession.redis",
}


def __getattr__(name: str) -> Any:
    # Session, Site, Request, renewSession and RedisStore import Twisted's web and
    # application modules, which is done when
    # first asked for: until then txsession's Componentized can take Twisted's place before
    # anything derives from it (python -m txsession.conformance relies on this).
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'txsession' has no attribute {name!r}")


__all__ = [
    "Componentized",
    "Namespaces",
    "RedisStore",
    "ReprableComponentized",
    "Request",
    "Session",
    "Site",
    "__version__",
    "renewSession",
]
