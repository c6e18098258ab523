"""
What a browser decides, in a real headless Chromium against the demo (C{python -m
txsession.demo}) run as a subprocess: whether it keeps, sends and shows the session cookie,
over HTTP, over HTTPS with a certificate it trusts (as C{__Host-}), from another site, after a
login, past the absolute timeout, after "log out everywhere else" or the end of one session
from another browser, and across two demo processes sharing a Redis store. Helpers are in
L{tests._browser}.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from datetime import datetime, timezone

from twisted.trial import unittest

from tests._browser import (
    Browser,
    Certificates,
    Demo,
    OtherSite,
    makeHome,
    requireBrowser,
)
from tests._redis import RedisServer


def _seconds(shown: str) -> float:
    """
    The time a demo page shows (to the second, in UTC), as seconds since the epoch.
    """
    when = datetime.strptime(shown, "%Y-%m-%d %H:%M:%S UTC")
    return when.replace(tzinfo=timezone.utc).timestamp()


class BrowserTestCase(unittest.SynchronousTestCase):
    """
    Starts demos, browsers and other sites for a test, and stops them after it.
    """

    scheme = "http"
    # The session cookie the demo's site sets over this scheme.
    cookieName = "TWISTED_SESSION"

    def setUp(self) -> None:
        requireBrowser()
        self.directory = tempfile.mkdtemp(prefix="txsession-browser-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.home = makeHome(self.directory, trust=self.trust())
        self.browsers = 0

    def trust(self) -> str | None:
        """
        The CA certificate the browsers trust, if any.
        """
        return None

    def serve(self, *arguments: str) -> Demo:
        demo = Demo(self.directory, *arguments)
        self.addCleanup(demo.stop)
        return demo

    def browser(self, home: str | None = None) -> Browser:
        """
        A new browser, with a profile of its own, its home C{home} or the test's.
        """
        self.browsers += 1
        directory = tempfile.mkdtemp(prefix=f"browser{self.browsers}-", dir=self.directory)
        browser = Browser(directory, home or self.home)
        self.addCleanup(browser.quit)
        return browser

    def otherSite(self, page: str) -> OtherSite:
        site = OtherSite(page)
        self.addCleanup(site.close)
        return site

    def sessionCookie(self, browser: Browser, demo: Demo) -> dict:
        """
        The session cookie C{browser} keeps for C{demo}, with its attributes.
        """
        cookies = browser.cookies(demo.url)
        self.assertIn(self.cookieName, cookies, f"the browser keeps {sorted(cookies)}")
        return cookies[self.cookieName]

    def logIn(self, browser: Browser, demo: Demo, user: str) -> None:
        browser.open(demo.url)
        browser.submit("login", user=user)
        self.assertEqual(browser.url, demo.url)
        self.assertEqual(browser.fact("user"), user)

    def sessionsPage(self, browser: Browser, demo: Demo) -> list[str]:
        """
        Open the user's sessions page from the home page, as a user does; its rows, oldest
        first. It shows no session id.
        """
        browser.open(demo.url)
        browser.follow("sessions-link")
        self.assertEqual(browser.url, demo.url + "sessions")
        self.assertNotIn(self.sessionCookie(browser, demo)["value"], browser.source)
        return browser.texts("tr.session")

    def assertLoggedOut(self, browser: Browser, demo: Demo) -> None:
        """
        C{browser} sends its session cookie to C{demo}, which has ended that session: it gets
        a new one, logged out.
        """
        before = self.sessionCookie(browser, demo)["value"]
        browser.open(demo.url)
        self.assertEqual(browser.fact("cookie"), "yes")
        self.assertEqual((browser.fact("user"), browser.fact("visits")), ("(nobody)", "1"))
        self.assertNotEqual(self.sessionCookie(browser, demo)["value"], before)


class HTTPTests(BrowserTestCase):
    """
    The demo over plain HTTP.
    """

    def test_sessionAcrossPageLoads(self):
        """
        The browser keeps the cookie and sends it back: the second load is the same session.
        """
        demo = self.serve()
        browser = self.browser()
        browser.open(demo.url)
        self.assertTrue(browser.url.startswith(self.scheme + "://"), browser.url)
        self.assertEqual(browser.title, "txsession demo")
        self.assertEqual((browser.fact("cookie"), browser.fact("visits")), ("no", "1"))
        self.assertNotEqual(browser.fact("idle-end"), "")
        browser.open(demo.url)
        self.assertEqual((browser.fact("cookie"), browser.fact("visits")), ("yes", "2"))

    def test_httpOnly(self):
        """
        The page's scripts cannot read the session cookie, though they see the page's other
        cookies, and the session still works across page loads.
        """
        demo = self.serve()
        browser = self.browser()
        browser.open(demo.url)
        browser.script("document.cookie = 'visible=1; path=/'")
        seen = browser.script("return document.cookie")
        self.assertIn("visible=1", seen)
        self.assertNotIn(self.cookieName, seen)
        self.assertTrue(self.sessionCookie(browser, demo)["httpOnly"])
        browser.open(demo.url)
        self.assertEqual((browser.fact("cookie"), browser.fact("visits")), ("yes", "2"))

    def test_crossSitePostWithoutTheCookie(self):
        """
        A form on another site that posts to the demo's logout reaches it without the session
        cookie (C{SameSite=Lax}): the user stays logged in, under the same cookie.
        """
        demo = self.serve()
        browser = self.browser()
        self.logIn(browser, demo, "ann")
        before = self.sessionCookie(browser, demo)["value"]
        other = self.otherSite(
            f'<form id=attack method=post action="{demo.url}logout"><button>Go</button></form>'
        )
        browser.open(other.url)
        browser.submit("attack")
        self.assertEqual(browser.url, demo.url + "logout")
        self.assertTrue(browser.has("no-session"))
        browser.open(demo.url)
        self.assertEqual(browser.fact("user"), "ann")
        self.assertEqual(self.sessionCookie(browser, demo)["value"], before)

    def test_crossSiteLinkCarriesTheCookie(self):
        """
        A link on another site to the demo, followed at the top level, carries the session
        cookie (C{SameSite=Lax} lets it through): the user arrives logged in.
        """
        demo = self.serve()
        browser = self.browser()
        self.logIn(browser, demo, "ann")
        other = self.otherSite(f'<a id=link href="{demo.url}">the demo</a>')
        browser.open(other.url)
        browser.follow("link")
        self.assertEqual(browser.url, demo.url)
        self.assertEqual((browser.fact("cookie"), browser.fact("user")), ("yes", "ann"))

    def test_crossSiteLinkToLogout(self):
        """
        A link on another site to the demo's logout carries the cookie too, which is why a
        logout is a POST: the browser's GET ends nothing.
        """
        demo = self.serve()
        browser = self.browser()
        self.logIn(browser, demo, "ann")
        before = self.sessionCookie(browser, demo)["value"]
        other = self.otherSite(f'<a id=link href="{demo.url}logout">log out</a>')
        browser.open(other.url)
        browser.follow("link")
        self.assertEqual(browser.url, demo.url + "logout")
        browser.open(demo.url)
        self.assertEqual(browser.fact("user"), "ann")
        self.assertEqual(self.sessionCookie(browser, demo)["value"], before)

    def test_logout(self):
        """
        The demo's own logout form ends the session: the next page is a new one.
        """
        demo = self.serve()
        browser = self.browser()
        self.logIn(browser, demo, "ann")
        browser.submit("logout")
        self.assertEqual(browser.url, demo.url)
        self.assertEqual((browser.fact("user"), browser.fact("visits")), ("(nobody)", "1"))

    def test_loginRenewsTheSession(self):
        """
        Logging in (a POST, with C{renewSession}) changes the cookie. Replayed in another
        browser, the new id reaches the user's session and the old one an empty session.
        """
        demo = self.serve()
        browser = self.browser()
        browser.open(demo.url)
        old = self.sessionCookie(browser, demo)["value"]
        browser.submit("login", user="ann")
        self.assertEqual(browser.fact("user"), "ann")
        new = self.sessionCookie(browser, demo)["value"]
        self.assertNotEqual(new, old)

        other = self.browser()
        other.setCookie(demo.url, self.cookieName, new)
        other.open(demo.url)
        self.assertEqual((other.fact("cookie"), other.fact("user")), ("yes", "ann"))

        other.setCookie(demo.url, self.cookieName, old)
        other.open(demo.url)
        self.assertEqual(other.fact("cookie"), "yes")
        self.assertEqual((other.fact("user"), other.fact("visits")), ("(nobody)", "1"))
        self.assertNotIn(self.sessionCookie(other, demo)["value"], (old, new))
        browser.open(demo.url)
        self.assertEqual(browser.fact("user"), "ann")

    def test_absoluteTimeout(self):
        """
        A demo whose sessions end 3 seconds after they began (C{--absolute-timeout}): a
        browser that loads a page every fifth of a second, far inside the idle timeout, keeps
        its session until that end, and is logged out after it.
        """
        demo = self.serve("--absolute-timeout", "3")
        browser = self.browser()
        self.logIn(browser, demo, "ann")
        # Shown to the second: the session ends within a second after this.
        end = _seconds(browser.fact("absolute-end"))
        self.assertEqual(end, _seconds(browser.fact("created")) + 3)
        self.assertGreater(_seconds(browser.fact("idle-end")), end + 60)
        visits = int(browser.fact("visits"))
        while True:
            sent = self.sessionCookie(browser, demo)["value"]
            started = time.time()
            browser.open(demo.url)
            if browser.fact("user") != "ann":
                break
            # Served after the end (it began after this request started): a failure.
            self.assertLess(started, end + 1, "the session outlived its absolute timeout")
            visits += 1
            self.assertEqual(int(browser.fact("visits")), visits)
            self.assertEqual(_seconds(browser.fact("absolute-end")), end)
            time.sleep(0.2)
        # Ended, and not before its time (this request ended after it did).
        self.assertGreaterEqual(time.time(), end)
        self.assertEqual((browser.fact("cookie"), browser.fact("visits")), ("yes", "1"))
        self.assertNotEqual(self.sessionCookie(browser, demo)["value"], sent)

    def test_logOutEverywhereElse(self):
        """
        Logged in as the same user in two browsers, "log out everywhere else" in the second
        ends the first one's session and keeps its own.
        """
        demo = self.serve()
        first, second = self.browser(), self.browser()
        self.logIn(first, demo, "ann")
        self.logIn(second, demo, "ann")
        self.assertEqual(len(self.sessionsPage(second, demo)), 2)
        second.submit("others")
        self.assertEqual(second.url, demo.url + "sessions")
        self.assertEqual(len(second.texts("tr.session")), 1)
        self.assertLoggedOut(first, demo)
        second.open(demo.url)
        self.assertEqual(second.fact("user"), "ann")

    def test_endOneSession(self):
        """
        The end button of one session on the sessions page ends that session (the first
        browser's, the older) and no other.
        """
        demo = self.serve()
        first, second, third = self.browser(), self.browser(), self.browser()
        for browser in first, second, third:
            self.logIn(browser, demo, "ann")
        self.assertEqual(len(self.sessionsPage(third, demo)), 3)
        third.submit("end-0")
        self.assertEqual(third.url, demo.url + "sessions")
        self.assertEqual(len(third.texts("tr.session")), 2)
        self.assertLoggedOut(first, demo)
        for browser in second, third:
            browser.open(demo.url)
            self.assertEqual(browser.fact("user"), "ann")


class HTTPSTests(HTTPTests):
    """
    The demo over HTTPS, with a certificate from a CA the test makes and the browser trusts
    through its NSS database: every test of L{HTTPTests}, and what only HTTPS has.
    """

    scheme = "https"
    # The demo's site has cookieHostPrefix.
    cookieName = "__Host-TWISTED_SECURE_SESSION"

    def trust(self) -> str | None:
        self.certificates = Certificates(self.directory)
        return self.certificates.ca

    def serve(self, *arguments: str) -> Demo:
        return super().serve("--https", self.certificates.cert, self.certificates.key, *arguments)

    def test_secureCookie(self):
        """
        Over HTTPS the session cookie is the secure one, named C{__Host-}, set with
        C{Secure}, C{Path=/} and no C{Domain} (a host-only cookie), and with the demo's
        C{HttpOnly} and C{SameSite=Lax}: the browser kept it, so it met the prefix's rules.
        """
        demo = self.serve()
        browser = self.browser()
        browser.open(demo.url)
        cookie = self.sessionCookie(browser, demo)
        self.assertEqual(
            (cookie["secure"], cookie["httpOnly"], cookie["sameSite"], cookie["path"]),
            (True, True, "Lax", "/"),
        )
        # A Domain attribute would give a domain starting with a dot.
        self.assertEqual(cookie["domain"], "127.0.0.1")
        cookies = browser.cookies(demo.url)
        self.assertNotIn("TWISTED_SESSION", cookies)
        self.assertNotIn("TWISTED_SECURE_SESSION", cookies)
        browser.open(demo.url)
        self.assertEqual((browser.fact("cookie"), browser.fact("visits")), ("yes", "2"))

    def test_hostPrefixRules(self):
        """
        The control: this browser holds C{__Host-} cookies to their rules, refusing one
        without C{Secure} or with a path other than C{/}, which it takes without the prefix.
        So a cookie that another host or path sets cannot take the session cookie's name.
        """
        demo = self.serve()
        browser = self.browser()
        browser.open(demo.url)
        for cookie in [
            "__Host-kept=1; Secure; Path=/",
            "__Host-insecure=1; Path=/",
            "__Host-pathed=1; Secure; Path=/add",
            "pathed=1; Secure; Path=/add",
        ]:
            browser.script(f"document.cookie = {cookie!r}")
        names = set(browser.cookies(demo.url + "add"))
        self.assertTrue({"__Host-kept", "pathed"} <= names, names)
        self.assertFalse({"__Host-insecure", "__Host-pathed"} & names, names)

    def test_untrustedCertificate(self):
        """
        The control: a browser whose home does not trust the test's CA refuses the demo's
        certificate, so it is the trust that lets the other tests through.
        """
        demo = self.serve()
        browser = self.browser(home=makeHome(self.directory))
        browser.open(demo.url)
        self.assertFalse(browser.has("cookie"))
        self.assertIn(
            "ERR_CERT_AUTHORITY_INVALID", browser.script("return document.body.innerText")
        )


class RedisTests(BrowserTestCase):
    """
    Two demo processes on one Redis store (C{--redis}), on two ports of the same host: the
    browser sends both the same cookie, and both serve the same session.
    """

    def setUp(self) -> None:
        super().setUp()
        self.redis = RedisServer()
        self.addCleanup(self.redis.close)
        self.redis.start()

    def test_twoProcessesShareTheSession(self):
        """
        A login on one process is seen on the other, and a logout on the other ends the
        session on the first.
        """
        one, two = self.serve("--redis", self.redis.url), self.serve("--redis", self.redis.url)
        browser = self.browser()
        self.logIn(browser, one, "ann")
        visits = int(browser.fact("visits"))
        loggedIn = self.sessionCookie(browser, one)["value"]
        browser.open(two.url)
        self.assertEqual((browser.fact("cookie"), browser.fact("user")), ("yes", "ann"))
        self.assertEqual(int(browser.fact("visits")), visits + 1)

        browser.submit("logout")
        self.assertEqual(browser.url, two.url)
        self.assertEqual((browser.fact("user"), browser.fact("visits")), ("(nobody)", "1"))
        browser.open(one.url)
        self.assertEqual((browser.fact("user"), browser.fact("visits")), ("(nobody)", "2"))
        self.assertNotEqual(self.sessionCookie(browser, one)["value"], loggedIn)

    def test_logOutEverywhereElseAcrossProcesses(self):
        """
        Logged in as the same user in two browsers, each on its own process, "log out
        everywhere else" on the second process ends the first browser's session on the first
        process.
        """
        one, two = self.serve("--redis", self.redis.url), self.serve("--redis", self.redis.url)
        first, second = self.browser(), self.browser()
        self.logIn(first, one, "ann")
        self.logIn(second, two, "ann")
        self.assertEqual(len(self.sessionsPage(second, two)), 2)
        second.submit("others")
        self.assertEqual(len(second.texts("tr.session")), 1)
        self.assertLoggedOut(first, one)
        for demo in one, two:
            second.open(demo.url)
            self.assertEqual(second.fact("user"), "ann")
        self.assertEqual(self.sessionsPage(first, two), [])
        self.assertTrue(first.has("not-logged-in"))

    def test_endOneSessionAcrossProcesses(self):
        """
        The end button on one process's sessions page ends a session that the other process
        made and serves.
        """
        one, two = self.serve("--redis", self.redis.url), self.serve("--redis", self.redis.url)
        first, second = self.browser(), self.browser()
        self.logIn(first, one, "ann")
        self.logIn(second, two, "ann")
        self.assertEqual(len(self.sessionsPage(second, two)), 2)
        second.submit("end-0")
        self.assertEqual(len(second.texts("tr.session")), 1)
        self.assertLoggedOut(first, one)
        second.open(one.url)
        self.assertEqual(second.fact("user"), "ann")
