"""Listeners on an address are bound by the sidecar itself (:mod:`sidecar.web.sites`): the
same socket options as the loop's own binding, and no resolver thread pool in a served
process whose addresses are all literals."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from sidecar.web.sites import listener_site
from tests.conftest import skip_or_fail
from tests.harness.upstream import running_upstream
from tests.serve_process import running_serve


async def _ok(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


_HAVE_PROC = Path("/proc/self/task").is_dir()  # read once, at import


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


async def _get(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return await response.text()


async def test_an_address_is_bound_here_with_the_loops_socket_options() -> None:
    app = web.Application()
    app.router.add_get("/", _ok)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        first = listener_site(runner, "127.0.0.1", 0, reuse_port=True)
        assert isinstance(first, web.SockSite)
        await first.start()
        (host, port) = runner.addresses[0][:2]
        assert host == "127.0.0.1"
        assert await _get(f"http://127.0.0.1:{port}/") == "ok"
        # SO_REUSEPORT when asked (sidecar serve --workers): a second socket on the port.
        second = listener_site(runner, "127.0.0.1", port, reuse_port=True)
        await second.start()
        assert len(runner.addresses) == 2
        # Without it, the port is taken: the error is the bind's own.
        with pytest.raises(OSError, match="in use") as taken:
            listener_site(runner, "127.0.0.1", port, reuse_port=False)
        assert taken.value.errno == errno.EADDRINUSE
        # A name is the loop's to resolve, as before.
        assert isinstance(listener_site(runner, "localhost", 0, reuse_port=False), web.TCPSite)
    finally:
        await runner.cleanup()


async def test_an_ipv6_address_listens_on_ipv6_only() -> None:
    if not _ipv6_loopback():
        skip_or_fail("no IPv6 loopback on this machine")
    app = web.Application()
    app.router.add_get("/", _ok)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = listener_site(runner, "::", 0, reuse_port=False)
        await site.start()
        port = runner.addresses[0][1]
        assert await _get(f"http://[::1]:{port}/") == "ok"
        # IPV6_V6ONLY, as the loop sets it: the IPv4 side of the same port is still free.
        with socket.socket(socket.AF_INET) as v4:
            v4.bind(("127.0.0.1", port))
    finally:
        await runner.cleanup()


def _threads(pid: int) -> list[str]:
    names = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            names.append(Path(f"/proc/{pid}/task/{task}/comm").read_text().strip())
        except FileNotFoundError:
            continue  # ended meanwhile
    return names


async def test_a_served_process_on_addresses_starts_no_resolver_threads(tmp_path: Path) -> None:
    """``sidecar serve`` on uvloop, listening on 127.0.0.1 (admin, proxy) with an upstream
    at 127.0.0.1: nothing is resolved, so libuv's thread pool (four ``libuv-worker``
    threads, each with its stack and malloc arena) never starts, through a proxied request
    and its new upstream connection too."""
    if not _HAVE_PROC:
        skip_or_fail("needs /proc (Linux)")
    try:
        import uvloop  # noqa: F401
    except ImportError:
        skip_or_fail("the served process runs on uvloop when installed; uvloop is not")
    async with running_upstream() as upstream, running_serve(tmp_path, upstream.url) as served:
        assert served.proc.pid is not None
        async with aiohttp.ClientSession() as http:
            async with http.post(
                served.admin + "/referstring",
                json={"userId": "u-1"},
                headers=served.admin_headers(),
            ) as response:
                assert response.status == 200
                link = str((await response.json())["url"])
            async with http.get(link.partition("#")[0], allow_redirects=False) as response:
                assert response.status == 303
                cookies = "; ".join(f"{k}={m.value}" for k, m in response.cookies.items())
            headers = {"Cookie": cookies}
            async with http.get(served.proxy + "/app/x", headers=headers) as response:
                assert response.status == 200  # forwarded on a new upstream connection
            assert upstream.requests, "nothing reached the upstream"
        threads = _threads(served.proc.pid)
        assert "libuv-worker" not in threads, threads
