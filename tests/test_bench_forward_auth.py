"""bench/forward_auth.py runs end to end (one second per row), so the table never rots.

Timing is never asserted: only that every row answered, through the shipped nginx recipe.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.nginx_stack import nginx_binary

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_forward_auth_bench_smoke(tmp_path: Path) -> None:
    nginx_binary()  # skip (or fail in CI) without nginx
    out = tmp_path / "forward_auth.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.forward_auth", "--smoke", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == [
        "app",
        "nginx → app",
        "nginx + auth_request → sidecar",
        "sidecar → app",
    ]
    assert all(r["per_s"] > 0 for r in rows.values())
    assert rows["nginx → app"]["ratio"] == 1.0
    auth = rows["nginx + auth_request → sidecar"]
    assert auth["sidecar_cpu_us"] > 0, "the sidecar answered every sub-request"
    assert auth["nginx_cpu_us"] > 0
    assert "| nginx + auth_request → sidecar |" in proc.stdout
