"""
L{Session}: Twisted's L{twisted.web.server.Session}, with its methods from Rust.
"""

from typing import TYPE_CHECKING

from twisted.internet.base import DelayedCall
from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.web import server

from txsession import _txsession
from txsession._componentized import Componentized, TwistedComponentized

TwistedSession = server.Session
_SharedDelayedCall = _txsession.SharedDelayedCall

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

        # touch and expire stay Python: they mostly read and write instance attributes and
        # call Python (the reactor, callbacks, DelayedCall), which the interpreter's
        # specialised bytecode does in fewer instructions than the C API can from Rust. They
        # beat Twisted's by doing DelayedCall.reset's and active's bodies inline for Twisted's
        # own DelayedCall, with the same checks, clock reads and arithmetic.

        def touch(self):
            """
            Records the time and moves the expiry. Raises Twisted's C{AlreadyCalled} when the
            timer already fired: C{Request.getSession} relies on that to replace an expired
            session.
            """
            reactor = self._reactor
            now = self.lastModified = reactor.seconds()
            call = self._expireCall
            if call is not None:
                # sessionTimeout is read once, as Twisted reads it, in each branch: a local
                # that only one branch needs costs the others its store.
                kind = type(call)
                if kind is DelayedCall:
                    # DelayedCall.reset(timeout), moving the call later: its whole effect.
                    timeout = self.sessionTimeout
                    if call.cancelled:
                        raise AlreadyCancelled
                    if call.called:
                        raise AlreadyCalled
                    newTime = call.seconds() + timeout
                    if newTime < call.time:
                        call.reset(timeout)
                    else:
                        call.delayed_time = newTime - call.time
                elif kind is _SharedDelayedCall:
                    call._resetFrom(reactor, now, self.sessionTimeout)
                else:
                    call.reset(self.sessionTimeout)

        def expire(self):
            """
            Twisted's order, kept on purpose: remove from C{site.sessions} (a C{KeyError} if
            it is already gone), run the callbacks (an exception propagates), then cancel the
            timer.
            """
            del self.site.sessions[self.uid]
            for c in self.expireCallbacks:
                c()
            self.expireCallbacks = []
            call = self._expireCall
            if call:
                if type(call) is DelayedCall:
                    active = not (call.cancelled or call.called)
                elif type(call) is _SharedDelayedCall:
                    # active() and cancel() in one call.
                    if call._cancelIfActive():
                        self._expireCall = None
                    return
                else:
                    active = call.active()
                if active:
                    call.cancel()
                    # Breaks the cycle session -> delayed call -> bound expire -> session.
                    self._expireCall = None


_txsession.bind_twisted_session(
    TwistedSession, vars(TwistedComponentized)["__init__"], vars(Session)["touch"]
)
