"""A stall log for a served process: ``python -m bench.stallprobe OUT.json -m MODULE ARGS...``
runs ``python -m MODULE ARGS...`` with the probe installed and writes what it saw to
``OUT.json`` at exit (and on SIGUSR2).

What it records, at little cost (a 1 ms timer and two clock reads per tick):

- **late iterations**: a timer due every millisecond on the event loop; each time it runs
  more than :data:`LATE` behind, the lateness with the main thread's CPU time and the
  process's across it, so the cause reads off the figures (:func:`cause`): the loop's own
  work (CPU time ~ lateness), another thread holding the GIL (the process's CPU time but not
  the main thread's), or waiting for a core (neither: the process was ready, something else
  ran);
- **collections**: every ``gc`` collection, its generation and duration (``gc.callbacks``).

The loop is reached through :class:`asyncio.Runner` (``asyncio.run`` and ``sidecar serve``'s
uvloop runner both use it). :mod:`bench.stalls` runs the proxied load against a sidecar
started this way.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import json
import runpy
import signal
import sys
import time
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

TICK: Final = 0.001  # the probe timer's period, seconds
LATE: Final = 0.003  # a tick this much behind is recorded
T = TypeVar("T")


@dataclass(frozen=True)
class Late:
    at: float  # time.perf_counter() when the late tick ran (CLOCK_MONOTONIC on Linux)
    late_ms: float
    thread_cpu_ms: float  # the main thread's CPU time across it
    process_cpu_ms: float  # every thread's


@dataclass(frozen=True)
class Collection:
    at: float
    generation: int
    ms: float
    collected: int


@dataclass
class Log:
    late: list[Late] = field(default_factory=list)
    collections: list[Collection] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "late": [asdict(x) for x in self.late],
            "collections": [asdict(x) for x in self.collections],
            "thresholds": list(gc.get_threshold()),
            "frozen": gc.get_freeze_count(),
        }


def cause(late: Late, collections: list[Collection]) -> str:
    """Why a tick was late: ``gc`` (a collection of more than 1 ms ran across it), ``loop``
    (the main thread was on the CPU for most of it), ``thread`` (another thread of the
    process was), or ``core`` (nobody in the process was: it waited for a core)."""
    start = late.at - late.late_ms / 1e3 - TICK
    if any(start <= c.at <= late.at and c.ms > 1.0 for c in collections):
        return "gc"
    if late.thread_cpu_ms >= 0.6 * late.late_ms:
        return "loop"
    if late.process_cpu_ms - late.thread_cpu_ms >= 0.3 * late.late_ms:
        return "thread"
    return "core"


class Probe:
    def __init__(self) -> None:
        self.log = Log()
        self._gc_started = 0.0
        self._tick_at = 0.0
        self._thread_cpu = 0.0
        self._process_cpu = 0.0

    def install_gc(self) -> None:
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._gc_started = now
            return
        ms = (now - self._gc_started) * 1e3
        self.log.collections.append(Collection(now, info["generation"], ms, info["collected"]))

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the 1 ms timer on ``loop``."""
        self._tick_at = time.perf_counter()
        self._thread_cpu = time.thread_time()
        self._process_cpu = time.process_time()
        loop.call_later(TICK, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now, thread_cpu, process_cpu = time.perf_counter(), time.thread_time(), time.process_time()
        late = now - self._tick_at - TICK
        if late > LATE:
            self.log.late.append(
                Late(
                    now,
                    late * 1e3,
                    (thread_cpu - self._thread_cpu) * 1e3,
                    (process_cpu - self._process_cpu) * 1e3,
                )
            )
        self._tick_at, self._thread_cpu, self._process_cpu = now, thread_cpu, process_cpu
        loop.call_later(TICK, self._tick, loop)

    def wrap(self, main: Coroutine[Any, Any, T]) -> Coroutine[Any, Any, T]:
        async def watched() -> T:
            self.watch(asyncio.get_running_loop())
            return await main

        return watched()


def install(out: Path) -> Probe:
    """Probe every loop an :class:`asyncio.Runner` runs from now on, and every collection;
    the log goes to ``out`` at exit and on SIGUSR2."""
    probe = Probe()
    probe.install_gc()
    original = asyncio.Runner.run

    def run(self: asyncio.Runner, coro: Coroutine[Any, Any, T], **kw: Any) -> T:
        return original(self, probe.wrap(coro), **kw)

    asyncio.Runner.run = run  # type: ignore[method-assign]  # the probe's one hook

    def dump(*_: object) -> None:
        out.write_text(json.dumps(probe.log.to_json()))

    atexit.register(dump)
    signal.signal(signal.SIGUSR2, dump)
    return probe


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "-m":
        raise SystemExit("usage: python -m bench.stallprobe OUT.json -m MODULE [ARGS...]")
    install(Path(argv[0]))
    sys.argv = [argv[2], *argv[3:]]
    runpy.run_module(argv[2], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
