"""
Twisted's own test suites, run with txsession's classes swapped in and without, side by side.

C{python -m txsession.conformance} runs each suite twice under trial, each time in a fresh
process: once unswapped, and once with C{twisted.python.components.Componentized} (and
C{ReprableComponentized}) replaced by txsession's before any module that subclasses it is
imported, and with C{twisted.web.server.Session} and C{Site.sessionFactory} replaced by
C{txsession.Session}. It reports every test that passes unswapped and fails swapped, apart
from those listed in L{KNOWN} with the reason, and exits non-zero if there is any.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

SUITES = [
    "twisted.web.test",
    "twisted.python.test.test_components",
    "twisted.test.test_sob",
    "twisted.application.test",
    "twisted.test.test_twistd",
]

# Tests that check something only Twisted's own classes can satisfy: test id -> reason.
KNOWN: dict[str, str] = {}

OK = ("success", "skip", "expectedFailure")


def swap() -> None:
    """
    Put txsession's classes in place of Twisted's. Must run before C{twisted.web.server} and
    the test modules are imported, so that the classes they derive from C{Componentized}
    derive from txsession's.
    """
    from twisted.python import components

    import txsession

    for name in ("twisted.web.server", "twisted.web.static", "twisted.application.service"):
        if name in sys.modules:
            raise RuntimeError(f"{name} was imported before the swap")
    components.Componentized = txsession.Componentized
    components.ReprableComponentized = txsession.ReprableComponentized

    from twisted.web import server

    server.Session = txsession.Session
    server.Site.sessionFactory = txsession.Session
    if not issubclass(server.Request, txsession.Componentized):
        raise RuntimeError("twisted.web.server.Request does not derive from txsession's class")


def _runChild(suites: list[str], swapped: bool, output: str) -> None:
    if swapped:
        swap()
    from twisted.trial import reporter, runner

    outcomes: dict[str, str] = {}

    class Recorder(reporter.Reporter):
        def _record(self, test, outcome):
            outcomes[test.id()] = outcome

        def addSuccess(self, test):
            super().addSuccess(test)
            self._record(test, "success")

        def addFailure(self, test, fail):
            super().addFailure(test, fail)
            self._record(test, "failure")

        def addError(self, test, error):
            super().addError(test, error)
            self._record(test, "error")

        def addSkip(self, test, reason):
            super().addSkip(test, reason)
            self._record(test, "skip")

        def addExpectedFailure(self, test, failure, todo=None):
            super().addExpectedFailure(test, failure, todo)
            self._record(test, "expectedFailure")

        def addUnexpectedSuccess(self, test, todo=None):
            super().addUnexpectedSuccess(test, todo)
            self._record(test, "unexpectedSuccess")

    with open(os.devnull, "w") as devnull:
        trial = runner.TrialRunner(
            lambda *a, **kw: Recorder(devnull),
            workingDirectory=os.path.join(tempfile.mkdtemp(), "_trial_temp"),
        )
        suite = runner.TestLoader().loadByNames(suites, recurse=True)
        trial.run(suite)
    with open(output, "w") as f:
        json.dump(outcomes, f)


def run(suites: list[str]) -> tuple[dict[str, str], dict[str, str], float]:
    results = []
    start = time.monotonic()
    for swapped in (False, True):
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            path = f.name
        mode = ["--swapped"] if swapped else []
        subprocess.run(
            [sys.executable, "-m", "txsession.conformance", "--child", path, *mode, *suites],
            check=True,
        )
        with open(path) as f:
            results.append(json.load(f))
        os.unlink(path)
    return results[0], results[1], time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m txsession.conformance", description=__doc__)
    parser.add_argument("suites", nargs="*", default=SUITES, help="test modules or packages")
    parser.add_argument("--child", metavar="OUTPUT", help=argparse.SUPPRESS)
    parser.add_argument("--swapped", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        _runChild(args.suites, args.swapped, args.child)
        return 0

    plain, swapped, elapsed = run(args.suites)
    lost = sorted(t for t, o in plain.items() if o in OK and swapped.get(t) not in OK)
    listed = [t for t in lost if t in KNOWN]
    unlisted = [t for t in lost if t not in KNOWN]
    missing = sorted(set(plain) - set(swapped))

    def count(results):
        tally: dict[str, int] = {}
        for outcome in results.values():
            tally[outcome] = tally.get(outcome, 0) + 1
        return ", ".join(f"{n} {o}" for o, n in sorted(tally.items()))

    print(f"suites: {' '.join(args.suites)}")
    print(f"unswapped: {len(plain)} tests: {count(plain)}")
    print(f"swapped:   {len(swapped)} tests: {count(swapped)}")
    print(f"passing unswapped, failing swapped: {len(lost)} ({len(listed)} listed)")
    for test in listed:
        print(f"  listed: {test}: {KNOWN[test]}")
    for test in unlisted:
        print(f"  LOST: {test} ({swapped.get(test, 'not run')})")
    for test in missing:
        print(f"  NOT RUN SWAPPED: {test}")
    for test in sorted(t for t, o in plain.items() if o not in OK):
        print(f"  fails unswapped too ({plain[test]}, swapped: {swapped.get(test)}): {test}")
    print(f"({elapsed:.0f} s)")
    return 1 if unlisted or missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
