"""How log lines reach the stream: a few writes for many lines.

The access log is one line per request; a ``write`` system call per line was about a tenth
of the proxy's CPU per request, and one per event-loop iteration (with the callback that
does it) still a tenth of the line's cost when few requests share an iteration. So lines
are queued (:class:`LineQueue`) and written together:

* **access lines** are held, as nginx's ``access_log … buffer=64k flush=1s`` holds them,
  until ``logging.buffer`` bytes of them are held or the oldest has waited
  ``logging.flush``, whichever comes first (``logging.buffer: 0``: at the end of the
  iteration, as any other line);
* **every other line** (audit events, warnings, errors) is written at the end of the
  event-loop iteration it was logged in, with the access lines held before it: order is
  kept, and nothing but access lines waits past the iteration;
* outside a running loop (threads, start-up, shutdown) a line is written at once, with
  whatever is queued.

``flush()`` (SIGHUP, ``logging.shutdown()`` at exit and in a worker that ends, a handler's
``close()``) writes everything queued. A hard kill (SIGKILL, the OOM killer) loses the
access lines held, at most ``logging.flush`` of them and never more than ``logging.buffer``
bytes, and the lines of the iteration it interrupts.

"Written" above means handed to the stream's writing thread
(:mod:`sidecar.telemetry.logthread`) when the stream has a descriptor and
``logging.backlog`` is above 0: the loop never waits for the stream, and a stream that
stops taking lines loses those past the backlog (counted) instead of stalling the answers.
``flush()`` outside a running loop (an exit) also waits for that thread, a bounded time.

On a pipe or socket (a container runtime's log collector) the queued text is written in
pieces of at most ``PIPE_BUF`` bytes cut at line ends: the kernel writes each whole, so
the lines of ``sidecar serve --workers`` processes sharing the pipe never interleave
within a line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import stat
import threading
import time
from collections.abc import Callable
from typing import Final, TextIO

from sidecar.telemetry.logthread import DEFAULT_BACKLOG as DEFAULT_BACKLOG
from sidecar.telemetry.logthread import WriterThread

ACCESS_LOGGER: Final = "sidecar.access"
DEFAULT_BUFFER: Final = 64 * 1024  # logging.buffer
DEFAULT_FLUSH: Final = 1.0  # logging.flush, seconds
# Bytes the kernel writes to a pipe in one piece (POSIX: at least 512; Linux: 4096).
PIPE_BUF: Final = select.PIPE_BUF
_monotonic: Final = time.monotonic
# The running loop of this thread or None, without get_running_loop's exception.
asyncio_running_loop: Final = asyncio._get_running_loop


class LineQueue:
    """The lines not written yet, and when they must be. ``write`` writes a text to the
    stream; it is called with ``lock`` held, as every method here holds it (lines come from
    the event loop's thread and from others: the store's, the executor's)."""

    def __init__(self, write: Callable[[str], None], lock: threading.RLock) -> None:
        self._write_text = write
        self._lock = lock
        self._lines: list[str] = []
        self._held = 0  # characters queued (the lines are JSON, ASCII: bytes)
        self.buffer = 0  # logging.buffer: access bytes held at most; 0: none past the iteration
        self.flush_after = DEFAULT_FLUSH  # logging.flush
        self.piece = 0  # the longest single write (PIPE_BUF on a pipe); 0: any length
        self._due = -1.0  # when the armed timer fires (monotonic); -1.0: none armed
        self._end_of_iteration = False  # a flush at the end of this iteration is scheduled
        self._iteration_loop: asyncio.AbstractEventLoop | None = None  # ... on this loop

    def access(self, line: str) -> None:
        """Queue an access line: written when the buffer fills or the timer fires."""
        self._lock.acquire()
        try:
            self._lines.append(line)
            self._held += len(line) + 1
            if self._end_of_iteration and not self._loop_gone():
                return  # written with the iteration's other lines
            if self._held >= self.buffer:
                if self.buffer == 0:
                    self._at_end_of_iteration()
                else:
                    self._write()
                return
            due = self._due
            if due < 0:
                self._arm()
            elif _monotonic() > due:
                # The timer is late: its loop is blocked, or gone (a loop closed with it
                # armed). Written now; the next line arms a timer on its own loop.
                self._due = -1.0
                self._write()
        finally:
            self._lock.release()

    def line(self, line: str) -> None:
        """Queue any other line: written at the end of this event-loop iteration, with
        everything queued before it (at once outside a running loop)."""
        self._lock.acquire()
        try:
            self._lines.append(line)
            self._held += len(line) + 1
            if not self._end_of_iteration or self._loop_gone():
                self._at_end_of_iteration()
        finally:
            self._lock.release()

    def flush(self) -> None:
        """Write everything queued now."""
        self._lock.acquire()
        try:
            self._end_of_iteration = False
            self._due = -1.0
            self._write()
        finally:
            self._lock.release()

    def _at_end_of_iteration(self) -> None:
        # Asked once per iteration, not per line: on Python 3.11 it costs a getpid().
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write()
            return
        self._end_of_iteration = True
        self._iteration_loop = loop
        loop.call_soon(self._iteration_ended)

    def _loop_gone(self) -> bool:
        # A loop closed with the end-of-iteration flush still scheduled never runs it
        # (asyncio.run's last iteration): the lines after it must not wait for it.
        loop = self._iteration_loop
        return loop is not None and loop.is_closed()

    def _iteration_ended(self) -> None:
        self._lock.acquire()
        try:
            self._end_of_iteration = False
            self._write()
        finally:
            self._lock.release()

    def _arm(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write()
            return
        due = _monotonic() + self.flush_after
        self._due = due
        loop.call_later(self.flush_after, self._timer_fired, due)

    def _timer_fired(self, due: float) -> None:
        self._lock.acquire()
        try:
            if self._due == due:  # not a timer already given up as late
                self._due = -1.0
            self._write()
        finally:
            self._lock.release()

    def _write(self) -> None:
        lines = self._lines
        if not lines:
            return
        self._lines = []
        self._held = 0
        if self.piece == 0:
            self._write_text("\n".join(lines) + "\n")
            return
        start, size = 0, 0
        for i, line in enumerate(lines):
            if size and size + len(line) + 1 > self.piece:
                self._write_text("\n".join(lines[start:i]) + "\n")
                start, size = i, 0
            size += len(line) + 1
        self._write_text("\n".join(lines[start:]) + "\n")


class LoopBatchedHandler(logging.StreamHandler[TextIO]):
    """A stream handler that writes its lines through a :class:`LineQueue` (see the module):
    access lines held up to ``buffer`` bytes or ``flush_after`` seconds, any other line at
    the end of its event-loop iteration. On a stream with a descriptor (a pipe, a file, a
    terminal) and ``backlog`` above 0 the writes themselves are a thread's
    (:mod:`sidecar.telemetry.logthread`): the loop hands the text over and goes on."""

    def __init__(
        self,
        stream: TextIO,
        *,
        buffer: int = DEFAULT_BUFFER,
        flush_after: float = DEFAULT_FLUSH,
        backlog: int = DEFAULT_BACKLOG,
    ) -> None:
        super().__init__(stream)
        # Handler.__init__ made the lock (an RLock; logging re-creates it in place in a
        # forked child); the queue shares it.
        lock = self.lock
        if lock is None:
            lock = self.lock = threading.RLock()
        self._backlog = backlog
        self._writer: WriterThread | None = None
        self.queue = LineQueue(self._hand_over, lock)
        self._attach(stream)
        self.set_buffering(buffer, flush_after)

    def set_buffering(self, buffer: int, flush_after: float, backlog: int | None = None) -> None:
        """``logging.buffer``, ``logging.flush`` and ``logging.backlog``; what is held is
        written first."""
        # The handler's lock throughout: another thread's line (the store's) must not be
        # handed to a writing thread closed and not yet replaced (it would be lost).
        self.acquire()
        try:
            self.queue.flush()
            self.queue.buffer = buffer
            self.queue.flush_after = flush_after
            if backlog is None or backlog == self._backlog:
                return
            self._backlog = backlog
            writer = self._writer
            if writer is not None and backlog > 0:
                writer.backlog = backlog  # the thread and what it holds stay
            else:  # to or from no thread (the texts queued for one are written first)
                self._attach(self.stream)
        finally:
            self.release()

    def setStream(self, stream: TextIO) -> TextIO | None:
        self.acquire()  # (as set_buffering)
        try:
            self.queue.flush()
            self._detach()
            previous = super().setStream(stream)
            self._attach(stream)
            return previous
        finally:
            self.release()

    def _attach(self, stream: TextIO) -> None:
        """How texts reach ``stream``: cut to ``PIPE_BUF`` on a pipe, and through a thread
        when it has a descriptor (only a descriptor can block) and a backlog is allowed."""
        descriptor, self.queue.piece = _kind(stream)
        writer = self._writer
        if writer is not None:
            writer.close()
            self._writer = None
        if descriptor and self._backlog > 0:
            self._writer = WriterThread(self._write_text, self._backlog, self._new_stream_in_child)

    def _detach(self) -> None:
        writer = self._writer
        if writer is not None:
            writer.close()
            self._writer = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # logging's contract: a bad record must not break the caller
            self.handleError(record)
            return
        if record.name == ACCESS_LOGGER:
            self.queue.access(line)
        else:
            self.queue.line(line)

    def write_line(self, line: str) -> None:
        """Queue one finished line that is not an access line (no ``LogRecord``)."""
        self.queue.line(line)

    def flush(self) -> None:
        """Write everything queued; outside a running event loop (an exit, a worker's end)
        also wait, at most :data:`~sidecar.telemetry.logthread.DRAIN_WAIT`, for the writing
        thread to finish. A loop never waits for the stream: on it (SIGHUP) the lines are
        handed to the thread, which writes them at once if the stream takes them."""
        self.queue.flush()
        writer = self._writer
        if writer is not None and asyncio_running_loop() is None:
            writer.drain()

    def close(self) -> None:
        self.acquire()  # (as set_buffering)
        try:
            self.flush()
            self._detach()
        finally:
            self.release()
        super().close()

    def _hand_over(self, text: str) -> None:
        writer = self._writer
        if writer is None:
            self._write_text(text)
        else:
            writer.put(text)

    def _new_stream_in_child(self) -> None:
        """In a forked child whose parent's writing thread was inside a write to the stream
        (the supervisor of ``sidecar serve --workers`` forking while a slow collector holds
        up stderr): a buffered stream's lock is still held in the child, by a thread the
        child does not have, and any write to it would wait for ever. The child writes
        through a new stream object on the same descriptor; the old one is kept, never
        used again (closing or collecting it would flush, and wait for that lock)."""
        stream = self.stream
        try:
            fresh = open(  # noqa: SIM115  # the handler's stream for the process's life
                stream.fileno(),
                "w",
                encoding=getattr(stream, "encoding", None) or "utf-8",
                errors=getattr(stream, "errors", None) or "backslashreplace",
                closefd=False,
            )
        except (OSError, ValueError, AttributeError):
            return
        _ABANDONED.append(stream)
        self.stream = fresh

    def _write_text(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            # A log that cannot be written (a closed or broken stream, a full disk) must
            # not fail the request whose line filled the buffer: the text is dropped.
            pass


# Streams a forked child stopped using (see LoopBatchedHandler._new_stream_in_child).
_ABANDONED: Final[list[TextIO]] = []


def _kind(stream: TextIO) -> tuple[bool, int]:
    """Whether ``stream`` has a descriptor, and the longest single write to it:
    :data:`PIPE_BUF` on a pipe or a socket, else 0 (no limit): a regular file's writes do
    not interleave, and a stream without a descriptor is in memory."""
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both
        return False, 0
    return True, PIPE_BUF if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) else 0


def direct_sink(logger: logging.Logger) -> LineQueue | None:
    """The queue of the one :class:`LoopBatchedHandler` every record of ``logger`` ends in,
    if that is all that would happen to an INFO record: no handler, filter or level of its
    own on the way but the root's. Then a finished line can go straight to it, skipping the
    ``LogRecord``; with anything else installed (a test's capture, an operator's handler)
    records go through ``logging`` as usual."""
    if logger.handlers or logger.filters or not logger.propagate:
        return None
    root = _ROOT
    handlers = root.handlers
    if len(handlers) != 1:
        return None
    handler = handlers[0]
    if type(handler) is not LoopBatchedHandler or handler.filters or root.filters:
        return None
    if handler.level > _INFO:
        return None
    return handler.queue


# What logging.getLogger() returns and INFO's number, read once: compiled, each read of a
# module's attribute costs as much as one of the checks above.
_ROOT: Final = logging.root
_INFO: Final = logging.INFO
