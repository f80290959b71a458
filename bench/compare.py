"""``python -m bench.compare BEFORE.json AFTER.json``: issue #15's table from two runs.

Each file is a ``bench/results/latest.json`` (from ``scripts/bench``; older runs without the
workers layout work too). Ratios are taken within each run, so two runs on a machine whose
speed differs between them can still be compared. Below the table, how each run was made
(the build, the image's settings, the cores claim...): a condition that differs between
the runs is part of every difference above it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

Doc = dict[str, Any]


def _get(doc: Doc, *path: str) -> Any:
    for key in path:
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    return doc


def _over(a: Any, b: Any) -> float | None:
    return float(a) / float(b) if a is not None and b else None


def _px(layout: str, name: str, field: str) -> Callable[[Doc], Any]:
    return lambda d: _get(d, "proxied", layout, name, field)


def _cpu_ratio(doc: Doc, nginx: str = "nginx") -> float | None:
    ratios = [_over(_px(k, "sidecar", "cpu_us")(doc), _px(k, nginx, "cpu_us")(doc)) for k in "AC"]
    present = [r for r in ratios if r is not None]
    return max(present) if present else None


def _p99_ratio(doc: Doc) -> float | None:
    return _over(_px("C", "sidecar", "p99_ms")(doc), _px("C", "nginx", "p99_ms")(doc))


ROWS: list[tuple[str, str, Callable[[Doc], Any]]] = [
    ("sidecar CPU µs per proxied request ÷ nginx's (worse layout)", "≤ 2.0", _cpu_ratio),
    (
        "the same ÷ nginx with its default access log (worse layout)",
        "≤ 2.0",
        lambda d: _cpu_ratio(d, "nginx, access_log on"),
    ),
    ("sidecar CPU µs per proxied request, layout C", "", _px("C", "sidecar", "cpu_us")),
    (
        "the same with logging.access false, layout C",
        "",
        _px("C", "sidecar, logging.access false", "cpu_us"),
    ),
    ("nginx CPU µs per proxied request, layout C", "", _px("C", "nginx", "cpu_us")),
    ("throughput ÷ direct, layout C", "≥ 0.75", _px("C", "sidecar", "ratio")),
    ("nginx throughput ÷ direct, layout C", "", _px("C", "nginx", "ratio")),
    ("throughput ÷ direct, layout A", "≥ 0.45", _px("A", "sidecar", "ratio")),
    ("nginx throughput ÷ direct, layout A", "", _px("A", "nginx", "ratio")),
    ("p99 ÷ nginx's p99, layout C", "≤ 2", _p99_ratio),
    (
        "CPU µs per redemption, SQLite",
        "≤ 120",
        lambda d: _get(d, "redemptions", "sqlite", "cpu_us"),
    ),
    ("CPU µs per redemption, Redis", "", lambda d: _get(d, "redemptions", "redis", "cpu_us")),
    ("CPU µs per mint", "≤ 100", lambda d: _get(d, "mints", "cpu_us")),
    ("RSS after the connections, MiB", "≤ 60", lambda d: _get(d, "memory", "after_mib")),
    ("direct req/s, layout C (the machine's speed)", "", _px("C", "direct", "per_s")),
    ("req/s, 1 worker, layout W", "", _px("W", "sidecar", "per_s")),
    ("req/s, 2 workers, layout W", "", _px("W", "sidecar, 2 workers", "per_s")),
    ("nginx req/s, layout W", "", _px("W", "nginx", "per_s")),
]


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    v = float(value)
    return f"{v:,.0f}" if v >= 100 else f"{v:.2f}"


def table(before: Doc, after: Doc) -> str:
    lines = ["| measure | target | before | after |", "|---|---|---|---|"]
    for name, goal, get in ROWS:
        lines.append(f"| {name} | {goal} | {_cell(get(before))} | {_cell(get(after))} |")
    return "\n".join(lines)


# How a run was made (its meta): what differs between the two runs is part of any
# before/after difference in the table above it.
CONDITIONS: list[tuple[str, str]] = [
    ("commit", "commit"),
    ("hot path compiled (sidecar.compiled)", "compiled"),
    ("the image's runtime settings", "image_settings"),
    ("cores (bench/sched.py)", "cores_claim"),
    ("load generator", "loadgen"),
    ("cores usable", "cores_usable"),
]


def conditions(before: Doc, after: Doc) -> str:
    """How each run was made, a row per condition; the rows that differ are marked. An
    older run without a condition recorded shows a dash."""
    lines = ["| how the run was made | before | after |", "|---|---|---|"]
    for name, key in CONDITIONS:
        was, now = (_get(doc, "meta", key) for doc in (before, after))
        mark = " (differs)" if was != now else ""
        lines.append(f"| {name}{mark} | {_text(was)} | {_text(now)} |")
    return "\n".join(lines)


def _text(value: Any) -> str:
    return "—" if value is None else str(value).replace("|", "/")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    before, after = (json.loads(Path(p).read_text()) for p in args)
    print(table(before, after))
    print()
    print(conditions(before, after))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
