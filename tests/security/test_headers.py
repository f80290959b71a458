"""Spoofed identity, leaked cookies and forged forwarding headers, sent as raw bytes.

The oracle reads the upstream's wire headers the way the most permissive upstream would
(WSGI, PHP and CGI fold case and read ``_`` as ``-``): for every identity header name, the
only value the upstream may ever see is the one the sidecar rendered from the session.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from aiohttp import web

from tests.harness import RawResponse, Recorded, Sidecar, raw_http, running_sidecar
from tests.security import casebook

SPOOF = "SPOOFED"
IDENTITY = ("x-forwarded-user", "x-forwarded-role", "x-forwarded-tenant", "x-forwarded-email")


def lenient_name(name: str) -> str:
    """How the most permissive upstream names a header: WSGI/CGI/PHP fold these together."""
    return name.strip(" \t").lower().replace("_", "-").replace(".", "-")


def spoof_lines() -> list[str]:
    lines: list[str] = []
    for canonical in IDENTITY:
        title = "-".join(p.capitalize() for p in canonical.split("-"))
        for name in {
            title,
            canonical,
            canonical.upper(),
            title.replace("-", "_"),
            canonical.replace("-", "_"),
            title.replace("-", "_", 1),
            title.replace("-", "."),
            canonical.upper().replace("-", "_"),
        }:
            lines.append(f"{name}: {SPOOF}")
    user = "X-Forwarded-User"
    lines += [
        f"{user}:{SPOOF}",
        f"{user}: {SPOOF}   ",
        f"{user}: {SPOOF}\t",
        f"{user}: \t{SPOOF}",
        f"{user} : {SPOOF}",
        f"{user}\t: {SPOOF}",
        f" {user}: {SPOOF}",
        f"X-Other: a\r\n {user}: {SPOOF}",
        f"X-Other: a\r\n\t{user}: {SPOOF}",
        f"{user}: {SPOOF}\r\n{user}: {SPOOF}2",
        f"{user}: {SPOOF}\r\nX_Forwarded_User: {SPOOF}2\r\nx-forwarded-user: {SPOOF}3",
        f"{user}: user-1\r\n{user}: {SPOOF}",
        f"{user}: {SPOOF}, user-1",
        f"{user}: {SPOOF}\nX-Forwarded-Role: {SPOOF}",
        f"{user}\x00: {SPOOF}",
        f"X-Forwarded-Us\u0435r: {SPOOF}",  # Cyrillic 'e'
        f"{user}\u00a0: {SPOOF}",
        f"Connection: X-Forwarded-User\r\n{user}: {SPOOF}",
        f"Connection: close, x_forwarded_user\r\nX_Forwarded_User: {SPOOF}",
        f"{user}: {SPOOF}\r\nConnection: keep-alive, X-Forwarded-User",
        f"TE: trailers\r\n{user}: {SPOOF}",
    ]
    return lines


def request_bytes(path: str, host: str, lines: str, cookie: str | None) -> bytes:
    cookie_line = f"Cookie: {cookie}\r\n" if cookie else ""
    text = (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{cookie_line}{lines}\r\nConnection: close\r\n\r\n"
    )
    return text.encode("utf-8")


def leaks(seen: Recorded, expected: dict[str, str]) -> list[tuple[str, str]]:
    """Identity headers the upstream saw with a value the session did not render."""
    bad = []
    counts: dict[str, int] = {}
    for name, value in seen.headers:
        canonical = lenient_name(name)
        if canonical in IDENTITY:
            counts[canonical] = counts.get(canonical, 0) + 1
            if expected.get(canonical) != value or counts[canonical] > 1:
                bad.append((name, value))
    return bad


async def attack(
    sc: Sidecar, path_prefix: str, cookie: str | None, expected: dict[str, str]
) -> list[tuple[str, RawResponse | str]]:
    through: list[tuple[str, RawResponse | str]] = []
    host = f"127.0.0.1:{sc.proxy_port}"
    for n, lines in enumerate(spoof_lines()):
        path = f"{path_prefix}/case-{n}"
        before = len(sc.upstream.requests)
        resp = await raw_http(sc.proxy_port, request_bytes(path, host, lines, cookie))
        seen = [s for s in sc.upstream.requests[before:] if s.raw_path.startswith(path)]
        if resp.status >= 500 or resp.status == 0:
            through.append((lines, f"status {resp.status}"))
        for request in seen:
            bad = leaks(request, expected)
            if bad:
                through.append((lines, str(bad)))
        if resp.status == 200 and not seen:
            through.append((lines, "200 but the upstream saw nothing"))
    casebook.record("headers", tried=len(spoof_lines()), through=len(through))
    return through


async def test_spoofed_identity_never_reaches_the_upstream_with_a_session(sidecar: Sidecar) -> None:
    cookie = await sidecar.login(userId="user-1", additionalParams={"tenant": "acme"})
    expected = {
        "x-forwarded-user": "user-1",
        "x-forwarded-role": "Authenticated",
        "x-forwarded-tenant": "acme",
    }
    through = await attack(sidecar, "/app", f"{sidecar.cookie_name}={cookie}", expected)
    assert not through, through


async def test_spoofed_identity_never_reaches_the_upstream_on_public_paths(
    sidecar: Sidecar,
) -> None:
    assert not await attack(sidecar, "/static", None, {})


async def test_spoofed_identity_never_reaches_the_upstream_in_pass_mode(tmp_path: Path) -> None:
    overrides: dict[str, object] = {"proxy": {"unauthenticated": "pass"}}
    async with running_sidecar(tmp_path, overrides=overrides) as sc:
        assert not await attack(sc, "/anon", None, {})


# -- the sidecar's cookie -------------------------------------------------------------------


def cookie_spellings(name: str, value: str) -> list[list[str]]:
    """Cookie header lists (one item per Cookie header) a browser or an attacker might send."""
    mine = f"{name}={value}"
    return [
        [mine],
        [f"a=1; {mine}; b=2"],
        [f"a=1;{mine};b=2"],
        [f"{mine}; {mine}"],
        [f"{name}=other; {mine}"],
        ["a=1", mine],
        [mine, "b=2"],
        [f'{name}="{value}"; a=1'],
        [f"{name} = {value}; a=1"],
        [f"a=1;   {mine}   ;b=2"],
        [f"{mine};"],
        [f";{mine}"],
        [f"a=1, {mine}"],
    ]


async def test_the_sidecars_cookie_never_reaches_the_upstream(sidecar: Sidecar) -> None:
    cookie = await sidecar.login()
    through: list[tuple[list[str], object]] = []
    cases = cookie_spellings(sidecar.cookie_name, cookie)
    for n, headers in enumerate(cases):
        lines = "".join(f"Cookie: {h}\r\n" for h in headers)
        for prefix in ("/app", "/static"):
            path = f"{prefix}/cookie-{n}"
            data = (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{sidecar.proxy_port}\r\n{lines}"
                "Connection: close\r\n\r\n"
            ).encode()
            resp = await raw_http(sidecar.proxy_port, data)
            for seen in sidecar.upstream.requests:
                if seen.raw_path == path and any(cookie in v for _, v in seen.headers):
                    through.append((headers, prefix))
            if resp.status >= 500:
                through.append((headers, resp.status))
    casebook.record("headers", tried=2 * len(cases), through=len(through))
    assert not through, through
    assert any(s.raw_path.startswith("/app/cookie") for s in sidecar.upstream.requests)


async def test_other_cookies_reach_the_upstream_unchanged(sidecar: Sidecar) -> None:
    cookie = await sidecar.login()
    headers = {"Cookie": f'app=1; {sidecar.cookie_name}={cookie}; pref="a b"'}
    async with sidecar.http.get(sidecar.proxy_url + "/app/x", headers=headers) as r:
        assert r.status == 200
    assert sidecar.upstream.requests[-1].values("Cookie") == ['app=1; pref="a b"']


@pytest.mark.parametrize(
    "set_cookie",
    [
        "{name}=attacker-chosen; Path=/",
        " {name}=attacker-chosen",
        "{upper}=attacker-chosen",
        "{name}=attacker-chosen; Domain=example.com; HttpOnly",
    ],
)
async def test_the_upstream_cannot_set_the_sidecars_cookie(
    sidecar: Sidecar, set_cookie: str
) -> None:
    name = sidecar.cookie_name
    header = set_cookie.format(name=name, upper=name.upper())

    def respond(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(text="ok", headers={"Set-Cookie": header})

    sidecar.upstream.respond = respond
    cookie = await sidecar.login()
    async with sidecar.http.get(
        sidecar.proxy_url + "/app", headers=sidecar.cookie_header(cookie)
    ) as r:
        got = r.cookies.get(name)
        casebook.record("headers", through=int(got is not None))
        assert got is None


# -- X-Forwarded-* ------------------------------------------------------------------------

FORGED_FORWARDING = [
    "X-Forwarded-For: 203.0.113.7",
    "X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-For: 198.51.100.1",
    "X-Forwarded-For: 127.0.0.1, 203.0.113.7",
    "X_Forwarded_For: 203.0.113.7",
    "x-forwarded-for: 203.0.113.7",
    "X-Forwarded-Proto: https",
    "X_Forwarded_Proto: https",
    "X-Forwarded-Host: evil.example",
    "X-Forwarded-Host: evil.example\r\nX-Forwarded-Host: evil2.example",
    "X_Forwarded_Host: evil.example",
    "Forwarded: for=203.0.113.7;proto=https;host=evil.example",
    "X-Real-IP: 203.0.113.7",
    "X_Real_IP: 203.0.113.7",
]
# What other proxies add about themselves: from an untrusted peer, none of it passes.
PROXY_HINTS = (
    "x-forwarded-prefix",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-url-scheme",
    "front-end-https",
)
FORGED_FORWARDING += [f"{name}: evil" for name in PROXY_HINTS]
FORGED_FORWARDING.append("\r\n".join(f"{name.title()}: evil" for name in PROXY_HINTS))


async def test_forwarding_headers_from_an_untrusted_peer_are_replaced(sidecar: Sidecar) -> None:
    cookie = await sidecar.login()
    host = f"127.0.0.1:{sidecar.proxy_port}"
    through = []
    for n, lines in enumerate(FORGED_FORWARDING):
        path = f"/app/fwd-{n}"
        data = request_bytes(path, host, lines, f"{sidecar.cookie_name}={cookie}")
        resp = await raw_http(sidecar.proxy_port, data)
        assert resp.status == 200, resp.raw[:300]
        (seen,) = [s for s in sidecar.upstream.requests if s.raw_path == path]
        wanted = {"x-forwarded-for": ["127.0.0.1"], "x-forwarded-proto": ["http"],
                  "x-forwarded-host": [host], "forwarded": [], "x-real-ip": [],
                  **{hint: [] for hint in PROXY_HINTS}}  # fmt: skip
        got: dict[str, list[str]] = {k: [] for k in wanted}
        for name, value in seen.headers:
            if lenient_name(name) in got:
                got[lenient_name(name)].append(value)
        if got != wanted:
            through.append((lines, got))
    casebook.record("headers", tried=len(FORGED_FORWARDING), through=len(through))
    assert not through, through


async def test_forwarding_headers_from_a_trusted_proxy_are_kept(tmp_path: Path) -> None:
    overrides: dict[str, object] = {
        "proxy": {"trusted_proxies": ["127.0.0.1/32"], "failed_redeem_rate": "1/1m"}
    }
    async with running_sidecar(tmp_path, overrides=overrides) as sc:
        cookie = await sc.login()
        headers = {
            **sc.cookie_header(cookie),
            "X-Forwarded-For": "203.0.113.7",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "app.example.com",
            "X-Forwarded-Prefix": "/app",
            # Look-alike spellings are never the trusted proxy's: they still go.
            "X_Forwarded_For": "6.6.6.6",
            "X.Forwarded.Prefix": "/evil",
        }
        async with sc.http.get(sc.proxy_url + "/app/trusted", headers=headers) as r:
            assert r.status == 200
        seen = sc.upstream.requests[-1]
        assert seen.values("X-Forwarded-For") == ["203.0.113.7, 127.0.0.1"]
        assert seen.values("X-Forwarded-Proto") == ["https"]
        assert seen.values("X-Forwarded-Host") == ["app.example.com"]
        assert seen.values("X-Forwarded-Prefix") == ["/app"]
        assert "x_forwarded_for" not in seen.header_names()
        assert "x.forwarded.prefix" not in seen.header_names()
        # Rate limits count the real client behind the trusted proxy, not the proxy.
        for client, status in [("203.0.113.7", 401), ("203.0.113.7", 429), ("203.0.113.8", 401)]:
            async with sc.http.get(
                sc.proxy_url + "/",
                params={"refer": "bad"},
                headers={"X-Forwarded-For": client, "Accept": "application/json"},
            ) as r:
                assert r.status == status, client


async def test_a_header_only_another_role_renders_never_reaches_the_upstream(
    tmp_path: Path,
) -> None:
    """The sidecar strips every role's identity headers, not just the session role's."""
    overrides: dict[str, object] = {"roles": {"Mailer": {"headers": {"X-Auth-Email": "{email}"}}}}
    async with running_sidecar(tmp_path, overrides=overrides) as sc:
        cookie = await sc.login(userId="real", additionalParams={"tenant": "t1"})
        spoofs = [
            "X-Forwarded-User", "x-forwarded-user", "X-FORWARDED-USER", "X_Forwarded_User",
            "x_forwarded-user", "X-Forwarded_User", "X-Auth-Email", "x_auth_email",
            "X-Forwarded-Tenant",
        ]  # fmt: skip
        lines = [f"{name}: spoof{i}" for i, name in enumerate(spoofs)]
        lines += ["X-Forwarded-User: dup1", "X-Forwarded-User: dup2"]
        host = f"127.0.0.1:{sc.proxy_port}"
        data = request_bytes("/app/p", host, "\r\n".join(lines), f"{sc.cookie_name}={cookie}")
        resp = await raw_http(sc.proxy_port, data)
        assert resp.status == 200, resp.raw[:300]
        seen = sc.upstream.last
        leaked = [(n, v) for n, v in seen.headers if "spoof" in v or "dup" in v]
        casebook.record("headers", tried=len(lines), through=len(leaked))
        assert not leaked
        assert seen.values("X-Forwarded-User") == ["real"]
        assert seen.values("X-Forwarded-Tenant") == ["t1"]
        assert "x-auth-email" not in seen.header_names()


def test_spoof_table_covers_every_identity_header() -> None:
    names = {lenient_name(line.split(":", 1)[0]) for line in spoof_lines()}
    assert set(IDENTITY) <= names
    assert len(list(itertools.chain(spoof_lines()))) >= 40


async def test_spoofed_identity_never_reaches_the_upstream_on_a_websocket(
    sidecar: Sidecar,
) -> None:
    cookie = await sidecar.login(userId="ws-user")
    expected = {"x-forwarded-user": "ws-user", "x-forwarded-role": "Authenticated"}
    through: list[tuple[str, object]] = []
    spoofs = [line for line in spoof_lines() if "\r\n" not in line and ":" in line][:20]
    for n, lines in enumerate(spoofs):
        path = f"/ws/case-{n}"
        data = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{sidecar.proxy_port}\r\n"
            f"Cookie: {sidecar.cookie_name}={cookie}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{lines}\r\n\r\n"
        ).encode()
        resp = await raw_http(sidecar.proxy_port, data)
        for seen in sidecar.upstream.requests:
            if seen.raw_path == path and leaks(seen, expected):
                through.append((lines, leaks(seen, expected)))
        if resp.status >= 500 and resp.status != 502:
            through.append((lines, resp.status))
    casebook.record("headers", tried=len(spoofs), through=len(through))
    assert not through, through
    assert any(s.raw_path.startswith("/ws/") for s in sidecar.upstream.requests)
