"""Which request a forward-auth sub-request asks about (:mod:`sidecar.proxy.forward_auth`).

:func:`original_request` reads the original method, target, host and scheme from the
headers each ingress writes — only from a trusted peer — and refuses (:class:`BadOriginal`)
two spellings of one fact that disagree or a header sent twice: the ingress forwards one
request, and the answer must be about that one. It reads a :class:`SubRequest`: an aiohttp
request, or the lean front's reading of one (:mod:`sidecar.proxy.auth_lane`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from aiohttp import hdrs
from multidict import CIMultiDict, CIMultiDictProxy

_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")  # RFC 9110 token
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](?::[0-9]{1,5})?")


class SubRequest(Protocol):
    """What forward-auth reads of a sub-request: an aiohttp request, or the lean front's
    reading of one (:mod:`sidecar.proxy.auth_lane`)."""

    @property
    def method(self) -> str: ...
    @property
    def raw_path(self) -> str: ...
    @property
    def headers(self) -> CIMultiDictProxy[str] | CIMultiDict[str]: ...
    @property
    def remote(self) -> str | None: ...
    @property
    def scheme(self) -> str: ...


class BadOriginal(ValueError):
    """The trusted proxy's description of the original request is unusable or ambiguous."""


@dataclass(frozen=True, slots=True)
class Original:
    """The request the ingress asks about: method, raw target (path and query), host, scheme."""

    method: str
    target: str
    host: str | None
    scheme: str


def _single(request: SubRequest, name: str) -> str | None:
    values = request.headers.getall(name, ())
    if len(values) > 1:
        raise BadOriginal(f"{name} sent {len(values)} times")
    return values[0] if values else None


def _agree(what: str, *values: str | None) -> str | None:
    given = {v for v in values if v is not None}
    if len(given) > 1:
        raise BadOriginal(f"the original {what} is given differently by two headers")
    return given.pop() if given else None


def original_request(
    request: SubRequest, *, trusted: bool, envoy_target: str | None = None
) -> Original:
    """Read the original request from a trusted proxy's headers (see the module docstring).

    ``envoy_target`` is what followed ``forward_auth.envoy_path_prefix`` in the sub-request's
    path. Untrusted: the sub-request itself. Raises :class:`BadOriginal`."""
    own_host = request.headers.get(hdrs.HOST)
    if not trusted:
        return Original(request.method, request.raw_path, own_host, request.scheme)
    forwarded_host = _single(request, "X-Forwarded-Host")
    forwarded_proto = _single(request, hdrs.X_FORWARDED_PROTO)
    target: str | None
    method: str | None
    if envoy_target is not None:
        # Envoy's check request keeps the method and :authority of the original.
        target, method, host, scheme = envoy_target, request.method, own_host, forwarded_proto
    else:
        url_target: str | None = None
        url_host: str | None = None
        url_scheme: str | None = None
        full = _single(request, "X-Original-URL")
        if full is not None:
            url_scheme, url_host, url_target = _split_original_url(full)
        target = _agree(
            "target",
            url_target,
            _single(request, "X-Original-URI"),
            _single(request, "X-Forwarded-Uri"),
        )
        method = _agree(
            "method",
            _single(request, "X-Original-Method"),
            _single(request, "X-Forwarded-Method"),
        )
        host = _agree("host", url_host, forwarded_host) or own_host
        scheme = _agree("scheme", url_scheme, forwarded_proto)
        target = target if target is not None else request.raw_path
        method = method if method is not None else request.method
    if target is None or method is None or not target.startswith("/"):
        raise BadOriginal("the original target is not an absolute path")
    if not _METHOD.fullmatch(method):
        raise BadOriginal("the original method is not an HTTP token")
    if host is not None and not _HOST.fullmatch(host):
        raise BadOriginal("the original host is not a host[:port]")
    scheme = (scheme or request.scheme).lower()
    if scheme not in ("http", "https"):
        raise BadOriginal("the original scheme is neither http nor https")
    return Original(method.upper(), target, host, scheme)


def websocket_handshake(request: SubRequest) -> bool:
    """Whether the sub-request describes a WebSocket handshake. ``Upgrade`` is hop-by-hop
    (nginx, Traefik and Caddy drop it), ``Sec-WebSocket-Key`` is not: browsers always send it."""
    upgrade = request.headers.get(hdrs.UPGRADE, "")
    return hdrs.SEC_WEBSOCKET_KEY in request.headers or upgrade.lower() == "websocket"


_ORIGINAL_URL = re.compile(r"(https?)://([^/]*)(/.*)", re.IGNORECASE | re.DOTALL)


def _split_original_url(full: str) -> tuple[str, str, str]:
    """``X-Original-URL`` as ingress-nginx builds it (``$scheme://$http_host$request_uri``):
    the scheme, the host, and everything after the host as the target.

    ``$http_host`` is the client's ``Host``, which nginx routes by its name alone: a
    ``Host: app.example.com:80?`` would make a URL parser read the ``$request_uri`` after
    it as a query (or, after ``#``, a fragment) and judge ``/`` instead. So the host must
    be a plain ``host[:port]`` up to the first ``/``, and the target is the rest, verbatim."""
    match = _ORIGINAL_URL.fullmatch(full)
    if match is None or not _HOST.fullmatch(match[2]):
        raise BadOriginal("X-Original-URL is not http(s)://host[:port]/path")
    return match[1].lower(), match[2], match[3]
