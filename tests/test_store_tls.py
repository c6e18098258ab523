"""
L{RedisStore} over TLS (C{rediss://}), against real C{redis-server}s with a TLS port, whose
CA, server certificate and client certificate the tests make: sessions over TLS, a server
certificate from another CA or for another host name refused with a message naming why, the
default trust (the platform's) refusing a private CA, and mutual TLS.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
import time

from twisted.internet import defer, ssl
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.trial import unittest

from tests._redis import RedisServer, freePort, sessionKey
from tests.apps import store_app
from tests.test_store import StoreTestCase
from tests.test_web import Client
from txsession._certs import CA
from txsession.redis import RedisStore
from txsession.store import StoreUnavailable


class _TLSRedis:
    """
    Two C{redis-server}s with TLS ports, certificates from one CA: one that asks for no
    client certificate, one that requires it (mutual TLS). Started once for the module.
    """

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="txsession-tls-")
        self.ca = CA(self.dir, "test")
        self.otherCA = CA(self.dir, "other")
        # The server's certificate names localhost only: reached as 127.0.0.1, its host name
        # does not match.
        self.server = self.ca.issue("localhost", ("localhost",))
        self.client = self.ca.issue("client", client=True)
        self.strangerClient = self.otherCA.issue("stranger", client=True)
        self.plain = self._start("no")
        self.mutual = self._start("yes")

    def _start(self, authClients: str) -> tuple[RedisServer, int]:
        server = RedisServer()
        port = freePort()
        server.start(
            "--tls-port", str(port),
            "--tls-cert-file", self.server.path,
            "--tls-key-file", self.server.keyPath,
            "--tls-ca-cert-file", self.ca.path,
            "--tls-auth-clients", authClients,
        )  # fmt: skip
        return server, port

    def close(self) -> None:
        self.plain[0].close()
        self.mutual[0].close()
        shutil.rmtree(self.dir, ignore_errors=True)


_servers: _TLSRedis | None = None


def servers() -> _TLSRedis:
    global _servers
    if _servers is None:
        _servers = _TLSRedis()
        atexit.register(_servers.close)
    for server, _ in (_servers.plain, _servers.mutual):
        server.command(b"FLUSHALL")
    return _servers


class TLSTests(StoreTestCase):
    def setUp(self):
        self.tls = servers()
        self.redis = self.tls.plain[0]

    def url(self, host="localhost", mutual=False):
        port = (self.tls.mutual if mutual else self.tls.plain)[1]
        return f"rediss://{host}:{port}/0"

    def site(self, store):
        return self.serve(store_app.makeSite(store, 60.0))

    @defer.inlineCallbacks
    def test_sessions(self):
        """
        Sessions are written and read over TLS, checked against a private CA given as
        C{tls=}; the store's connection is TLS, and never written to past TLS.
        """
        options = ssl.optionsForClientTLS("localhost", trustRoot=self.tls.ca.trustRoot())
        a = self.site(RedisStore(self.url(), tls=options))
        b = self.site(RedisStore(self.url(), tls=options))
        client = Client(a.base)
        code, state = yield self.get(client, a, b'set?key=cart&value=["book"]')
        self.assertEqual(code, 200)
        code, there = yield self.get(client, b, b"get")
        self.assertEqual((code, there["values"]), (200, {"cart": ["book"]}))
        self.assertEqual(self.stored(state["session"]), {b"m:t": b"60000", b"n:cart": b'["book"]'})
        protocol = a.store._client._protocol
        self.assertIsInstance(protocol.transport, TLSMemoryBIOProtocol)

    @defer.inlineCallbacks
    def test_bytesWaitingOnTheSocketMeanARead(self):
        """
        Over TLS, what waits unread on the socket cannot be looked into (it is encrypted):
        a push may be among it, so the copy is not used. (The TLS layer passes on to the
        socket's attributes, which made its connection look like a plain one, whose bytes
        were searched for an invalidation that no ciphertext spells out.)
        """
        options = ssl.optionsForClientTLS("localhost", trustRoot=self.tls.ca.trustRoot())
        store = RedisStore(self.url(), tls=options)
        a = self.site(store)
        client = Client(a.base)
        yield self.get(client, a, b"set?key=k&value=1")
        _, state = yield self.get(client, a, b"get")
        uid = state["session"].encode()
        self.assertTrue(store.cached(uid, a._flow))
        # Changed behind this process's back: Redis pushes the invalidation, which waits on
        # the socket while the reactor does not turn.
        self.redis.command(b"HSET", sessionKey(uid), b"n:k", b"2")
        time.sleep(0.2)
        self.assertIsNone(store.cached(uid, a._flow))

    @defer.inlineCallbacks
    def refused(self, store, why):
        """
        A request on C{store} gets a 503, logged with a L{StoreUnavailable} whose message
        contains C{why}; nothing is written.
        """
        site = self.site(store)
        code, _ = yield self.get(Client(site.base), site, b"set?key=k&value=1")
        self.assertEqual(code, 503)
        failures = self.flushLoggedErrors(StoreUnavailable)
        self.assertTrue(failures)
        for failure in failures:
            self.assertIn(why, str(failure.value))
        self.assertEqual(self.redis.keys(), [])
        return failures

    def test_defaultTrustRefusesAPrivateCA(self):
        """
        By default the platform's trust roots are used: a certificate from a private CA is
        refused.
        """
        return self.refused(RedisStore(self.url()), "certificate verify failed")

    def test_otherCARefused(self):
        """
        A server certificate signed by a CA other than the one given is refused.
        """
        options = ssl.optionsForClientTLS("localhost", trustRoot=self.tls.otherCA.trustRoot())
        return self.refused(RedisStore(self.url(), tls=options), "certificate verify failed")

    def test_wrongHostNameRefused(self):
        """
        A certificate from the right CA that does not name the host the store reached (here
        127.0.0.1, where the certificate names localhost) is refused. C{tls=} as a callable
        gets the host name to check.
        """
        ca = self.tls.ca.trustRoot()
        seen = []

        def options(host):
            seen.append(host)
            return ssl.optionsForClientTLS(host, trustRoot=ca)

        store = RedisStore(self.url(host="127.0.0.1"), tls=options)
        d = self.refused(store, "does not name the host")
        d.addCallback(lambda _: self.assertEqual(seen[:1], ["127.0.0.1"]))
        return d

    @defer.inlineCallbacks
    def test_mutualTLS(self):
        """
        A server that requires client certificates takes the store's, signed by its CA, and
        refuses a store without one or with one from another CA.
        """
        ca = self.tls.ca.trustRoot()
        self.redis = self.tls.mutual[0]
        options = ssl.optionsForClientTLS(
            "localhost", trustRoot=ca, clientCertificate=self.tls.client.privateCertificate()
        )
        site = self.site(RedisStore(self.url(mutual=True), tls=options))
        code, state = yield self.get(Client(site.base), site, b"set?key=k&value=1")
        self.assertEqual((code, state["values"]), (200, {"k": 1}))
        self.assertEqual(self.stored(state["session"])[b"n:k"], b"1")
        self.redis.command(b"FLUSHALL")
        bare = ssl.optionsForClientTLS("localhost", trustRoot=ca)
        yield self.refused(RedisStore(self.url(mutual=True), tls=bare), "certificate required")
        stranger = ssl.optionsForClientTLS(
            "localhost",
            trustRoot=ca,
            clientCertificate=self.tls.strangerClient.privateCertificate(),
        )
        yield self.refused(RedisStore(self.url(mutual=True), tls=stranger), "unknown ca")


class TLSConfigurationTests(unittest.TestCase):
    def test_passwordNotShown(self):
        store = RedisStore("rediss://u:s3cr3t@localhost:6380/0")
        self.assertNotIn("s3cr3t", repr(store))
        self.assertEqual(store.url, "rediss://u:***@localhost:6380/0")

    def test_tlsNeedsATLSURL(self):
        options = ssl.optionsForClientTLS("localhost")
        self.assertRaises(ValueError, RedisStore, "redis://localhost/0", tls=options)
        self.assertRaises(TypeError, RedisStore, "rediss://localhost/0", tls=object())

    def test_withoutTLSSupport(self):
        """
        Without service_identity (or pyOpenSSL), a rediss:// store fails at construction,
        saying what to install; a plain one is made.
        """
        saved = sys.modules.get("service_identity")
        sys.modules["service_identity"] = None  # type: ignore[assignment]
        self.addCleanup(sys.modules.__setitem__, "service_identity", saved)
        with self.assertRaises(ImportError) as raised:
            RedisStore("rediss://localhost/0")
        self.assertIn("txsession[tls]", str(raised.exception))
        RedisStore("redis://localhost/0")
