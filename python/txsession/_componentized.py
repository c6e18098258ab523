"""
L{Componentized} and L{ReprableComponentized}: Twisted's classes, with their methods from Rust.

Only C{twisted.python.components} is imported here, so that these classes can take Twisted's
place before C{twisted.web.server} and the other modules that subclass them are imported.
"""

from twisted.python import components

from txsession import _txsession

# Twisted's classes as they are before anything takes their place.
TwistedComponentized = components.Componentized
TwistedReprableComponentized = components.ReprableComponentized


class Componentized(_txsession.Componentized, TwistedComponentized):
    """
    A L{twisted.python.components.Componentized} whose methods run in Rust. Its C{__init__} is
    Twisted's, so it works on any object, as Twisted's does.
    """

    __module__ = "txsession"


class ReprableComponentized(Componentized, TwistedReprableComponentized):
    """
    A L{twisted.python.components.ReprableComponentized} whose methods run in Rust.
    """

    __module__ = "txsession"
