"""Mints and redemptions alone: the CPU a mint and a redemption cost, without the full run.

``python -m bench.tokens`` starts one sidecar on a SQLite store (``--redis`` adds one on a
real redis-server), then measures exactly as ``python -m bench`` does
(:func:`bench.scenarios.mints` and :func:`bench.scenarios.redemptions`: sidecar on core 0,
load on core 1, CPU = utime + stime of the sidecar's process tree per answered request) and
prints the median of ``--trials`` runs and every trial. ``--profile FILE`` also samples the
sidecar with py-spy during one unmeasured run of each and writes the collapsed stacks
(``FILE.mints.txt``, ``FILE.redemptions.txt``) and their top frames.

About a minute with the defaults. The machine's load average is printed: on a shared
machine compare runs made under the same load.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from bench.loadgen import LoadSpec, loadgen_name, run_load
from bench.machine import image_settings, served_build
from bench.procs import BenchError, children, cores_available
from bench.profile import Profile, parse_collapsed, py_spy
from bench.scenarios import Measure, mints, redemptions
from bench.servers import start_redis, start_upstream
from bench.target import Sidecar, mint_body_json, mint_tokens, sqlite_url, start_sidecar


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.tokens", description=__doc__)
    p.add_argument("--trials", type=int, default=5, help="runs per figure (median taken)")
    p.add_argument("--duration", type=int, default=3, help="seconds per mint run")
    p.add_argument("--tokens", type=int, default=4000, help="one-time links per redemption run")
    p.add_argument("--redis", action="store_true", help="also redemptions on redis-server")
    p.add_argument("--profile", type=Path, help="py-spy stacks to FILE.{mints,redemptions}.txt")
    p.add_argument("--native", action="store_true", help="py-spy --native: C frames too")
    return p


def _log(message: str) -> None:
    print(f"[bench.tokens {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _show(name: str, m: Measure) -> None:
    trials = ", ".join(f"{s.cpu_us:.0f}" for s in m.samples if s.cpu_us is not None)
    cpu = "-" if m.cpu_us is None else f"{m.cpu_us:.0f}"
    print(
        f"{name:<22} {cpu:>6} µs CPU/op (trials: {trials}); {m.per_s:,.0f}/s, "
        f"p50 {m.p50_ms:.2f} ms, p99 {m.p99_ms:.2f} ms"
    )


def _profile(
    pid: int, spec: LoadSpec, load_cores: Sequence[int], out: Path, *, native: bool
) -> Profile | None:
    exe = py_spy()
    if exe is None:
        _log("py-spy is not installed: no profile")
        return None
    argv = [exe, "record", "--pid", str(pid), "--rate", "500", "--format", "raw"]
    argv += ["--output", str(out), "--duration", str(spec.duration)]
    # --native pauses the process per sample (py-spy cannot unwind C frames otherwise).
    argv.append("--native" if native else "--nonblocking")
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run_load(spec, load_cores)
        spy.wait(timeout=spec.duration + 30)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    return parse_collapsed(out.read_text().splitlines(), top=25) if out.exists() else None


def _print_profile(name: str, profile: Profile | None) -> None:
    if profile is None:
        return
    print(f"\n{name}: {profile.samples} samples; self time")
    for h in profile.self_time:
        print(f"  {h.percent:5.1f}%  {h.where}")
    print(f"{name}: sidecar functions, inclusive")
    for h in profile.sidecar_inclusive:
        print(f"  {h.percent:5.1f}%  {h.where}")


def _measure(sc: Sidecar, args: argparse.Namespace, c1: int, label: str) -> None:
    m = mints(sc, load_cores=[c1], trials=args.trials, duration=args.duration)
    _show("mints", m)
    r = redemptions(
        sc, load_cores=[c1], trials=args.trials, tokens=args.tokens, duration=args.duration
    )
    _show(f"redemptions, {label}", r)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cores = cores_available()
    c0, c1 = cores[0], cores[1 % len(cores)]
    os.sched_setaffinity(0, {c1})
    print(f"load average {os.getloadavg()[0]:.2f}; load generator {loadgen_name()}")
    # Figures of a pure and a compiled sidecar, or of one with and one without the image's
    # settings, differ by more than a change usually moves them: say which this run is.
    print(
        f"sidecar hot path {served_build() or 'unknown'}; "
        f"image settings {image_settings() or 'none'}"
    )
    try:
        with tempfile.TemporaryDirectory(prefix="bench-tokens-") as tmp, children() as kids:
            work = Path(tmp)
            upstream = start_upstream(work, [c1])
            kids.append(upstream.child)
            sc = start_sidecar(
                work,
                name="sidecar-sqlite",
                upstream_port=upstream.port,
                store_url=sqlite_url(work / "sidecar.db"),
                cores=[c0],
            )
            kids.append(sc.child)
            _measure(sc, args, c1, "sqlite")
            if args.profile is not None:
                mint_spec = LoadSpec(
                    port=sc.admin_port,
                    path="/referstring",
                    method="POST",
                    headers=sc.admin_headers,
                    body=mint_body_json(),
                    duration=args.duration,
                    ok_status=200,
                )
                out = args.profile.with_suffix(".mints.txt")
                _print_profile("mints", _profile(sc.pid, mint_spec, [c1], out, native=args.native))
                paths = [f"/?refer={t}" for t in mint_tokens(sc, args.tokens)]
                redeem_spec = replace(
                    mint_spec,
                    port=sc.proxy_port,
                    path="/",
                    method="GET",
                    headers={},
                    body=None,
                    paths=paths,
                    ok_status=303,
                )
                out = args.profile.with_suffix(".redemptions.txt")
                _print_profile(
                    "redemptions", _profile(sc.pid, redeem_spec, [c1], out, native=args.native)
                )
            sc.stop()
            kids.remove(sc.child)
            if args.redis:
                redis = start_redis(work, [c1])
                if redis is None:
                    raise BenchError("redis-server is not installed")
                kids.append(redis.child)
                sc = start_sidecar(
                    work, name="sidecar-redis", upstream_port=upstream.port,
                    store_url=redis.url, cores=[c0],
                )  # fmt: skip
                kids.append(sc.child)
                r = redemptions(
                    sc,
                    load_cores=[c1],
                    trials=args.trials,
                    tokens=args.tokens,
                    duration=args.duration,
                )
                _show("redemptions, redis", r)
    except BenchError as exc:
        _log(f"failed: {exc}")
        return 1
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
