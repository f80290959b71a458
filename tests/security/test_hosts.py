"""Host poisoning (issue #12, item 6): a ``Host`` that is not the public one never reaches the
upstream, which would build links (password resets!) from it; it gets 421. The health
endpoints answer any Host (kubelet probes send the pod IP). A real Flask app that builds an
absolute link from ``Host`` is the counterpart that shows what was at stake.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.harness import Sidecar, raw_http, running_sidecar
from tests.security import casebook
from tests.security.frameworks import Framework, running_framework
from tests.security.test_real_upstreams import _External

FOREIGN = [
    "evil.example",
    "evil.example:443",
    "app.example.com.evil.example",
    "evil.example/app.example.com",
    "app.example.com.",
    "app.example.com@evil.example",
    "app.example.com evil.example",
    "app.example.com,evil.example",
    "[::1]",
    "10.0.0.1",
    "localhost",
    "app.example.co",
    "xn--pp-6ka.example.com",
    "",
]
OWN = ["app.example.com", "APP.Example.COM", "app.example.com:8443", "127.0.0.1"]


def _get(host_lines: str, path: str = "/app", cookie: str = "", extra: str = "") -> bytes:
    cookie_line = f"Cookie: {cookie}\r\n" if cookie else ""
    return (
        f"GET {path} HTTP/1.1\r\n{host_lines}{cookie_line}{extra}Connection: close\r\n\r\n"
    ).encode()


async def _send(sc: Sidecar, data: bytes) -> tuple[int, int]:
    """(status, how many requests the upstream saw)."""
    before = len(sc.upstream.requests)
    resp = await raw_http(sc.proxy_port, data)
    return resp.status, len(sc.upstream.requests) - before


async def test_a_foreign_host_is_misdirected(sidecar: Sidecar) -> None:
    cookie = f"{sidecar.cookie_name}={await sidecar.login(userId='user-1')}"
    through = []
    cases = [f"Host: {h}\r\n" for h in FOREIGN]
    cases += ["Host: app.example.com\r\nHost: evil.example\r\n"]
    for lines in cases:
        for path, with_cookie in (("/app", cookie), ("/static/x.css", ""), ("/app", "")):
            status, seen = await _send(sidecar, _get(lines, path, with_cookie))
            if status not in (400, 421) or seen:
                through.append((lines, path, status, seen))
    casebook.record("hosts", tried=3 * len(cases), through=len(through))
    assert through == []
    for host in OWN:
        status, seen = await _send(sidecar, _get(f"Host: {host}\r\n", cookie=cookie))
        assert (status, seen) == (200, 1), host


async def test_probes_answer_any_host(sidecar: Sidecar) -> None:
    for path in ("/_sidecar/healthz", "/_sidecar/readyz"):
        status, _ = await _send(sidecar, _get("Host: 10.244.3.7:8080\r\n", path))
        assert status == 200, path
    # ...but the sidecar's other pages do not.
    status, _ = await _send(sidecar, _get("Host: 10.244.3.7:8080\r\n", "/_sidecar/session"))
    assert status == 421


async def test_a_trusted_proxy_may_not_forward_a_foreign_host(tmp_path: Path) -> None:
    overrides: dict[str, object] = {"proxy": {"trusted_proxies": ["127.0.0.1/32"]}}
    async with running_sidecar(tmp_path, overrides=overrides) as sc:
        host = "Host: app.example.com\r\n"
        for forwarded in ("evil.example", "app.example.com, evil.example"):
            status, seen = await _send(sc, _get(host, extra=f"X-Forwarded-Host: {forwarded}\r\n"))
            casebook.record("hosts", through=int(status != 421 or seen != 0))
            assert (status, seen) == (421, 0)
        status, seen = await _send(sc, _get(host, extra="X-Forwarded-Host: app.example.com\r\n"))
        assert status in (200, 401)


async def test_allowed_hosts_extend_the_public_one(tmp_path: Path) -> None:
    overrides: dict[str, object] = {
        "proxy": {"allowed_hosts": ["127.0.0.1", "app.internal"], "unauthenticated": "pass"}
    }
    async with running_sidecar(tmp_path, overrides=overrides) as sc:
        assert (await _send(sc, _get("Host: app.internal:8080\r\n")))[0] == 200
        assert (await _send(sc, _get("Host: other.internal\r\n")))[0] == 421


@pytest.fixture
def flask_app() -> Iterator[Framework]:
    with running_framework("flask") as app:
        yield app


async def test_flask_never_builds_a_reset_link_for_a_foreign_host(
    tmp_path: Path, flask_app: Framework
) -> None:
    """Flask's ``url_for(..., _external=True)`` uses ``Host``: the password-reset link it
    would mail goes to whatever host the request named."""
    async with running_sidecar(tmp_path, upstream=_External(port=flask_app.port)) as sc:
        cookie = f"{sc.cookie_name}={await sc.login(userId='user-1')}"
        async with aiohttp.ClientSession() as http:
            for host, expected in (("evil.example", 421), ("app.example.com", 200)):
                async with http.get(
                    sc.proxy_url + "/reset-link", headers={"Host": host, "Cookie": cookie}
                ) as resp:
                    body = await resp.text()
                casebook.record("hosts", through=int("evil.example" in body))
                assert resp.status == expected, body
                assert "evil.example" not in body
        assert body == "http://app.example.com/reset?token=t"
