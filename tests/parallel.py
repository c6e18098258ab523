"""
Run txsession's core test suites in several threads at once: every thread runs its own
instances of every test, started together at a barrier, round after round, with a tiny switch
interval so that threads interleave inside txsession's methods. Each thread gets its own scratch
adapter registry (see L{tests._support.ScratchRegistryMixin}); everything else, txsession's
interface-key cache, its id generator and the classes themselves, is shared.

    python -m tests.parallel [--threads N] [--rounds N] [module ...]

Exits 1 if any test fails or errors in any thread.
"""

from __future__ import annotations

import argparse
import sys
import threading
import unittest
import warnings

from twisted.python import components
from twisted.trial import _synctest
from twisted.trial.reporter import TestResult
from zope.interface import interface

from tests import _support

CORE = [
    "tests.test_session",
    "tests.test_componentized",
    "tests.test_namespaces",
    "tests.test_timer",
]


class ThreadRegistry:
    """
    Twisted's global adapter registry as seen by the current thread: that thread's scratch
    registry during a test, else the real global one.
    """

    def __init__(self, local, fallback):
        self._local = local
        self._fallback = fallback

    def __getattr__(self, name):
        return getattr(getattr(self._local, "registry", self._fallback), name)


def _cases(suite):
    for test in suite:
        if isinstance(test, unittest.TestSuite):
            yield from _cases(test)
        else:
            yield test


def parallelUnsafe(reason):
    """
    Mark a test that this runner leaves out, and say why.
    """

    def mark(f):
        f.parallelUnsafe = reason
        return f

    return mark


def run(modules: list[str], threads: int, rounds: int) -> tuple[int, list[str]]:
    """
    Run C{modules} in C{threads} threads for C{rounds} rounds; return the number of tests run
    and a description of every failure and error.
    """
    for name in modules:
        __import__(name)
    local = threading.local()
    registry = ThreadRegistry(local, components.globalRegistry)

    problems: list[str] = []
    counts = [0] * threads
    barrier = threading.Barrier(threads)

    def worker(index):
        loader = unittest.TestLoader()
        for _ in range(rounds):
            suite = unittest.TestSuite(
                case
                for case in _cases(loader.loadTestsFromNames(modules))
                if not getattr(getattr(case, case._testMethodName), "parallelUnsafe", None)
            )
            result = TestResult()
            barrier.wait()
            suite.run(result)
            counts[index] += result.testsRun
            for case, failure in result.errors + result.failures:
                problems.append(f"{case.id()} (thread {index}):\n{failure}")

    # trial counts the tests that use its log observer, and swaps the warnings hooks while a
    # test runs, both unguarded: serialise the first, and put the second back afterwards, so
    # that later tests' flushLoggedErrors and flushWarnings still see what they should.
    observer, observerLock = _synctest._logObserver, threading.Lock()
    add, remove = observer._add, observer._remove

    def lockedAdd():
        with observerLock:
            add()

    def lockedRemove():
        with observerLock:
            remove()

    showwarning, filters = warnings.showwarning, warnings.filters[:]
    observer._add, observer._remove = lockedAdd, lockedRemove
    oldRegistry, oldInterval = components.globalRegistry, sys.getswitchinterval()
    components.globalRegistry = registry
    interface.adapter_hooks.append(_support.globalRegistryHook)
    _support.perThread = local
    sys.setswitchinterval(1e-5)
    try:
        workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
    finally:
        del observer._add, observer._remove
        warnings.showwarning, warnings.filters[:] = showwarning, filters
        sys.setswitchinterval(oldInterval)
        _support.perThread = None
        interface.adapter_hooks.remove(_support.globalRegistryHook)
        components.globalRegistry = oldRegistry
    return sum(counts), problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.parallel", description=__doc__)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("modules", nargs="*", default=CORE)
    args = parser.parse_args(argv)
    total, problems = run(args.modules, args.threads, args.rounds)
    for problem in problems:
        print(problem, file=sys.stderr)
    print(
        f"{total} test runs in {args.threads} threads x {args.rounds} rounds: "
        f"{len(problems)} failed"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
