"""
Client-side caching for L{txsession.redis.RedisStore} (C{cache=True}): which copies of stored
sessions a process may use without reading them again.

Each data connection speaks RESP3 (C{HELLO 3}) and turns on C{CLIENT TRACKING ON NOLOOP}: Redis
remembers the keys the connection read and, when one changes (written, renamed, deleted,
evicted, flushed, or deleted once expired), pushes an invalidation on the same connection.
Pushes and replies come in the order Redis produced them, so a reply read before a push
reflects Redis before that change, and one read after reflects it: there is no race between a
read and an invalidation, and no second connection.

A I{stamp} says that one owner's copy (one L{txsession.Site}'s) of a session key is what Redis
holds: it is made when a tracked read of the key is answered, counts once the owner has taken
the reply in, and ends with an invalidation of the key, with its connection, after C{maxAge}
seconds, or when the key runs out as far as this process knows (Redis pushes an expiry only
when it gets round to deleting the key). Copies count only while Redis's tracking table is
known to have room (see C{_RedisProtocol.tableHasRoom} in L{txsession.redis}). Redis drops a
key from its tracking table at any change to it, including this connection's own, which
C{NOLOOP} does not report. So every script that writes a key ends by reading it (the connection
is tracking it again), and a write's reply keeps, makes or ends stamps here as the write
demands: the writer's stamp stays valid (its copy has the write), every other owner's ends
(Redis does not tell this connection of its own writes).
"""

from __future__ import annotations

import select
import socket
from typing import Any

# The kinds of tracked command: what its reply does to the stamps of the keys it names.
READ = 0  # a session's fields: the owner's copy is what Redis holds
WRITE = 1  # a save: the writer's copy has it, other owners' copies do not
DELETE = 2  # deletions (logouts): every copy of each key the reply names ends
REFRESH = 3  # restarted idle timeouts: the reply says, per key, its time to live (0: gone)


class Tracked(list):  # type: ignore[type-arg]
    """
    A command whose reply the tracker reads: C{kind}, the session C{key} it is about (for a
    save, the key written), C{source} (for a save, the key the session was stored under),
    the C{owner} of the copy, and for a save the session's idle C{timeout} (seconds).
    C{stamp}: for a read, the stamp its reply made.
    """

    __slots__ = ("kind", "key", "source", "owner", "timeout", "stamp")


def tracked(
    command: list[bytes],
    kind: int,
    key: bytes | None,
    owner: Any = None,
    source: bytes | None = None,
    timeout: float = 0.0,
) -> Tracked:
    out = Tracked(command)
    out.kind, out.key, out.source, out.owner, out.timeout = kind, key, source, owner, timeout
    out.stamp = None
    return out


class Stamp:
    """
    One owner's copy of the session C{key} is what Redis holds, as of C{at} (when it was
    last read), for as long as C{protocol} lives and no invalidation of the key comes.

    A read's stamp is C{ready} once its owner has taken the reply in (until then, or when
    that failed, the copy is not what the reply said). C{timeout}: the session's idle
    timeout as stored (seconds); C{expires}: when its key runs out in Redis, as far as this
    process knows (reactor time); C{refreshing}: a restart of that timeout is on its way.
    """

    __slots__ = ("key", "owner", "protocol", "at", "timeout", "expires", "ready", "refreshing")

    def __init__(
        self, key: bytes, owner: Any, protocol: Any, at: float, timeout: float, expires: float
    ) -> None:
        self.key = key
        self.owner = owner
        self.protocol = protocol
        self.at = at
        self.timeout = timeout
        self.expires = expires
        self.ready = False
        self.refreshing = False


class Tracker:
    """
    The stamps of one store, across its connections (one per cluster node), by key.
    """

    def __init__(self, clock: Any, maxAge: float) -> None:
        self.clock = clock
        self.maxAge = maxAge
        self.stamps: dict[bytes, Stamp] = {}

    # What connections report.

    def replied(self, protocol: Any, command: Tracked, reply: Any) -> None:
        """
        C{reply} answers C{command}, on C{protocol}, which tracks keys: in order with the
        pushes received on it.
        """
        stamps = self.stamps
        kind, key = command.kind, command.key
        if kind == READ:
            # Fields; or nil, false (gone) or a tombstone (renamed): nothing to keep.
            if type(reply) is list and not (len(reply) == 2 and reply[0] == b"m:f"):
                now = self.clock.seconds()
                # m:t, the stored idle timeout (ms), and the script's last field, m:p: the
                # milliseconds it has left.
                fields = dict(zip(reply[::2], reply[1::2]))
                try:
                    timeout = int(fields[b"m:t"]) / 1000
                    left = int(fields[b"m:p"]) / 1000
                except (KeyError, ValueError, TypeError):
                    stamps.pop(key, None)
                    return
                stamp = Stamp(key, command.owner, protocol, now, timeout, now + left)
                stamps[key] = command.stamp = stamp
            else:
                stamps.pop(key, None)
        elif kind == WRITE:
            owner, source = command.owner, command.source
            if reply != 1:
                # Not written: the session is gone or renamed.
                stamps.pop(key, None)
                if source is not None:
                    stamps.pop(source, None)
                return
            now = self.clock.seconds()
            if source is None:
                # Made here: the writer's copy is all there is.
                made = Stamp(key, owner, protocol, now, command.timeout, now + command.timeout)
                made.ready = True
                stamps[key] = made
                return
            stamp = stamps.get(source)
            if stamp is not None and (stamp.owner is not owner or stamp.protocol is not protocol):
                del stamps[source]
                stamp = None
            if source != key:
                # Renamed: the new key holds what the old one did, with this write.
                stamps.pop(source, None)
                stamps.pop(key, None)
                if stamp is not None:
                    stamp.key = key
                    stamps[key] = stamp
            if stamp is not None:
                stamp.timeout = command.timeout
                stamp.expires = now + command.timeout
        elif kind == DELETE:
            # The keys deleted (a rename's tombstones lead to more), as the script names them.
            if type(reply) is list:
                for name in reply:
                    stamps.pop(name, None)
            if key is not None:
                stamps.pop(key, None)
        elif kind == REFRESH:
            # Per key, the milliseconds its timeout has now (0: the session is gone).
            names = command[3 : 3 + int(command[2])]
            lefts = reply if type(reply) is list else [None] * len(names)
            now = self.clock.seconds()
            for name, left in zip(names, lefts):
                stamp = stamps.get(name)
                if stamp is None:
                    continue
                stamp.refreshing = False
                if type(left) is int and left > 0:
                    stamp.expires = now + left / 1000
                elif type(left) is int:
                    del stamps[name]

    def pushed(self, protocol: Any, push: tuple[Any, ...]) -> None:
        """
        A push received on C{protocol}: an invalidation ends the stamps of the keys it names
        (of every key read on C{protocol}, when it names none: a flush).
        """
        if len(push) < 2 or push[0] not in (b"invalidate", "invalidate"):
            return
        keys = push[1]
        stamps = self.stamps
        if keys is None:
            self.lost(protocol)
            return
        for key in keys:
            stamps.pop(key, None)

    def lost(self, protocol: Any) -> None:
        """
        C{protocol} is gone (or Redis flushed what it tracks): every stamp it made ends.
        """
        self.stamps = {k: s for k, s in self.stamps.items() if s.protocol is not protocol}

    # What the store asks.

    def fresh(self, key: bytes, owner: Any, now: float) -> Stamp | None:
        """
        C{owner}'s stamp for C{key} if its copy may be used without reading it: its
        connection is up and not being ended by this client (which hands out nothing more
        read from it), no invalidation may be waiting on it unread (L{pushMayWait}), and
        the stamp is younger than C{maxAge}.
        """
        stamp = self.stamps.get(key)
        if stamp is None or stamp.owner is not owner or not stamp.ready:
            return None
        protocol = stamp.protocol
        if (
            protocol.ending
            or not protocol.live
            or not protocol.tableHasRoom(now)
            or protocol.pushMayWait()
        ):
            return None
        if now - stamp.at >= self.maxAge or now >= stamp.expires:
            # Too old to trust; or its key has run out in Redis, which pushes an expiry only
            # once it gets round to deleting the key (minutes later, on a busy server).
            del self.stamps[key]
            return None
        return stamp

    def applied(self, stamp: Stamp) -> None:
        """
        The owner has taken in the reply that made C{stamp}: its copy is what the reply said,
        so the stamp counts, unless an invalidation or a later read replaced it meanwhile.
        """
        if self.stamps.get(stamp.key) is stamp:
            stamp.ready = True

    def forget(self, key: bytes, owner: Any) -> None:
        stamp = self.stamps.get(key)
        if stamp is not None and stamp.owner is owner:
            del self.stamps[key]


# How many unread bytes a connection's check looks at (MSG_PEEK) for an invalidation.
PEEK = 65536


def socketOf(transport: Any) -> tuple[Any, bool]:
    """
    The socket under C{transport}, or C{None}; and whether the bytes on it are the
    protocol's own (no TLS layer between).
    """
    plain = True
    for _ in range(4):
        if transport is None:
            return None, False
        # The transport's own attribute: a protocol wrapper (TLS) passes the lookup of any
        # attribute it lacks on to the transport under it, the socket's included.
        sock = getattr(transport, "__dict__", {}).get("socket")
        if isinstance(sock, socket.socket):
            return sock, plain
        plain = False
        transport = getattr(transport, "transport", None)
    return None, False


class Waiting:
    """
    What waits, unread by the reactor, on one connection's socket; or read, and not yet
    handed out.
    """

    __slots__ = ("sock", "plain", "decoder", "poller", "unread")

    def __init__(self, sock: Any, plain: bool, decoder: Any) -> None:
        # Pushes read from the socket with replies and not yet handed out: a reply's
        # callback, run before them, may answer a request and let another one run.
        self.unread = 0
        self.sock = sock
        self.plain = plain
        # The connection's RESP decoder: what of a reply it holds (its buffered bytes).
        self.decoder = decoder
        # A poll with no timeout says whether anything waits, without the exception a
        # non-blocking recv raises when nothing does.
        self.poller: Any = None
        if sock is not None and hasattr(select, "poll"):
            self.poller = select.poll()
            self.poller.register(sock, select.POLLIN)

    def pushMayWait(self) -> bool:
        """
        Whether an invalidation may be waiting: C{False} when nothing waits, or when what
        waits is bytes of the connection's own (no TLS) that start at a reply's boundary (the
        decoder holds none of one), fit in L{PEEK} bytes and hold no
        C{invalidate}, which every invalidation push spells out. Replies to other commands,
        which wait there whenever requests are in flight, are no reason to read: the copy is
        then as Redis held it before those commands, which have not answered yet. C{True}
        whenever it cannot be told, and while a push read with replies waits to be handed
        out.
        """
        if self.unread:
            return True
        sock = self.sock
        if sock is None:
            return True
        if self.poller is not None and not self.poller.poll(0):
            # Nothing waits; unless the decoder holds the head of what was cut off, perhaps
            # of a push.
            return self.decoder.buffered > 0
        try:
            waiting = sock.recv(PEEK, socket.MSG_PEEK)
        except BlockingIOError:
            return self.decoder.buffered > 0
        except OSError:
            return True
        if not waiting or not self.plain or self.decoder.buffered or len(waiting) == PEEK:
            # The end of the stream, bytes TLS still has to decrypt, or more than was seen.
            return True
        return b"invalidate" in waiting
