"""``sidecar serve --workers N``: N serving processes on the same ports, and a supervisor.

Each worker is a whole ``sidecar serve`` (its own event loop, store connections, upstream
pool and session cache) that binds every listener with ``SO_REUSEPORT``, so the kernel
spreads new connections over the workers. The supervisor serves nothing itself:

* it forks the workers (after the config has been read once: a config error fails before
  any worker starts) and waits for each to say it is listening;
* a worker that fails before it ever listened during start-up (address in use, store
  unreachable) stops the whole start: the other workers are stopped and the exit code is 1;
* a worker that dies later is started again, after a pause that doubles (1 s up to
  :data:`MAX_BACKOFF`) while workers keep dying within :data:`STABLE_AFTER` of starting;
* SIGTERM/SIGINT are passed to every worker (each drains its requests within
  ``shutdown.grace_period``); the supervisor exits 0 when they are gone, and kills any
  still running :data:`KILL_AFTER` seconds past the grace period;
* SIGHUP is passed to every worker: each reloads the config itself (:mod:`sidecar.reload`).

What the workers share lives in the store, so it holds across them as across replicas:
one-time links burn once (SQLite's ``BEGIN IMMEDIATE`` in WAL mode, Redis scripts), rate
limits count in the store. Metrics are one view: the workers write prometheus-client's
multiprocess files into one directory (``PROMETHEUS_MULTIPROC_DIR``, a private temporary
one unless set) and whichever worker is scraped reports the sum. Each worker keeps its own
session cache: a logout on one reaches the others within ``session.cache_ttl``, as between
replicas.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import select
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

_LOG = logging.getLogger("sidecar.workers")

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
STARTUP_TIMEOUT: Final = 60.0  # seconds for a worker to listen during start-up
STABLE_AFTER: Final = 10.0  # a worker up this long resets the restart back-off
MAX_BACKOFF: Final = 30.0
KILL_AFTER: Final = 5.0  # seconds past the grace period before a worker is killed
_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)


def parse_workers(text: str) -> int:
    """``auto`` (one per core this process may run on) or a whole number from 1 to 64."""
    if text.strip().lower() == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    if not text.strip().isdigit() or not 1 <= int(text) <= 64:
        raise ValueError(f"--workers: expected auto or a number from 1 to 64, got {text!r}")
    return int(text)


@dataclass
class _Worker:
    slot: int
    pid: int
    started: float
    ready_fd: int | None  # read end of the pipe the worker writes one byte to when listening
    ready: bool = False


WorkerMain = Callable[[Callable[[], None]], int]


class Supervisor:
    """Runs ``count`` workers; ``worker_main(on_ready)`` is a worker's whole life (it calls
    ``on_ready`` once listening and returns the exit code)."""

    def __init__(self, count: int, worker_main: WorkerMain, grace_period: float) -> None:
        self._count = count
        self._main = worker_main
        self._grace = grace_period
        self._workers: dict[int, _Worker] = {}  # by pid
        self._backoff = 1.0
        self._restart_at: dict[int, float] = {}  # slot -> when to start it again
        self._stopping = False

    def run(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        previous = {sig: signal.signal(sig, _noop) for sig in _SIGNALS}
        old_wakeup = signal.set_wakeup_fd(wake_w)
        try:
            return self._run(wake_r)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(wake_r)
            os.close(wake_w)

    def _run(self, wake: int) -> int:
        for slot in range(self._count):
            self._spawn(slot, wake)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        # Start-up: every worker listening, or the start fails as a single process's would.
        while not all(w.ready for w in self._workers.values()) or len(self._workers) < self._count:
            if self._stopping or time.monotonic() > deadline:
                if not self._stopping:
                    _LOG.error("workers did not start within %ss", STARTUP_TIMEOUT)
                return self._shutdown(wake, failed=not self._stopping)
            if self._wait(wake, 0.5, starting=True):
                _LOG.error("a worker failed to start: stopping")
                return self._shutdown(wake, failed=True)
        _LOG.info("%d workers serving", self._count)
        while not self._stopping:
            self._wait(wake, 1.0, starting=False)
            now = time.monotonic()
            for slot, at in list(self._restart_at.items()):
                if now >= at:
                    del self._restart_at[slot]
                    self._spawn(slot, wake)
        return self._shutdown(wake, failed=False)

    def _spawn(self, slot: int, wake: int) -> None:
        ready_r, ready_w = os.pipe()
        # The modules imported so far stay shared with the workers: a collection in a
        # worker that touched them would copy their pages.
        gc.freeze()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.close(ready_r)
                signal.set_wakeup_fd(-1)
                os.close(wake)
                for sig in _SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                # Until the worker's loop handles it: a reload asked for while it starts
                # must not end it (the config it is reading is the current one anyway).
                signal.signal(signal.SIGHUP, signal.SIG_IGN)

                def on_ready() -> None:
                    with contextlib.suppress(OSError):
                        os.write(ready_w, b"1")
                        os.close(ready_w)

                code = self._main(on_ready)
            except BaseException:
                _LOG.exception("worker %d failed", slot)
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(ready_w)
        self._workers[pid] = _Worker(slot, pid, time.monotonic(), ready_r)
        _LOG.info("worker %d started (pid %d)", slot, pid)

    def _wait(self, wake: int, timeout: float, *, starting: bool) -> bool:
        """Wait for a signal or a worker's ready byte; handle what came. True when a worker
        died before it was ready during start-up."""
        fds = [wake, *(w.ready_fd for w in self._workers.values() if w.ready_fd is not None)]
        with contextlib.suppress(InterruptedError):
            readable, _, _ = select.select(fds, [], [], timeout)
            for fd in readable:
                if fd == wake:
                    self._signals(_drain(wake))
                else:
                    self._ready(fd)
        return self._reap(starting)

    def _signals(self, received: bytes) -> None:
        for signum in set(received):
            if signum in (signal.SIGTERM, signal.SIGINT) and not self._stopping:
                _LOG.info("%s: stopping the workers", signal.Signals(signum).name)
                self._stopping = True
            elif signum == signal.SIGHUP:
                _LOG.info("SIGHUP: passed to every worker")
                self._send(signal.SIGHUP)

    def _ready(self, fd: int) -> None:
        for worker in self._workers.values():
            if worker.ready_fd == fd:
                said = b""
                with contextlib.suppress(OSError):
                    said = os.read(fd, 1)
                os.close(fd)
                worker.ready_fd = None
                # Nothing to read: the worker ended before it listened (reaped next).
                worker.ready = said == b"1"
                if worker.ready:
                    _LOG.info("worker %d listening (pid %d)", worker.slot, worker.pid)

    def _reap(self, starting: bool) -> bool:
        failed_start = False
        while self._workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            worker = self._workers.pop(pid, None)
            if worker is None:
                continue
            _forget(pid)
            if worker.ready_fd is not None:
                os.close(worker.ready_fd)
            code = os.waitstatus_to_exitcode(status)
            if self._stopping:
                continue
            if starting and not worker.ready:
                failed_start = True
                continue
            up = time.monotonic() - worker.started
            self._backoff = 1.0 if up >= STABLE_AFTER else min(MAX_BACKOFF, self._backoff * 2)
            delay = 0.0 if up >= STABLE_AFTER else self._backoff
            _LOG.warning(
                "worker %d (pid %d) exited with %s after %.1fs: starting it again in %.0fs",
                worker.slot, pid, _describe(code), up, delay,
            )  # fmt: skip
            self._restart_at[worker.slot] = time.monotonic() + delay
        return failed_start

    def _send(self, sig: int) -> None:
        for pid in self._workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _shutdown(self, wake: int, *, failed: bool) -> int:
        self._stopping = True
        self._send(signal.SIGTERM)
        deadline = time.monotonic() + self._grace + KILL_AFTER
        while self._workers and time.monotonic() < deadline:
            self._wait(wake, 0.2, starting=False)
        if self._workers:
            _LOG.warning("killing %d workers still running", len(self._workers))
            self._send(signal.SIGKILL)
            while self._workers:
                self._wait(wake, 0.2, starting=False)
        _LOG.info("stopped")
        return 1 if failed else 0


def _noop(signum: int, frame: object) -> None:
    """The handler that lets the signal reach the wake-up pipe."""


def _drain(fd: int) -> bytes:
    chunks = []
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 512):
            chunks.append(chunk)
    return b"".join(chunks)


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return signal.Signals(-code).name
    return f"code {code}"


def _forget(pid: int) -> None:
    """Drop a dead worker's live gauges from the shared metrics (its counters stay)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def shared_metrics_dir() -> Iterator[Path]:
    """``PROMETHEUS_MULTIPROC_DIR`` for the workers: as set (emptied of a previous run's
    files), or a private temporary one, on ``/dev/shm`` when it can be, removed at exit.
    Set before anything imports prometheus-client."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        for stale in Path(given).glob("*.db"):  # a previous run's figures are not ours
            stale.unlink(missing_ok=True)
        yield Path(given)
        return
    # In memory where there is a tmpfs for it: every request writes to these files.
    shm = Path("/dev/shm")  # noqa: S108  # mkdtemp below makes a private 0700 directory
    where = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    made = Path(tempfile.mkdtemp(prefix="sidecar-metrics-", dir=where))
    os.environ[MULTIPROC_ENV] = str(made)
    try:
        yield made
    finally:
        del os.environ[MULTIPROC_ENV]
        shutil.rmtree(made, ignore_errors=True)
