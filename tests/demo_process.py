"""``sidecar demo`` as a real child process, its printed banner parsed into links.

Shared by tests/test_demo.py (HTTP client) and tests/browser/ (Chromium). Synchronous on
purpose: Playwright's sync API must not run inside an event loop, and the async tests call
these through ``asyncio.to_thread``.
"""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


@dataclass
class Demo:
    proc: subprocess.Popen[str]
    banner: str
    proxy: str
    admin: str
    app: str
    state: Path
    one_time: str
    reusable: str
    confirm: str
    curl: str
    _lines: queue.Queue[str | None] = field(repr=False, default_factory=queue.Queue)
    _reader: threading.Thread | None = field(repr=False, default=None)

    def rest_of_output(self) -> str:
        """Everything printed after the banner, up to the process's exit."""
        lines = []
        while (line := self._lines.get(timeout=STOP_TIMEOUT)) is not None:
            lines.append(line)
        return "".join(lines)


def _field(pattern: str, text: str) -> str:
    match = re.search(pattern, text, re.MULTILINE)
    assert match is not None, f"{pattern!r} not in the demo's output:\n{text}"
    return match.group(1)


def _pump(stream: object, lines: queue.Queue[str | None]) -> None:
    assert hasattr(stream, "readline")
    for line in iter(stream.readline, ""):
        lines.put(line)
    lines.put(None)


def start_demo(*args: str) -> Demo:
    """Start ``python -m sidecar demo`` (any free ports unless ``args`` say otherwise)."""
    argv = [sys.executable, "-m", "sidecar", "demo", "--port", "0", "--admin-port", "0", *args]
    proc = subprocess.Popen(
        # stderr joins stdout: what a terminal would show, in order.
        argv,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        # The links come last; the confirm link is the last of them.
        while len(seen) < 2 or not seen[-2].startswith("Confirm link"):
            line = lines.get(timeout=START_TIMEOUT)
            if line is None:
                pytest.fail("the demo exited before printing its links:\n" + "".join(seen))
            seen.append(line)
    except BaseException:
        _reap(proc, reader)
        raise
    text = "".join(seen)
    return Demo(
        proc=proc,
        banner=text,
        proxy=_field(r"^  proxy +(http://\S+)", text),
        admin=_field(r"^  admin +(http://\S+)", text),
        app=_field(r"^  demo app +(http://\S+)", text),
        state=Path(_field(r"^  state +(\S+)", text)),
        one_time=_field(r"^One-time link.*\n  (\S+)", text),
        reusable=_field(r"^Reusable link.*\n  (\S+)", text),
        confirm=_field(r"^Confirm link.*\n  (\S+)", text),
        curl=_field(r"^  (curl .+)$", text),
        _lines=lines,
        _reader=reader,
    )


def _reap(proc: subprocess.Popen[str], reader: threading.Thread | None) -> None:
    """Kill ``proc`` if it still runs, and release its pipe once the reader is done."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if reader is not None:
        reader.join(timeout=STOP_TIMEOUT)
    if proc.stdout is not None:
        proc.stdout.close()


def stop_demo(demo: Demo, sig: signal.Signals = signal.SIGTERM) -> tuple[int, str]:
    """Send ``sig``; return (exit code, what it printed after the banner)."""
    demo.proc.send_signal(sig)
    rest = demo.rest_of_output()
    code = demo.proc.wait(timeout=STOP_TIMEOUT)
    _reap(demo.proc, demo._reader)
    return code, rest


@contextmanager
def running_demo(*args: str) -> Iterator[Demo]:
    demo = start_demo(*args)
    try:
        yield demo
    finally:
        _reap(demo.proc, demo._reader)
