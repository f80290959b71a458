"""A WebSocket peer that goes silent (a dropped phone, a NAT that forgot the flow, a client
that stops reading) is found by the relay's pings and its sockets are closed: the relayed
upstream socket is not held until the session expires (hours or days).

In-process with a short ping interval (``sidecar.proxy.websocket.HEARTBEAT`` is a module
constant); the client is a raw socket that completes the handshake, then never answers.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from sidecar.proxy import websocket
from tests.harness import Sidecar
from tests.security import casebook

PING_EVERY = 0.4


async def test_a_silent_websocket_client_is_dropped_and_frees_the_upstream_socket(
    sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(websocket, "HEARTBEAT", PING_EVERY)
    cookie = await sidecar.login()
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.proxy_port)
    writer.write(
        (
            f"GET /_up/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {sidecar.cookie_name}={cookie}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101"), head
    started = time.monotonic()
    closed = False
    try:
        # Read (and never answer) the pings until the sidecar gives up on us.
        while time.monotonic() - started < 20 * PING_EVERY:
            chunk = await asyncio.wait_for(reader.read(4096), 20 * PING_EVERY)
            if not chunk:
                closed = True
                break
    except TimeoutError:
        pass
    finally:
        writer.close()
    casebook.record("connections", through=int(not closed))
    assert closed, f"still open {time.monotonic() - started:.1f} s after the handshake"
