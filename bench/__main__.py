"""``python -m bench``: one run of every scenario, then the JSON, the doc and the chart.

python -m bench                  # the full run (a few minutes on 2 cores)
python -m bench --smoke --json /tmp/x.json --docs /tmp   # ~1 s per scenario (the test)
BENCH_LOADGEN=python python -m bench   # force the built-in load generator
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

from bench import chart
from bench.procs import BenchError
from bench.report import targets, write_json, write_markdown
from bench.run import Settings, run

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
JSON = ROOT / "bench" / "results" / "latest.json"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--smoke", action="store_true", help="about 1 s per scenario")
    p.add_argument("--trials", type=int, help="runs per figure (median taken)")
    p.add_argument("--duration", type=int, help="seconds per proxied / mint run")
    p.add_argument("--burned", type=int, help="burned tokens for the latency scenario")
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy run")
    p.add_argument(
        "--share-cores",
        action="store_true",
        help="leave this session's scheduling priority alone (see bench/sched.py)",
    )
    p.add_argument("--json", type=Path, default=JSON, help=f"default {JSON.relative_to(ROOT)}")
    p.add_argument("--docs", type=Path, default=DOCS, help="where benchmarks.md/.png go")
    p.add_argument("--no-doc", action="store_true", help="write the JSON only")
    p.add_argument("--note", default="", help="a caveat quoted at the top of the doc")
    return p


def _settings(args: argparse.Namespace) -> Settings:
    s = Settings.smoke() if args.smoke else Settings()
    changes = {
        "trials": args.trials,
        "duration": args.duration,
        "burned": args.burned,
        "profile": False if args.no_profile else None,
        "claim_cores": False if args.share_cores else None,
    }
    kept = {k: v for k, v in changes.items() if v is not None}
    return replace(s, **kept)


def _raise_fd_limit() -> None:
    # 1,000 client connections here, and as many in the sidecar (children inherit).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _raise_fd_limit()
    try:
        results = run(_settings(args), args.note, _log)
    except BenchError as exc:
        _log(f"failed: {exc}")
        return 1
    write_json(results, args.json)
    _log(f"wrote {args.json}")
    if not args.no_doc:
        doc, png = args.docs / "benchmarks.md", args.docs / "benchmarks.png"
        drawn = chart.available()
        if drawn:
            chart.draw(results, png)
        write_markdown(results, doc, png.name if drawn else None)
        _log(f"wrote {doc}" + (f" and {png}" if drawn else " (no matplotlib: no chart)"))
    for t in targets(results):
        state = "not measured" if t.met is None else ("met" if t.met else "MISSED")
        _log(
            f"{t.name}: {t.value if t.value is None else round(t.value, 2)}{t.unit} "
            f"(target {t.goal}): {state}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
