"""
What the browser tests share: headless Chromium driven by selenium through Debian's
C{chromedriver}; a certificate authority made for each test and trusted the way a user or an
administrator trusts one, in the NSS database of the browser's home directory; the demo run
as a subprocess; and another site, on C{127.0.0.2}, to start cross-site requests from.

Where Chromium, its driver, C{certutil} or selenium is missing the tests skip, except in CI
(C{CI=true}), where that is an error: CI installs them (Debian's C{chromium},
C{chromium-driver} and C{libnss3-tools}, and selenium from PyPI).
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, NoReturn

from twisted.trial import unittest

# A guard against a hang, never a measure: nothing here should take a tenth of it.
DEADLINE = 60


def _missing(what: str, install: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"{what} is not installed: CI installs it ({install})")
    raise unittest.SkipTest(f"no {what} installed ({install})")


def requireBrowser() -> tuple[str, str]:
    """
    The Chromium and chromedriver to run; C{SkipTest} without them or selenium (outside CI).
    """
    chromium = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        _missing("chromium and chromedriver", "apt-get install chromium chromium-driver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        _missing("selenium", "pip install selenium")
    return chromium, driver


def requireCertutil() -> str:
    path = shutil.which("certutil")
    if path is None:
        _missing("certutil", "apt-get install libnss3-tools")
    return path


class Certificates:
    """
    A certificate authority and a server certificate it issued for C{127.0.0.1} and
    C{localhost}, as PEM files in C{directory}: C{ca}, C{cert} and C{key} (the server's).
    """

    def __init__(self, directory: str) -> None:
        from txsession._certs import CA

        ca = CA(directory, "txsession test CA")
        server = ca.issue("127.0.0.1", ("127.0.0.1", "localhost"))
        self.ca, self.cert, self.key = ca.path, server.path, server.keyPath


def makeHome(directory: str, trust: str | None = None) -> str:
    """
    A home directory for the browser, made in C{directory}, so that nothing of the user's
    own reaches it. With C{trust} (a CA certificate's PEM file), its NSS database, where
    Chromium on Linux reads the trust anchors a user added, trusts that CA to identify TLS
    servers.
    """
    home = tempfile.mkdtemp(prefix="home-", dir=directory)
    if trust is not None:
        certutil = requireCertutil()
        nssdb = "sql:" + os.path.join(home, ".pki", "nssdb")
        os.makedirs(nssdb[4:])
        for args in [
            ["-N", "--empty-password"],
            ["-A", "-t", "C,,", "-n", "txsession test CA", "-i", trust],
        ]:
            subprocess.run([certutil, "-d", nssdb, *args], check=True, capture_output=True)
    return home


class Browser:
    """
    A headless Chromium, with a profile of its own (a separate browser context: its own
    cookies), started with C{home} as its home directory.
    """

    def __init__(self, directory: str, home: str) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        chromium, driver = requireBrowser()
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for argument in [
            "--headless",
            # Chromium's sandbox cannot start as root, which CI's containers run as.
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--user-data-dir=" + os.path.join(directory, "profile"),
        ]:
            options.add_argument(argument)
        # A driver path skips Selenium Manager, which would look for a browser online.
        service = Service(driver, env={**os.environ, "HOME": home})
        self.driver = webdriver.Chrome(options=options, service=service)

    def quit(self) -> None:
        self.driver.quit()

    @property
    def url(self) -> str:
        return str(self.driver.current_url)

    @property
    def title(self) -> str:
        return str(self.driver.title)

    def open(self, url: str) -> None:
        self.driver.get(url)

    def fact(self, key: str) -> str:
        """
        The text of the element with id C{key}, as the demo names what its pages show.
        """
        from selenium.webdriver.common.by import By

        return str(self.driver.find_element(By.ID, key).text)

    def texts(self, selector: str) -> list[str]:
        """
        The texts of the elements that the CSS C{selector} finds, in page order.
        """
        from selenium.webdriver.common.by import By

        return [str(e.text) for e in self.driver.find_elements(By.CSS_SELECTOR, selector)]

    @property
    def source(self) -> str:
        """
        The page's HTML as it is now.
        """
        return str(self.driver.page_source)

    def has(self, key: str) -> bool:
        from selenium.webdriver.common.by import By

        return bool(self.driver.find_elements(By.ID, key))

    def submit(self, form: str, **fields: str) -> None:
        """
        Fill in the form with id C{form} and press its button, as a user does, then wait for
        the page it leads to.
        """
        from selenium.webdriver.common.by import By

        element = self.driver.find_element(By.ID, form)
        for name, value in fields.items():
            field = element.find_element(By.NAME, name)
            field.clear()
            field.send_keys(value)
        self._navigating(element.find_element(By.TAG_NAME, "button").click)

    def follow(self, link: str) -> None:
        """
        Click the link with id C{link}, then wait for the page it leads to.
        """
        from selenium.webdriver.common.by import By

        self._navigating(self.driver.find_element(By.ID, link).click)

    def _navigating(self, action: Callable[[], None]) -> None:
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.support.wait import WebDriverWait

        # A mark on this page's window, which the next page's window does not have. (Asking
        # whether the old page's element went stale races with the navigation: Chromium can
        # answer that the node belongs to no document, an error rather than staleness.)
        self.driver.execute_script("window.txsessionLeaving = true")
        action()

        def arrived(driver: Any) -> bool:
            return bool(
                driver.execute_script(
                    "return !window.txsessionLeaving && document.readyState === 'complete'"
                )
            )

        # Asked while the browser is between pages, the script can fail: ask again.
        wait = WebDriverWait(self.driver, DEADLINE, ignored_exceptions=(WebDriverException,))
        wait.until(arrived)

    def script(self, source: str) -> Any:
        """
        Run C{source} in the page, as one of its own scripts would; what it returns.
        """
        return self.driver.execute_script(source)

    def cookies(self, url: str) -> dict[str, dict[str, Any]]:
        """
        The cookies the browser would send to C{url}, by name, each with its attributes as the
        browser keeps them (C{value}, C{secure}, C{httpOnly}, C{sameSite}, ...), HttpOnly ones
        included.
        """
        reply = self.driver.execute_cdp_cmd("Network.getCookies", {"urls": [url]})
        return {c["name"]: c for c in reply["cookies"]}

    def setCookie(self, url: str, name: str, value: str) -> None:
        """
        Put a cookie in this browser's jar for C{url}, as a session cookie the demo sets
        (C{HttpOnly}, C{SameSite=Lax}, C{Secure} for https).
        """
        cookie = {"url": url, "name": name, "value": value, "path": "/", "httpOnly": True}
        cookie.update(sameSite="Lax", secure=url.startswith("https:"))
        self.driver.execute_cdp_cmd("Network.setCookie", cookie)


class Demo:
    """
    C{python -m txsession.demo} in a subprocess on a free port, its output in a file in
    C{directory}.
    """

    def __init__(self, directory: str, *arguments: str) -> None:
        self.log = os.path.join(directory, f"demo-{len(os.listdir(directory))}.log")
        command = [sys.executable, "-m", "txsession.demo", "--port", "0", *arguments]
        with open(self.log, "wb") as output:
            self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + DEADLINE
        while True:
            found = re.search(r"txsession demo at (\S+)", self.output())
            if found:
                self.url = found.group(1)
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the demo did not start:\n{self.output()}")
            time.sleep(0.05)

    def output(self) -> str:
        with open(self.log, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(DEADLINE)


class OtherSite:
    """
    Another site, serving C{page} at its root over HTTP. On C{127.0.0.2}, it is another site
    than the demo's C{127.0.0.1} to the browser, whatever the ports (a site is the scheme and
    host, not the port).
    """

    def __init__(self, page: str) -> None:
        body = page.encode("utf-8")

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/html; charset=utf-8")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        self.url = f"http://127.0.0.2:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
