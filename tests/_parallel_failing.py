"""
A suite that always fails, for L{tests.test_parallel}: the runner must report it.
"""

from twisted.trial import unittest


class Failing(unittest.SynchronousTestCase):
    def test_fails(self):
        self.fail("fails on purpose")
