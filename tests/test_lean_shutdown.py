"""Graceful shutdown of a real ``sidecar serve`` process while the lean front is judging.

A request whose session is not in the process's cache waits for the store before the lean
front decides anything (sidecar.proxy.express). SIGTERM arrives while it waits — here the
store is a real redis-server held with SIGSTOP. The drain must wait for that request as it
waits for one in aiohttp's handler: once the store answers (within its 2 s call timeout),
the request is forwarded and answered 200, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import RedisServer
from tests.harness import raw_http, running_upstream
from tests.serve_process import running_serve
from tests.test_shutdown import eventually, login, refused


@pytest.mark.parametrize("lean_front", [True, False], ids=["lean", "aiohttp"])
async def test_sigterm_waits_for_a_request_whose_session_the_store_is_looking_up(
    tmp_path: Path, redis_server: RedisServer, lean_front: bool
) -> None:
    async with (
        running_upstream() as upstream,
        running_serve(
            tmp_path,
            upstream.url,
            store={"url": redis_server.url},
            env={**os.environ, "SIDECAR_PROXY__LEAN_FRONT": str(lean_front).lower()},
            # A session is cached for a millisecond: every request asks the store.
            session={"cookie_secure": False, "cache_ttl": "1ms"},
            shutdown={"grace_period": "10s"},
        ) as served,
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
    ):
        cookie = await login(http, served)
        port = int(served.proxy.rsplit(":", 1)[1])
        request = (
            f"GET /app/judged HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        os.kill(redis_server.pid, signal.SIGSTOP)
        try:
            answer = asyncio.create_task(raw_http(port, request, quiet=8.0))
            await asyncio.sleep(0.3)  # the request reaches the session lookup, which waits
            served.proc.send_signal(signal.SIGTERM)
            await eventually(lambda: refused(served.proxy))
            # Longer than the shutdown's last wait for handlers (sidecar.app._CANCEL_WAIT):
            # only the drain keeps the request alive now.
            await asyncio.sleep(0.6)
            assert not answer.done()
        finally:
            os.kill(redis_server.pid, signal.SIGCONT)
        response = await answer
        code = await asyncio.wait_for(served.proc.wait(), 10)
    assert response.status == 200, response.raw[:300]
    assert upstream.last.raw_path == "/app/judged"
    assert code == 0


@pytest.mark.parametrize("lean_front", [True, False], ids=["lean", "aiohttp"])
async def test_sigterm_waits_for_a_redemption_whose_burn_the_store_holds(
    tmp_path: Path, redis_server: RedisServer, lean_front: bool
) -> None:
    """A refer link's burn is sent when SIGTERM arrives and the store is held: the drain
    waits for it, and once the store answers the browser gets its 303 and cookie (the burn
    landed: the link is used), then the process exits 0."""
    async with (
        running_upstream() as upstream,
        running_serve(
            tmp_path,
            upstream.url,
            store={"url": redis_server.url},
            env={**os.environ, "SIDECAR_PROXY__LEAN_FRONT": str(lean_front).lower()},
            shutdown={"grace_period": "10s"},
        ) as served,
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
    ):
        async with http.post(
            served.admin + "/referstring", json={"userId": "u-term"}, headers=served.admin_headers()
        ) as minted:
            token = (await minted.json())["referString"]
        port = int(served.proxy.rsplit(":", 1)[1])
        request = (
            f"GET /app/landing?refer={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        os.kill(redis_server.pid, signal.SIGSTOP)
        try:
            answer = asyncio.create_task(raw_http(port, request, quiet=8.0))
            await asyncio.sleep(0.3)  # the redemption reaches its burn, which waits
            served.proc.send_signal(signal.SIGTERM)
            await eventually(lambda: refused(served.proxy))
            await asyncio.sleep(0.6)  # past the shutdown's last wait for handlers
            assert not answer.done()
        finally:
            os.kill(redis_server.pid, signal.SIGCONT)
        response = await answer
        code = await asyncio.wait_for(served.proc.wait(), 10)
    assert (response.status, response.header("Location")) == (303, "/app/landing"), response.raw
    assert response.header("Set-Cookie") is not None
    assert code == 0
