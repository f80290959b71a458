"""Clients that hold connections: slowloris heads, idle keep-alives, a flood of connections.

Raw sockets against a real sidecar (``proxy.request_head_timeout`` 500 ms,
``proxy.keepalive_timeout`` 1 s, ``proxy.max_client_connections`` 4). The slow client's own
pace is simulated with sleeps (that is the attack); everything the test waits for is
bounded by a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.harness import PUBLIC_URL, Sidecar, parse_raw, running_sidecar
from tests.security import casebook

HOST = PUBLIC_URL.removeprefix("https://")
HEAD_TIMEOUT = 0.5
KEEPALIVE = 1.0
CAP = 4
LIMITS: dict[str, object] = {
    "proxy": {
        "request_head_timeout": "500ms",
        "keepalive_timeout": "1s",
        "max_client_connections": CAP,
    }
}


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[Sidecar]:
    async with running_sidecar(tmp_path, overrides=LIMITS) as sc:
        yield sc


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(sc: Sidecar) -> Conn:
    return await asyncio.open_connection("127.0.0.1", sc.proxy_port)


async def until_closed(reader: asyncio.StreamReader, within: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes; and when it closed (or ``inf``)."""
    started = time.monotonic()
    data = b""
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(within):
            while chunk := await reader.read(65536):
                data += chunk
            return data, time.monotonic() - started
    return data, float("inf")


def close(writer: asyncio.StreamWriter) -> None:
    writer.close()


def health() -> bytes:
    return f"GET /_sidecar/healthz HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


async def one_answer(reader: asyncio.StreamReader) -> bytes:
    """One response with a Content-Length, read off a keep-alive connection."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head + await asyncio.wait_for(reader.readexactly(length), 5)


async def test_a_slowloris_head_gets_408_and_is_closed(guarded: Sidecar) -> None:
    reader, writer = await connect(guarded)
    writer.write(f"GET /app/x HTTP/1.1\r\nHost: {HOST}\r\n".encode())

    async def trickle() -> None:  # one more header line every 100 ms, never the blank line
        with contextlib.suppress(ConnectionError):
            for i in range(100):
                await asyncio.sleep(0.1)
                writer.write(f"X-Slow-{i}: 1\r\n".encode())
                await writer.drain()

    dribbler = asyncio.create_task(trickle())
    try:
        data, closed_after = await until_closed(reader, 5.0)
    finally:
        dribbler.cancel()
        close(writer)
    casebook.record("connections", through=int(closed_after > HEAD_TIMEOUT + 1.5))
    assert closed_after < HEAD_TIMEOUT + 1.5, (closed_after, data[:100])
    answer = parse_raw(data)
    assert answer.status == 408, data[:200]
    assert answer.header("Connection") == "close"
    assert answer.header("Server") is None
    assert guarded.upstream.requests == []


async def test_a_head_sent_in_time_is_answered_and_a_slow_body_is_not_a_slow_head(
    guarded: Sidecar,
) -> None:
    reader, writer = await connect(guarded)
    try:
        body = b"0123456789"
        writer.write(
            f"POST /static/upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 10\r\n\r\n".encode()
            + body[:5]
        )
        await asyncio.sleep(HEAD_TIMEOUT * 2)  # the body is late; the head was not
        writer.write(body[5:])
        answer = await one_answer(reader)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
        assert guarded.upstream.requests[-1].body == body
        # A second head on the same connection, in time, is served too.
        writer.write(health())
        assert (await one_answer(reader)).startswith(b"HTTP/1.1 200")
    finally:
        close(writer)
    casebook.record("connections", tried=2)


async def test_an_idle_keep_alive_connection_is_closed_after_keepalive_timeout(
    guarded: Sidecar,
) -> None:
    reader, writer = await connect(guarded)
    try:
        writer.write(health())
        assert (await one_answer(reader)).startswith(b"HTTP/1.1 200")
        data, closed_after = await until_closed(reader, KEEPALIVE + 5)
    finally:
        close(writer)
    casebook.record("connections", through=int(closed_after > KEEPALIVE + 2))
    assert data == b""  # closed, not answered: no request was pending
    assert KEEPALIVE - 0.2 < closed_after < KEEPALIVE + 2, closed_after


async def test_a_silent_connection_is_closed_after_keepalive_timeout(guarded: Sidecar) -> None:
    reader, writer = await connect(guarded)
    try:
        data, closed_after = await until_closed(reader, KEEPALIVE + 5)
    finally:
        close(writer)
    casebook.record("connections", through=int(closed_after > KEEPALIVE + 2))
    assert data == b""
    assert closed_after < KEEPALIVE + 2, closed_after


async def test_connections_over_the_cap_get_503_not_a_file_descriptor(guarded: Sidecar) -> None:
    held: list[Conn] = []
    try:
        for _ in range(CAP):
            reader, writer = await connect(guarded)
            held.append((reader, writer))
            writer.write(health())
            assert (await one_answer(reader)).startswith(b"HTTP/1.1 200")
        tried = through = 0
        for _ in range(5):  # every extra connection, while the cap is reached
            reader, writer = await connect(guarded)
            writer.write(health())
            data, closed_after = await until_closed(reader, 3.0)
            close(writer)
            tried += 1
            answer = parse_raw(data)
            through += int(answer.status != 503)
            assert answer.status == 503, data[:200]
            assert answer.header("Retry-After") == "1"
            assert answer.header("Content-Type") == "application/json"
            assert closed_after < 1.0
        casebook.record("connections", tried=tried, through=through)
        # One held connection ends; a new one is served again.
        close(held.pop()[1])
        deadline = time.monotonic() + 5
        while True:
            reader, writer = await connect(guarded)
            writer.write(health())
            try:
                answer_bytes = await one_answer(reader)
            except (asyncio.IncompleteReadError, TimeoutError):
                answer_bytes = b""
            close(writer)
            if answer_bytes.startswith(b"HTTP/1.1 200"):
                break
            assert time.monotonic() < deadline, "the freed connection slot was not reused"
            await asyncio.sleep(0.02)
    finally:
        for _, writer in held:
            close(writer)
