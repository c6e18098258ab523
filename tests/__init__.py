"""
txsession's tests: trial-compatible TestCases, run by both pytest and trial.

Hypothesis profiles, chosen with HYPOTHESIS_PROFILE: "ci" (the default, quick) and "soak"
(thousands of sequences, on demand).
"""

import os

from hypothesis import HealthCheck, settings

# differing_executors: trial makes a new TestCase instance for every run of a test, and
# tests.parallel runs each test in several threads, so a test meets several instances.
_SUPPRESS = [HealthCheck.too_slow, HealthCheck.differing_executors]
settings.register_profile("ci", max_examples=150, deadline=None, suppress_health_check=_SUPPRESS)
settings.register_profile("soak", max_examples=5000, deadline=None, suppress_health_check=_SUPPRESS)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
