"""
txsession's tests: trial-compatible TestCases, run by both pytest and trial.

Hypothesis profiles, chosen with HYPOTHESIS_PROFILE: "ci" (the default, quick) and "soak"
(thousands of sequences, on demand).
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "soak", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
