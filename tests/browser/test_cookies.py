"""What Chromium really does with the session cookie (issue #12, item 9), against a real
sidecar (``sidecar.app.serve`` on real sockets) and a real page on a sibling host.

``*.localhost`` names resolve to loopback inside Chromium and count as potentially
trustworthy, so ``http://app.site.localhost`` behaves as a deployed https origin would for
cookies, while ``http://evil.site.localhost`` is a sibling host that may set cookies for
``Domain=site.localhost``. Measured with Chromium 156: the sibling can toss
``sidecar_session`` and ``__Secure-sidecar_session`` into the app's requests, but not
``__Host-sidecar_session``; Secure and ``__Host-`` cookies are accepted over plain http from
loopback names and dropped from any other http host.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser.chromium import TIMEOUT_MS, Browser
from tests.browser.sites import sibling_host
from tests.harness import Sidecar, running_sidecar
from tests.security import casebook

pytestmark = pytest.mark.browser


async def _visit(browser: Browser, sc: Sidecar, evil_port: int) -> tuple[int, list[str]]:
    """A fresh browser visits the sibling page, then the app; the app's status and the
    identity the upstream received."""
    context = await browser.new_context()
    try:
        page = await context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        await page.goto(f"http://evil.site.localhost:{evil_port}/")
        before = len(sc.upstream.requests)
        response = await page.goto(f"http://app.site.localhost:{sc.proxy_port}/app")
        assert response is not None
        seen = sc.upstream.requests[before:]
        users = [u for r in seen for u in r.values("X-Forwarded-User")]
        return response.status, users
    finally:
        await context.close()


async def test_a_sibling_host_cannot_log_the_user_in_as_itself(
    chromium: Browser, tmp_path: Path
) -> None:
    overrides: dict[str, object] = {"session": {"cookie_secure": True}}
    async with running_sidecar(
        tmp_path, overrides=overrides, public_host="app.site.localhost"
    ) as sc:
        assert sc.cookie_name == "__Host-sidecar_session"
        attacker = await sc.login(userId="attacker")
        tossed = [
            f"{name}={attacker}; Domain=site.localhost; Path=/{secure}"
            for name, secure in [
                ("sidecar_session", ""),
                ("__Secure-sidecar_session", "; Secure"),
                ("__Host-sidecar_session", "; Secure"),
            ]
        ]
        runner, evil_port = await sibling_host(tossed)
        try:
            status, users = await _visit(chromium, sc, evil_port)
        finally:
            await runner.cleanup()
        casebook.record("cookies", through=int(users != []))
        assert users == [], "the app ran with the sibling host's session"
        assert status == 401


async def test_the_host_prefixed_cookie_works_over_local_http(
    chromium: Browser, tmp_path: Path
) -> None:
    """The secure default needs no https on a developer's loopback: Chromium keeps a
    Secure ``__Host-`` cookie from ``http://app.site.localhost`` and sends it back."""
    overrides: dict[str, object] = {"session": {"cookie_secure": True}}
    async with running_sidecar(
        tmp_path, overrides=overrides, public_host="app.site.localhost"
    ) as sc:
        link = await sc.mint(userId="alice")
        context = await chromium.new_context()
        try:
            page = await context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            origin = f"http://app.site.localhost:{sc.proxy_port}"
            await page.goto(f"{origin}/app?refer={link['referString']}")
            (cookie,) = [c for c in await context.cookies() if "sidecar" in c["name"]]
            assert cookie["name"] == "__Host-sidecar_session"
            assert cookie["secure"] is True
            assert cookie["domain"] == "app.site.localhost"  # host-only
            response = await page.goto(f"{origin}/app")
            assert response is not None
            assert response.status == 200
            app_requests = [r for r in sc.upstream.requests if r.raw_path == "/app"]
            assert len(app_requests) == 2  # after the redirect, and again
            for seen in app_requests:
                assert seen.values("X-Forwarded-User") == ["alice"]
        finally:
            await context.close()
