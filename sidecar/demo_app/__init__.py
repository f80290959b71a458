"""The bundled demo "legacy" app that ``sidecar demo`` puts behind the sidecar.

It has no login code at all: a static hash-routed page (``#/display/<module>``) and one API,
``GET /api/whoami``, that echoes the identity headers the backend received. Served alone it
shows "no identity"; behind the sidecar it shows the user of the link that was opened.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import hdrs, web

_FILES = {
    "/": ("index.html", "text/html"),
    "/app.js": ("app.js", "text/javascript"),
    "/style.css": ("style.css", "text/css"),
}
_ECHOED_PREFIXES = ("x-forwarded-", "x-request-id", "x-real-ip", "forwarded")
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    hdrs.CACHE_CONTROL: "no-store",
}

LOGOUT_URL = web.AppKey("logout_url", str)


def build_demo_app(*, logout_url: str = "/_sidecar/logout") -> web.Application:
    """The demo app; ``logout_url`` is where its "Log out" button posts (the sidecar's)."""
    app = web.Application()
    app[LOGOUT_URL] = logout_url
    package = resources.files(__name__)
    for path, (name, content_type) in _FILES.items():
        app.router.add_get(path, _static(package.joinpath(name).read_bytes(), content_type))
    app.router.add_get("/api/whoami", whoami)
    return app


def _static(body: bytes, content_type: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type, headers=_SECURITY_HEADERS)

    return handler


async def whoami(request: web.Request) -> web.Response:
    """The identity headers this request carried, as the page shows them."""
    headers = {
        name: value
        for name, value in request.headers.items()
        if name.lower().startswith(_ECHOED_PREFIXES)
    }
    return web.json_response(
        {
            "user": request.headers.get("X-Forwarded-User"),
            "role": request.headers.get("X-Forwarded-Role"),
            "tenant": request.headers.get("X-Forwarded-Tenant"),
            "headers": headers,
            "cookies": sorted(request.cookies),
            "logout_url": request.app[LOGOUT_URL],
        },
        headers=_SECURITY_HEADERS,
    )
