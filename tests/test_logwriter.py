"""How log lines reach the stream (:mod:`sidecar.telemetry.logwriter`): access lines held up
to ``logging.buffer`` bytes or ``logging.flush`` seconds, any other line at the end of its
event-loop iteration, everything in order. (Real processes killed and stopped with signals:
tests/test_log_buffer.py; a stream that stops taking lines: tests/test_log_stall.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import signal
import threading
import time

from sidecar.telemetry import metrics
from sidecar.telemetry.audit import JsonLineFormatter
from sidecar.telemetry.logthread import WriterThread
from sidecar.telemetry.logwriter import PIPE_BUF, LoopBatchedHandler


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def handler_on(
    stream: io.StringIO, *, buffer: int = 4096, flush_after: float = 60.0
) -> LoopBatchedHandler:
    return LoopBatchedHandler(stream, buffer=buffer, flush_after=flush_after)


def access(n: int) -> str:
    return json.dumps({"event": "access", "n": n})


async def test_access_lines_are_held_past_the_iteration_until_the_timer() -> None:
    stream = CountingStream()
    handler = handler_on(stream, flush_after=0.2)
    for i in range(5):
        handler.queue.access(access(i))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert stream.writes == []  # held: not written at the end of the iteration
    async with asyncio.timeout(10):
        while True:  # polling the timer, not waiting for a time
            if stream.writes:
                break
            await asyncio.sleep(0.02)
    assert len(stream.writes) == 1
    assert [json.loads(x)["n"] for x in stream.getvalue().splitlines()] == [0, 1, 2, 3, 4]


async def test_a_full_buffer_is_written_at_once() -> None:
    stream = CountingStream()
    handler = handler_on(stream, buffer=1000)
    line = access(0)
    count = 1000 // (len(line) + 1) + 1  # the line that reaches the buffer's size
    for _ in range(count - 1):
        handler.queue.access(line)
    assert stream.writes == []
    handler.queue.access(line)
    assert len(stream.writes) == 1
    assert stream.getvalue().count("\n") == count


async def test_any_other_line_is_written_at_the_end_of_its_iteration_after_the_held_ones() -> None:
    stream = CountingStream()
    handler = handler_on(stream)
    logger = logging.getLogger(f"test.logwriter.{id(stream)}")
    handler.setFormatter(JsonLineFormatter())
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler.queue.access(access(1))
    handler.queue.access(access(2))
    logger.warning("an upstream failed")
    handler.queue.access(access(3))  # the same iteration: written with the warning
    assert stream.writes == []
    await asyncio.sleep(0)
    assert len(stream.writes) == 1
    lines = stream.getvalue().splitlines()
    assert [json.loads(x).get("n", json.loads(x).get("msg")) for x in lines] == [
        1,
        2,
        "an upstream failed",
        3,
    ]


async def test_buffer_zero_writes_access_lines_at_the_end_of_the_iteration() -> None:
    stream = CountingStream()
    handler = handler_on(stream, buffer=0)
    handler.queue.access(access(1))
    handler.queue.access(access(2))
    assert stream.writes == []
    await asyncio.sleep(0)
    assert stream.writes == [access(1) + "\n" + access(2) + "\n"]


def test_outside_a_loop_access_lines_are_written_at_once() -> None:
    stream = CountingStream()
    handler = handler_on(stream)
    handler.queue.access(access(1))
    assert stream.writes == [access(1) + "\n"]


async def test_flush_writes_everything_held() -> None:
    stream = CountingStream()
    handler = handler_on(stream)
    handler.queue.access(access(1))
    handler.flush()  # SIGHUP, logging.shutdown() at exit, close()
    assert stream.getvalue() == access(1) + "\n"


def test_a_timer_left_on_a_closed_loop_does_not_hold_lines_for_ever() -> None:
    """A loop closed with the timer armed never fires it: the next access line after the
    timer was due is written at once, and the one after arms a timer on its own loop."""
    stream = CountingStream()
    handler = handler_on(stream, flush_after=0.05)

    async def one_line(n: int) -> None:
        handler.queue.access(access(n))

    asyncio.run(one_line(1))  # armed on a loop that is then closed
    assert stream.writes == []

    async def later() -> None:
        await asyncio.sleep(0.1)
        handler.queue.access(access(2))
        assert stream.getvalue().splitlines() == [access(1), access(2)]
        handler.queue.access(access(3))
        async with asyncio.timeout(10):
            while True:  # polling the timer, not waiting for a time
                if access(3) in stream.getvalue():
                    break
                await asyncio.sleep(0.02)

    asyncio.run(later())


async def test_lines_from_other_threads_keep_whole_and_all_arrive() -> None:
    stream = CountingStream()
    handler = handler_on(stream, buffer=2000, flush_after=0.05)

    def log(base: int) -> None:
        for i in range(300):
            handler.queue.access(access(base + i))

    threads = [threading.Thread(target=log, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for i in range(300):
        handler.queue.access(access(9000 + i))
        if i % 50 == 0:
            await asyncio.sleep(0)
    for t in threads:
        t.join()
    handler.flush()
    got = sorted(json.loads(x)["n"] for x in stream.getvalue().splitlines())
    expected = sorted(
        [k * 1000 + i for k in range(4) for i in range(300)] + [9000 + i for i in range(300)]
    )
    assert got == expected


def test_lines_written_through_a_real_pipe_arrive_whole_and_in_order() -> None:
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    with os.fdopen(write_fd, "w", encoding="ascii") as stream:
        handler = LoopBatchedHandler(stream, buffer=60000)
        assert handler.queue.piece == PIPE_BUF
        for i in range(400):  # about 12 KB, three pieces at least
            handler.queue.access(access(i))
        handler.flush()
        data = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(read_fd, 65536):
                data += chunk
    os.close(read_fd)
    assert len(data) > 2 * PIPE_BUF
    assert [json.loads(x)["n"] for x in data.decode().splitlines()] == list(range(400))


def test_on_a_pipe_the_text_is_cut_into_whole_lines_of_at_most_pipe_buf() -> None:
    """Workers share the pipe of a container's log collector: the kernel writes a piece of
    at most PIPE_BUF bytes whole, so pieces cut at line ends never interleave in a line."""
    read_fd, write_fd = os.pipe()
    try:
        stream = CountingStream()
        with os.fdopen(os.dup(write_fd), "w") as pipe:
            handler = LoopBatchedHandler(pipe, buffer=60000)
            assert handler.queue.piece == PIPE_BUF
            handler.setStream(stream)  # the cutting decided again for the new stream
        assert handler.queue.piece == 0
        handler.queue.piece = PIPE_BUF
        for i in range(400):
            handler.queue.access(access(i))
        handler.flush()
        assert len(stream.writes) > 3
        for piece in stream.writes:
            assert len(piece) <= PIPE_BUF
            assert piece.endswith("\n")
        assert [json.loads(x)["n"] for x in stream.getvalue().splitlines()] == list(range(400))
    finally:
        os.close(read_fd)
        os.close(write_fd)


async def test_new_buffering_writes_what_is_held_and_applies_at_once() -> None:
    """``logging.buffer``/``logging.flush`` changed by a reload (SIGHUP)."""
    stream = CountingStream()
    handler = handler_on(stream, buffer=60000)
    handler.queue.access(access(1))
    handler.set_buffering(0, 1.0)
    assert stream.getvalue() == access(1) + "\n"  # held under the old settings: written
    handler.queue.access(access(2))
    await asyncio.sleep(0)  # buffer 0: at the end of the iteration
    assert stream.getvalue().splitlines() == [access(1), access(2)]


def test_a_flush_left_on_a_closed_loop_does_not_hold_the_next_lines() -> None:
    """A loop stopped and closed in the iteration that scheduled the end-of-iteration flush
    (``asyncio.run``'s last one) never runs it: the lines logged after, outside a loop or
    in the next loop, are written then, not held until an exit."""
    stream = CountingStream()
    handler = handler_on(stream, buffer=0)

    async def log_in_the_last_iteration() -> None:
        asyncio.get_running_loop().stop()
        handler.queue.line(access(1))

    loop = asyncio.new_event_loop()
    loop.run_until_complete(log_in_the_last_iteration())
    loop.close()
    assert stream.writes == []  # the flush was scheduled on the loop just closed
    handler.queue.line(access(2))  # outside a loop: at once, with the one before
    assert stream.getvalue().splitlines() == [access(1), access(2)]

    async def in_the_next_loop() -> None:
        asyncio.get_running_loop().stop()
        handler.queue.line(access(3))

    loop = asyncio.new_event_loop()
    loop.run_until_complete(in_the_next_loop())
    loop.close()

    async def access_lines_in_a_new_loop() -> None:
        handler.queue.access(access(4))
        await asyncio.sleep(0)
        assert stream.getvalue().splitlines() == [access(n) for n in (1, 2, 3, 4)]

    asyncio.run(access_lines_in_a_new_loop())


def test_the_writing_thread_keeps_order_and_drops_and_counts_past_its_backlog() -> None:
    """A stream that stops taking texts: the thread holds at most ``backlog`` characters
    (beyond the one it is writing), drops what would go past it and counts its lines; the
    first text after the stream moves again is preceded by one warning with the count."""
    gate = threading.Event()
    written: list[str] = []

    def write(text: str) -> None:
        gate.wait(10)
        written.append(text)

    writer = WriterThread(write, backlog=100)
    before = metrics.LOG_LINES_DROPPED._value.get()
    writer.put("a\n")  # taken by the thread, which waits in the stream's write
    line = "x" * 39 + "\n"
    writer.put(line)
    writer.put(line)  # 82 characters queued
    writer.put(line + line)  # past 100: dropped, two lines
    assert writer.queued == 82
    assert metrics.LOG_LINES_DROPPED._value.get() == before + 2
    gate.set()
    assert writer.drain(10)
    assert written == ["a\n", line, line]
    writer.put("b\n")
    assert writer.drain(10)
    warning = json.loads(written[3])
    assert (warning["level"], warning["dropped_lines"]) == ("warning", 2)
    assert written[4] == "b\n"
    writer.close()


def test_a_stream_without_a_descriptor_is_written_without_a_thread() -> None:
    """Only a descriptor can block: an in-memory stream is written at once, on the caller's
    thread, and ``logging.backlog: 0`` does the same on a pipe."""
    assert handler_on(CountingStream())._writer is None
    read_fd, write_fd = os.pipe()
    try:
        with os.fdopen(os.dup(write_fd), "w") as pipe:
            assert LoopBatchedHandler(pipe)._writer is not None
            handler = LoopBatchedHandler(pipe, backlog=0)
            assert handler._writer is None
            handler.set_buffering(4096, 1.0, 65536)  # a reload gives it a thread
            assert handler._writer is not None
            handler.set_buffering(4096, 1.0, 0)  # and takes it away
            assert handler._writer is None
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_a_forked_child_writes_its_lines_with_a_thread_of_its_own() -> None:
    """``sidecar serve --workers`` forks after the supervisor has logged (its thread
    running): the child's lines are written by a thread of the child's."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    with os.fdopen(write_fd, "w", encoding="ascii") as stream:
        handler = LoopBatchedHandler(stream)
        handler.queue.line(access(1))  # outside a loop: handed to the thread at once
        handler.flush()
        pid = os.fork()
        if pid == 0:  # the child
            handler.queue.line(access(2))
            handler.flush()
            os._exit(0 if handler._writer is not None and handler._writer.queued == 0 else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        data = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(read_fd, 65536):
                data += chunk
    os.close(read_fd)
    assert [json.loads(x)["n"] for x in data.decode().splitlines()] == [1, 2]


def _blocked_in_a_write(thread: threading.Thread | None) -> bool:
    """Whether ``thread`` sleeps in the kernel's write to a pipe (polled, not waited for)."""
    assert thread is not None
    assert thread.native_id is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            open(f"/proc/self/task/{thread.native_id}/wchan") as wchan,
        ):
            if "pipe_write" in wchan.read():
                return True
        time.sleep(0.01)
    return False


def test_a_child_forked_while_the_thread_writes_to_a_stalled_stream_still_writes() -> None:
    """The supervisor of ``sidecar serve --workers`` forks a worker (or a replacement) while
    its writing thread may be inside a write to stderr that a slow log collector holds up.
    A buffered stream's lock held by that thread at the fork stays held in the child for
    ever (no thread of the child's owns it): the child's thread must not need it, or every
    line the worker logs afterwards is lost, even once the collector reads again."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write_fd, b"\n" * 4096)  # full: the next write waits for a reader
    os.set_blocking(write_fd, True)
    # Buffered, as sys.stderr is unless PYTHONUNBUFFERED is set.
    with os.fdopen(write_fd, "w", encoding="ascii") as stream:
        handler = LoopBatchedHandler(stream)
        handler.queue.line(access(1) + " " * 20000)  # more than the stream's buffer
        writer = handler._writer
        assert writer is not None
        assert _blocked_in_a_write(writer._thread)
        pid = os.fork()
        if pid == 0:  # the child: reads the pipe (the collector is back), then logs
            code = 2
            try:
                seen = bytearray()

                def collect() -> None:
                    while chunk := os.read(read_fd, 65536):
                        seen.extend(chunk)

                threading.Thread(target=collect, daemon=True).start()
                handler.queue.line(access(2))
                handler.flush()  # waits for the child's thread, at most DRAIN_WAIT
                deadline = time.monotonic() + 5
                while b'"n": 2' not in seen and time.monotonic() < deadline:
                    time.sleep(0.01)
                code = 0 if b'"n": 2' in seen else 1
            finally:
                os._exit(code)
        try:
            deadline = time.monotonic() + 30
            while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            if done[0] == 0:
                os.kill(pid, signal.SIGKILL)
                done = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(done[1]) == 0, "the child's line never came"
        finally:
            os.set_blocking(read_fd, False)
            with contextlib.suppress(BlockingIOError):
                while os.read(read_fd, 65536):
                    pass
            handler.close()
    os.close(read_fd)


def test_an_exit_waits_for_a_stuck_stream_once() -> None:
    """``logging.shutdown()`` calls the handler's ``flush`` then its ``close`` (which
    flushes and ends the thread): with the stream stuck, each waited ``DRAIN_WAIT`` again,
    three times in all (15 s, past many a container's stop grace). Once a wait has given
    up and nothing was written since, the next ones do not wait."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write_fd, b"\n" * 4096)  # full: nobody reads
    os.set_blocking(write_fd, True)
    stream = os.fdopen(write_fd, "w", encoding="ascii")
    try:
        handler = LoopBatchedHandler(stream)
        handler.queue.line(access(1) + " " * 20000)
        handler.queue.line(access(2))
        writer = handler._writer
        assert writer is not None
        assert _blocked_in_a_write(writer._thread)
        assert not writer.drain(0.1)  # an exit's wait gives up
        started = time.monotonic()
        handler.flush()  # logging.shutdown(): flush, then close
        handler.close()
        assert time.monotonic() - started < 1.0
    finally:
        # The stream moves again: the thread's write ends, then the stream can close.
        reader = threading.Thread(
            target=lambda: [None for _ in iter(lambda: os.read(read_fd, 65536), b"")]
        )
        reader.start()
        stream.close()
        reader.join(10)
        os.close(read_fd)


def test_a_line_from_another_thread_during_a_reload_of_the_backlog_is_written() -> None:
    """SIGHUP moves ``logging.backlog`` to 0 (or the stream changes) while the store's
    thread logs: the old writing thread is closed, then replaced. A line handed to it in
    between was dropped, silently (a closed writer takes nothing, and counts nothing)."""
    read_fd, write_fd = os.pipe()
    got = bytearray()

    def collect() -> None:
        while chunk := os.read(read_fd, 65536):
            got.extend(chunk)

    reader = threading.Thread(target=collect)
    reader.start()
    stream = os.fdopen(write_fd, "w", encoding="ascii")
    try:
        handler = LoopBatchedHandler(stream)
        writer = handler._writer
        assert writer is not None
        closed, go = threading.Event(), threading.Event()
        close = writer.close

        def close_then_wait(timeout: float = 5.0) -> None:
            close(timeout)
            closed.set()  # the reload is between closing the old thread and the next step
            go.wait(10)

        writer.close = close_then_wait  # type: ignore[method-assign]
        reload = threading.Thread(target=handler.set_buffering, args=(4096, 1.0, 0))
        reload.start()
        assert closed.wait(10)
        store_thread = threading.Thread(target=handler.queue.line, args=(access(7),))
        store_thread.start()
        store_thread.join(0.5)  # it may wait for the reload to end, not lose its line
        go.set()
        reload.join(10)
        store_thread.join(10)
        handler.close()
    finally:
        stream.close()
        reader.join(10)
        os.close(read_fd)
    assert [json.loads(x)["n"] for x in got.decode().splitlines()] == [7]


def test_lines_dropped_before_an_exit_are_still_reported_in_the_log() -> None:
    """Lines dropped and no text handed over after them: the warning that says how many
    comes with the next text, and an exit is the last chance for it (the counter dies
    with the process)."""
    gate = threading.Event()
    written: list[str] = []

    def write(text: str) -> None:
        gate.wait(10)
        written.append(text)

    writer = WriterThread(write, backlog=12)
    writer.put("a\n")  # the thread waits in the stream's write with it
    writer.put("b" * 9 + "\n")
    writer.put("c\n")  # past the backlog: dropped
    gate.set()
    writer.close()
    assert written[:2] == ["a\n", "b" * 9 + "\n"]
    assert len(written) == 3
    assert json.loads(written[2])["dropped_lines"] == 1


def test_a_text_the_stream_fails_on_unexpectedly_is_counted_and_the_thread_goes_on() -> None:
    """A write that raises something other than the stream's own errors loses that text,
    counted as dropped lines (and reported by the next text's warning); the thread lives on
    and writes the texts after it."""
    written: list[str] = []

    def write(text: str) -> None:
        if text.startswith("boom"):
            raise RuntimeError("reentrant call")
        written.append(text)

    writer = WriterThread(write, backlog=1000)
    before = metrics.LOG_LINES_DROPPED._value.get()
    writer.put("boom 1\nboom 2\n")
    assert writer.drain(10)
    assert metrics.LOG_LINES_DROPPED._value.get() == before + 2
    writer.put("after\n")
    assert writer.drain(10)
    assert json.loads(written[0])["dropped_lines"] == 2
    assert written[1:] == ["after\n"]
    writer.close()
