"""
Side-by-side benchmark: Twisted's L{twisted.web.server.Session} against L{txsession.Session}.

Run with C{python -m txsession.bench}. Every operation is timed in blocks that alternate
between the two implementations in one process, on the real reactor (which is never run:
delayed calls are only scheduled and cancelled), and the medians of the blocks are compared.
Memory per live session is the growth of the resident set of a fresh child process per
implementation, so that allocations made by Rust count as well as Python's.
"""

from __future__ import annotations

import argparse
import gc
import json
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable

from twisted.internet import reactor

from txsession._benchkit import environment, httpServer, responses
from txsession._operations import IMPLEMENTATIONS, SCENARIOS, noop, site
from txsession._report import rss, table


@dataclass
class Row:
    """
    One operation's medians and quartiles, in nanoseconds per operation.
    """

    operation: str
    twisted_ns: float
    txsession_ns: float
    twisted_quartiles: tuple[float, float]
    txsession_quartiles: tuple[float, float]

    @property
    def speedup(self) -> float:
        return self.twisted_ns / self.txsession_ns

    @property
    def speedupRange(self) -> tuple[float, float]:
        """
        The speed-up's spread: Twisted's lower quartile over txsession's upper one, and
        Twisted's upper quartile over txsession's lower one.
        """
        return (
            self.twisted_quartiles[0] / self.txsession_quartiles[1],
            self.twisted_quartiles[1] / self.txsession_quartiles[0],
        )


def _quartiles(samples: list[float]) -> tuple[float, float]:
    if len(samples) < 2:
        return samples[0], samples[0]
    q = statistics.quantiles(samples, n=4)
    return q[0], q[2]


def _row(name: str, twisted: list[float], ours: list[float]) -> Row:
    return Row(
        name,
        statistics.median(twisted),
        statistics.median(ours),
        _quartiles(twisted),
        _quartiles(ours),
    )


def _timeBlock(prepare, cls, n):
    run, cleanup = prepare(cls, n)
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        run(n)
        elapsed = time.perf_counter_ns() - start
    finally:
        gc.enable()
        cleanup()
        # What a running reactor does on each iteration: file new delayed calls and drop the
        # cancelled ones. Nothing is due (timeouts are 900 s), so nothing fires.
        reactor.runUntilCurrent()
    return elapsed / n


def measure(repeats: int, n: int, only: Iterable[str] | None = None) -> list[Row]:
    rows = []
    for name, prepare in SCENARIOS:
        if only and not any(word in name for word in only):
            continue
        samples: dict[str, list[float]] = {label: [] for label in IMPLEMENTATIONS}
        # Warm up both, then alternate so that drift on a noisy machine hits both alike.
        for cls in IMPLEMENTATIONS.values():
            _timeBlock(prepare, cls, max(n // 10, 10))
        for _ in range(repeats):
            for label, cls in IMPLEMENTATIONS.items():
                samples[label].append(_timeBlock(prepare, cls, n))
        rows.append(_row(name, samples["Twisted"], samples["txsession"]))
    return rows


# The HTTP scenario: each implementation's site in its own server process, loaded in turn by
# the same client over loopback.


def _request(cookie: bytes | None) -> bytes:
    header = b"Cookie: TWISTED_SESSION=" + cookie + b"\r\n" if cookie else b""
    return b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header + b"\r\n"


def _load(port: int, newSessions: bool, seconds: float, depth: int = 32) -> float:
    """
    Requests per second answered on one keep-alive connection with C{depth} pipelined
    requests in flight; every request without a cookie (new sessions) or with one session's.
    """
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    cookie = None
    if not newSessions:
        sock.sendall(_request(None))
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(65536)
        cookie = head.split(b"TWISTED_SESSION=", 1)[1].split(b";", 1)[0]
        _drain(sock, head)
    request = _request(cookie)
    batch = request * depth
    answered = 0
    buffer = b""
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        sock.sendall(batch)
        pending = depth
        while pending:
            buffer += sock.recv(1 << 20)
            done, buffer = responses(buffer)
            pending -= done
        answered += depth
    elapsed = time.perf_counter() - start
    sock.close()
    return answered / elapsed


def _drain(sock: socket.socket, head: bytes) -> None:
    while responses(head)[0] < 1:
        head += sock.recv(65536)


def measureHttp(seconds: float, rounds: int) -> list[Row]:
    servers = {}
    try:
        for label in IMPLEMENTATIONS:
            proc = subprocess.Popen(
                [sys.executable, "-m", "txsession.bench", "--http-server", label],
                stdout=subprocess.PIPE,
                text=True,
            )
            servers[label] = (proc, int(proc.stdout.readline()))
        rows = []
        for newSessions, name in ((True, "HTTP, new session"), (False, "HTTP, returning session")):
            rates: dict[str, list[float]] = {label: [] for label in IMPLEMENTATIONS}
            for _, port in servers.values():
                _load(port, newSessions, min(seconds, 0.5))  # warm up
            for _ in range(rounds):
                for label, (_, port) in servers.items():
                    rates[label].append(_load(port, newSessions, seconds))
            # Stored as nanoseconds per request, so that Row's speed-up is the rate ratio.
            rows.append(
                _row(
                    name,
                    [1e9 / rate for rate in rates["Twisted"]],
                    [1e9 / rate for rate in rates["txsession"]],
                )
            )
        return rows
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait()


def _memoryChild(label: str, n: int) -> None:
    """
    In a fresh process: the resident growth per live session, each with one namespace entry
    and one expire callback, scheduled on the reactor and kept in C{site.sessions}.
    """
    cls = IMPLEMENTATIONS[label]
    made = site(cls)
    uids = [b"%064x" % i for i in range(n)]
    gc.collect()
    before = rss()
    for uid in uids:
        session = made.sessions[uid] = cls(made, uid)
        session.startCheckingExpiration()
        session.sessionNamespaces["visits"] = 1
        session.notifyOnExpire(noop)
    gc.collect()
    after = rss()
    # The delayed calls are Twisted's own objects, the same for both: count them out.
    callsBefore = rss()
    extra = [reactor.callLater(900, noop) for _ in range(n)]
    callsCost = rss() - callsBefore
    print(json.dumps({"bytes": (after - before - callsCost) / n}))
    del extra


def measureMemory(n: int, rounds: int) -> dict[str, list[float]]:
    """
    Bytes per live session from C{rounds} fresh processes per implementation, alternating.
    """
    result: dict[str, list[float]] = {label: [] for label in IMPLEMENTATIONS}
    for _ in range(rounds):
        for label in IMPLEMENTATIONS:
            out = subprocess.run(
                [sys.executable, "-m", "txsession.bench", "--memory-child", label, str(n)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            result[label].append(json.loads(out.strip().splitlines()[-1])["bytes"])
    return result


def _formatTime(ns: float) -> str:
    return f"{ns / 1000:.2f} us" if ns >= 1000 else f"{ns:.0f} ns"


def _spread(quartiles: tuple[float, float], fmt: Callable[[float], str]) -> str:
    return f"{fmt(quartiles[0])}–{fmt(quartiles[1])}"


def render(rows: list[Row], memory: dict[str, list[float]] | None) -> str:
    header = (
        "operation",
        "Twisted",
        "(quartiles)",
        "txsession",
        "(quartiles)",
        "speed-up",
        "(spread)",
    )
    lines = [
        [
            r.operation,
            _formatTime(r.twisted_ns),
            _spread(r.twisted_quartiles, _formatTime),
            _formatTime(r.txsession_ns),
            _spread(r.txsession_quartiles, _formatTime),
            f"{r.speedup:.2f}x",
            _spread(r.speedupRange, lambda x: f"{x:.2f}x"),
        ]
        for r in rows
    ]
    if memory:
        twisted, ours = memory["Twisted"], memory["txsession"]
        lines.append(
            [
                "memory per live session",
                f"{statistics.median(twisted):.0f} B",
                _spread((min(twisted), max(twisted)), lambda b: f"{b:.0f} B"),
                f"{statistics.median(ours):.0f} B",
                _spread((min(ours), max(ours)), lambda b: f"{b:.0f} B"),
                f"{statistics.median(twisted) / statistics.median(ours):.2f}x less",
                _spread(
                    (min(twisted) / max(ours), max(twisted) / min(ours)),
                    lambda x: f"{x:.2f}x",
                ),
            ]
        )
    return table(header, lines)


def renderHttp(rows: list[Row]) -> str:
    header = (
        "HTTP, getSession + namespace",
        "Twisted req/s",
        "(quartiles)",
        "txsession req/s",
        "(quartiles)",
        "ratio",
        "(spread)",
    )

    def rate(ns: float) -> str:
        return f"{1e9 / ns:,.0f}"

    lines = [
        [
            r.operation,
            rate(r.twisted_ns),
            _spread(r.twisted_quartiles[::-1], rate),
            rate(r.txsession_ns),
            _spread(r.txsession_quartiles[::-1], rate),
            f"{r.speedup:.2f}x",
            _spread(r.speedupRange, lambda x: f"{x:.2f}x"),
        ]
        for r in rows
    ]
    return table(header, lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m txsession.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (under a minute)")
    parser.add_argument("--repeats", type=int, help="timed blocks per implementation")
    parser.add_argument("--number", type=int, help="operations per timed block")
    parser.add_argument("--only", nargs="*", help="only operations whose name contains a word")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP scenario")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--scale",
        nargs="?",
        type=int,
        const=1_000_000,
        metavar="N",
        help="instead: the scale section, N live sessions per process (default 1,000,000)",
    )
    parser.add_argument(
        "--store",
        nargs="?",
        const="",
        metavar="URL",
        help="instead: the store section, HTTP on a Redis session store (without URL: a "
        "private redis-server, which must be installed)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="with --scale: fresh processes per implementation; with --store: rounds",
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="instead: CPU instructions per operation under valgrind's callgrind, which do not "
        "move with the machine's load (with --quick: two rows)",
    )
    parser.add_argument("--jobs", type=int, help="with --instructions: children run at once")
    parser.add_argument("--memory-child", nargs=2, metavar=("IMPL", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--scale-child", nargs=2, metavar=("IMPL", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--http-server", metavar="IMPL", help=argparse.SUPPRESS)
    parser.add_argument("--store-server", nargs=2, metavar=("MODE", "URL"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--instructions-child",
        nargs=4,
        metavar=("ROW", "IMPL", "N", "SIZE"),
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args(argv)

    if args.instructions_child:
        from txsession import instructions

        index, label, count, size = args.instructions_child
        instructions.child(int(index), label, int(count), int(size))
    if args.instructions:
        from txsession import instructions

        return instructions.main(args.quick, not args.no_http, args.only, args.jobs, args.json)

    if args.scale_child:
        from txsession import scale

        print(json.dumps(scale.child(args.scale_child[0], int(args.scale_child[1]))))
        return 0
    if args.scale:
        from txsession import scale

        return scale.main(args.scale, args.rounds, args.json)
    if args.store_server:
        from txsession import storebench

        storebench.server_main(*args.store_server)
        return 0
    if args.store is not None:
        from txsession import storebench

        print(f"txsession benchmark: {environment()}")
        seconds = 1.0 if args.quick else 3.0
        return storebench.main(args.store or None, args.rounds, seconds, args.json)
    if args.http_server:
        httpServer(args.http_server)
        return 0
    if args.memory_child:
        _memoryChild(args.memory_child[0], int(args.memory_child[1]))
        return 0

    repeats = args.repeats or (7 if args.quick else 25)
    number = args.number or (2000 if args.quick else 5000)
    print(f"txsession benchmark: {environment()}")
    print(f"median of {repeats} alternating blocks of {number} operations each\n", flush=True)
    rows = measure(repeats, number, args.only)
    httpRows = (
        [] if args.no_http else measureHttp(1.0 if args.quick else 3.0, 3 if args.quick else 5)
    )
    memory = (
        None
        if args.no_memory
        else measureMemory(20_000 if args.quick else 100_000, 3 if args.quick else 5)
    )
    print(render(rows, memory))
    if httpRows:
        print()
        print(renderHttp(httpRows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "environment": environment(),
                    "repeats": repeats,
                    "number": number,
                    "rows": [
                        dict(asdict(r), speedup=r.speedup, speedup_spread=r.speedupRange)
                        for r in rows
                    ],
                    "http_requests_per_second": {
                        r.operation: {
                            "Twisted": 1e9 / r.twisted_ns,
                            "txsession": 1e9 / r.txsession_ns,
                        }
                        for r in httpRows
                    },
                    "memory_bytes_per_session": memory,
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
