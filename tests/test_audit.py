"""The JSON log plumbing: audit lines and the loop-batched handler."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st

from sidecar.telemetry.audit import (
    AUDIT,
    Field,
    JsonLineFormatter,
    LoopBatchedHandler,
    audit,
    audit_mint,
    audit_redemption,
)
from sidecar.telemetry.context import CURRENT, RequestRecord


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


class Capture(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


_FIELD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
)


@given(
    event=st.text(min_size=1),
    fields=st.dictionaries(st.text().filter(lambda k: k not in ("event",)), _FIELD, max_size=6),
)
def test_an_audit_line_is_what_json_dumps_writes(event: str, fields: dict[str, Field]) -> None:
    """The audit line is built without ``json.dumps``; it must be byte for byte its text."""
    records: list[logging.LogRecord] = []
    handler = Capture(records)
    AUDIT.addHandler(handler)  # not the direct sink: the line goes through a LogRecord
    level = AUDIT.level
    AUDIT.setLevel(logging.INFO)
    try:
        audit(event, **fields)
    finally:
        AUDIT.removeHandler(handler)
        AUDIT.setLevel(level)
    line = records[0].getMessage()
    stamp = json.loads(line.replace("NaN", "0").replace("Infinity", "0"))["ts"]
    assert line == json.dumps({"ts": stamp, "level": "info", "event": event, **fields})


def _captured(write: Callable[[], None], request_id: str | None) -> str:
    """The one audit line ``write`` logs, with ``request_id`` the current request's."""
    records: list[logging.LogRecord] = []
    handler = Capture(records)
    AUDIT.addHandler(handler)  # not the direct sink: the line goes through a LogRecord
    level = AUDIT.level
    AUDIT.setLevel(logging.INFO)

    def run() -> None:
        if request_id is not None:
            CURRENT.set(RequestRecord(request_id, "redeem"))
        write()

    try:
        contextvars.copy_context().run(run)
    finally:
        AUDIT.removeHandler(handler)
        AUDIT.setLevel(level)
    [record] = records
    return record.getMessage()


@given(
    token_id=st.text(),
    user_id=st.text(),
    role=st.text(),
    one_time=st.booleans(),
    request_id=st.none() | st.text(),
)
def test_the_redemption_line_is_the_audit_line(
    token_id: str, user_id: str, role: str, one_time: bool, request_id: str | None
) -> None:
    """A redemption's audit line, built in one piece, is byte for byte the line of the
    general builder (the timestamp aside: each is of its own instant)."""
    ours = _captured(lambda: audit_redemption(token_id, user_id, role, one_time), request_id)
    general = _captured(
        lambda: audit("redeem", token_id=token_id, user_id=user_id, role=role, one_time=one_time),
        request_id,
    )
    stamp = len('{"ts": "2026-11-30T03:50:01.123Z"')
    assert ours[:8] == general[:8] == '{"ts": "'
    assert ours[stamp:] == general[stamp:]
    doc = json.loads(ours)
    expected = {"ts": doc["ts"], "level": "info", "event": "redeem", "token_id": token_id}
    expected |= {"user_id": user_id, "role": role, "one_time": one_time}
    if request_id is not None:
        expected["request_id"] = request_id
    assert ours == json.dumps(expected)


@given(
    token_id=st.text(),
    user_id=st.text(),
    role=st.text(),
    kind=st.text(),
    one_time=st.booleans(),
    expires_at=st.text(),
    module=st.none() | st.text(),
    request_id=st.none() | st.text(),
)
def test_the_mint_line_is_the_audit_line(
    token_id: str,
    user_id: str,
    role: str,
    kind: str,
    one_time: bool,
    expires_at: str,
    module: str | None,
    request_id: str | None,
) -> None:
    """A mint's audit line, built in one piece, is byte for byte the line of the general
    builder (the timestamp aside: each is of its own instant) and json.dumps' text."""
    fields: dict[str, Field] = {
        "token_id": token_id, "user_id": user_id, "role": role, "kind": kind,
        "one_time": one_time, "expires_at": expires_at, "module": module,
    }  # fmt: skip
    ours = _captured(
        lambda: audit_mint(token_id, user_id, role, kind, one_time, expires_at, module),
        request_id,
    )
    general = _captured(lambda: audit("mint", **fields), request_id)
    stamp = len('{"ts": "2026-11-30T03:50:01.123Z"')
    assert ours[:8] == general[:8] == '{"ts": "'
    assert ours[stamp:] == general[stamp:]
    expected: dict[str, Field] = {"ts": json.loads(ours)["ts"], "level": "info", "event": "mint"}
    expected |= fields
    if request_id is not None:
        expected["request_id"] = request_id
    assert ours == json.dumps(expected)
