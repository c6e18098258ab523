"""
Session security (issue: fresh ids at login, cookie options, sliding expiry), over real HTTP
and HTTPS with cookie-keeping clients: the fixation attack and its defence, each cookie option
on the wire, and sliding expiry on a clock.
"""

import datetime
import json
from http.cookiejar import Cookie

from twisted.internet import defer, reactor, ssl
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web import resource, server
from twisted.web.client import Agent, CookieAgent
from twisted.web.iweb import IPolicyForHTTPS
from twisted.web.test.test_web import DummyChannel
from zope.interface import Interface, implementer

import txsession
from tests._support import makeSite
from tests.test_web import Client
from txsession import web
from txsession.web import Site, renewSession, secureCookieName


class IBadge(Interface):
    pass


class Login(resource.Resource):
    """
    C{/login?user=NAME}: logs in, renewing the session's id unless C{renew=0}.
    """

    isLeaf = True

    def render_GET(self, request):
        renew = request.args.get(b"renew", [b"1"])[0] == b"1"
        session = renewSession(request) if renew else request.getSession()
        session.sessionNamespaces["user"] = request.args[b"user"][0].decode()
        return b"ok"


class WhoAmI(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        session = request.getSession()
        return json.dumps(
            {"session": session.uid.decode(), "user": session.sessionNamespaces.get("user")}
        ).encode()


def _root():
    root = resource.Resource()
    root.putChild(b"login", Login())
    root.putChild(b"whoami", WhoAmI())
    return root


def _txsessionSite(**options):
    return Site(_root(), **options)


def _oneLineSwitch():
    site = server.Site(_root())
    site.sessionFactory = txsession.Session
    return site


def _twistedOnly():
    return server.Site(_root())


def _expireAll(site):
    for session in list(site.sessions.values()):
        session.expire()


class _Served:
    def serve(self, site, secure=False):
        if secure:
            port = reactor.listenSSL(0, site, _tls().server, interface="127.0.0.1")
        else:
            port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(_expireAll, site)
        scheme, host = (b"https", b"localhost") if secure else (b"http", b"127.0.0.1")
        return b"%s://%s:%d/" % (scheme, host, port.getHost().port)

    def setCookies(self, response):
        return response.headers.getRawHeaders(b"set-cookie") or []


def _cookie(name, value):
    return Cookie(
        0,
        name,
        value,
        None,
        False,
        "127.0.0.1",
        False,
        False,
        "/",
        True,
        False,
        None,
        False,
        None,
        None,
        {},
    )


class FixationTests(_Served, unittest.TestCase):
    """
    An attacker learns a session id before the victim logs in with it.
    """

    @defer.inlineCallbacks
    def attack(self, site, renew):
        base = self.serve(site)
        attacker = Client(base)
        planted = json.loads((yield attacker.get(b"whoami"))[1])["session"]
        victim = Client(base)
        # The victim's browser holds the planted id (set by a sibling domain, a link...).
        victim.jar.set_cookie(_cookie("TWISTED_SESSION", planted))
        _, body = yield victim.get(b"whoami")
        self.assertEqual(json.loads(body)["session"], planted)
        response, _ = yield victim.get(b"login?user=alice&renew=%d" % renew)
        renewed = [c for c in self.setCookies(response) if c.startswith(b"TWISTED_SESSION=")]
        later = json.loads((yield victim.get(b"whoami"))[1])
        stolen = json.loads((yield attacker.get(b"whoami"))[1])
        return renewed, later, stolen, planted

    @defer.inlineCallbacks
    def check(self, makeSite):
        renewed, victim, attacker, planted = yield self.attack(makeSite(), renew=True)
        self.assertEqual(len(renewed), 1)
        self.assertEqual(victim["user"], "alice")
        self.assertNotEqual(victim["session"], planted)
        self.assertIn(victim["session"].encode(), renewed[0])
        self.assertIsNone(attacker["user"])
        self.assertNotIn(attacker["session"], (planted, victim["session"]))

    def test_txsessionSite(self):
        return self.check(_txsessionSite)

    def test_twistedRequestTxsessionSessions(self):
        return self.check(_oneLineSwitch)

    def test_twistedRequestAndSessions(self):
        return self.check(_twistedOnly)

    @defer.inlineCallbacks
    def test_withoutRenewTheAttackWorks(self):
        """
        The control: logging in without renewing hands the attacker the victim's login.
        """
        _, victim, attacker, planted = yield self.attack(_txsessionSite(), renew=False)
        self.assertEqual(victim["session"], planted)
        self.assertEqual(attacker["session"], planted)
        self.assertEqual(attacker["user"], "alice")


class RenewTests(unittest.TestCase):
    def request(self, site):
        request = site.requestFactory(DummyChannel(), 1)
        request.site = site
        request.sitepath = []
        self.addCleanup(_expireAll, site)
        return request

    def check(self, site, clock):
        request = self.request(site)
        session = request.getSession()
        old = session.uid
        clock.advance(10)
        session.sessionNamespaces["k"] = "v"
        session.setComponent(IBadge, "badge")
        ended = []
        session.notifyOnExpire(lambda: ended.append(session.uid))
        expiry = session._expireCall.getTime()

        self.assertIs(renewSession(request), session)
        self.assertEqual(session._expireCall.getTime(), expiry)
        self.assertNotEqual(session.uid, old)
        self.assertEqual(len(session.uid), 64)
        self.assertNotIn(old, site.sessions)
        self.assertIs(site.sessions[session.uid], session)
        self.assertRaises(KeyError, site.getSession, old)
        self.assertIs(request.getSession(), session)
        self.assertEqual(session.sessionNamespaces["k"], "v")
        self.assertEqual(session.getComponent(IBadge), "badge")
        # One session cookie, the new id's, although this request had set the old one.
        cookies = [c for c in request.cookies if c.startswith(b"TWISTED_SESSION=")]
        self.assertEqual(cookies, [b"TWISTED_SESSION=" + session.uid + b"; Path=/"])

        # getSession touched it at 10 s, as Twisted's does on a second call in a request.
        clock.advance(site.sessionFactory.sessionTimeout - 1)
        self.assertEqual(ended, [])
        clock.advance(1)
        self.assertEqual(ended, [session.uid])
        self.assertEqual(site.sessions, {})

    def test_txsessionSite(self):
        clock = Clock()
        self.check(Site(resource.Resource(), reactor=clock), clock)

    def test_twisted(self):
        for factory in (server.Session, txsession.Session):
            site, clock = makeSite()
            site.sessionFactory = factory
            self.check(site, clock)

    def test_keepsOtherCookies(self):
        site, _ = makeSite()
        request = self.request(site)
        request.addCookie(b"theme", b"dark")
        renewSession(request)
        self.assertEqual(request.cookies[0], b"theme=dark")
        self.assertEqual(len(request.cookies), 2)


class CookieOptionTests(_Served, unittest.TestCase):
    @defer.inlineCallbacks
    def sessionCookie(self, site, secure=False, name=b"TWISTED_SESSION"):
        base = self.serve(site, secure)
        client = TLSClient(base) if secure else Client(base)
        response, body = yield client.get(b"whoami")
        cookies = self.setCookies(response)
        self.assertEqual(len(cookies), 1, cookies)
        # The client sends it back and is recognised.
        again = json.loads((yield client.get(b"whoami"))[1])
        self.assertEqual(again["session"], json.loads(body)["session"])
        self.assertTrue(cookies[0].startswith(name + b"="), cookies)
        return cookies[0]

    @defer.inlineCallbacks
    def test_defaultsAreTwisted(self):
        ours = yield self.sessionCookie(_txsessionSite())
        theirs = yield self.sessionCookie(_twistedOnly())
        self.assertEqual(ours.split(b";")[1:], theirs.split(b";")[1:])
        self.assertEqual(ours.split(b";")[1:], [b" Path=/"])

    @defer.inlineCallbacks
    def test_cookieName(self):
        site = _txsessionSite(cookieName="SHOP_SESSION")
        cookie = yield self.sessionCookie(site, name=b"SHOP_SESSION")
        self.assertNotIn(b"TWISTED", cookie)
        # Twisted's cookie name no longer finds the session.
        uid = cookie.split(b"=", 1)[1].split(b";")[0]
        _, body = yield Client(self.serve(site)).get(
            b"whoami", {b"cookie": [b"TWISTED_SESSION=" + uid]}
        )
        self.assertNotEqual(json.loads(body)["session"].encode(), uid)

    @defer.inlineCallbacks
    def test_secureCookieName(self):
        cookie = yield self.sessionCookie(
            _txsessionSite(cookieName=b"SHOP_SESSION"), secure=True, name=b"SHOP_SECURE_SESSION"
        )
        self.assertIn(b"; Secure", cookie)
        twisted = yield self.sessionCookie(
            _twistedOnly(), secure=True, name=b"TWISTED_SECURE_SESSION"
        )
        self.assertIn(b"; Secure", twisted)

    def test_secureNames(self):
        self.assertEqual(secureCookieName(b"TWISTED_SESSION"), b"TWISTED_SECURE_SESSION")
        self.assertEqual(secureCookieName(b"sid"), b"sid_SECURE")

    @defer.inlineCallbacks
    def test_maxAge(self):
        cookie = yield self.sessionCookie(_txsessionSite(cookieMaxAge=3600))
        self.assertIn(b"; Max-Age=3600", cookie)

    @defer.inlineCallbacks
    def test_flags(self):
        cookie = yield self.sessionCookie(
            _txsessionSite(cookieHttpOnly=True, cookieSameSite="Strict")
        )
        self.assertIn(b"; HttpOnly", cookie)
        self.assertIn(b"; SameSite=strict", cookie)

    @defer.inlineCallbacks
    def test_sameSiteNone(self):
        if not web._twistedAcceptsSameSiteNone():
            self.assertRaises(ValueError, _txsessionSite, cookieSameSite=b"None")
            return
        site = _txsessionSite(cookieSameSite=b"None")
        secure = yield self.sessionCookie(site, secure=True, name=b"TWISTED_SECURE_SESSION")
        self.assertIn(b"; Secure", secure)
        self.assertIn(b"; SameSite=none", secure)
        # Over plain HTTP the cookie cannot be Secure: SameSite=None is left off, not sent
        # in a form browsers reject.
        plain = yield self.sessionCookie(_txsessionSite(cookieSameSite=b"None"))
        self.assertNotIn(b"SameSite", plain)

    @defer.inlineCallbacks
    def test_renewUsesTheOptions(self):
        site = _txsessionSite(cookieName=b"SID", cookieHttpOnly=True, cookieMaxAge=60)
        base = self.serve(site)
        client = Client(base)
        yield client.get(b"whoami")
        response, _ = yield client.get(b"login?user=bob")
        [cookie] = self.setCookies(response)
        self.assertTrue(cookie.startswith(b"SID="))
        self.assertIn(b"; HttpOnly", cookie)
        self.assertIn(b"; Max-Age=60", cookie)
        self.assertEqual(json.loads((yield client.get(b"whoami"))[1])["user"], "bob")

    def test_badOptions(self):
        for name in (b"", b"a b", "sess;ion", b"x=y", 42, b"SID\n", "SID\n"):
            self.assertRaises(ValueError, Site, resource.Resource(), cookieName=name)
        self.assertRaises(ValueError, Site, resource.Resource(), cookieSameSite=b"sometimes")
        self.assertRaises(ValueError, Site, resource.Resource(), cookieMaxAge=-1)
        for maxAge in ("60", 1.5, True):
            self.assertRaises(TypeError, Site, resource.Resource(), cookieMaxAge=maxAge)

    def test_ownGetSessionOverride(self):
        """
        A request class with its own C{getSession} is refused with the options, rather than
        one of the two being silently skipped; derived from L{txsession.Request} it works.
        """

        class Mine(server.Request):
            def getSession(self, *args, **kwargs):
                return super().getSession(*args, **kwargs)

        self.assertRaises(TypeError, Site, resource.Resource(), Mine, cookieHttpOnly=True)

        class Derived(txsession.Request):
            def getSession(self, *args, **kwargs):
                return super().getSession(*args, **kwargs)

        site = Site(resource.Resource(), Derived, cookieHttpOnly=True)
        self.assertIs(site.requestFactory, Derived)


class SlidingExpiryTests(_Served, unittest.TestCase):
    @defer.inlineCallbacks
    def test_timeoutCountsFromLastUse(self):
        # sessionTimeout is 900 s; use it every 400 s for 1,200 s.
        first, seen, _ = yield self.visitsEvery(400, sliding=True)
        self.assertEqual(seen, [first] * 3)

    @defer.inlineCallbacks
    def test_defaultCountsFromCreation(self):
        first, seen, _ = yield self.visitsEvery(400, sliding=False)
        self.assertEqual(seen[:2], [first] * 2)
        self.assertNotEqual(seen[2], first)

    @defer.inlineCallbacks
    def visitsEvery(self, seconds, sliding):
        clock = Clock()
        site = Site(_root(), reactor=clock, slidingExpiry=sliding)
        client = Client(self.serve(site))
        first = json.loads((yield client.get(b"whoami"))[1])["session"]
        seen = []
        for _ in range(3):
            clock.advance(seconds)
            seen.append(json.loads((yield client.get(b"whoami"))[1])["session"])
        return first, seen, site


# HTTPS: a self-signed certificate for localhost, made for the test run.


class _TLS:
    def __init__(self):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256())
        )
        certPEM = cert.public_bytes(serialization.Encoding.PEM)
        keyPEM = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.server = ssl.PrivateCertificate.loadPEM(keyPEM + certPEM).options()
        self.root = ssl.Certificate.loadPEM(certPEM)


_tlsOnce = []


def _tls():
    if not _tlsOnce:
        _tlsOnce.append(_TLS())
    return _tlsOnce[0]


@implementer(IPolicyForHTTPS)
class _TrustTestCertificate:
    def creatorForNetloc(self, hostname, port):
        return ssl.optionsForClientTLS(hostname.decode("ascii"), trustRoot=_tls().root)


class TLSClient(Client):
    def __init__(self, base):
        super().__init__(base)
        self.agent = CookieAgent(Agent(reactor, contextFactory=_TrustTestCertificate()), self.jar)
