"""Child processes for the benchmark: started pinned to cores, measured through ``/proc``.

CPU time comes from ``/proc/<pid>/stat`` (utime + stime, every thread included) summed over
the process tree, so nginx's master + worker and the sidecar's SQLite thread all count.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
PYTHON = sys.executable
ROOT = Path(__file__).resolve().parent.parent


# scripts/bench sets this to a compiled copy of this checkout's package (scripts/compile
# --into DIR), as the Docker image runs it; unset, the sidecar runs as it is in the checkout.
COMPILED_ENV = "SIDECAR_BENCH_COMPILED"
# Where another checkout measured alongside (bench.memory --against) has its compiled copy:
# where scripts/bench puts this one's.
COMPILED_COPY = Path("build", "compiled")


def compiled_copy(root: Path) -> Path:
    """The compiled copy of checkout ``root`` that runs it when ``SIDECAR_BENCH_COMPILED``
    is set: that directory for this checkout, ``root/build/compiled`` for another one."""
    given = os.environ.get(COMPILED_ENV)
    if root == ROOT and given:
        return Path(given)
    return root / COMPILED_COPY


def child_env(root: Path = ROOT) -> dict[str, str]:
    """This environment with the repo root (or another checkout's ``root``) first on
    ``PYTHONPATH``, so ``python -m sidecar`` and ``python -m bench.*`` work from any
    directory, installed or not, and run that checkout's code; with
    ``SIDECAR_BENCH_COMPILED=DIR``, this checkout's package comes from DIR, compiled, and
    another checkout's from its own ``build/compiled`` (:func:`compiled_copy`), so that
    before and after are the same build."""
    env = dict(os.environ)
    compiled = str(compiled_copy(root)) if env.get(COMPILED_ENV) else None
    if compiled:
        # Not the working directory's sidecar/ first either (python -m, python -c).
        env["PYTHONSAFEPATH"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (compiled, str(root), env.get("PYTHONPATH")) if p
    )
    return env


# The Docker image's runtime settings (Dockerfile, runtime stage ENV; tests/test_dockerfile
# checks the two agree): with SIDECAR_BENCH_COMPILED, ``sidecar serve`` runs as the image
# runs it, its environment included. PYTHONDONTWRITEBYTECODE aside: the image's build stage
# compiled the bytecode for both levels beforehand; here the first start writes it.
IMAGE_RUNTIME_ENV: dict[str, str] = {
    "PYTHONUNBUFFERED": "1",
    "MALLOC_ARENA_MAX": "2",
    "PYTHONOPTIMIZE": "2",
}


def sidecar_env(root: Path = ROOT) -> dict[str, str]:
    """:func:`child_env` for ``sidecar serve``: when compiled (``SIDECAR_BENCH_COMPILED``),
    with the image's :data:`IMAGE_RUNTIME_ENV` too, each setting unless this environment
    has its own (``PYTHONOPTIMIZE=`` empty runs the sidecar with docstrings and asserts)."""
    env = child_env(root)
    if env.get(COMPILED_ENV):
        for name, value in IMAGE_RUNTIME_ENV.items():
            env.setdefault(name, value)
    return env


class BenchError(RuntimeError):
    """A part of the benchmark could not start or answered wrongly."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(argv: Sequence[str], cores: Sequence[int] | None) -> list[str]:
    """``argv`` run under ``taskset -c`` (which execs it: the pid stays the same)."""
    if cores is None:
        return list(argv)
    if which("taskset") is None:
        raise BenchError("taskset (util-linux) is needed to pin processes to cores")
    return ["taskset", "-c", ",".join(map(str, cores)), *argv]


@dataclass
class Child:
    """A started child process; ``stop()`` terminates it (then kills it if it lingers)."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    logdir: Path,
    cores: Sequence[int] | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    output: int | None = None,
) -> Child:
    """Start ``argv`` with its output in ``logdir/<name>.log``, pinned to ``cores``;
    ``output``: a descriptor to send stdout and stderr to instead (a pipe, ``/dev/null``)."""
    log = logdir / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            pinned(argv, cores),
            stdout=out if output is None else output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env() if env is None else env,
            cwd=cwd,
        )
    return Child(name, proc, log)


def wait_port(child: Child, port: int, timeout: float = 20.0, host: str = "127.0.0.1") -> None:
    """Poll until ``port`` accepts connections; fail with the child's log if it died."""
    deadline = time.monotonic() + timeout
    while True:
        if not child.alive():
            raise BenchError(f"{child.name} exited ({child.proc.returncode}):\n{child.tail()}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        if time.monotonic() > deadline:
            child.stop()
            raise BenchError(f"{child.name} did not listen on {port}:\n{child.tail()}")
        time.sleep(0.02)


def wait_path(child: Child, path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if not child.alive() or time.monotonic() > deadline:
            child.stop()
            raise BenchError(f"{child.name} did not create {path}:\n{child.tail()}")
        time.sleep(0.01)


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants that are still alive."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in tasks(p):
            with contextlib.suppress(OSError):
                todo.extend(
                    int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()
                )
    return out


def tasks(pid: int) -> list[str]:
    """The thread ids of ``pid`` (none once it has gone)."""
    try:
        return os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its descendants, in seconds."""
    ticks = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{p}/stat").read_text()
            # Fields after the parenthesised command: state is index 0, utime 11, stime 12.
            fields = stat[stat.rindex(")") + 2 :].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def core_ticks() -> list[tuple[int, int]]:
    """(busy, total) clock ticks of each core since boot, from ``/proc/stat``'s ``cpuN``
    lines; busy is everything but idle and iowait."""
    cores = []
    for line in Path("/proc/stat").read_text().splitlines():
        name, _, rest = line.partition(" ")
        if name.startswith("cpu") and name != "cpu":
            ticks = [int(v) for v in rest.split()]
            total = sum(ticks[:8])  # user .. steal; guest time is already inside user
            cores.append((total - ticks[3] - ticks[4], total))
    return cores


def busy_between(before: list[tuple[int, int]], after: list[tuple[int, int]]) -> list[float]:
    """Each core's busy share (0..1) between two :func:`core_ticks` readings."""
    return [
        (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0
        for (b0, t0), (b1, t1) in zip(before, after, strict=True)
    ]


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """Resident memory of ``pid`` (``VmRSS``, or ``VmHWM`` for the peak), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no {field} in /proc/{pid}/status")


def pin(pids: Iterable[int], cores: Sequence[int]) -> None:
    """Move every thread of every process in ``pids`` (and their children) to ``cores``."""
    for pid in pids:
        for p in tree(pid):
            for task in tasks(p):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(task), set(cores))


def which(name: str, *extra_dirs: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in extra_dirs:
        candidate = Path(d) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    """Collects started children and stops them all (newest first) on the way out."""
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in reversed(started):
            child.stop()


def cores_available() -> list[int]:
    return sorted(os.sched_getaffinity(0))
