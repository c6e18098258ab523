"""
The store section of the benchmark: C{python -m txsession.bench --store [URL]}.

HTTP requests per second for returning sessions, each server in its own process, loaded in
turn by one client over loopback: Twisted's site and txsession's in memory (one process),
txsession's on the Redis store (one process, with client-side caching, the default, and
without it), and two txsession processes on the store, each on its own port, every session
used by one connection to each process (round-robin). Every request asks for its session;
one workload changes a key each time, the other only reads. For the reads, a floor row, not a
product: the store process with every request that finds its session's copy good keeping none of
the consistency model's records (L{_floorSite}). Two more rows put the one
process on a Redis reached over TLS (certificates made for the run, which needs the C{tls}
extra) and on a Redis Cluster of three nodes (which needs C{redis-cli}); each is left out,
saying why, when it cannot run.
Beside requests per second, each row gives the CPU time the server processes used per request
(user and system, from /proc around the run), which moves less with the machine's load.
Without C{URL}, a private C{redis-server} is started on a free port for the run.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from twisted.web import resource, server

from txsession._benchkit import Counter as _Counter
from txsession._benchkit import responses as _responses
from txsession._report import table

CONNECTIONS = 8
DEPTH = 8

SCENARIOS = [
    ("Twisted, 1 process, in memory", "twisted", 1),
    ("txsession, 1 process, in memory", "memory", 1),
    ("txsession, 1 process, Redis store", "store", 1),
    ("floor: the copy's check alone", "floor", 1),
    ("txsession, 1 process, Redis store, cache=False", "nocache", 1),
    ("txsession, 2 processes, Redis store", "store", 2),
    ("txsession, 1 process, Redis over TLS", "tls", 1),
    ("txsession, 1 process, Redis Cluster (3 nodes)", "cluster", 1),
]
WORKLOADS = [("changes a key", b"/count"), ("reads only", b"/read")]
# Rows measured for the reads only: the floor keeps no record of a change to write.
READS_ONLY = {"floor"}


class _Read(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"ok" if "hits" in request.getSession().sessionNamespaces else b"no"


class _Trips(resource.Resource):
    isLeaf = True

    def __init__(self, site_holder: list[object]) -> None:
        super().__init__()
        self.holder = site_holder

    def render_GET(self, request):
        store = getattr(self.holder[0], "store", None)
        return str(store.roundTrips if store is not None else 0).encode()


def _floorSite(root: resource.Resource, url: str) -> server.Site:
    """
    Not a product, a bound for the reads: a store site on which a request that carries one
    session id, whose copy the store says is good (the check a cached read makes: its stamp,
    the tracking table's room, no push waiting), finds that session and touches it, and keeps
    none of the consistency model's records: no record of the request or of its use of the
    session, no comparison at its end, no response held until the session is written, no
    release. Any other request (one that makes a session, say) goes the store's way.
    """
    import txsession
    from txsession.redis import RedisStore
    from txsession.storeflow import StoreFlow

    class Flow(StoreFlow):
        def read(self, request: Any, uids: list[bytes]) -> Any:
            if len(uids) == 1:
                session = self.site.sessions.get(uids[0])
                if session in self.copies and self._cached(uids[0], self):  # type: ignore[misc]
                    session.touch()
                    return None
            return super().read(request, uids)

        def getSession(self, request: Any, secure: bool, cookiename: bytes) -> Any:
            if request._txsStore is None:
                uid = request.getCookie(cookiename)
                session = self.site.sessions.get(uid) if uid else None
                if session is not None:
                    return session, False
            return super().getSession(request, secure, cookiename)

    class Request(txsession.Request):
        def render(self, resrc: Any) -> Any:
            if self._txsStore is None:
                return server.Request.render(self, resrc)
            return super().render(resrc)

    store = RedisStore(url)
    site = txsession.Site(root, store=store, requestFactory=Request)
    site._flow = Flow(site, store, site._flow.storeEmptySessions)
    return site


def server_main(mode: str, url: str) -> None:
    from twisted.internet import reactor

    import txsession
    from txsession.redis import RedisStore

    holder: list[object] = []
    root = resource.Resource()
    root.putChild(b"count", _Counter())
    root.putChild(b"read", _Read())
    root.putChild(b"trips", _Trips(holder))
    if mode == "twisted":
        site = server.Site(root)
    elif mode == "memory":
        site = txsession.Site(root)
    elif mode == "tls":
        from twisted.internet import ssl

        with open(os.environ["TXSESSION_BENCH_CA"], "rb") as f:
            ca = ssl.Certificate.loadPEM(f.read())
        tls = ssl.optionsForClientTLS("localhost", trustRoot=ca)
        site = txsession.Site(root, store=RedisStore(url, tls=tls))
    elif mode == "floor":
        site = _floorSite(root, url)
    else:
        store = RedisStore(url, cache=mode != "nocache", cluster=mode == "cluster")
        site = txsession.Site(root, store=store)
    holder.append(site)
    port = reactor.listenTCP(0, site, interface="127.0.0.1", backlog=128)
    print(port.getHost().port, flush=True)
    reactor.run()


def _get(port: int, path: bytes, cookie: bytes | None = None) -> tuple[bytes, bytes]:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_request(path, cookie))
        data = b""
        while _responses(data)[0] == 0:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


def _request(path: bytes, cookie: bytes | None) -> bytes:
    header = b"Cookie: TWISTED_SESSION=" + cookie + b"\r\n" if cookie else b""
    return b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header + b"\r\n"


def _newSession(port: int) -> bytes:
    head, _ = _get(port, b"/count")
    return head.split(b"TWISTED_SESSION=", 1)[1].split(b";", 1)[0]


def _load(ports: list[int], path: bytes, seconds: float) -> tuple[float, int]:
    """
    Requests per second over C{CONNECTIONS} keep-alive connections, spread over C{ports},
    with C{DEPTH} pipelined requests in flight each; and how many requests were made in all
    (the first of each session's included). Each session is used by one connection to each
    port: with two ports, its requests alternate between the processes.
    """
    selector = selectors.DefaultSelector()
    conns = []
    cookies = [_newSession(ports[0]) for _ in range(CONNECTIONS // len(ports))]
    for i in range(CONNECTIONS):
        port = ports[i % len(ports)]
        cookie = cookies[i // len(ports)]
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        batch = _request(path, cookie) * DEPTH
        state = {"sock": sock, "batch": batch, "buffer": b"", "pending": DEPTH}
        sock.sendall(batch)
        selector.register(sock, selectors.EVENT_READ, state)
        conns.append(state)
    answered = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for key, _ in selector.select(timeout=1.0):
            state = key.data
            chunk = state["sock"].recv(1 << 20)
            if not chunk:
                raise RuntimeError("a server closed its connection")
            done, state["buffer"] = _responses(state["buffer"] + chunk)
            if done:
                state["pending"] -= done
                answered += done
                if state["pending"] == 0:
                    state["pending"] = DEPTH
                    state["sock"].sendall(state["batch"])
    elapsed = time.perf_counter() - start
    made = len(cookies) + answered
    for state in conns:
        # The requests still in flight are answered before the round trips are read.
        while _responses(state["buffer"])[0] < state["pending"]:
            state["buffer"] += state["sock"].recv(1 << 20)
        made += state["pending"]
        selector.unregister(state["sock"])
        state["sock"].close()
    return answered / elapsed, made


def _trips(ports: list[int]) -> int:
    return sum(int(_get(port, b"/trips")[1]) for port in ports)


def _cpu(pids: list[int]) -> float:
    """
    CPU seconds (user and system) that the processes C{pids} have used, from /proc; 0 where
    there is no /proc.
    """
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            return 0.0
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _PrivateRedis:
    """
    A C{redis-server} of the run's own, on free ports, with C{options}.
    """

    def __init__(self, *options: str) -> None:
        path = shutil.which("redis-server")
        if path is None:
            raise SystemExit(
                "--store needs a Redis: give its URL, or install redis-server "
                "(apt-get install redis-server) for a private one"
            )
        self.port = _freePort()
        self.dir = tempfile.mkdtemp(prefix="txsession-bench-redis-")
        self.process = subprocess.Popen(
            [path, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, *options],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def command(self, *args: str) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(" ".join(args).encode() + b"\r\n")
            return s.recv(65536)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class _TLSRedis:
    """
    A private Redis that also listens with TLS, its certificate (for localhost) from a CA
    made for the run: C{url} is its TLS URL, C{caPath} the CA's PEM file.
    """

    def __init__(self) -> None:
        from txsession._certs import CA

        self.certs = tempfile.mkdtemp(prefix="txsession-bench-tls-")
        ca = CA(self.certs, "bench")
        server = ca.issue("localhost", ("localhost", "127.0.0.1"))
        tlsPort = _freePort()
        self.redis = _PrivateRedis(
            "--tls-port", str(tlsPort),
            "--tls-cert-file", server.path,
            "--tls-key-file", server.keyPath,
            "--tls-ca-cert-file", ca.path,
            "--tls-auth-clients", "no",
        )  # fmt: skip
        self.url = f"rediss://localhost:{tlsPort}/0"
        self.caPath = ca.path

    def close(self) -> None:
        self.redis.close()
        shutil.rmtree(self.certs, ignore_errors=True)


class _Cluster:
    """
    A private Redis Cluster: three primaries, every slot assigned (C{redis-cli --cluster
    create}).
    """

    def __init__(self) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("no redis-cli (apt-get install redis-tools)")
        self.nodes: list[_PrivateRedis] = []
        try:
            for _ in range(3):
                self.nodes.append(
                    _PrivateRedis(
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-port",
                        str(_freePort()),
                    )  # fmt: skip
                )
            subprocess.run(
                [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes)]
                + ["--cluster-yes"],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 30
            while not all(b"cluster_state:ok" in n.command("CLUSTER", "INFO") for n in self.nodes):
                if time.monotonic() > deadline:
                    raise RuntimeError("the cluster did not form within 30 s")
                time.sleep(0.1)
        except BaseException:
            self.close()
            raise
        self.url = "redis://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def close(self) -> None:
        for node in self.nodes:
            node.close()


def _quartiles(samples: list[float]) -> tuple[float, float]:
    if len(samples) < 2:
        return samples[0], samples[0]
    q = statistics.quantiles(samples, n=4, method="inclusive")
    return q[0], q[2]


def main(url: str | None, rounds: int, seconds: float, jsonPath: str | None) -> int:
    private = _PrivateRedis() if url is None else None
    url = url or private.url  # type: ignore[union-attr]
    processes: list[subprocess.Popen[str]] = []
    others: list[_TLSRedis | _Cluster] = []
    scenarios = list(SCENARIOS)
    try:

        def start(mode: str, where: str = url, env: dict[str, str] | None = None) -> int:
            proc = subprocess.Popen(
                [sys.executable, "-m", "txsession.bench", "--store-server", mode, where],
                stdout=subprocess.PIPE,
                text=True,
                env=None if env is None else {**os.environ, **env},
            )
            processes.append(proc)
            port = int(proc.stdout.readline())  # type: ignore[union-attr]
            pids[port] = proc.pid
            return port

        pids: dict[int, int] = {}
        ports = {"twisted": [start("twisted")], "memory": [start("memory")]}
        ports["store"] = [start("store"), start("store")]
        ports["floor"] = [start("floor")]
        ports["nocache"] = [start("nocache")]
        try:
            tls = _TLSRedis()
            others.append(tls)
            ports["tls"] = [start("tls", tls.url, {"TXSESSION_BENCH_CA": tls.caPath})]
        except ImportError as e:
            print(f"  (no TLS row: {e}; install txsession[tls])", flush=True)
        try:
            cluster = _Cluster()
            others.append(cluster)
            ports["cluster"] = [start("cluster", cluster.url)]
        except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
            print(f"  (no Cluster row: {e})", flush=True)
        scenarios = [s for s in SCENARIOS if s[1] in ports]
        print(
            f"store section: {CONNECTIONS} connections with {DEPTH} pipelined requests each, "
            f"{rounds} rounds of {seconds:g} s per scenario, Redis at {url}",
            flush=True,
        )
        results = {}
        for workload, path in WORKLOADS:
            measured = [s for s in scenarios if path == b"/read" or s[1] not in READS_ONLY]
            rates: dict[str, list[float]] = {name: [] for name, _, _ in measured}
            trips: dict[str, list[float]] = {name: [] for name, _, _ in measured}
            cpu: dict[str, list[float]] = {name: [] for name, _, _ in measured}
            for _, mode, count in measured:
                _load(ports[mode][:count], path, min(seconds, 0.5))  # warm-up
            for _ in range(rounds):
                for name, mode, count in measured:
                    used = ports[mode][:count]
                    servers = [pids[port] for port in used]
                    before = _trips(used)
                    cpuBefore = _cpu(servers)
                    rate, made = _load(used, path, seconds)
                    cpu[name].append((_cpu(servers) - cpuBefore) / made * 1e6)
                    trips[name].append((_trips(used) - before) / made)
                    rates[name].append(rate)
            results[workload] = (rates, trips, cpu)
            print(f"  measured: returning session, {workload}", flush=True)
    finally:
        for proc in processes:
            proc.terminate()
            proc.wait()
        if private is not None:
            private.close()
        for other in others:
            other.close()
    print(render(results))
    if jsonPath:
        with open(jsonPath, "w") as f:
            json.dump(
                {
                    workload: {
                        name: {
                            "requests_per_second": rates[name],
                            "round_trips": trips[name],
                            "server_cpu_us_per_request": cpu[name],
                        }
                        for name in rates
                    }
                    for workload, (rates, trips, cpu) in results.items()
                },
                f,
                indent=2,
            )
    return 0


Samples = dict[str, list[float]]


def render(results: dict[str, tuple[Samples, Samples, Samples]]) -> str:
    header = (
        "HTTP, returning session",
        "req/s",
        "(quartiles)",
        "vs txsession in memory",
        "Redis round trips/request",
        "server CPU µs/request",
        "(quartiles)",
    )
    lines = []
    for workload, (rates, trips, cpu) in results.items():
        base = statistics.median(rates["txsession, 1 process, in memory"])
        for name in rates:
            low, high = _quartiles(rates[name])
            lines.append(
                [
                    f"{name}, {workload}",
                    f"{statistics.median(rates[name]):,.0f}",
                    f"({low:,.0f}-{high:,.0f})",
                    f"{statistics.median(rates[name]) / base:.2f}x",
                    f"{statistics.median(trips[name]):.2f}",
                    f"{statistics.median(cpu[name]):.1f}",
                    "({:.1f}-{:.1f})".format(*_quartiles(cpu[name])),
                ]
            )
    return table(header, lines)
