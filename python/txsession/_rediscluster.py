"""
Redis Cluster for L{txsession.redis.RedisStore}: C{RedisStore("redis://h1:7000,h2:7001",
cluster=True)}.

The client loads the slot map (C{CLUSTER SLOTS}) from the seeds or a known node, and sends
each command to the primary that owns the slot of its first key, one pipelined write per node
in a round. The store's commands each touch keys of one slot only (a renamed session's old
and new keys share a hash tag). Replies that say the slot is elsewhere are followed:
- C{MOVED slot host:port}: the slot is patched in the map, the command is sent there, and the
  whole map is loaded again soon (several slots usually moved);
- C{ASK slot host:port}: the command is sent there once, after C{ASKING}, the map unchanged
  (the slot is being migrated);
- C{TRYAGAIN}: a script whose keys are split by a slot migration in progress, retried every
  50 ms until the store's timeout;
- C{NOSCRIPT}: that node lost the scripts its connection loaded (a C{SCRIPT FLUSH}): the
  connection is dropped and the request gets a 503.
None of these replies means the command ran, so resending is safe. C{CLUSTERDOWN}, or a node
that cannot be reached, fails the request with L{StoreUnavailable}: only requests that need
that node's slots fail.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger

from txsession import _redisurl
from txsession._txsession import key_slot
from txsession.redis import (
    _connector,
    _endpoint,
    _noScript,
    _readOnly,
    _RedisClient,
    giveAnswer,
)
from txsession.store import StoreError, StoreUnavailable

_log = Logger()

_SLOTS = 16384
# How many redirections (MOVED, ASK, NOSCRIPT) one command may follow, as redis-py and
# node-redis allow.
_REDIRECTIONS = 16
_TRYAGAIN_DELAY = 0.05
# The least time between two loads of the slot map that failures or MOVED ask for.
_REFRESH_INTERVAL = 0.2


def _routingKey(command: list[bytes]) -> bytes | None:
    if command[0] in (b"EVALSHA", b"EVAL") and int(command[2]) > 0:
        return command[3]
    return None


class _Pending:
    """
    One command of a batch still to be answered: where it goes next, and how.
    """

    __slots__ = ("index", "address", "asking", "hops")

    def __init__(self, index: int) -> None:
        self.index = index
        self.address: tuple[str, int] | None = None
        self.asking = False
        self.hops = 0


class ClusterClient:
    """
    Commands to a Redis Cluster, each to the node owning its key's slot.
    """

    def __init__(
        self, reactor: Any, url: _redisurl.RedisURL, tls: Any, timeout: float, tracker: Any = None
    ) -> None:
        self._reactor = reactor
        # Shared by every node's connection: tracking is per connection, so per node.
        self._tracker = tracker
        self._connector = _connector(reactor)
        self._urlInfo = url
        self._url = url.display
        self._tls = tls
        self._timeout = timeout
        self._seeds = list(url.nodes)
        self._nodes: dict[tuple[str, int], _RedisClient] = {}
        self._slots: list[tuple[str, int] | None] | None = None
        self._loading: Deferred[None] | None = None
        self._lastLoad = -_REFRESH_INTERVAL
        self._refreshCall: Any = None
        self._closed = False
        self.roundTrips = 0
        # How many replies of each kind were followed: for tests and curious operators.
        self.redirected = {"MOVED": 0, "ASK": 0, "TRYAGAIN": 0}

    def _node(self, address: tuple[str, int]) -> _RedisClient:
        node = self._nodes.get(address)
        if node is None:
            host, port = address
            setup = list(self._urlInfo.setup)
            if self._urlInfo.tls and not setup:
                setup.append([b"PING"])
            node = self._nodes[address] = _RedisClient(
                self._reactor,
                self._connector,
                _endpoint(self._connector, host, port, self._timeout, self._tls),
                self._urlInfo.nodeDisplay(host, port),
                setup,
                self._timeout,
                tracker=self._tracker,
            )
        return node

    # The slot map.

    def _load(self) -> Deferred[None]:
        """
        Load the slot map from the first node that gives it: the nodes of the current map,
        then the seeds. Concurrent calls share one load.
        """
        if self._loading is not None:
            loading: Deferred[None] = Deferred()
            self._loading.addBoth(lambda result: (loading.callback(None), result)[1])
            return loading.addCallback(lambda _: self._check())
        self._lastLoad = self._reactor.seconds()
        known = [a for a in dict.fromkeys(self._slots or []) if a is not None]
        order = known + [seed for seed in self._seeds if seed not in known]
        errors: list[str] = []
        done: Deferred[None] = Deferred()
        self._loading = done

        def ask() -> None:
            if self._closed:
                self._loading = None
                done.errback(StoreUnavailable(f"the store on {self._url} was closed"))
                return
            if not order:
                self._loading = None
                done.errback(
                    StoreUnavailable(
                        f"no node of the Redis Cluster {self._url} gave its slots: "
                        + "; ".join(errors)
                    )
                )
                return
            address = order.pop(0)
            self._node(address).execute([[b"CLUSTER", b"SLOTS"]]).addCallbacks(
                loaded, failed, (address,)
            )

        def loaded(replies: list[Any], address: tuple[str, int]) -> None:
            slots: list[tuple[str, int] | None] = [None] * _SLOTS
            for entry in replies[0]:
                start, end, primary = entry[0], entry[1], entry[2]
                host = primary[0].decode() if primary[0] else address[0]
                if host == "?":
                    continue
                where = (host.lower(), int(primary[1]))
                for slot in range(int(start), int(end) + 1):
                    slots[slot] = where
            self._slots = slots
            self._loading = None
            done.callback(None)

        def failed(reason: Any) -> None:
            errors.append(str(reason.value))
            ask()

        ask()
        return done

    def _check(self) -> None:
        if self._slots is None:
            raise StoreUnavailable(f"the slots of the Redis Cluster {self._url} are unknown")

    def _refreshSoon(self) -> None:
        """
        Load the map again, at most once per L{_REFRESH_INTERVAL}, in the background.
        """
        if self._closed or self._loading is not None or self._refreshCall is not None:
            return
        wait = max(0.0, self._lastLoad + _REFRESH_INTERVAL - self._reactor.seconds())

        def refresh() -> None:
            self._refreshCall = None
            if not self._closed:
                self._load().addErrback(lambda _: None)

        self._refreshCall = self._connector.callLater(wait, refresh)

    # Commands.

    def execute(
        self,
        commands: list[list[bytes]],
        then: Callable[[list[Any]], Any] | None = None,
        answer: Callable[[object], None] | None = None,
    ) -> Deferred[Any]:
        """
        Send each command to the node owning its key; fires with the replies in order (or
        what C{then} makes of them), or fails with L{StoreError}, L{StoreUnavailable}, or
        what C{then} raised. With C{answer}, that result is given to C{answer} instead, and
        C{None} is returned (as L{txsession.redis._RedisClient.execute}).
        """
        if answer is not None:
            self.execute(commands, then).addBoth(giveAnswer, answer)
            return None  # type: ignore[return-value]
        self.roundTrips += 1
        commands = list(commands)
        replies: list[Any] = [None] * len(commands)
        pending = [_Pending(i) for i in range(len(commands))]
        deadline = self._reactor.seconds() + self._timeout
        if self._slots is None:
            answered = self._load().addCallback(
                lambda _: self._round(commands, replies, pending, deadline)
            )
        else:
            answered = self._round(commands, replies, pending, deadline)
        return answered if then is None else answered.addCallback(then)

    def _where(self, command: list[bytes], item: _Pending) -> tuple[str, int]:
        if item.address is not None:
            return item.address
        slots = self._slots
        assert slots is not None
        key = _routingKey(command)
        if key is None:
            address = next((a for a in slots if a is not None), None)
        else:
            address = slots[key_slot(key)]
        if address is None:
            self._refreshSoon()
            raise StoreUnavailable(
                f"no node of the Redis Cluster {self._url} serves the slot of a session"
            )
        return address

    def _round(
        self,
        commands: list[list[bytes]],
        replies: list[Any],
        pending: list[_Pending],
        deadline: float,
    ) -> Deferred[list[Any]]:
        groups: dict[tuple[str, int], list[_Pending]] = {}
        try:
            for item in pending:
                groups.setdefault(self._where(commands[item.index], item), []).append(item)
        except StoreUnavailable as e:
            return fail(e)
        sends = []
        for address, items in groups.items():
            wire: list[list[bytes]] = []
            for item in items:
                if item.asking:
                    wire.append([b"ASKING"])
                wire.append(commands[item.index])
            sends.append(self._node(address).send(wire))
        return DeferredList(sends, consumeErrors=True).addCallback(
            self._answered, list(groups.items()), commands, replies, deadline
        )

    def _answered(
        self,
        results: list[tuple[bool, Any]],
        groups: list[tuple[tuple[str, int], list[_Pending]]],
        commands: list[list[bytes]],
        replies: list[Any],
        deadline: float,
    ) -> Any:
        again: list[_Pending] = []
        wait = False
        for (ok, result), (address, items) in zip(results, groups):
            if not ok:
                # The node cannot be reached: the map may be out of date (a failover).
                self._refreshSoon()
                return result
            position = 0
            for item in items:
                if item.asking:
                    position += 1
                reply = result[position]
                position += 1
                redirect = self._redirect(reply, address, commands, item)
                if redirect is None:
                    replies[item.index] = reply
                    continue
                if redirect == "wait":
                    # Bounded by the deadline instead: a renewal during a migration goes
                    # back and forth (ASK, then TRYAGAIN on the importing node) until the
                    # key it creates can go with the key it renames.
                    wait = True
                    item.hops = 0
                item.hops += 1
                if item.hops > _REDIRECTIONS:
                    raise StoreUnavailable(
                        f"a command to the Redis Cluster {self._url} was redirected more "
                        f"than {_REDIRECTIONS} times"
                    )
                again.append(item)
        if not again:
            return self._finish(replies)
        if not wait:
            return self._round(commands, replies, again, deadline)
        if self._reactor.seconds() + _TRYAGAIN_DELAY > deadline:
            raise StoreUnavailable(
                f"a slot of the Redis Cluster {self._url} was still being migrated after "
                f"{self._timeout} s (TRYAGAIN)"
            )
        return deferLater(self._connector, _TRYAGAIN_DELAY, lambda: None).addCallback(
            lambda _: self._round(commands, replies, again, deadline)
        )

    def _redirect(
        self,
        reply: Any,
        address: tuple[str, int],
        commands: list[list[bytes]],
        item: _Pending,
    ) -> str | None:
        """
        What to do about C{reply}: C{None} to keep it; otherwise C{item} is changed to go
        where the reply says, and the kind of redirection is returned.
        """
        if not isinstance(reply, StoreError):
            return None
        message = str(reply)
        kind, _, rest = message.partition(" ")
        if kind in self.redirected:
            self.redirected[kind] += 1
        if kind in ("MOVED", "ASK"):
            slot, _, target = rest.partition(" ")
            host, _, port = target.rpartition(":")
            there = ((host or address[0]).lower(), int(port))
            if kind == "MOVED":
                if self._slots is not None:
                    self._slots[int(slot)] = there
                self._refreshSoon()
                item.address, item.asking = None, False
            else:
                item.address, item.asking = there, True
            return kind
        if kind == "TRYAGAIN":
            item.address, item.asking = None, False
            return "wait"
        if _noScript(reply):
            # The node lost the scripts its connection loaded (SCRIPT FLUSH): the commands
            # pipelined behind this one may have run, so sending it again now could reorder
            # them. The connection goes, and the next one loads the scripts again.
            self._node(address).drop()
            raise StoreUnavailable(
                f"a node of the Redis Cluster {self._url} lost the session store's scripts"
            )
        if kind == "CLUSTERDOWN":
            self._refreshSoon()
            raise StoreUnavailable(f"the Redis Cluster {self._url} is down: {message}")
        if _readOnly(reply):
            # The node became a replica: a failover moved its slots.
            self._refreshSoon()
            raise StoreUnavailable(f"a node of the Redis Cluster {self._url} is a replica now")
        return None

    @staticmethod
    def _finish(replies: list[Any]) -> list[Any]:
        for reply in replies:
            if isinstance(reply, StoreError):
                raise reply
        return replies

    def close(self) -> Deferred[None]:
        self._closed = True
        if self._refreshCall is not None:
            if self._refreshCall.active():
                self._refreshCall.cancel()
            self._refreshCall = None
        if not self._nodes:
            return succeed(None)
        closing = DeferredList([node.close() for node in self._nodes.values()])
        return closing.addCallback(lambda _: None)
