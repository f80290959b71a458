"""Well-known identity headers the config does not inject never reach the upstream (issue #12,
item 5): ``Remote-User``, ``X-Auth-Request-Email``, ``Cf-Access-Authenticated-User-Email``,
``X-Amzn-Oidc-*``, method/path/host overrides, client-address claims — in every spelling a
WSGI/PHP/CGI upstream would merge, with a session, on a public path and in ``pass`` mode.
``proxy.strip_headers`` extends the list (names and ``prefix*``).
"""

from __future__ import annotations

from pathlib import Path

from sidecar.proxy.strip import DEFAULT_STRIP_HEADERS
from tests.harness import Sidecar, raw_http, running_sidecar
from tests.security import casebook
from tests.security.test_headers import lenient_name

SPOOF = "SPOOFED-7f3a"
EXTRA = ["X-Legacy-User", "X-Corp-*"]


def _names() -> list[str]:
    names = [n.replace("*", "Data") for n in (*DEFAULT_STRIP_HEADERS, *EXTRA)]
    names += ["X-Amzn-Oidc-Identity", "X-Amzn-Oidc-Accesstoken", "x-corp-tenant-id"]
    return names


def _spellings(name: str) -> set[str]:
    return {
        name,
        name.lower(),
        name.upper(),
        name.replace("-", "_"),
        name.lower().replace("-", "_"),
        name.replace("-", "."),
    }


async def _attack(sc: Sidecar, path: str, cookie: str | None) -> tuple[int, list[str]]:
    """Send every spelling of every name; return (cases tried, what got through)."""
    through: list[str] = []
    tried = 0
    host = f"127.0.0.1:{sc.proxy_port}"
    cookie_line = f"Cookie: {sc.cookie_name}={cookie}\r\n" if cookie else ""
    for name in _names():
        lines = "".join(f"{s}: {SPOOF}\r\n" for s in sorted(_spellings(name)))
        tried += len(_spellings(name))
        before = len(sc.upstream.requests)
        data = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{cookie_line}{lines}Connection: close\r\n\r\n"
        )
        resp = await raw_http(sc.proxy_port, data.encode())
        seen = sc.upstream.requests[before:]
        if resp.status != 200 or len(seen) != 1:
            through.append(f"{name}: status {resp.status}, upstream saw {len(seen)}")
            continue
        leaked = [k for k, v in seen[0].headers if SPOOF in v]
        # Identity the sidecar injects itself is fine; a client's value never is.
        through += [f"{name}: {k} ({lenient_name(k)})" for k in leaked]
    casebook.record("strip", tried=tried, through=len(through))
    return tried, through


OVERRIDES: dict[str, object] = {"proxy": {"strip_headers": EXTRA}}


async def test_with_a_session(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path, overrides=OVERRIDES) as sc:
        cookie = await sc.login(userId="user-1")
        tried, through = await _attack(sc, "/app", cookie)
        assert tried > 300
        assert through == []
        # The one X-Forwarded-User the upstream gets is the session's.
        assert sc.upstream.requests[-1].values("X-Forwarded-User") == ["user-1"]


async def test_on_a_public_path(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path, overrides=OVERRIDES) as sc:
        _, through = await _attack(sc, "/static/x.css", None)
        assert through == []


async def test_in_pass_mode(tmp_path: Path) -> None:
    overrides: dict[str, object] = {"proxy": {"strip_headers": EXTRA, "unauthenticated": "pass"}}
    async with running_sidecar(tmp_path, overrides=overrides) as sc:
        _, through = await _attack(sc, "/anon", None)
        assert through == []


async def test_other_headers_still_pass(sidecar: Sidecar) -> None:
    """The list is not a blanket: ordinary and look-alike application headers go through."""
    cookie = await sidecar.login(userId="user-1")
    kept = ["X-Requested-With", "X-User-Agent-Hint", "X-Hosts-Allowed", "Remote-Addr-Note"]
    lines = "".join(f"{k}: kept\r\n" for k in kept)
    data = (
        f"GET /app HTTP/1.1\r\nHost: 127.0.0.1:{sidecar.proxy_port}\r\n"
        f"Cookie: {sidecar.cookie_name}={cookie}\r\n{lines}Connection: close\r\n\r\n"
    )
    assert (await raw_http(sidecar.proxy_port, data.encode())).status == 200
    seen = sidecar.upstream.requests[-1]
    assert all(seen.values(k) == ["kept"] for k in kept)
