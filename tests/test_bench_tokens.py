"""bench/tokens.py runs end to end (one short run each), so the tool never rots.

Timing is never asserted: only that mints and redemptions were answered and measured.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.procs import IMAGE_RUNTIME_ENV
from sidecar import compiled

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_tokens_bench_smoke() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.tokens", "--trials", "1", "--duration", "1",
         "--tokens", "200"],
        cwd=ROOT, capture_output=True, text=True, timeout=100, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Which build was measured: the one this process imports (pure here, compiled in the
    # compiled run), and the image's settings the sidecar ran with: this environment's,
    # and with SIDECAR_BENCH_COMPILED the image's for those it does not set.
    env = dict(os.environ)
    if env.get("SIDECAR_BENCH_COMPILED"):
        env = {**IMAGE_RUNTIME_ENV, **env}
    words = [f"{k}={env[k]}" for k in IMAGE_RUNTIME_ENV if env.get(k)]
    line = f"sidecar hot path {compiled.state().label}; image settings {' '.join(words) or 'none'}"
    assert line in proc.stdout.splitlines(), proc.stdout
    for row in ("mints", "redemptions, sqlite"):
        found = re.search(rf"^{row} +(\d+) µs CPU/op .*?([\d,]+)/s", proc.stdout, re.MULTILINE)
        assert found is not None, proc.stdout
        assert int(found.group(1)) > 0
        assert int(found.group(2).replace(",", "")) > 0
