"""A client that stops reading a streamed answer does not hold the upstream for ever.

An upstream streams a large body as fast as it may; the client reads the head and then
nothing. The sidecar's writes block once the socket buffers are full; after
``proxy.send_timeout`` (1 s here) the client is cut off, the upstream connection dropped,
and the only pool slot serves the next request at once.
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
    raw_http,
    request_bytes,
    request_path,
    running_sidecar,
)
from tests.security import casebook

HOST = PUBLIC_URL.removeprefix("https://")
CHUNK = b"z" * 65536
SETTINGS: dict[str, object] = {"proxy": {"send_timeout": "1s", "max_connections": 1}}


class FloodingUpstream(RawUpstream):
    """``/static/flood``: an endless chunked body; anything else a small 200. Counts the
    flood connections that ended (the sidecar dropped them)."""

    def __init__(self) -> None:
        super().__init__(self._flood)
        self.ended = 0

    async def _flood(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if request_path(head) == b"/static/flood":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            try:
                while True:
                    writer.write(b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK))
                    await writer.drain()
            finally:
                self.ended += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True


@pytest.fixture
async def flooding(tmp_path: Path) -> AsyncIterator[tuple[Sidecar, FloodingUpstream]]:
    async with (
        FloodingUpstream() as up,
        running_sidecar(tmp_path, overrides=SETTINGS, upstream=up.pointing()) as sc,
    ):
        yield sc, up


async def test_a_client_that_stops_reading_is_cut_off_and_frees_the_upstream(
    flooding: tuple[Sidecar, FloodingUpstream], caplog: pytest.LogCaptureFixture
) -> None:
    sc, up = flooding
    caplog.set_level(logging.INFO, logger="sidecar.access")
    reader, writer = await asyncio.open_connection("127.0.0.1", sc.proxy_port)
    writer.write(f"GET /static/flood HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    started = time.monotonic()  # from here on this client reads nothing
    deadline = started + 10
    while up.ended == 0:
        assert time.monotonic() < deadline, "the stalled reader still holds the upstream"
        await asyncio.sleep(0.05)
    took = time.monotonic() - started
    # The one pool slot is free: another client is served at once.
    after = await asyncio.wait_for(
        raw_http(sc.proxy_port, request_bytes("GET", "/static/ok", host=HOST)), 5
    )
    writer.close()
    casebook.record("failure", through=int(after.status != 200))
    assert after.status == 200
    assert took < 8, took
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "sidecar.access"]
    flood = next(x for x in lines if x["path"] == "/static/flood")
    assert flood["upstream_error"] == "client_send_timeout"
