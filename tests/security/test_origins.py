"""Origins, tried as raw requests (issue #12, items 7 and 8; tests/browser/test_origins.py
tries the same from a real page in Chromium).

* A WebSocket upgrade whose ``Origin`` is not the public origin (or ``proxy.allowed_origins``)
  is a 403 and never reaches the upstream, cookie or not.
* ``POST <prefix>/logout`` from another origin is a 403 and the session lives on.
"""

from __future__ import annotations

from pathlib import Path

from tests.harness import Sidecar, raw_http, running_sidecar
from tests.security import casebook

FOREIGN_ORIGINS = [
    "https://evil.example",
    "null",
    "http://app.example.com",  # the public origin is https
    "https://app.example.com:444",
    "https://app.example.com.evil.example",
    "https://evil.app.example.com",
    "https://app.example.com@evil.example",
    "https://app.example.com/",  # not an origin serialisation... but the same one
    "",
    "*",
]
OWN_ORIGINS = ["https://app.example.com", "https://APP.example.com", "https://app.example.com:443"]


def _upgrade(sc: Sidecar, cookie: str, origin: str | None) -> bytes:
    origin_line = f"Origin: {origin}\r\n" if origin is not None else ""
    return (
        f"GET /socket HTTP/1.1\r\nHost: app.example.com\r\nCookie: {sc.cookie_name}={cookie}\r\n"
        f"{origin_line}Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def _try_upgrade(sc: Sidecar, cookie: str, origin: str | None) -> tuple[int, int]:
    before = len(sc.upstream.requests)
    resp = await raw_http(sc.proxy_port, _upgrade(sc, cookie, origin), quiet=1.0)
    return resp.status, len(sc.upstream.requests) - before


async def test_cross_origin_upgrades_are_refused(sidecar: Sidecar) -> None:
    cookie = await sidecar.login(userId="user-1")
    through = []
    for origin in FOREIGN_ORIGINS:
        if origin == "https://app.example.com/":
            continue  # a path: browsers never send one; judged by the origin it names
        status, seen = await _try_upgrade(sidecar, cookie, origin)
        if status != 403 or seen:
            through.append((origin, status, seen))
    casebook.record("origins", tried=len(FOREIGN_ORIGINS) - 1, through=len(through))
    assert through == []
    genuine: list[str | None] = [*OWN_ORIGINS, None]  # None: not a browser, none to hijack
    for own in genuine:
        _, seen = await _try_upgrade(sidecar, cookie, own)
        assert seen == 1, own


async def test_allowed_origins_extend_the_public_one(tmp_path: Path) -> None:
    overrides: dict[str, object] = {
        "proxy": {"allowed_origins": ["https://admin.example.com", "http://localhost:3000"]}
    }
    async with running_sidecar(tmp_path, overrides=overrides) as sc:
        cookie = await sc.login(userId="user-1")
        for origin in ("https://admin.example.com", "http://localhost:3000"):
            assert (await _try_upgrade(sc, cookie, origin))[1] == 1, origin
        assert (await _try_upgrade(sc, cookie, "http://localhost:3001")) == (403, 0)


def _logout(cookie: str, headers: dict[str, str]) -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (
        f"POST /_sidecar/logout HTTP/1.1\r\nHost: app.example.com\r\nCookie: {cookie}\r\n"
        f"{lines}Content-Length: 0\r\nConnection: close\r\n\r\n"
    ).encode()


async def _alive(sc: Sidecar, cookie: str) -> bool:
    async with sc.http.get(sc.proxy_url + "/app", headers=sc.cookie_header(cookie)) as resp:
        return resp.status == 200


FORGED = [
    {"Origin": "https://evil.example"},
    {"Origin": "https://evil.app.example.com", "Sec-Fetch-Site": "same-site"},
    {"Origin": "null", "Sec-Fetch-Site": "cross-site"},
    {"Origin": "null"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Origin": "http://app.example.com", "Sec-Fetch-Site": "cross-site"},
    {"Origin": "https://app.example.com.evil.example"},
]
GENUINE = [
    {"Origin": "https://app.example.com", "Sec-Fetch-Site": "same-origin"},
    {"Origin": "null", "Sec-Fetch-Site": "same-origin"},  # the sidecar's own no-referrer page
    {"Sec-Fetch-Site": "none"},
    {},  # curl, a backend: no browser, no forgery
]


async def test_cross_origin_logout_is_refused(sidecar: Sidecar) -> None:
    cookie = await sidecar.login(userId="user-1")
    through = []
    for headers in FORGED:
        resp = await raw_http(
            sidecar.proxy_port, _logout(f"{sidecar.cookie_name}={cookie}", headers)
        )
        if resp.status != 403 or not await _alive(sidecar, cookie):
            through.append((headers, resp.status))
    casebook.record("origins", tried=len(FORGED), through=len(through))
    assert through == []
    for headers in GENUINE:
        mine = await sidecar.login(userId="user-2")
        resp = await raw_http(sidecar.proxy_port, _logout(f"{sidecar.cookie_name}={mine}", headers))
        assert resp.status == 303, headers
        assert not await _alive(sidecar, mine), headers


def _post(target: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    typed = "Content-Type: application/json\r\n" if body else ""
    return (
        f"POST {target} HTTP/1.1\r\nHost: app.example.com\r\n{lines}{typed}"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


OWN_PAGE = {"Origin": "null", "Sec-Fetch-Site": "same-origin"}  # our confirm page's button


async def test_cross_origin_sign_in_posts_are_refused(sidecar: Sidecar) -> None:
    """Login CSRF: another site posting its own confirm link or OTP must not sign the
    visitor in as someone else; the link stays unused for its owner's own button."""
    through = []
    for headers in FORGED:
        link = await sidecar.mint(userId="someone-else", additionalParams={"role": "Confirm"})
        target = f"/?refer={link['referString']}"
        resp = await raw_http(sidecar.proxy_port, _post(target, headers))
        if resp.status != 403 or resp.header("Set-Cookie") is not None:
            through.append(("confirm", headers, resp.status))
        own = await raw_http(sidecar.proxy_port, _post(target, OWN_PAGE))
        assert own.status == 303, "the refused POST did not use the link up"
    otp = b'{"type": "magiclink", "email": "a@example.com", "token": "123456"}'
    for headers in FORGED:
        resp = await raw_http(sidecar.proxy_port, _post("/_sidecar/verify", headers, otp))
        if resp.status != 403:
            through.append(("verify", headers, resp.status))
    casebook.record("origins", tried=2 * len(FORGED), through=len(through))
    assert through == []
    backend = await raw_http(sidecar.proxy_port, _post("/_sidecar/verify", {}, otp))
    assert backend.status == 401, "no browser, no forgery: the code itself is judged"
