"""
L{RedisStore} on Redis Cluster (C{cluster=True}), against three real primaries the tests
start on loopback and join with C{redis-cli --cluster create}: sessions spread over the slots
and nodes, renewals keep a session's slot, a slot migrated during traffic (C{CLUSTER SETSLOT
... IMPORTING/MIGRATING}, C{MIGRATE}) fails no request, and a stopped node gives 503s only
for the sessions in its slots.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from tests._redis import RedisServer, decoded, freePort, sessionKey
from tests.apps import store_app
from tests.test_store import StoreTestCase
from tests.test_store_sentinel import _until, _wait
from tests.test_web import Client
from txsession._txsession import key_slot
from txsession.redis import RedisStore
from txsession.store import StoreUnavailable


def _redisCli() -> str:
    path = shutil.which("redis-cli")
    if path is None:
        if os.environ.get("CI") == "true":
            raise RuntimeError("redis-cli is not installed: .ci/run installs it (redis-tools)")
        raise unittest.SkipTest("no redis-cli installed (apt-get install redis-tools)")
    return path


class Cluster:
    """
    Three primaries, no replicas, every slot assigned. C{cluster-require-full-coverage no}:
    a stopped node's slots fail, the others keep working.
    """

    def __init__(self) -> None:
        cli = _redisCli()
        self.nodes = [RedisServer() for _ in range(3)]
        for node in self.nodes:
            node.start(
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "1000",
                "--cluster-require-full-coverage", "no",
                # The bus port is the port + 10000 by default, maybe past 65535.
                "--cluster-port", str(freePort()),
            )  # fmt: skip
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes)]
            + ["--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for node in self.nodes:
            _until(lambda n=node: self._ok(n), "the cluster to form")

    @staticmethod
    def _ok(node: RedisServer) -> bool:
        info = decoded(node.command(b"CLUSTER", b"INFO")).decode()
        return "cluster_state:ok" in info and "cluster_slots_assigned:16384" in info

    @property
    def url(self) -> str:
        return "redis://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:2])

    def nodeId(self, node: RedisServer) -> bytes:
        return decoded(node.command(b"CLUSTER", b"MYID"))

    def owner(self, slot: int) -> RedisServer:
        for entry in decoded(self.nodes[0].command(b"CLUSTER", b"SLOTS")):
            if entry[0] <= slot <= entry[1]:
                return next(n for n in self.nodes if n.port == entry[2][1])
        raise LookupError(slot)

    def keys(self, node: RedisServer) -> list[bytes]:
        return node.keys()

    def close(self) -> None:
        for node in self.nodes:
            node.close()


def _member(uid: str) -> bytes:
    """
    What a cluster store keeps of session id C{uid} after its key prefix: the hash tag (the
    hash of the id's first 4 characters, which a renewal keeps) and the id's hash.
    """
    tag = hashlib.sha256(uid[:4].encode()).hexdigest()[:8].encode()
    return b"{" + tag + b"}" + hashlib.sha256(uid.encode()).hexdigest().encode()


def _key(uid: str) -> bytes:
    return b"txsession:" + _member(uid)


class ClusterTests(StoreTestCase):
    def setUp(self):
        self.cluster = Cluster()
        self.addCleanup(self.cluster.close)

    def site(self):
        store = RedisStore(self.cluster.url, cluster=True, timeout=2.0)
        return self.serve(store_app.makeSite(store, 600.0))

    def storedIn(self, uid: str) -> dict[bytes, bytes]:
        return self.cluster.owner(key_slot(_key(uid))).hgetall(_key(uid))

    @defer.inlineCallbacks
    def test_sessionsSpread(self):
        """
        Sessions made on one site are on every node, in their own slots, each under its
        hash-tagged key, and read by another site.
        """
        a, b = self.site(), self.site()
        users = [Client(a.base) for _ in range(24)]
        uids = []
        for i, client in enumerate(users):
            code, state = yield self.get(client, a, b"set?key=n&value=%d" % i)
            self.assertEqual(code, 200)
            uids.append(state["session"])
        for i, (client, uid) in enumerate(zip(users, uids)):
            code, state = yield self.get(client, b, b"get")
            self.assertEqual((code, state), (200, {"session": uid, "values": {"n": i}}))
            self.assertEqual(self.storedIn(uid)[b"n:n"], b"%d" % i)
        for node in self.cluster.nodes:
            self.assertTrue(node.keys())
        self.assertGreater(len({key_slot(_key(uid)) for uid in uids}), 20)

    @defer.inlineCallbacks
    def test_renew(self):
        """
        A renewed session keeps its hash tag, so the rename (old key to tombstone, new key)
        is one script on one node, for sessions all over the slots; a logout through the old
        id follows the tombstone and ends both.
        """
        site, other = self.site(), self.site()
        for i in range(12):
            client = Client(site.base)
            code, state = yield self.get(client, site, b"set?key=n&value=%d" % i)
            old = state["session"]
            code, renewed = yield self.get(client, site, b"renew")
            self.assertEqual(code, 200)
            new = renewed["session"]
            self.assertNotEqual(new, old)
            self.assertEqual(new[:4], old[:4])
            self.assertEqual(self.storedIn(old), {b"m:f": _member(new)})
            self.assertEqual(self.storedIn(new)[b"n:n"], b"%d" % i)
            code, state = yield self.get(client, other, b"get")
            self.assertEqual((code, state["session"], state["values"]), (200, new, {"n": i}))
        # A logout that reaches the old id after the rename ends the renamed session too.
        yield site.store.delete(old.encode())
        self.assertEqual(self.storedIn(old), {})
        self.assertEqual(self.storedIn(new), {})

    @defer.inlineCallbacks
    def test_slotMigrated(self):
        """
        While requests keep coming, the slots of two users' sessions move to another node,
        key by key: no request fails (ASK during the move, TRYAGAIN for a renewal whose keys
        are split, MOVED after it), and the sessions are whole on the new node.
        """
        site = self.site()
        users = [Client(site.base) for _ in range(4)]
        uids = []
        for client in users:
            code, state = yield self.get(client, site, b"set?key=k0&value=0")
            uids.append(state["session"])
        codes: list[int] = []
        running = [True]

        @defer.inlineCallbacks
        def traffic(client, index):
            n = 0
            while running[0]:
                n += 1
                path = b"renew" if n % 5 == 0 else b"set?key=k%d&value=%d" % (n, n)
                code, state = yield self.get(client, site, path)
                codes.append(code)
                if code == 200 and n % 5 == 0:
                    uids[index] = state["session"]
                # Paced: each renewal leaves a tombstone in the slot, and a slot with more keys
                # takes longer to migrate key by key than a renewal may wait (TRYAGAIN).
                yield task.deferLater(reactor, 0.02, lambda: None)

        loops = [traffic(client, i) for i, client in enumerate(users)]
        for index in (0, 1):
            yield self.migrate(key_slot(_key(uids[index])))
        running[0] = False
        yield defer.DeferredList(loops)
        self.assertEqual(set(codes), {200})
        redirected = site.store._client.redirected
        print(f"\n{self.id()}: {len(codes)} requests, redirections followed: {redirected}")
        self.assertTrue(redirected["MOVED"] and redirected["ASK"])
        for client, uid in zip(users, uids):
            code, state = yield self.get(client, site, b"get")
            self.assertEqual((code, state["session"]), (200, uid))
            self.assertEqual(self.storedIn(uid)[b"n:k0"], b"0")

    @defer.inlineCallbacks
    def migrate(self, slot: int):
        """
        Move C{slot} to another node as C{redis-cli --cluster reshard} does, one key at a
        time, letting requests run between the steps.
        """
        source = self.cluster.owner(slot)
        target = next(n for n in self.cluster.nodes if n is not source)
        pause = lambda: task.deferLater(reactor, 0.1, lambda: None)  # noqa: E731
        s = b"%d" % slot
        target.command(b"CLUSTER", b"SETSLOT", s, b"IMPORTING", self.cluster.nodeId(source))
        source.command(b"CLUSTER", b"SETSLOT", s, b"MIGRATING", self.cluster.nodeId(target))
        yield pause()
        while True:
            keys = decoded(source.command(b"CLUSTER", b"GETKEYSINSLOT", s, b"10"))
            if not keys:
                break
            for key in keys:
                reply = source.command(
                    b"MIGRATE", b"127.0.0.1", b"%d" % target.port, key, b"0", b"5000"
                )
                self.assertIn(reply, (b"+OK\r\n", b"+NOKEY\r\n"))
                yield pause()
        for node in self.cluster.nodes:
            node.command(b"CLUSTER", b"SETSLOT", s, b"NODE", self.cluster.nodeId(target))
        yield pause()
        self.assertIs(self.cluster.owner(slot), target)

    @defer.inlineCallbacks
    def test_nodeStopped(self):
        """
        With one node stopped, the sessions in its slots get 503s and every other session
        is served, before and after the cluster marks the node failed.
        """
        site = self.site()
        users = []
        while len({self.cluster.owner(key_slot(_key(u))).port for _, u in users}) < 3:
            client = Client(site.base)
            code, state = yield self.get(client, site, b"set?key=k&value=1")
            self.assertEqual(code, 200)
            users.append((client, state["session"]))
        stopped = self.cluster.nodes[2]
        stopped.stop()

        @defer.inlineCallbacks
        def check():
            for client, uid in users:
                there = self.cluster.owner(key_slot(_key(uid))).port == stopped.port
                code, state = yield self.get(client, site, b"set?key=k&value=2")
                self.assertEqual(code, 503 if there else 200)
                if not there:
                    self.assertEqual(state["session"], uid)

        yield check()
        alive = self.cluster.nodes[0]
        yield _wait(
            lambda: (
                b"fail"
                in [
                    line.split()[2]
                    for line in decoded(alive.command(b"CLUSTER", b"NODES")).splitlines()
                    if line.split()[1].startswith(b"127.0.0.1:%d" % stopped.port)
                ][0].split(b",")
            ),
            30,
        )
        yield check()
        self.flushLoggedErrors(StoreUnavailable)


class ClusterConfigurationTests(unittest.TestCase):
    def test_options(self):
        self.assertRaises(ValueError, RedisStore, "redis://a:1,b:2/1", cluster=True)
        self.assertRaises(ValueError, RedisStore, "unix:///x", cluster=True)
        self.assertRaises(ValueError, RedisStore, "redis://a:1", cluster=True, keyPrefix="{x}")
        self.assertRaises(ValueError, RedisStore, "redis://a:1", cluster=True, replicas=1)
        store = RedisStore("redis://u:s3cr3t@a:1,b:2", cluster=True)
        self.assertNotIn("s3cr3t", repr(store))

    def test_renewedIdKeepsTheTag(self):
        store = RedisStore("redis://a:1", cluster=True)
        self.assertEqual(store.renewedId(b"abcd" + b"0" * 60, b"f" * 64), b"abcd" + b"f" * 60)
        self.assertEqual(store._key(b"abcdef"), _key("abcdef"))
        self.assertEqual(RedisStore().renewedId(b"abcd", b"ffff"), b"ffff")
        self.assertEqual(RedisStore()._key(b"abcdef"), sessionKey(b"abcdef"))
