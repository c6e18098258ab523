"""
Twisted's own test suites, run with txsession's classes swapped in and without, side by side.

C{python -m txsession.conformance} runs each suite three times under trial, each time in a
fresh process: unswapped; swapped early, with C{twisted.python.components.Componentized} (and
C{ReprableComponentized}) replaced by txsession's before any module that subclasses it is
imported; and swapped late, after C{twisted.web.server} and the other modules that subclass
it were imported, as an app or plugin patching Twisted at run time would. Both swaps also
replace C{twisted.web.server.Session} and C{Site.sessionFactory} with C{txsession.Session}.
For each swap it reports every test that passes unswapped and fails swapped, apart from those
listed in L{KNOWN} with the reason, and exits non-zero if there is any.
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


# Modules that derive classes from Componentized, imported before a late swap.
LATE_IMPORTS = (
    "twisted.web.server",
    "twisted.web.static",
    "twisted.web.distrib",
    "twisted.application.service",
)

MODES = ("early", "late")


def swap(mode: str) -> None:
    """
    Put txsession's classes in place of Twisted's. C{"early"}: before C{twisted.web.server}
    and the test modules are imported, so that the classes they derive from C{Componentized}
    derive from txsession's. C{"late"}: after Twisted's modules were imported, so that their
    classes keep Twisted's C{Componentized} and only later ones derive from txsession's.
    """
    import importlib

    from twisted.python import components

    import txsession

    if mode == "early":
        for name in LATE_IMPORTS:
            if name in sys.modules:
                raise RuntimeError(f"{name} was imported before the swap")
    else:
        for name in LATE_IMPORTS:
            importlib.import_module(name)
    components.Componentized = txsession.Componentized
    components.ReprableComponentized = txsession.ReprableComponentized

    from twisted.web import server

    server.Session = txsession.Session
    server.Site.sessionFactory = txsession.Session
    derived = issubclass(server.Request, txsession.Componentized)
    if derived != (mode == "early"):
        raise RuntimeError(
            f"swap {mode}: twisted.web.server.Request derives from txsession's "
            f"Componentized: {derived}"
        )


def _runChild(suites: list[str], mode: str | None, output: str) -> None:
    if mode:
        swap(mode)
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


def run(suites: list[str]) -> tuple[dict[str, dict[str, str]], float]:
    """
    Outcomes by test id for each of C{"unswapped"} and the L{MODES}, and the time taken.
    """
    results = {}
    start = time.monotonic()
    for mode in ("unswapped", *MODES):
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            path = f.name
        swapped = [] if mode == "unswapped" else ["--swapped", mode]
        subprocess.run(
            [sys.executable, "-m", "txsession.conformance", "--child", path, *swapped, *suites],
            check=True,
        )
        with open(path) as f:
            results[mode] = json.load(f)
        os.unlink(path)
    return results, time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m txsession.conformance", description=__doc__)
    parser.add_argument("suites", nargs="*", default=SUITES, help="test modules or packages")
    parser.add_argument("--child", metavar="OUTPUT", help=argparse.SUPPRESS)
    parser.add_argument("--swapped", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        _runChild(args.suites, args.swapped, args.child)
        return 0

    results, elapsed = run(args.suites)
    plain = results["unswapped"]

    def count(outcomes):
        tally: dict[str, int] = {}
        for outcome in outcomes.values():
            tally[outcome] = tally.get(outcome, 0) + 1
        return ", ".join(f"{n} {o}" for o, n in sorted(tally.items()))

    print(f"suites: {' '.join(args.suites)}")
    print(f"unswapped:      {len(plain)} tests: {count(plain)}")
    failed = False
    for mode in MODES:
        swapped = results[mode]
        lost = sorted(t for t, o in plain.items() if o in OK and swapped.get(t) not in OK)
        listed = [t for t in lost if t in KNOWN]
        unlisted = [t for t in lost if t not in KNOWN]
        missing = sorted(set(plain) - set(swapped))
        print(f"swapped {mode + ':':7s} {len(swapped)} tests: {count(swapped)}")
        print(f"  passing unswapped, failing swapped {mode}: {len(lost)} ({len(listed)} listed)")
        for test in listed:
            print(f"    listed: {test}: {KNOWN[test]}")
        for test in unlisted:
            print(f"    LOST: {test} ({swapped.get(test, 'not run')})")
        for test in missing:
            print(f"    NOT RUN SWAPPED: {test}")
        failed = failed or bool(unlisted or missing)
    for test in sorted(t for t, o in plain.items() if o not in OK):
        others = ", ".join(f"{mode}: {results[mode].get(test)}" for mode in MODES)
        print(f"  fails unswapped too ({plain[test]}; {others}): {test}")
    print(f"({elapsed:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
