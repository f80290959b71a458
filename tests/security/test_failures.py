"""Failure: a store that is down fails closed (503, no session, nothing forwarded); an
upstream that is down or slow is a 502/504 page; both recover without a restart."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
import redis.asyncio
from aiohttp import web

from tests.conftest import RedisServer
from tests.harness import Sidecar, Upstream, raw_http, running_sidecar
from tests.security import casebook


async def freeze(server: RedisServer) -> int:
    """SIGSTOP the server (it keeps its sockets and data but answers nothing); its pid."""
    client = redis.asyncio.Redis.from_url(server.url)
    try:
        pid = int((await client.info("server"))["process_id"])
    finally:
        await client.aclose()
    os.kill(pid, signal.SIGSTOP)
    return pid


async def status_of(sc: Sidecar, method: str, url: str, **kwargs: object) -> int:
    async with sc.http.request(method, url, allow_redirects=False, **kwargs) as r:  # type: ignore[arg-type]
        await r.read()
        if r.status >= 400:
            assert sc.cookie_name not in r.cookies
        return r.status


async def store_down_statuses(sc: Sidecar, cookie: str, token: str) -> dict[str, int]:
    proxy, admin = sc.proxy_url, sc.admin_url
    session, key = sc.cookie_header(cookie), sc.admin_headers
    otp = {"type": "magiclink", "email": "a@example.org", "token": "123456"}
    token_hash = {"type": "magiclink", "token_hash": "a" * 43}
    mint = {"userId": "u"}
    return {
        "session request": await status_of(sc, "GET", proxy + "/app/x", headers=session),
        "redeem": await status_of(sc, "GET", proxy + "/", params={"refer": token}),
        "session json": await status_of(sc, "GET", proxy + "/_sidecar/session", headers=session),
        "logout": await status_of(sc, "POST", proxy + "/_sidecar/logout", headers=session),
        "otp": await status_of(sc, "POST", proxy + "/_sidecar/verify", json=otp),
        "token hash": await status_of(sc, "POST", proxy + "/_sidecar/verify", json=token_hash),
        "readyz": await status_of(sc, "GET", proxy + "/_sidecar/readyz"),
        "mint": await status_of(sc, "POST", admin + "/referstring", json=mint, headers=key),
        "revoke": await status_of(sc, "POST", admin + "/tokens/abc/revoke", headers=key),
        "admin healthz": await status_of(sc, "GET", admin + "/healthz", headers=key),
    }


@pytest.mark.redis
async def test_a_dead_store_fails_closed_and_recovers_without_a_restart(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with running_sidecar(tmp_path, store_url=redis_server.url) as sc:
        cookie = await sc.login(userId="alive")
        pending = await sc.mint(userId="pending")
        redis_server.stop()
        sc.clock.advance(sc.config.session.cache_ttl + 1)  # past the in-process session cache
        statuses = await store_down_statuses(sc, cookie, pending["referString"])
        async with sc.http.get(sc.proxy_url + "/_sidecar/healthz") as r:
            assert r.status == 200  # the process itself is alive
        through = {k: v for k, v in statuses.items() if v != 503}
        casebook.record("failure", tried=len(statuses), through=len(through))
        assert not through, statuses
        assert sc.upstream.requests == []

        redis_server.start()  # empty: the data died with it; the sidecar must reconnect
        assert await status_of(sc, "GET", sc.proxy_url + "/_sidecar/readyz") == 200
        fresh = await sc.login(userId="after")
        assert (
            await status_of(sc, "GET", sc.proxy_url + "/app/y", headers=sc.cookie_header(fresh))
            == 200
        )
        casebook.record("failure")


@pytest.mark.redis
@pytest.mark.slow
async def test_a_frozen_store_fails_closed_and_recovers_with_its_data(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with running_sidecar(tmp_path, store_url=redis_server.url) as sc:
        cookie = await sc.login(userId="alive")
        pending = await sc.mint(userId="pending")
        pid = await freeze(redis_server)
        sc.clock.advance(sc.config.session.cache_ttl + 1)
        try:
            session = await status_of(
                sc, "GET", sc.proxy_url + "/app/x", headers=sc.cookie_header(cookie)
            )
            redeem = await status_of(
                sc, "GET", sc.proxy_url + "/", params={"refer": pending["referString"]}
            )
        finally:
            os.kill(pid, signal.SIGCONT)
        casebook.record("failure", tried=2, through=int(session != 503) + int(redeem != 503))
        assert (session, redeem) == (503, 503)
        assert sc.upstream.requests == []
        # the same session and the same (unburned) link work once the store answers again
        assert (
            await status_of(sc, "GET", sc.proxy_url + "/app/x", headers=sc.cookie_header(cookie))
            == 200
        )
        assert await sc.redeem(pending["referString"])


async def test_a_dead_upstream_is_a_502_and_recovers_without_a_restart(sidecar: Sidecar) -> None:
    cookie = await sidecar.login()
    await sidecar.upstream.stop()
    async with sidecar.http.get(
        sidecar.proxy_url + "/app/x",
        headers={**sidecar.cookie_header(cookie), "Accept": "application/json"},
    ) as r:
        body = await r.json()
        casebook.record("failure", through=int(r.status != 502))
        assert r.status == 502
        assert body["error"] == "bad_gateway"
    async with sidecar.http.get(sidecar.proxy_url + "/_sidecar/healthz") as r:
        assert r.status == 200
    await sidecar.upstream.start()  # same port
    async with sidecar.http.get(
        sidecar.proxy_url + "/app/x", headers=sidecar.cookie_header(cookie)
    ) as r:
        assert r.status == 200


async def test_a_slow_upstream_is_a_504_and_the_sidecar_keeps_serving(tmp_path: Path) -> None:
    release = asyncio.Event()
    upstream = Upstream()

    async def stall(request: web.BaseRequest) -> web.StreamResponse:
        if request.path.startswith("/slow"):
            await release.wait()
        return web.json_response({"path": request.raw_path})

    upstream.respond = stall
    overrides: dict[str, object] = {"proxy": {"upstream_timeout": "300ms"}}
    async with running_sidecar(tmp_path, overrides=overrides, upstream=upstream) as sc:
        cookie = await sc.login()
        headers = sc.cookie_header(cookie)
        async with sc.http.get(sc.proxy_url + "/slow", headers=headers) as r:
            casebook.record("failure", through=int(r.status != 504))
            assert r.status == 504
        async with sc.http.get(sc.proxy_url + "/fast", headers=headers) as r:
            assert r.status == 200
        release.set()


async def test_an_upstream_speaking_garbage_is_a_502(tmp_path: Path) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"NOT HTTP AT ALL\r\n\r\n\x00\xff")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    overrides: dict[str, object] = {"proxy": {"upstream": f"http://127.0.0.1:{port}"}}
    try:
        async with running_sidecar(tmp_path, overrides=overrides) as sc:
            cookie = await sc.login()
            data = (
                f"GET /app HTTP/1.1\r\nHost: 127.0.0.1:{sc.proxy_port}\r\n"
                f"Cookie: {sc.cookie_name}={cookie}\r\nConnection: close\r\n\r\n"
            ).encode()
            resp = await raw_http(sc.proxy_port, data)
            casebook.record("failure", through=int(resp.status != 502))
            assert resp.status == 502
    finally:
        server.close()
        await server.wait_closed()
