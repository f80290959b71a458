"""The log's writes off the event loop: one thread per log stream that writes the texts the
loop hands it, in order, so that a stream that stops taking them (a log collector that no
longer reads its pipe, a disk that stalls) never stalls the loop's answers.

What the thread has not written yet is bounded: at most ``logging.backlog`` bytes (beyond
one text, which is always taken). A text that would go past it is **dropped, and its lines
counted** (``sidecar_log_lines_dropped_total``); once the stream takes texts again, the
first thing written after the drop is one warning line that says how many lines were lost.
So a log that cannot keep up loses lines, visibly, instead of the proxy answering nothing;
``logging.backlog: 0`` keeps the old trade (no thread: the loop writes itself and waits
for the stream, as nginx does).

Waiting for the thread happens only where a process ends (:meth:`WriterThread.drain`, from
the handler's ``flush`` outside a running loop: ``logging.shutdown()`` at exit, a worker's
end), and for at most :data:`DRAIN_WAIT`: an exit is not held for ever by a stuck stream. A
hard kill (SIGKILL) loses what is queued here too: at most ``logging.backlog`` bytes, and
nothing while the stream keeps up (each text is written as soon as it is handed over).

After a fork (``sidecar serve --workers``) the child starts with an empty queue and a
thread of its own when it first writes: the parent's thread writes what the parent queued.
If the parent's thread was inside a write at the fork, ``after_fork_mid_write`` runs in the
child (the handler gives itself a new stream object: a buffered stream's lock, held by a
thread the child does not have, would stay held there for ever).
"""

from __future__ import annotations

import json
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Final

from sidecar.telemetry import metrics
from sidecar.telemetry.context import rfc3339

DEFAULT_BACKLOG: Final = 1024 * 1024  # logging.backlog
DRAIN_WAIT: Final = 5.0  # seconds an exit waits for the queued texts at most
LOGGER: Final = "sidecar.log"


class WriterThread:
    """Writes the texts given to :meth:`put` with ``write``, in order, from a daemon thread
    started at the first of them."""

    def __init__(
        self,
        write: Callable[[str], None],
        backlog: int = DEFAULT_BACKLOG,
        after_fork_mid_write: Callable[[], None] | None = None,
    ) -> None:
        self._write = write
        self.backlog = backlog
        self._after_fork_mid_write = after_fork_mid_write
        self._reset()
        _ALL.add(self)

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._texts: deque[str] = deque()
        self._queued = 0  # characters queued (ASCII JSON lines: bytes)
        self._writing = False  # the thread holds a text it is writing
        self._dropped = 0  # lines dropped since the last warning about it
        self._written = 0  # texts written so far
        self._gave_up_at = -1  # _written when a drain last gave up waiting
        self._thread: threading.Thread | None = None
        self._closed = False

    def put(self, text: str) -> None:
        """Queue ``text`` for the thread; drop it (and count its lines) if the backlog is
        full. Never waits for the stream."""
        with self._cond:
            if self._closed:
                return
            if self._queued and self._queued + len(text) > self.backlog:
                lines = text.count("\n")
                self._dropped += lines
                metrics.log_lines_dropped(lines)
                return
            if self._dropped:
                warning = _dropped_line(self._dropped)
                self._dropped = 0
                self._texts.append(warning)
                self._queued += len(warning)
            self._texts.append(text)
            self._queued += len(text)
            if self._thread is None:
                self._start()
            self._cond.notify()

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sidecar-log-writer", daemon=True)
        self._thread.start()

    def drain(self, timeout: float = DRAIN_WAIT) -> bool:
        """Wait until every queued text is written, at most ``timeout`` seconds; False when
        some are still waiting (the stream does not take them). Once a wait has given up,
        the next ones do not wait while no text has been written since: an exit flushes
        and closes the handler (``logging.shutdown()``), and each would wait again."""
        with self._cond:
            idle = self._idle
            if self._written == self._gave_up_at and not idle():
                return False  # stuck since the last wait gave up
            if self._cond.wait_for(idle, timeout):
                return True
            self._gave_up_at = self._written
            return False

    def _idle(self) -> bool:
        return not self._texts and not self._writing

    def close(self, timeout: float = DRAIN_WAIT) -> None:
        """Write what is queued (waiting at most ``timeout``), then end the thread. Lines
        dropped since the last warning are reported first: no later text will carry it."""
        with self._cond:
            if self._dropped and not self._closed:
                warning = _dropped_line(self._dropped)
                self._dropped = 0
                self._texts.append(warning)
                self._queued += len(warning)
                if self._thread is None:
                    self._start()
                self._cond.notify()
        self.drain(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def queued(self) -> int:
        """Characters handed over and not written yet."""
        with self._cond:
            return self._queued

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._texts:
                    if self._closed:
                        return
                    cond.wait()
                text = self._texts.popleft()
                self._writing = True
            try:
                self._write(text)
            except Exception:
                # The stream's own failures (OSError, an encoding's ValueError) are the
                # handler's to drop; anything else must not end the thread, after which
                # every line would queue until the backlog is full and then be dropped
                # with no warning ever written. This text is lost, counted as a drop.
                lines = text.count("\n")
                metrics.log_lines_dropped(lines)
                with cond:
                    self._dropped += lines
            finally:
                with cond:
                    self._queued -= len(text)
                    self._writing = False
                    self._written += 1
                    if not self._texts:
                        cond.notify_all()  # drain()

    def _after_fork_in_child(self) -> None:
        # The parent's thread did not come along, and its lock may have been held at the
        # fork: a fresh start; what the parent queued is the parent's to write.
        closed, mid_write = self._closed, self._writing
        self._reset()
        self._closed = closed
        if mid_write and self._after_fork_mid_write is not None:
            self._after_fork_mid_write()


def _dropped_line(lines: int) -> str:
    doc = {
        "ts": rfc3339(time.time()),
        "level": "warning",
        "logger": LOGGER,
        "msg": f"{lines} log lines dropped: the log stream did not take them in time",
        "dropped_lines": lines,
    }
    return json.dumps(doc) + "\n"


_ALL: Final[weakref.WeakSet[WriterThread]] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for writer in list(_ALL):
        writer._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
