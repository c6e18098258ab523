"""
L{Session}: Twisted's L{twisted.web.server.Session}, with its methods from Rust.
"""

from typing import TYPE_CHECKING

from twisted.web import server

from txsession import _txsession
from txsession._componentized import Componentized, TwistedComponentized

TwistedSession = server.Session

if TYPE_CHECKING:

    class Session(_txsession.Session, Componentized, TwistedSession): ...

else:
    # Where twisted.web.server was imported after txsession's Componentized took Twisted's
    # place, Twisted's Session already derives from it, and must come first.
    _bases = (
        (_txsession.Session, TwistedSession)
        if issubclass(TwistedSession, Componentized)
        else (_txsession.Session, Componentized, TwistedSession)
    )

    class Session(*_bases):
        """
        A L{twisted.web.server.Session} whose methods run in Rust, with its state in instance
        attributes where Twisted keeps it, and C{sessionNamespaces} a L{txsession.Namespaces}.
        """

        __module__ = "txsession"


_txsession.bind_twisted_session(TwistedSession, vars(TwistedComponentized)["__init__"])
