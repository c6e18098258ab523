"""
mypy accepts an app that uses txsession the ways the README shows, exactly as it accepts the
same app with Twisted's own classes.
"""

import os
import shutil
import subprocess
import sys
import tempfile

from twisted.trial import unittest

APP = os.path.join(os.path.dirname(__file__), "apps", "typed_shop.py")


def _twistedVersion(source: str) -> str:
    """
    The app with each line marked C{# SWAP: replacement} using Twisted's class instead.
    """
    lines = []
    for line in source.splitlines():
        code, marker, replacement = line.partition("  # SWAP: ")
        if marker:
            indent = code[: len(code) - len(code.lstrip())]
            name = code.split("=")[0].strip()
            code = f"{indent}{name} = {replacement}" if "(" not in name else code
        lines.append(code)
    return "\n".join(lines) + "\n"


class TypingTests(unittest.TestCase):
    def scratch(self, name: str) -> str:
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        return os.path.join(folder, name)

    def mypy(self, path: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "mypy",
                "--no-error-summary",
                "--cache-dir",
                os.path.join(tempfile.gettempdir(), "txsession-mypy-cache"),
                path,
            ],
            capture_output=True,
            text=True,
        )

    def test_appTypeChecks(self):
        """
        The app type-checks with txsession, and also with Twisted's classes swapped back.
        """
        with open(APP) as f:
            source = f.read()
        twistedOnly = self.scratch("twisted_shop.py")
        with open(twistedOnly, "w") as f:
            f.write(_twistedVersion(source))
        ours, theirs = self.mypy(APP), self.mypy(twistedOnly)
        self.assertEqual((theirs.returncode, theirs.stdout), (0, ""), theirs.stderr)
        self.assertEqual((ours.returncode, ours.stdout), (0, ""), ours.stderr)

    def test_mypyCatchesErrors(self):
        """
        The control: mypy does report a type error in the app's setting.
        """
        bad = self.scratch("bad.py")
        with open(bad, "w") as f:
            f.write("import txsession\nx: int = txsession.Session\n")
        result = self.mypy(bad)
        self.assertEqual(result.returncode, 1)
        self.assertIn("Incompatible types in assignment", result.stdout)
