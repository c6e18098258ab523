"""
Redis Sentinel for L{txsession.redis.RedisStore}: C{redis-sentinel://h1:26379,h2:26379/db#service}.

The data connection is an ordinary L{_RedisClient} whose endpoint asks the sentinels for the
primary of C{service} at every connection attempt, and whose set-up checks with C{ROLE} that
the server it reached is a primary. Failover is followed three ways:
- every sentinel is subscribed to C{+switch-master}: when it names this service's new
  primary, the data connection is dropped at once, and the next attempt asks the sentinels;
- a reply C{READONLY} (the server became a replica) drops the connection too (L{_RedisClient});
- a connection that ends for any other reason (Sentinel kills clients of a reconfigured
  server) is made again through the sentinels.
After subscribing, a sentinel is asked for the primary again, so that a switch announced
while no subscription was up is not missed.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from txsession import _redisurl
from txsession._txsession import RespDecoder, encode_commands
from txsession.redis import _connector, _endpoint, _jitter, _RedisClient
from txsession.store import StoreError, StoreUnavailable

_log = Logger()

_SWITCH = b"+switch-master"


class _Sentinels:
    """
    The sentinels of one URL, each with a connection for questions, in the order to ask them
    (the last that answered first).
    """

    def __init__(self, reactor: Any, url: _redisurl.RedisURL, tls: Any, timeout: float) -> None:
        self.service = (url.service or "").encode()
        self.display = url.display
        connector = _connector(reactor)
        self.clients = [
            _RedisClient(
                reactor,
                connector,
                _endpoint(connector, host, port, timeout, tls),
                f"the sentinel {host}:{port}",
                url.sentinelSetup,
                timeout,
                scripts=False,
            )
            for host, port in url.nodes
        ]

    def primary(self) -> Deferred[tuple[str, int]]:
        """
        The address of the service's primary, from the first sentinel that knows it.
        """
        order = list(self.clients)
        errors: list[str] = []
        result: Deferred[tuple[str, int]] = Deferred()

        def ask() -> None:
            if not order:
                result.errback(
                    StoreUnavailable(
                        f"no sentinel of {self.display} named the primary: {'; '.join(errors)}"
                    )
                )
                return
            client = order.pop(0)
            question = [[b"SENTINEL", b"get-master-addr-by-name", self.service]]
            client.execute(question).addCallbacks(answered, failed, (client,))

        def answered(replies: list[Any], client: _RedisClient) -> None:
            reply = replies[0]
            if not isinstance(reply, list) or len(reply) != 2:
                errors.append(f"{client._url} knows no primary named {self.service.decode()!r}")
                ask()
                return
            if self.clients[0] is not client:
                self.clients.remove(client)
                self.clients.insert(0, client)
            result.callback((reply[0].decode(), int(reply[1])))

        def failed(reason: Any) -> None:
            errors.append(str(reason.value))
            ask()

        ask()
        return result

    def close(self) -> Deferred[Any]:
        return DeferredList([client.close() for client in self.clients])


class _SentinelEndpoint:
    """
    A client endpoint whose every C{connect} asks the sentinels where the primary is, then
    connects there. C{address} is where the last connection went.
    """

    def __init__(self, connector: Any, sentinels: _Sentinels, tls: Any, timeout: float) -> None:
        self._connector = connector
        self._sentinels = sentinels
        self._tls = tls
        self._timeout = timeout
        self.address: tuple[str, int] | None = None

    def connect(self, factory: Any) -> Deferred[Any]:
        def there(address: tuple[str, int]) -> Deferred[Any]:
            self.address = address
            host, port = address
            return _endpoint(self._connector, host, port, self._timeout, self._tls).connect(factory)

        return self._sentinels.primary().addCallback(there)


class _Subscriber(Protocol):
    """
    A subscription to one sentinel's C{+switch-master}.
    """

    def __init__(self, watcher: SentinelClient, setup: list[list[bytes]]) -> None:
        self._watcher = watcher
        self._setup = setup
        self._decoder = RespDecoder(StoreError)

    def connectionMade(self) -> None:
        self.transport.write(encode_commands([*self._setup, [b"SUBSCRIBE", _SWITCH]]))  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        try:
            replies = self._decoder.feed(data)
        except ValueError:
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        for reply in replies:
            if isinstance(reply, StoreError):
                _log.error("A sentinel refused the subscription: {error}", error=str(reply))
                self.transport.abortConnection()  # type: ignore[union-attr]
                return
            if not isinstance(reply, list) or len(reply) != 3:
                continue
            if reply[0] == b"subscribe":
                self._watcher.subscribed()
            elif reply[0] == b"message" and reply[1] == _SWITCH:
                self._watcher.switchMessage(reply[2])


class _SubscriberFactory(Factory):
    def __init__(self, watcher: SentinelClient, setup: list[list[bytes]]) -> None:
        self._watcher = watcher
        self._setup = setup

    def buildProtocol(self, addr: Any) -> _Subscriber:
        return _Subscriber(self._watcher, self._setup)


def _isPrimary(replies: list[Any]) -> None:
    role = replies[-1]
    if not isinstance(role, list) or not role or role[0] != b"master":
        name = role[0].decode() if isinstance(role, list) and role else repr(role)
        raise StoreUnavailable(f"the server the sentinels named is a {name}, not the primary")


class SentinelClient(_RedisClient):
    """
    Commands to the primary the sentinels name, following failover.
    """

    def __init__(
        self, reactor: Any, url: _redisurl.RedisURL, tls: Any, timeout: float, tracker: Any = None
    ) -> None:
        connector = _connector(reactor)
        self._sentinels = _Sentinels(reactor, url, tls, timeout)
        self._endpointToPrimary = _SentinelEndpoint(connector, self._sentinels, tls, timeout)
        super().__init__(
            reactor,
            connector,
            self._endpointToPrimary,
            url.display,
            [*url.setup, [b"ROLE"]],
            timeout,
            check=_isPrimary,
            # Retried often: after a failover the new primary is reached soon.
            maxDelay=0.25,
            tracker=tracker,
        )
        self._serviceName = url.service or ""
        self._subscriptions = [
            ClientService(
                _endpoint(connector, host, port, timeout, tls),
                _SubscriberFactory(self, url.sentinelSetup),
                retryPolicy=backoffPolicy(initialDelay=0.05, maxDelay=1.0, jitter=_jitter),
                clock=reactor,
            )
            for host, port in url.nodes
        ]
        self._checking = False

    def _dispatch(self, commands: list[list[bytes]]) -> Deferred[list[Any]]:
        if not self._service.running:
            for subscription in self._subscriptions:
                subscription.startService()
        return super()._dispatch(commands)

    def switchMessage(self, message: bytes) -> None:
        """
        A sentinel's C{+switch-master}: C{name old-ip old-port new-ip new-port}.
        """
        parts = message.split()
        if len(parts) != 5 or parts[0].decode(errors="replace") != self._serviceName:
            return
        self._follow((parts[3].decode(), int(parts[4])))

    def _follow(self, address: tuple[str, int]) -> None:
        if self._protocol is not None and self._endpointToPrimary.address != address:
            _log.info(
                "Redis at {url}: the primary moved to {host}:{port}; reconnecting",
                url=self._url,
                host=address[0],
                port=address[1],
            )
            self.drop()

    def subscribed(self) -> None:
        """
        A subscription started: ask where the primary is, in case it moved meanwhile.
        """
        if self._checking:
            return
        self._checking = True

        def done(result: Any) -> None:
            self._checking = False
            if isinstance(result, tuple):
                self._follow(result)

        self._sentinels.primary().addBoth(done)

    def close(self) -> Deferred[None]:
        if not self._service.running:
            return super().close()
        closing = [super().close(), self._sentinels.close()]
        closing += [s.stopService() for s in self._subscriptions if s.running]
        done: Deferred[None] = Deferred()
        DeferredList(closing).addBoth(lambda _: self._connector.callLater(0, done.callback, None))
        return done


def sentinelClient(
    reactor: Any, url: _redisurl.RedisURL, tls: Any, timeout: float, tracker: Any = None
) -> Any:
    return SentinelClient(reactor, url, tls, timeout, tracker)
