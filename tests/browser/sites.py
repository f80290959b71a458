"""Real sites for browser tests of cross-site rules: an async Chromium and a sibling host.

``*.localhost`` names resolve to loopback inside Chromium and count as potentially
trustworthy, so ``http://app.site.localhost:<port>`` behaves for cookies and fetch metadata
as a deployed https origin would, and ``http://evil.site.localhost:<port>`` is another
origin on the same site (a sibling subdomain: SameSite=Lax cookies still flow).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import pytest
from aiohttp import web

from tests.browser.chromium import CHROMIUM, CHROMIUM_ARGS, Browser
from tests.conftest import skip_or_fail


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
    """Debian's Chromium through Playwright's async API (no browser is downloaded)."""
    if not CHROMIUM.exists():
        skip_or_fail(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        skip_or_fail("Playwright for Python is not installed (pip install playwright)")
        raise
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


async def sibling_host(
    cookies: Iterable[str] = (), html: str = "nothing to see"
) -> tuple[web.AppRunner, int]:
    """``evil.site.localhost``: a page that sets ``cookies`` (raw Set-Cookie values) and
    serves ``html``. The caller cleans the runner up."""
    cookies = tuple(cookies)

    async def page(request: web.Request) -> web.Response:
        response = web.Response(text=html, content_type="text/html")
        for cookie in cookies:
            response.headers.add("Set-Cookie", cookie)
        return response

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]
