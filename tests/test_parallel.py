"""
The core suites run in several threads at once by L{tests.parallel}.
"""

import unittest as pyunit

from twisted.trial import unittest

from tests import parallel


class ParallelTests(unittest.SynchronousTestCase):
    def test_coreSuitesInThreads(self):
        """
        Four threads each run every core test twice, all at once: every run passes.
        """
        loaded = pyunit.TestLoader().loadTestsFromNames(parallel.CORE)
        cases = list(parallel._cases(loaded))
        left = [c for c in cases if getattr(getattr(c, c._testMethodName), "parallelUnsafe", 0)]
        self.assertEqual(len(left), 8)
        size = len(cases) - len(left)
        total, problems = parallel.run(parallel.CORE, threads=4, rounds=2)
        self.assertEqual(problems, [])
        self.assertEqual(total, size * 4 * 2)

    def test_reportsFailures(self):
        """
        A test that fails in the threads is reported once for each thread and round.
        """
        total, problems = parallel.run(["tests._parallel_failing"], threads=3, rounds=2)
        self.assertEqual(total, 6)
        self.assertEqual(len(problems), 6)
        self.assertIn("test_fails", problems[0])
