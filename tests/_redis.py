"""
A private, real C{redis-server} for the store tests: started on a free loopback port with no
persistence, stopped afterwards. Where no C{redis-server} is installed the tests skip, except
in CI (C{CI=true}), where that is an error: CI installs it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time

from twisted.trial import unittest


def redisServerPath() -> str:
    """
    The C{redis-server} to run; C{SkipTest} without one (outside CI).
    """
    path = shutil.which("redis-server")
    if path is None:
        if os.environ.get("CI") == "true":
            raise RuntimeError("redis-server is not installed: .ci/run installs it (Debian's)")
        raise unittest.SkipTest("no redis-server installed (apt-get install redis-server)")
    return path


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """
    One C{redis-server} process on C{127.0.0.1:port}, which can be stopped and started again
    on the same port.
    """

    def __init__(self) -> None:
        self.path = redisServerPath()
        self.port = freePort()
        self.dir = tempfile.mkdtemp(prefix="txsession-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *options: bytes) -> None:
        """
        Start the server, unless it is running.
        """
        if self.process is not None and self.process.poll() is None:
            return
        self.process = subprocess.Popen(
            [
                self.path,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", self.dir,
                *options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.waitUntilUp("redis-server")

    def waitUntilUp(self, what: str) -> None:
        """
        Wait until the server answers PING, for at most 10 seconds; stop it and raise
        C{RuntimeError} naming C{what} if it does not.
        """
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.command(b"PING") == b"+PONG\r\n":
                    return
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"{what} did not start on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def command(self, *args: bytes) -> bytes:
        """
        One command over a fresh connection, blocking: the raw reply. For the tests to look
        at Redis directly, apart from the client under test.
        """
        request = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(request)
            reply = b""
            while not _complete(reply):
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
        return reply

    def keys(self) -> list[bytes]:
        reply = self.command(b"KEYS", b"*")
        return [line for line in reply.split(b"\r\n")[2::2] if line]

    def hgetall(self, key: bytes) -> dict[bytes, bytes]:
        lines = self.command(b"HGETALL", key).split(b"\r\n")[1:]
        values = lines[1::2]
        return dict(zip(values[0::2], values[1::2]))


def _complete(reply: bytes) -> bool:
    """
    Whether C{reply} holds one whole reply (simple, integer, bulk, or an array of bulks).
    """
    if not reply.endswith(b"\r\n"):
        return False
    if reply[:1] in b"+-:":
        return True
    if reply[:1] == b"$":
        length = int(reply[1 : reply.index(b"\r\n")])
        return length < 0 or len(reply) >= reply.index(b"\r\n") + 2 + length + 2
    if reply[:1] == b"*":
        count = int(reply[1 : reply.index(b"\r\n")])
        return count <= 0 or reply.count(b"\r\n") >= 1 + 2 * count
    return True


def sessionKey(uid: bytes | str, prefix: bytes = b"txsession:") -> bytes:
    """
    The Redis key of the session with id C{uid}: the prefix and the id's SHA-256 (hex).
    """
    if isinstance(uid, str):
        uid = uid.encode()
    return prefix + hashlib.sha256(uid).hexdigest().encode()


def decoded(raw: bytes):
    """
    The reply C{raw} (from L{RedisServer.command}) as Python values: C{bytes}, C{str},
    C{int}, C{None}, lists, or an C{Exception} for an error reply.
    """
    from txsession._txsession import RespDecoder

    return RespDecoder(Exception).feed(raw)[0]


class SentinelServer(RedisServer):
    """
    A C{redis-server --sentinel} on C{127.0.0.1:port}, watching the primary C{service} at
    C{primaryPort}, with short failure detection (C{down-after-milliseconds}).
    """

    def __init__(self, service: str, primaryPort: int, downAfter: int = 500) -> None:
        super().__init__()
        self.config = os.path.join(self.dir, "sentinel.conf")
        with open(self.config, "w") as f:
            f.write(
                f"port {self.port}\n"
                "bind 127.0.0.1\n"
                f"dir {self.dir}\n"
                f"sentinel monitor {service} 127.0.0.1 {primaryPort} 2\n"
                f"sentinel down-after-milliseconds {service} {downAfter}\n"
                f"sentinel failover-timeout {service} 5000\n"
                f"sentinel parallel-syncs {service} 1\n"
            )

    def start(self, *options: bytes) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        self.process = subprocess.Popen(
            [self.path, self.config, "--sentinel", *options],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.waitUntilUp("redis-server --sentinel")
