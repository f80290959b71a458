"""Real sites for browser tests of cross-site rules: a sibling host.

``*.localhost`` names resolve to loopback inside Chromium and count as potentially
trustworthy, so ``http://app.site.localhost:<port>`` behaves for cookies and fetch metadata
as a deployed https origin would, and ``http://evil.site.localhost:<port>`` is another
origin on the same site (a sibling subdomain: SameSite=Lax cookies still flow).
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web


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
