"""``sidecar demo``: a real process, its printed links followed over real sockets.

A newcomer runs ``sidecar demo`` and clicks what it prints; these tests do the same with an
HTTP client (the browser version is tests/browser/test_browser.py), run the printed ``curl``
command, and stop the demo with SIGTERM and Ctrl-C (SIGINT): exit 0, temp dir removed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import signal
import socket
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from sidecar.config import load_config
from sidecar.demo import Ports, demo_config, write_state
from tests.demo_process import ROOT, START_TIMEOUT, Demo, running_demo, stop_demo


@pytest.fixture
def demo() -> Iterator[Demo]:
    with running_demo() as running:
        yield running


async def stop(demo: Demo, sig: signal.Signals) -> str:
    code, rest = await asyncio.to_thread(stop_demo, demo, sig)
    assert code == 0
    return rest


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # No cookie jar: each test carries the session cookie by hand, like a fresh browser.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


async def redeem(http: aiohttp.ClientSession, link: str, method: str = "GET") -> tuple[int, str]:
    """Open ``link`` without following the redirect; (status, Location) — cookie checked."""
    async with http.request(method, link, allow_redirects=False) as response:
        return response.status, response.headers.get("Location", "")


async def login(http: aiohttp.ClientSession, link: str, method: str = "GET") -> str:
    """Redeem ``link`` and return the session cookie ``name=value``."""
    async with http.request(method, link, allow_redirects=False) as response:
        assert response.status == 303, await response.text()
        cookie = response.headers["Set-Cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=Lax" in cookie
        assert "Secure" not in cookie, "the demo is plain http: cookie_secure is false"
        return cookie.split(";", 1)[0]


async def whoami(http: aiohttp.ClientSession, base: str, cookie: str | None) -> dict[str, object]:
    headers = {"Accept": "application/json", **({"Cookie": cookie} if cookie else {})}
    async with http.get(base + "/api/whoami", headers=headers) as response:
        assert response.status == 200, await response.text()
        answer = await response.json()
        assert isinstance(answer, dict)
        return answer


async def test_links_work_as_printed(demo: Demo, http: aiohttp.ClientSession) -> None:
    assert demo.one_time.startswith(demo.proxy + "/?refer=")
    assert demo.one_time.endswith("/#/display/orders")
    assert demo.banner.rstrip().splitlines()[-1].strip() == demo.confirm, "links come last"
    assert demo.state.is_dir()
    config_text = (demo.state / "sidecar.yaml").read_text(encoding="utf-8")
    assert "redeem: confirm" in config_text
    assert "redeem: direct" in config_text

    status, _ = await redeem(http, demo.one_time, "HEAD")
    assert status == 200, "HEAD (a link preview) answers without using the link"
    cookie = await login(http, demo.one_time)
    alice = await whoami(http, demo.proxy, cookie)
    assert (alice["user"], alice["role"], alice["tenant"]) == ("alice", "Viewer", "acme")
    headers = alice["headers"]
    assert isinstance(headers, dict)
    assert headers["X-Forwarded-Module"] == "orders"
    assert alice["cookies"] == [], "the sidecar's cookie is never passed to the app"
    async with http.get(demo.proxy + "/", headers={"Cookie": cookie}) as response:
        assert response.status == 200
        assert "Legacy demo app" in await response.text()

    assert (await redeem(http, demo.one_time))[0] == 410, "a one-time link works once"
    async with http.get(demo.proxy + "/api/whoami") as response:
        assert response.status == 401, "no cookie, no identity"
    nobody = await whoami(http, demo.app, None)
    assert nobody["user"] is None, "the app alone knows no one"

    for _ in range(2):
        bob = await whoami(http, demo.proxy, await login(http, demo.reusable))
        assert bob["user"] == "bob"

    async with http.get(demo.confirm, allow_redirects=False) as response:
        assert response.status == 200
        assert "Set-Cookie" not in response.headers
        assert '<form method="post">' in await response.text()
    carol = await whoami(http, demo.proxy, await login(http, demo.confirm, "POST"))
    assert (carol["user"], carol["role"]) == ("carol", "Approver")
    assert (await redeem(http, demo.confirm, "POST"))[0] == 410

    # Nothing was printed after the links while they were used: the request and audit
    # logs went to the state directory's sidecar.log, so the links stay on screen.
    log = (demo.state / "sidecar.log").read_text(encoding="utf-8")
    assert '"event": "redeem"' in log
    assert '"event": "access"' in log
    rest = await stop(demo, signal.SIGTERM)
    assert rest.strip().splitlines() == [
        "sidecar demo: stopped; the temporary keys and database are gone."
    ]
    assert not demo.state.exists(), "the throw-away keys and database are removed"


async def test_printed_curl_mints_another_link(demo: Demo, http: aiohttp.ClientSession) -> None:
    argv = shlex.split(demo.curl)
    assert argv[:3] == ["curl", "-s", argv[2]]
    assert argv[2].startswith("http://127.0.0.1:")
    assert argv[2].endswith("/referstring")
    if shutil.which("curl") is not None:
        run = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
        out, _ = await run.communicate()
        assert run.returncode == 0
    else:  # the same request, made without curl
        headers = dict(h.split(": ", 1) for h in argv[argv.index("-H") :: 2][:2])
        body = argv[argv.index("-d") + 1].encode()
        request = urllib.request.Request(argv[2], data=body, headers=headers, method="POST")  # noqa: S310
        out = await asyncio.to_thread(lambda: urllib.request.urlopen(request).read())  # noqa: S310
    minted = json.loads(out)
    assert minted["url"].endswith("/#/display/orders")
    dave = await whoami(http, demo.proxy, await login(http, minted["url"]))
    assert dave["user"] == "dave"
    await stop(demo, signal.SIGTERM)


async def test_verbose_sends_the_logs_to_the_terminal(http: aiohttp.ClientSession) -> None:
    with running_demo("--verbose") as demo:
        assert "  logs      stderr" in demo.banner
        await login(http, demo.reusable)
        rest = await stop(demo, signal.SIGTERM)
    assert '"event": "redeem"' in rest


async def test_ctrl_c_stops_cleanly(demo: Demo) -> None:
    rest = await stop(demo, signal.SIGINT)
    assert "stopped" in rest
    assert not demo.state.exists()


async def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sidecar",
            "demo",
            "--port",
            str(port),
            "--admin-port",
            "0",
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(START_TIMEOUT):
            out, err = await proc.communicate()
    assert proc.returncode == 1
    assert f"127.0.0.1:{port}" in err.decode()
    assert "--port" in err.decode()
    assert "Traceback" not in err.decode()
    assert b"refer=" not in out


def test_demo_config_goes_through_the_normal_loader(tmp_path: Path) -> None:
    ports = Ports(proxy=18080, admin=19091, app=13000)
    config_path, admin_key = write_state(tmp_path, ports)
    text = config_path.read_text(encoding="utf-8")
    assert text.count("redeem:") == 2
    assert "&id" not in text, "no YAML anchors for a reader to decode"
    assert "*id" not in text
    assert text.count("X-Forwarded-User:") == 2, "each role's headers written in full"
    assert oct(os.stat(tmp_path / "keyset.json").st_mode & 0o777) == "0o600"
    config = load_config(config_path, env={})
    assert config.admin.key.reveal() == admin_key
    assert admin_key not in config_path.read_text(encoding="utf-8")
    assert str(config.admin.listen) == "127.0.0.1:19091"
    assert config.proxy.upstream == "http://127.0.0.1:13000"
    assert config.session.cookie_secure is False
    assert {r.name: r.redeem for r in config.roles.values()} == {
        "Viewer": "direct",
        "Approver": "confirm",
    }
    assert config.store.url == f"sqlite:///{tmp_path}/sidecar.db"
    assert demo_config(tmp_path, ports)["public_url"] == "http://127.0.0.1:18080"
