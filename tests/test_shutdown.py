"""Graceful shutdown of a real ``sidecar serve`` process.

A slow upload is in flight through the proxy when SIGTERM arrives. The listener closes at
once (new connections are refused), the upload — whose second half is only sent after
that — still completes with 200 within ``shutdown.grace_period``, the process exits 0, and
the SQLite store was closed cleanly (WAL checkpointed and removed, integrity ok, the
session written before the signal is there).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp

from tests.harness import running_upstream
from tests.serve_process import Served, running_serve

CHUNK = b"u" * 64 * 1024
CHUNKS = 32  # 2 MiB, half before SIGTERM and half after
POLL_TIMEOUT = 10.0


async def refused(url: str) -> bool:
    """True once a new TCP connection to ``url``'s port is refused.

    A connection that is reset while it connects counts too: closing a listening socket resets
    the connections still waiting in its accept queue, so a poll that races the close sees
    ECONNRESET rather than ECONNREFUSED. Either way the port no longer takes connections.
    """
    host, port = url.removeprefix("http://").rsplit(":", 1)
    try:
        _, writer = await asyncio.open_connection(host, int(port))
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    writer.close()
    await writer.wait_closed()
    return False


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``check`` (a process or socket we do not control) until it holds."""
    async with asyncio.timeout(POLL_TIMEOUT):
        while True:
            if await check():
                return
            await asyncio.sleep(0.01)


def assert_store_closed_cleanly(db: Path, user: str) -> None:
    assert not Path(f"{db}-wal").exists(), "a clean close checkpoints and removes the WAL"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        users = [row[0] for row in conn.execute("SELECT user_id FROM sessions")]
    assert users == [user], "the session written before SIGTERM is durable"


async def login(http: aiohttp.ClientSession, served: Served) -> str:
    async with http.post(
        served.admin + "/referstring", json={"userId": "u-upload"}, headers=served.admin_headers()
    ) as response:
        assert response.status == 200
        url = (await response.json())["url"]
    async with http.get(url, allow_redirects=False) as response:
        assert response.status == 303
        return f"sidecar_session={response.cookies['sidecar_session'].value}"


async def test_sigterm_lets_a_slow_upload_finish_then_exits_cleanly(tmp_path: Path) -> None:
    second_half = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        for i in range(CHUNKS):
            if i == CHUNKS // 2:
                await second_half.wait()
            yield CHUNK

    async with (
        running_upstream() as upstream,
        running_serve(tmp_path, upstream.url, shutdown={"grace_period": "20s"}) as served,
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
    ):
        cookie = await login(http, served)
        upload = asyncio.create_task(
            http.post(
                served.proxy + "/_up/upload",
                data=body(),
                headers={"Cookie": cookie, "Content-Type": "application/octet-stream"},
            )
        )

        async def upload_started() -> bool:
            return bool(upstream.requests) and upstream.last.raw_path == "/_up/upload"

        await eventually(upload_started)

        served.proc.send_signal(signal.SIGTERM)
        await eventually(lambda: refused(served.proxy))
        assert await refused(served.admin)
        assert served.proc.returncode is None, "still running: the upload is in flight"
        assert not upload.done()

        second_half.set()
        async with asyncio.timeout(20):
            response = await upload
            assert response.status == 200
            answer = await response.json()
            response.release()
            code = await served.proc.wait()

    assert answer == {
        "size": CHUNKS * len(CHUNK),
        "sha256": hashlib.sha256(CHUNK * CHUNKS).hexdigest(),
    }
    assert code == 0
    logs = "\n".join(served.logs())
    assert "shutting down" in logs
    assert '"msg": "stopped"' in logs
    assert_store_closed_cleanly(served.db, "u-upload")


async def test_a_request_stuck_past_the_grace_period_is_cut_within_the_documented_bound(
    tmp_path: Path,
) -> None:
    """An upstream that never answers: SIGTERM → exit within grace_period + SHUTDOWN_OVERRUN."""
    from sidecar.app import SHUTDOWN_OVERRUN

    accepted: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # reads nothing, answers nothing

    grace = 1.0
    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with (
            running_serve(
                tmp_path, f"http://127.0.0.1:{port}", shutdown={"grace_period": "1s"}
            ) as served,
            aiohttp.ClientSession() as http,
        ):
            cookie = await login(http, served)
            stuck = asyncio.ensure_future(
                http.get(served.proxy + "/slow", headers={"Cookie": cookie})
            )
            await eventually(lambda: _true(bool(accepted)))
            loop = asyncio.get_running_loop()
            started = loop.time()
            served.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(grace + 10):
                code = await served.proc.wait()
            took = loop.time() - started
            with contextlib.suppress(aiohttp.ClientError):
                (await stuck).release()
    finally:
        server.close()
        for writer in accepted:
            writer.close()
    assert code == 0
    # The process start-up of the interpreter is not in this figure: only the shutdown.
    assert grace <= took <= grace + SHUTDOWN_OVERRUN + 0.5, took


async def _true(value: bool) -> bool:
    return value
