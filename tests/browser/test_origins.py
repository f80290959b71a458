"""Cross-site WebSocket hijacking and logout CSRF, tried from a real page in Chromium (issue
#12, items 7 and 8).

The attacker's page lives on a sibling host (``evil.site.localhost``): the same *site* as the
app, so Chromium sends the ``SameSite=Lax`` session cookie along with its WebSocket handshake
and its form ``POST`` — exactly the case the cookie's SameSite attribute does not cover. The
sidecar must refuse both by their ``Origin``; the same actions from the app's own pages work.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from pathlib import Path

import pytest
from aiohttp import web

from tests.browser.chromium import TIMEOUT_MS, Browser, Page
from tests.browser.sites import sibling_host
from tests.harness import Sidecar, Upstream, running_sidecar
from tests.security import casebook

pytestmark = pytest.mark.browser
OVERRIDES: dict[str, object] = {"session": {"cookie_secure": True}}


def _socket_page(url: str) -> str:
    """A page that opens ``url`` and writes what happened into its title."""
    return f"""<!doctype html><title></title><script>
const ws = new WebSocket({json.dumps(url)});
ws.onmessage = (e) => {{ document.title = "got:" + e.data; ws.close(); }};
ws.onclose = (e) => {{ if (!document.title) document.title = "closed:" + e.code; }};
</script>"""


def _logout_page(url: str) -> str:
    return f"""<!doctype html><form method="post" action="{url}"></form>
<script>document.forms[0].submit()</script>"""


def _upstream() -> Upstream:
    """Answers WebSockets with the identity it received, and serves the app's own page."""

    async def respond(request: web.BaseRequest) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.send_str(request.headers.get("X-Forwarded-User", "anonymous"))
            await ws.receive()
            return ws
        if request.path == "/page":
            host = request.headers["Host"]
            return web.Response(text=_socket_page(f"ws://{host}/socket"), content_type="text/html")
        return web.json_response({"user": request.headers.get("X-Forwarded-User")})

    return Upstream(respond=respond)


async def _signed_in_page(browser: Browser, sc: Sidecar) -> Page:
    """A fresh browser that opened alice's link on the app."""
    context = await browser.new_context()
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    link = await sc.mint(userId="alice")
    await page.goto(f"{_origin(sc)}/?refer={link['referString']}")
    return page


def _origin(sc: Sidecar) -> str:
    return f"http://app.site.localhost:{sc.proxy_port}"


async def _title(page: Page) -> str:
    await page.wait_for_function("document.title !== ''")
    title: str = await page.title()
    return title


async def _whoami(page: Page, sc: Sidecar) -> int:
    response = await page.goto(f"{_origin(sc)}/whoami")
    assert response is not None
    status: int = response.status
    return status


async def _cleanup(*steps: Awaitable[None]) -> None:
    for step in steps:
        await step


async def test_a_sibling_page_cannot_open_a_socket_as_the_user(
    chromium: Browser, tmp_path: Path
) -> None:
    async with running_sidecar(
        tmp_path, overrides=OVERRIDES, upstream=_upstream(), public_host="app.site.localhost"
    ) as sc:
        page = await _signed_in_page(chromium, sc)
        socket = f"ws://app.site.localhost:{sc.proxy_port}/socket"
        runner, evil_port = await sibling_host(html=_socket_page(socket))
        try:
            await page.goto(f"http://evil.site.localhost:{evil_port}/")
            hijack = await _title(page)
            await page.goto(f"{_origin(sc)}/page")  # the app's own page
            own = await _title(page)
        finally:
            await _cleanup(runner.cleanup(), page.context.close())
        upgrades = [r for r in sc.upstream.requests if r.values("Upgrade") == ["websocket"]]
        casebook.record("origins", through=int(hijack.startswith("got:")))
        assert hijack.startswith("closed:"), hijack
        assert own == "got:alice"
        assert len(upgrades) == 1  # only the app's own page reached the upstream


async def test_a_sibling_page_cannot_sign_the_user_out(chromium: Browser, tmp_path: Path) -> None:
    async with running_sidecar(
        tmp_path, overrides=OVERRIDES, upstream=_upstream(), public_host="app.site.localhost"
    ) as sc:
        page = await _signed_in_page(chromium, sc)
        logout = f"{_origin(sc)}/_sidecar/logout"
        runner, evil_port = await sibling_host(html=_logout_page(logout))
        try:
            async with page.expect_navigation(url=logout):
                await page.goto(f"http://evil.site.localhost:{evil_port}/")
            after_csrf = await _whoami(page, sc)
            # The sidecar's own logout page and button still work.
            await page.goto(logout)
            await page.get_by_role("button", name="Sign out").click()
            await page.wait_for_url(f"{_origin(sc)}/_sidecar/signed-out")
            after_logout = await _whoami(page, sc)
        finally:
            await _cleanup(runner.cleanup(), page.context.close())
        casebook.record("origins", through=int(after_csrf != 200))
        assert after_csrf == 200, "the cross-site form signed the user out"
        assert after_logout == 401
