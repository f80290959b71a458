"""The scheduler's side of a run: how long the measured process waited for a core, and a
claim on the cores so that a layout's "alone on core 0" holds on a shared machine.

Why this exists (issue #15's p99 row, whose sidecar p99 swung from 22 to 66 ms between runs
while its p50 stayed near nginx's). A stall probe inside the compiled sidecar under the
layout C load (every event-loop iteration more than 3 ms late, with the main thread's and
the process's CPU time across it; every ``gc`` collection timed through ``gc.callbacks``;
every access-log write timed) found almost nothing of its own making: no generation 2
collection, 0-5 generation 0 ones per 3 s run (at most 0.7 ms), the 64 KiB access-log
writes 0.06-0.07 ms each (median). Nearly every late iteration (92-211 per run, 0.5-1.4 s
in all) was the process *waiting for its core*: wall time passed, its CPU time did not, and
its ``schedstat`` counted 0.8-1.6 s of runqueue wait per 3 s run while other sessions'
compilers ran on core 0 (``perf sched`` named them).

Linux's autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``) shares a core
fairly between *sessions*, whatever the processes' nice values (nice -20 on the processes
did not help), so one such neighbour takes up to half of core 0. nginx needs about a
third of that core at this load and is hardly delayed; the sidecar needs about two thirds,
is held to one half, and its queue of 64 connections grows by tens of milliseconds: its p99
then measures the neighbours. Alternating in one session (load average 4.4-8.0, five trials
each): with the bench's session at autogroup nice -20 the sidecar waited 0.16-0.21 s per
run and its p99 was 7.8-8.6 ms against nginx's 8.1-8.5; without, 19-44 ms against 8.9-17.5.

:func:`claimed_cores` raises the bench session's autogroup priority for the run (and puts
it back): every part of the run (proxies, upstream, load generator) gains equally, other
sessions still run, at a lower share. :func:`runqueue_seconds` is recorded with every
sample, so a run shows whether the layout held.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from bench.procs import tasks, tree

AUTOGROUP = Path("/proc/self/autogroup")
CLAIM_NICE = -20  # the highest autogroup priority
_AUTOGROUP_LINE = re.compile(r"^/autogroup-\d+ nice (-?\d+)$")


def runqueue_seconds(pid: int) -> float:
    """Seconds the threads of ``pid`` and its descendants have spent runnable but waiting
    for a core (``/proc/<pid>/task/<tid>/schedstat``'s second field), since they started."""
    waited = 0
    for p in tree(pid):
        for task in tasks(p):
            with contextlib.suppress(OSError, IndexError, ValueError):
                waited += int(Path(f"/proc/{p}/task/{task}/schedstat").read_text().split()[1])
    return waited / 1e9


def autogroup_nice(path: Path = AUTOGROUP) -> int | None:
    """This session's autogroup nice value; None without autogroup scheduling."""
    try:
        match = _AUTOGROUP_LINE.match(path.read_text().strip())
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _set_autogroup_nice(nice: int, path: Path) -> None:
    path.write_text(f"{nice}\n")


@contextlib.contextmanager
def claimed_cores(nice: int = CLAIM_NICE, path: Path = AUTOGROUP) -> Iterator[str]:
    """For the block, this session's autogroup at ``nice``; yields what was done, in words
    (for the run's metadata). Without autogroup scheduling, or without the right to raise
    a priority (CAP_SYS_NICE), nothing changes and the words say so.

    The priority is put back however the block ends: an exception, Ctrl-C, and SIGTERM or
    SIGHUP too (``timeout``, a CI job cancelled, a closed terminal), which end the run
    through ``SystemExit`` while it is claimed instead of killing the process on the spot:
    the session outlives the bench, and left at nice -20 it would put everything it runs
    next ahead of every other session on the machine."""
    before = autogroup_nice(path)
    if before is None:
        yield "not claimed: no autogroup scheduling here"
        return
    refused: str | None = None
    try:
        _set_autogroup_nice(nice, path)
    except OSError as exc:
        refused = f"not claimed: autogroup nice {nice} refused ({exc.strerror or exc})"
    if refused is not None:  # (yielded outside the handler: no OSError chained to the run's)
        yield refused
        return
    try:
        with _signals_end_the_block():
            yield f"the bench's session at autogroup nice {nice} (was {before})"
    finally:
        with contextlib.suppress(OSError):
            _set_autogroup_nice(before, path)


_ENDING = (signal.SIGTERM, signal.SIGHUP)


def _end(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # the status a shell reports for a death by that signal


@contextlib.contextmanager
def _signals_end_the_block() -> Iterator[None]:
    """SIGTERM and SIGHUP raise ``SystemExit`` in the block, so cleanups run; a handler of
    the program's own, or an ignored signal (``nohup``), is left as it is. Only the main
    thread can set handlers: from another one, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    replaced = {}
    for sig in _ENDING:
        if signal.getsignal(sig) is signal.SIG_DFL:
            replaced[sig] = signal.signal(sig, _end)
    try:
        yield
    finally:
        for sig, previous in replaced.items():
            signal.signal(sig, previous)
