"""Every spelling of the session cookie's name stays out of the upstream's ``Cookie``.

The default name became ``__Host-sidecar_session`` (``__Secure-`` with a domain) with
``cookie_secure: true``; before, it was ``sidecar_session``. Browsers keep sending the old
cookie after the upgrade, and its session is still live in the store until it expires: the
sidecar no longer reads it, but it must not hand it to the app either (which would log it,
or could replay it).
"""

from __future__ import annotations

from pathlib import Path

from tests.harness import raw_http, running_sidecar
from tests.security import casebook

SECURE: dict[str, object] = {"session": {"cookie_secure": True}}


async def test_other_spellings_of_the_session_cookie_never_reach_the_upstream(
    tmp_path: Path,
) -> None:
    async with running_sidecar(tmp_path, overrides=SECURE) as sc:
        assert sc.cookie_name == "__Host-sidecar_session"
        current = await sc.login(userId="now")
        old = await sc.login(userId="before-upgrade")  # live, as an old cookie's session is
        leaked: list[str] = []
        spellings = [
            "sidecar_session",
            "__Secure-sidecar_session",
            "__host-sidecar_session",
            "__SECURE-sidecar_session",
        ]
        for spelling in spellings:
            for header in (
                f"{sc.cookie_name}={current}; {spelling}={old}; a=1",
                f"{spelling}={old}; a=1; {sc.cookie_name}={current}",
                f"a=1, {spelling}={old}; {sc.cookie_name}={current}",
            ):
                data = (
                    f"GET /app HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {header}\r\n"
                    "Connection: close\r\n\r\n"
                ).encode()
                before = len(sc.upstream.requests)
                answer = await raw_http(sc.proxy_port, data)
                assert answer.status == 200, answer.raw[:300]
                seen = sc.upstream.requests[before:]
                assert [r.values("X-Forwarded-User") for r in seen] == [["now"]]
                cookies = seen[0].values("Cookie")
                if any(old in c or current in c for c in cookies):
                    leaked.append(f"{header!r} -> {cookies!r}")
        casebook.record("cookies", tried=3 * len(spellings), through=len(leaked))
        assert not leaked, leaked
