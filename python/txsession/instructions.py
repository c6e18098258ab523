"""
The benchmark's instruction counts: C{python -m txsession.bench --instructions}.

Every operation of the main benchmark, and the HTTP scenario, for Twisted's classes and
txsession's, counted in CPU instructions by valgrind's callgrind, which gives the same count
however loaded the machine is. Each count runs in a fresh child process under
C{valgrind --tool=callgrind} with C{PYTHONHASHSEED=0}, at two sizes N1 and N2: the child sets
up for N2 operations at both sizes, performs N1 or N2 of them with the garbage collector off
(as the timed blocks do), and ends with C{os._exit}, without the interpreter's teardown. The
cost of one operation is (I2 - I1) / (N2 - N1), so that start-up and set-up cancel out. For
HTTP, the child is the server; one client sends N1 or N2 requests, one at a time on one
keep-alive connection, and the count is the server's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from txsession._benchkit import environment, responses
from txsession._report import table

LABELS = ("Twisted", "txsession")
SIZES = (1000, 3000)
QUICK_SIZES = (300, 900)
HTTP_SIZES = (100, 300)
QUICK_ROWS = ("construct Session(site, uid)", "touch, 100 started sessions in turn")
HTTP_ROWS = ("HTTP, new session", "HTTP, returning session")

_COLLECTED = re.compile(rb"Collected : (\d+)")


def _valgrind() -> list[str]:
    return ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONHASHSEED="0")


def _collected(stderr: bytes) -> int:
    found = _COLLECTED.findall(stderr)
    if not found:
        raise RuntimeError(
            "no instruction count from valgrind:\n" + stderr.decode(errors="replace")
        )
    return int(found[-1])


def child(index: int, label: str, count: int, size: int) -> None:
    """
    In a child under callgrind: scenario C{index} set up for C{size} operations, C{count} of
    them performed, then the process ends without tearing the interpreter down.
    """
    import gc

    from txsession._operations import IMPLEMENTATIONS, SCENARIOS

    _, prepare = SCENARIOS[index]
    run, _ = prepare(IMPLEMENTATIONS[label], size)
    gc.collect()
    gc.disable()
    run(count)
    sys.stdout.flush()
    os._exit(0)


def _count(index: int, label: str, count: int, size: int) -> int:
    done = subprocess.run(
        [
            *_valgrind(),
            sys.executable,
            "-m",
            "txsession.bench",
            "--instructions-child",
            str(index),
            label,
            str(count),
            str(size),
        ],
        env=_env(),
        capture_output=True,
        check=True,
    )
    return _collected(done.stderr)


def _request(cookie: bytes | None) -> bytes:
    header = b"Cookie: TWISTED_SESSION=" + cookie + b"\r\n" if cookie else b""
    return b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header + b"\r\n"


def _exchange(sock: socket.socket, request: bytes) -> bytes:
    sock.sendall(request)
    data = b""
    while responses(data)[0] < 1:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("the server closed the connection")
        data += chunk
    return data


def _countHttp(label: str, newSessions: bool, count: int) -> int:
    """
    The server's instructions for its start and C{count} requests, one at a time, after one
    request that makes the session a returning request's cookie names.
    """
    proc = subprocess.Popen(
        [*_valgrind(), sys.executable, "-m", "txsession.bench", "--http-server", label],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        port = int(proc.stdout.readline())
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            head = _exchange(sock, _request(None))
            cookie = head.split(b"TWISTED_SESSION=", 1)[1].split(b";", 1)[0]
            request = _request(None if newSessions else cookie)
            for _ in range(count):
                _exchange(sock, request)
            proc.send_signal(signal.SIGUSR1)
            stderr = proc.stderr.read()
        proc.wait()
        return _collected(stderr)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@dataclass
class Row:
    operation: str
    twisted: float
    txsession: float

    @property
    def ratio(self) -> float:
        return self.twisted / self.txsession


def measure(quick: bool, http: bool, only: list[str] | None, jobs: int) -> list[Row]:
    from txsession._operations import SCENARIOS

    sizes = QUICK_SIZES if quick else SIZES
    chosen = [
        (index, name)
        for index, (name, _) in enumerate(SCENARIOS)
        if (name in QUICK_ROWS if quick else not only or any(word in name for word in only))
    ]
    tasks = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for index, name in chosen:
            for label in LABELS:
                for n in sizes:
                    tasks[name, label, n] = pool.submit(_count, index, label, n, sizes[1])
        httpNames = [
            name
            for name in HTTP_ROWS
            if http and not quick and (not only or any(word in name for word in only))
        ]
        for name in httpNames:
            for label in LABELS:
                for n in HTTP_SIZES:
                    tasks[name, label, n] = pool.submit(_countHttp, label, name == HTTP_ROWS[0], n)
        rows = []
        for name, rowSizes in [(name, sizes) for _, name in chosen] + [
            (name, HTTP_SIZES) for name in httpNames
        ]:
            per = {
                label: (
                    tasks[name, label, rowSizes[1]].result()
                    - tasks[name, label, rowSizes[0]].result()
                )
                / (rowSizes[1] - rowSizes[0])
                for label in LABELS
            }
            rows.append(Row(name, per["Twisted"], per["txsession"]))
            print(
                f"  {name}: {per['Twisted']:,.0f} / {per['txsession']:,.0f}",
                file=sys.stderr,
                flush=True,
            )
    return rows


def render(rows: list[Row]) -> str:
    header = ("operation", "Twisted instr", "txsession instr", "ratio")
    return table(
        header,
        [
            [r.operation, f"{r.twisted:,.0f}", f"{r.txsession:,.0f}", f"{r.ratio:.2f}x"]
            for r in rows
        ],
    )


def main(
    quick: bool, http: bool, only: list[str] | None, jobs: int | None, jsonPath: str | None
) -> int:
    if shutil.which("valgrind") is None:
        print(
            "txsession instruction counts: skipped, valgrind is not installed "
            "(Debian and Ubuntu: apt-get install valgrind)"
        )
        return 0
    sizes = QUICK_SIZES if quick else SIZES
    print(f"txsession instruction counts: {environment()}")
    print(
        f"CPU instructions per operation under callgrind, (I2 - I1) / (N2 - N1) with N1, N2 = "
        f"{sizes[0]:,}, {sizes[1]:,} ({HTTP_SIZES[0]}, {HTTP_SIZES[1]} requests for HTTP); "
        "ratio is Twisted's over txsession's\n",
        flush=True,
    )
    rows = measure(quick, http, only, jobs or os.cpu_count() or 1)
    print(render(rows))
    if jsonPath:
        with open(jsonPath, "w") as f:
            json.dump(
                {
                    "environment": environment(),
                    "sizes": sizes,
                    "http_sizes": HTTP_SIZES,
                    "rows": [
                        {"operation": r.operation, "Twisted": r.twisted, "txsession": r.txsession}
                        for r in rows
                    ],
                },
                f,
                indent=2,
            )
    return 0
