"""An upstream that stalls mid-body: the client is not left hanging, the pool is not starved.

A raw-socket upstream (so it can misbehave exactly) sends a response head and part of the
body, then nothing, holding its connection open. With ``proxy.upstream_timeout`` and
``proxy.stream_idle_timeout`` at 1 s and a 4-connection pool: a small body (read whole before
the head is relayed) ends in a 504, a streamed one in an aborted client connection; either
way the upstream connection is dropped, its pool slot freed, and the access log says why.
Server-sent events that keep talking are never cut, however long they last.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.harness import (
    PUBLIC_URL,
    RawUpstream,
    Sidecar,
    parse_raw,
    raw_http,
    request_bytes,
    request_path,
    running_sidecar,
)
from tests.security import casebook

HOST = PUBLIC_URL.removeprefix("https://")
TIMEOUT = 1.0
POOL = 4
SETTINGS: dict[str, object] = {
    "proxy": {"upstream_timeout": "1s", "stream_idle_timeout": "1s", "max_connections": POOL}
}


class StallingUpstream(RawUpstream):
    """Answers by path, under the public ``/static``: ``/stall-small`` (Content-Length 5000,
    100 bytes sent), ``/stall-stream`` (Content-Length 200000, 70000 sent), ``/sse`` (an
    event every 300 ms, 8 of them, then the end), anything else a small 200. Counts the
    connections the sidecar dropped while a body was stalled."""

    def __init__(self) -> None:
        super().__init__(self._stall)
        self.dropped = 0

    async def _stall(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        path = request_path(head).removeprefix(b"/static")
        if path.startswith(b"/stall-"):
            length, sent = (5000, 100) if path == b"/stall-small" else (200_000, 70_000)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % length)
            writer.write(b"x" * sent)
            await writer.drain()
            await reader.read()  # until the sidecar gives up on us
            self.dropped += 1
            return False
        if path == b"/sse":
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            for i in range(8):
                event = b"data: beat %d\n\n" % i
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
                await asyncio.sleep(0.3)  # the upstream's own pace, under the timeout
            writer.write(b"0\r\n\r\n")
            return True
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True


@pytest.fixture
async def stalling(tmp_path: Path) -> AsyncIterator[tuple[Sidecar, StallingUpstream]]:
    async with (
        StallingUpstream() as up,
        running_sidecar(tmp_path, overrides=SETTINGS, upstream=up.pointing()) as sc,
    ):
        yield sc, up


def get(path: str) -> bytes:
    return request_bytes("GET", path, host=HOST)


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "sidecar.access"]


async def wait_for(condition: object, within: float) -> None:
    deadline = time.monotonic() + within
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_stalled_small_bodies_end_in_504_and_do_not_starve_the_pool(
    stalling: tuple[Sidecar, StallingUpstream], caplog: pytest.LogCaptureFixture
) -> None:
    sc, up = stalling
    caplog.set_level(logging.INFO, logger="sidecar.access")
    started = time.monotonic()
    # As many stalled requests as the pool has connections, all at once.
    answers = await asyncio.wait_for(
        asyncio.gather(*(raw_http(sc.proxy_port, get("/static/stall-small")) for _ in range(POOL))),
        TIMEOUT + 4,
    )
    took = time.monotonic() - started
    casebook.record("failure", tried=POOL, through=sum(a.status != 504 for a in answers))
    assert [a.status for a in answers] == [504] * POOL
    assert took < TIMEOUT + 3, took
    # The upstream saw every stalled connection dropped, and the pool serves again at once.
    await wait_for(lambda: up.dropped == POOL, 3)
    after = await asyncio.wait_for(raw_http(sc.proxy_port, get("/static/ok")), TIMEOUT + 2)
    assert after.status == 200
    assert after.body == b"ok"
    stalled = [line for line in access_lines(caplog) if line["path"] == "/static/stall-small"]
    assert [(line["status"], line.get("upstream_error")) for line in stalled] == [
        (504, "body_timeout")
    ] * POOL


async def test_a_stalled_stream_aborts_the_client_connection(
    stalling: tuple[Sidecar, StallingUpstream], caplog: pytest.LogCaptureFixture
) -> None:
    sc, up = stalling
    caplog.set_level(logging.INFO, logger="sidecar.access")
    started = time.monotonic()
    answer = await raw_http(sc.proxy_port, get("/static/stall-stream"), quiet=TIMEOUT + 4)
    took = time.monotonic() - started
    casebook.record("failure", through=int(took > TIMEOUT + 3))
    # The head and what arrived were relayed; then the connection was cut, not ended.
    assert answer.status == 200
    assert answer.header("Content-Length") == "200000"
    assert len(answer.body) < 200_000
    assert took < TIMEOUT + 3, took
    await wait_for(lambda: up.dropped == 1, 3)
    line = next(x for x in access_lines(caplog) if x["path"] == "/static/stall-stream")
    assert line["upstream_error"] == "body_timeout"


async def test_server_sent_events_that_keep_talking_are_not_cut(
    stalling: tuple[Sidecar, StallingUpstream],
) -> None:
    sc, _ = stalling
    started = time.monotonic()
    answer = await raw_http(sc.proxy_port, get("/static/sse"), quiet=TIMEOUT + 4)
    took = time.monotonic() - started
    assert took > 2 * TIMEOUT  # longer than the idle timeout, in all
    assert answer.status == 200
    events = parse_raw(answer.raw).body.count(b"data: beat")
    casebook.record("failure", through=int(events != 8))
    assert events == 8
