"""``python -m bench.logsinks``: the proxied p99 against where the access log goes.

Layout C (sidecars alone on core 0; the upstream and wrk on core 1), 64 keep-alive
connections of authenticated GETs. One sidecar per sink, all started at once and measured
in turn, trial after trial (interleaved), each under :mod:`bench.writeprobe` (every write
to its stderr timed) and :mod:`bench.stallprobe` (late loop iterations):

- ``disk``: a file in the run's temp dir (``/tmp``: the root filesystem), as ``scripts/bench``;
- ``shm``: a file on ``/dev/shm`` (tmpfs: no disk behind it);
- ``null``: ``/dev/null``;
- ``pipe``: a pipe read by a thread of this process (a log collector that keeps up);
- ``off``: ``logging.access: false`` (the log file on ``/tmp``);
- ``nginx``: the reference, no access log.

    SIDECAR_BENCH_COMPILED=build/compiled python -m bench.logsinks --trials 6

Prints one line per run and the medians per sink: p50, p99, the sidecar's runqueue wait, its
log writes (count, the longest, those over 1 ms) and its late iterations over 3 ms by cause.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from bench.loadgen import LoadSpec, run_load
from bench.procs import children, cores_available, cpu_seconds
from bench.scenarios import PROXIED_PATH
from bench.sched import claimed_cores, runqueue_seconds
from bench.servers import start_nginx, start_upstream
from bench.stallprobe import Collection, Late, cause
from bench.target import COOKIE, Sidecar, session_cookie, sqlite_url, start_sidecar

SINKS = ("disk", "shm", "null", "pipe", "off")
# A sink's name may end in "+stall": that sidecar runs under bench.stallprobe too (its 1 ms
# timer keeps the loop from ever sleeping longer: the probe can change what it measures);
# "+bare": without bench.writeprobe either (nothing of the probes' in the process); "+sync":
# logging.backlog 0 (no writing thread: the loop writes and waits, as before it existed).


def _drain(fd: int) -> None:
    while os.read(fd, 1 << 16):
        pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.logsinks", description=__doc__)
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--seconds", type=int, default=3, help="per run")
    p.add_argument("--sinks", default=",".join(SINKS), help="of " + ",".join(SINKS))
    p.add_argument("--no-nginx", action="store_true")
    p.add_argument(
        "--layout", choices=("A", "C"), default="C", help="A: the upstream on core 0 too"
    )
    p.add_argument("--share-cores", action="store_true", help="see bench/sched.py")
    p.add_argument("--json", type=Path, help="also write every run here")
    return p


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    cores = cores_available()
    c0, c1 = cores[0], cores[1 % len(cores)]
    os.sched_setaffinity(0, {c1})
    sinks = [s for s in args.sinks.split(",") if s]
    runs: list[dict[str, object]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-sinks-") as tmp,
        tempfile.TemporaryDirectory(prefix="bench-sinks-", dir="/dev/shm") as shm,
        children() as kids,
    ):
        work = Path(tmp)
        upstream = start_upstream(work, [c0 if args.layout == "A" else c1])
        kids.append(upstream.child)
        targets: dict[str, tuple[int, int]] = {}  # name: (port, pid)
        sidecars: dict[str, Sidecar] = {}
        probes: dict[str, tuple[Path, Path]] = {}
        for name in sinks:
            sink, *extras = name.split("+")
            output: int | None = None
            if sink == "shm":
                log = Path(shm, f"sidecar-{name}.log")
                output = os.open(log, os.O_WRONLY | os.O_CREAT, 0o600)
            elif sink == "null":
                output = os.open(os.devnull, os.O_WRONLY)
            elif sink == "pipe":
                r, output = os.pipe()
                threading.Thread(target=_drain, args=(r,), daemon=True).start()
            probes[name] = (work / f"writes-{name}.json", work / f"stalls-{name}.json")
            wrap = [] if "bare" in extras else ["-m", "bench.writeprobe", str(probes[name][0])]
            if "stall" in extras:
                wrap += ["-m", "bench.stallprobe", str(probes[name][1])]
            sc = start_sidecar(
                work,
                name=f"sidecar-{name}",
                upstream_port=upstream.port,
                store_url=sqlite_url(work / "sidecar.db"),
                cores=[c0],
                access_log=sink != "off",
                wrap=wrap,
                output=output,
                log_extra={"backlog": "0"} if "sync" in extras else None,
            )
            if output is not None:
                os.close(output)
            kids.append(sc.child)
            sidecars[name] = sc
            targets[name] = (sc.proxy_port, sc.pid)
        if not args.no_nginx:
            nginx = start_nginx(work, upstream.port, [c0])
            if nginx is not None:
                kids.append(nginx.child)
                targets["nginx"] = (nginx.port, nginx.pid)
        cookie = session_cookie(next(iter(sidecars.values())))
        headers = {"Cookie": f"{COOKIE}={cookie}"}

        def spec(port: int, seconds: int) -> LoadSpec:
            return LoadSpec(port=port, path=PROXIED_PATH, headers=headers, duration=seconds)

        for port, _ in targets.values():
            run_load(replace(spec(port, 1), ok_status=200), [c1])
        for trial in range(args.trials):
            for name, (port, pid) in targets.items():
                waited, start = runqueue_seconds(pid), time.perf_counter()
                cpu = cpu_seconds(pid)
                result = run_load(replace(spec(port, args.seconds), ok_status=200), [c1])
                end = time.perf_counter()
                cpu = cpu_seconds(pid) - cpu
                one = {
                    "trial": trial,
                    "target": name,
                    "per_s": round(result.ok_per_s),
                    "p50_ms": round(result.p50_ms, 2),
                    "p99_ms": round(result.p99_ms, 2),
                    "waited_ms": round((runqueue_seconds(pid) - waited) * 1e3),
                    "cpu_us": round(cpu / result.ok * 1e6, 1) if result.ok else None,
                    "window": (start, end),
                    "load": os.getloadavg()[0],
                }
                runs.append(one)
                print(json.dumps({k: v for k, v in one.items() if k != "window"}), flush=True)
        for sc in sidecars.values():
            sc.child.proc.send_signal(signal.SIGTERM)
        for sc in sidecars.values():
            sc.child.proc.wait(timeout=20)
            kids.remove(sc.child)
        for one in runs:
            name = str(one["target"])
            if name not in probes or not probes[name][0].exists():
                continue
            start, end = one["window"]  # type: ignore[misc]
            writes = json.loads(probes[name][0].read_text())["writes"]
            stalls = (
                json.loads(probes[name][1].read_text())
                if probes[name][1].exists()
                else {"late": [], "collections": []}
            )
            inside = [w for w in writes if start <= w[0] <= end]
            walls = sorted(w[1] for w in inside)
            one["writes"] = len(inside)
            one["write_max_ms"] = round(walls[-1], 2) if walls else 0.0
            one["write_p50_ms"] = round(walls[len(walls) // 2], 3) if walls else 0.0
            one["writes_over_1ms"] = sum(1 for w in walls if w > 1.0)
            one["write_wait_ms"] = round(sum(w[1] - w[2] for w in inside), 2)
            late = [Late(**x) for x in stalls["late"] if start <= x["at"] <= end]
            colls = [Collection(**x) for x in stalls["collections"]]
            by: dict[str, list[float]] = {}
            for x in late:
                by.setdefault(cause(x, colls), []).append(x.late_ms)
            one["late"] = {k: (len(v), round(sum(v), 1), round(max(v), 1)) for k, v in by.items()}
    return runs


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.share_cores:
        runs = run(args)
    else:
        with claimed_cores() as claim:
            print(f"cores: {claim}", flush=True)
            runs = run(args)
    for one in runs:
        print(json.dumps({k: v for k, v in one.items() if k not in ("window",)}))
    names = list(dict.fromkeys(str(r["target"]) for r in runs))
    for name in names:
        mine = [r for r in runs if r["target"] == name]

        def med(key: str, rows: list[dict[str, object]] = mine) -> float:
            return statistics.median(float(str(r[key])) for r in rows if key in r)

        print(
            f"{name:6} p50 {med('p50_ms'):6.2f}  p99 {med('p99_ms'):6.2f} "
            f"(runs: {', '.join(str(r['p99_ms']) for r in mine)})"
            f"  waited {med('waited_ms'):5.0f} ms"
            + f"  CPU {med('cpu_us'):5.1f} us/req"
            + (
                f"  writes {med('writes'):4.0f} max {med('write_max_ms'):.2f} ms"
                if "writes" in mine[0]
                else ""
            )
        )
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
