"""Forwarding over real sockets: streaming both ways, SSE, WebSockets, headers, 502/504."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from sidecar.proxy.websocket import MAX_MESSAGE
from tests.harness import (
    CHUNK,
    GZIP_TEXT,
    Sidecar,
    Upstream,
    make_config,
    raw_http,
    raw_request,
    running_sidecar,
)

MiB = 1024 * 1024
BIG = 200 * MiB
# Everything in flight at once (socket buffers, stream reader limits, the chunk being
# copied) is a few MiB; a body held whole would add BIG.
RSS_BUDGET = 48 * MiB


def rss() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.fixture
async def sidecar(tmp_path: Path, upstream: Upstream) -> AsyncIterator[Sidecar]:
    async with running_sidecar(
        tmp_path, config=make_config(tmp_path, upstream.url), upstream=upstream
    ) as sc:
        await sc.sign_in()
        yield sc


@pytest.mark.slow
async def test_large_download_streams_with_bounded_memory(sidecar: Sidecar) -> None:
    before = rss()
    peak = before
    total = 0
    chunks = 0
    async with sidecar.client.get(f"/_up/big?size={BIG}") as response:
        assert response.status == 200
        assert response.headers.get("Transfer-Encoding") == "chunked"
        async for chunk in response.content.iter_chunked(4 * CHUNK):
            total += len(chunk)
            chunks += 1
            if chunks % 64 == 0:
                peak = max(peak, rss())
    assert total == BIG
    assert peak - before < RSS_BUDGET, f"RSS grew by {(peak - before) / MiB:.0f} MiB"


async def test_download_with_content_length_keeps_it(sidecar: Sidecar) -> None:
    size = 3 * MiB + 7
    async with sidecar.client.get(f"/_up/big?size={size}&length=1") as response:
        assert response.headers["Content-Length"] == str(size)
        assert "Transfer-Encoding" not in response.headers
        assert len(await response.read()) == size


@pytest.mark.slow
async def test_large_upload_streams_with_bounded_memory(
    sidecar: Sidecar, upstream: Upstream
) -> None:
    digest = hashlib.sha256()
    block = bytes(range(256)) * (CHUNK // 256)
    peak = before = rss()

    async def body() -> AsyncIterator[bytes]:
        nonlocal peak
        for i in range(BIG // CHUNK):
            digest.update(block)
            if i % 256 == 0:
                peak = max(peak, rss())
            yield block

    response = await sidecar.client.post("/_up/upload", data=body())
    assert response.status == 200
    assert await response.json() == {"size": BIG, "sha256": digest.hexdigest()}
    assert peak - before < RSS_BUDGET, f"RSS grew by {(peak - before) / MiB:.0f} MiB"
    assert upstream.last.values("Transfer-Encoding") == ["chunked"]


async def test_small_body_with_content_length_is_forwarded_intact(
    sidecar: Sidecar, upstream: Upstream
) -> None:
    payload = json.dumps({"x": "ü" * 100}).encode()
    response = await sidecar.client.put(
        "/api/things/1", data=payload, headers={"Content-Type": "application/json"}
    )
    assert response.status == 200
    seen = upstream.last
    assert (seen.method, seen.body) == ("PUT", payload)
    assert seen.values("Content-Length") == [str(len(payload))]
    assert seen.values("Content-Type") == ["application/json"]


async def test_server_sent_events_arrive_one_by_one(sidecar: Sidecar, upstream: Upstream) -> None:
    async with sidecar.client.get("/_up/sse") as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        for i in range(3):
            # The upstream sends event i only now; it must come through before event i+1 exists.
            await upstream.sse_release.put(f"event-{i}")
            async with asyncio.timeout(5):
                line = await response.content.readuntil(b"\n\n")
            assert line == f"data: event-{i}\n\n".encode()
        await upstream.sse_release.put("")


async def test_websocket_round_trip_with_identity(sidecar: Sidecar, upstream: Upstream) -> None:
    async with sidecar.client.ws_connect(
        "/_up/ws",
        protocols=("chat.v1",),
        headers={"X-Forwarded-User": "spoof", "x_forwarded_role": "Admin"},
    ) as ws:
        assert ws.protocol == "chat.v1"
        handshake = {n.lower(): v for n, v in json.loads((await ws.receive()).data)}
        assert handshake["x-forwarded-user"] == "u1"
        assert handshake["x-forwarded-role"] == "Authenticated"
        assert "x_forwarded_role" not in handshake
        assert "sidecar_session" not in handshake.get("cookie", "")
        await ws.send_str("hello")
        assert (await ws.receive()).data == "echo:hello"
        await ws.send_bytes(b"\x01\x02\x03")
        assert (await ws.receive()).data == b"\x03\x02\x01"
    assert len(upstream.ws_headers) == 1


async def test_websocket_messages_over_the_cap_close_the_socket(sidecar: Sidecar) -> None:
    async with sidecar.client.ws_connect("/_up/ws", max_msg_size=0) as ws:
        await ws.receive()  # the upstream's handshake echo
        with contextlib.suppress(ConnectionError):  # the sidecar may cut us off mid-send
            await ws.send_bytes(b"x" * (MAX_MESSAGE + 1))
        answer = await ws.receive()
        # Relayed, the upstream would echo it back as a BINARY message.
        assert answer.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.ERROR,
        )
        # 1009 when the close frame arrives before the reset, 1006 when it does not.
        assert ws.close_code in (
            aiohttp.WSCloseCode.MESSAGE_TOO_BIG,
            aiohttp.WSCloseCode.ABNORMAL_CLOSURE,
            None,
        )


async def test_a_malformed_websocket_handshake_opens_nothing_upstream(
    sidecar: Sidecar, upstream: Upstream
) -> None:
    response = await raw_request(
        sidecar.proxy_port,
        "GET",
        "/_up/ws",
        f"Cookie: sidecar_session={sidecar.jar_cookie()}\r\n"
        "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13",  # no key
    )
    assert response.status == 400
    assert upstream.ws_headers == []


async def test_a_websocket_ends_with_its_session(tmp_path: Path, upstream: Upstream) -> None:
    config = make_config(
        tmp_path, upstream.url, session={"cookie_secure": False, "cache_ttl": "100ms"}
    )
    async with running_sidecar(tmp_path, config=config, upstream=upstream) as sc:
        await sc.sign_in()
        async with sc.client.ws_connect("/_up/ws") as ws:
            await ws.receive()  # the upstream's handshake echo
            await ws.send_str("still here")
            assert (await ws.receive()).data == "echo:still here"
            logout = await sc.client.post("/_sidecar/logout", allow_redirects=False)
            assert logout.status == 303
            async with asyncio.timeout(5):  # checked every cache_ttl (100 ms here)
                closed = await ws.receive()
            assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION


async def test_websocket_refused_without_session(sidecar: Sidecar, upstream: Upstream) -> None:
    sidecar.client.cookie_jar.clear()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await sidecar.client.ws_connect("/_up/ws")
    assert refused.value.status == 401
    assert upstream.ws_headers == []


async def test_upstream_down_is_502_and_sidecar_keeps_serving(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = make_config(tmp_path, f"http://127.0.0.1:{port}", {"unauthenticated": "pass"})
    async with running_sidecar(tmp_path, config=config) as sc:
        for _ in range(2):
            response = await sc.client.get("/x", headers={"Accept": "application/json"})
            assert response.status == 502
            assert (await response.json())["error"] == "bad_gateway"
        assert (await sc.client.get("/_sidecar/healthz")).status == 200


async def test_slow_upstream_is_504_and_sidecar_keeps_serving(
    tmp_path: Path, upstream: Upstream
) -> None:
    config = make_config(
        tmp_path, upstream.url, {"upstream_timeout": "100ms", "unauthenticated": "pass"}
    )
    async with running_sidecar(tmp_path, config=config, upstream=upstream) as sc:
        slow = await sc.client.get("/_up/slow")
        assert slow.status == 504
        assert "too long" in await slow.text()
        assert (await sc.client.get("/fast")).status == 200


async def test_truncated_upstream_body_is_not_passed_off_as_complete(sidecar: Sidecar) -> None:
    with pytest.raises(aiohttp.ClientPayloadError):
        async with sidecar.client.get("/_up/truncated") as response:
            await response.read()
    assert (await sidecar.client.get("/after")).status == 200


async def test_hop_by_hop_headers_dropped_both_ways(sidecar: Sidecar, upstream: Upstream) -> None:
    response = await sidecar.client.get(
        "/p",
        headers={
            "Connection": "keep-alive, X-Drop-Me",
            "X-Drop-Me": "1",
            "Keep-Alive": "timeout=5",
            "Proxy-Connection": "keep-alive",
            "TE": "trailers",
            "Trailer": "X-Sum",
            "Expect": "",
            "X-Stays": "1",
        },
    )
    assert response.status == 200
    names = upstream.last.header_names()
    for gone in ("x-drop-me", "keep-alive", "proxy-connection", "te", "trailer", "expect"):
        assert gone not in names
    assert upstream.last.values("X-Stays") == ["1"]
    hop = await sidecar.client.get("/_up/hop")
    for gone in ("X-Private", "Keep-Alive", "Trailer", "Proxy-Connection"):
        assert gone not in hop.headers
    assert hop.headers["X-Kept"] == "1"


async def test_nothing_added_and_encoding_passed_through(
    sidecar: Sidecar, upstream: Upstream
) -> None:
    session_cookie = f"Cookie: sidecar_session={sidecar.jar_cookie()}"
    await raw_request(sidecar.proxy_port, "GET", "/plain?q=%2F%20", session_cookie)
    seen = upstream.last
    assert seen.raw_path == "/plain?q=%2F%20"
    assert [
        n for n in seen.header_names() if n in ("user-agent", "accept", "accept-encoding")
    ] == []
    assert seen.values("Host") == ["app.test"]
    zipped = await raw_request(
        sidecar.proxy_port, "GET", "/_up/gzip", session_cookie, "Accept-Encoding: gzip"
    )
    assert zipped.header("Content-Encoding") == "gzip"
    assert zipped.body == gzip.compress(GZIP_TEXT, mtime=0)


async def test_upstream_cannot_set_the_sidecar_cookie(sidecar: Sidecar) -> None:
    response = await sidecar.client.get("/_up/cookie")
    assert response.headers.getall("Set-Cookie") == ["app=1; Path=/"]
    assert (await sidecar.client.get("/_sidecar/session")).status == 200


async def test_head_keeps_content_length(sidecar: Sidecar) -> None:
    response = await raw_request(
        sidecar.proxy_port,
        "HEAD",
        f"/_up/big?size={5 * MiB}&length=1",
        f"Cookie: sidecar_session={sidecar.jar_cookie()}",
    )
    assert response.status == 200
    assert response.header("Content-Length") == str(5 * MiB)
    assert response.body == b""


async def test_unusual_transfer_coding_is_refused_and_the_connection_closed(
    sidecar: Sidecar, upstream: Upstream
) -> None:
    value = sidecar.jar_cookie()
    smuggled = f"GET /smuggled HTTP/1.1\r\nHost: app.test\r\nCookie: sidecar_session={value}\r\n"
    response = await raw_http(
        sidecar.proxy_port,
        (
            f"POST /p HTTP/1.1\r\nHost: app.test\r\nCookie: sidecar_session={value}\r\n"
            f"Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n{smuggled}\r\n"
        ).encode(),
    )
    assert response.status == 400
    assert b"HTTP/1.1" not in response.body  # one answer only: the connection closed
    assert upstream.requests == []


async def test_upstream_answering_before_the_upload_ends(sidecar: Sidecar) -> None:
    block = b"u" * CHUNK

    async def body() -> AsyncIterator[bytes]:
        for _ in range(128):
            yield block

    try:
        response = await sidecar.client.post("/_up/reject", data=body())
    except aiohttp.ClientError:
        pass  # the sidecar may close the connection while the client still sends
    else:
        assert response.status == 413
    assert (await sidecar.client.get("/after")).status == 200
