"""
L{RedisStore}: sessions in Redis, shared by every process and host that uses the same server,
and surviving restarts.

The client is a small Twisted protocol on the site's reactor: Twisted's endpoints and
L{ClientService} connect and reconnect, and the Redis wire format is encoded and decoded in
Rust (C{redis-protocol}). No threads, and no blocking call on the reactor thread. Timeouts and
retries are timed by the site's reactor; a site whose reactor is a L{Clock} (a test driving
time by hand) connects through the global reactor.

Each session is one Redis hash, C{keyPrefix + uid}: a field C{n:KEY} for each namespace entry,
holding the serializer's bytes, and C{m:t}, the session's idle timeout in milliseconds. The
key's expiry is that timeout, restarted by every read and write, so Redis itself removes a
session that no process used for that long. Writes run as one Lua script each, which checks
that the session still exists: a write that arrives after a logout never brings it back.
Commands name the scripts by their SHA1 (C{EVALSHA}): each connection loads them once, when it
is made.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
import socket
from collections import deque
from typing import Any, Callable

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import tcp
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IReactorTCP, IReactorUNIX
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txsession import _redistracking, _redisurl
from txsession._txsession import RespDecoder, encode_commands
from txsession.store import (
    ISerializer,
    ISessionStore,
    JSONSerializer,
    SessionEnded,
    StoredFields,
    StoreError,
    StoreUnavailable,
    UnserializableValue,
    _shortRepr,
)

_log = Logger()

_FIELD = b"n:"
_TIMEOUT_FIELD = b"m:t"
# On the old key of a renamed session (a tombstone, for as long as the session's timeout): the
# id it was renamed to.
_RENAMED_FIELD = b"m:f"

# Arguments a script unpacks onto one Redis command at a time: Lua's unpack() has a limit
# (about 8,000 values), so big writes go in slices of this many.
_SLICE = 1000

# Each session is keyed by the SHA-256 of its id (its "member": hex), so no key, field or value
# in Redis holds a raw session id. Fields beside the namespace entries (n:KEY): m:t, the idle
# timeout (ms); m:c, when it was made, and m:l, when it was last read or written (ms of the
# writing process's reactor clock; m:l only for a session bound to a user, whose sessions are
# listed with it); m:e, its absolute end (same clock), when it has one; m:u,
# the SHA-256 of the user it is bound to. A user's sessions are the members of the set
# keyPrefix + 'u:' + that hash, which lives at least as long as each of them. A renamed
# session's old key keeps only m:f, the new member (a tombstone).
_PRELUDE = b"""
local function endSession(prefix, key, u)
  if u == nil then u = redis.call('HGET', key, 'm:u') end
  redis.call('DEL', key)
  if u then redis.call('SREM', prefix .. 'u:' .. u, string.sub(key, #prefix + 1)) end
end
local function ttl(ms, e, now)
  ms = tonumber(ms)
  if e then
    local left = tonumber(e) - tonumber(now)
    if left < ms then return math.max(1, left) end
  end
  return ms
end
local function keepSet(prefix, u, t)
  local set = prefix .. 'u:' .. u
  if redis.call('PTTL', set) < t then redis.call('PEXPIRE', set, t) end
end
"""

# KEYS[1]: the session; ARGV[1]: now (ms); ARGV[2]: the key prefix. Returns its fields, and
# m:p, the milliseconds its idle timeout has left; for a renamed session's old key, its one
# field m:f (without restarting anything); false when it is gone, or past its absolute end
# (then it is deleted). Restarts its timeout (never past its absolute end), noting the use,
# only once a tenth of the timeout has run: a read that changes nothing leaves every other
# process's cached copy valid. It ends with a read of the key, which a tracking connection's
# cache relies on (see _redistracking).
_LOAD = (
    _PRELUDE
    + b"""
local key = KEYS[1]
local v = redis.call('HMGET', key, 'm:t', 'm:f', 'm:e', 'm:u')
if not v[1] then
  if v[2] then return {'m:f', v[2]} end
  return false
end
if v[3] and tonumber(v[3]) <= tonumber(ARGV[1]) then
  endSession(ARGV[2], key, v[4])
  return false
end
local t = ttl(v[1], v[3], ARGV[1])
local left = redis.call('PTTL', key)
if left < t - math.floor(tonumber(v[1]) / 10) then
  left = t
  redis.call('PEXPIRE', key, t)
  if v[4] then
    redis.call('HSET', key, 'm:l', ARGV[1])
    keepSet(ARGV[2], v[4], t)
  end
end
local fields = redis.call('HGETALL', key)
table.insert(fields, 'm:p')
table.insert(fields, left)
return fields
"""
)

# KEYS[1]: the key to write; KEYS[2]: the key the session is stored under (the same, or the
# old key of a rename). ARGV[1]: the timeout in ms; ARGV[2]: 'new' (create KEYS[1]), 'update'
# (KEYS[1] must be a live session) or 'rename' (KEYS[2] must be, and becomes a tombstone
# naming ARGV[3]); ARGV[3]: the member KEYS[1] stands for; ARGV[4]: how many fields to set;
# ARGV[5]: now (ms); ARGV[6] and ARGV[7]: for 'new', when it was made and its absolute end
# (ms, or ''); ARGV[8]: the user to bind it to ('' to leave it); ARGV[9]: the key prefix;
# then the fields and values to set, then the fields to delete.
# Returns 1 when written, 0 when the session is gone (or past its absolute end), {'m:f',
# member} when it was renamed. Every check comes before the first write, and no write command
# after it can fail, so the script is applied whole or not at all, at any size. It ends with
# a read of the key written (for a tracking connection: see _redistracking).
_SAVE = (
    _PRELUDE
    + b"""
local ms = tonumber(ARGV[1])
if not ms or ms < 1 or ms > MAXMS or ms ~= math.floor(ms) then
  return redis.error_reply('ERR bad session timeout')
end
local mode = ARGV[2]
local key = KEYS[1]
local prefix = ARGV[9]
local e, u
if mode ~= 'new' then
  local from = KEYS[2]
  if redis.call('TYPE', from).ok ~= 'hash' then return 0 end
  local v = redis.call('HMGET', from, 'm:t', 'm:f', 'm:e', 'm:u')
  if not v[1] then
    if v[2] then return {'m:f', v[2]} end
    return 0
  end
  e, u = v[3], v[4]
  if e and tonumber(e) <= tonumber(ARGV[5]) then
    endSession(prefix, from, u)
    return 0
  end
  if mode == 'rename' then
    redis.call('RENAME', from, key)
    redis.call('HSET', from, 'm:f', ARGV[3])
    redis.call('PEXPIRE', from, ttl(ARGV[1], e, ARGV[5]))
    if u then
      redis.call('SREM', prefix .. 'u:' .. u, string.sub(from, #prefix + 1))
      redis.call('SADD', prefix .. 'u:' .. u, ARGV[3])
    end
  end
elseif redis.call('TYPE', key).ok ~= 'none' then
  return redis.error_reply('session key exists already')
else
  if ARGV[7] ~= '' then e = ARGV[7] end
  redis.call('HSET', key, 'm:c', ARGV[6])
  if e then redis.call('HSET', key, 'm:e', e) end
end
if u or ARGV[8] ~= '' then
  redis.call('HSET', key, 'm:t', ARGV[1], 'm:l', ARGV[5])
else
  redis.call('HSET', key, 'm:t', ARGV[1])
end
local first = 10
local last = 9 + 2 * tonumber(ARGV[4])
for i = first, last, 2 * SLICE do
  redis.call('HSET', key, unpack(ARGV, i, math.min(i + 2 * SLICE - 1, last)))
end
for i = last + 1, #ARGV, SLICE do
  redis.call('HDEL', key, unpack(ARGV, i, math.min(i + SLICE - 1, #ARGV)))
end
local t = ttl(ARGV[1], e, ARGV[5])
redis.call('PEXPIRE', key, t)
if ARGV[8] ~= '' and u ~= ARGV[8] then
  if u then redis.call('SREM', prefix .. 'u:' .. u, ARGV[3]) end
  u = ARGV[8]
  redis.call('HSET', key, 'm:u', u)
  local set = prefix .. 'u:' .. u
  for _, m in ipairs(redis.call('SMEMBERS', set)) do
    if redis.call('HEXISTS', prefix .. m, 'm:t') == 0 then redis.call('SREM', set, m) end
  end
  redis.call('SADD', set, ARGV[3])
end
if u then keepSet(prefix, u, t) end
redis.call('EXISTS', key)
return 1
""".replace(b"SLICE", str(_SLICE).encode()).replace(b"MAXMS", b"%d" % 2**53)
)

# KEYS: sessions to delete; ARGV[1]: the key prefix. A renamed session's old key leads to the
# new one, which goes too: a logout that reaches the old name after a rename still ends it.
# Returns the keys deleted.
_DELETE = (
    _PRELUDE
    + b"""
local seen = {}
local out = {}
for _, key in ipairs(KEYS) do
  while key and not seen[key] do
    seen[key] = true
    table.insert(out, key)
    local f = redis.call('HGET', key, 'm:f')
    endSession(ARGV[1], key)
    key = f and (ARGV[1] .. f)
  end
end
return out
"""
)

# KEYS[1]: a user's set; ARGV[1]: the key prefix. Each live session of the user as {member,
# m:c, m:l}; members whose session is gone leave the set.
_USER_SESSIONS = b"""
local out = {}
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local v = redis.call('HMGET', ARGV[1] .. m, 'm:t', 'm:c', 'm:l')
  if v[1] then
    table.insert(out, {m, v[2] or '', v[3] or ''})
  else
    redis.call('SREM', KEYS[1], m)
  end
end
return out
"""

# KEYS[1]: a user's set; ARGV[1]: the key prefix; ARGV[2...]: members to keep, each with every
# member its renames lead to (a rename in flight when this runs has moved the set's member).
# Deletes every other session of the user; returns the keys of those that were live.
_LOGOUT_USER = b"""
local keep = {}
for i = 2, #ARGV do
  local m = ARGV[i]
  while m and not keep[m] do
    keep[m] = true
    m = redis.call('HGET', ARGV[1] .. m, 'm:f')
  end
end
local out = {}
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if not keep[m] then
    local key = ARGV[1] .. m
    if redis.call('HEXISTS', key, 'm:t') == 1 then
      redis.call('DEL', key)
      table.insert(out, key)
    end
    redis.call('SREM', KEYS[1], m)
  end
end
return out
"""

# KEYS[1]: a user's set; ARGV[1]: the key prefix; ARGV[2]: a member. Deletes that session if
# it is the user's; returns 1 when it was live.
_END_USER_SESSION = b"""
if redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 0 then return 0 end
redis.call('SREM', KEYS[1], ARGV[2])
local key = ARGV[1] .. ARGV[2]
local live = redis.call('HEXISTS', key, 'm:t')
redis.call('DEL', key)
return live
"""

# KEYS: sessions; ARGV[1]: now (ms); ARGV[2]: the key prefix. Restarts the idle timeout of each
# (never past its absolute end), noting the use of a bound one: what reads served from a
# cached copy no longer do. Returns, per key, the milliseconds its timeout now has, or 0 when
# the session is gone (one past its absolute end is deleted). Ends with a read of each key, as
# a tracking connection needs.
_REFRESH = (
    _PRELUDE
    + b"""
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('HMGET', key, 'm:t', 'm:e', 'm:u')
  if not v[1] then
    out[i] = 0
  elseif v[2] and tonumber(v[2]) <= tonumber(ARGV[1]) then
    endSession(ARGV[2], key, v[3])
    out[i] = 0
  else
    local t = ttl(v[1], v[2], ARGV[1])
    redis.call('PEXPIRE', key, t)
    if v[3] then
      redis.call('HSET', key, 'm:l', ARGV[1])
      keepSet(ARGV[2], v[3], t)
    end
    redis.call('EXISTS', key)
    out[i] = t
  end
end
return out
"""
)


# Each script by its SHA1: commands name it with EVALSHA; each connection loads them all (SCRIPT
# LOAD) before it carries a command.
_SCRIPTS: dict[bytes, bytes] = {}


def _script(text: bytes) -> bytes:
    sha = hashlib.sha1(text).hexdigest().encode()
    _SCRIPTS[sha] = text
    return sha


_LOAD_SHA = _script(_LOAD)
_SAVE_SHA = _script(_SAVE)
_DELETE_SHA = _script(_DELETE)
_USER_SESSIONS_SHA = _script(_USER_SESSIONS)
_LOGOUT_USER_SHA = _script(_LOGOUT_USER)
_END_USER_SESSION_SHA = _script(_END_USER_SESSION)
_REFRESH_SHA = _script(_REFRESH)


def _noScript(reply: Any) -> bool:
    return isinstance(reply, StoreError) and str(reply).startswith("NOSCRIPT")


class _Answer:
    """
    What a batch sent by C{execute(..., answer=)} fires instead of a L{Deferred}: the
    caller's C{answer}, called once, with what the Deferred of C{execute} would fire with
    (the replies, or what C{then} makes of them) or a L{Failure}. It is the same step, run
    where the Deferred's callbacks would run, without the Deferred: a session write that is
    all its request waits for answers in one call from the reply (see L{StoreFlow._send}).
    An exception C{answer} raises is logged, as a Deferred leaves an unhandled one.
    """

    __slots__ = ("called", "client", "then", "answer")

    def __init__(
        self,
        client: _RedisClient,
        then: Callable[[list[Any]], Any] | None,
        answer: Callable[[object], None],
    ) -> None:
        self.called = False
        self.client = client
        self.then = then
        self.answer = answer

    def callback(self, replies: list[Any]) -> None:
        self.called = True
        try:
            result = self.client._scripted(replies, self.then)
        except BaseException:
            result = Failure()
        giveAnswer(result, self.answer)

    def errback(self, reason: BaseException | Failure) -> None:
        self.called = True
        try:
            result = self.client._unavailable(
                reason if isinstance(reason, Failure) else Failure(reason)
            )
        except BaseException:
            result = Failure()
        giveAnswer(result, self.answer)


def giveAnswer(result: object, answer: Callable[[object], None]) -> None:
    """
    C{answer(result)}, for a caller of C{execute(..., answer=)}: an exception it raises is
    logged, as a Deferred leaves an unhandled one.
    """
    try:
        answer(result)
    except BaseException:
        _log.failure("Unhandled error while answering a Redis reply")


class _Batch:
    """
    Commands sent together, the replies received for them so far, and when they are late.
    C{deferred} is what their replies fire: a L{Deferred}, or an L{_Answer}.
    """

    __slots__ = ("commands", "count", "deferred", "replies", "deadline")

    def __init__(
        self,
        commands: list[list[bytes]],
        deferred: Deferred[list[Any]] | _Answer,
        deadline: float,
    ) -> None:
        self.commands = commands
        self.count = len(commands)
        self.deferred = deferred
        self.replies: list[Any] = []
        self.deadline = deadline


class _Next:
    """
    Commands waiting for the next connection: until when they wait, and what they were sent
    as, once they are.
    """

    __slots__ = ("commands", "data", "deferred", "sent", "timer")

    def __init__(
        self, commands: list[list[bytes]], data: bytes, deferred: Deferred[list[Any]]
    ) -> None:
        self.commands = commands
        self.data = data
        self.deferred = deferred
        self.sent: Deferred[list[Any]] | None = None
        self.timer: Any = None

    def stopWaiting(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class _RedisProtocol(Protocol):
    """
    One connection: batches of commands written at once, their replies matched in order.
    A batch not answered within the client's timeout fails, and the connection is dropped
    (the replies after it would be matched to the wrong commands): one reactor call per
    connection keeps the time, not one per batch.
    """

    def __init__(self, client: _RedisClient) -> None:
        self._client = client
        # RESP3 where the client asks for tracking (HELLO 3); RESP2 replies decode the same.
        self._decoder = RespDecoder(StoreError, resp3=client._tracker is not None)
        self._waiting: deque[_Batch] = deque()
        self._timer: Any = None
        # The socket of a plain TCP connection, written at once (see _write).
        self._sock: socket.socket | None = None
        # While replies read together are handed out: what their callbacks send, written in
        # one piece once they have all run (see _handOutAll).
        self._held: list[bytes] | None = None
        # While a TLS connection passes on the records of one read: the replies and pushes
        # decoded so far, handed out together at its end (see _readWhole).
        self._records: list[Any] | None = None
        # Redis tracks the keys this connection reads (set once HELLO 3 and CLIENT TRACKING
        # succeeded), and the connection is up.
        self.tracking = False
        self.live = True
        # Ended, or being ended by this client (a timeout, a cancelled command, a bad reply,
        # a drop, a close): no reply to what is written to it would be read, and the loss
        # comes on the reactor's next turn. Commands sent meanwhile wait for the next
        # connection (_RedisClient._dispatch).
        self.ending = False
        # Redis's tracking-table-max-keys (0: no limit), and what the last look at the
        # table found (see tableHasRoom).
        self.tableLimit = 0
        self._tableFull = False
        self._tableSeen = float("-inf")
        # Keys the table held at the last look, and how many reads and writes this
        # connection made since (each may have added one).
        self._tableKeys = 0
        self._trackedSince = 0
        self._tableLooking = False
        self._tableWatch: Any = None
        # Whether an invalidation may wait on this connection, unread by the reactor or
        # not yet handed out: the socket's Waiting.pushMayWait, called directly (it is
        # asked on every cached read).
        self._check = _redistracking.Waiting(None, False, self._decoder)
        self.pushMayWait: Callable[[], bool] = self._check.pushMayWait

    def connectionMade(self) -> None:
        sock, plain = _redistracking.socketOf(self.transport)
        if plain and isinstance(self.transport, tcp.Connection):
            # The reactor's own TCP connection: writes may go to its socket (see _write).
            self._sock = sock
        self._check = _redistracking.Waiting(sock, plain, self._decoder)
        self.pushMayWait = self._check.pushMayWait
        if not plain:
            from twisted.protocols.tls import TLSMemoryBIOProtocol

            if isinstance(self.transport, TLSMemoryBIOProtocol):
                self._readWhole(self.transport)

    def _readWhole(self, tls: Any) -> None:
        """
        Hand out what one read of the socket under C{tls} holds as one piece, as on a plain
        connection. The TLS layer passes each record it decrypts to dataReceived on its
        own, and Redis writes a reply and a later push in records of their own: handed out
        record by record, a reply's callback could run a request that uses a copy while a
        push already read waits in the TLS layer, where no look at the socket finds it.
        """
        received = tls.dataReceived

        def dataReceived(data: bytes) -> None:
            self._records = []
            try:
                received(data)
            finally:
                records, self._records = self._records, None
                if records and self.live:
                    self._handOutAll(records)

        tls.dataReceived = dataReceived

    def tableHasRoom(self, now: float) -> bool:
        """
        Whether Redis's tracking table is known to have room. When it is full, Redis drops
        keys from it, and tells every connection tracking them but the one whose command
        made it do so when that one asked for NOLOOP: this one may miss invalidations then.
        With a limit (tracking-table-max-keys, a million by default), the table is looked
        at (INFO stats) when the connection is made and then once a second, off the request
        path; copies count only while the last look, at most two seconds old, found it under
        90% full, counting the keys this connection may have added since.
        """
        if not self.tableLimit:
            return True
        return (
            now - self._tableSeen < 2.0
            and self._tableKeys + self._trackedSince < 0.9 * self.tableLimit
        )

    def _lookAtTable(self) -> None:
        if not self._tableLooking and self.live:
            self._tableLooking = True
            self.send([[b"INFO", b"stats"]]).addCallbacks(self._tableLooked, self._tableUnseen)

    def _tableLooked(self, replies: list[Any]) -> None:
        self._tableLooking = False
        found = re.search(rb"tracking_total_keys:(\d+)", _text(replies[0]))
        if found is None:
            if self._tableSeen == float("-inf"):
                # INFO refused (renamed, or forbidden by an ACL): the table cannot be watched,
                # so no copy is used.
                _log.warn(
                    "Redis at {url} does not show its tracking table (INFO stats: {why}): "
                    "every request reads its session",
                    url=self._client._url,
                    why=_shortRepr(replies[0]),
                )
                self._tableSeen = float("nan")
            return
        self._tableSeen = self._client._reactor.seconds()
        self._tableKeys = int(found.group(1))
        self._trackedSince = 0
        full = self._tableKeys >= 0.9 * self.tableLimit
        if full and not self._tableFull:
            _log.warn(
                "Redis at {url} tracks {keys} keys, near its tracking-table-max-keys "
                "({limit}): cached sessions are read again until it has room (raise the "
                "limit, or set it to 0)",
                url=self._client._url,
                keys=int(found.group(1)),
                limit=self.tableLimit,
            )
            # Keys may have been dropped already, and their invalidations with them.
            self._client._tracker.lost(self)  # type: ignore[union-attr]
        self._tableFull = full

    def _tableUnseen(self, reason: Any) -> None:
        self._tableLooking = False

    def ready(self, tracking: bool = False, tableLimit: int = 0, table: Any = None) -> None:
        """
        The connection is set up (and Redis tracks the keys it reads, when C{tracking}, in a
        table of at most C{tableLimit} keys, 0 for no limit, C{table} the INFO stats that
        say how full it is): commands go to it from now on.
        """
        self.tracking = tracking
        self.tableLimit = tableLimit if tracking else 0
        if self.tableLimit:
            self._tableLooked([table])
            self._tableWatch = LoopingCall(self._lookAtTable)
            self._tableWatch.clock = self._client._connector
            self._tableWatch.start(1.0, now=False)
        self._client._ready(self)

    def abort(self) -> None:
        """
        End the connection now: its callers fail when the reactor ends it, on its next turn.
        """
        self.ending = True
        self.transport.abortConnection()  # type: ignore[attr-defined]

    def send(self, commands: list[list[bytes]], data: bytes | None = None) -> Deferred[list[Any]]:
        """
        Send C{commands} (C{data}: already encoded); fires with their replies. Commands that
        cannot be encoded raise here, and leave nothing behind that replies would be
        matched to.
        """
        deferred: Deferred[list[Any]] = Deferred(self._cancelled)
        self.sendFor(commands, deferred, data)
        return deferred

    def sendFor(
        self,
        commands: list[list[bytes]],
        deferred: Deferred[list[Any]] | _Answer,
        data: bytes | None = None,
    ) -> None:
        """
        L{send}, whose replies fire C{deferred}.
        """
        if data is None:
            data = encode_commands(commands)
        client = self._client
        clock = client._reactor
        self._waiting.append(_Batch(commands, deferred, clock.seconds() + client._timeout))
        if self._timer is None:
            self._timer = clock.callLater(client._timeout, self._late)
        self._write(data)

    def _cancelled(self, _: Deferred[list[Any]]) -> None:
        # A command's Deferred was cancelled: its replies would now be matched to the wrong
        # commands, so the connection goes.
        self.abort()

    def _write(self, data: bytes) -> None:
        """
        Write C{data}: on a plain TCP connection with nothing buffered ahead of it, to the
        socket at once, as asyncio's transports do. Twisted's transports hold every write
        for the reactor's next turn, which costs a request that waits for its reply one
        more turn of the reactor and two epoll_ctl calls (the socket watched for writing,
        then not). What the socket does not take goes through the transport, after it; so
        does all of it when the socket refuses it (full, or failed: the transport's own
        write meets the failure again, and the connection is lost). Nothing goes to a
        connection that is closing or aborted, whose replies no one would read: the
        transport drops it, and its callers fail when the connection is lost. (The client
        sends nothing to a connection it aborted itself: the next connection takes it.)
        While replies read together are handed out, C{data} waits, in order, until they all
        have been (L{_handOutAll}).
        """
        held = self._held
        if held is not None:
            held.append(data)
            return
        transport: Any = self.transport
        sock = self._sock
        if (
            sock is not None
            and transport.connected
            and not transport.dataBuffer
            and not transport._tempDataBuffer
            and not transport.disconnecting
            and not transport._aborting
        ):
            try:
                sent = sock.send(data)
            except OSError:
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        transport.write(data)

    def _late(self) -> None:
        """
        The timer: fail the first batch if it is late, else wait for when it would be.
        """
        self._timer = None
        if not self._waiting:
            return
        client = self._client
        clock = client._reactor
        batch = self._waiting[0]
        left = batch.deadline - clock.seconds()
        if left > 0:
            self._timer = clock.callLater(left, self._late)
            return
        self._waiting.popleft()
        # Ending first: what the late command's callers send now waits for the next
        # connection, instead of going to this one, whose replies would not be read.
        self.abort()
        if not batch.deferred.called:
            late = f"Redis at {client._url} did not answer within {client._timeout} s"
            batch.deferred.errback(StoreUnavailable(late))

    def dataReceived(self, data: bytes) -> None:
        try:
            replies = self._decoder.feed(data)
        except ValueError:
            _log.failure("Redis sent bytes that are not RESP2; disconnecting")
            self.abort()
            return
        if self._records is not None:
            self._records += replies
        else:
            self._handOutAll(replies)

    def _handOutAll(self, replies: list[Any]) -> None:
        if len(replies) < 2:
            self._handOut(replies)
            return
        # What the replies' callbacks send (a request answered, the next one pipelined
        # behind it on its HTTP connection rendered and written, say) goes out in one write
        # once they have all run: one system call, not one a command. Until a push read
        # with them is handed out, no copy is used (it was read, so no look at the socket
        # would find it).
        check = self._check
        check.unread = list(map(type, replies)).count(tuple)
        self._held = []
        try:
            self._handOut(replies)
        finally:
            check.unread = 0
            held, self._held = self._held, None
            if held:
                self._write(b"".join(held))

    def _handOut(self, replies: list[Any]) -> None:
        for reply in replies:
            if type(reply) is tuple:
                # A RESP3 push (an invalidation), in order with the replies.
                if self._check.unread:
                    self._check.unread -= 1
                tracker = self._client._tracker
                if tracker is not None and self.tracking:
                    tracker.pushed(self, reply)
                continue
            if not self._waiting:
                _log.error("Redis sent a reply to no command; disconnecting")
                self.abort()
                return
            batch = self._waiting[0]
            if self.tracking:
                command = batch.commands[len(batch.replies)]
                if type(command) is _redistracking.Tracked:
                    self._trackedSince += 1
                    self._client._tracker.replied(self, command, reply)  # type: ignore[union-attr]
            batch.replies.append(reply)
            if len(batch.replies) == batch.count:
                self._waiting.popleft()
                if not batch.deferred.called:
                    batch.deferred.callback(batch.replies)

    def connectionLost(self, reason: Any = None) -> None:
        self.live = False
        self.ending = True
        if self._tableWatch is not None and self._tableWatch.running:
            self._tableWatch.stop()
        if self.tracking:
            self._client._tracker.lost(self)  # type: ignore[union-attr]
        self._client._lost(self)
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, deque()
        for batch in waiting:
            if not batch.deferred.called:
                why = _redisurl.lostReason(reason.value)
                batch.deferred.errback(
                    StoreUnavailable(
                        f"the connection to Redis at {self._client._url} was lost: {why}"
                    )
                )


def _own(reason: StoreUnavailable) -> StoreUnavailable:
    """
    A L{StoreUnavailable} of its own for one caller, saying what C{reason} says, with its
    cause. One exception must not fail several callers: each request raises its failure in
    its C{getSession}, which adds the request's frames to the exception's traceback, and the
    next request's failure, made from it, would log and keep alive all of them.
    """
    if type(reason) is not StoreUnavailable:
        return reason
    own = StoreUnavailable(*reason.args)
    own.__cause__ = reason.__cause__
    own.__suppress_context__ = reason.__suppress_context__
    return own


class _RedisFactory(Factory):
    def __init__(self, client: _RedisClient) -> None:
        self._client = client

    def buildProtocol(self, addr: Any) -> _RedisProtocol:
        return _RedisProtocol(self._client)


def _connector(reactor: Any, unix: bool = False) -> Any:
    """
    C{reactor}, or the global reactor when C{reactor} cannot make such connections (a
    L{Clock}, in tests that drive time by hand).
    """
    if (IReactorUNIX if unix else IReactorTCP).providedBy(reactor):
        return reactor
    from twisted.internet import reactor as running

    return running


def _endpoint(connector: Any, host: str, port: int, timeout: float, tls: Any) -> Any:
    """
    A client endpoint to C{host:port}, over TLS when C{tls} is not C{False} (C{tls} is then
    the store's C{tls=} option: see L{_redisurl.tlsCreator}).
    """
    plain = HostnameEndpoint(connector, host, port, timeout=timeout)
    if tls is False:
        return plain
    from twisted.internet.endpoints import wrapClientTLS

    return wrapClientTLS(_redisurl.tlsCreator(tls, host), plain)


def _readOnly(reply: Any) -> bool:
    # A script stopped at its first write on a replica: "READONLY You can't write against a
    # read only replica. script: ...".
    return isinstance(reply, StoreError) and str(reply).startswith("READONLY")


class _RedisClient:
    """
    Commands to one Redis server, pipelined, over a connection that L{ClientService} keeps up.
    When the server cannot be reached, commands fail at once with L{StoreUnavailable}; while
    a connection is being made they wait for it, at most C{timeout} seconds in all.

    @param endpoint: Where to connect, at each attempt (Sentinel's endpoint asks the
        sentinels each time).
    @param display: The server as messages name it (no password).
    @param setup: Commands sent on each new connection before any other (C{AUTH},
        C{SELECT}, C{ROLE}); C{check}, when given, is called with their replies and raises
        to refuse the connection.
    @param scripts: Load the store's scripts on each new connection, behind C{setup} (not
        for a connection to a sentinel).
    @param tracker: For client-side caching, the store's L{_redistracking.Tracker}: each
        connection then asks for RESP3 and tracking, behind C{setup}.
    """

    def __init__(
        self,
        reactor: Any,
        connector: Any,
        endpoint: Any,
        display: str,
        setup: list[list[bytes]],
        timeout: float,
        check: Any = None,
        maxDelay: float = 1.0,
        scripts: bool = True,
        tracker: Any = None,
    ) -> None:
        self._reactor = reactor
        self._tracker = tracker
        self._timeout = timeout
        self._url = display
        self._setup = setup
        self._check = check
        self._scripts = scripts
        self._connector = connector
        self._service = ClientService(
            endpoint,
            _RedisFactory(self),
            # Quick retries, so that the site recovers soon after Redis returns.
            retryPolicy=backoffPolicy(initialDelay=0.05, maxDelay=maxDelay, jitter=_jitter),
            clock=reactor,
            prepareConnection=self._prepare,
        )
        self._protocol: _RedisProtocol | None = None
        # Commands that wait for the next connection (see _sendNext), and whether the
        # client waits to hear if it can be made.
        self._next: list[_Next] = []
        self._awaiting = False
        # The connection drop() ended, until the reactor has ended it.
        self._dropped: _RedisProtocol | None = None
        # Why the last connection attempt failed, until one succeeds.
        self._down: BaseException | None = None
        self.roundTrips = 0

    def _prepare(self, protocol: _RedisProtocol) -> Deferred[None] | None:
        setup = list(self._setup)
        tracking = len(setup)
        if self._tracker is not None:
            # After AUTH: HELLO needs an authenticated connection.
            setup += [
                [b"HELLO", b"3"],
                [b"CLIENT", b"TRACKING", b"ON", b"NOLOOP"],
                [b"CONFIG", b"GET", b"tracking-table-max-keys"],
                [b"INFO", b"stats"],
            ]

        def ready(replies: list[Any]) -> None:
            tracks = False
            tableLimit = 0
            table = None
            if self._tracker is not None:
                answers = replies[tracking : tracking + 2]
                tableLimit = _tableLimit(replies[tracking + 2])
                table = replies[tracking + 3]
                replies = replies[:tracking] + replies[tracking + 4 :]
                if any(isinstance(answer, StoreError) for answer in answers):
                    # A Redis before 6.0: no caching on this connection, every read reads.
                    _log.warn(
                        "Redis at {url} does not track keys for client-side caching "
                        "({why}): every request reads its session",
                        url=self._url,
                        why=next(a for a in answers if isinstance(a, StoreError)),
                    )
                else:
                    tracks = True
            self._replies(replies)
            if self._check is not None:
                self._check(replies[: len(self._setup)])
            # ClientService hands over a proxy of the protocol; the protocol registers itself.
            protocol.ready(tracks, tableLimit, table)

        def refused(reason: Any) -> Any:
            # ClientService leaves a refused connection open, and has already counted the
            # attempt as failed when it ends: it must not hear of the end as well (it has no
            # transition for that, and would log an error).
            if hasattr(protocol, "_lostNotification"):
                protocol._lostNotification = lambda reason: None
            protocol.transport.abortConnection()
            return reason

        # Every script is loaded before the connection carries a command: a script the
        # server does not know (NOSCRIPT) could otherwise only be sent again after the
        # commands pipelined behind it, out of order.
        if self._scripts:
            setup += [[b"SCRIPT", b"LOAD", text] for text in _SCRIPTS.values()]
        if not setup:
            ready([])
            return None
        return protocol.send(setup).addCallback(ready).addErrback(refused)

    def _ready(self, protocol: _RedisProtocol) -> None:
        self._protocol = protocol
        self._down = None
        waiting, self._next = self._next, []
        for entry in waiting:
            if entry.deferred.called:
                continue  # cancelled meanwhile (by a callback of another's)
            # From now on the command waits for its reply as one sent at once does: for the
            # client's timeout from now, on the connection's own timer.
            entry.stopWaiting()
            entry.sent = protocol.send(entry.commands, entry.data)
            entry.sent.chainDeferred(entry.deferred)

    def _lost(self, protocol: _RedisProtocol) -> None:
        # ClientService learns of the loss after the protocol: until then it would still
        # hand out this connection. So both look on the next turn.
        if self._protocol is protocol:
            self._protocol = None
            self._connector.callLater(0, self._watch)
        elif self._dropped is protocol:
            # Ended by drop(): whether the server can be reached is noted all the same.
            self._dropped = None
            self._connector.callLater(0, self._watch)
        self._connector.callLater(0, self._awaitNext)

    def _sendNext(self, commands: list[list[bytes]]) -> Deferred[list[Any]]:
        """
        C{commands}, sent on the next connection once it is ready, in the order asked. They
        fail if that connection cannot be made, and if it is not ready within the client's
        timeout: then they are never sent. Once sent, they wait for their replies as
        commands sent at once do, for the timeout from then: so the commands that waited
        for a connection do not time out on the new one for the time they waited, which
        would end it, and the next.
        """

        def cancel(_: Deferred[list[Any]]) -> None:
            if entry.sent is not None:
                # As for a command sent at once: its connection is ended.
                entry.sent.cancel()
            else:
                self._unqueue(entry)

        # Encoded now: a command that cannot be encoded raises to its caller, as one sent at
        # once does.
        entry = _Next(commands, encode_commands(commands), Deferred(cancel))
        entry.timer = self._reactor.callLater(self._timeout, self._waitedTooLong, entry)
        self._next.append(entry)
        return entry.deferred

    def _waitedTooLong(self, entry: _Next) -> None:
        entry.timer = None
        self._unqueue(entry)
        if not entry.deferred.called:
            late = f"Redis at {self._url} did not answer within {self._timeout} s"
            entry.deferred.errback(StoreUnavailable(late))

    def _unqueue(self, entry: _Next) -> None:
        entry.stopWaiting()
        if entry in self._next:
            self._next.remove(entry)

    def _awaitNext(self) -> None:
        """
        Fail the commands waiting for the next connection (L{_sendNext}) if it cannot be
        made; once it is ready, L{_ready} sends them.
        """
        if not self._next or self._awaiting or not self._service.running:
            return
        self._awaiting = True

        def connected(_: Any) -> None:
            # A new connection, whose _ready sent what waited; or, in the turn a connection
            # was lost, that one still (then _lost asks again on the next turn).
            self._awaiting = False

        def failed(reason: Any) -> None:
            self._awaiting = False
            # Not from inside ClientService's own notification: those who wait may use the
            # client again at once.
            if reason.check(CancelledError):
                # The store closed.
                self._connector.callLater(0, self._failNextIfStopped)
                return
            down = reason.value
            if not isinstance(down, StoreUnavailable):
                why = _redisurl.lostReason(down)
                down = StoreUnavailable(f"Redis at {self._url} cannot be reached: {why}")
            self._connector.callLater(0, self._failNext, down)

        self._service.whenConnected(failAfterFailures=1).addCallbacks(connected, failed)

    def _watch(self) -> None:
        """
        Notes, until a connection is made, that the server cannot be reached.
        """
        if not self._service.running:
            return

        def failed(reason: Any) -> None:
            if reason.check(CancelledError) or not self._service.running:
                return
            self._down = reason.value
            # Not from inside ClientService's own notification.
            self._connector.callLater(0, self._watch)

        self._service.whenConnected(failAfterFailures=1).addErrback(failed)

    def drop(self) -> None:
        """
        End the current connection, if any: the next command waits for a new one (to the
        server the endpoint names then).
        """
        protocol = self._protocol
        if protocol is not None:
            self._protocol = None
            self._dropped = protocol
            protocol.abort()

    def send(self, commands: list[list[bytes]]) -> Deferred[list[Any]]:
        """
        Send C{commands} in one write; fires with their replies as they are (an error reply
        is a L{StoreError} in the list), or fails with L{StoreUnavailable}.
        """
        return self._dispatch(commands).addErrback(self._unavailable)

    def execute(
        self,
        commands: list[list[bytes]],
        then: Callable[[list[Any]], Any] | None = None,
        answer: Callable[[object], None] | None = None,
    ) -> Deferred[list[Any]]:
        """
        Send C{commands} in one write; fires with their replies (or what C{then} makes of
        them), or fails with L{StoreError} (an error reply), L{StoreUnavailable}, or what
        C{then} raised. With C{answer}, what would fire the Deferred is given to C{answer}
        instead (C{None} is returned): on a connection that is ready, without a Deferred at
        all. Commands that cannot be encoded raise, and C{answer} is not called.
        """
        self.roundTrips += 1
        if answer is not None:
            # A step of a Deferred (adding a callback, running it) costs about eight calls
            # of a short Python function, and a session write is answered from here.
            waiter = _Answer(self, then, answer)
            protocol = self._protocol
            if protocol is not None and not protocol.ending and self._service.running:
                protocol.sendFor(commands, waiter)
            else:
                self._dispatch(commands).addCallbacks(waiter.callback, waiter.errback)
            return None  # type: ignore[return-value]
        # One step of the Deferred for both outcomes, C{then} included.
        return self._dispatch(commands).addCallbacks(
            self._scripted, self._unavailable, callbackArgs=(then,)
        )

    def _dispatch(self, commands: list[list[bytes]]) -> Deferred[list[Any]]:
        """
        Send C{commands} in one write; fires with their replies as they are, or fails with
        what stopped them (L{send}'s failures before they are made L{StoreUnavailable}).
        """
        if not self._service.running:
            self._down = None
            self._service.startService()
            self._watch()
        protocol = self._protocol
        if protocol is not None and not protocol.ending:
            return protocol.send(commands)
        if protocol is None and self._down is not None:
            return fail(self._unreachable())
        # No connection yet, or one this client ended (a timeout, a cancelled command, a
        # drop, a close), which the reactor ends on its next turn: nothing of these goes to
        # it; the next connection takes them.
        waiting = self._sendNext(commands)
        self._awaitNext()
        return waiting

    def _failNext(self, reason: StoreUnavailable) -> None:
        waiting, self._next = self._next, []
        for entry in waiting:
            entry.stopWaiting()
            # One cancelled meanwhile (by a callback of another's) has failed already.
            if not entry.deferred.called:
                entry.deferred.errback(_own(reason))

    def _failNextIfStopped(self) -> None:
        if not self._service.running:
            self._failNext(
                StoreUnavailable(
                    f"the connection to Redis at {self._url} was lost: the store closed"
                )
            )

    def _unreachable(self) -> StoreUnavailable:
        down = self._down
        if isinstance(down, StoreUnavailable):
            return _own(down)
        return StoreUnavailable(f"Redis at {self._url} cannot be reached: {down}")

    def _scripted(self, replies: list[Any], then: Callable[[list[Any]], Any] | None) -> Any:
        """
        C{replies}, given to C{then} if there is one; L{StoreUnavailable} when the server
        lost the scripts loaded on this connection (a C{SCRIPT FLUSH}): the commands
        pipelined behind the one it refused may have run, so the connection is dropped, and
        the next one loads them again.
        """
        for reply in replies:
            if isinstance(reply, StoreError):
                break
        else:
            return replies if then is None else then(replies)
        if any(_noScript(reply) for reply in replies):
            self.drop()
            raise StoreUnavailable(
                f"Redis at {self._url} lost the session store's scripts (SCRIPT FLUSH); "
                f"reconnecting"
            )
        replies = self._replies(replies)
        return replies if then is None else then(replies)

    def _replies(self, replies: list[Any]) -> list[Any]:
        for reply in replies:
            if _readOnly(reply):
                # The server became a replica (a failover): nothing was written. A new
                # connection finds the primary (through the sentinels, with Sentinel).
                self.drop()
                raise StoreUnavailable(
                    f"Redis at {self._url} is a read-only replica now (a failover?)"
                )
        for reply in replies:
            if isinstance(reply, StoreError):
                raise reply
        return replies

    def _unavailable(self, reason: Any) -> Any:
        if reason.check(StoreError, StoreUnavailable):
            return reason
        if reason.check(TimeoutError, CancelledError):
            raise StoreUnavailable(f"Redis at {self._url} did not answer within {self._timeout} s")
        why = _redisurl.lostReason(reason.value)
        raise StoreUnavailable(f"Redis at {self._url} cannot be reached: {why}")

    def close(self) -> Deferred[None]:
        if not self._service.running:
            self._failNextIfStopped()
            return succeed(None)
        if self._protocol is not None:
            # What is sent before the connection has ended waits for the next one (a store
            # used again connects again), as after an abort: its replies would not be read.
            self._protocol.ending = True
        closed: Deferred[None] = Deferred()
        # Fired from the reactor, not from inside ClientService's state machine, so that
        # whoever waits can use the store again at once.
        self._service.stopService().addBoth(
            lambda result: self._connector.callLater(0, closed.callback, None)
        )
        # After the service stopped: a command sent again by one that fails here starts it
        # again, and waits for its connection.
        self._failNextIfStopped()
        return closed


def _jitter() -> float:
    return random.random() * 0.05


# The longest expiry the store gives a key: about 285,000 years, well inside what PEXPIRE
# takes. A longer sessionTimeout (or an infinite one) is stored as this.
_MAX_MILLISECONDS = 2**53
_MAX_SECONDS = _MAX_MILLISECONDS / 1000


def _milliseconds(timeout: float) -> bytes:
    """
    C{timeout} seconds as the whole milliseconds of a key's expiry, from 1 to
    L{_MAX_MILLISECONDS}; C{ValueError} for a timeout that is not a number.
    """
    global _lastMilliseconds
    last, milliseconds = _lastMilliseconds
    if type(timeout) is type(last) and timeout == last:
        # Most sessions of a site share their timeout: the last one asked for is kept.
        return milliseconds
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout != timeout:
        raise ValueError(f"a session timeout is a number of seconds, not {timeout!r}")
    if timeout * 1000 >= _MAX_MILLISECONDS:
        milliseconds = str(_MAX_MILLISECONDS).encode()
    elif timeout * 1000 < 1:
        # Run out already (minus infinity included): the shortest expiry there is.
        milliseconds = b"1"
    else:
        milliseconds = str(round(timeout * 1000)).encode()
    _lastMilliseconds = (timeout, milliseconds)
    return milliseconds


# The last timeout converted, and its milliseconds (NaN equals nothing).
_lastMilliseconds: tuple[float, bytes] = (float("nan"), b"")


# In cluster mode, how many bytes of a session's id make the hash tag of its key: a renamed
# session's new id starts with the same bytes (L{RedisStore.renewedId}), so its old and new
# keys share a slot. 4 hex digits are 65,536 tags over the 16,384 slots.
_TAG = 4


@implementer(ISessionStore)
class RedisStore:
    """
    Sessions in Redis: give one to L{txsession.Site} as C{store}.

    @param url: C{redis://[[user]:password@]host[:port][/db]}, C{rediss://...} (TLS),
        C{unix://path[?db=N]}, C{redis-sentinel://[[user]:password@]host[:port][,host[:port]
        ...][/db][?sentinelPassword=...]#service} (and C{rediss-sentinel://}), or with
        C{cluster=True} C{redis://host:port,host:port,...} (seed nodes of a Redis Cluster).
    @param keyPrefix: Put before each session id to make its key.
    @param serializer: An L{ISerializer} for namespace values; L{JSONSerializer} by default.
    @param timeout: Seconds to wait for Redis (connecting and each round trip) before a
        request that needs its session gets a 503.
    @param tls: For a TLS URL: a Twisted client TLS creator (C{ssl.optionsForClientTLS(host,
        trustRoot=..., clientCertificate=...)}), used for every connection, or a callable
        from a host name to one. By default, the platform's trust roots and each server's
        host name (as the URL, the sentinels or the cluster name it) are checked.
    @param cluster: The URL's hosts are seed nodes of a Redis Cluster.
    @param replicas: Each write also waits (C{WAIT}) until this many replicas have it; when
        fewer confirm it within half the timeout, the request gets a 503 (the write is on
        the primary, its outcome unknown).
    @param cache: Client-side caching (Redis 6 or later): a session this process read or
        wrote, and that Redis has not invalidated since, is used without reading it again
        (see L{_redistracking} and the README's consistency model).
    @param cacheMaxAge: Seconds after its last read that a cached copy is read again, even
        with no invalidation.
    """

    # save() takes answer= (see ISessionStore; a subclass that overrides save, or a save
    # set on the store itself, is called without it, unless its class sets answers too).
    answers = True

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        keyPrefix: bytes | str = b"txsession:",
        serializer: Any = None,
        timeout: float = 2.0,
        tls: Any = None,
        cluster: bool = False,
        replicas: int = 0,
        cache: bool = True,
        cacheMaxAge: float = 60.0,
    ) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        self.keyPrefix = keyPrefix.encode() if isinstance(keyPrefix, str) else keyPrefix
        if not isinstance(self.keyPrefix, bytes):
            raise TypeError(f"keyPrefix must be bytes or str, not {keyPrefix!r}")
        self.serializer = JSONSerializer() if serializer is None else serializer
        if not ISerializer.providedBy(self.serializer) and not (
            callable(getattr(self.serializer, "dumps", None))
            and callable(getattr(self.serializer, "loads", None))
        ):
            raise TypeError(f"serializer needs dumps() and loads(): {serializer!r}")
        self.timeout = float(timeout)
        # A bad URL raises now. The URL with its password stays private: the url attribute,
        # repr and every message show it without.
        address = _redisurl.RedisURL(url)
        self.url = address.display
        _redisurl.checkTLSOption(tls, address)
        self.cluster = bool(cluster)
        if self.cluster:
            if address.kind not in ("tcp", "seeds"):
                raise ValueError(
                    f"cluster=True takes redis:// or rediss:// seeds, not {self.url!r}"
                )
            if address.db:
                raise ValueError(f"a Redis Cluster has only database 0, not {self.url!r}")
            if b"{" in self.keyPrefix or b"}" in self.keyPrefix:
                raise ValueError("with cluster=True the keyPrefix cannot hold '{' or '}'")
        elif address.kind == "seeds":
            raise ValueError(
                f"several hosts are a cluster's seeds (cluster=True) or sentinels "
                f"(redis-sentinel://...): {self.url!r}"
            )
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            raise ValueError(f"replicas must be a whole number, not {replicas!r}")
        if replicas and self.cluster:
            raise ValueError("replicas= is not supported with cluster=True")
        self.replicas = replicas
        if (
            isinstance(cacheMaxAge, bool)
            or not isinstance(cacheMaxAge, (int, float))
            or not cacheMaxAge > 0
        ):
            raise ValueError(
                f"cacheMaxAge must be a positive number of seconds, not {cacheMaxAge!r}"
            )
        self.cache = bool(cache)
        self.cacheMaxAge = float(cacheMaxAge)
        self._tracker: Any = None
        # Sessions whose idle timeout is to be restarted in Redis, sent together soon (by
        # _refreshCall).
        self._refreshing: dict[bytes, None] = {}
        self._refreshCall: Any = None
        self._address = address
        self._tls: Any = tls if address.tls else False
        self._client: Any = None

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r}, keyPrefix={self.keyPrefix!r})"

    def bind(self, reactor: Any) -> None:
        if self._client is None:
            self._client = self._connect(reactor)
        elif self._client._reactor is not reactor:
            raise ValueError(f"{self!r} is already used on another reactor")

    def _connect(self, reactor: Any) -> Any:
        address = self._address
        tracker = None
        if self.cache:
            tracker = self._tracker = _redistracking.Tracker(reactor, self.cacheMaxAge)
        if self.cluster:
            from txsession._rediscluster import ClusterClient

            return ClusterClient(reactor, address, self._tls, self.timeout, tracker)
        if address.kind == "sentinel":
            from txsession._redissentinel import sentinelClient

            return sentinelClient(reactor, address, self._tls, self.timeout, tracker)
        if address.kind == "unix":
            connector = _connector(reactor, unix=True)
            endpoint = UNIXClientEndpoint(connector, address.path, timeout=self.timeout)
        else:
            connector = _connector(reactor)
            host, port = address.nodes[0]
            endpoint = _endpoint(connector, host, port, self.timeout, self._tls)
        setup = list(address.setup)
        if address.tls and not setup:
            # The handshake (and the certificate checks) done before the connection is used.
            setup.append([b"PING"])
        return _RedisClient(
            reactor, connector, endpoint, self.url, setup, self.timeout, tracker=tracker
        )

    @property
    def roundTrips(self) -> int:
        """
        How many round trips to Redis this store has made (a pipeline counts once),
        connection set-up aside.
        """
        return 0 if self._client is None else self._client.roundTrips

    def _execute(
        self,
        commands: list[list[bytes]],
        then: Callable[[list[Any]], Any] | None = None,
        answer: Callable[[object], None] | None = None,
    ) -> Deferred[Any]:
        """
        Send C{commands}; fires with their replies, or with what C{then} makes of them.
        With C{answer}, gives it that result instead (see L{_RedisClient.execute}).
        """
        if self._client is None:
            raise RuntimeError(f"{self!r} is not bound to a reactor: give it to a txsession.Site")
        if self.replicas and commands[0][1] != _LOAD_SHA:
            wait = max(1, round(self.timeout * 500))
            commands = [*commands, [b"WAIT", b"%d" % self.replicas, b"%d" % wait]]
            then = functools.partial(self._replicated, then)
        return self._client.execute(commands, then, answer)

    def _replicated(self, then: Callable[[list[Any]], Any] | None, replies: list[Any]) -> Any:
        if replies[-1] < self.replicas:
            raise StoreUnavailable(
                f"a write to Redis at {self.url} reached {replies[-1]} of {self.replicas} "
                f"replicas within {self.timeout / 2} s"
            )
        replies = replies[:-1]
        return replies if then is None else then(replies)

    def _now(self) -> bytes:
        """
        Now, in whole milliseconds of the site's reactor clock: what the scripts compare a
        session's absolute end with, and note as its last use.
        """
        return b"%d" % (self._client._reactor.seconds() * 1000)  # type: ignore[union-attr]

    def _member(self, uid: bytes) -> bytes:
        """
        What the store keeps of session id C{uid}, after C{keyPrefix} in its key: the one
        place keys are derived. The id's SHA-256 (hex); in cluster mode, after the hash tag
        C{{...}} of the id's first bytes (hashed too), which L{renewedId} keeps, so that a
        renamed session's old and new keys share a slot. A renamed session's tombstone
        names the new member, and the scripts find its key as C{keyPrefix} plus a member.
        """
        hashed = member(uid)
        if self.cluster:
            tag = hashlib.sha256(uid[:_TAG]).hexdigest()[:8].encode()
            return b"{" + tag + b"}" + hashed
        return hashed

    def _key(self, uid: bytes) -> bytes:
        # _member's own first step, inline where there is no hash tag: a key is derived
        # for every request.
        return self.keyPrefix + (self._member(uid) if self.cluster else member(uid))

    def _userKey(self, user: str) -> bytes:
        if self.cluster:
            raise NotImplementedError(
                "the sessions of a user (renewSession(user=...), userSessions, logoutUser, "
                "endUserSession) need a Redis that is not a Cluster: a user's set and the "
                "sessions in it would be in different slots"
            )
        return self.keyPrefix + b"u:" + _userHash(user)

    def renewedId(self, uid: bytes, fresh: bytes) -> bytes:
        """
        The new id to give the session C{uid} when it is renamed, made from the fresh random
        id C{fresh}: C{fresh} itself, but in cluster mode the first bytes of C{uid} (its
        hash tag) followed by the rest of C{fresh}, so that the old and the new key share a
        slot and the rename stays one script on one node.
        """
        if not self.cluster:
            return fresh
        return uid[:_TAG] + fresh[_TAG:]

    def load(
        self, uids: list[bytes], owner: Any = None
    ) -> Deferred[list[StoredFields | bytes | None]]:
        now = self._now() if self._client is not None else b"0"
        commands = [
            [b"EVALSHA", _LOAD_SHA, b"1", self._key(uid), now, self.keyPrefix] for uid in uids
        ]
        if self._tracker is None or owner is None:
            return self._execute(commands, lambda replies: [_loaded(r) for r in replies])
        tracked = [
            _redistracking.tracked(command, _redistracking.READ, command[3], owner)
            for command in commands
        ]

        def loaded(replies: list[Any]) -> list[StoredFields | bytes | None]:
            results = [_loaded(r) for r in replies]
            for command, result in zip(tracked, results):
                if isinstance(result, StoredFields):
                    result.stamp = command.stamp
            return results

        return self._execute(tracked, loaded)

    # Client-side caching: optional in ISessionStore (the site's flow asks for it with
    # getattr), and what owner= means in load, save and the rest.

    def cached(self, uid: bytes, owner: Any) -> Any:
        """
        Whether C{owner}'s copy of the session C{uid}, as it last read or wrote it, is still
        what Redis holds (then its stamp, a true value; else C{None}), so that a request may
        use it without reading it: read on a connection that tracks it, with no invalidation
        since and none waiting unread on that connection, and read less than C{cacheMaxAge}
        seconds ago, with its key not run out. A cached use restarts the session's idle
        timeout in Redis (as stored) once a tenth of it has run: soon, in one round trip for
        every session due, not waited for.
        """
        tracker = self._tracker
        if tracker is None:
            return None
        key = self._key(uid)
        now = self._client._reactor.seconds()  # type: ignore[union-attr]
        stamp = tracker.fresh(key, owner, now)
        if stamp is None:
            return None
        if not stamp.refreshing and stamp.expires - now < stamp.timeout * 0.9:
            stamp.refreshing = True
            if self._refreshCall is None:
                connector = self._client._connector  # type: ignore[union-attr]
                self._refreshCall = connector.callLater(0, self._refresh)
            self._refreshing[key] = None
        return stamp

    def applied(self, fields: StoredFields) -> None:
        """
        The owner that read C{fields} (load's owner=) has taken them in: its copy is what
        Redis held, and may be used without reading while Redis has not invalidated it.
        """
        stamp = fields.stamp
        if stamp is not None and self._tracker is not None:
            self._tracker.applied(stamp)

    def forget(self, uid: bytes, owner: Any) -> None:
        """
        C{owner} has no copy of the session C{uid} any more.
        """
        if self._tracker is not None:
            self._tracker.forget(self._key(uid), owner)

    def _refresh(self) -> None:
        self._refreshCall = None
        keys, self._refreshing = list(self._refreshing), {}
        if not keys or self._client is None:
            return
        now = self._now()
        if self.cluster:
            batches = [[key] for key in keys]
        else:
            batches = [keys[i : i + _SLICE] for i in range(0, len(keys), _SLICE)]
        commands = [
            _redistracking.tracked(
                [b"EVALSHA", _REFRESH_SHA, b"%d" % len(batch), *batch, now, self.keyPrefix],
                _redistracking.REFRESH,
                None,
            )
            for batch in batches
        ]
        self._client.execute(commands).addErrback(_refreshFailed)

    def save(
        self,
        uid: bytes,
        storedAs: bytes | None,
        timeout: float,
        changed: dict[str, bytes],
        deleted: list[str],
        created: float | None = None,
        ends: float | None = None,
        user: str | None = None,
        owner: Any = None,
        answer: Callable[[object], None] | None = None,
    ) -> Deferred[None]:
        """
        L{ISessionStore.save}. With C{answer}, the outcome (C{None} or a L{Failure}) is given
        to C{answer} instead of a Deferred, and C{None} is returned (L{answers}).
        """
        key = self._key(uid)
        if storedAs is None:
            mode = b"new"
        elif storedAs == uid:
            mode = b"update"
        else:
            mode = b"rename"
        now = self._now() if self._client is not None else b"0"
        command = [
            b"EVALSHA",
            _SAVE_SHA,
            b"2",
            key,
            key if storedAs is None or storedAs == uid else self._key(storedAs),
            _milliseconds(timeout),
            mode,
            key[len(self.keyPrefix) :],  # _member(uid)
            str(len(changed)).encode(),
            now,
            now if created is None else _clockMilliseconds(created),
            b"" if ends is None else _clockMilliseconds(ends),
            b"" if user is None else self._userKey(user)[len(self.keyPrefix) + 2 :],
            self.keyPrefix,
        ]
        for name, value in changed.items():
            command += [_FIELD + _fieldName(name), value]
        command += [_FIELD + _fieldName(name) for name in deleted]
        if self._tracker is not None:
            command = _redistracking.tracked(
                command,
                _redistracking.WRITE,
                key,
                owner,
                None if storedAs is None else command[4],
                min(timeout, _MAX_SECONDS),
            )
        return self._execute([command], _saved, answer)

    def delete(self, *uids: bytes) -> Deferred[None]:
        keys = [self._key(uid) for uid in uids]
        if self.cluster:
            # One script per key: each runs on the node that owns it.
            commands = [[b"EVALSHA", _DELETE_SHA, b"1", key, self.keyPrefix] for key in keys]
        else:
            commands = [[b"EVALSHA", _DELETE_SHA, b"%d" % len(keys), *keys, self.keyPrefix]]
        if self._tracker is not None:
            # Every copy of what it deletes ends: Redis does not tell this connection of its
            # own deletions, and another site of this process may share it.
            commands = [
                _redistracking.tracked(command, _redistracking.DELETE, None) for command in commands
            ]
        return self._execute(commands, _nothing)

    def userSessions(self, user: str) -> Deferred[list[tuple[str, float | None, float | None]]]:
        command = [b"EVALSHA", _USER_SESSIONS_SHA, b"1", self._userKey(user), self.keyPrefix]

        def records(replies: list[Any]) -> list[tuple[str, float | None, float | None]]:
            return [
                (m.decode(), _clockSeconds(created), _clockSeconds(used))
                for m, created, used in replies[0]
            ]

        return self._execute([command], records)

    def logoutUser(self, user: str, *keep: bytes) -> Deferred[int]:
        command = [
            b"EVALSHA",
            _LOGOUT_USER_SHA,
            b"1",
            self._userKey(user),
            self.keyPrefix,
            *dict.fromkeys(self._member(uid) for uid in keep),
        ]
        if self._tracker is not None:
            command = _redistracking.tracked(command, _redistracking.DELETE, None)
        return self._execute([command], lambda replies: len(replies[0]))

    def endUserSession(self, user: str, id: str) -> Deferred[bool]:
        if not _MEMBER.fullmatch(id):
            return succeed(False)
        command = [
            b"EVALSHA",
            _END_USER_SESSION_SHA,
            b"1",
            self._userKey(user),
            self.keyPrefix,
            id.encode(),
        ]
        if self._tracker is not None:
            command = _redistracking.tracked(
                command, _redistracking.DELETE, self.keyPrefix + id.encode()
            )
        return self._execute([command], lambda replies: replies[0] == 1)

    def close(self) -> Deferred[None]:
        if self._refreshCall is not None:
            if self._refreshCall.active():
                self._refreshCall.cancel()
            self._refreshCall = None
            self._refreshing.clear()
        if self._client is None:
            return succeed(None)
        return self._client.close()


def _fieldName(name: str) -> bytes:
    try:
        return name.encode()
    except UnicodeEncodeError as e:
        raise UnserializableValue(f"a namespace key that is not valid UTF-8: {name!r}") from e


@functools.lru_cache(maxsize=4096)
def member(uid: bytes) -> bytes:
    """
    What the store keeps of session id C{uid}: its SHA-256, hex (the key is C{keyPrefix}
    plus this). The session's opaque id in L{txsession.Site.userSessions} records. A request
    needs it several times, hence the small cache.
    """
    return hashlib.sha256(uid).hexdigest().encode()


_MEMBER = re.compile(r"(\{[0-9a-f]{8}\})?[0-9a-f]{64}")


def _userHash(user: str) -> bytes:
    return hashlib.sha256(user.encode("utf-8", "surrogatepass")).hexdigest().encode()


def _clockMilliseconds(seconds: float) -> bytes:
    return b"%d" % (seconds * 1000)


def _clockSeconds(milliseconds: bytes | None) -> float | None:
    return int(milliseconds) / 1000 if milliseconds else None


# Redis's default tracking-table-max-keys: assumed where CONFIG GET is not allowed (managed
# services often refuse it).
_DEFAULT_TABLE_LIMIT = 1_000_000


def _text(reply: Any) -> bytes:
    if isinstance(reply, bytes):
        return reply
    if isinstance(reply, str):
        return reply.encode()
    return b""


def _tableLimit(reply: Any) -> int:
    if isinstance(reply, dict):
        values = list(reply.values())
    elif isinstance(reply, list):
        values = reply[1::2]
    else:
        return _DEFAULT_TABLE_LIMIT
    try:
        return int(values[0])
    except (IndexError, ValueError, TypeError):
        return _DEFAULT_TABLE_LIMIT


def _refreshFailed(reason: Any) -> None:
    # Redis cannot be reached: the connection's loss ends every cached copy, so the sessions
    # are read (and their timeouts restarted) by their next requests.
    if not reason.check(StoreUnavailable):
        _log.failure("while restarting sessions' idle timeouts in Redis", reason)


def _loaded(reply: list[bytes] | None) -> StoredFields | bytes | None:
    if reply is None or reply is False:
        return None
    if len(reply) == 2 and reply[0] == _RENAMED_FIELD:
        return reply[1]
    fields = StoredFields()
    for name, value in zip(reply[::2], reply[1::2]):
        if name.startswith(_FIELD):
            fields[name[len(_FIELD) :].decode()] = value
        elif name == b"m:c":
            fields.created = _clockSeconds(value)
        elif name == b"m:e":
            fields.ends = _clockSeconds(value)
        elif name == b"m:u":
            fields.user = value
    return fields


def _nothing(replies: list[Any]) -> None:
    return None


def _saved(replies: list[Any]) -> None:
    reply = replies[0]
    if reply == 1:
        return None
    if isinstance(reply, list):
        raise SessionEnded(renamedTo=reply[1])
    raise SessionEnded()
