"""Hypothesis settings for the suite: modest, derandomized, reproducible in CI.

``SIDECAR_FUZZ_SCALE`` multiplies every example count (e.g. ``10`` for a long local run);
``derandomize=True`` makes every run try the same cases, so a failure in CI reproduces.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

SCALE = max(1, int(os.environ.get("SIDECAR_FUZZ_SCALE", "1")))


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples * SCALE,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
