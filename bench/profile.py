"""Where the sidecar's CPU goes on the proxied hot path, sampled with py-spy.

``py-spy record --format raw`` writes collapsed stacks (``frame;frame;... count``); we rank
functions by self time (the leaf frame) and the sidecar's own functions by inclusive time.
Sampling slows the process, so this run is never one of the measured ones.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.loadgen import LoadSpec, run_load
from bench.procs import PYTHON, which

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


@dataclass(frozen=True)
class Hotspot:
    where: str  # "file:function"
    percent: float


@dataclass(frozen=True)
class Profile:
    samples: int
    self_time: list[Hotspot]  # leaf frames
    sidecar_inclusive: list[Hotspot]  # functions in sidecar/, with everything they call
    by_package: list[Hotspot]  # self time grouped by top-level package/module


def py_spy() -> str | None:
    return which("py-spy", str(Path(PYTHON).parent))


def short_path(path: str) -> str:
    """``aiohttp/client.py`` for any spelling py-spy gives (it already shortens most)."""
    if not path.startswith("/"):
        return path
    for marker in ("site-packages/", "dist-packages/"):
        if marker in path:
            return path.split(marker, 1)[1]
    if "/sidecar/" in path:
        return "sidecar/" + path.rsplit("/sidecar/", 1)[1]
    match = re.search(r"/python3\.\d+/(.*)$", path)
    return match.group(1) if match else path.rsplit("/", 1)[-1]


def _frame(text: str) -> str:
    m = _FRAME.match(text.strip())
    if not m:
        return text.strip()
    return f"{short_path(m.group('file'))}:{m.group('func')}"


def _package(frame: str) -> str:
    """The top-level package of a frame; aiohttp split into its server and client halves."""
    path = frame.rsplit(":", 1)[0]
    if "aiohttp.tracing" in path:
        return "aiohttp client (tracing)"
    top = path.split("/", 1)[0] if "/" in path else path.removesuffix(".py")
    if top != "aiohttp":
        return top
    name = path.rsplit("/", 1)[-1]
    if name.startswith("web_"):
        return "aiohttp server"
    if name.startswith(("client", "connector", "tracing")):
        return "aiohttp client"
    return "aiohttp (shared: http parser/writer, helpers)"


def _in_callbacks(frames: list[str]) -> list[str]:
    """The frames below the event loop (drops ``main``/``run`` start-up plumbing, which
    every complete stack has and which says nothing about the cost)."""
    for i, f in enumerate(frames):
        if f.startswith("asyncio/"):
            return frames[i + 1 :]
    return frames


def parse_collapsed(lines: Iterable[str], top: int = 10) -> Profile:
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    package: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        frames = [f for f in frames if ":" in f] or frames
        total += count
        leaf[frames[-1]] += count
        package[_package(frames[-1])] += count
        for f in set(_in_callbacks(frames)):
            if f.startswith("sidecar/"):
                inclusive[f] += count

    def rank(counter: Counter[str]) -> list[Hotspot]:
        return [Hotspot(k, 100.0 * v / total) for k, v in counter.most_common(top)] if total else []

    return Profile(total, rank(leaf), rank(inclusive), rank(package))


def profile_proxied(
    pid: int, spec: LoadSpec, load_cores: Sequence[int], seconds: int
) -> Profile | None:
    """Sample ``pid`` with py-spy while ``spec`` runs (load starts first, py-spy rides it)."""
    exe = py_spy()
    if exe is None:
        return None
    with tempfile.TemporaryDirectory(prefix="bench-pyspy-") as tmp:
        out = Path(tmp) / "stacks.txt"
        argv = [
            exe,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(seconds),
            "--rate",
            "250",
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(out),
        ]
        spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            run_load(spec, load_cores)
            spy.wait(timeout=seconds + 30)
        finally:
            if spy.poll() is None:
                spy.kill()
                spy.wait()
        if not out.exists():
            return None
        return parse_collapsed(out.read_text().splitlines())
