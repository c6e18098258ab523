"""
The session store's consistency model (README.md, "Several processes"; DESIGN.md, "How a
request flows"), checked by random interleavings with faults: several sites, each with its own
L{RedisStore} (as separate processes have), served over real HTTP on loopback, each store
talking to one real C{redis-server} through its own fault-injecting proxy (L{tests._proxy}).

A I{program} (drawn by hypothesis) is a list of steps: requests of a few clients (each a real
twisted.web Agent with its own cookie jar: one user each), sent to a random site without
waiting, so that several requests of one client (one cookie) run at once; faults on one proxy
or all (latency with jitter, slicer, stall then release, cut, data limit, Redis unreachable);
and waits for a client's requests. A request may also hang up: its client aborts the
connection a few milliseconds after sending it, if no answer has come by then, whatever the
server is doing with it. Pages (from L{tests.apps.store_app}, plus two of this
module that answer the ids they acted on):
C{/get}, C{/set?key=K&value=V[&delay=S]}, C{/del?key=K}, C{/renew-ids[?delay=S]}
(renewSession; answers the old and new id), C{/logout-ids[?delay=S]} (expire(); answers the
id it ended),
C{/fail?key=K&value=V[&delay=S]} (sets, then fails: a 500), C{/bad?key=K} (an unencodable
value: a 500). Keys are a, b and c; every value is unique to the step that writes it, so the
checker tells writes apart. Cookies sent are the jar's, sometimes with junk beside them:
cookies named like session cookies (C{TWISTED_SESSION_0=junk}, or a dozen of them), a second
C{TWISTED_SESSION} before or after the real one (Twisted reads the last), the client's own old
ids, a secure cookie over plain HTTP.

After the steps, faults are cleared, requests in flight finish, each client reads its session
on every site, Redis is read directly, and every dead id (logged out, or renamed) is probed on
every site behind a flood of look-alike cookies and with other junk. Then the checker
(L{_Checker}) holds the history to the model (README.md, "The consistency model"):
- a 200's writes are in Redis under the session's live id (after a renewal, its new id),
  unless a request that started after that 200 ended overwrote or deleted the key, or the
  session was logged out; a read (any 200 answering the values) sees, for each key, a value
  no request had overwritten before the read started (a change still in flight in the same
  process counts: a request uses its process's copy);
- after a logout's 200, no request, whatever cookies it carries, gets that session's id or
  any of its values back, on any site, and Redis holds neither; a renewed session's old id
  gets a new session; a request carrying the live id of a session nobody renewed or logged
  out gets that session;
- a request that read a session and writes after it was logged out (anywhere) or renamed (in
  another process) gets a 409, never a 200: a page with a delay cannot write before its delay
  has passed since it was sent, so a logout or renewal answered before that came first;
- a request whose client hung up is indeterminate, as a 503 is, until the last moment its
  process can write anything of it: after the page's delay, once every Redis command its
  site had sent by then has answered (L{_Run.hangUp}). Redis is read then; a value it set
  that Redis does not hold at that moment never appears later (in Redis, or to a request
  that saw its session after that), unless a request of the same process that ran beside it
  carried it;
- definite failures (a 500, or a 409: "nothing of this request's") leave no value in Redis,
  and no later request sees it, except through another request of the same process that ran
  alongside on the same session (README: a change made while several requests use the session
  counts as each one's, and a failure leaves a key another running request also sees
  changed); 503 and 409 are the only failures a request may answer (a 500 too for /fail and
  /bad, and for a request that ran alongside a /bad in its process, whose unencodable value it
  shares); a 503 is indeterminate: its write may or may not have been applied;
- every key in Redis has a TTL; every value in Redis was written to that session (a session
  no client saw may hold indeterminate writes: a new session whose first write's answer was
  lost);
- nothing logs an error other than the store's expected failures and the pages' own.

The proxy aborts both sides of a connection when either aborts it (an RST), dropping what it
holds: a command held by a stall or a latency is never applied after its client gave up on it,
so an indeterminate write took effect, if at all, before its 503 was answered, and a request
that started after it can overwrite it.

How hypothesis runs under trial (and pytest, which runs these trial TestCases). A run is
reactor-driven (HTTP, Redis, timers), and trial's reactor cannot be spun re-entrantly from
inside a test, nor can a second reactor run; but hypothesis's engine is synchronous: it calls
the test function and wants it to pass or raise. So the engine runs in a plain worker thread,
started by the test method, which returns a Deferred fired (through C{callFromThread}) when
the engine is done. For each example the worker hands the program to the reactor thread with
C{callFromThread} and blocks on a queue until that run's report comes back; every Twisted
object (sites, stores, proxies, clients) is made, used and closed on the reactor thread only,
while trial's reactor keeps spinning. The worker raises AssertionError for a run with
violations, so hypothesis's whole machinery works: generation, targeting (each run reports
its 409s, 503s and overlapping requests to C{target()}, so hypothesis steers toward
contention), and (outside the quick CI profile) shrinking. Generation is deterministic given
the seed (printed; C{database=None}): C{TXSESSION_MODEL_SEED=N}, with the same number of runs,
regenerates the same programs (their timing on the machine is not deterministic). A failure
prints every failing run's violations, then the smallest failing run whole: its violations,
its history (sends and answers in one event order, with sites, cookies, status codes and
bodies, and the faults), Redis at the end, and its program. C{TXSESSION_MODEL_REPLAY=FILE}
runs a program saved to FILE (C{TXSESSION_MODEL_REPEAT=N} times) instead of searching;
C{TXSESSION_MODEL_KEEP_GOING=1} searches on after a failing run and reports them all, and
C{TXSESSION_MODEL_VERBOSE=1} prints every run's history.

Modes: the hypothesis profile (tests/__init__.py, C{HYPOTHESIS_PROFILE}) sets how many runs:
a sixth of its C{max_examples}, so "ci" (the default) makes 25 runs (15 to 30 seconds),
"soak" 833 (about 12 minutes), with shrinking; C{TXSESSION_MODEL_EXAMPLES=N} overrides. Each
search prints a one-line summary (runs, requests, faults, violations, seed); pytest shows it
with C{-s}. The rest of the module tests the proxy itself and the checker on made-up
histories.
"""

from __future__ import annotations

import ast
import gc
import hashlib
import itertools
import json
import os
import queue
import random
import re
import threading
from dataclasses import dataclass, field
from http.cookiejar import CookieJar
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings, target
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web import resource, server
from twisted.web.client import Agent, CookieAgent, ResponseDone
from twisted.web.http_headers import Headers

import txsession
from tests._proxy import BOTH, DOWNSTREAM, UPSTREAM, FaultProxy
from tests._redis import sessionKey
from tests.apps import store_app
from tests.test_store import StoreTestCase
from txsession.redis import RedisStore
from txsession.store import SessionEnded, StoreUnavailable, UnserializableValue

COOKIE = "TWISTED_SESSION"
KEYS = ("a", "b", "c")
# Seconds: the stores' timeout for Redis, the sessions' idle timeout, and how long a request
# may take before the harness calls it unanswered.
STORE_TIMEOUT = 0.5
SESSION_TIMEOUT = 60.0
ANSWER_LIMIT = 10.0

_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
EXAMPLES = int(
    os.environ.get("TXSESSION_MODEL_EXAMPLES") or max(3, settings.default.max_examples // 6)
)
MAX_STEPS = 30 if _PROFILE == "ci" else 45
VERBOSE = bool(os.environ.get("TXSESSION_MODEL_VERBOSE"))
KEEP_GOING = bool(os.environ.get("TXSESSION_MODEL_KEEP_GOING"))
SEED = int(os.environ.get("TXSESSION_MODEL_SEED") or random.SystemRandom().randrange(2**32))

# Choices for the programs; sampled_from shrinks toward the first.
OPS = ("get", "set", "set", "set", "del", "renew", "logout", "fail", "bad")
JUNK = (
    None,
    None,
    None,
    "named-before",
    "named-after",
    "dup-before",
    "dup-after",
    "old-named",
    "old-before",
    "old-after",
    "secure-old",
    "flood-before",
)
DELAYS = (0, 0, 30, 150, 400)  # ms, for /set, /fail, /renew-ids and /logout-ids
GAPS = (0, 0, 0, 3, 10, 40, 120)  # ms after a step
FAULTS = ("latency", "slicer", "stall", "cut", "limit", "down")
DIRECTIONS = (BOTH, UPSTREAM, DOWNSTREAM)
DURATIONS = (40, 150, 400, 900)  # ms a fault lasts
LATENCIES = (20, 80, 250, 600)  # ms, jitter half of it
SLICES = (1, 2, 5, 24)  # bytes
STALL_CLOSE = (None, None, 200, 800)  # ms after which a stalled connection is aborted
LIMITS = (1, 9, 60, 400)  # bytes
# Ms after a request is sent at which its client hangs up (aborts its connection) if it has
# no answer yet; None: it waits for the answer.
HANGUPS = (None, None, None, None, None, 0, 15, 80, 300)

# Look-alike session cookies, more than a site might read, before the real one.
_FLOOD = "; ".join(f"TWISTED_SESSION_{i}=junk{i}" for i in range(12))
# Probes of a dead id on each site: the flood first (before any probe makes that site read
# the id and drop a stale copy), then one of the others, rotated.
PROBES = (
    _FLOOD + "; {c}={u}",
    "{c}={u}",
    "{c}_0=junk; {c}={u}",
    "{c}={u}; {c}_0=junk",
    "{c}=junk; {c}={u}",
    "{c}_0={u}; {c}={u}",
)

_UID = re.compile(r"^[0-9a-f]{64}$")
ABSENT = None


@st.composite
def programs(draw, maxSteps=MAX_STEPS):
    """
    A program: how many sites and clients, a seed for the proxies' jitter, and the steps.
    """
    sites = draw(st.integers(2, 3))
    clients = draw(st.integers(1, 2))
    request = st.tuples(
        st.just("req"),
        st.integers(0, clients - 1),
        st.integers(0, sites - 1),
        st.sampled_from(OPS),
        st.sampled_from(KEYS),
        st.sampled_from(DELAYS),
        st.sampled_from(JUNK),
        st.integers(0, 7),
        st.sampled_from(GAPS),
        st.sampled_from(HANGUPS),
    )
    fault = st.tuples(
        st.just("fault"),
        st.integers(-1, sites - 1),
        st.sampled_from(FAULTS),
        st.sampled_from(DIRECTIONS),
        st.integers(0, 3),
        st.sampled_from(DURATIONS),
        st.sampled_from(GAPS),
    )
    wait = st.tuples(st.just("wait"), st.integers(-1, clients - 1))
    kinds = {"req": request, "fault": fault, "wait": wait}
    step = st.sampled_from(["req"] * 5 + ["fault"] * 2 + ["wait"]).flatmap(kinds.__getitem__)
    steps = draw(st.lists(step, min_size=maxSteps // 3, max_size=maxSteps))
    return {
        "sites": sites,
        "clients": clients,
        "seed": draw(st.integers(0, 2**32 - 1)),
        "steps": steps,
    }


# The harness: a run of one program, on the reactor.


def _answerLater(request, answer):
    """
    Answer C{request} with the JSON of C{answer()}, at once or after its C{delay} seconds.
    """
    values = request.args.get(b"delay")
    delay = float(values[0]) if values else 0.0

    def body():
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(answer()).encode()

    if not delay:
        return body()

    def answerNow():
        # What the page does, it does whether or not its client is still there (a
        # renewal or a logout included); only the answer goes nowhere when it left.
        try:
            data = body()
        except Exception:
            if not request._disconnected:
                request.processingFailed(Failure())
            return
        if not request._disconnected:
            request.write(data)
            request.finish()

    store_app.later(request, delay, answerNow)
    return server.NOT_DONE_YET


class _RenewIds(resource.Resource):
    """
    renewSession, as the app's /renew (after C{delay} seconds, the session got at once),
    answering the id it renewed from as well.
    """

    isLeaf = True

    def render_GET(self, request):
        request.getSession()
        store_app.noteRendered(request)

        def answer():
            old = request.getSession().uid
            session = txsession.renewSession(request)
            return store_app.cachedFrom(
                request,
                old,
                {
                    "session": session.uid.decode(),
                    "from": old.decode(),
                    "values": dict(session.sessionNamespaces),
                },
            )

        return _answerLater(request, answer)


class _LogoutIds(resource.Resource):
    """
    expire(), as the app's /logout (after C{delay} seconds, the session got at once),
    answering the id it ended; C{"ended": null} when another request of this process ended
    the session meanwhile (a second expire() would raise KeyError, as Twisted's does).
    """

    isLeaf = True

    def render_GET(self, request):
        session = request.getSession()
        store_app.noteRendered(request)

        def answer():
            uid = session.uid
            if request.site.sessions.get(uid) is not session:
                return store_app.cachedFrom(request, uid, {"ended": None, "gone": uid.decode()})
            session.expire()
            # A copy used without reading it may be one whose logout elsewhere has not been
            # pushed here yet (README: the push's delivery is the window).
            return store_app.cachedFrom(request, uid, {"ended": uid.decode()})

        return _answerLater(request, answer)


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


class _Body(protocol.Protocol):
    def __init__(self, done: defer.Deferred[bytes]) -> None:
        self.done = done
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if reason.check(ResponseDone):
            self.done.callback(self.data)
        else:
            self.done.errback(reason)


def _short(header: str) -> str:
    return header.replace(_FLOOD, "<12 look-alikes>")


def _readBody(response) -> defer.Deferred[bytes]:
    """
    The whole body of C{response} (as readBody, without its warning about transports).
    """

    def cancel(_: object) -> None:
        abort = getattr(body.transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            body.transport.stopProducing()

    done: defer.Deferred[bytes] = defer.Deferred(cancel)
    body = _Body(done)
    response.deliverBody(body)
    return done


def effectiveCookie(header: str) -> str | None:
    """
    The session cookie a site reads from a Cookie header: Twisted keeps the last of a name.
    """
    found = None
    for part in header.split(";"):
        name, equals, value = part.lstrip().partition("=")
        if equals and name == COOKIE:
            found = value
    return found


@dataclass(eq=False)
class _Record:
    """
    One request: what was sent, when, and what came back.
    """

    id: int
    kind: str  # "step", "final" (the reads at the end) or "probe" (of a dead id)
    client: int
    site: int
    op: str
    key: str | None = None
    value: int | None = None
    delay: int = 0
    junk: str | None = None
    cookie: str = ""
    carried: str | None = None
    start: int = 0
    end: float = float("inf")
    t0: float = 0.0
    t1: float | None = None
    status: int | None = None
    error: str | None = None
    body: Any = None
    setCookies: list[str] = field(default_factory=list)
    # Ms after the send at which the client hangs up if unanswered; whether it did (then
    # end is when its site had answered every Redis command sent by then, and after the
    # page's delay: the last instant anything of it may land).
    hangup: int | None = None
    hungUp: bool = False
    # Whether its site had a Redis command in flight when the client hung up; and, for one
    # that sets a value, whether Redis held that value when the record ended.
    hungUpInFlight: bool = False
    landed: bool | None = None

    @property
    def session(self) -> str | None:
        return self.body.get("session") if isinstance(self.body, dict) else None

    @property
    def values(self) -> dict[str, Any] | None:
        return self.body.get("values") if isinstance(self.body, dict) else None

    @property
    def renamedFrom(self) -> str | None:
        return self.body.get("from") if isinstance(self.body, dict) else None

    @property
    def cachedFrom(self) -> int | None:
        """
        When the copy this request used without reading it was read (its stamp made), as
        an event number; None when it read its session (or made it).
        """
        return self.body.get("cachedFrom") if isinstance(self.body, dict) else None

    @property
    def rendered(self) -> int | None:
        return self.body.get("rendered") if isinstance(self.body, dict) else None

    @property
    def ended(self) -> str | None:
        return self.body.get("ended") if isinstance(self.body, dict) else None

    @property
    def got(self) -> str | None:
        """
        The session the request found or made (before a renewal renamed it).
        """
        return self.renamedFrom if self.op == "renew" else self.ended or self.session


@dataclass(eq=False)
class _Fault:
    step: int
    kind: str
    target: int
    direction: str
    param: Any
    duration: int
    start: int
    t0: float
    end: int | None = None
    t1: float | None = None


class _Client:
    """
    One user: a real Agent with its own cookie jar, and the session ids the jar has held.
    """

    def __init__(self, index: int) -> None:
        self.index = index
        self.jar = CookieJar()
        self.agent = CookieAgent(Agent(reactor), self.jar)
        self.held: list[str] = []
        self.inflight: set[defer.Deferred[Any]] = set()

    def current(self) -> str | None:
        for cookie in self.jar:
            if cookie.name == COOKIE:
                return cookie.value
        return None

    def noteJar(self) -> None:
        current = self.current()
        if current is not None and current not in self.held:
            self.held.append(current)

    def header(self, junk: str | None, pick: int) -> str:
        """
        The Cookie header: the jar's session cookie, and the junk asked for beside it.
        """
        current = self.current()
        real = [f"{COOKIE}={current}"] if current else []
        old = [uid for uid in self.held if uid != current]
        # Without an old id of its own, a well-formed id that was never issued.
        stale = old[pick % len(old)] if old else "f" * 64
        parts = {
            None: real,
            "named-before": [f"{COOKIE}_0=junk"] + real,
            "named-after": real + [f"{COOKIE}_0=junk"],
            "dup-before": [f"{COOKIE}=junk"] + real,
            "dup-after": real + [f"{COOKIE}=junk"],
            "old-named": [f"{COOKIE}_0={stale}"] + real,
            "old-before": [f"{COOKIE}={stale}"] + real,
            "old-after": real + [f"{COOKIE}={stale}"],
            "secure-old": [f"TWISTED_SECURE_SESSION={stale}"] + real,
            "flood-before": [_FLOOD] + real,
        }[junk]
        return "; ".join(parts)


@dataclass
class _Report:
    number: int
    program: dict[str, Any]
    requests: int
    faults: int
    violations: list[str]
    text: str
    hangups: int
    # For hypothesis's targeting: how contended the run was.
    scores: dict[str, float] = field(default_factory=dict)


class _Run:
    """
    One program run against fresh sites, stores and proxies, on the reactor thread.
    """

    def __init__(self, case: ModelTests, program: dict[str, Any], number: int) -> None:
        self.case = case
        self.redis = case.redis
        self.program = program
        self.number = number
        self.events = 0
        self.t0 = reactor.seconds()
        self.records: list[_Record] = []
        self.faults: list[_Fault] = []
        self.timers: list[Any] = []
        self.portChanges: list[defer.Deferred[None]] = []
        self.proxies: list[FaultProxy] = []
        # Each invalidation a site's store processed: (event, site, keys or None for all).
        self.pushes: list[tuple[int, int, list[bytes] | None]] = []
        self.sites: list[Any] = []
        self.ports: list[Any] = []
        self.clients = [_Client(i) for i in range(program["clients"])]

    def tick(self) -> int:
        self.events += 1
        return self.events

    def now(self) -> float:
        return reactor.seconds() - self.t0

    async def run(self) -> _Report:
        self.redis.command(b"FLUSHALL")
        state: dict[bytes, Any] = {}
        after: dict[bytes, Any] = {}
        try:
            self.setUp()
            await self.drive()
            await self.settle()
            await self.finalReads()
            state = dumpRedis(self.redis)
            await self.probe(_Checker(self.records, state).deadNames())
            after = dumpRedis(self.redis)
        finally:
            await self.tearDown()
        errors = self.loggedErrors()
        checker = _Checker(self.records, state, after, errors, self.pushes)
        violations = checker.check()
        text = ""
        if violations or VERBOSE:
            text = formatReport(self, checker, violations, state)
        if VERBOSE:
            print(text, flush=True)
        steps = [r for r in self.records if r.kind == "step"]
        overlaps = sum(
            1
            for i, r in enumerate(steps)
            for o in steps[i + 1 :]
            if o.client == r.client and o.start < r.end
        )
        scores = {
            "conflicts (409)": float(sum(r.status == 409 for r in steps)),
            "indeterminate (503)": float(sum(r.status == 503 for r in steps)),
            "overlapping requests of a client": float(overlaps),
            "hang-ups with a command in flight": float(sum(r.hungUpInFlight for r in steps)),
        }
        return _Report(
            self.number,
            self.program,
            len(self.records),
            len(self.faults),
            violations,
            text,
            sum(r.hungUp for r in steps),
            scores,
        )

    def setUp(self) -> None:
        rng = random.Random(self.program["seed"])
        for _ in range(self.program["sites"]):
            proxy = FaultProxy(self.redis.port, seed=rng.randrange(2**32))
            self.proxies.append(proxy)
            store = RedisStore(f"redis://127.0.0.1:{proxy.port}/0", timeout=STORE_TIMEOUT)
            site = store_app.makeSite(store, SESSION_TIMEOUT)
            site.resource.putChild(b"renew-ids", _RenewIds())
            site.resource.putChild(b"logout-ids", _LogoutIds())
            self.watchCache(site, len(self.sites))
            self.watchCommands(site)
            site.modelPages = {}
            port = reactor.listenTCP(0, site, interface="127.0.0.1")
            site.base = b"http://127.0.0.1:%d/" % port.getHost().port
            self.sites.append(site)
            self.ports.append(port)

    def watchCommands(self, site: Any) -> None:
        """
        Keep in C{site.modelPending} the Redis commands its store has sent and that have not
        answered yet (for a request whose client hung up: see L{hangUp}).
        """
        client = site.store._client
        execute = client.execute
        pending = site.modelPending = {}
        numbers = itertools.count()

        def watched(commands, then=None, answer=None):
            number = next(numbers)
            pending[number] = None

            def answered(result):
                pending.pop(number, None)
                return result if answer is None else answer(result)

            try:
                if answer is not None:
                    # Answered without a Deferred (a request's lone session write).
                    return execute(commands, then, answered)
                sent = execute(commands, then)
            except BaseException:
                del pending[number]
                raise
            return sent.addBoth(answered)

        client.execute = watched

    def watchCache(self, site: Any, index: int) -> None:
        """
        Note, as events, when each stamp of C{site}'s cache was made and each invalidation
        was processed, for the checker (a request that used a copy without reading it
        answers when its stamp was made, and when it rendered).
        """
        tracker = site.store._tracker
        ticks = site.modelStampTicks = {}
        site.modelTick = self.tick
        replied, pushed = tracker.replied, tracker.pushed

        def noteReplied(protocol, command, reply):
            replied(protocol, command, reply)
            stamp = tracker.stamps.get(command.key) if command.key else None
            if stamp is not None and stamp not in ticks:
                ticks[stamp] = self.tick()

        def notePushed(protocol, push):
            pushed(protocol, push)
            if len(push) >= 2 and push[0] == b"invalidate":
                self.pushes.append((self.tick(), index, push[1]))

        tracker.replied, tracker.pushed = noteReplied, notePushed

    async def drive(self) -> None:
        for index, step in enumerate(self.program["steps"]):
            gap = 0
            if step[0] == "req":
                _, client, site, op, key, delay, junk, pick, gap, hangup = step
                self.issue(
                    self.clients[client % len(self.clients)],
                    site % len(self.sites),
                    op,
                    key=key if op in ("set", "del", "fail", "bad") else None,
                    value=index + 1 if op in ("set", "fail") else None,
                    delay=delay if op in ("set", "fail", "renew", "logout") else 0,
                    junk=junk,
                    pick=pick,
                    hangup=hangup,
                )
            elif step[0] == "fault":
                _, target, kind, direction, param, duration, gap = step
                self.fault(index, target, kind, direction, param, duration)
            elif step[0] == "wait":
                await self.waitFor(step[1])
            if gap:
                await sleep(gap / 1000.0)

    def issue(
        self,
        client: _Client,
        site: int,
        op: str,
        key: str | None = None,
        value: int | None = None,
        delay: int = 0,
        junk: str | None = None,
        pick: int = 0,
        kind: str = "step",
        header: str | None = None,
        hangup: int | None = None,
    ) -> defer.Deferred[_Record]:
        page = {"renew": "renew-ids", "logout": "logout-ids"}.get(op, op)
        query = []
        if op in ("set", "del", "fail", "bad"):
            query.append(f"key={key}")
        if value is not None:
            query.append(f"value={value}")
        if delay:
            query.append(f"delay={delay / 1000.0}")
        record = _Record(
            id=len(self.records) + 1,
            kind=kind,
            client=client.index,
            site=site,
            op=op,
            key=key,
            value=value,
            delay=delay,
            junk=junk,
            cookie="",
            carried=None,
            hangup=hangup,
        )
        if hangup is not None:
            # The page's delayed part is known by this id (see hangUp).
            query.append(f"rid={record.id}")
        path = page + ("?" + "&".join(query) if query else "")
        if header is None:
            header = client.header(junk, pick)
        record.cookie = header
        record.carried = effectiveCookie(header)
        self.records.append(record)
        record.start = self.tick()
        record.t0 = self.now()
        fetching = defer.ensureDeferred(
            self.fetch(client, self.sites[site].base + path.encode(), header, record)
        )
        if hangup is not None:
            fetching = defer.ensureDeferred(self.hangUp(fetching, record))
        fetching.addTimeout(ANSWER_LIMIT, reactor)
        fetching.addErrback(lambda f: self.answered(record, client, None, None, repr(f.value)))
        client.inflight.add(fetching)
        fetching.addBoth(lambda _: (client.inflight.discard(fetching), record)[1])
        return fetching

    async def fetch(self, client: _Client, url: bytes, header: str, record: _Record) -> None:
        headers = Headers({b"cookie": [header.encode()]} if header else {})
        try:
            response = await client.agent.request(b"GET", url, headers)
            for raw in response.headers.getRawHeaders(b"set-cookie", []):
                name, _, rest = raw.decode("latin-1").partition("=")
                if name == COOKIE:
                    record.setCookies.append(rest.split(";", 1)[0])
            body = await _readBody(response)
        except Exception as e:
            if not record.hungUp:
                self.answered(record, client, None, None, repr(e))
            return
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = body.decode("latin-1")[:60]
        self.answered(record, client, response.code, parsed, None)

    async def hangUp(self, fetching: defer.Deferred[None], record: _Record) -> None:
        """
        The client of C{record} hangs up (aborts its connection) C{record.hangup} ms after
        the send if no answer has come by then. What the server does with the request goes
        on without it: the record ends once the page's delay has passed, its delayed part
        has run (later than that when its session read was slow), and every Redis command
        its site had sent by then has answered, after which nothing of it can land (the
        proxy drops what a store gave up on).
        """

        def abort() -> None:
            if record.t1 is None:
                record.hungUp = True
                record.hungUpInFlight = bool(self.sites[record.site].modelPending)
                fetching.cancel()

        timer = reactor.callLater(record.hangup / 1000.0, abort)
        try:
            await fetching
        except defer.CancelledError:
            pass
        finally:
            if timer.active():
                timer.cancel()
        if not record.hungUp:
            return
        site = self.sites[record.site]
        # 20 ms more: the server reads the request and sees the connection lost in a turn or
        # two of the reactor, and a page's delayed action runs at its delay.
        left = record.t0 + record.delay / 1000.0 + 0.02 - self.now()
        if left > 0:
            await sleep(left)
        rid = str(record.id)
        while True:
            # A read that answers now may let the page render, and file its delayed part.
            while rid in site.modelPages:
                await sleep(0.005)
            sent = set(site.modelPending)
            while sent & site.modelPending.keys():
                await sleep(0.005)
            if rid not in site.modelPages:
                break
        record.end = self.tick()
        record.t1 = self.now()
        record.error = "hung up"
        if record.value is not None:
            record.landed = bool(holding(dumpRedis(self.redis), record.value))
        self.clients[record.client].noteJar()

    def answered(self, record, client, status, body, error) -> None:
        if record.t1 is not None:
            return
        record.end = self.tick()
        record.t1 = self.now()
        record.status = status
        record.body = body
        record.error = error
        client.noteJar()

    async def waitFor(self, client: int) -> None:
        clients = self.clients if client < 0 else [self.clients[client % len(self.clients)]]
        waits = [d for c in clients for d in c.inflight]
        if waits:
            await defer.DeferredList(waits, consumeErrors=True)

    def fault(self, step, target, kind, direction, param, duration) -> None:
        proxies = self.proxies if target < 0 else [self.proxies[target % len(self.proxies)]]
        shown = {
            "latency": LATENCIES[param],
            "slicer": SLICES[param],
            "stall": STALL_CLOSE[param],
            "cut": None,
            "limit": LIMITS[param],
            "down": "refuse" if param % 2 == 0 else "close",
        }[kind]
        record = _Fault(step, kind, target, direction, shown, duration, self.tick(), self.now())
        self.faults.append(record)
        clears = []
        for proxy in proxies:
            if kind == "latency":
                proxy.latency(shown, shown / 2, direction)
                clears.append(lambda p=proxy: p.latency(0, 0, direction))
            elif kind == "slicer":
                proxy.slicer(shown, shown // 2, 0.5, direction)
                clears.append(lambda p=proxy: p.slicer(None, direction=direction))
            elif kind == "stall":
                proxy.stall(direction, closeAfter=shown)
                clears.append(lambda p=proxy: p.release(direction))
            elif kind == "cut":
                proxy.cut()
            elif kind == "limit":
                proxy.limitData(shown, direction)
                clears.append(lambda p=proxy: p.limitData(None, direction))
            elif kind == "down":
                self.portChanges.append(proxy.down(refuse=shown == "refuse"))
                clears.append(lambda p=proxy: self.portChanges.append(p.up()))
        if not clears:
            record.end, record.t1 = record.start, record.t0
            return

        def clear():
            record.end, record.t1 = self.tick(), self.now()
            for undo in clears:
                undo()

        self.timers.append(reactor.callLater(duration / 1000.0, clear))

    async def settle(self) -> None:
        """
        Clear every fault, wait for the proxies to accept again and every request to end.
        """
        for timer in self.timers:
            if timer.active():
                timer.cancel()
        for fault in self.faults:
            if fault.end is None:
                fault.end, fault.t1 = self.tick(), self.now()
        await defer.gatherResults([p.reset() for p in self.proxies] + self.portChanges)
        await self.waitFor(-1)

    async def finalReads(self) -> None:
        """
        Each client reads its session on every site (again while the store reconnects).
        """
        for client in self.clients:
            for site in range(len(self.sites)):
                for _ in range(60):
                    record = await self.issue(client, site, "get", kind="final")
                    if record.status != 503:
                        break
                    await sleep(0.05)

    async def probe(self, deadNames: list[tuple[str, str]]) -> None:
        """
        Each dead id on every site, with junk cookies beside it: never its session again.
        """
        prober = _Client(-1)
        pairs = [(uid, site) for uid, _ in deadNames[:10] for site in range(len(self.sites))]
        # Every flood first: a plain probe can make a site drop a stale copy a flood would show.
        probes = [PROBES[0] for _ in pairs] + [
            PROBES[1 + n % (len(PROBES) - 1)] for n in range(len(pairs))
        ]
        for (uid, site), probe in zip(pairs + pairs, probes):
            header = probe.format(c=COOKIE, u=uid)
            await self.issue(prober, site, "get", kind="probe", header=header)

    async def tearDown(self) -> None:
        for timer in self.timers:
            if timer.active():
                timer.cancel()
        for proxy in self.proxies:
            await proxy.reset()
        await self.waitFor(-1)
        for site, port in zip(self.sites, self.ports):
            await port.stopListening()
            self.case.endSessions(site)
            await site.store.close()
        await defer.gatherResults([proxy.stop() for proxy in self.proxies])
        await sleep(0.01)

    def loggedErrors(self) -> list[Failure]:
        gc.collect()
        return self.case.flushLoggedErrors()


# Redis, read directly.

_DUMP = b"""
local out = {}
for _, k in ipairs(redis.call('KEYS', '*')) do
  local t = redis.call('TYPE', k).ok
  local fields = {}
  if t == 'hash' then fields = redis.call('HGETALL', k) end
  out[#out + 1] = k
  out[#out + 1] = t
  out[#out + 1] = tostring(redis.call('PTTL', k))
  out[#out + 1] = tostring(#fields)
  for _, f in ipairs(fields) do out[#out + 1] = f end
end
return out
"""


@dataclass
class _Key:
    type: str
    pttl: int
    fields: dict[str, bytes]


def dumpRedis(server) -> dict[bytes, _Key]:
    """
    Every key in Redis: its type, PTTL and (for a hash) fields, read in one script.
    """
    reply = server.command(b"EVAL", _DUMP, b"0")
    items = _bulks(reply)
    state = {}
    i = 0
    while i < len(items):
        key, kind, pttl, count = (
            items[i],
            items[i + 1].decode(),
            int(items[i + 2]),
            int(items[i + 3]),
        )
        flat = items[i + 4 : i + 4 + count]
        state[key] = _Key(kind, pttl, {f.decode(): v for f, v in zip(flat[::2], flat[1::2])})
        i += 4 + count
    return state


def _bulks(reply: bytes) -> list[bytes]:
    if not reply.startswith(b"*"):
        raise AssertionError(f"Redis answered the dump with {reply[:200]!r}")
    end = reply.index(b"\r\n")
    count, i, items = int(reply[1:end]), end + 2, []
    for _ in range(count):
        end = reply.index(b"\r\n", i)
        length = int(reply[i + 1 : end])
        items.append(reply[end + 2 : end + 2 + length])
        i = end + 2 + length + 2
    return items


def _memberOf(key: bytes) -> str | None:
    """
    What a session key holds of its id (its SHA-256, hex), or C{None} for another key.
    """
    prefix = b"txsession:"
    return key[len(prefix) :].decode() if key.startswith(prefix) else None


def holding(state: dict[bytes, _Key], value: int) -> list[tuple[bytes, str]]:
    """
    Where Redis, as read into C{state}, holds C{value}: each key and namespace key.
    """
    return [
        (key, name[2:])
        for key, stored in state.items()
        for name, raw in stored.fields.items()
        if name.startswith("n:") and _decoded(raw) == value
    ]


def _decoded(raw: bytes | None) -> Any:
    if raw is None:
        return ABSENT
    try:
        return json.loads(raw)
    except ValueError:
        return raw


# The checker: a history and what Redis holds, against the model.


class _Checker:
    """
    Holds a run's history (requests and their answers, Redis at the end, errors logged) to
    the store's consistency model; L{check} returns the violations, each a sentence naming
    the requests involved.

    Sessions are followed through renewals as I{lineages}: ids joined by a renewal's answer
    (old and new id), by an answer naming another id than the cookie without setting a cookie
    (renamed in that process while the request ran), and by a renamed key's tombstone in Redis.
    A request is attributed to the lineage its 200 names (definitely), or to the one its
    cookie (or the cookie it was set) names (possibly: it failed, and may have used another).
    """

    def __init__(self, records, state, after=None, errors=(), pushes=()):
        self.records = sorted(records, key=lambda r: r.start)
        self.pushes = list(pushes)
        self.state = state
        self.after = after if after is not None else {}
        self.errors = list(errors)
        self.parent: dict[str, str] = {}
        self.setCookies = {uid for r in self.records for uid in r.setCookies}
        self.uids: list[str] = []
        for r in self.records:
            for uid in [r.carried, r.session, r.renamedFrom, r.ended, *r.setCookies]:
                self.known(uid)
        # The ids some request or answer showed; a session in Redis under none of them was
        # made by a request that failed indeterminately (an orphan nobody can use). Redis
        # names a session by its id's hash: an orphan goes by that hash.
        self.seen = set(self.uids)
        self.ids = {hashlib.sha256(uid.encode()).hexdigest(): uid for uid in self.uids}
        for key, stored in state.items():
            uid = self.uidOf(key)
            self.known(uid)
            target = stored.fields.get("m:f")
            if uid is not None and target is not None:
                target = self.ids.get(target.decode(), target.decode())
                self.known(target)
                self.union(uid, target)
        for r in self.records:
            if r.status != 200:
                continue
            if r.op == "renew" and r.renamedFrom and r.session:
                self.union(r.renamedFrom, r.session)
            elif (
                r.session
                and self.isUid(r.carried)
                and r.session != r.carried
                and r.session not in self.setCookies
            ):
                self.union(r.carried, r.session)
        self.labels: dict[str, int] = {}
        for uid in self.uids:
            self.labels.setdefault(self.find(uid), len(self.labels) + 1)
        self.writer = {r.value: r for r in self.records if r.value is not None}
        self.writes: dict[tuple[str, str], list[_Record]] = {}
        for r in self.records:
            lineage = self.lineage(r)
            if r.op in ("set", "del", "fail") and r.kind == "step" and lineage is not None:
                self.writes.setdefault((lineage, r.key), []).append(r)
        # A failed request's change, carried by another request of the same process on the same
        # session that ran alongside it (README: a change made while several requests use the
        # session counts as each one's; a failure leaves a key another running request also
        # sees changed): it may be written when that request writes, up to when it ended.
        self.carriedBy: dict[_Record, list[_Record]] = {}
        for w in self.records:
            if (
                w.kind != "step"
                or w.op not in ("set", "del", "fail")
                or (self.outcome(w) != "failed" and not w.hungUp)
            ):
                continue
            carriers = [
                r
                for r in self.records
                if r is not w
                and r.kind != "probe"
                and r.site == w.site
                and r.op in ("get", "set", "del", "renew")
                and self.outcome(r) in ("ok", "maybe")
                and r.start < w.end
                and r.end > w.start
                and self.lineage(r) is not None
                and self.lineage(r) == self.lineage(w)
            ]
            if carriers:
                self.carriedBy[w] = carriers

    # Lineages.

    @staticmethod
    def isUid(uid: str | None) -> bool:
        return uid is not None and bool(_UID.match(uid))

    def known(self, uid: str | None) -> None:
        if self.isUid(uid) and uid not in self.parent:
            self.parent[uid] = uid
            self.uids.append(uid)

    def find(self, uid: str) -> str:
        self.known(uid)
        while self.parent[uid] != uid:
            self.parent[uid] = self.parent[self.parent[uid]]
            uid = self.parent[uid]
        return uid

    def union(self, a: str, b: str) -> None:
        if self.isUid(a) and self.isUid(b):
            self.parent[self.find(a)] = self.find(b)

    def names(self, lineage: str) -> list[str]:
        return [uid for uid in self.uids if self.find(uid) == lineage]

    def lineage(self, r: _Record) -> str | None:
        """
        The lineage a request used: the one its 200 names, else the one its cookies name.
        """
        if r.status == 200 and self.isUid(r.got):
            return self.find(r.got)
        uid = r.setCookies[-1] if r.setCookies else r.carried
        return self.find(uid) if self.isUid(uid) else None

    def uidOf(self, key: bytes) -> str | None:
        """
        The session id whose Redis key is C{key}, as far as the history shows it (else the
        hash the key holds); C{None} for a key that is not a session's.
        """
        member = _memberOf(key)
        return None if member is None else self.ids.get(member, member)

    def label(self, uid: str | None) -> str:
        if uid is None:
            return "-"
        if not self.isUid(uid):
            return repr(uid)
        return f"{uid[:6]}(L{self.labels.get(self.find(uid), 0)})"

    @staticmethod
    def what(r: _Record) -> str:
        return {
            "set": f"set {r.key}={r.value}",
            "del": f"del {r.key}",
            "fail": f"fail {r.key}={r.value}",
            "bad": f"bad {r.key}",
        }.get(r.op, r.op)

    def show(self, r: _Record) -> str:
        answer = "hung up" if r.hungUp else "no answer" if r.status is None else str(r.status)
        return f"r{r.id} ({self.what(r)} on s{r.site} -> {answer})"

    # Outcomes.

    @staticmethod
    def outcome(r: _Record) -> str:
        """
        "ok" (200), "failed" (nothing of it was kept), or "maybe" (indeterminate).
        """
        if r.op in ("fail", "bad"):
            return "failed"
        if r.status == 200:
            return "ok"
        if r.status in (409, 500):
            return "failed"
        return "maybe"

    def valuesOf(self, lineage: str, definiteOnly: bool = False) -> set[int]:
        found = set()
        for (owner, _), writes in self.writes.items():
            if owner == lineage:
                for w in writes:
                    if w.value is not None and (not definiteOnly or self.outcome(w) == "ok"):
                        found.add(w.value)
        return found

    def logouts(self, lineage: str) -> list[_Record]:
        return [r for r in self.records if r.op == "logout" and self.lineage(r) == lineage]

    def deadNames(self) -> list[tuple[str, str]]:
        """
        Ids that must never find their session again: a logged-out session's, a renamed one's.
        """
        dead: dict[str, str] = {}
        for r in self.records:
            if r.op == "logout" and r.status == 200 and self.isUid(r.ended):
                for uid in self.names(self.find(r.ended)):
                    dead.setdefault(uid, f"logged out by r{r.id}")
            if r.op == "renew" and r.status == 200 and self.isUid(r.renamedFrom):
                dead.setdefault(r.renamedFrom, f"renamed by r{r.id}")
        return list(dead.items())

    # The model.

    def check(self) -> list[str]:
        self.violations: list[str] = []
        self.checkStatuses()
        self.checkReads()
        self.checkCached()
        self.checkFinalState()
        self.checkLogouts()
        self.checkRenamed()
        self.checkLostSessions()
        self.checkLateWrites()
        self.checkFailures()
        self.checkStored()
        self.checkErrors()
        unique = list(dict.fromkeys(self.violations))
        return unique

    def violation(self, kind: str, text: str) -> None:
        self.violations.append(f"[{kind}] {text}")

    def checkStatuses(self) -> None:
        for r in self.records:
            if r.hungUp:
                continue
            if r.status is None:
                self.violation("no answer", f"{self.show(r)}: {r.error}")
            elif r.op in ("fail", "bad"):
                if r.status not in (500, 503, 409):
                    self.violation("status", f"{self.show(r)}: a failing page answered {r.status}")
            elif r.status == 500:
                shared = [
                    b
                    for b in self.records
                    if b.op == "bad" and b.site == r.site and b.start < r.end and b.end > r.start
                ]
                if not shared:
                    self.violation("status", f"{self.show(r)} answered 500: {r.body!r}")
            elif r.status not in (200, 409, 503):
                self.violation("status", f"{self.show(r)} answered {r.status}: {r.body!r}")

    def visible(self, w: _Record, start: float, end: float, site: int | None) -> bool:
        """
        Whether a read from C{start} to C{end} on C{site} (None: Redis at the end) may see
        C{w}'s change: a write that ended well or indeterminately, once sent; a failed one
        only in its own process while it ran, unless another request there carried it; one
        whose client hung up and that Redis did not hold when it ended, only from before then
        (or before the last request that carried it ended).
        """
        if w.start > end:
            return False
        if self.lostOnHangUp(w):
            # Not in Redis when it ended, after which nothing of it is written but by a
            # request that carried it: seen only from before then.
            return start < self.until(w)
        if self.outcome(w) in ("ok", "maybe") or w in self.carriedBy:
            return True
        return site is not None and w.site == site and w.end > start

    def lostOnHangUp(self, w: _Record) -> bool:
        return w.hungUp and w.landed is False and self.outcome(w) == "maybe"

    def until(self, w: _Record) -> float:
        """
        The last instant C{w}'s change may have been written: when it ended, or when the last
        request that carried it did.
        """
        return max([w.end] + [r.end for r in self.carriedBy.get(w, [])])

    def explain(self, lineage, key, observed, start, end, site) -> str | None:
        """
        None when a write explains that a read from C{start} to C{end} saw C{observed} for
        C{key}; else why none does.
        """
        writes = self.writes.get((lineage, key), [])
        acks = [w for w in writes if self.outcome(w) == "ok"]

        def overwrittenBy(after: float) -> list[_Record]:
            # Acknowledged writes that started after `after` and ended before the read began.
            # A request that used a copy acted on the session as of its copy's stamp (README:
            # what a copy may not see): it wrote what it changed from that, so a key set
            # elsewhere after the stamp and before the push was processed is not one it
            # could delete (checkCached checks that no push was processed in between).
            return [a for a in acks if self.viewedAt(a) > after and a.end < start]

        if observed is ABSENT:
            if not overwrittenBy(-1):
                return None
            for w in writes:
                if (
                    w.op == "del"
                    and self.visible(w, start, end, site)
                    and not overwrittenBy(self.until(w))
                ):
                    return None
            latest = max(overwrittenBy(-1), key=lambda a: a.end)
            return (
                f"it is absent, but {self.show(latest)} ended before and nothing deleted it since"
            )
        w = self.writer.get(observed)
        if w is None:
            return f"{observed!r} was never written"
        if w not in writes:
            return f"{observed!r} was written by {self.show(w)}, to another session or key"
        if not self.visible(w, start, end, site):
            if self.lostOnHangUp(w):
                return (
                    f"{observed!r} is from {self.show(w)}, which was not in Redis when it "
                    "ended (its client hung up), and no request that ran beside it carried it"
                )
            if self.outcome(w) == "failed":
                return f"{observed!r} is from {self.show(w)}, which failed (nothing of it kept)"
            return f"{observed!r} is from {self.show(w)}, which was not sent yet"
        later = overwrittenBy(self.until(w))
        if later:
            return (
                f"{observed!r} is from {self.show(w)}, overwritten by {self.show(later[0])}, "
                "which started after it ended and ended before this read"
            )
        return None

    def checkReads(self) -> None:
        for r in self.records:
            if r.status != 200 or r.values is None or not self.isUid(r.session):
                continue
            lineage = self.find(r.session)
            # A request that used a copy without reading it sees the session as of the read
            # that made the copy's stamp (README: what a cached copy may not see, and for
            # how long): checkCached checks that no invalidation was processed since.
            start = r.start if r.cachedFrom is None else min(r.start, r.cachedFrom)
            for key in KEYS:
                why = self.explain(lineage, key, r.values.get(key, ABSENT), start, r.end, r.site)
                if why:
                    self.violation(
                        "read",
                        f"{self.show(r)} saw {key}={r.values.get(key, '(absent)')!r} in "
                        f"session {self.label(r.session)}: {why}",
                    )

    def checkCached(self) -> None:
        """
        A copy is never used after an invalidation of its key was processed: between its
        stamp and the request's render, its site processed none for that key.
        """
        for r in self.records:
            if r.cachedFrom is None or r.rendered is None or not self.isUid(r.got):
                continue
            key = sessionKey(r.got)
            for tick, site, keys in self.pushes:
                if (
                    site == r.site
                    and r.cachedFrom < tick < r.rendered
                    and (keys is None or key in keys)
                ):
                    self.violation(
                        "cached",
                        f"{self.show(r)} used its copy of {self.label(r.got)} (stamped at "
                        f"ev{r.cachedFrom}) after s{site} processed its invalidation at ev{tick}",
                    )

    @staticmethod
    def viewedAt(r: _Record) -> float:
        """
        When C{r} saw its session: its start, or its copy's stamp when it used one.
        """
        return r.start if r.cachedFrom is None else min(r.start, r.cachedFrom)

    def usedBefore(self, r: _Record, end: float) -> bool:
        """
        Whether C{r} used a copy without reading it whose stamp was made before C{end}: it
        may be served until the invalidation is processed, which checkCached checks.
        """
        return r.cachedFrom is not None and r.cachedFrom < end

    def live(self, lineage: str) -> list[str]:
        return [uid for uid in self.names(lineage) if "m:t" in self.stored(uid).fields]

    def stored(self, uid: str) -> _Key:
        # An orphan goes by the hash its key holds, not by an id to hash.
        key = sessionKey(uid) if uid in self.seen else b"txsession:" + uid.encode()
        return self.state.get(key, _Key("none", -2, {}))

    def checkFinalState(self) -> None:
        lineages = list(dict.fromkeys(self.find(uid) for uid in self.uids))
        for lineage in lineages:
            live = self.live(lineage)
            if len(live) > 1:
                self.violation(
                    "two ids",
                    "one session is live in Redis under several ids: "
                    + ", ".join(self.label(uid) for uid in live),
                )
                continue
            if not self.seen.intersection(self.names(lineage)):
                continue  # an orphan: checkStored checks its values
            logouts = self.logouts(lineage)
            if any(r.status == 200 for r in logouts):
                continue  # checkLogouts
            if not live and logouts:
                continue  # perhaps logged out
            fields = self.stored(live[0]).fields if live else {}
            where = f"under {self.label(live[0])}" if live else "(no live id in Redis)"
            for key in KEYS:
                observed = _decoded(fields.get("n:" + key))
                why = self.explain(lineage, key, observed, float("inf"), float("inf"), None)
                if why:
                    self.violation(
                        "final",
                        f"session L{self.labels.get(lineage)} in Redis {where} holds "
                        f"{key}={'(absent)' if observed is ABSENT else repr(observed)}: {why}",
                    )

    def servedAfter(self, r: _Record, lineage: str, values: set[int]) -> str | None:
        if r.status != 200:
            return None
        if self.isUid(r.got) and self.find(r.got) == lineage:
            return f"its session {self.label(r.got)}"
        if self.isUid(r.session) and self.find(r.session) == lineage:
            return f"its session {self.label(r.session)}"
        seen = {v for v in (r.values or {}).values() if isinstance(v, int)}
        leaked = sorted(seen & values)
        if leaked:
            return f"its values {leaked}"
        return None

    def checkLogouts(self) -> None:
        for e in self.records:
            if e.op != "logout" or e.status != 200 or not self.isUid(e.ended):
                continue
            lineage = self.find(e.ended)
            values = self.valuesOf(lineage)
            for r in self.records:
                if r.start > e.end and not self.usedBefore(r, e.end):
                    served = self.servedAfter(r, lineage, values)
                    if served:
                        self.violation(
                            "logged out",
                            f"{self.show(r)} (cookie {_short(r.cookie)!r}) got {served} back after "
                            f"{self.show(e)} logged it out",
                        )
            for uid in self.live(lineage):
                self.violation(
                    "logged out",
                    f"Redis still holds session {self.label(uid)} after {self.show(e)}",
                )
            definite = self.valuesOf(lineage, definiteOnly=True)
            for key, stored in self.state.items():
                found = {_decoded(v) for f, v in stored.fields.items() if f.startswith("n:")}
                for value in sorted(found & definite, key=str):
                    self.violation(
                        "logged out",
                        f"Redis key {key.decode()} holds {value!r} of session "
                        f"L{self.labels.get(lineage)} after {self.show(e)} logged it out",
                    )

    def checkRenamed(self) -> None:
        for n in self.records:
            if n.op != "renew" or n.status != 200 or not self.isUid(n.renamedFrom):
                continue
            lineage = self.find(n.renamedFrom)
            values = self.valuesOf(lineage)
            for r in self.records:
                if r is n or r.start < n.end or r.carried != n.renamedFrom:
                    continue
                if self.usedBefore(r, n.end):
                    continue
                served = self.servedAfter(r, lineage, values)
                if served:
                    self.violation(
                        "renamed",
                        f"{self.show(r)} carrying the old id {self.label(n.renamedFrom)} "
                        f"(cookie {_short(r.cookie)!r}) got {served} after {self.show(n)} "
                        "renamed it",
                    )

    def checkLostSessions(self) -> None:
        for r in self.records:
            if r.status != 200 or r.op not in ("get", "set", "del", "renew"):
                continue
            uid = r.carried
            if not self.isUid(uid) or not self.isUid(r.got):
                continue
            lineage = self.find(uid)
            if self.find(r.got) == lineage:
                continue
            established = [
                w
                for w in self.records
                if w.op == "set" and w.status == 200 and w.session == uid and w.end < r.start
            ]
            if not established:
                continue
            disturbed = [
                o
                for o in self.records
                if o.op in ("renew", "logout")
                and o.start < r.end
                and (
                    self.lineage(o) == lineage
                    or (self.isUid(o.carried) and self.find(o.carried) == lineage)
                )
            ]
            if disturbed:
                continue
            self.violation(
                "lost session",
                f"{self.show(r)} carried {self.label(uid)}, live since {self.show(established[0])} "
                f"and never renewed or logged out, but got another session {self.label(r.got)}",
            )

    def checkLateWrites(self) -> None:
        """
        A request that read a session and writes after it was logged out (anywhere), or
        renamed in another process, gets a 409, never a 200 (README). A page with a delay
        sends its write no sooner than C{delay} after the request was sent; a logout or
        renewal had done its part in Redis before its answer arrived: when that answer came
        first, the write came after it.
        """
        for w in self.records:
            if w.status != 200 or not w.delay or w.op not in ("set", "renew"):
                continue
            if not self.isUid(w.got):
                continue
            writeNoSooner = w.t0 + w.delay / 1000.0
            lineage = self.find(w.got)
            for e in self.records:
                # Ended before the request started: checkLogouts and checkRenamed's.
                if e.t1 is None or e.t1 >= writeNoSooner or e.status != 200 or e.end < w.start:
                    continue
                if e.op == "logout" and self.isUid(e.ended) and self.find(e.ended) == lineage:
                    why = "logged it out"
                elif e.op == "renew" and e.renamedFrom == w.got and e.site != w.site:
                    why = f"renamed it in another process (to {self.label(e.session)})"
                else:
                    continue
                if self.carriedBefore(w, lineage, e.t1):
                    continue
                self.violation(
                    "200 after the end",
                    f"{self.show(w)} used {self.label(w.got)} and could not write before "
                    f"t={writeNoSooner:.3f}, but {self.show(e)} {why}, answered at "
                    f"t={e.t1:.3f}: its write came after, and it must get a 409",
                )

    def carriedBefore(self, w: Any, lineage: Any, t: float) -> bool:
        """
        Whether another request of C{w}'s process on the same session, answered 200 between
        C{w}'s start and C{t}, could have written C{w}'s change for it: in one process,
        concurrent requests share the session, and a change counts as each one's (README).
        Then C{w}'s 200 promises nothing more than that write, which checkPresence checks.
        """
        for o in self.records:
            if o is w or o.site != w.site or o.status != 200 or o.t1 is None:
                continue
            if o.op not in ("set", "del", "renew") or not self.isUid(o.got):
                continue
            if self.find(o.got) == lineage and w.t0 < o.t1 <= t:
                return True
        return False

    def checkFailures(self) -> None:
        for r in self.records:
            if r.value is None or self.outcome(r) != "failed" or r in self.carriedBy:
                continue
            for key, name in holding(self.state, r.value):
                self.violation(
                    "failed write kept",
                    f"Redis key {key.decode()} holds {name}={r.value} from {self.show(r)}, "
                    "which failed",
                )

    def checkStored(self) -> None:
        for when, state in (("at the end", self.state), ("after the probes", self.after)):
            for key, stored in state.items():
                if stored.pttl == -1:
                    self.violation("no TTL", f"Redis key {key.decode()} has no TTL ({when})")
                if self.uidOf(key) is None or stored.type != "hash":
                    self.violation("stray key", f"Redis holds {key!r}, a {stored.type} ({when})")
        for key, stored in self.state.items():
            uid = self.uidOf(key)
            if uid is None or "m:t" not in stored.fields:
                continue
            for name, raw in stored.fields.items():
                if not name.startswith("n:"):
                    continue
                value = _decoded(raw)
                w = self.writer.get(value) if isinstance(value, int) else None
                if w is None:
                    self.violation("stray value", f"Redis key {key.decode()} holds {name}={raw!r}")
                elif self.lineage(w) != self.find(uid) and self.outcome(w) != "maybe":
                    self.violation(
                        "stray value",
                        f"Redis key {key.decode()} ({self.label(uid)}) holds {name}={value} "
                        f"from {self.show(w)}, which used session {self.label(w.got or w.carried)}",
                    )

    def checkErrors(self) -> None:
        for failure in self.errors:
            if failure.check(
                StoreUnavailable, SessionEnded, UnserializableValue, ZeroDivisionError
            ):
                continue
            text = str(failure.value)
            if failure.check(RuntimeError) and "failed on purpose" in text:
                continue
            if failure.check(TypeError) and "set is not JSON serializable" in text:
                continue
            self.violation(
                "error logged",
                f"{failure.type.__name__}: {text}\n{failure.getTraceback()[-1500:]}",
            )


def formatReport(run: _Run, checker: _Checker, violations: list[str], state) -> str:
    lines = [
        f"store model: run {run.number} (seed {SEED}) broke the model {len(violations)} "
        f"time(s)" + (":" if violations else "."),
    ]
    lines += [f"  - {v}" for v in violations]
    lines.append(
        "history (ev: one order of every send, answer and fault; t: seconds; "
        "ids as first hex digits(lineage)):"
    )
    entries: list[tuple[float, str]] = []
    for r in checker.records:
        junk = f" junk={r.junk}" if r.junk else ""
        answer = "hung up" if r.hungUp else "no answer" if r.status is None else str(r.status)
        body = r.body
        if isinstance(body, str) and body.startswith("<"):
            body = "(html)"
        if isinstance(body, dict):
            shown = {
                k: checker.label(v) if k in ("session", "from", "ended") else v
                for k, v in body.items()
            }
            body = ", ".join(f"{k}={v}" for k, v in shown.items())
        cookie = _short(r.cookie)
        cookie = "; ".join(
            part
            if "=" not in part
            else part.split("=", 1)[0] + "=" + checker.label(part.split("=", 1)[1])
            for part in cookie.split("; ")
            if part
        )
        setCookie = ",".join(checker.label(uid) for uid in r.setCookies) or "-"
        ended = "?" if r.t1 is None else f"{r.t1:.3f}"
        entries.append(
            (
                r.start,
                f"  ev{r.start:<4} r{r.id:<3} {r.kind:<5} c{r.client} s{r.site} "
                f"{checker.what(r)}"
                f"{f' delay={r.delay}ms' if r.delay else ''}{junk} [cookie: {cookie or '-'}] "
                f"t {r.t0:.3f}->{ended} ev{r.end:g} -> {answer} {body or r.error or ''} "
                f"set-cookie={setCookie}",
            )
        )
    for f in run.faults:
        target = "all proxies" if f.target < 0 else f"proxy of s{f.target % len(run.proxies)}"
        lasted = "" if f.end == f.start else f" until ev{f.end} t {f.t1:.3f}"
        entries.append(
            (
                f.start,
                f"  ev{f.start:<4} fault {f.kind} {f.param} {f.direction} on {target}, "
                f"t {f.t0:.3f}{lasted}",
            )
        )
    lines += [text for _, text in sorted(entries, key=lambda e: e[0])]
    lines.append("Redis at the end:")
    for key, stored in sorted(state.items()):
        uid = checker.uidOf(key)
        fields = {
            f: (
                checker.label(checker.ids.get(v.decode(), v.decode()))
                if f == "m:f"
                else v.decode(errors="replace")
            )
            for f, v in sorted(stored.fields.items())
        }
        lines.append(f"  {checker.label(uid) if uid else key!r} pttl={stored.pttl} {fields}")
    lines.append("program (save it to a file and set TXSESSION_MODEL_REPLAY=FILE to run it):")
    lines.append("  " + repr(run.program))
    return "\n".join(lines)


# The tests.


class _Stopped(Exception):
    """
    The test ended (timed out) while hypothesis was still searching.
    """


def _onReactor(stop: threading.Event, start) -> Any:
    """
    From the worker thread: run C{start()} (which may return a Deferred) on the reactor
    thread and wait for its result.
    """
    answers: queue.Queue[Any] = queue.Queue()
    reactor.callFromThread(lambda: defer.maybeDeferred(start).addBoth(answers.put))
    while True:
        try:
            result = answers.get(timeout=0.2)
        except queue.Empty:
            if stop.is_set():
                raise _Stopped() from None
            continue
        if isinstance(result, Failure):
            result.raiseException()
        return result


class _Totals:
    def __init__(self) -> None:
        self.runs = self.requests = self.faults = self.violations = 0
        self.hangups = self.hangupsInFlight = 0

    def add(self, report: _Report) -> None:
        self.runs += 1
        self.requests += report.requests
        self.faults += report.faults
        self.hangups += report.hangups
        self.hangupsInFlight += int(report.scores["hang-ups with a command in flight"])
        self.violations += len(report.violations)

    def summary(self) -> str:
        return (
            f"store model: {self.runs} runs, {self.requests} requests ({self.hangups} hung up, "
            f"{self.hangupsInFlight} with a command in flight), {self.faults} faults, "
            f"{self.violations} violations (seed {SEED}, profile {_PROFILE})"
        )


class ModelTests(StoreTestCase):
    """
    Random interleavings of requests and faults across sites on one real Redis, held to the
    store's consistency model.
    """

    def test_model(self):
        totals = _Totals()
        failures: list[_Report] = []
        stop = threading.Event()
        self.addCleanup(stop.set)
        done: defer.Deferred[None] = defer.Deferred(lambda _: stop.set())

        def runOne(program):
            if stop.is_set():
                raise _Stopped()
            report = _onReactor(
                stop, lambda: defer.ensureDeferred(_Run(self, program, totals.runs + 1).run())
            )
            totals.add(report)
            if currently_in_test_context():
                for label, score in report.scores.items():
                    target(score, label=label)
            if report.violations:
                failures.append(report)
                if not KEEP_GOING:
                    raise AssertionError(report.text)

        def search():
            replay = os.environ.get("TXSESSION_MODEL_REPLAY")
            if replay:
                with open(replay) as f:
                    program = ast.literal_eval(f.read().strip())
                for _ in range(int(os.environ.get("TXSESSION_MODEL_REPEAT", "1"))):
                    try:
                        runOne(program)
                    except AssertionError:
                        pass
                return
            phases = [Phase.explicit, Phase.generate, Phase.target]
            if _PROFILE != "ci":
                phases.append(Phase.shrink)

            @settings(
                parent=settings.default,
                max_examples=EXAMPLES,
                database=None,
                deadline=None,
                phases=phases,
                print_blob=True,
                report_multiple_bugs=False,
                suppress_health_check=[
                    HealthCheck.too_slow,
                    HealthCheck.differing_executors,
                    HealthCheck.data_too_large,
                    HealthCheck.large_base_example,
                ],
            )
            @seed(SEED)
            @given(programs())
            def model(program):
                runOne(program)

            model()

        def work():
            try:
                search()
            except BaseException as e:
                failure = Failure(e)
                reactor.callFromThread(lambda: done.called or done.errback(failure))
            else:
                reactor.callFromThread(lambda: done.called or done.callback(None))

        def finished(result):
            summary = totals.summary()
            print(summary, flush=True)
            if failures:
                smallest = min(failures, key=lambda r: (len(r.program["steps"]), r.number))
                every = "\n".join(
                    f"  run {r.number}: {v.splitlines()[0]}" for r in failures for v in r.violations
                )
                self.fail(
                    f"{summary}; {len(failures)} run(s) failed:\n{every}\n"
                    f"The smallest failing run:\n{smallest.text}"
                )
            return result

        threading.Thread(target=work, name="hypothesis store model", daemon=True).start()
        return done.addBoth(finished)

    test_model.timeout = EXAMPLES * 30 + 120  # type: ignore[attr-defined]


class _Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class _Collect(protocol.Protocol):
    def __init__(self):
        self.received = b""
        self.reads = 0
        # Fires with why the connection ended (an exception).
        self.lost: defer.Deferred[BaseException] = defer.Deferred()
        self.made: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self):
        self.made.callback(None)

    def dataReceived(self, data):
        self.received += data
        self.reads += 1

    def connectionLost(self, reason=protocol.connectionDone):
        self.lost.callback(reason.value)


class ProxyTests(unittest.TestCase):
    """
    The fault proxy itself, in front of an echo server.
    """

    def setUp(self):
        self.echo = reactor.listenTCP(0, protocol.Factory.forProtocol(_Echo), interface="127.0.0.1")
        self.addCleanup(self.echo.stopListening)
        self.proxy = FaultProxy(self.echo.getHost().port, seed=1)
        self.addCleanup(self.proxy.stop)

    @defer.inlineCallbacks
    def connect(self):
        client = _Collect()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxy.port), client)
        self.addCleanup(lambda: client.transport.loseConnection() or client.lost)
        return client

    @defer.inlineCallbacks
    def until(self, condition, seconds=2.0):
        for _ in range(int(seconds / 0.01)):
            if condition():
                return
            yield sleep(0.01)
        self.fail("timed out waiting")

    @defer.inlineCallbacks
    def test_passThrough(self):
        client = yield self.connect()
        client.transport.write(b"hello")
        yield self.until(lambda: client.received == b"hello")

    @defer.inlineCallbacks
    def test_latencyKeepsOrder(self):
        """
        Each chunk is late by the latency, and no chunk overtakes another.
        """
        self.proxy.latency(60, jitter=50, direction=UPSTREAM)
        client = yield self.connect()
        started = reactor.seconds()
        expected = b""
        for i in range(20):
            chunk = b"%d," % i
            expected += chunk
            client.transport.write(chunk)
            yield sleep(0.002)
        yield self.until(lambda: client.received == expected)
        self.assertGreater(reactor.seconds() - started, 0.05)

    @defer.inlineCallbacks
    def test_stallThenRelease(self):
        client = yield self.connect()
        self.proxy.stall(DOWNSTREAM)
        client.transport.write(b"held")
        yield sleep(0.1)
        self.assertEqual(client.received, b"")
        self.proxy.release()
        yield self.until(lambda: client.received == b"held")

    @defer.inlineCallbacks
    def test_stallCloseAfter(self):
        client = yield self.connect()
        self.proxy.stall(UPSTREAM, closeAfter=50)
        client.transport.write(b"lost")
        reason = yield client.lost
        self.assertEqual(client.received, b"")
        self.assertIsNotNone(reason)

    @defer.inlineCallbacks
    def test_limitDataCutsMidway(self):
        client = yield self.connect()
        self.proxy.limitData(5, DOWNSTREAM)
        client.transport.write(b"0123456789")
        yield client.lost
        self.assertEqual(client.received, b"01234")

    @defer.inlineCallbacks
    def test_slicer(self):
        client = yield self.connect()
        self.proxy.slicer(2, 1, delay=2, direction=DOWNSTREAM)
        client.transport.write(b"abcdefghijklmnopqrstuvwxyz")
        yield self.until(lambda: client.received == b"abcdefghijklmnopqrstuvwxyz")
        self.assertGreater(client.reads, 3)

    @defer.inlineCallbacks
    def test_cut(self):
        client = yield self.connect()
        self.proxy.stall(UPSTREAM)
        client.transport.write(b"dropped")
        self.proxy.cut()
        reason = yield client.lost
        self.assertNotIsInstance(reason, ConnectionDone)
        self.proxy.release()
        self.assertEqual(self.proxy.stats["cuts"], 1)

    @defer.inlineCallbacks
    def test_downAndUp(self):
        """
        Down: connections are refused (or accepted and aborted); up: served on the same port.
        """
        port = self.proxy.port
        yield self.proxy.down()
        with self.assertRaises(ConnectionRefusedError):
            yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), _Collect())
        yield self.proxy.up()
        self.assertEqual(self.proxy.port, port)
        client = yield self.connect()
        client.transport.write(b"back")
        yield self.until(lambda: client.received == b"back")
        yield self.proxy.down(refuse=False)
        self.assertEqual(self.proxy.stats["cuts"], 2)
        closed = _Collect()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), closed)
        yield closed.lost
        yield self.proxy.reset()


def _record(id, op, start, end, status, kind="step", client=0, site=0, **extra):
    body = extra.pop("body", None)
    record = _Record(id=id, kind=kind, client=client, site=site, op=op, start=start, end=end)
    record.status = status
    record.body = body
    record.t1 = float(end)
    for name, value in extra.items():
        setattr(record, name, value)
    return record


U = "a" * 64
V = "b" * 64


def _hash(**fields):
    return _Key("hash", 60000, {k: str(v).encode() for k, v in fields.items()})


class CheckerTests(unittest.TestCase):
    """
    The checker on made-up histories: it passes a good one and names each kind of violation.
    """

    def check(self, records, state):
        return _Checker(records, state, state).check()

    def good(self):
        return [
            _record(
                1,
                "set",
                1,
                2,
                200,
                key="a",
                value=1,
                body={"session": U, "values": {"a": 1}},
                setCookies=[U],
            ),
            _record(
                2,
                "set",
                3,
                6,
                200,
                key="a",
                value=2,
                carried=U,
                body={"session": U, "values": {"a": 2}},
            ),
            _record(3, "set", 4, 5, 503, key="b", value=3, carried=U),
            _record(4, "get", 7, 8, 200, carried=U, body={"session": U, "values": {"a": 2}}),
        ]

    def test_goodHistory(self):
        state = {sessionKey(U): _hash(**{"m:t": 60000, "n:a": 2})}
        self.assertEqual(self.check(self.good(), state), [])
        # The indeterminate write may be there too.
        state[sessionKey(U)].fields["n:b"] = b"3"
        self.assertEqual(self.check(self.good(), state), [])

    def test_lostWrite(self):
        state = {sessionKey(U): _hash(**{"m:t": 60000, "n:a": 1})}
        violations = self.check(self.good(), state)
        self.assertTrue(any(v.startswith("[final]") and "r2" in v for v in violations), violations)

    def test_hungUp(self):
        """
        A request whose client hung up is indeterminate until its end (when its site had
        answered every command it sent by then): its write may land after a request that
        started before that end, never after one that started after it; and its missing
        answer is no violation, where a request left unanswered is one.
        """
        made = _record(
            1, "set", 1, 2, 200, key="a", value=1, body={"session": U, "values": {"a": 1}}
        )
        made.setCookies = [U]
        state = {sessionKey(U): _hash(**{"m:t": 60000, "n:a": 2})}

        def history(laterStart, hungUp=True):
            left = _record(2, "set", 3, 6, None, key="a", value=2, carried=U, hungUp=hungUp)
            later = _record(
                3,
                "set",
                laterStart,
                laterStart + 1,
                200,
                key="a",
                value=3,
                carried=U,
                body={"session": U, "values": {"a": 3}},
            )
            read = _record(4, "get", 9, 10, 200, carried=U, body={"session": U, "values": {"a": 2}})
            return [made, left, later, read]

        self.assertEqual(self.check(history(laterStart=4), state), [])
        violations = self.check(history(laterStart=7), state)
        self.assertTrue(
            any(v.startswith("[read]") and "r2" in v and "r3" in v for v in violations),
            violations,
        )
        self.assertTrue(any(v.startswith("[final]") for v in violations), violations)
        self.assertFalse(any(v.startswith("[no answer]") for v in violations), violations)
        violations = self.check(history(laterStart=4, hungUp=False), state)
        self.assertTrue(any(v.startswith("[no answer]") for v in violations), violations)

    def test_failedWriteKept(self):
        records = self.good() + [_record(5, "fail", 9, 10, 500, key="c", value=5, carried=U)]
        state = {sessionKey(U): _hash(**{"m:t": 60000, "n:a": 2, "n:c": 5})}
        violations = self.check(records, state)
        self.assertTrue(any(v.startswith("[failed write kept]") for v in violations), violations)

    def test_loggedOutServed(self):
        records = self.good() + [
            _record(5, "logout", 9, 10, 200, carried=U, body={"ended": U}),
            _record(
                6,
                "get",
                11,
                12,
                200,
                carried=U,
                cookie=f"{COOKIE}_0=junk; {COOKIE}={U}",
                body={"session": U, "values": {"a": 2}},
            ),
        ]
        violations = self.check(records, {})
        self.assertTrue(
            any(v.startswith("[logged out]") and "r6" in v for v in violations), violations
        )

    def test_loggedOutAgainFromACopy(self):
        """
        A logout in another process whose invalidation has not reached this one yet: a
        logout here that used its copy without reading it may end the session again (the
        push's delivery is the window), but not once the push was processed.
        """
        records = self.good() + [
            _record(5, "logout", 9, 10, 200, site=1, carried=U, body={"ended": U}),
            _record(
                6,
                "logout",
                11,
                12,
                200,
                carried=U,
                body={"ended": U, "cachedFrom": 8, "rendered": 11},
            ),
        ]
        self.assertEqual(self.check(records, {}), [])
        pushed = _Checker(records, {}, {}, pushes=[(10, 0, None)]).check()
        self.assertTrue(any(v.startswith("[cached]") and "r6" in v for v in pushed), pushed)
        records[-1].body = {"ended": U}
        violations = self.check(records, {})
        self.assertTrue(
            any(v.startswith("[logged out]") and "r6" in v for v in violations), violations
        )

    def test_noTTL(self):
        key = sessionKey(U)
        state = {key: _Key("hash", -1, {"m:t": b"60000", "n:a": b"2"})}
        violations = self.check(self.good(), state)
        self.assertTrue(any(v.startswith("[no TTL]") for v in violations), violations)

    def test_staleRead(self):
        records = self.good()
        records[3].body = {"session": U, "values": {"a": 1}}
        state = {sessionKey(U): _hash(**{"m:t": 60000, "n:a": 2})}
        violations = self.check(records, state)
        self.assertTrue(any(v.startswith("[read]") and "r4" in v for v in violations), violations)

    def test_lostSession(self):
        """
        A request carrying the live id of a session no one renewed or logged out gets a new
        session: the session was lost.
        """
        records = self.good()
        records[3].body = {"session": V, "values": {}}
        records[3].setCookies = [V]
        state = {sessionKey(U): _hash(**{"m:t": 60000, "n:a": 2})}
        violations = self.check(records, state)
        self.assertTrue(any(v.startswith("[lost session]") for v in violations), violations)

    def test_writeAfterLogout(self):
        """
        A write sent after a logout answered (its page waited past that answer) got a 200.
        """
        records = self.good() + [
            _record(
                5,
                "set",
                9,
                12,
                200,
                key="b",
                value=5,
                carried=U,
                delay=400,
                t0=1.0,
                body={"session": U},
            ),
            _record(6, "logout", 10, 11, 200, carried=U, t0=1.01, body={"ended": U}),
        ]
        records[-1].t1 = 1.05
        violations = self.check(records, {})
        self.assertTrue(
            any(v.startswith("[200 after the end]") and "r5" in v for v in violations), violations
        )
        records[-2].status = 409
        self.assertEqual([v for v in self.check(records, {}) if "after the end" in v], [])

    def test_renamed(self):
        records = self.good() + [
            _record(
                5,
                "renew",
                9,
                10,
                200,
                carried=U,
                body={"session": V, "from": U, "values": {"a": 2}},
                setCookies=[V],
            ),
            _record(6, "get", 11, 12, 200, carried=U, body={"session": U, "values": {"a": 2}}),
        ]
        state = {
            sessionKey(V): _hash(**{"m:t": 60000, "n:a": 2}),
            sessionKey(U): _Key("hash", 60000, {"m:f": sessionKey(V, b"")}),
        }
        violations = self.check(records, state)
        self.assertTrue(
            any(v.startswith("[renamed]") and "r6" in v for v in violations), violations
        )
        self.assertEqual(self.check(records[:-1], state), [])

    def test_renameWithLostAnswer(self):
        """
        A renew whose rename reached Redis but whose answer was lost (a 503): the session
        lives on under the new id, which no answer showed (an orphan, known by its key's
        hash). What a 200 wrote is looked for there, and found.
        """
        records = self.good() + [_record(5, "renew", 9, 10, 503, carried=U)]
        state = {
            sessionKey(V): _hash(**{"m:t": 60000, "n:a": 2}),
            sessionKey(U): _Key("hash", 60000, {"m:f": sessionKey(V, b"")}),
        }
        self.assertEqual(self.check(records, state), [])
        state[sessionKey(V)].fields.pop("n:a")
        violations = self.check(records, state)
        self.assertTrue(any(v.startswith("[final]") and "r2" in v for v in violations), violations)
