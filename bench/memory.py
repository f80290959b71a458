"""The memory row alone: what ``sidecar serve`` holds idle, and with 1,000 connections open.

``python -m bench.memory`` starts the bench's upstream and a sidecar on SQLite exactly as
``python -m bench`` does (the same generated config; uvloop when installed) and measures as
its memory scenario does (:func:`bench.scenarios.memory`): VmRSS once a session cookie has
been made (one mint, one redemption), then with ``--connections`` connections open, each
having sent one authenticated GET and then held idle; VmHWM for the peak. Each trial starts
a fresh sidecar; the medians are printed, then every trial.

Beside those: the idle RSS split by ``/proc/<pid>/smaps_rollup`` into anonymous memory (the
Python heap: modules' code and objects) and file-backed pages (shared libraries mapped in),
the cost per connection, and how many modules the process imported by then (one more
start with ``PYTHONPROFILEIMPORTTIME=1``, whose log lists every import).

``--against DIR`` (repeatable) measures another checkout too (for example ``git worktree
add --detach /tmp/before <commit>``), its trials alternating with this one's, so that before
and after come from one session on one machine state. With ``SIDECAR_BENCH_COMPILED=DIR``
(the compiled build ``scripts/bench`` measures) that checkout runs its own compiled copy,
``DIR/build/compiled`` (``scripts/compile --into build/compiled`` there); each row's build
is printed with the results. ``--env NAME=VALUE`` (repeatable)
measures this checkout once more with that variable in its environment (a deployment
setting such as ``MALLOC_ARENA_MAX=2``), as a row of its own. About 10 s per trial and row.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.machine import image_settings, served_build
from bench.procs import (
    COMPILED_ENV,
    ROOT,
    BenchError,
    children,
    compiled_copy,
    cores_available,
    sidecar_env,
)
from bench.scenarios import ProxyTarget, memory
from bench.servers import start_upstream
from bench.target import session_cookie, sqlite_url, start_sidecar

MIB = 1024 * 1024


@dataclass(frozen=True)
class Trial:
    idle_mib: float
    anon_mib: float
    file_mib: float
    after_mib: float
    peak_mib: float
    opened: int
    upstream_idle_mib: float
    upstream_after_mib: float

    @property
    def per_connection_kib(self) -> float:
        return (self.after_mib - self.idle_mib) * 1024 / self.opened if self.opened else 0.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    p.add_argument("--trials", type=int, default=3, help="fresh sidecars per checkout")
    p.add_argument("--connections", type=int, default=1000, help="connections held open")
    p.add_argument(
        "--against",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="another checkout to measure alongside (repeatable)",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="this checkout again with NAME=VALUE in its environment (repeatable)",
    )
    return p


@dataclass(frozen=True)
class Variant:
    """A row: a checkout, and what its sidecar's environment adds (``--env``)."""

    tree: Path
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        return "+".join([str(self.tree), *(f"{k}={v}" for k, v in self.extra)])

    def env(self) -> dict[str, str]:
        return sidecar_env(self.tree) | dict(self.extra)


def _log(message: str) -> None:
    print(f"[bench.memory {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _rollup(pid: int) -> dict[str, float]:
    """``smaps_rollup``'s fields in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, value = line.partition(":")
        fields[name] = int(value.split()[0]) * 1024 / MIB
    return fields


def _imports(log: Path) -> int:
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    return sum(1 for x in lines if x.startswith("import time:") and "imported package" not in x)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    trees = [Variant(ROOT), *(Variant(tree.resolve()) for tree in args.against)]
    for variant in trees[1:]:
        if not (variant.tree / "sidecar" / "__main__.py").is_file():
            _log(f"{variant.tree} is not a sidecar checkout")
            return 2
        copy = compiled_copy(variant.tree)
        if os.environ.get(COMPILED_ENV) and not (copy / "sidecar").is_dir():
            # Else it would run pure against this checkout compiled: not a comparison.
            _log(
                f"{variant.tree} has no compiled copy in {copy} ({COMPILED_ENV} is set): "
                "run scripts/compile --into build/compiled there"
            )
            return 2
    for setting in args.env:
        name, sep, value = setting.partition("=")
        if not sep or not name:
            _log(f"--env {setting}: expected NAME=VALUE")
            return 2
        trees.append(Variant(ROOT, ((name, value),)))
    cores = cores_available()
    c0, c1 = cores[0], cores[1 % len(cores)]
    os.sched_setaffinity(0, {c1})
    print(f"load average {os.getloadavg()[0]:.2f}; {args.connections:,} connections")
    # Indexed by position: --against may name this same checkout (a check of the noise).
    trials: list[list[Trial]] = [[] for _ in trees]
    modules: list[int] = [0 for _ in trees]
    try:
        with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp, children() as kids:
            work = Path(tmp)
            upstream = start_upstream(work, [c1])
            kids.append(upstream.child)
            reference = ProxyTarget("direct", upstream.port, upstream.pid)
            for n in range(args.trials):
                for i, variant in enumerate(trees):
                    name = f"sidecar-{i}-{n}"
                    _log(f"trial {n + 1}: {variant.label}")
                    sc = start_sidecar(
                        work,
                        name=name,
                        upstream_port=upstream.port,
                        store_url=sqlite_url(work / f"{name}.db"),
                        cores=[c0],
                        env=variant.env(),
                    )
                    kids.append(sc.child)
                    cookie = session_cookie(sc)
                    split = _rollup(sc.pid)
                    m = memory(sc, reference, cookie, args.connections)
                    trials[i].append(
                        Trial(
                            idle_mib=m.idle_mib,
                            anon_mib=split["Anonymous"],
                            file_mib=split["Rss"] - split["Anonymous"],
                            after_mib=m.after_mib,
                            peak_mib=m.peak_mib,
                            opened=m.connections_open,
                            upstream_idle_mib=m.upstream_idle_mib,
                            upstream_after_mib=m.upstream_after_mib,
                        )
                    )
                    sc.stop()
                    kids.remove(sc.child)
            for i, variant in enumerate(trees):
                env = variant.env() | {"PYTHONPROFILEIMPORTTIME": "1"}
                name = f"sidecar-{i}-imports"
                sc = start_sidecar(
                    work,
                    name=name,
                    upstream_port=upstream.port,
                    store_url=sqlite_url(work / f"{name}.db"),
                    cores=[c0],
                    env=env,
                )
                kids.append(sc.child)
                session_cookie(sc)
                sc.stop()
                kids.remove(sc.child)
                modules[i] = _imports(sc.child.log)
    except BenchError as exc:
        _log(f"failed: {exc}")
        return 1
    builds = [served_build(variant.env()) or "unknown" for variant in trees]
    _report(trees, trials, modules, args.connections)
    print("\nthe hot path of each row (sidecar.compiled), and the image's settings it ran with")
    for variant, build in zip(trees, builds, strict=True):
        print(f"{variant.label:<40} {build:<8} {image_settings(variant.env()) or 'none'}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0


def _report(
    trees: list[Variant], trials: list[list[Trial]], modules: list[int], connections: int
) -> None:
    head = (
        f"{'checkout':<40} {'idle':>6} {'anon':>6} {'files':>6} "
        f"{'+' + format(connections, ','):>7} {'KiB/conn':>8} {'peak':>6} {'modules':>7}"
    )
    print("\nMiB, medians of the trials (anon + files = idle)")
    print(head)
    for variant, runs, imported in zip(trees, trials, modules, strict=True):

        def med(field: str, runs: list[Trial] = runs) -> float:
            return float(statistics.median(float(getattr(t, field)) for t in runs))

        print(
            f"{variant.label:<40} {med('idle_mib'):6.1f} {med('anon_mib'):6.1f} "
            f"{med('file_mib'):6.1f} {med('after_mib'):7.1f} {med('per_connection_kib'):8.1f} "
            f"{med('peak_mib'):6.1f} {imported:7d}"
        )
    print("\nevery trial: idle -> with connections (opened); the bare upstream alongside")
    for variant, runs in zip(trees, trials, strict=True):
        for t in runs:
            print(
                f"{variant.label:<40} {t.idle_mib:.1f} -> {t.after_mib:.1f} ({t.opened}); "
                f"upstream {t.upstream_idle_mib:.1f} -> {t.upstream_after_mib:.1f}"
            )


if __name__ == "__main__":
    raise SystemExit(main())
