"""bench.stallprobe and bench.stalls: a stall of the loop's own and a full collection are
seen, with their causes, in a real process; the scenario runs end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.stallprobe import TICK, Collection, Late, cause

ROOT = Path(__file__).resolve().parent.parent

# 40 ms of the main thread's CPU time inside one callback, then a full collection.
_STALLING = textwrap.dedent(
    """
    import asyncio, gc, time

    async def main():
        await asyncio.sleep(0.05)
        end = time.thread_time() + 0.04
        while time.thread_time() < end:
            pass
        await asyncio.sleep(0.02)
        gc.collect()
        await asyncio.sleep(0.02)

    if __name__ == "__main__":
        asyncio.run(main())
    """
)


def test_probe_logs_the_loops_own_stall_and_a_full_collection(tmp_path: Path) -> None:
    (tmp_path / "stalling.py").write_text(_STALLING)
    out = tmp_path / "probe.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    subprocess.run(
        [sys.executable, "-m", "bench.stallprobe", str(out), "-m", "stalling"],
        env=env,
        check=True,
        timeout=60,
    )
    log = json.loads(out.read_text())
    spun = [x for x in log["late"] if x["thread_cpu_ms"] >= 35]
    assert len(spun) == 1, log["late"]
    assert spun[0]["late_ms"] >= 35
    assert [c["generation"] for c in log["collections"]].count(2) >= 1, log["collections"]


def _late(at: float, late_ms: float, thread_ms: float, process_ms: float) -> Late:
    return Late(at, late_ms, thread_ms, process_ms)


@pytest.mark.parametrize(
    ("late", "collections", "expected"),
    [
        (_late(10.0, 20, 19, 19), [], "loop"),
        (_late(10.0, 20, 1, 18), [], "thread"),  # another thread held the GIL
        (_late(10.0, 20, 1, 1), [], "core"),  # nobody in the process ran
        (_late(10.0, 20, 19, 19), [Collection(9.99, 2, 15.0, 0)], "gc"),
        # A short collection, or one outside the window, does not count.
        (_late(10.0, 20, 19, 19), [Collection(9.99, 0, 0.2, 0)], "loop"),
        (_late(10.0, 20, 1, 1), [Collection(9.9, 2, 15.0, 0)], "core"),
    ],
)
def test_cause_reads_the_cpu_times_across_a_late_tick(
    late: Late, collections: list[Collection], expected: str
) -> None:
    assert late.at - late.late_ms / 1e3 - TICK > 9.9  # the window of the last case
    assert cause(late, collections) == expected


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_stalls_scenario_reports_each_trial(tmp_path: Path) -> None:
    out = tmp_path / "stalls.json"
    args = ["--trials", "1", "--seconds", "1", "--share-cores", "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.stalls", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["cores_claim"] == "not claimed (--share-cores)"
    (trial,) = doc["trials"]
    assert min(trial["per_s"], trial["p99_ms"]) > 0
    assert trial["waited_ms"] >= 0
    assert set(trial["late"]) <= {"loop", "gc", "thread", "core"}
    for by_cause in trial["late"].values():
        assert by_cause["count"] > 0
        assert by_cause["max_ms"] > 3
