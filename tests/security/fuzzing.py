"""Hypothesis settings for the suite (modest, derandomized, reproducible in CI) and the
base64url helpers the token fuzzers share.

``SIDECAR_FUZZ_SCALE`` multiplies every example count (e.g. ``10`` for a long local run);
``derandomize=True`` makes every run try the same cases, so a failure in CI reproduces.
"""

from __future__ import annotations

import base64
import os
import string

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


SEGMENTS = (0, 2, 3, 4)  # the non-empty parts of a compact JWE with alg "dir"
B64URL = string.ascii_letters + string.digits + "-_"


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
