"""
The benchmark's scale section: a million live sessions in one process.

C{python -m txsession.bench --scale [N]} runs, for Twisted's C{Site} and C{Session}, for
C{txsession.Site(sharedTimer=False)}, and for C{txsession.Site} as it comes (its shared timer
on), each in a fresh process and in
alternating rounds:

 - C{makeSession}: N sessions made through C{site.makeSession()}, each given one namespace
   entry, and the resident memory they add, per session (everything a live session costs:
   the session, its attributes, its timer entry, the site's dict entry);
 - C{touch}: every session touched once;
 - logout: every tenth session ended by C{expire()};
 - timed expiry: the clock moved past the timeout, so that the rest expire through the
   reactor, per session expired;
 - for txsession, a flood: N more sessions made on a site with C{maxSessions=N/10}, per
   session made (the eviction included), and the memory the site holds afterwards.

A fourth column is a floor, not a product: C{txsession.Site} whose sessions file no timer at
all (C{startCheckingExpiration} does nothing), for C{makeSession}, its memory and C{touch}
only. Twisted over it is the most any timer could give those rows.

The clock is L{txsession.soak.SoakReactor}: Twisted's own C{DelayedCall}s in a heap, run as
C{ReactorBase.runUntilCurrent} runs them (C{task.Clock} re-sorts all its calls on each one).
"""

from __future__ import annotations

import gc
import json
import statistics
import subprocess
import sys
import time
from typing import Any

from twisted.web import resource, server

import txsession
from txsession._benchkit import environment
from txsession._report import rss, table
from txsession.soak import SoakReactor

FLOOR = "floor: no timer at all"
IMPLEMENTATIONS = ("Twisted", "txsession sharedTimer=False", "txsession.Site default", FLOOR)
PHASES = (
    ("makeSession", "makeSession + namespace entry"),
    ("touch", "touch"),
    ("logout", "logout expire()"),
    ("expiry", "timed expiry through the reactor"),
    ("bytes", "resident memory per live session"),
    ("flood", "makeSession under maxSessions=N/10"),
    ("floodBytes", "memory held after the flood, per live session"),
)


def _site(label: str, clock: SoakReactor, **options: Any) -> server.Site:
    if label == "Twisted":
        return server.Site(resource.Resource(), reactor=clock)
    shared = label != "txsession sharedTimer=False"
    site = txsession.Site(resource.Resource(), reactor=clock, sharedTimer=shared, **options)
    if label == FLOOR:
        site.sessionFactory = _NoTimer
    return site


class _NoTimer(txsession.Session):
    def startCheckingExpiration(self) -> None:
        pass


def _progress(label: str, phase: str) -> None:
    print(f"  [{label}] {phase}", file=sys.stderr, flush=True)


def _per(seconds: float, count: int) -> float:
    return seconds * 1e9 / max(count, 1)


def _makeSessions(site: server.Site, n: int) -> float:
    """
    Nanoseconds per session for C{n} sessions made through C{site.makeSession()}, each with
    one namespace entry.
    """
    start = time.perf_counter()
    for _ in range(n):
        site.makeSession().sessionNamespaces["visits"] = 1
    return _per(time.perf_counter() - start, n)


def child(label: str, n: int) -> dict[str, float | None]:
    """
    In a fresh process: every phase for one implementation, in nanoseconds per operation
    and bytes per session.
    """
    clock = SoakReactor()
    site = _site(label, clock)
    result: dict[str, float | None] = {}

    # The garbage collector runs as in an app: what it costs to track each session's objects
    # is part of what a session costs.
    _progress(label, f"makeSession x {n:,}")
    gc.collect()
    before = rss()
    result["makeSession"] = _makeSessions(site, n)
    gc.collect()
    result["bytes"] = (rss() - before) / n

    sessions = list(site.sessions.values())
    clock.advance(1)
    _progress(label, f"touch x {n:,}")
    start = time.perf_counter()
    for session in sessions:
        session.touch()
    result["touch"] = _per(time.perf_counter() - start, n)
    if label == FLOOR:
        for key in ("logout", "expiry", "flood", "floodBytes"):
            result[key] = None
        return result

    loggedOut = sessions[::10]
    _progress(label, f"logout x {len(loggedOut):,}")
    start = time.perf_counter()
    for session in loggedOut:
        session.expire()
    result["logout"] = _per(time.perf_counter() - start, len(loggedOut))
    del loggedOut, sessions

    remaining = len(site.sessions)
    _progress(label, f"timed expiry x {remaining:,}")
    start = time.perf_counter()
    clock.advance(server.Session.sessionTimeout + 10)
    result["expiry"] = _per(time.perf_counter() - start, remaining)
    if site.sessions:
        raise RuntimeError(f"{len(site.sessions)} sessions did not expire")

    result["flood"] = result["floodBytes"] = None
    if label != "Twisted":
        cap = max(n // 10, 1)
        del site
        gc.collect()
        flooded = _site(label, clock, maxSessions=cap)
        _progress(label, f"flood: makeSession x {n:,} under maxSessions={cap:,}")
        before = rss()
        result["flood"] = _makeSessions(flooded, n)
        gc.collect()
        if len(flooded.sessions) != cap:
            raise RuntimeError(f"{len(flooded.sessions)} sessions live under a cap of {cap}")
        result["floodBytes"] = (rss() - before) / cap
    return result


def run(n: int, rounds: int) -> dict[str, list[dict[str, float | None]]]:
    results: dict[str, list[dict[str, float | None]]] = {label: [] for label in IMPLEMENTATIONS}
    for r in range(rounds):
        for label in IMPLEMENTATIONS:
            print(f"round {r + 1}/{rounds}: {label}", file=sys.stderr, flush=True)
            out = subprocess.run(
                [sys.executable, "-m", "txsession.bench", "--scale-child", label, str(n)],
                check=True,
                stdout=subprocess.PIPE,
                text=True,
            ).stdout
            results[label].append(json.loads(out.strip().splitlines()[-1]))
    return results


def _spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def render(results: dict[str, list[dict[str, float | None]]], n: int) -> str:
    header = (f"at {n:,} sessions", *IMPLEMENTATIONS, "Twisted / default", "Twisted / floor")
    lines = []
    for key, name in PHASES:
        cells = [name]
        medians = {}
        for label in IMPLEMENTATIONS:
            values = [r[key] for r in results[label] if r[key] is not None]
            if not values:
                cells.append("-")
                continue
            med, low, high = _spread(values)
            medians[label] = (med, low, high)
            unit = "B" if key.endswith(("bytes", "Bytes")) else "ns"
            if unit == "ns" and med >= 1000:
                cells.append(f"{med / 1000:.2f} us ({low / 1000:.2f}-{high / 1000:.2f})")
            else:
                cells.append(f"{med:,.0f} {unit} ({low:,.0f}-{high:,.0f})")
        for other in (IMPLEMENTATIONS[2], FLOOR):
            if "Twisted" in medians and other in medians:
                t, tl, th = medians["Twisted"]
                s, sl, sh = medians[other]
                cells.append(f"{t / s:.2f}x ({tl / sh:.2f}-{th / sl:.2f})")
            else:
                cells.append("-")
        lines.append(cells)
    return table(header, lines)


def main(n: int, rounds: int, jsonPath: str | None) -> int:
    print(f"txsession scale benchmark: {environment()}")
    print(
        f"{n:,} sessions per process; medians of {rounds} alternating fresh processes per "
        "implementation, (min-max)\n",
        flush=True,
    )
    results = run(n, rounds)
    print(render(results, n))
    if jsonPath:
        with open(jsonPath, "w") as f:
            json.dump({"environment": environment(), "sessions": n, "results": results}, f)
    return 0
