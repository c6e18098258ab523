"""
L{txsession.Site}: ids, Twisted's contract for C{counter} and C{_entropy}, fork safety, and
the cookie flags; and the demo site driven over real HTTP on loopback.
"""

import json
import os
import re
from binascii import hexlify
from http.cookiejar import CookieJar

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web import resource, server
from twisted.web.client import Agent, CookieAgent, readBody
from twisted.web.http_headers import Headers
from twisted.web.test.test_web import DummyChannel

import txsession
from txsession import demo
from txsession.web import Site

HEX_ID = re.compile(rb"^[0-9a-f]{64}$")


class SiteTests(unittest.TestCase):
    def test_defaults(self):
        """
        Sessions are txsession's; without cookie options, requests are Twisted's own.
        """
        site = Site(resource.Resource())
        self.assertIs(site.sessionFactory, txsession.Session)
        self.assertIs(site.requestFactory, server.Request)
        self.assertIsInstance(site, server.Site)
        flagged = Site(resource.Resource(), cookieHttpOnly=True)
        self.assertTrue(issubclass(flagged.requestFactory, txsession.Request))

    def test_idsLikeTwisted(self):
        """
        Ids are 64 lowercase hex bytes, all different, and C{counter} counts them.
        """
        site = Site(resource.Resource())
        ids = {site._mkuid() for _ in range(2000)}
        self.assertEqual(len(ids), 2000)
        self.assertTrue(all(HEX_ID.match(uid) for uid in ids))
        self.assertEqual(site.counter, 2000)
        twisted = server.Site(resource.Resource())
        self.assertEqual(len(twisted._mkuid()), len(site._mkuid()))

    def test_entropyReplaced(self):
        """
        A replaced C{_entropy} is used, as in Twisted.
        """
        site = Site(resource.Resource())
        site._entropy = lambda n: b"\x01" * n
        self.assertEqual(site._mkuid(), hexlify(b"\x01" * 32))
        session = site.makeSession()
        self.addCleanup(session.expire)
        self.assertEqual(session.uid, hexlify(b"\x01" * 32))

    def test_makeSession(self):
        clock = Clock()
        site = Site(resource.Resource(), reactor=clock)
        session = site.makeSession()
        self.assertIsInstance(session, txsession.Session)
        self.assertIs(site.getSession(session.uid), session)
        self.assertEqual(len(clock.calls), 1)
        clock.advance(900)
        self.assertRaises(KeyError, site.getSession, session.uid)

    def test_forkedChildrenMakeDifferentIds(self):
        """
        Children forked after the parent made ids each seed their own generator: no id repeats
        across the parent and its children.
        """
        site = Site(resource.Resource())
        site._mkuid()
        pipes = []
        for _ in range(4):
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:
                try:
                    os.close(read)
                    os.write(write, b"".join(site._mkuid() for _ in range(50)))
                finally:
                    os._exit(0)
            os.close(write)
            pipes.append((pid, read))
        parent = [site._mkuid() for _ in range(50)]
        children = []
        for pid, read in pipes:
            data = b""
            while chunk := os.read(read, 65536):
                data += chunk
            os.close(read)
            os.waitpid(pid, 0)
            children.extend(data[i : i + 64] for i in range(0, len(data), 64))
        self.assertEqual(len(children), 200)
        everything = parent + children
        self.assertEqual(len(set(everything)), len(everything))

    def _sessionCookie(self, site):
        request = site.requestFactory(DummyChannel(), 1)
        request.site = site
        request.sitepath = []
        session = request.getSession()
        self.addCleanup(session.expire)
        request.addCookie(b"other", b"1")
        return request.cookies[0], request.cookies[1]

    def test_cookieDefaultsAreTwisted(self):
        """
        By default the session cookie is the one Twisted sets.
        """
        ours, other = self._sessionCookie(Site(resource.Resource()))
        twistedSite = server.Site(resource.Resource())
        theirs, _ = self._sessionCookie(twistedSite)
        strip = lambda c: re.sub(rb"=[0-9a-f]{64}", b"=ID", c)  # noqa: E731
        self.assertEqual(strip(ours), strip(theirs))
        self.assertNotIn(b"HttpOnly", ours)
        self.assertNotIn(b"SameSite", ours)

    def test_cookieFlags(self):
        """
        C{cookieHttpOnly} and C{cookieSameSite} apply to the session cookie only.
        """
        site = Site(resource.Resource(), cookieHttpOnly=True, cookieSameSite=b"Strict")
        session, other = self._sessionCookie(site)
        self.assertIn(b"HttpOnly", session)
        self.assertIn(b"SameSite=strict", session)
        self.assertTrue(session.startswith(b"TWISTED_SESSION="))
        self.assertNotIn(b"HttpOnly", other)

    def test_cookieFlagsWithOwnRequestFactory(self):
        """
        The flags apply to an app's own request class, given at construction or set later,
        which the site's requests still are.
        """

        class MyRequest(server.Request):
            mine = True

        site = Site(resource.Resource(), requestFactory=MyRequest, cookieHttpOnly=True)
        self.assertTrue(issubclass(site.requestFactory, MyRequest))
        session, _ = self._sessionCookie(site)
        self.assertIn(b"HttpOnly", session)

        later = Site(resource.Resource(), cookieSameSite="Lax")
        later.requestFactory = MyRequest
        self.assertTrue(later.requestFactory.mine)
        session, _ = self._sessionCookie(later)
        self.assertIn(b"SameSite=lax", session)

        plain = Site(resource.Resource(), requestFactory=MyRequest)
        self.assertIs(plain.requestFactory, MyRequest)

    def test_cookieFlagsNeedARequestClass(self):
        """
        A request factory the flags cannot be applied to is refused at construction.
        """

        def factory(*args):
            return server.Request(*args)

        with self.assertRaises(TypeError) as caught:
            Site(resource.Resource(), requestFactory=factory, cookieHttpOnly=True)
        self.assertIn("cookieHttpOnly", str(caught.exception))
        self.assertIs(Site(resource.Resource(), requestFactory=factory).requestFactory, factory)

    def test_badSameSite(self):
        self.assertRaises(ValueError, Site, resource.Resource(), cookieSameSite=b"sometimes")


class Client:
    """
    An HTTP client with its own cookie jar.
    """

    def __init__(self, base):
        self.base = base
        self.jar = CookieJar()
        self.agent = CookieAgent(Agent(reactor), self.jar)

    @defer.inlineCallbacks
    def get(self, path, headers=None):
        response = yield self.agent.request(b"GET", self.base + path, Headers(headers or {}), None)
        body = yield readBody(response)
        return response, body

    @defer.inlineCallbacks
    def state(self):
        _, body = yield self.get(b"state")
        return json.loads(body)


class EndToEndTests(unittest.TestCase):
    """
    The demo site over real HTTP on loopback; session expiry is timed on a L{Clock}.
    """

    def setUp(self):
        self.clock = Clock()
        self.site = demo.makeSite(timeout=60, reactor=self.clock)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = b"http://127.0.0.1:%d/" % self.port.getHost().port

    def tearDown(self):
        # Sessions still open are ended so that no delayed call outlives the test.
        for session in list(self.site.sessions.values()):
            session.expire()

    @defer.inlineCallbacks
    def test_sessionSurvivesRequests(self):
        client = Client(self.base)
        yield client.get(b"")
        yield client.get(b"")
        yield client.get(b"add?item=book")
        state = yield client.state()
        self.assertEqual(state["visits"], 2)
        self.assertEqual(state["cart"], ["book"])
        self.assertEqual(state["timeout"], 60)
        self.assertIsInstance(self.site.sessions[state["session"].encode()], txsession.Session)

    @defer.inlineCallbacks
    def test_twoClientsTwoSessions(self):
        one, two = Client(self.base), Client(self.base)
        yield one.get(b"")
        first = yield one.state()
        second = yield two.state()
        self.assertNotEqual(first["session"], second["session"])
        self.assertEqual(second["visits"], 0)

    @defer.inlineCallbacks
    def test_login(self):
        """
        Logging in keeps the session's contents under a fresh id.
        """
        client = Client(self.base)
        yield client.get(b"add?item=book")
        before = yield client.state()
        yield client.get(b"login?user=ann")
        after = yield client.state()
        self.assertNotEqual(after["session"], before["session"])
        self.assertEqual((after["user"], after["cart"]), ("ann", ["book"]))
        self.assertNotIn(before["session"].encode(), self.site.sessions)

    @defer.inlineCallbacks
    def test_timeoutGivesNewSession(self):
        client = Client(self.base)
        before = yield client.state()
        self.clock.advance(59)
        still = yield client.state()
        self.assertEqual(still["session"], before["session"])
        # Sliding expiry: 60 s from the last use.
        self.clock.advance(59)
        still = yield client.state()
        self.assertEqual(still["session"], before["session"])
        self.clock.advance(60)
        self.assertNotIn(before["session"].encode(), self.site.sessions)
        after = yield client.state()
        self.assertNotEqual(after["session"], before["session"])

    @defer.inlineCallbacks
    def test_logout(self):
        client = Client(self.base)
        yield client.get(b"")
        before = yield client.state()
        response, _ = yield client.get(b"logout")
        self.assertEqual(response.code, 302)
        self.assertNotIn(before["session"].encode(), self.site.sessions)
        after = yield client.state()
        self.assertNotEqual(after["session"], before["session"])
        self.assertEqual(after["visits"], 0)

    @defer.inlineCallbacks
    def test_forgedCookie(self):
        """
        A cookie naming no live session gets a fresh session; the same header naming a live
        one reaches it (the control showing the header is sent).
        """
        owner = Client(self.base)
        real = yield owner.state()
        genuine = b"TWISTED_SESSION=" + real["session"].encode()
        _, body = yield Client(self.base).get(b"state", {b"cookie": [genuine]})
        self.assertEqual(json.loads(body)["session"], real["session"])

        forged = b"TWISTED_SESSION=" + b"0" * 64
        _, body = yield Client(self.base).get(b"state", {b"cookie": [forged]})
        state = json.loads(body)
        self.assertNotIn(state["session"], ("0" * 64, real["session"]))
        self.assertIn(state["session"].encode(), self.site.sessions)

    @defer.inlineCallbacks
    def test_cookieFlagsOnTheWire(self):
        client = Client(self.base)
        response, _ = yield client.get(b"state")
        cookies = response.headers.getRawHeaders(b"set-cookie")
        self.assertEqual(len(cookies), 1)
        self.assertTrue(cookies[0].startswith(b"TWISTED_SESSION="))
        self.assertIn(b"HttpOnly", cookies[0])
        self.assertIn(b"SameSite=lax", cookies[0])
