"""The auth links' routes as every served process registers them, and GoTrue's error shape.

``POST /admin/generate_link`` and ``<prefix>/verify`` are always routed, but most
deployments never call them: their handlers (:mod:`sidecar.links.http`) and what only they
use (:mod:`~sidecar.links.generate`, :mod:`~sidecar.links.verify`,
:mod:`~sidecar.links.request`, :mod:`~sidecar.links.passwords`, cryptography's scrypt and
HKDF) are imported at the first request to one of them, not at start-up: ~0.3 MiB of
module objects a process that serves no auth link never holds. That first request pays
the import (a few milliseconds, in the loop, once).

:func:`gotrue_error` lives here because the admin guards answer every refusal on the
GoTrue-style routes with it, whether or not those modules were imported.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import hdrs, web

from sidecar.links import errorcodes as codes
from sidecar.web.appkeys import SERVICES


def register_admin(app: web.Application) -> None:
    """Add ``POST /admin/generate_link`` to the admin app (which holds ``SERVICES``)."""
    app.router.add_post("/admin/generate_link", generate_link)


def register_verify(app: web.Application) -> None:
    """Add ``<prefix>/verify`` to the proxy app; ``app[SERVICES]``, ``app[SESSIONS]``,
    ``app[CLIENT_ADDRESSES]`` and ``app[FAILED_REDEMPTIONS]`` must already be set."""
    services = app[SERVICES]
    app.router.add_route("*", services.config.proxy.prefix + "/verify", verify)


async def generate_link(request: web.Request) -> web.Response:
    """:func:`sidecar.links.http.generate_link`, imported when first asked for."""
    from sidecar.links import http

    return await http.generate_link(request)


async def verify(request: web.Request) -> web.StreamResponse:
    """:func:`sidecar.links.http.verify`, imported when first asked for."""
    from sidecar.links import http

    return await http.verify(request)


def gotrue_error(
    status: int,
    msg: str,
    details: str,
    *,
    error_code: str | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, object] | None = None,
) -> web.Response:
    """GoTrue's error ``{"code", "error_code", "msg", "details"}`` — the one place that shape
    is built (the links routes' own answers, and the admin app's refusals on its GoTrue-style
    routes). ``error_code`` defaults to the status's (:mod:`sidecar.links.errorcodes`)."""
    code = error_code or codes.for_status(status)
    body = {"code": status, "error_code": code, "msg": msg, "details": details, **(extra or {})}
    out = {hdrs.CACHE_CONTROL: "no-store", **(headers or {})}
    return web.json_response(body, status=status, headers=out)
