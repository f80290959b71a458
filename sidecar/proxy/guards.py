"""The proxy app's middlewares that judge a request before any handler: its host, its size.

Both run for every request aiohttp's server handles on the proxy listener; the lean front
(:mod:`sidecar.web.lean`, :mod:`sidecar.proxy.express`) applies the same two checks
(:func:`~sidecar.proxy.origins.hosts_allowed`, :func:`~sidecar.web.heads.head_size`) and
hands over whatever fails them, so the answer is always the one given here.
"""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from sidecar.proxy.clientaddr import ClientAddresses
from sidecar.proxy.origins import PublicOrigin, hosts_allowed
from sidecar.web import pages
from sidecar.web.heads import head_size


def host_check(
    public: PublicOrigin,
    clients: ClientAddresses,
    any_host: frozenset[str],
    envoy_prefix: str | None,
) -> Middleware:
    """421 for a ``Host`` that is not the public one (:class:`PublicOrigin`), and for a
    trusted proxy's ``X-Forwarded-Host`` or ``Forwarded: host=`` that is not either: the
    upstream builds links from them. ``any_host`` paths (probes, forward-auth) are exempt."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Raw, as written: the decoded path of "/_sidecar%2Fauth" is "/_sidecar/auth", but the
        # router sends that request to the proxy, with its Host, not to forward-auth.
        path = request.rel_url.raw_path
        if path in any_host or (envoy_prefix is not None and path.startswith(envoy_prefix + "/")):
            return await handler(request)
        headers = request.headers
        trusted = clients.trusts(request.remote)
        if not hosts_allowed(
            public,
            headers.getall(hdrs.HOST, ()),
            headers.getall(hdrs.X_FORWARDED_HOST, ()) if trusted else (),
            headers.getall(hdrs.FORWARDED, ()) if trusted else (),
        ):
            return pages.failure(request, 421, "misdirected")
        return await handler(request)

    return middleware


def header_limits(limit: int) -> Middleware:
    """``proxy.max_header_size`` bounds the whole request head, not just one line: a target
    over it is a 414, a head over it a 431 (RFC 6585); nothing reaches the upstream."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if head_size(request.method, request.raw_path, ()) > limit:
            return pages.failure(request, 414, "uri_too_long")
        if head_size(request.method, request.raw_path, request.raw_headers) > limit:
            return pages.failure(request, 431, "headers_too_large")
        return await handler(request)

    return middleware
