"""
The benchmark's instruction counts (C{python -m txsession.bench --instructions}): what can be
checked without running valgrind, which CI's quick run of the section does.
"""

import io
from contextlib import redirect_stdout
from unittest import mock

from twisted.trial import unittest

from txsession import instructions
from txsession._operations import SCENARIOS


class InstructionsTests(unittest.TestCase):
    def test_skipsWithoutValgrind(self):
        """
        Without valgrind the section says so and succeeds, running nothing.
        """
        out = io.StringIO()
        with mock.patch("shutil.which", return_value=None), redirect_stdout(out):
            self.assertEqual(instructions.main(True, False, None, 1, None), 0)
        self.assertIn("skipped, valgrind is not installed", out.getvalue())

    def test_collected(self):
        """
        The count is the last C{Collected} line of callgrind's report.
        """
        report = b"==1== Callgrind\n==1== Collected : 1234\n==1==\n==1== I   refs: 1,234\n"
        self.assertEqual(instructions._collected(report), 1234)
        self.assertRaises(RuntimeError, instructions._collected, b"no report")

    def test_quickRows(self):
        """
        The quick mode's rows are rows of the main benchmark.
        """
        names = [name for name, _ in SCENARIOS]
        for name in instructions.QUICK_ROWS:
            self.assertIn(name, names)

    def test_runCount(self):
        """
        Every scenario performs the first C{count} of the operations it was set up for.
        """
        from txsession._operations import IMPLEMENTATIONS

        for _, prepare in SCENARIOS:
            for cls in IMPLEMENTATIONS.values():
                run, cleanup = prepare(cls, 4)
                try:
                    run(2)
                finally:
                    cleanup()
