"""Times every write to stderr of a served process: ``python -m bench.writeprobe OUT.json -m
MODULE ARGS...`` runs ``python -m MODULE ARGS...`` with ``sys.stderr`` behind a stream that
times each ``write`` and ``flush`` (wall clock and the calling thread's CPU time) and writes
them to ``OUT.json`` at exit (and on SIGUSR1). ``MODULE`` may be another probe
(``-m bench.stallprobe OUT2 -m sidecar serve ...``).

The log's own writes are what it sees: ``sidecar serve`` logs to ``sys.stderr`` (read when
logging is set up, after this module has replaced it), one ``write`` + ``flush`` per text
the handler hands over (:mod:`sidecar.telemetry.logwriter`). A write whose wall time is far
above its CPU time waited in the kernel (a full pipe, the disk) or for a core.
"""

from __future__ import annotations

import atexit
import json
import runpy
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TextIO


class TimedStream:
    """``stream`` with each ``write`` + following ``flush`` timed (the handler calls both)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.writes: list[tuple[float, float, float, int, str]] = []  # at, wall ms, cpu ms, n
        self._start = 0.0
        self._cpu = 0.0
        self._size = 0

    def write(self, text: str) -> int:
        self._start, self._cpu, self._size = time.perf_counter(), time.thread_time(), len(text)
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()
        if self._size:
            now = time.perf_counter()
            self.writes.append(
                (
                    now,
                    (now - self._start) * 1e3,
                    (time.thread_time() - self._cpu) * 1e3,
                    self._size,
                    threading.current_thread().name,
                )
            )
            self._size = 0

    def fileno(self) -> int:
        return self._stream.fileno()

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "-m":
        raise SystemExit("usage: python -m bench.writeprobe OUT.json -m MODULE [ARGS...]")
    out = Path(argv[0])
    timed = TimedStream(sys.stderr)
    sys.stderr = timed  # type: ignore[assignment]  # the probe's one hook

    def dump(*_: object) -> None:
        out.write_text(json.dumps({"writes": timed.writes}))

    atexit.register(dump)
    signal.signal(signal.SIGUSR1, dump)
    sys.argv = [argv[2], *argv[3:]]
    runpy.run_module(argv[2], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
