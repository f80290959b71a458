"""Results to ``bench/results/latest.json`` and ``docs/benchmarks.md`` (targets met/missed)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.run import NGINX_LOGGED, NO_ACCESS_LOG, Results
from bench.scenarios import Measure


@dataclass(frozen=True)
class Target:
    name: str
    goal: str
    value: float | None
    unit: str
    met: bool | None  # None: not measured in this run
    nginx: str = "—"  # the same measure for nginx in the same run, where it has one


def _check(
    name: str,
    value: float | None,
    goal: float,
    unit: str,
    *,
    at_least: bool,
    nginx: str = "—",
) -> Target:
    sign = "≥" if at_least else "≤"
    met = None if value is None else (value >= goal if at_least else value <= goal)
    return Target(name, f"{sign} {goal:g}{unit}", value, unit, met, nginx)


def _pair(r: Results, layout: str) -> tuple[Measure | None, Measure | None]:
    by_target = r.proxied.get(layout, {})
    return by_target.get("sidecar"), by_target.get("nginx")


def _over(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _worst_cpu_ratio(r: Results, proxy: str, nginx: str) -> tuple[str | None, float | None]:
    """The layout, A or C, where ``proxy``'s CPU per request is the largest multiple of
    ``nginx``'s in the same run, and that multiple (None, None: neither was measured)."""
    ratios = [
        (k, _over(by[proxy].cpu_us, by[nginx].cpu_us))
        for k in ("A", "C")
        if proxy in (by := r.proxied.get(k, {})) and nginx in by
    ]
    return max(ratios, key=lambda kv: kv[1] or 0.0, default=(None, None))


def targets(r: Results) -> list[Target]:
    """The rows of issue #15's table, each beside nginx's figure from the same run."""
    a, a_nginx = _pair(r, "A")
    c, c_nginx = _pair(r, "C")
    worst = _worst_cpu_ratio(r, "sidecar", "nginx")
    logging_worst = _worst_cpu_ratio(r, "sidecar", NGINX_LOGGED)
    quiet_worst = _worst_cpu_ratio(r, NO_ACCESS_LOG, "nginx")[1]
    sqlite = r.redemptions.get("sqlite")
    full = r.latency.get(str(r.settings.burned))

    def us(m: Measure | None) -> str:
        return "—" if m is None or m.cpu_us is None else f"{m.cpu_us:,.0f} µs"

    return [
        _check(
            "Sidecar CPU µs per proxied request ÷ nginx's (worse of layouts A and C"
            + (f": {worst[0]}" if worst[0] else "")
            + ")",
            worst[1],
            2.0,
            " times",
            at_least=False,
            nginx=us(r.proxied.get(worst[0] or "", {}).get("nginx")),
        ),
        _check(
            "The same against an nginx writing its default access log (both log each request"
            + (f"; worse layout: {logging_worst[0]}" if logging_worst[0] else "")
            + ")",
            logging_worst[1],
            2.0,
            " times",
            at_least=False,
            nginx=us(r.proxied.get(logging_worst[0] or "", {}).get(NGINX_LOGGED)),
        ),
        _check(
            "The same with logging.access false (nginx's access_log is off here)",
            quiet_worst,
            2.0,
            " times",
            at_least=False,
        ),
        _check(
            "Throughput ÷ direct, layout C",
            c.ratio if c else None,
            0.75,
            "",
            at_least=True,
            nginx=_n(c_nginx.ratio if c_nginx else None, ".2f"),
        ),
        _check(
            "Throughput ÷ direct, layout A",
            a.ratio if a else None,
            0.45,
            "",
            at_least=True,
            nginx=_n(a_nginx.ratio if a_nginx else None, ".2f"),
        ),
        _check(
            "p99 at 64 connections ÷ nginx's p99, layout C",
            _over(c.p99_ms if c else None, c_nginx.p99_ms if c_nginx else None),
            2.0,
            " times",
            at_least=False,
            nginx=_n(c_nginx.p99_ms if c_nginx else None, ".2f") + " ms" if c_nginx else "—",
        ),
        _check(
            "CPU µs per redemption (durable burn + session + 303), SQLite",
            sqlite.cpu_us if sqlite else None,
            120,
            " µs",
            at_least=False,
        ),
        _check("CPU µs per mint", r.mints.cpu_us if r.mints else None, 100, " µs", at_least=False),
        _check(
            f"RSS after {r.settings.connections:,} connections",
            r.memory.after_mib if r.memory else None,
            60,
            " MiB",
            at_least=False,
        ),
        _check(
            f"Redemption p50 at {r.settings.burned:,} burned ÷ empty",
            full.ratio if full else None,
            1.2,
            " times",
            at_least=False,
        ),
    ]


def to_json(r: Results) -> dict[str, object]:
    doc = asdict(r)
    doc["targets"] = [asdict(t) for t in targets(r)]
    doc["generated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return doc


def write_json(r: Results, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(r), indent=2, ensure_ascii=False) + "\n")


def _n(value: float | None, fmt: str = ",.0f") -> str:
    return "—" if value is None else format(value, fmt)


def _status(t: Target) -> str:
    return "not measured" if t.met is None else ("**met**" if t.met else "**missed**")


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _measure_row(label: str, m: Measure, per: Callable[[Measure], str]) -> list[str]:
    return [label, per(m), _n(m.p50_ms, ".2f"), _n(m.p99_ms, ".2f"), _n(m.cpu_us, ",.0f")]


def markdown(r: Results, chart: str | None) -> str:
    m = r.meta
    out = [
        "# Benchmarks",
        "",
        f"Generated by `scripts/bench` from one run on {time.strftime('%Y-%m-%d')} "
        f"(commit `{m.get('commit') or '?'}`, {r.elapsed_s:.0f} s). Do not edit: rerun "
        "`scripts/bench`; the raw figures are in `bench/results/latest.json`.",
        "",
    ]
    if r.note:
        out += [f"> **Note.** {r.note}", ""]
    out += ["## Machine", ""]
    out += _table(
        [
            "CPU",
            "cores",
            "kernel",
            "Python",
            "aiohttp",
            "uvloop",
            "httptools",
            "compiled",
            "nginx",
            "wrk",
            "redis-server",
            "load",
        ],
        [
            [
                str(m.get(k) or "—")
                for k in (
                    "cpu",
                    "cores",
                    "kernel",
                    "python",
                    "aiohttp",
                    "uvloop",
                    "httptools",
                    "compiled",
                    "nginx",
                    "wrk",
                    "redis_server",
                    "loadgen",
                )
            ]
        ],
    )
    s = r.settings
    out += [
        "",
        f"Figures are medians of {s.trials} runs; proxied and mint runs last "
        f"{s.duration} s each, behind a 1 s warm-up.",
        "",
        "## Targets",
        "",
    ]
    rows = [
        [
            t.name,
            t.goal,
            _n(t.value, ",.2f" if t.value and t.value < 10 else ",.0f") + t.unit,
            _status(t),
            t.nginx,
        ]
        for t in targets(r)
    ]
    out += _table(["Measure", "Target", "Sidecar", "", "nginx, same run"], rows)
    direct = r.proxied.get("C", {}).get("direct")
    if direct is not None:
        out += [
            "",
            f"This machine, direct to the upstream (layout C): {direct.per_s:,.0f} req/s — "
            "compare runs by their ratios, not their absolute rates.",
        ]
    out += [
        "",
        "## Authenticated proxied requests",
        "",
        "64 keep-alive connections, `GET /api/items` with a valid session cookie, 100-byte "
        "answers from a plain aiohttp upstream. The ratio is taken pair by pair (direct, "
        "then via the sidecar and via nginx, back to back) before the median. CPU is "
        "utime + stime of the process tree from `/proc/<pid>/stat` ÷ answered requests, for "
        "the proxy and for the upstream behind it. *Waited for a core* is the proxy's "
        "runqueue wait during the run (its threads' `/proc/<pid>/task/<tid>/schedstat`): "
        "time it was ready to run while something else held its core. Tens of ms of it "
        "in a 64-connection queue are tens of ms of p99 that measure the neighbours, not "
        "the proxy (`bench/sched.py`).",
        "",
    ]
    rows = []
    for layout, by_target in r.proxied.items():
        for name, pm in by_target.items():
            upstream = pm.cpu_us if name == "direct" else pm.upstream_cpu_us
            proxy = None if name == "direct" else pm.cpu_us
            waited = None if name == "direct" else pm.waited_ms
            cells = [pm.per_s, pm.ratio, pm.p50_ms, pm.p99_ms, proxy, upstream, waited]
            fmts = [",.0f", ".2f", ".2f", ".2f", ",.0f", ",.0f", ",.0f"]
            busy = " / ".join(f"{b:.0%}" for b in pm.cores_busy) or "—"
            rows.append([layout, name, *(_n(v, f) for v, f in zip(cells, fmts, strict=True)), busy])
    head = ["Layout", "Path", "req/s", "ratio", "p50 ms", "p99 ms", "proxy CPU µs/req"]
    head += ["upstream CPU µs/req", "proxy waited for a core, ms", "cores busy (0 / 1)"]
    out += _table(head, rows)
    out += [""] + [f"- **{k}**: {v}." for k, v in r.layouts.items()]
    if "W" in r.proxied:
        out += [
            "",
            "Layout W is the one where `--workers 2` can use a second core; on this 2-core "
            "machine the load generator and the upstream compete with it for both cores, so "
            "the gain is what is left over, not a doubling. CPU for the sidecar rows is the "
            "whole process tree (supervisor + workers).",
        ]
    out += [
        "",
        "## Redemptions and mints",
        "",
        "Redemptions: one-time links minted ahead through the admin port, then "
        "`GET /?refer=…` on 64 connections; only `303` answers with the session cookie "
        "count, and the rate runs until the last of them. Mints: `POST /referstring` on "
        "64 connections; only `200` counts. Sidecar on core 0, load on core 1.",
        "",
    ]
    rows = [
        _measure_row(f"redemptions, {k}", v, lambda x: _n(x.per_s))
        for k, v in r.redemptions.items()
    ]
    if r.mints:
        rows.append(_measure_row("mints", r.mints, lambda x: _n(x.per_s)))
    out += _table(["Scenario", "per s", "p50 ms", "p99 ms", "CPU µs/op"], rows)
    out += [
        "",
        "## Redemption latency and the size of the store",
        "",
        "One-time links redeemed on 4 connections by two sidecars that differ only in their "
        f"SQLite file: one empty, one pre-filled with {s.burned:,} burned tokens (in "
        f"{_n(r.prefill_seconds, '.1f')} s, straight into the store's schema). Each trial "
        "measures both back to back; the ratio is taken within the trial.",
        "",
    ]
    rows = [
        [*_measure_row(f"{int(k):,} burned", v, lambda x: _n(x.per_s)), _n(v.ratio, ".2f")]
        for k, v in r.latency.items()
    ]
    out += _table(["Store", "per s", "p50 ms", "p99 ms", "CPU µs/op", "p50 ÷ empty"], rows)
    if r.memory:
        mem = r.memory
        out += [
            "",
            "## Memory",
            "",
            f"RSS of the sidecar process: {mem.idle_mib:.1f} MiB idle; "
            f"{mem.after_mib:.1f} MiB with {mem.connections_open:,} of {mem.connections:,} "
            f"connections open at once (each sent one authenticated request, all in flight "
            f"together, then held idle); peak {mem.peak_mib:.1f} MiB. For reference, the "
            f"bare aiohttp upstream goes from {mem.upstream_idle_mib:.1f} to "
            f"{mem.upstream_after_mib:.1f} MiB under the same {mem.connections:,} connections.",
        ]
    if chart:
        out += ["", f"![Benchmark chart]({chart})"]
    if r.profile:
        p = r.profile
        out += [
            "",
            "## Where the sidecar's CPU goes",
            "",
            f"py-spy, {p.samples:,} samples of the sidecar under the layout C proxied load "
            "(a separate, unmeasured run).",
            "",
        ]
        rows = [[h.where, f"{h.percent:.1f}%"] for h in p.by_package]
        out += [*_table(["Self time by package", "share"], rows), ""]
        rows = [[f"`{h.where}`", f"{h.percent:.1f}%"] for h in p.self_time]
        out += [*_table(["Self time by function", "share"], rows), ""]
        rows = [[f"`{h.where}`", f"{h.percent:.1f}%"] for h in p.sidecar_inclusive]
        out += _table(["Sidecar function, inclusive", "share"], rows)
    if r.missing:
        out += ["", "## Not measured in this run", ""] + [f"- {x}" for x in r.missing]
    out += [
        "",
        "## Method",
        "",
        "- `scripts/bench` (or `python -m bench`) starts everything in one run: the upstream "
        "(`python -m bench.upstream`), nginx (`daemon off`, 1 worker, keep-alive pool, its "
        "own temp prefix, `access_log off`; a second one, `nginx, access_log on`, writes "
        "the `combined` line per request to a file, unbuffered, as Debian's nginx.conf "
        "ships it), a private `redis-server`, and `sidecar serve` with a generated "
        "config and keyset in a temp dir (`cookie_secure: false`, access log on as shipped, "
        "uvloop when installed, as `sidecar[speed]` runs; `scripts/bench` runs the hot path "
        "compiled with mypyc, as the Docker image does: the machine's `compiled` column; "
        "in the image's runtime environment too: "
        f"{m.get('image_settings') or 'none (pure Python)'}).",
        "- Load: `wrk -t1` with a generated Lua script (headers, one-time paths, exact "
        "status counting); without wrk, `python -m bench.pyload` (aiohttp, one task per "
        "connection), which caps what it can measure.",
        "- Processes are pinned with `taskset`/`sched_setaffinity`; every load run is "
        "bounded in time.",
        f"- Cores: {m.get('cores_claim') or 'not recorded'}. Linux shares a core between "
        "sessions (autogroups) whatever the nice values, so another session's busy process "
        "on core 0 takes up to half of it; at autogroup nice -20 every part of this run "
        '(proxies, upstream, load) goes first, and the layouts\' "alone on core 0" holds '
        "on a shared machine (`bench/sched.py`; `--share-cores` leaves it alone).",
    ]
    return "\n".join(out) + "\n"


def write_markdown(r: Results, path: Path, chart: str | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(r, chart))
