"""
txsession: a faster drop-in replacement for Twisted's web L{Session} and its base
L{Componentized}, written in Rust.

Switch a Twisted web app with one line::

    site.sessionFactory = txsession.Session
"""

from collections.abc import MutableMapping
from io import StringIO
from pprint import pprint

from txsession._txsession import Componentized, Namespaces, Session, __version__

MutableMapping.register(Namespaces)


class ReprableComponentized(Componentized):
    """
    A L{Componentized} whose C{repr} lists its components, as Twisted's.
    """

    def __repr__(self) -> str:
        sio = StringIO()
        pprint(dict(self._adapterCache), sio)
        return sio.getvalue()


__all__ = ["Componentized", "Namespaces", "ReprableComponentized", "Session", "__version__"]
