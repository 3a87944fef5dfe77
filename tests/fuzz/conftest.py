"""Hypothesis profiles of the fuzz tests.

``ci`` (the default): a few hundred examples over all the fuzz properties, derandomized so a CI
run is reproducible, no database (nothing written into the work tree), no deadline (2 shared
cores make timings meaningless). ``EDGECNN_FUZZ=slow`` picks ``slow``: at least 2000 examples per
property, randomized (each run explores new inputs). The fuzz tests that are slow for another
reason (TVM compiles) carry the ``slow`` marker.
"""
import os

from hypothesis import HealthCheck, Phase, settings

_COMMON = dict(
    deadline=None,
    database=None,
    print_blob=True,
    # the explain phase re-runs every failure hundreds of times; its notes are not worth the minutes
    phases=[p for p in Phase if p is not Phase.explain],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

settings.register_profile("ci", max_examples=100, derandomize=True, **_COMMON)
settings.register_profile("slow", max_examples=2000, **_COMMON)
settings.load_profile("slow" if os.environ.get("EDGECNN_FUZZ") == "slow" else "ci")
