"""Cookie tossing (issue #12, item 9): several copies of the session cookie in one request.

A sibling host can add a copy with ``Domain=`` (see tests/browser/test_cookies.py for what
Chromium really does), and browsers send the more specific path first. The first copy used
to win — the attacker's garbage logged the user out, the attacker's live session logged them
in as the attacker. Now the first copy that maps to a live session is used; with the default
``__Host-`` name a sibling host cannot add a copy at all.
"""

from __future__ import annotations

from pathlib import Path

from tests.harness import Sidecar, raw_http, running_sidecar
from tests.security import casebook

GARBAGE = ["x", "A" * 43, "not a cookie value at all", '"' + "B" * 43 + '"']


async def _as_seen(sc: Sidecar, cookie_header: str) -> tuple[int, list[str], list[str]]:
    data = (
        f"GET /app HTTP/1.1\r\nHost: 127.0.0.1:{sc.proxy_port}\r\nCookie: {cookie_header}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    before = len(sc.upstream.requests)
    resp = await raw_http(sc.proxy_port, data)
    if len(sc.upstream.requests) == before:
        return resp.status, [], []
    seen = sc.upstream.requests[-1]
    return resp.status, seen.values("X-Forwarded-User"), seen.values("Cookie")


async def test_the_copy_with_a_live_session_wins(sidecar: Sidecar) -> None:
    victim = await sidecar.login(userId="victim")
    dead = await sidecar.login(userId="logged-out")
    async with sidecar.http.post(
        sidecar.proxy_url + "/_sidecar/logout",
        headers=sidecar.cookie_header(dead),
        allow_redirects=False,
    ) as resp:
        assert resp.status == 303
    name = sidecar.cookie_name
    through = 0
    cases = [*GARBAGE, dead]
    for first in cases:
        for header in (
            f"{name}={first}; {name}={victim}",
            f"{name}={first}; other=1; {name}={victim}",
            f"{name}={first}; {name}={first}x; {name}={victim}",
        ):
            status, users, cookies = await _as_seen(sidecar, header)
            ok = status == 200 and users == ["victim"] and not any(name in c for c in cookies)
            through += int(not ok)
    casebook.record("cookies", tried=3 * len(cases), through=through)
    assert through == 0


async def test_copies_are_bounded(sidecar: Sidecar) -> None:
    """A stuffed Cookie header costs at most four session lookups."""
    victim = await sidecar.login(userId="victim")
    name = sidecar.cookie_name
    stuffed = "; ".join(f"{name}={'C' * 42}{i % 10}" for i in range(50))
    status, _, _ = await _as_seen(sidecar, f"{stuffed}; {name}={victim}")
    casebook.record("cookies", through=int(status != 401))
    assert status == 401


async def test_secure_default_name_is_host_prefixed(tmp_path: Path) -> None:
    overrides: dict[str, object] = {"session": {"cookie_secure": True}}
    async with running_sidecar(tmp_path, overrides=overrides) as sc:
        assert sc.cookie_name == "__Host-sidecar_session"
        link = await sc.mint(userId="u")
        async with sc.http.get(
            sc.proxy_url + "/", params={"refer": link["referString"]}, allow_redirects=False
        ) as resp:
            set_cookie = resp.headers["Set-Cookie"]
        assert set_cookie.startswith("__Host-sidecar_session=")
        assert "Secure" in set_cookie
        assert "Path=/" in set_cookie
        assert "Domain" not in set_cookie
        # A copy under the old, unprefixed name is not ours: it is passed on, never trusted.
        cookie = set_cookie.split(";", 1)[0].split("=", 1)[1]
        status, users, _ = await _as_seen(sc, f"sidecar_session={cookie}")
        casebook.record("cookies", through=int(status != 401 or users != []))
        assert status == 401
