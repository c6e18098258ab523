"""
The absolute timeout, the sessions of a user, and ids hashed at rest, on sites that share a
real C{redis-server} (tests/test_accounts.py has them in memory).
"""

from __future__ import annotations

import hashlib
import json

from twisted.internet import defer

from tests._redis import sessionKey
from tests.apps import store_app
from tests.test_accounts import Pages
from tests.test_store import StoreTestCase, sleep
from tests.test_web import Client
from txsession.redis import RedisStore
from txsession.web import Site


class _Site(StoreTestCase):
    def accountSite(self, **options):
        site = Site(Pages(), store=RedisStore(self.redis.url), **options)
        return self.serve(site)

    @defer.inlineCallbacks
    def json(self, client, path):
        response, body = yield client.get(path)
        return json.loads(body)

    @defer.inlineCallbacks
    def login(self, site, user):
        client = Client(site.base)
        yield client.get(b"login?user=" + user.encode())
        return client

    def everything(self):
        """
        Every key, field, member and value Redis holds, as one bytes string.
        """
        parts = []
        for key in self.redis.keys():
            parts.append(key)
            kind = self.redis.command(b"TYPE", key)
            if kind == b"+hash\r\n":
                for field, value in self.redis.hgetall(key).items():
                    parts += [field, value]
            else:
                parts.append(self.redis.command(b"SMEMBERS", key))
        return b"\n".join(parts)


class HashedIdTests(_Site):
    @defer.inlineCallbacks
    def test_noRawIdInRedis(self):
        """
        The Redis key of a session is its id's SHA-256; no key, field or value holds a raw
        session id, through writes, logins (renames, tombstones, the user index) and logouts.
        """
        site = self.makeSite()
        client = Client(site.base)
        _, state = yield self.get(client, site, b"set?key=a&value=1")
        ids = [state["session"]]
        self.assertEqual(self.redis.keys(), [sessionKey(ids[0])])
        _, renewed = yield self.get(client, site, b"renew")
        ids.append(renewed["session"])
        accounts = self.accountSite()
        alice = yield self.login(accounts, "alice")
        ids.append((yield self.json(alice, b"whoami"))["session"])
        stored = self.everything()
        self.assertTrue(stored)
        for uid in ids:
            self.assertNotIn(uid.encode(), stored)


class AbsoluteTimeoutTests(_Site):
    @defer.inlineCallbacks
    def test_everyProcessEndsIt(self):
        """
        A session made on A with an absolute timeout of 1 s, used on B (which has no such
        option) and kept busy: B's copy ends at that time (its expire callbacks run), Redis
        never keeps the key past it, and the next request gets a new session. A renew
        keeps the creation time.
        """
        a = self.serve(store_app.makeSite(RedisStore(self.redis.url), absoluteTimeout=1.0))
        b = self.makeSite()
        client = Client(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")
        uid = state["session"]
        created = self.redis.hgetall(sessionKey(uid))[b"m:c"]
        _, renewed = yield self.get(client, a, b"renew")
        uid = renewed["session"]
        self.assertEqual(self.redis.hgetall(sessionKey(uid))[b"m:c"], created)
        _, seen = yield self.get(client, b, b"get")
        self.assertEqual(seen["session"], uid)
        ended = []
        b.sessions[uid.encode()].notifyOnExpire(lambda: ended.append(uid))
        ttl = int(self.redis.command(b"PTTL", sessionKey(uid))[1:-2])
        self.assertLessEqual(ttl, 1000)
        while not ended:
            yield sleep(0.1)
            code, now = yield self.get(client, b, b"get")
            self.assertEqual(code, 200)
        self.assertEqual(self.redis.keys(), [])
        self.assertNotEqual(now["session"], uid)
        self.assertEqual(now["values"], {})


class UserSessionStoreTests(_Site):
    @defer.inlineCallbacks
    def test_acrossProcesses(self):
        """
        Alice logs in on A and on B. Either process lists both sessions, with opaque ids
        (the keys' hashes, not the cookies); B logs her out everywhere else, and A's session
        is gone for every process; ending a session by id needs the right user.
        """
        a, b = self.accountSite(), self.accountSite()
        onA = yield self.login(a, "alice")
        onB = yield self.login(b, "alice")
        bob = yield self.login(a, "bob")
        records = yield self.json(onB, b"mine")
        self.assertEqual(len(records), 2)
        cookies = [(yield self.json(onA, b"whoami"))["session"]]
        cookies.append((yield self.json(onB, b"whoami"))["session"])
        for record in records:
            self.assertNotIn(record["id"], cookies)
            self.assertIsInstance(record["created"], float)
            self.assertIsInstance(record["lastUsed"], float)
        self.assertIsNone((yield self.json(Client(a.base), b"mine")))
        # Bob cannot end them.
        for record in records:
            self.assertFalse((yield self.json(bob, b"end?id=" + record["id"].encode())))
        self.assertEqual((yield self.json(onB, b"others")), 1)
        self.assertIsNone((yield self.json(onA, b"whoami"))["user"])
        self.assertEqual((yield self.json(onB, b"whoami"))["user"], "alice")
        left = yield self.json(onB, b"mine")
        self.assertEqual(len(left), 1)
        self.assertTrue((yield self.json(onB, b"end?id=" + left[0]["id"].encode())))
        self.assertIsNone((yield self.json(onB, b"whoami"))["user"])
        alice = b"txsession:u:" + hashlib.sha256(b"alice").hexdigest().encode()
        self.assertIn(
            b"txsession:u:" + hashlib.sha256(b"bob").hexdigest().encode(), self.redis.keys()
        )
        self.assertNotIn(alice, self.redis.keys())


class HostPrefixStoreTests(_Site):
    @defer.inlineCallbacks
    def test_hostPrefixedCookie(self):
        """
        With a store and cookieHostPrefix, over HTTPS: the session is under the __Host-
        cookie and found through it by another site; the same id under the plain secure
        name is not honoured.
        """
        from tests.test_security import TLSClient, _cookie

        a, b = (
            self.serve(
                store_app.makeSite(RedisStore(self.redis.url), cookieHostPrefix=True),
                secure=True,
            )
            for _ in range(2)
        )
        client = TLSClient(a.base)
        _, state = yield self.get(client, a, b"set?key=k&value=1")
        self.assertEqual([c.name for c in client.jar], ["__Host-TWISTED_SECURE_SESSION"])
        _, there = yield self.get(client, b, b"get")
        self.assertEqual(there, {"session": state["session"], "values": {"k": 1}})
        plain = TLSClient(b.base)
        cookie = _cookie("TWISTED_SECURE_SESSION", state["session"])
        cookie.domain = "localhost"
        plain.jar.set_cookie(cookie)
        _, other = yield self.get(plain, b, b"get")
        self.assertNotEqual(other["session"], state["session"])
