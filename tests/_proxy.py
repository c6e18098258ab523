"""
A fault-injecting TCP proxy for the tests, in process on Twisted's reactor, modelled on
Toxiproxy (Shopify/toxiproxy: a link of two pipes per connection, toxics per direction).

    proxy = FaultProxy(redisPort)            # listens on 127.0.0.1, port 0
    store = RedisStore(f"redis://127.0.0.1:{proxy.port}/0")
    proxy.latency(250, jitter=100)           # each chunk 150..350 ms late, in order
    proxy.stall(UPSTREAM)                    # hold what the client sends ...
    proxy.release()                          # ... and deliver it now
    proxy.cut()                              # abort every connection (RST)
    yield proxy.reset()                      # no toxics, accepting again
    yield proxy.stop()

It only listens on, and only connects to, 127.0.0.1. Each accepted connection (the
I{downstream} side, toward the client) gets its own connection to the upstream server; bytes
from the client to the server go I{upstream}, replies go I{downstream}. Each direction of each
connection is a pipe: a queue of chunks, each with the instant it is due, delivered in order.

The toxics, set at any time, apply to live connections and new ones, per direction
(C{UPSTREAM}, C{DOWNSTREAM}, or C{BOTH}, the default):
- L{FaultProxy.latency}: each chunk is delayed by C{ms} plus or minus a uniform C{jitter},
  and never overtakes the chunk before it, so order within a connection is kept; connections
  delayed differently are reordered against each other. Setting 0 delivers what waits now.
- L{FaultProxy.slicer}: chunks are cut into pieces of about C{average} bytes (plus or minus
  C{variation}), written C{delay} ms apart, so the reader sees them in separate reads.
- L{FaultProxy.stall}: nothing of that direction is delivered (a black hole) until
  L{FaultProxy.release}, which delivers it all, in order; with C{closeAfter} (ms), each stalled
  connection is aborted that long after the stall reaches it, as Toxiproxy's timeout toxic.
- L{FaultProxy.limitData}: each connection is closed once C{nbytes} more bytes of that
  direction went through (counted from when the toxic is set, or from the start of a new
  connection): the prefix is delivered and the connection closed, cutting a reply or a command
  mid-frame, as Toxiproxy's limit_data.
- L{FaultProxy.cut}: aborts every current connection, both sides (an RST each way).
- L{FaultProxy.down}: the server is unreachable: current connections are cut and new ones are
  refused (the port stops listening: C{ECONNREFUSED}) or, with C{refuse=False}, accepted and
  aborted at once. L{FaultProxy.up} undoes it.

Closing follows TCP: a side that closes cleanly (FIN) has what it sent delivered first, then
the other side is closed; a side that aborts (RST), or a cut, drops whatever is still held in
either direction and aborts the other side. So a command held by a stall or a latency is
never delivered after its client gave up on the connection.

L{FaultProxy.stats} counts connections, bytes and cuts; L{FaultProxy.reset} removes every
toxic and brings the proxy up; L{FaultProxy.stop} closes everything and returns a
L{Deferred} that fires once every socket is closed (a clean reactor for trial).
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any

from twisted.internet import defer, error
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.python.failure import Failure

UPSTREAM = "upstream"
DOWNSTREAM = "downstream"
BOTH = "both"
_DIRECTIONS = (UPSTREAM, DOWNSTREAM)

LOOPBACK = "127.0.0.1"

# Queue markers: close the destination once what is before is delivered (the source closed
# cleanly), or close the whole connection there (a data limit was reached).
_FIN = "fin"
_LIMIT = "limit"


def _directions(direction: str) -> tuple[str, ...]:
    if direction == BOTH:
        return _DIRECTIONS
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction is {UPSTREAM!r}, {DOWNSTREAM!r} or {BOTH!r}: {direction!r}")
    return (direction,)


class _Item:
    __slots__ = ("due", "data")

    def __init__(self, due: float, data: bytes | str) -> None:
        self.due = due
        self.data = data


class _Pipe:
    """
    One direction of one connection: chunks waiting for their instant, in order.
    """

    def __init__(self, link: _Link, direction: str) -> None:
        self.link = link
        self.direction = direction
        self.queue: deque[_Item] = deque()
        self.lastDue = 0.0
        self.timer: Any = None
        proxy = link.proxy
        self.stalled = proxy._stalled[direction] is not None
        self.allowance: int | None = proxy._limit[direction]
        self.dead = False

    def feed(self, data: bytes) -> None:
        if self.dead or self.link.closing:
            return
        proxy = self.link.proxy
        limited = False
        if self.allowance is not None:
            if self.allowance <= 0:
                return
            if len(data) >= self.allowance:
                data = data[: self.allowance]
                limited = True
            self.allowance -= len(data)
        proxy.bytes[self.direction] += len(data)
        now = proxy._reactor.seconds()
        due = max(now + proxy._delay(self.direction), self.lastDue)
        for offset, piece in proxy._slices(self.direction, data):
            self._append(max(due + offset, self.lastDue), piece)
        if limited:
            self._append(self.lastDue, _LIMIT)
        self.pump()

    def finish(self) -> None:
        """
        The source closed cleanly: close the destination after what is queued.
        """
        if not self.dead:
            self._append(max(self.lastDue, self.link.proxy._reactor.seconds()), _FIN)
            self.pump()

    def _append(self, due: float, data: bytes | str) -> None:
        self.queue.append(_Item(due, data))
        self.lastDue = due

    def flush(self) -> None:
        """
        Everything queued is due now (a latency removed).
        """
        now = self.link.proxy._reactor.seconds()
        for item in self.queue:
            item.due = min(item.due, now)
        self.lastDue = min(self.lastDue, now)
        self.pump()

    def pump(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        reactor = self.link.proxy._reactor
        while self.queue and not self.stalled and not self.dead:
            item = self.queue[0]
            wait = item.due - reactor.seconds()
            if wait > 0:
                self.timer = reactor.callLater(wait, self.pump)
                return
            destination = self.link.destination(self.direction)
            if destination is None:
                # Still connecting upstream: the link pumps again once connected.
                return
            self.queue.popleft()
            if item.data == _FIN:
                self.dead = True
                destination.loseConnection()
            elif item.data == _LIMIT:
                self.link.limitReached(self.direction)
            else:
                destination.write(item.data)

    def drop(self) -> None:
        self.dead = True
        self.queue.clear()
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


class _Link:
    """
    One proxied connection: the client's side, the server's side, and a pipe each way.
    """

    def __init__(self, proxy: FaultProxy, client: Any) -> None:
        self.proxy = proxy
        self.client = client
        self.server: Any = None
        self.connector: Any = None
        self.clientLost = False
        self.serverLost = False
        self.closing = False
        self.done: defer.Deferred[None] = defer.Deferred()
        self.pipes = {d: _Pipe(self, d) for d in _DIRECTIONS}
        self.closeTimers: dict[str, Any] = {}
        for direction in _DIRECTIONS:
            closeAfter = proxy._stalled[direction]
            if closeAfter:
                self.closeAfter(direction, closeAfter)

    def destination(self, direction: str) -> Any:
        return self.server if direction == UPSTREAM else self.client

    def connectUpstream(self) -> None:
        self.connector = self.proxy._reactor.connectTCP(
            LOOPBACK, self.proxy.upstreamPort, _ServerFactory(self), timeout=5
        )

    def serverConnected(self, transport: Any) -> None:
        if self.closing:
            transport.abortConnection()
            return
        self.server = transport
        for pipe in self.pipes.values():
            pipe.pump()

    def serverFailed(self, reason: Failure) -> None:
        self.serverLost = True
        self.abort()
        self._checkDone()

    def lost(self, side: str, reason: Failure) -> None:
        if side == "client":
            self.clientLost = True
        else:
            self.serverLost = True
        if not self.closing:
            toward, back = (UPSTREAM, DOWNSTREAM) if side == "client" else (DOWNSTREAM, UPSTREAM)
            if reason.check(error.ConnectionDone):
                # A clean close: what it sent still goes, then the close; nothing more can
                # reach it.
                self.pipes[back].drop()
                self.pipes[toward].finish()
            else:
                self.abort()
        self._checkDone()

    def limitReached(self, direction: str) -> None:
        """
        A data limit: the prefix is written; close the destination after it, abort the
        source, drop the rest.
        """
        self.closing = True
        destination = self.destination(direction)
        source = self.client if direction == UPSTREAM else self.server
        for pipe in self.pipes.values():
            pipe.drop()
        self._cancelCloseTimers()
        if destination is not None:
            destination.loseConnection()
        if source is not None:
            source.abortConnection()

    def closeAfter(self, direction: str, ms: float) -> None:
        timer = self.closeTimers.get(direction)
        if timer is not None and timer.active():
            timer.cancel()
        self.closeTimers[direction] = self.proxy._reactor.callLater(ms / 1000.0, self.abort)

    def cancelCloseTimer(self, direction: str) -> None:
        timer = self.closeTimers.pop(direction, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _cancelCloseTimers(self) -> None:
        for direction in list(self.closeTimers):
            self.cancelCloseTimer(direction)

    def abort(self) -> None:
        """
        Drop everything held and abort both sides (an RST each way).
        """
        if self.closing:
            return
        self.closing = True
        for pipe in self.pipes.values():
            pipe.drop()
        self._cancelCloseTimers()
        if not self.clientLost:
            self.client.abortConnection()
        if self.server is not None and not self.serverLost:
            self.server.abortConnection()
        elif self.server is None and self.connector is not None and not self.serverLost:
            # Still connecting: serverConnected aborts it if it connects after all.
            if self.connector.state == "connecting":
                self.connector.stopConnecting()

    def _checkDone(self) -> None:
        if self.clientLost and self.serverLost and not self.done.called:
            self.closing = True
            for pipe in self.pipes.values():
                pipe.drop()
            self._cancelCloseTimers()
            self.proxy._links.discard(self)
            self.done.callback(None)


class _ClientSide(Protocol):
    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.link: _Link | None = None

    def connectionMade(self) -> None:
        self.link = self.proxy._accepted(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if self.link is not None:
            self.link.pipes[UPSTREAM].feed(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.link is not None:
            self.link.lost("client", reason)


class _ServerSide(Protocol):
    def __init__(self, link: _Link) -> None:
        self.link = link

    def connectionMade(self) -> None:
        self.link.serverConnected(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.link.pipes[DOWNSTREAM].feed(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.link.lost("server", reason)


class _ServerFactory(ClientFactory):
    def __init__(self, link: _Link) -> None:
        self.link = link

    def buildProtocol(self, addr: Any) -> _ServerSide:
        return _ServerSide(self.link)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.link.serverFailed(reason)


class _ListeningFactory(Factory):
    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy

    def buildProtocol(self, addr: Any) -> _ClientSide:
        return _ClientSide(self.proxy)


class FaultProxy:
    """
    A TCP proxy from C{127.0.0.1:port} (L{port}, chosen by the system) to
    C{127.0.0.1:upstreamPort}, with toxics settable at any time. See the module docstring.

    @param seed: Seeds the proxy's own random numbers (jitter, slice sizes).
    """

    def __init__(self, upstreamPort: int, seed: int = 0, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.upstreamPort = int(upstreamPort)
        self._random = random.Random(seed)
        self._factory = _ListeningFactory(self)
        self._links: set[_Link] = set()
        self._latency = {d: (0.0, 0.0) for d in _DIRECTIONS}
        self._slicer: dict[str, tuple[int, int, float] | None] = dict.fromkeys(_DIRECTIONS)
        # None: not stalled; else the ms after which a stalled connection is aborted (0: never).
        self._stalled: dict[str, float | None] = dict.fromkeys(_DIRECTIONS)
        self._limit: dict[str, int | None] = dict.fromkeys(_DIRECTIONS)
        self._refusing = False
        self._closingNew = False
        self._stopped = False
        # What the listening port is doing: every change of it waits for the one before.
        self._portChange: defer.Deferred[None] = defer.succeed(None)
        self._listening: Any = self._reactor.listenTCP(0, self._factory, interface=LOOPBACK)
        self.port: int = self._listening.getHost().port
        self.stats = {"connections": 0, "cuts": 0, "refused": 0}
        self.bytes = dict.fromkeys(_DIRECTIONS, 0)

    def __repr__(self) -> str:
        return f"<FaultProxy 127.0.0.1:{self.port} -> 127.0.0.1:{self.upstreamPort}>"

    # Toxics.

    def latency(self, ms: float, jitter: float = 0.0, direction: str = BOTH) -> None:
        """
        Delay each chunk by C{ms} +/- C{jitter} milliseconds; C{0} removes the toxic and
        delivers what it holds now.
        """
        if ms < 0 or jitter < 0:
            raise ValueError("latency and jitter are not negative")
        for d in _directions(direction):
            self._latency[d] = (ms / 1000.0, jitter / 1000.0)
            if ms == 0 and jitter == 0:
                for link in list(self._links):
                    link.pipes[d].flush()

    def slicer(
        self, average: int | None, variation: int = 0, delay: float = 0.5, direction: str = BOTH
    ) -> None:
        """
        Cut chunks into pieces of C{average} +/- C{variation} bytes, C{delay} ms apart;
        C{None} removes the toxic.
        """
        if average is not None and (average < 1 or variation < 0 or delay < 0):
            raise ValueError("a slice is at least one byte, its variation and delay not negative")
        for d in _directions(direction):
            self._slicer[d] = None if average is None else (average, variation, delay / 1000.0)

    def stall(self, direction: str = BOTH, closeAfter: float | None = None) -> None:
        """
        Hold every byte of C{direction} until L{release}; with C{closeAfter}, abort each
        stalled connection that many milliseconds after the stall reaches it.
        """
        for d in _directions(direction):
            self._stalled[d] = float(closeAfter or 0)
            for link in list(self._links):
                link.pipes[d].stalled = True
                if closeAfter:
                    link.closeAfter(d, closeAfter)

    def release(self, direction: str = BOTH) -> None:
        """
        End a stall: what it held is delivered now, in order.
        """
        for d in _directions(direction):
            self._stalled[d] = None
            for link in list(self._links):
                link.cancelCloseTimer(d)
                pipe = link.pipes[d]
                pipe.stalled = False
                pipe.pump()

    def limitData(self, nbytes: int | None, direction: str = BOTH) -> None:
        """
        Close each connection once C{nbytes} more bytes of C{direction} went through; C{None}
        removes the toxic.
        """
        if nbytes is not None and nbytes < 0:
            raise ValueError(f"a data limit is not negative: {nbytes!r}")
        for d in _directions(direction):
            self._limit[d] = nbytes
            for link in list(self._links):
                link.pipes[d].allowance = nbytes
                if nbytes == 0:
                    link.limitReached(d)

    def cut(self) -> None:
        """
        Abort every current connection, both sides, dropping what is held.
        """
        self.stats["cuts"] += 1
        for link in list(self._links):
            link.abort()

    def down(self, refuse: bool = True) -> defer.Deferred[None]:
        """
        Make the server unreachable: cut every connection, and refuse new ones (the port stops
        listening) or, with C{refuse=False}, accept and abort them at once. Fires when done.
        """
        self.cut()
        if not refuse:
            self._closingNew = True
            return defer.succeed(None)
        self._refusing = True
        return self._changePort(listen=False)

    def up(self) -> defer.Deferred[None]:
        """
        Accept connections again, on the same port. Fires once listening.
        """
        self._closingNew = False
        self._refusing = False
        return self._changePort(listen=True)

    def reset(self) -> defer.Deferred[None]:
        """
        Remove every toxic (delivering what stalls and latencies hold) and bring the proxy up.
        Fires once it accepts connections.
        """
        self.release()
        self.latency(0)
        self.slicer(None)
        self.limitData(None)
        return self.up()

    def stop(self) -> defer.Deferred[None]:
        """
        Stop listening and abort every connection; fires once every socket is closed.
        """
        self._stopped = True
        waits = [self._changePort(listen=False)]
        for link in list(self._links):
            link.abort()
            waits.append(link.done)
        return defer.gatherResults(waits).addCallback(lambda _: None)

    # Internals.

    def _changePort(self, listen: bool) -> defer.Deferred[None]:
        """
        Start or stop listening, after any change asked for before; fires when done.
        """

        def change(_: object) -> Any:
            if listen:
                if self._listening is None and not self._stopped and not self._refusing:
                    return self._listenAgain(40)
            elif self._listening is not None:
                listening, self._listening = self._listening, None
                return listening.stopListening()
            return None

        def report(result: object) -> None:
            if isinstance(result, Failure):
                changed.errback(result)
            else:
                changed.callback(None)

        changed: defer.Deferred[None] = defer.Deferred()
        self._portChange.addCallback(change).addBoth(report)
        return changed

    def _listenAgain(self, tries: int) -> Any:
        try:
            self._listening = self._reactor.listenTCP(self.port, self._factory, interface=LOOPBACK)
        except error.CannotListenError:
            # The port is briefly taken (an outgoing connection's local port, say): retry.
            if tries <= 0:
                raise
            waiting: defer.Deferred[None] = defer.Deferred()
            self._reactor.callLater(0.05, waiting.callback, None)
            return waiting.addCallback(lambda _: self._listenAgain(tries - 1))
        return None

    def _accepted(self, transport: Any) -> _Link | None:
        if self._closingNew or self._stopped:
            self.stats["refused"] += 1
            transport.abortConnection()
            return None
        self.stats["connections"] += 1
        link = _Link(self, transport)
        self._links.add(link)
        link.connectUpstream()
        return link

    def _delay(self, direction: str) -> float:
        ms, jitter = self._latency[direction]
        if not ms and not jitter:
            return 0.0
        return max(0.0, ms + self._random.uniform(-jitter, jitter))

    def _slices(self, direction: str, data: bytes) -> list[tuple[float, bytes]]:
        slicer = self._slicer[direction]
        if slicer is None or len(data) <= 1:
            return [(0.0, data)]
        average, variation, delay = slicer
        pieces = []
        offset = 0.0
        start = 0
        while start < len(data):
            size = max(1, average + self._random.randint(-variation, variation))
            pieces.append((offset, data[start : start + size]))
            start += size
            offset += delay
        return pieces
