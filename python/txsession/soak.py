"""
The soak: sessions made and expired in rounds through C{Site.makeSession}, each with an expire
callback, components and namespace entries that point back at the session. After every round it
records the process's resident memory, the number of objects the garbage collector tracks, the
number of blocks Python's allocator holds and how many sessions are still alive, so that a leak
shows as a figure that keeps growing.

C{python -m txsession.soak} runs Twisted's classes and txsession's, each in a fresh process,
and prints both; C{--sessions 1000000} is the long mode.
"""

from __future__ import annotations

import argparse
import array
import gc
import heapq
import json
import subprocess
import sys
import weakref
from dataclasses import asdict, dataclass, field

from twisted.internet.base import DelayedCall
from twisted.web import resource, server
from zope.interface import Interface, implementedBy, implementer

from txsession._report import rss, table
from txsession.web import Site


class ISoakState(Interface):
    """
    A component each soak session carries, set directly.
    """


class ISoakView(Interface):
    """
    A component each soak session gets through an adapter registered by the soak.
    """


@implementer(ISoakState)
class SoakState:
    def __init__(self, session):
        self.session = session


@implementer(ISoakView)
class SoakView:
    def __init__(self, original):
        self.original = original


class BackReference:
    """
    A namespace key that holds the session it is a key of.
    """

    def __init__(self, session):
        self.session = session

    def __hash__(self):
        return id(self.session) >> 4

    def __eq__(self, other):
        return isinstance(other, BackReference) and other.session is self.session


@dataclass
class Round:
    sessions: int
    rss: int
    gcObjects: int
    blocks: int
    alive: int


@dataclass
class Report:
    implementation: str
    sessionsPerRound: int
    rounds: list[Round] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(r.sessions for r in self.rounds)

    def growth(self, start: int) -> dict[str, int]:
        """
        How much each figure grew from the end of round C{start} (counting from 1) to the end
        of the last round.
        """
        first, last = self.rounds[start - 1], self.rounds[-1]
        return {
            "rss": last.rss - first.rss,
            "gcObjects": last.gcObjects - first.gcObjects,
            "blocks": last.blocks - first.blocks,
        }


class SoakReactor:
    """
    The time half of a reactor, on a clock moved by hand: Twisted's own L{DelayedCall}s in a
    heap, run, re-queued after a reset and swept of cancelled calls the way
    C{ReactorBase.runUntilCurrent} does it.
    (L{twisted.internet.task.Clock} sorts its whole list on every call, which is too slow
    for a million sessions.)
    """

    def __init__(self):
        self.now = 0.0
        self._heap = []
        self._seq = 0
        self._cancellations = 0

    def seconds(self):
        return self.now

    def callLater(self, delay, f, *args, **kw):
        call = DelayedCall(
            self.now + delay, f, args, kw, self._cancelled, self._sooner, seconds=self.seconds
        )
        self._push(call)
        return call

    def _push(self, call):
        self._seq += 1
        heapq.heappush(self._heap, (call.time, self._seq, call))

    def _cancelled(self, call):
        # Swept as ReactorBase.runUntilCurrent sweeps them: once they are over half the heap.
        self._cancellations += 1
        if self._cancellations > 50 and self._cancellations > len(self._heap) >> 1:
            self._cancellations = 0
            self._heap = [e for e in self._heap if not (e[2].cancelled or e[2].called)]
            heapq.heapify(self._heap)

    def _sooner(self, call):
        self._push(call)

    def pending(self):
        return [c for _, _, c in self._heap if not (c.cancelled or c.called)]

    def advance(self, amount):
        self.now += amount
        heap = self._heap
        while heap and heap[0][0] <= self.now:
            _, _, call = heapq.heappop(heap)
            if call.cancelled or call.called:
                continue
            if call.delayed_time > 0:
                call.activate_delay()
                self._push(call)
                continue
            if call.time <= self.now:
                call.called = 1
                call.func(*call.args, **call.kw)
            else:
                self._push(call)


IMPLEMENTATIONS = {"Twisted": (server.Site, server.Session), "txsession": (Site, None)}


def _fill(session, log):
    """
    Give C{session} everything that can point back at it.
    """
    session.notifyOnExpire(lambda: log.append(session.uid))
    session.setComponent(ISoakState, SoakState(session))
    ISoakView(session)
    session.sessionNamespaces["session"] = session
    session.sessionNamespaces[BackReference(session)] = [session, session.uid]


def runRound(site, clock, count, refs, log):
    """
    Make C{count} sessions through C{site.makeSession} and expire them all: a third by
    C{expire()}, a third timed out untouched, and a third touched halfway and timed out later.
    """
    timeout = site.sessionFactory.sessionTimeout
    sessions = []
    for _ in range(count):
        session = site.makeSession()
        _fill(session, log)
        refs.append(weakref.ref(session))
        sessions.append(session)
    del session
    clock.advance(timeout / 2)
    explicit, touched = sessions[0::3], sessions[1::3]
    del sessions
    for session in touched:
        session.touch()
    for session in explicit:
        session.expire()
    del explicit, touched, session
    clock.advance(timeout / 2 + 1)
    clock.advance(timeout / 2)
    pending = clock.pending()
    if site.sessions or pending:
        raise AssertionError(f"{len(site.sessions)} sessions and {len(pending)} calls left")
    if len(log) != count:
        raise AssertionError(f"{len(log)} expire callbacks ran for {count} sessions")
    log.clear()


def soak(implementation: str, sessions: int, rounds: int) -> Report:
    """
    Run C{rounds} rounds of C{sessions} sessions on C{implementation} ("Twisted" or
    "txsession") in this process.
    """
    from twisted.python import components

    siteClass, sessionClass = IMPLEMENTATIONS[implementation]
    clock = SoakReactor()
    site = siteClass(resource.Resource(), reactor=clock)
    if sessionClass is not None:
        site.sessionFactory = sessionClass
    components.registerAdapter(SoakView, site.sessionFactory, ISoakView)
    # Figures go into memory taken before the first round: an object kept from each round
    # would pin one of the allocator's arenas per round and look like a leak.
    figures = array.array("q", bytes(8 * 4 * rounds))
    try:
        for i in range(rounds):
            refs, log = [], []
            runRound(site, clock, sessions, refs, log)
            gc.collect()
            figures[4 * i + 3] = sum(ref() is not None for ref in refs)
            del refs
            gc.collect()
            figures[4 * i] = rss()
            figures[4 * i + 1] = len(gc.get_objects())
            figures[4 * i + 2] = sys.getallocatedblocks()
    finally:
        components.globalRegistry.unregister(
            [implementedBy(site.sessionFactory)], ISoakView, "", SoakView
        )
    return Report(
        implementation,
        sessions,
        [Round(sessions, *figures[4 * i : 4 * i + 4]) for i in range(rounds)],
    )


def soakInChild(implementation: str, sessions: int, rounds: int) -> Report:
    """
    L{soak} in a fresh Python process, so that resident memory is this run's alone.
    """
    out = subprocess.run(
        [sys.executable, "-m", "txsession.soak", "--child", implementation]
        + ["--sessions", str(sessions * rounds), "--rounds", str(rounds)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    data = json.loads(out.strip().splitlines()[-1])
    return Report(
        data["implementation"], data["sessionsPerRound"], [Round(**r) for r in data["rounds"]]
    )


def _mib(n: int) -> str:
    return f"{n / 2**20:+.1f} MiB" if n else "0"


def render(reports: list[Report], settle: int) -> str:
    header = (
        "implementation",
        "sessions",
        f"RSS after round {settle}",
        f"RSS growth after round {settle}",
        "gc objects growth",
        "blocks growth",
        "sessions left alive",
    )
    lines = []
    for report in reports:
        growth = report.growth(settle)
        lines.append(
            [
                report.implementation,
                f"{report.total:,}",
                f"{report.rounds[settle - 1].rss / 2**20:.1f} MiB",
                _mib(growth["rss"]),
                f"{growth['gcObjects']:+d}",
                f"{growth['blocks']:+d}",
                str(sum(r.alive for r in report.rounds)),
            ]
        )
    return table(header, lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m txsession.soak", description=__doc__)
    parser.add_argument(
        "--sessions", type=int, default=100_000, help="sessions in all (default 100,000)"
    )
    parser.add_argument("--rounds", type=int, default=20, help="rounds (default 20)")
    parser.add_argument("--only", choices=sorted(IMPLEMENTATIONS), help="run one side only")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--child", choices=sorted(IMPLEMENTATIONS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    perRound = max(1, args.sessions // args.rounds)
    if args.child:
        report = soak(args.child, perRound, args.rounds)
        print(json.dumps(asdict(report)))
        return 0
    settle = min(3, args.rounds)
    names = [args.only] if args.only else list(IMPLEMENTATIONS)
    reports = []
    for name in names:
        report = soakInChild(name, perRound, args.rounds)
        reports.append(report)
        print(
            f"{name}: {report.total:,} sessions in {args.rounds} rounds, "
            f"RSS {report.rounds[-1].rss / 2**20:.1f} MiB at the end",
            file=sys.stderr,
        )
    print(render(reports, settle))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in reports], f, indent=2)
    leaking = [r.implementation for r in reports if any(x.alive for x in r.rounds)]
    return 1 if leaking else 0


if __name__ == "__main__":
    sys.exit(main())
