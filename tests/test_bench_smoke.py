"""The benchmark harness runs end to end (about a second per scenario), so it never rots.

Timing is never asserted: only that every scenario produced positive numbers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.timeout(240)]


def _numbers(doc: dict[str, object], *keys: str) -> list[float]:
    return [float(doc[k]) for k in keys]  # type: ignore[arg-type]  # JSON numbers


def _measure_ok(doc: object, *, cpu: bool = True) -> None:
    assert isinstance(doc, dict)
    assert all(v > 0 for v in _numbers(doc, "per_s", "p50_ms", "p99_ms")), doc
    if cpu:
        assert doc["cpu_us"] is not None
        assert float(doc["cpu_us"]) > 0, doc
    assert doc["samples"], doc


def test_smoke_run_reports_every_scenario(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        skip_or_fail("redis-server is not installed")
    out = tmp_path / "latest.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--no-doc", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())

    names = ["direct", "sidecar"] + (["nginx"] if doc["meta"]["nginx"] else [])
    for layout in ("A", "C"):
        proxied = doc["proxied"][layout]
        assert sorted(proxied) == sorted(names)
        for name in names:
            _measure_ok(proxied[name])
            if name != "direct":
                assert proxied[name]["ratio"] > 0
    _measure_ok(doc["mints"])
    for store in ("sqlite", "redis"):
        _measure_ok(doc["redemptions"][store])
    assert sorted(doc["latency"], key=int) == ["0", str(doc["settings"]["burned"])]
    for measure in doc["latency"].values():
        _measure_ok(measure)
    memory = doc["memory"]
    assert memory["connections_open"] == memory["connections"] > 0
    assert all(v > 0 for v in _numbers(memory, "idle_mib", "after_mib", "peak_mib"))
    assert {t["name"] for t in doc["targets"]} and all(
        t["value"] is not None for t in doc["targets"]
    )
