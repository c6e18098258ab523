"""
L{RedisStore} on Redis Sentinel (C{redis-sentinel://...#service}), against real servers the
tests start on loopback: one primary, one replica and three sentinels. Under steady HTTP
traffic on two sites, the primary is stopped (C{kill}, SIGTERM), or the sentinels are told to
fail over (C{SENTINEL FAILOVER}): requests meanwhile get 503s and never a wrong answer, the
sites recover by themselves, and every write a 200 confirmed before is still there. Each test
prints its failover window: from the kill (or the command) to the first confirmed write.
"""

from __future__ import annotations

import json
import time

from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from twisted.web.client import readBody

from tests._redis import RedisServer, SentinelServer, decoded
from tests.apps import store_app
from tests.test_store import StoreTestCase
from tests.test_web import Client
from txsession.redis import RedisStore
from txsession.store import StoreUnavailable

SERVICE = "sessions"


def _until(condition, what, seconds=30.0):
    """
    Poll C{condition} (blocking: for set-up, outside the reactor's turn) until it holds.
    """
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what}")
        time.sleep(0.05)


def _info(server: RedisServer, section: bytes) -> dict[str, str]:
    text = decoded(server.command(b"INFO", section)).decode()
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _fields(reply) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in zip(reply[::2], reply[1::2])}


class Deployment:
    """
    A primary, a replica and three sentinels watching them (quorum 2), all started and
    connected to one another before this returns.
    """

    def __init__(self) -> None:
        self.servers: list[RedisServer] = []
        primary = self.add(RedisServer())
        primary.start()
        replica = self.add(RedisServer())
        replica.start("--replicaof", "127.0.0.1", str(primary.port))
        _until(
            lambda: _info(replica, b"replication").get("master_link_status") == "up",
            "the replica to sync",
        )
        self.sentinels = [self.add(SentinelServer(SERVICE, primary.port)) for _ in range(3)]
        for sentinel in self.sentinels:
            sentinel.start()
        for sentinel in self.sentinels:
            _until(lambda s=sentinel: self._ready(s), "the sentinels to see each other")
        self.data = {primary.port: primary, replica.port: replica}

    def add(self, server: RedisServer) -> RedisServer:
        self.servers.append(server)
        return server

    @staticmethod
    def _ready(sentinel: SentinelServer) -> bool:
        reply = decoded(sentinel.command(b"SENTINEL", b"MASTER", SERVICE.encode()))
        fields = _fields(reply)
        return fields.get("num-slaves") == "1" and fields.get("num-other-sentinels") == "2"

    def url(self, credentials: str = "") -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis-sentinel://{credentials}{hosts}/0#{SERVICE}"

    def primary(self) -> RedisServer:
        """
        The server the sentinels name as the primary now.
        """
        for sentinel in self.sentinels:
            try:
                reply = decoded(
                    sentinel.command(b"SENTINEL", b"get-master-addr-by-name", SERVICE.encode())
                )
            except OSError:
                continue
            return self.data[int(reply[1])]
        raise RuntimeError("no sentinel answered")

    def close(self) -> None:
        for server in self.servers:
            server.close()


class _User:
    """
    One browser: its cookies, its session id once it has one, and the keys 200s confirmed.
    """

    def __init__(self, index: int) -> None:
        self.index = index
        self.client = Client(b"")
        self.uid: str | None = None
        self.confirmed: dict[str, int] = {}
        self.after = 0


class Traffic:
    """
    Users sending requests without pause, each to the two sites in turn: every request sets
    a new key (C{k<n>} = n) and answers with the whole session. A 200 must show this user's
    session with every key an earlier 200 confirmed; a 503 is allowed (the outcome of its
    write unknown); anything else is a wrong answer, as is a 200 that lost a confirmed key.
    """

    def __init__(self, sites, moved, users: int = 4) -> None:
        self.sites = sites
        self.moved = moved
        self.users = [_User(i) for i in range(users)]
        self.wrong: list[str] = []
        self.codes: dict[int, int] = {}
        self.running = True
        self.since: float | None = None
        self.firstWrite: float | None = None
        self.followed: float | None = None
        self.counter = 0

    @defer.inlineCallbacks
    def start(self):
        """
        Give every user a session (a confirmed write), then keep them busy.
        """
        for user in self.users:
            code = yield self.request(user)
            if code != 200:
                raise AssertionError(f"a first request got {code}")
        self.loops = [self.loop(user) for user in self.users]

    def mark(self) -> None:
        """
        From now on, count the users' confirmed writes on the new primary only (the fault
        starts).
        """
        self.since = reactor.seconds()
        for user in self.users:
            user.after = 0

    def recovered(self, writes: int = 3) -> bool:
        return all(user.after >= writes for user in self.users)

    @defer.inlineCallbacks
    def request(self, user: _User):
        self.counter += 1
        n = self.counter
        site = self.sites[n % len(self.sites)]
        try:
            response = yield user.client.agent.request(
                b"GET", site.base + b"set?key=k%d&value=%d" % (n, n)
            )
            body = yield readBody(response)
        except Exception as e:
            self.wrong.append(f"user {user.index}: the request failed: {e!r}")
            return None
        code = response.code
        if self.since is not None and self.followed is None and self.moved(site):
            self.followed = reactor.seconds()
        self.codes[code] = self.codes.get(code, 0) + 1
        if code == 503:
            return code
        if code != 200:
            self.wrong.append(f"user {user.index}: {code} {body[:200]!r}")
            return code
        state = json.loads(body)
        if user.uid is None:
            user.uid = state["session"]
        if state["session"] != user.uid:
            self.wrong.append(f"user {user.index}: a new session after a confirmed write")
        for key, value in user.confirmed.items():
            if state["values"].get(key) != value:
                self.wrong.append(f"user {user.index}: confirmed {key}={value} lost")
        user.confirmed[f"k{n}"] = n
        if self.since is None or self.moved(site):
            user.after += 1
            if self.since is not None and self.firstWrite is None:
                self.firstWrite = reactor.seconds()
        return code

    @defer.inlineCallbacks
    def loop(self, user: _User):
        while self.running:
            code = yield self.request(user)
            if code != 200:
                # Not a busy loop while the store is down.
                yield task.deferLater(reactor, 0.02, lambda: None)

    @defer.inlineCallbacks
    def stop(self):
        self.running = False
        yield defer.DeferredList(self.loops)


def _wait(condition, seconds):
    """
    Fires once C{condition()} holds, checked every 50 ms on the reactor; fails after
    C{seconds} (a bound, so that a test that would hang fails instead).
    """
    deadline = reactor.seconds() + seconds

    @defer.inlineCallbacks
    def poll():
        while not condition():
            if reactor.seconds() > deadline:
                raise AssertionError("gave up waiting")
            yield task.deferLater(reactor, 0.05, lambda: None)

    return poll()


class SentinelTests(StoreTestCase):
    def setUp(self):
        self.deployment = Deployment()
        self.addCleanup(self.deployment.close)
        self.redis = self.deployment.primary()

    def site(self, **options):
        store = RedisStore(self.deployment.url(), timeout=1.0, **options)
        return self.serve(store_app.makeSite(store, 600.0))

    @defer.inlineCallbacks
    def test_sessions(self):
        """
        Sessions are written to the primary the sentinels name, and read by another site.
        """
        a, b = self.site(), self.site()
        client = Client(a.base)
        code, state = yield self.get(client, a, b"set?key=k&value=1")
        self.assertEqual(code, 200)
        code, there = yield self.get(client, b, b"get")
        self.assertEqual((code, there["values"]), (200, {"k": 1}))
        self.assertEqual(self.stored(state["session"])[b"n:k"], b"1")
        self.assertEqual(a.store._client._endpointToPrimary.address[1], self.redis.port)

    @defer.inlineCallbacks
    def failover(self, fault, **options):
        sites = [self.site(**options), self.site(**options)]
        old = self.deployment.primary()

        def moved(site):
            # The site's store is connected to another server than the old primary.
            client = site.store._client
            return client._protocol is not None and (
                client._endpointToPrimary.address[1] != old.port
            )

        traffic = Traffic(sites, moved)
        yield traffic.start()
        yield _wait(lambda: traffic.recovered(), 30)
        traffic.mark()
        fault(old)
        try:
            yield _wait(lambda: traffic.recovered() and self.deployment.primary() is not old, 60)
        finally:
            yield traffic.stop()
        window = traffic.firstWrite - traffic.since
        followed = traffic.followed - traffic.since
        print(
            f"\n{self.id()}: first answer from the new primary after {followed:.2f} s, "
            f"first confirmed write after {window:.2f} s; answers {traffic.codes}"
        )
        self.assertEqual(traffic.wrong, [])
        # Every confirmed write is on the new primary, read through both sites.
        for user in traffic.users:
            for site in sites:
                # A 503 is still a right answer: Sentinel may yet cut connections as it
                # finishes reconfiguring.
                for _ in range(100):
                    code, state = yield self.get(user.client, site, b"get")
                    if code != 503:
                        break
                    yield task.deferLater(reactor, 0.1, lambda: None)
                self.assertEqual(code, 200, state)
                self.assertEqual(state["session"], user.uid)
                for key, value in user.confirmed.items():
                    self.assertEqual(state["values"][key], value)
        self.flushLoggedErrors(StoreUnavailable)
        for site in sites:
            self.assertNotEqual(site.store._client._endpointToPrimary.address[1], old.port)
        return window

    def test_primaryKilled(self):
        """
        The primary is stopped (SIGTERM; Redis 7 waits for its replica before it exits, so
        no confirmed write is lost). The sentinels promote the replica, and both sites
        follow without a restart.
        """

        def kill(primary):
            primary.process.terminate()

        return self.failover(kill)

    def test_sentinelFailover(self):
        """
        SENTINEL FAILOVER: the old primary keeps running and takes writes until the
        sentinels reconfigure it; with C{replicas=1} a write it takes that the replica does
        not confirm gets a 503, so none is confirmed and then lost. The sites follow on
        C{+switch-master}.
        """

        def failover(primary):
            reply = self.deployment.sentinels[0].command(b"SENTINEL", b"FAILOVER", SERVICE.encode())
            self.assertEqual(reply, b"+OK\r\n")

        return self.failover(failover, replicas=1)


class SentinelConfigurationTests(unittest.TestCase):
    def test_passwordsNotShown(self):
        url = (
            "redis-sentinel://u:data-s3cr3t@127.0.0.1:26379,127.0.0.1:26380/2"
            "?sentinelPassword=sentinel-s3cr3t#svc"
        )
        store = RedisStore(url)
        self.assertNotIn("s3cr3t", repr(store))
        self.assertEqual(
            store.url,
            "redis-sentinel://u:***@127.0.0.1:26379,127.0.0.1:26380/2?sentinelPassword=***#svc",
        )

    def test_credentials(self):
        """
        The data password is the user part's; the sentinels' is the query's.
        """
        from txsession._redisurl import RedisURL

        url = RedisURL(
            "rediss-sentinel://app:d%40ta@h1,h2:26380/3?sentinelUsername=s&sentinelPassword=p#svc"
        )
        self.assertEqual(url.kind, "sentinel")
        self.assertTrue(url.tls)
        self.assertEqual(url.nodes, [("h1", 26379), ("h2", 26380)])
        self.assertEqual(url.setup, [[b"AUTH", b"app", b"d@ta"], [b"SELECT", b"3"]])
        self.assertEqual(url.sentinelSetup, [[b"AUTH", b"s", b"p"]])
        self.assertEqual(url.service, "svc")


class ReadOnlyTests(StoreTestCase):
    def setUp(self):
        self.redis = RedisServer()
        self.redis.start()
        self.other = RedisServer()
        self.other.start()
        self.addCleanup(self.redis.close)
        self.addCleanup(self.other.close)

    @defer.inlineCallbacks
    def test_readOnly(self):
        """
        A server that became a replica answers READONLY: the request gets a 503, nothing is
        written, and the connection is dropped, so that the next one finds the primary
        (through the sentinels, with Sentinel; here the same server, made a primary again).
        """
        site = self.serve(store_app.makeSite(RedisStore(self.redis.url), 60.0))
        client = Client(site.base)
        code, state = yield self.get(client, site, b"set?key=k&value=1")
        self.assertEqual(code, 200)
        first = site.store._client._protocol
        self.redis.command(b"REPLICAOF", b"127.0.0.1", str(self.other.port).encode())
        code, _ = yield self.get(client, site, b"set?key=k&value=2")
        self.assertEqual(code, 503)
        [failure] = self.flushLoggedErrors(StoreUnavailable)
        self.assertIn("read-only replica", str(failure.value))
        self.redis.command(b"REPLICAOF", b"NO", b"ONE")
        self.other.command(b"FLUSHALL")
        self.redis.command(b"FLUSHALL")
        code, state = yield self.get(client, site, b"set?key=k&value=3")
        self.assertEqual((code, state["values"]), (200, {"k": 3}))
        self.assertIsNot(site.store._client._protocol, first)
