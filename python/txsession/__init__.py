"""
txsession: a faster drop-in replacement for Twisted's web L{Session} and its base
L{Componentized}, written in Rust.

Switch a Twisted web app with one line::

    site.sessionFactory = txsession.Session
"""

import os
from collections.abc import MutableMapping
from io import StringIO
from pprint import pprint

from txsession._txsession import (
    Componentized,
    Namespaces,
    Session,
    __version__,
    reseed_after_fork,
)

MutableMapping.register(Namespaces)

# A forked child must not continue its parent's stream of session ids.
os.register_at_fork(after_in_child=reseed_after_fork)


class ReprableComponentized(Componentized):
    """
    A L{Componentized} whose C{repr} lists its components, as Twisted's.
    """

    def __repr__(self) -> str:
        sio = StringIO()
        pprint(dict(self._adapterCache), sio)
        return sio.getvalue()


def __getattr__(name: str):
    # Site pulls in twisted.web.server: import it only when asked for, so that importing
    # txsession does not import Twisted's web modules (the conformance runner relies on it).
    if name in ("Site", "Request"):
        from txsession import web

        return getattr(web, name)
    raise AttributeError(f"module 'txsession' has no attribute {name!r}")


__all__ = [
    "Componentized",
    "Namespaces",
    "ReprableComponentized",
    "Request",
    "Session",
    "Site",
    "__version__",
]
