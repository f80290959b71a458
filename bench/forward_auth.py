"""Forward-auth mode side by side, in one run: what asking the sidecar costs behind nginx.

Rows (authenticated ``GET /api/items``, 100-byte answers, 64 connections):

- ``app``: the plain upstream, direct (for reference);
- ``nginx → app``: nginx proxying, no auth (the baseline of the ratios);
- ``nginx + auth_request → sidecar``: the shipped recipe (deploy/nginx/forward-auth.conf) —
  nginx asks ``/_sidecar/auth`` for every request, then proxies to the app itself;
- ``sidecar → app``: the sidecar as the proxy.

Each trial measures the rows back to back and takes each row's req/s over the baseline's
within the trial; the table shows medians. CPU µs per request is read from /proc for each
process tree (nginx master + worker; the sidecar), so "the sidecar's part" is its own CPU
whatever the other processes do. Layout: nginx and the sidecar on core 0, the app and the
load generator on core 1.

``python -m bench.forward_auth`` (about a minute) prints the table and writes
``bench/results/forward_auth.json``; ``--smoke`` runs one second per row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.loadgen import LoadSpec, loadgen_name, run_load
from bench.machine import describe
from bench.procs import (
    BenchError,
    children,
    cores_available,
    cpu_seconds,
    free_port,
    spawn,
    wait_port,
)
from bench.scenarios import PROXIED_PATH
from bench.servers import nginx_path, start_nginx, start_upstream
from bench.target import COOKIE, session_cookie, sqlite_url, start_sidecar

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "deploy" / "nginx" / "forward-auth.conf"
JSON = ROOT / "bench" / "results" / "forward_auth.json"
BASELINE = "nginx → app"
Log = Callable[[str], None]


@dataclass(frozen=True)
class Row:
    name: str
    per_s: float
    ratio: float | None  # req/s over nginx → app's, within each trial (median)
    p50_ms: float
    p99_ms: float
    nginx_cpu_us: float | None
    sidecar_cpu_us: float | None


def recipe_conf(prefix: Path, port: int, app: int, sidecar: int) -> str:
    """The shipped recipe with this run's addresses, private temp paths and no access log."""
    text = RECIPE.read_text(encoding="utf-8")
    for old, new in (
        ("server 127.0.0.1:3000;", f"server 127.0.0.1:{app};"),
        ("server 127.0.0.1:8080;", f"server 127.0.0.1:{sidecar};"),
        ("listen 80;", f"listen 127.0.0.1:{port};"),
        ("events {}", "events { worker_connections 4096; }"),
        # The recipe's token-free access log, off (as for nginx → app in bench/servers.py).
        ("access_log /var/log/nginx/access.log sidecar_no_query;", "access_log off;"),
    ):
        if text.count(old) != 1:
            raise BenchError(f"{RECIPE.name}: expected {old!r} once")
        text = text.replace(old, new)
    temp = "".join(
        f"    {kind}_temp_path {prefix / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return text.replace("http {\n", "http {\n" + temp, 1)


def _measure(
    spec: LoadSpec, load: Sequence[int], nginx: int | None, sidecar: int | None
) -> tuple[float, float, float, float | None, float | None]:
    pids = [p for p in (nginx, sidecar) if p is not None]
    before = {p: cpu_seconds(p) for p in pids}
    result = run_load(spec, load)
    if result.ok == 0:
        raise BenchError(f"no successful answer on port {spec.port}")
    per = {p: (cpu_seconds(p) - before[p]) / result.ok * 1e6 for p in pids}
    return (
        result.ok_per_s,
        result.p50_ms,
        result.p99_ms,
        per.get(nginx) if nginx else None,
        per.get(sidecar) if sidecar else None,
    )


def run(trials: int, duration: int, log: Log) -> tuple[list[Row], dict[str, object]]:
    exe = nginx_path()
    if exe is None:
        raise BenchError("nginx is not installed (apt-get install nginx-light)")
    cores = cores_available()
    c0, c1 = cores[0], cores[1 % len(cores)]
    with tempfile.TemporaryDirectory(prefix="bench-fa-") as tmp, children() as kids:
        work = Path(tmp)
        upstream = start_upstream(work, [c1])
        kids.append(upstream.child)
        plain = start_nginx(work, upstream.port, [c0])
        if plain is None:
            raise BenchError("nginx did not start")
        kids.append(plain.child)
        sc = start_sidecar(
            work,
            name="sidecar",
            upstream_port=upstream.port,
            store_url=sqlite_url(work / "sidecar.db"),
            cores=[c0],
            trusted_proxies=["127.0.0.1/32"],
        )
        kids.append(sc.child)
        prefix = work / "nginx-auth"
        prefix.mkdir()
        port = free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(recipe_conf(prefix, port, upstream.port, sc.proxy_port))
        main = f"daemon off; worker_processes 1; pid {prefix / 'nginx.pid'};"
        auth = spawn(
            "nginx-auth",
            [exe, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log"), "-g", main],
            logdir=work,
            cores=[c0],
        )
        kids.append(auth)
        wait_port(auth, port)
        cookie = session_cookie(sc)
        headers = {"Cookie": f"{COOKIE}={cookie}"}
        rows = [
            ("app", upstream.port, None, None),
            (BASELINE, plain.port, plain.pid, None),
            ("nginx + auth_request → sidecar", port, auth.pid, sc.pid),
            ("sidecar → app", sc.proxy_port, None, sc.pid),
        ]

        def spec(p: int, seconds: int) -> LoadSpec:
            return LoadSpec(
                port=p, path=PROXIED_PATH, headers=headers, duration=seconds, ok_status=200
            )

        for _, p, _, _ in rows:  # warm-up: pools, caches, first code paths
            run_load(spec(p, 1), [c1])
        runs: dict[str, list[tuple[float, float, float, float | None, float | None]]] = {
            name: [] for name, *_ in rows
        }
        ratios: dict[str, list[float]] = {name: [] for name, *_ in rows}
        for trial in range(trials):
            log(f"trial {trial + 1}/{trials}")
            measured = {name: _measure(spec(p, duration), [c1], ng, sd) for name, p, ng, sd in rows}
            base = measured[BASELINE][0]
            for name, m in measured.items():
                runs[name].append(m)
                ratios[name].append(m[0] / base)

    def med(values: Sequence[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    table = [
        Row(
            name=name,
            per_s=statistics.median(m[0] for m in ms),
            ratio=med(ratios[name]),
            p50_ms=statistics.median(m[1] for m in ms),
            p99_ms=statistics.median(m[2] for m in ms),
            nginx_cpu_us=med([m[3] for m in ms]),
            sidecar_cpu_us=med([m[4] for m in ms]),
        )
        for name, ms in runs.items()
    ]
    meta: dict[str, object] = {
        **describe(),
        "loadgen": loadgen_name(),
        "trials": trials,
        "duration_s": duration,
        "connections": 64,
        "layout": "nginx and sidecar on core 0; app and load generator on core 1",
    }
    return table, meta


def markdown(rows: Sequence[Row]) -> str:
    """Ratios and CPU per request only: on a shared machine absolute req/s mislead (they are
    in the JSON)."""

    def fmt(value: float | None, digits: int = 0) -> str:
        return "—" if value is None else f"{value:,.{digits}f}"

    lines = [
        "| path of a request | req/s ratio to nginx → app | nginx CPU µs/req "
        "| sidecar CPU µs/req |",
        "| --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {fmt(r.ratio, 2)} | {fmt(r.nginx_cpu_us)} | {fmt(r.sidecar_cpu_us)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.forward_auth", description=__doc__)
    p.add_argument("--smoke", action="store_true", help="one second per row, one trial")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--duration", type=int, default=3, help="seconds per row and trial")
    p.add_argument("--json", type=Path, default=JSON)
    args = p.parse_args(argv)
    trials, duration = (1, 1) if args.smoke else (args.trials, args.duration)

    def log(message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    try:
        rows, meta = run(trials, duration, log)
    except BenchError as exc:
        log(f"failed: {exc}")
        return 1
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2) + "\n"
    )
    print(markdown(rows))
    log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
