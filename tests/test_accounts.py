"""
OWASP's session practices on L{txsession.Site}, without a store: the absolute timeout, the
sessions of a user ("log out everywhere"), and the C{__Host-} cookie prefix. (With a store:
tests/test_store_accounts.py.)
"""

from __future__ import annotations

import json

from twisted.internet import defer, task
from twisted.trial import unittest
from twisted.web import resource

import txsession
from tests.test_security import TLSClient, _Served
from tests.test_web import Client
from txsession.web import Site, renewSession


class Pages(resource.Resource):
    """
    C{/login?user=NAME}: renews the session bound to NAME; C{/whoami}: the session's id and
    user; C{/mine}: the user's sessions; C{/others}: ends the user's other sessions;
    C{/end?id=ID}: ends one of them.
    """

    isLeaf = True

    def render_GET(self, request):
        path = request.path
        if path == b"/login":
            user = request.args[b"user"][0].decode()
            renewSession(request, user=user).sessionNamespaces["user"] = user
            return b"ok"
        session = request.getSession()
        user = session.sessionNamespaces.get("user")
        site = request.site
        if user is None and path in (b"/mine", b"/others", b"/end"):
            return b"null"
        if path == b"/mine":
            return _answer(request, site.userSessions(user))
        if path == b"/others":
            return _answer(request, site.logoutUser(user, keep=session))
        if path == b"/end":
            return _answer(request, site.endUserSession(user, request.args[b"id"][0].decode()))
        return json.dumps({"session": session.uid.decode(), "user": user}).encode()


def _answer(request, deferred):
    def done(result):
        request.write(json.dumps(result).encode())
        request.finish()

    deferred.addCallback(done)
    return txsession.web.server.NOT_DONE_YET


class AbsoluteTimeoutTests(unittest.TestCase):
    def site(self, **options):
        clock = task.Clock()
        site = Site(resource.Resource(), reactor=clock, **options)
        return site, clock

    def endsAt(self, sharedTimer):
        """
        The reactor time a session busy every 10 s (idle timeout 60 s, absolute 100 s)
        ends at, and whether its expire callback ran.
        """
        site, clock = self.site(absoluteTimeout=100, sharedTimer=sharedTimer)
        session = site.makeSession()
        session.sessionTimeout = 60
        session.touch()
        ended = []
        session.notifyOnExpire(lambda: ended.append(clock.seconds()))
        for _ in range(30):
            clock.advance(10)
            if site.sessions.get(session.uid) is session:
                session.touch()
        self.assertEqual(site.sessions, {})
        self.assertEqual(site._absolute, {})
        return ended

    def test_endsHoweverActive(self):
        """
        A session kept busy ends C{absoluteTimeout} after it was made, through its
        C{expire()} (its callbacks run), at the same reactor instant on either timer.
        """
        self.assertEqual(self.endsAt(sharedTimer=True), [100.0])
        self.assertEqual(self.endsAt(sharedTimer=False), [100.0])

    def test_idleTimeoutStillFirst(self):
        """
        An idle session ends at its idle timeout; its absolute call goes with it.
        """
        site, clock = self.site(absoluteTimeout=3600)
        session = site.makeSession()
        ended = []
        session.notifyOnExpire(lambda: ended.append(clock.seconds()))
        clock.advance(session.sessionTimeout)
        self.assertEqual(ended, [session.sessionTimeout])
        self.assertEqual(site._absolute, {})
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_renewKeepsTheCreationTime(self):
        """
        C{renewSession} gives a new id, not a new absolute timeout.
        """
        site, clock = self.site(absoluteTimeout=100)
        session = site.makeSession()
        clock.advance(70)
        request = _FakeRequest(site, session)
        renewed = renewSession(request)
        self.assertIs(renewed, session)
        self.assertEqual(site.createdAt(session), 0.0)
        clock.advance(30)
        self.assertNotIn(session.uid, site.sessions)

    def test_withoutIt(self):
        site, clock = self.site()
        session = site.makeSession()
        self.assertIsNone(site.absoluteTimeout)
        self.assertIsNone(site.createdAt(session))
        session.expire()

    def test_badValues(self):
        for bad in ("5", True, None.__class__):
            self.assertRaises(TypeError, Site, resource.Resource(), absoluteTimeout=bad)
        for bad in (0, -1, float("inf"), float("nan")):
            self.assertRaises(ValueError, Site, resource.Resource(), absoluteTimeout=bad)


class _FakeRequest:
    """
    Enough of a request for C{renewSession} outside HTTP: its session already got.
    """

    def __init__(self, site, session):
        self.site = site
        self._insecureSession = session
        self.cookies = []
        self.sitepath = []

    def isSecure(self):
        return False

    def getSession(self, forceNotSecure=False):
        return self._insecureSession

    def addCookie(self, *args, **kwargs):
        self.cookies.append(args[0] + b"=" + args[1])


class UserSessionTests(_Served, unittest.TestCase):
    def setUp(self):
        self.site = Site(Pages())
        self.base = self.serve(self.site)

    @defer.inlineCallbacks
    def login(self, user):
        client = Client(self.base)
        yield client.get(b"login?user=" + user.encode())
        return client

    @defer.inlineCallbacks
    def json(self, client, path):
        _, body = yield client.get(path)
        return json.loads(body)

    @defer.inlineCallbacks
    def test_listAndEnd(self):
        """
        Each login of a user is one record, with an opaque id (not the cookie value), its
        creation and last use. Ending one by its id ends it (its next request has a new,
        empty session); another user's id ends nothing.
        """
        phone = yield self.login("alice")
        laptop = yield self.login("alice")
        bob = yield self.login("bob")
        records = yield self.json(phone, b"mine")
        self.assertEqual(len(records), 2)
        uids = {s.decode() for s in self.site.sessions}
        for record in records:
            self.assertEqual(set(record), {"id", "created", "lastUsed"})
            self.assertNotIn(record["id"], uids)
            self.assertTrue(all(record["id"] not in uid for uid in uids))
        ids = [r["id"] for r in records]
        # Bob cannot end Alice's sessions.
        for id in ids:
            self.assertFalse((yield self.json(bob, b"end?id=" + id.encode())))
        self.assertEqual(len(self.site.sessions), 3)
        self.assertTrue((yield self.json(phone, b"end?id=" + ids[0].encode())))
        self.assertFalse((yield self.json(laptop, b"end?id=" + ids[0].encode())))
        self.assertEqual([r["id"] for r in self.site.userSessions("alice").result], ids[1:])
        users = []
        for c in (phone, laptop):
            users.append((yield self.json(c, b"whoami"))["user"])
        self.assertEqual(sorted(users, key=str), sorted([None, "alice"], key=str))

    @defer.inlineCallbacks
    def test_logoutEverywhereElse(self):
        """
        C{logoutUser(user, keep=session)} ends every other session of the user, running
        their expire callbacks, and counts them; the kept one and other users' stay.
        """
        clients = []
        for _ in range(3):
            clients.append((yield self.login("alice")))
        bob = yield self.login("bob")
        ended = []
        for session in self.site.sessions.values():
            session.notifyOnExpire(lambda s=session: ended.append(s))
        count = yield self.json(clients[0], b"others")
        self.assertEqual(count, 2)
        self.assertEqual(len(ended), 2)
        self.assertEqual((yield self.json(clients[0], b"whoami"))["user"], "alice")
        self.assertIsNone((yield self.json(clients[1], b"whoami"))["user"])
        self.assertEqual((yield self.json(bob, b"whoami"))["user"], "bob")
        self.assertEqual(len((yield self.json(clients[0], b"mine"))), 1)

    def test_deferredsHaveFired(self):
        site = Site(resource.Resource())
        for d in (site.userSessions("x"), site.logoutUser("x"), site.endUserSession("x", "y")):
            self.assertTrue(d.called)
        self.assertRaises(TypeError, site.userSessions, b"x")
        self.assertRaises(TypeError, site.endUserSession, "x", 1)

    def test_indexFollowsSessions(self):
        """
        The index holds only live sessions: it shrinks as they end, however they end, and a
        session bound again moves to its new user.
        """
        clock = task.Clock()
        site = Site(resource.Resource(), reactor=clock)
        sessions = [site.makeSession() for _ in range(3)]
        for session in sessions:
            renewSession(_FakeRequest(site, session), user="alice")
        renewSession(_FakeRequest(site, sessions[0]), user="bob")
        self.assertEqual(len(site.userSessions("alice").result), 2)
        self.assertEqual(len(site.userSessions("bob").result), 1)
        sessions[1].expire()
        self.assertEqual(len(site.userSessions("alice").result), 1)
        clock.advance(sessions[0].sessionTimeout)
        self.assertEqual(site.userSessions("alice").result, [])
        self.assertEqual(site.userSessions("bob").result, [])
        self.assertEqual(len(site._users), 0)
        self.assertRaises(TypeError, renewSession, _FakeRequest(site, site.makeSession()), user=1)


class HostPrefixTests(_Served, unittest.TestCase):
    @defer.inlineCallbacks
    def test_secureCookie(self):
        """
        Over HTTPS the session cookie is C{__Host-} plus the secure name, with C{Secure},
        C{Path=/} and no C{Domain}, and it finds the session again; a login renews it under
        the same name.
        """
        site = Site(Pages(), cookieHostPrefix=True)
        client = TLSClient(self.serve(site, secure=True))
        response, body = yield client.get(b"whoami")
        cookies = self.setCookies(response)
        self.assertEqual(len(cookies), 1)
        name, _, rest = cookies[0].partition(b"=")
        self.assertEqual(name, b"__Host-TWISTED_SECURE_SESSION")
        attributes = [a.strip().lower() for a in rest.split(b";")[1:]]
        self.assertIn(b"secure", attributes)
        self.assertIn(b"path=/", attributes)
        self.assertFalse([a for a in attributes if a.startswith(b"domain")])
        again = yield client.get(b"whoami")
        self.assertEqual(json.loads(again[1]), json.loads(body))
        response, _ = yield client.get(b"login?user=alice")
        renewed = self.setCookies(response)
        self.assertEqual([c.partition(b"=")[0] for c in renewed], [name])
        self.assertEqual(json.loads((yield client.get(b"whoami"))[1])["user"], "alice")

    @defer.inlineCallbacks
    def test_insecureCookieUnchanged(self):
        site = Site(Pages(), cookieHostPrefix=True)
        response, _ = yield Client(self.serve(site)).get(b"whoami")
        self.assertTrue(self.setCookies(response)[0].startswith(b"TWISTED_SESSION="))


class NoIdInLogsTests(unittest.TestCase):
    def test_expiryFailureLogsATag(self):
        """
        A session whose site no longer holds it: its expire() on the shared timer raises
        Twisted's KeyError(uid), which is logged with a salted tag in place of the id.
        """
        from twisted.logger import formatEvent, globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        clock = task.Clock()
        site = Site(resource.Resource(), reactor=clock)
        session = site.makeSession()
        del site.sessions[session.uid]
        clock.advance(session.sessionTimeout)
        self.flushLoggedErrors(KeyError)
        text = "\n".join(
            formatEvent(e) + (e["log_failure"].getTraceback() if "log_failure" in e else "")
            for e in events
        )
        self.assertIn("session#", text)
        self.assertNotIn(session.uid.decode(), text)

    def test_slidingGetSessionRaisesATag(self):
        site = Site(resource.Resource(), slidingExpiry=True, reactor=task.Clock())
        with self.assertRaises(KeyError) as raised:
            site.getSession(b"f" * 64)
        self.assertNotIn("f" * 64, str(raised.exception))
        self.assertIn("session#", str(raised.exception))
