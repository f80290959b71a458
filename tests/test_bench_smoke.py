"""The benchmark harness runs end to end (about a second per scenario), so it never rots.

Timing is never asserted: only that every scenario produced positive numbers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail

ROOT = Path(__file__).resolve().parent.parent


def _numbers(doc: dict[str, object], *keys: str) -> list[float]:
    return [float(doc[k]) for k in keys]  # type: ignore[arg-type]  # JSON numbers


def _measure_ok(doc: object, *, cpu: bool = True) -> None:
    assert isinstance(doc, dict)
    assert all(v > 0 for v in _numbers(doc, "per_s", "p50_ms", "p99_ms")), doc
    if cpu:
        assert doc["cpu_us"] is not None
        assert float(doc["cpu_us"]) > 0, doc
    assert doc["samples"], doc


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.timeout(240)
def test_smoke_run_reports_every_scenario(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        skip_or_fail("redis-server is not installed")
    out = tmp_path / "latest.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--json", str(out), "--docs", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())

    names = ["direct", "sidecar", "sidecar, logging.access false"]
    names += ["nginx", "nginx, access_log on"] if doc["meta"]["nginx"] else []
    for layout in ("A", "C"):
        proxied = doc["proxied"][layout]
        assert sorted(proxied) == sorted(names)
        for name in names:
            _measure_ok(proxied[name])
            busy = proxied[name]["cores_busy"]  # each core's busy share during the runs
            assert all(0 <= b <= 1 for b in busy), busy
            assert max(busy, default=0) > 0, busy
            if name != "direct":
                assert proxied[name]["ratio"] > 0
                # The proxy's runqueue wait, beside its p99 (bench.sched).
                assert all(x["waited_ms"] >= 0 for x in proxied[name]["samples"])
                assert proxied[name]["waited_ms"] is not None
    workers = doc["proxied"]["W"]  # nothing pinned: 1 and 2 workers side by side
    assert sorted(workers) == sorted(
        ["direct", "sidecar", "sidecar, 2 workers"] + (["nginx"] if doc["meta"]["nginx"] else [])
    )
    for name in workers:
        _measure_ok(workers[name])
    _measure_ok(doc["mints"])
    for store in ("sqlite", "redis"):
        _measure_ok(doc["redemptions"][store])
    assert sorted(doc["latency"], key=int) == ["0", str(doc["settings"]["burned"])]
    for measure in doc["latency"].values():
        _measure_ok(measure)
    memory = doc["memory"]
    assert memory["connections_open"] == memory["connections"] > 0
    mib = ("idle_mib", "after_mib", "peak_mib", "upstream_idle_mib", "upstream_after_mib")
    assert all(v > 0 for v in _numbers(memory, *mib))
    assert len(doc["targets"]) == 10
    # Without nginx, the rows measured against it have nothing to divide by.
    against_nginx = [t for t in doc["targets"] if "nginx's" in t["name"] or "same" in t["name"]]
    assert len(against_nginx) == 4
    expected = (
        doc["targets"]
        if doc["meta"]["nginx"]
        else [t for t in doc["targets"] if t not in against_nginx]
    )
    assert all(t["value"] is not None for t in expected), doc["targets"]

    from bench.compare import ROWS, table

    rows = table(doc, doc).splitlines()[2:]  # the run against itself: every row filled in
    assert len(rows) == len(ROWS)
    assert not [row for row in rows if "| — |" in row and doc["meta"]["nginx"]], rows
    assert "| — |" in table({}, doc)  # an older run without a row shows a dash

    markdown = (tmp_path / "benchmarks.md").read_text()
    for target in doc["targets"]:
        assert target["name"] in markdown
    assert doc["meta"]["python"] in markdown
    assert doc["meta"]["cores_claim"] == "not claimed (--share-cores or --smoke)"
    assert doc["meta"]["cores_usable"] == len(os.sched_getaffinity(0))  # not just core 1
    assert "proxy waited for a core, ms" in markdown


def test_compare_says_how_each_run_was_made() -> None:
    """bench.compare lists each run's build, image settings and cores claim under its table,
    marking those that differ: a run from before they were recorded against one after."""
    from bench.compare import CONDITIONS, conditions

    meta = {
        "commit": "abc",
        "compiled": "mypyc",
        "image_settings": "PYTHONUNBUFFERED=1 MALLOC_ARENA_MAX=2 PYTHONOPTIMIZE=2",
        "cores_claim": "the bench's session at autogroup nice -20 (was 0)",
        "loadgen": "wrk 4.1.0",
        "cores_usable": 2,
    }
    older = {"meta": {"commit": "012", "compiled": "mypyc", "loadgen": "wrk 4.1.0"}}
    rows = conditions(older, {"meta": meta}).splitlines()[2:]
    assert len(rows) == len(CONDITIONS)
    assert "| the image's runtime settings (differs) | — | PYTHONUNBUFFERED=1 " in rows[2]
    assert rows[1] == "| hot path compiled (sidecar.compiled) | mypyc | mypyc |"
    assert "(differs)" not in conditions({"meta": meta}, {"meta": meta})


def test_profile_ranks_self_time_and_the_sidecars_own_functions() -> None:
    from bench.profile import parse_collapsed

    stacks = [
        "main (sidecar/app.py:10);run (asyncio/runners.py:1);handle (sidecar/gateway.py:5);"
        "send (aiohttp/client_reqrep.py:7) 3",
        "main (sidecar/app.py:10);run (asyncio/runners.py:1);handle (sidecar/gateway.py:5) 1",
        "not a stack line",
    ]
    profile = parse_collapsed(stacks)
    assert profile.samples == 4
    assert [(h.where, h.percent) for h in profile.self_time] == [
        ("aiohttp/client_reqrep.py:send", 75.0),
        ("sidecar/gateway.py:handle", 25.0),
    ]
    assert [h.where for h in profile.sidecar_inclusive] == ["sidecar/gateway.py:handle"]
    assert profile.by_package[0].where == "aiohttp client"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_memory_row_alone_measures_both_checkouts() -> None:
    """``python -m bench.memory`` with ``--against`` (here the same checkout) and ``--env``:
    a row per checkout and setting with an idle RSS, a figure with the connections open,
    and an import count."""
    argv = ["--trials", "1", "--connections", "50", "--against", str(ROOT)]
    argv += ["--env", "MALLOC_ARENA_MAX=2"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.memory", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    rows = lines[lines.index(next(x for x in lines if x.startswith("checkout"))) + 1 :][:3]
    assert len(rows) == 3, proc.stdout
    assert rows[2].split()[0] == f"{ROOT}+MALLOC_ARENA_MAX=2"
    for row in rows:
        _tree, idle, anon, files, after, _per_conn, peak, modules = row.split()
        assert float(anon) + float(files) == pytest.approx(float(idle), abs=0.2), row
        assert 0 < float(idle) <= float(after) <= float(peak), row
        assert int(modules) > 100, row
    assert "(50);" in proc.stdout  # every connection was opened
    from bench.machine import image_settings

    header = "the hot path of each row (sidecar.compiled), and the image's settings it ran with"
    builds = lines[lines.index(header) + 1 :][:3]
    assert [row.split()[0] for row in builds] == [
        str(ROOT),
        str(ROOT),
        f"{ROOT}+MALLOC_ARENA_MAX=2",
    ]
    assert all(row.split()[1] in ("no", "mypyc") for row in builds), builds
    # Each row says what it ran with: this environment's settings (none unless compiled),
    # and the row given one has it.
    assert [" ".join(row.split()[2:]) for row in builds[:2]] == [image_settings() or "none"] * 2
    assert "MALLOC_ARENA_MAX=2" in builds[2].split()[2:], builds


def test_memory_refuses_a_setting_that_is_not_name_value() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.memory", "--env", "MALLOC_ARENA_MAX"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "expected NAME=VALUE" in proc.stderr


def test_memory_refuses_a_directory_that_is_no_checkout(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.memory", "--against", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "is not a sidecar checkout" in proc.stderr


def test_memory_refuses_a_checkout_without_its_compiled_copy(tmp_path: Path) -> None:
    """Measuring the compiled build, another checkout runs its own compiled copy: without
    one it would run pure against this checkout compiled, so bench.memory refuses."""
    (tmp_path / "sidecar").mkdir()
    (tmp_path / "sidecar" / "__main__.py").write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.memory", "--against", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "SIDECAR_BENCH_COMPILED": str(tmp_path / "compiled")},
    )
    assert proc.returncode == 2
    assert f"no compiled copy in {tmp_path / 'build' / 'compiled'}" in proc.stderr


def test_another_checkout_runs_its_own_compiled_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench.procs import ROOT as BENCH_ROOT
    from bench.procs import child_env

    monkeypatch.delenv("SIDECAR_BENCH_COMPILED", raising=False)
    assert child_env(tmp_path)["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path)
    monkeypatch.setenv("SIDECAR_BENCH_COMPILED", "/opt/this-build")
    mine, other = child_env(BENCH_ROOT), child_env(tmp_path)
    assert mine["PYTHONPATH"].split(os.pathsep)[:2] == ["/opt/this-build", str(BENCH_ROOT)]
    assert other["PYTHONPATH"].split(os.pathsep)[:2] == [
        str(tmp_path / "build" / "compiled"),
        str(tmp_path),
    ]
    assert mine["PYTHONSAFEPATH"] == other["PYTHONSAFEPATH"] == "1"


def test_the_compiled_sidecar_runs_in_the_images_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With ``SIDECAR_BENCH_COMPILED`` (what scripts/bench measures, the image's build),
    ``sidecar serve`` gets the image's runtime settings; a setting of this environment's
    own wins (``PYTHONOPTIMIZE=`` empty measures with docstrings); pure runs get none."""
    from bench.machine import image_settings
    from bench.procs import IMAGE_RUNTIME_ENV, sidecar_env

    for name in IMAGE_RUNTIME_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("SIDECAR_BENCH_COMPILED", raising=False)
    assert not set(IMAGE_RUNTIME_ENV) & set(sidecar_env())
    assert image_settings() is None
    monkeypatch.setenv("SIDECAR_BENCH_COMPILED", "/opt/this-build")
    env = sidecar_env()
    assert {k: env[k] for k in IMAGE_RUNTIME_ENV} == IMAGE_RUNTIME_ENV
    assert env["PYTHONOPTIMIZE"] == "2"
    assert image_settings() == "PYTHONUNBUFFERED=1 MALLOC_ARENA_MAX=2 PYTHONOPTIMIZE=2"
    monkeypatch.setenv("PYTHONOPTIMIZE", "")
    assert sidecar_env()["PYTHONOPTIMIZE"] == ""
    # What bench.memory prints for a row: the settings of the environment it ran in.
    both = "PYTHONUNBUFFERED=1 MALLOC_ARENA_MAX=2"
    assert image_settings() == image_settings(sidecar_env()) == both
