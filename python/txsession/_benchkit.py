"""
What the benchmark's sections share: the line naming the environment, the resource that the
HTTP servers serve, and reading pipelined responses. The sections import this module and
never each other.
"""

from __future__ import annotations

import os
import platform
import signal
import sys

import twisted
from twisted.web import resource

import txsession


def environment() -> str:
    return (
        f"CPython {platform.python_version()}, Twisted {twisted.__version__}, "
        f"txsession {txsession.__version__}, {platform.machine()}, {os.cpu_count()} cores"
    )


class Counter(resource.Resource):
    """
    The HTTP scenario's resource: the request's session, and one namespace entry updated.
    """

    isLeaf = True

    def render_GET(self, request):
        ns = request.getSession().sessionNamespaces
        ns["hits"] = ns.get("hits", 0) + 1
        return b"ok"


def httpServer(label: str) -> None:
    """
    Serves L{Counter} on a free loopback port, printed on the first line of standard output:
    from Twisted's C{Site} (C{label} C{"Twisted"}) or from C{txsession.Site}. C{SIGUSR1} ends
    the process at once, without the interpreter's teardown, so that a count of its
    instructions holds only the start and the requests.
    """
    from twisted.internet import reactor as running
    from twisted.web import server

    signal.signal(signal.SIGUSR1, lambda *_: os._exit(0))
    site = server.Site(Counter()) if label == "Twisted" else txsession.Site(Counter())
    port = running.listenTCP(0, site, interface="127.0.0.1", backlog=128)
    print(port.getHost().port, flush=True)
    sys.stdout.flush()
    running.run()


def responses(buffer: bytes) -> tuple[int, bytes]:
    """
    Complete responses at the start of C{buffer}, and what is left of it.
    """
    count = 0
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return count, buffer
        head = buffer[:end].lower()
        length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        if len(buffer) < end + 4 + length:
            return count, buffer
        buffer = buffer[end + 4 + length :]
        count += 1
