"""
The soak in its short mode: sessions made through C{Site.makeSession} and expired in rounds,
each pointing back at itself from a callback, components and namespace entries. After the
first rounds nothing may keep growing, and no session may outlive its round.
"""

from twisted.trial import unittest

from txsession import soak

SESSIONS = 4000
ROUNDS = 8
SETTLE = 3


class SoakMixin:
    implementation: str

    def assertSteady(self, report):
        self.assertEqual([r.alive for r in report.rounds], [0] * ROUNDS)
        growth = report.growth(SETTLE)
        # One object kept per session would add SESSIONS objects a round.
        self.assertLessEqual(growth["gcObjects"], 10)
        self.assertLess(growth["blocks"], SESSIONS // 10)
        # Keeping whole sessions would add tens of MiB; allocator noise is well under 4 MiB.
        self.assertLess(growth["rss"], 4 * 2**20)

    def test_steady(self):
        """
        Rounds of made, filled and expired sessions leave memory, tracked objects and
        allocated blocks where they were after the first rounds, with every session collected.
        """
        self.assertSteady(soak.soak(self.implementation, SESSIONS, ROUNDS))


class TwistedSoakTests(SoakMixin, unittest.TestCase):
    implementation = "Twisted"


class TxsessionSoakTests(SoakMixin, unittest.TestCase):
    implementation = "txsession"

    def test_seesALeak(self):
        """
        The soak reports a leak when there is one: sessions kept alive by something outside
        them are counted alive, and the tracked objects keep growing.
        """
        kept = []
        fill = soak._fill

        def leakyFill(session, log):
            fill(session, log)
            kept.append(session.sessionNamespaces)

        self.patch(soak, "_fill", leakyFill)
        report = soak.soak(self.implementation, 300, 4)
        self.assertEqual([r.alive for r in report.rounds], [300] * 4)
        self.assertGreater(report.growth(1)["gcObjects"], 300)
        self.assertRaises(AssertionError, self.assertSteady, report)


class SoakCommandTests(unittest.TestCase):
    def test_main(self):
        """
        C{python -m txsession.soak} runs both sides in fresh processes and prints a table with
        a row for each.
        """
        import io
        from contextlib import redirect_stderr, redirect_stdout

        out = io.StringIO()
        with redirect_stdout(out), redirect_stderr(io.StringIO()):
            status = soak.main(["--sessions", "600", "--rounds", "3"])
        self.assertEqual(status, 0)
        rows = [line for line in out.getvalue().splitlines() if line.startswith("| ")]
        self.assertEqual([row.split("|")[1].strip() for row in rows[1:]], ["Twisted", "txsession"])
