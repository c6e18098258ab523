"""
L{txsession.Site}: ids, Twisted's contract for C{counter} and C{_entropy}, fork safety, and
the cookie flags; and the demo site driven over real HTTP on loopback.
"""

import json
import os
import re
from binascii import hexlify
from http.cookiejar import CookieJar
from io import BytesIO
from urllib.parse import urlencode

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web import resource, server
from twisted.web.client import Agent, CookieAgent, FileBodyProducer, readBody
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
        # Every page and answer this client was sent, to look for session ids in.
        self.bodies = []

    @defer.inlineCallbacks
    def request(self, method, path, headers=None, body=None):
        producer = None if body is None else FileBodyProducer(BytesIO(body))
        response = yield self.agent.request(
            method, self.base + path, Headers(headers or {}), producer
        )
        body = yield readBody(response)
        self.bodies.append(body)
        return response, body

    def get(self, path, headers=None):
        return self.request(b"GET", path, headers)

    def post(self, path, **fields):
        """
        Send C{fields} to C{path} as a browser sends a form.
        """
        headers = {b"content-type": [b"application/x-www-form-urlencoded"]}
        return self.request(b"POST", path, headers, urlencode(fields).encode("utf-8"))

    @defer.inlineCallbacks
    def state(self):
        _, body = yield self.get(b"state")
        return json.loads(body)

    def session(self):
        """
        The id of the session cookie this client keeps: what only it and the server know.
        """
        values = [c.value for c in self.jar if c.name == "TWISTED_SESSION"]
        return values[0].encode("ascii") if values else None


def _sessionIds(body):
    """
    The opaque session ids of a /sessions page, in the order it lists them.
    """
    return re.findall(rb'name=id value="([^"]+)"', body)


class EndToEndTests(unittest.TestCase):
    """
    The demo site over real HTTP on loopback; session expiry is timed on a L{Clock}.
    """

    def setUp(self):
        self.clock = Clock()
        self.site = demo.makeSite(timeout=60, reactor=self.clock, absoluteTimeout=3600)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = b"http://127.0.0.1:%d/" % self.port.getHost().port
        self.clients = []

    def tearDown(self):
        ids = {c.session() for c in self.clients} - {None} | set(self.site.sessions)
        # Sessions still open are ended so that no delayed call outlives the test.
        for session in list(self.site.sessions.values()):
            session.expire()
        # No page and no answer showed a session id.
        for client in self.clients:
            for body in client.bodies:
                for uid in ids:
                    self.assertNotIn(uid, body)

    def client(self):
        client = Client(self.base)
        self.clients.append(client)
        return client

    @defer.inlineCallbacks
    def test_sessionSurvivesRequests(self):
        client = self.client()
        yield client.get(b"")
        yield client.get(b"")
        yield client.get(b"add?item=book")
        state = yield client.state()
        self.assertEqual(state["visits"], 2)
        self.assertEqual(state["cart"], ["book"])
        self.assertEqual(state["timeout"], 60)
        self.assertTrue(state["cookie"])
        self.assertIsInstance(self.site.sessions[client.session()], txsession.Session)

    @defer.inlineCallbacks
    def test_twoClientsTwoSessions(self):
        one, two = self.client(), self.client()
        yield one.get(b"")
        yield one.state()
        second = yield two.state()
        self.assertNotEqual(one.session(), two.session())
        self.assertEqual((second["cookie"], second["visits"]), (False, 0))

    @defer.inlineCallbacks
    def test_login(self):
        """
        Logging in keeps the session's contents, and its creation time, under a fresh id.
        """
        client = self.client()
        yield client.get(b"add?item=book")
        before, old = (yield client.state()), client.session()
        response, _ = yield client.post(b"login", user="ann")
        self.assertEqual(response.code, 302)
        after = yield client.state()
        self.assertNotEqual(client.session(), old)
        self.assertEqual((after["user"], after["cart"]), ("ann", ["book"]))
        self.assertEqual(after["created"], before["created"])
        self.assertNotIn(old, self.site.sessions)

    @defer.inlineCallbacks
    def test_loginAndLogoutArePostOnly(self):
        """
        A GET to the login, the logout or the forms that end sessions changes nothing: a link
        from another site carries the session cookie (C{SameSite=Lax}), so only a POST may
        log in or out.
        """
        client = self.client()
        yield client.get(b"")
        uid = client.session()
        for path in [b"login?user=ann", b"logout", b"sessions/end?id=x", b"sessions/others"]:
            response, _ = yield client.get(path)
            self.assertEqual(response.code, 405)
        state = yield client.state()
        self.assertEqual((client.session(), state["user"]), (uid, None))
        self.assertIn(uid, self.site.sessions)

    @defer.inlineCallbacks
    def test_timeoutGivesNewSession(self):
        client = self.client()
        yield client.state()
        before = client.session()
        self.clock.advance(59)
        yield client.state()
        self.assertEqual(client.session(), before)
        # Sliding expiry: 60 s from the last use.
        self.clock.advance(59)
        yield client.state()
        self.assertEqual(client.session(), before)
        self.clock.advance(60)
        self.assertNotIn(before, self.site.sessions)
        after = yield client.state()
        self.assertNotEqual(client.session(), before)
        self.assertEqual(after["visits"], 0)

    @defer.inlineCallbacks
    def test_absoluteTimeout(self):
        """
        A session used every 50 seconds (within its 60 s idle timeout) ends all the same an
        hour after it began, when the pages said it would.
        """
        client = self.client()
        yield client.post(b"login", user="ann")
        state = yield client.state()
        uid = client.session()
        self.assertEqual(state["absoluteEnd"], state["created"] + 3600)
        while self.clock.seconds() + 50 < state["absoluteEnd"]:
            self.clock.advance(50)
            still = yield client.state()
            self.assertEqual((client.session(), still["user"]), (uid, "ann"))
            # The idle end moves with each use; the absolute end does not.
            self.assertEqual(still["idleEnd"], self.clock.seconds() + 60)
            self.assertEqual(still["absoluteEnd"], state["absoluteEnd"])
        self.clock.advance(state["absoluteEnd"] - self.clock.seconds())
        self.assertNotIn(uid, self.site.sessions)
        after = yield client.state()
        self.assertNotEqual(client.session(), uid)
        self.assertEqual(after["user"], None)

    @defer.inlineCallbacks
    def test_logout(self):
        client = self.client()
        yield client.get(b"")
        before = client.session()
        response, _ = yield client.post(b"logout")
        self.assertEqual(response.code, 302)
        self.assertNotIn(before, self.site.sessions)
        after = yield client.state()
        self.assertNotEqual(client.session(), before)
        self.assertEqual(after["visits"], 0)

    @defer.inlineCallbacks
    def test_forgedCookie(self):
        """
        A cookie naming no live session gets a fresh session; the same header naming a live
        one reaches it (the control showing the header is sent).
        """
        owner = self.client()
        yield owner.get(b"add?item=book")
        genuine = b"TWISTED_SESSION=" + owner.session()
        response, body = yield self.client().get(b"state", {b"cookie": [genuine]})
        self.assertEqual(json.loads(body)["cart"], ["book"])
        self.assertIsNone(response.headers.getRawHeaders(b"set-cookie"))

        forged = b"TWISTED_SESSION=" + b"0" * 64
        response, body = yield self.client().get(b"state", {b"cookie": [forged]})
        self.assertEqual(json.loads(body)["cart"], [])
        [cookie] = response.headers.getRawHeaders(b"set-cookie")
        made = re.match(rb"TWISTED_SESSION=([0-9a-f]{64});", cookie).group(1)
        self.assertNotIn(made, (b"0" * 64, owner.session()))
        self.assertIn(made, self.site.sessions)
        self.assertNotIn(b"0" * 64, self.site.sessions)

    @defer.inlineCallbacks
    def test_cookieFlagsOnTheWire(self):
        client = self.client()
        response, _ = yield client.get(b"state")
        cookies = response.headers.getRawHeaders(b"set-cookie")
        self.assertEqual(len(cookies), 1)
        self.assertTrue(cookies[0].startswith(b"TWISTED_SESSION="))
        self.assertIn(b"HttpOnly", cookies[0])
        self.assertIn(b"SameSite=lax", cookies[0])

    @defer.inlineCallbacks
    def logIn(self, user):
        client = self.client()
        yield client.get(b"")
        yield client.post(b"login", user=user)
        return client

    @defer.inlineCallbacks
    def test_sessionsPage(self):
        """
        The sessions page lists the user's sessions, oldest first, and no one else's, each by
        an opaque id, never its cookie value; it asks anyone else to log in.
        """
        one = yield self.logIn("ann")
        self.clock.advance(10)
        two = yield self.logIn("ann")
        yield self.logIn("bob")
        _, body = yield two.get(b"sessions")
        self.assertEqual(re.findall(rb"<span id=user>([^<]*)<", body), [b"ann"])
        ids = _sessionIds(body)
        self.assertEqual(len(ids), 2)
        records = yield self.site.userSessions("ann")
        self.assertEqual(
            [r["id"].encode() for r in sorted(records, key=lambda r: r["created"])], ids
        )
        for client in one, two:
            self.assertNotIn(client.session(), body)
        _, body = yield self.client().get(b"sessions")
        self.assertIn(b"id=not-logged-in", body)

    @defer.inlineCallbacks
    def test_endOneSession(self):
        """
        The sessions page's end button ends that session, and only that one.
        """
        one = yield self.logIn("ann")
        self.clock.advance(10)
        two = yield self.logIn("ann")
        _, body = yield two.get(b"sessions")
        first, second = _sessionIds(body)
        response, _ = yield two.post(b"sessions/end", id=first.decode())
        self.assertEqual(
            (response.code, response.headers.getRawHeaders(b"location")), (302, [b"/sessions"])
        )
        self.assertNotIn(one.session(), self.site.sessions)
        self.assertEqual((yield one.state())["user"], None)
        self.assertEqual((yield two.state())["user"], "ann")
        _, body = yield two.get(b"sessions")
        self.assertEqual(_sessionIds(body), [second])

    @defer.inlineCallbacks
    def test_endSessionOfAnother(self):
        """
        An id from another user's sessions page ends nothing.
        """
        ann = yield self.logIn("ann")
        bob = yield self.logIn("bob")
        _, body = yield ann.get(b"sessions")
        [id] = _sessionIds(body)
        yield bob.post(b"sessions/end", id=id.decode())
        self.assertEqual((yield ann.state())["user"], "ann")

    @defer.inlineCallbacks
    def test_logOutEverywhereElse(self):
        """
        "Log out everywhere else" ends the user's other sessions, keeps this one, and leaves
        other users alone.
        """
        one = yield self.logIn("ann")
        two = yield self.logIn("ann")
        three = yield self.logIn("ann")
        bob = yield self.logIn("bob")
        response, _ = yield two.post(b"sessions/others")
        self.assertEqual(response.code, 302)
        for client, user in [(one, None), (two, "ann"), (three, None), (bob, "bob")]:
            self.assertEqual((yield client.state())["user"], user)
        _, body = yield two.get(b"sessions")
        self.assertEqual(len(_sessionIds(body)), 1)
