"""The JSON log plumbing: audit lines and the loop-batched handler."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from sidecar.telemetry.audit import JsonLineFormatter, LoopBatchedHandler


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def make_logger(stream: CountingStream) -> logging.Logger:
    handler = LoopBatchedHandler(stream)
    handler.setFormatter(JsonLineFormatter())
    logger = logging.getLogger(f"test.audit.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


async def test_lines_of_one_loop_iteration_share_one_write() -> None:
    stream = CountingStream()
    logger = make_logger(stream)
    for i in range(3):
        logger.info("line %d", i)
    assert stream.writes == 0  # queued until the iteration ends
    await asyncio.sleep(0)
    assert stream.writes == 1
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["msg"] for line in lines] == ["line 0", "line 1", "line 2"]


def test_outside_a_loop_lines_are_written_at_once() -> None:
    stream = CountingStream()
    logger = make_logger(stream)
    logger.info("start-up")
    assert stream.writes == 1
    assert json.loads(stream.getvalue())["msg"] == "start-up"


async def test_flush_writes_what_is_queued() -> None:
    stream = CountingStream()
    logger = make_logger(stream)
    logger.warning("before shutdown")
    logger.handlers[0].flush()  # what logging.shutdown() does at exit
    assert json.loads(stream.getvalue())["level"] == "warning"
