"""``python -m bench.stalls``: why the proxied p99 is what it is, from inside the sidecar.

Layout C (the sidecar alone on core 0; the upstream and wrk on core 1), 64 keep-alive
connections of authenticated GETs, with the sidecar run under :mod:`bench.stallprobe`.
Prints p50/p99, the sidecar's runqueue wait, its late event-loop iterations by cause
(``loop``: its own work; ``gc``: a collection; ``thread``: another thread; ``core``: it
waited for a core) and its collections by generation, for each of ``--trials`` runs:

    python -m bench.stalls --trials 3 --seconds 3
    SIDECAR_BENCH_COMPILED=build/compiled python -m bench.stalls --share-cores

The evidence does not depend on the machine's load: a late iteration with the CPU time
spent across it is the sidecar's; one without is its neighbours'.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from bench.loadgen import LoadSpec, run_load
from bench.procs import children, cores_available
from bench.scenarios import PROXIED_PATH
from bench.sched import claimed_cores, runqueue_seconds
from bench.servers import start_upstream
from bench.stallprobe import Collection, Late, cause
from bench.target import COOKIE, session_cookie, sqlite_url, start_sidecar


def summarize(late: list[Late], collections: list[Collection]) -> dict[str, object]:
    """Late iterations by cause (count, total ms, longest ms) and collections by
    generation (count, longest ms), from one window of the probe's log."""
    by_cause: dict[str, list[float]] = {}
    for x in late:
        by_cause.setdefault(cause(x, collections), []).append(x.late_ms)
    gens = Counter(c.generation for c in collections)
    return {
        "late": {
            k: {"count": len(v), "total_ms": round(sum(v), 1), "max_ms": round(max(v), 1)}
            for k, v in sorted(by_cause.items())
        },
        "collections": {
            str(g): {
                "count": n,
                "max_ms": round(max(c.ms for c in collections if c.generation == g), 2),
            }
            for g, n in sorted(gens.items())
        },
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.stalls", description=__doc__)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--seconds", type=int, default=3, help="per trial")
    p.add_argument("--no-access-log", action="store_true", help="logging.access: false")
    p.add_argument("--share-cores", action="store_true", help="see bench/sched.py")
    p.add_argument("--json", type=Path, help="also write the trials here")
    return p


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    cores = cores_available()
    c0, c1 = cores[0], cores[1 % len(cores)]
    trials: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-stalls-") as tmp, children() as kids:
        work = Path(tmp)
        probe_log = work / "probe.json"
        upstream = start_upstream(work, [c1])
        kids.append(upstream.child)
        sc = start_sidecar(
            work,
            name="sidecar",
            upstream_port=upstream.port,
            store_url=sqlite_url(work / "sidecar.db"),
            cores=[c0],
            access_log=not args.no_access_log,
            wrap=["-m", "bench.stallprobe", str(probe_log)],
        )
        kids.append(sc.child)
        spec = LoadSpec(
            port=sc.proxy_port,
            path=PROXIED_PATH,
            headers={"Cookie": f"{COOKIE}={session_cookie(sc)}"},
            duration=args.seconds,
            ok_status=200,
        )
        run_load(replace(spec, duration=1), [c1])  # warm-up
        windows = []
        for _ in range(args.trials):
            waited, start = runqueue_seconds(sc.pid), time.perf_counter()
            result = run_load(spec, [c1])
            windows.append((start, time.perf_counter()))
            trials.append(
                {
                    "per_s": round(result.ok_per_s),
                    "p50_ms": round(result.p50_ms, 2),
                    "p99_ms": round(result.p99_ms, 2),
                    "waited_ms": round((runqueue_seconds(sc.pid) - waited) * 1e3),
                }
            )
        sc.stop()  # the probe writes its log at exit
        kids.remove(sc.child)
        log = json.loads(probe_log.read_text())
    late = [Late(**x) for x in log["late"]]
    collections = [Collection(**x) for x in log["collections"]]
    for trial, (start, end) in zip(trials, windows, strict=True):
        trial.update(
            summarize(
                [x for x in late if start <= x.at <= end],
                [c for c in collections if start <= c.at <= end],
            )
        )
    return trials


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.share_cores:
        claim = "not claimed (--share-cores)"
        trials = run(args)
    else:
        with claimed_cores() as claim:
            trials = run(args)
    print(f"cores: {claim}")
    for i, t in enumerate(trials):
        print(f"trial {i}: {json.dumps(t)}")
    print(f"median p99 {statistics.median(float(str(t['p99_ms'])) for t in trials):.2f} ms")
    if args.json:
        args.json.write_text(json.dumps({"cores_claim": claim, "trials": trials}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
