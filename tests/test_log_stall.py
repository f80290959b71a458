"""A log stream that stops taking lines must not stall the answers: a real ``sidecar serve``
whose stderr is a real pipe that nobody reads (a log collector that stopped). With the
default ``logging.backlog`` the writes are a thread's: the proxy keeps answering, the lines
past the backlog are dropped and counted, and once the pipe is read again a warning says
how many; ``logging.backlog: 0`` keeps the old trade (the loop waits for the pipe), which
the last test shows stalling. (The thread itself: tests/test_logwriter.py.)"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.harness import free_port, running_upstream
from tests.serve_process import ROOT, START_TIMEOUT, write_config

REQUESTS = 1500  # ~250 bytes of access line each: several times the pipe and the backlog
STUCK = {"level": "info", "buffer": 0, "backlog": "64KiB"}


@dataclass
class Piped:
    proc: asyncio.subprocess.Process
    proxy: str
    metrics: str
    read_fd: int


@asynccontextmanager
async def serving_into_a_pipe(
    tmp_path: Path, upstream: str, **logging: object
) -> AsyncIterator[Piped]:
    """``sidecar serve`` with stdout and stderr on a pipe this test does not read (yet)."""
    metrics_port = free_port()
    config, *_, proxy_port, _ = write_config(
        tmp_path,
        upstream,
        logging=logging,
        metrics={"listen": f"127.0.0.1:{metrics_port}"},
    )
    read_fd, write_fd = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "sidecar", "serve", "--config", str(config)),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=subprocess.STDOUT,
        )
    finally:
        os.close(write_fd)
    piped = Piped(
        proc, f"http://127.0.0.1:{proxy_port}", f"http://127.0.0.1:{metrics_port}", read_fd
    )
    try:
        async with aiohttp.ClientSession() as http, asyncio.timeout(START_TIMEOUT):
            while True:  # polling a starting process, not waiting for a time
                assert proc.returncode is None, "sidecar serve exited"
                try:
                    async with http.get(piped.metrics + "/metrics") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
        yield piped
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        os.close(read_fd)


async def answered(piped: Piped, count: int, seconds: float, prefix: str = "stall") -> int:
    """How many of ``count`` requests (no session: 401; request ids ``prefix-0``…) were
    answered within ``seconds``."""
    done = 0
    with_deadline = aiohttp.ClientTimeout(total=seconds)
    async with aiohttp.ClientSession(timeout=with_deadline) as http:
        try:
            async with asyncio.timeout(seconds):
                for i in range(count):
                    async with http.get(
                        piped.proxy + "/app/page", headers={"X-Request-Id": f"{prefix}-{i}"}
                    ) as response:
                        assert response.status == 401
                        done += 1
        except TimeoutError:
            pass
    return done


async def dropped_metric(piped: Piped) -> float:
    async with (
        aiohttp.ClientSession() as http,
        http.get(piped.metrics + "/metrics") as response,
    ):
        text = await response.text()
    for line in text.splitlines():
        if line.startswith("sidecar_log_lines_dropped_total "):
            return float(line.split()[1])
    raise AssertionError("no sidecar_log_lines_dropped_total on /metrics")


class Reader:
    """Reads the pipe from now on, in a thread, keeping whole lines."""

    def __init__(self, fd: int) -> None:
        self.data = bytearray()
        self._fd = fd
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while chunk := os.read(self._fd, 65536):
            self.data += chunk

    def lines(self) -> list[dict[str, object]]:
        text = bytes(self.data).decode()
        whole = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in whole.splitlines()]


async def test_a_log_reader_that_stops_reading_does_not_stall_the_answers(
    tmp_path: Path,
) -> None:
    async with (
        running_upstream() as upstream,
        serving_into_a_pipe(tmp_path, upstream.url, **STUCK) as piped,
    ):
        assert await answered(piped, REQUESTS, seconds=60) == REQUESTS
        dropped = await dropped_metric(piped)
        assert dropped > 0  # more lines than the pipe and the backlog hold: some were lost
        reader = Reader(piped.read_fd)  # the collector reads again
        async with asyncio.timeout(20):
            while True:  # each request's line is handed over; the first after the drop warns
                await answered(piped, 1, seconds=10, prefix="after")
                warnings = [x for x in reader.lines() if x.get("dropped_lines")]
                if warnings:
                    break
                await asyncio.sleep(0.05)
        assert warnings[0]["level"] == "warning"
        assert int(str(warnings[0]["dropped_lines"])) >= dropped
        # Every line that did arrive is whole, and the access lines are in order.
        ids = [
            int(str(x["request_id"]).removeprefix("stall-"))
            for x in reader.lines()
            if x.get("event") == "access" and str(x.get("request_id", "")).startswith("stall-")
        ]
        assert ids == sorted(ids)
        assert 0 < len(ids) < REQUESTS  # some were dropped
        piped.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await piped.proc.wait() == 0


async def test_an_exit_does_not_wait_for_ever_for_a_stuck_log(tmp_path: Path) -> None:
    """SIGTERM while nobody reads the pipe: the exit waits a bounded time for the lines
    queued, then ends (with the loop writing itself, it would block in that write). It
    waits once: ``logging.shutdown()`` flushes and then closes the handler, and each of the
    three waits was DRAIN_WAIT (5 s) before, 15 s in all."""
    async with (
        running_upstream() as upstream,
        serving_into_a_pipe(tmp_path, upstream.url, **STUCK) as piped,
    ):
        assert await answered(piped, REQUESTS, seconds=60) == REQUESTS
        piped.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(12):  # DRAIN_WAIT once, and room for a busy machine
            assert await piped.proc.wait() == 0


async def test_with_backlog_zero_the_loop_waits_for_the_pipe(tmp_path: Path) -> None:
    """The old trade, still available: no thread, nothing dropped, and a pipe nobody reads
    stops the answers once it is full (this is what the thread is for)."""
    async with (
        running_upstream() as upstream,
        serving_into_a_pipe(tmp_path, upstream.url, level="info", buffer=0, backlog=0) as piped,
    ):
        stalled_after = await answered(piped, REQUESTS, seconds=5)
        assert stalled_after < REQUESTS
        reader = Reader(piped.read_fd)
        # Read again, it answers again, and every line was kept.
        assert await answered(piped, 10, seconds=30, prefix="after") == 10
        assert await dropped_metric(piped) == 0
        async with asyncio.timeout(20):
            while True:  # polling the reader
                ids = [x.get("request_id") for x in reader.lines()]
                if "after-9" in ids:
                    break
                await asyncio.sleep(0.05)
        stalled = [i for i in ids if str(i).startswith("stall-")]
        assert stalled == [f"stall-{i}" for i in range(len(stalled))]
        assert len(stalled) >= stalled_after
