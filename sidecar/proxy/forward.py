"""The hot path: one request in, the same request out to the upstream, the answer streamed back.

Everything that can be decided once is decided in :class:`Forwarder`'s constructor: the
upstream origin, the timeouts, what to do with each request header name (a bounded cache
keyed by the name as received). Per request there is one pass over the headers, one
pooled upstream request, and either one plain :class:`web.Response` (bodies already received
whole, or with a small ``Content-Length``) or a :class:`web.StreamResponse` fed chunk by
chunk as the upstream sends them (large bodies, server-sent events) — nothing is buffered
whole. The upstream's headers go back as sent: aiohttp adds no ``Content-Type``.

Request headers sent upstream:

* every client-supplied copy of an identity header is dropped, in any spelling
  (:func:`~sidecar.proxy.templates.canonical_header`: case and ``_``/``-``), then the session's
  rendered identity headers are added;
* the sidecar's own cookie is cut out of ``Cookie``; other cookies pass unchanged;
* hop-by-hop headers (RFC 9110 §7.6.1: ``Connection`` and every header it names,
  ``Keep-Alive``, ``Proxy-Connection``, ``TE``, ``Trailer``, ``Transfer-Encoding``,
  ``Upgrade``) and ``Expect`` (the sidecar already answered ``100 Continue``) are dropped;
* ``X-Forwarded-For/Proto/Host``: appended to when the peer is a trusted proxy, otherwise
  replaced (and ``Forwarded``/``X-Real-IP`` and the path overrides ``X-Original-URL``,
  ``X-Rewrite-URL``, ``X-Original-URI``, ``X-Forwarded-Uri`` from an untrusted peer are
  dropped).

The request head is built from the client's raw header bytes and sent as is through
:class:`~sidecar.proxy.pool.UpstreamPool`: nothing is added (no ``User-Agent``, no
``Accept-Encoding``), nothing is decompressed (``Content-Encoding`` passes through), no
cookie jar, no redirects followed. The path and query reach the upstream byte for byte.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Iterable
from typing import Final

import aiohttp
from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict
from yarl import URL

from sidecar.config import Config, Network
from sidecar.proxy.pool import UpstreamError, UpstreamPool, UpstreamResponse, UpstreamTimeout
from sidecar.proxy.templates import canonical_header
from sidecar.proxy.websocket import Alive, relay_websocket
from sidecar.sessions import split_cookie_header
from sidecar.telemetry import metrics
from sidecar.telemetry.context import current_request_id
from sidecar.web import pages
from sidecar.web.accesslog import REQUEST_ID, set_upstream_time

LOG = logging.getLogger("sidecar.forward")

# Small bodies with a Content-Length are read whole and answered with a plain Response,
# which costs less per request than a StreamResponse; anything bigger streams.
SMALL_BODY: Final = 64 * 1024

HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
     "upgrade"}
)  # fmt: skip
_FORWARDING: Final = frozenset(
    {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip",
     # Path overrides (IIS, Symfony, Zend, nginx auth_request): an upstream that honours
     # them would serve a path the role rules never judged.
     "x-original-url", "x-rewrite-url", "x-original-uri", "x-forwarded-uri",
     # Prefix, port and scheme hints (Spring, Symfony, Rails, Werkzeug's ProxyFix): an
     # upstream that honours them builds absolute URLs and redirects from them.
     "x-forwarded-prefix", "x-forwarded-port", "x-forwarded-server", "x-forwarded-scheme",
     "x-forwarded-ssl", "x-url-scheme", "front-end-https"}
)  # fmt: skip
# Request-header actions, decided once per header name as received.
_KEEP, _DROP, _COOKIE, _CONNECTION, _FORWARDED, _HOST, _LENGTH = range(7)
_NAME_CACHE_SIZE: Final = 2048
_FRAMING: Final = frozenset({b"host", b"content-length", b"transfer-encoding"})
_QUIET_TOKENS: Final = frozenset({b"keep-alive", b"close", b"upgrade", b""})
_UPSTREAM_ERRORS = (UpstreamError, aiohttp.ClientError, HttpProcessingError, OSError)

Header = tuple[bytes, bytes]


class Forwarder:
    """Forwards requests to the one upstream through one shared connection pool."""

    def __init__(self, config: Config) -> None:
        px = config.proxy
        upstream = URL(px.upstream)
        self._origin = upstream.origin()
        self._base_path = upstream.raw_path.rstrip("/").encode()
        self._default_host = (upstream.raw_authority or "").encode("idna")
        self._cookie_name = config.session.cookie_name
        self._session_check = config.session.cache_ttl
        self._own_cookie = self._cookie_name.lower()
        self._identity = config.identity_header_names
        self._trusted: tuple[Network, ...] = px.trusted_proxies
        self._trust_cache: dict[str, bool] = {}
        self._actions: dict[bytes, int] = {}
        self._response_actions: dict[str, int] = {}
        self._header_timeout = px.upstream_timeout
        self._connect_timeout = px.connect_timeout
        self._max_connections = px.max_connections
        self._max_field_size = max(8190, px.max_header_size)
        self._pool: UpstreamPool | None = None
        self._ws_session: aiohttp.ClientSession | None = None

    async def cleanup_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """Open the upstream pool for the app's lifetime (``app.cleanup_ctx.append``)."""
        self._pool = UpstreamPool(
            self._origin.host or "127.0.0.1",
            self._origin.port or 80,
            tls=self._origin.scheme == "https",
            limit=self._max_connections,
            connect_timeout=self._connect_timeout,
            response_timeout=self._header_timeout,
            max_head_size=max(64 * 1024, self._max_field_size),
        )
        # WebSocket handshakes are rare and long-lived: aiohttp's client does them.
        self._ws_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout),
            max_field_size=self._max_field_size,
            max_line_size=self._max_field_size,
            trust_env=False,
        )
        try:
            yield
        finally:
            await self._pool.close()
            await self._ws_session.close()
            self._pool = self._ws_session = None

    # -- trust -----------------------------------------------------------------------
    def peer_is_trusted(self, peer: str | None) -> bool:
        """Whether ``peer`` (the socket's address) is a configured trusted proxy."""
        if not self._trusted or not peer:
            return False
        trusted = self._trust_cache.get(peer)
        if trusted is None:
            try:
                address = ipaddress.ip_address(peer)
            except ValueError:
                trusted = False
            else:
                trusted = any(address in net for net in self._trusted)
            if len(self._trust_cache) < _NAME_CACHE_SIZE:
                self._trust_cache[peer] = trusted
        return trusted

    def client_address(self, request: web.BaseRequest) -> str:
        """The client's address: the peer, or through trusted proxies the nearest
        untrusted hop of ``X-Forwarded-For``."""
        peer = request.remote or ""
        if not self.peer_is_trusted(peer):
            return peer
        hops = [
            h.strip()
            for v in request.headers.getall(hdrs.X_FORWARDED_FOR, ())
            for h in v.split(",")
        ]
        for hop in reversed(hops):
            if hop and not self.peer_is_trusted(hop):
                return hop
        return peer

    # -- headers ---------------------------------------------------------------------
    def _classify(self, name: bytes) -> int:
        canonical = canonical_header(name.decode("latin-1"))
        if canonical == "connection":
            action = _CONNECTION
        elif (
            canonical in self._identity
            or canonical in HOP_BY_HOP
            or canonical in ("expect", REQUEST_ID.lower())
            or canonical.startswith("sec-websocket-")
        ):
            action = _DROP
        elif canonical == "cookie":
            action = _COOKIE
        elif canonical in _FORWARDING:
            action = _FORWARDED
        elif canonical == "host":
            action = _HOST
        elif canonical == "content-length":
            action = _LENGTH
        else:
            action = _KEEP
        if len(self._actions) < _NAME_CACHE_SIZE:
            self._actions[name] = action
        return action

    def upstream_headers(
        self, request: web.BaseRequest, identity: Iterable[tuple[str, str]]
    ) -> tuple[list[Header], bool]:
        """The headers to send upstream, and whether the client gave a Content-Length."""
        actions = self._actions
        out: list[Header] = []
        named: set[bytes] | None = None
        trusted = self.peer_is_trusted(request.remote)
        xff: list[bytes] = []
        proto = forwarded_host = host = None
        has_length = False
        for name, value in request.raw_headers:
            action = actions.get(name)
            if action is None:
                action = self._classify(name)
            if action is _KEEP:
                out.append((name, value))
            elif action is _HOST:
                host = value
                out.append((name, value))
            elif action is _LENGTH:
                has_length = True
                out.append((name, value))
            elif action is _COOKIE:
                _, rest = split_cookie_header(value.decode("latin-1"), self._cookie_name)
                if rest:
                    out.append((name, rest.encode("latin-1")))
            elif action is _CONNECTION:
                tokens = {t.strip().lower() for t in value.split(b",")} - _QUIET_TOKENS
                if tokens:
                    named = (named or set()) | tokens
            elif action is _FORWARDED and trusted:
                lower = name.lower()
                if lower == b"x-forwarded-for":
                    xff.append(value)
                elif lower == b"x-forwarded-proto":
                    proto = proto or value
                elif lower == b"x-forwarded-host":
                    forwarded_host = forwarded_host or value
                elif b"_" not in lower and b"." not in lower:
                    # Only the canonical spelling: a CGI/WSGI upstream would merge
                    # "X_Forwarded_For" with what the sidecar sets into one variable.
                    out.append((name, value))
        if named:
            # Headers the client's Connection names are hop-by-hop too — but never Host
            # or the body's framing ("Connection: Content-Length" would send the body
            # unframed: a second, smuggled request), nor what the sidecar adds below.
            named -= _FRAMING
            out = [(n, v) for n, v in out if n.lower() not in named]
        if host is None:
            host = self._default_host
            out.append((b"Host", host))
        xff.append((request.remote or "").encode())
        out.append((b"X-Forwarded-For", b", ".join(xff)))
        out.append((b"X-Forwarded-Proto", proto or request.scheme.encode()))
        out.append((b"X-Forwarded-Host", forwarded_host or host))
        request_id = current_request_id()
        if request_id is not None:
            out.append((b"X-Request-Id", request_id.encode()))
        for label, text in identity:
            out.append((label.encode(), text.encode()))
        return out, has_length

    def _response_headers(self, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """Upstream response headers minus hop-by-hop ones (and any attempt by the upstream
        to set the sidecar's own session cookie)."""
        actions = self._response_actions
        out: list[tuple[str, str]] = []
        named: set[str] | None = None
        for name, value in headers:
            action = actions.get(name)
            if action is None:
                action = _response_action(name.lower())
                if len(actions) < _NAME_CACHE_SIZE:
                    actions[name] = action
            if action is _KEEP:
                out.append((name, value))
            elif action is _COOKIE:
                # Browsers trim the name: "sidecar_session =x" would still set ours.
                if value.partition("=")[0].strip().lower() != self._own_cookie:
                    out.append((name, value))
            elif action is _CONNECTION:
                named = (named or set()) | {t.strip().lower() for t in value.split(",")}
        if named:
            out = [(n, v) for n, v in out if n.lower() not in named]
        return out

    # -- HTTP ------------------------------------------------------------------------
    async def forward(
        self, request: web.Request, identity: Iterable[tuple[str, str]]
    ) -> web.StreamResponse:
        """Send ``request`` upstream and stream the answer back (502/504 pages on failure)."""
        pool = self._pool
        if pool is None:
            raise RuntimeError("Forwarder used outside its cleanup_ctx")
        headers, has_length = self.upstream_headers(request, identity)
        chunked = request.body_exists and not has_length
        if chunked:
            headers.append((b"Transfer-Encoding", b"chunked"))
        head = b"".join(
            [
                request.method.encode(),
                b" ",
                self._base_path,
                request.raw_path.encode("utf-8", "surrogateescape"),
                b" HTTP/1.1\r\n",
                *[name + b": " + value + b"\r\n" for name, value in headers],
                b"\r\n",
            ]
        )
        body = request.content.iter_any() if request.body_exists else None
        started = time.perf_counter()
        try:
            # The pool's deadline for the response head counts from the last body byte sent.
            upstream = await pool.request(request.method, head, body, chunked=chunked)
        except UpstreamTimeout:
            set_upstream_time(time.perf_counter() - started)
            LOG.warning("upstream did not answer within %ss", self._header_timeout)
            return pages.failure(request, 504, "gateway_timeout")
        except UpstreamError as exc:
            set_upstream_time(time.perf_counter() - started)
            LOG.warning("upstream request failed: %s", exc)
            return pages.failure(request, 502, "bad_gateway")
        elapsed = time.perf_counter() - started
        set_upstream_time(elapsed)
        metrics.observe_upstream(elapsed)
        out_headers = self._response_headers(upstream.headers)
        if not upstream.complete:
            length = upstream.content_length
            if length is None or length > SMALL_BODY:
                return await _stream(request, upstream, out_headers)
        try:
            payload = await upstream.read()
        except UpstreamError as exc:
            LOG.warning("upstream response failed: %s", exc)
            return pages.failure(request, 502, "bad_gateway")
        finally:
            upstream.release()
        return _Relayed(
            status=upstream.status, reason=upstream.reason, headers=out_headers, body=payload
        )

    # -- WebSocket -------------------------------------------------------------------
    async def forward_websocket(
        self,
        request: web.Request,
        identity: Iterable[tuple[str, str]],
        alive: Alive | None = None,
    ) -> web.StreamResponse:
        """Open the same WebSocket upstream (with identity headers) and relay messages;
        ``alive`` (checked every ``session.cache_ttl``) ends the relay with the session."""
        session = self._ws_session
        if session is None:
            raise RuntimeError("Forwarder used outside its cleanup_ctx")
        pairs, _ = self.upstream_headers(request, identity)
        headers: CIMultiDict[str] = CIMultiDict(
            (name.decode("latin-1"), value.decode("utf-8", "replace")) for name, value in pairs
        )
        url = URL(str(self._origin) + self._base_path.decode() + request.raw_path, encoded=True)
        return await relay_websocket(
            session,
            url,
            request,
            headers,
            self._header_timeout,
            alive=alive,
            check_every=self._session_check,
        )


def _response_action(lower: str) -> int:
    if lower == "connection":
        return _CONNECTION
    if lower in HOP_BY_HOP:
        return _DROP
    return _COOKIE if lower == "set-cookie" else _KEEP


class _RelayedStream(web.StreamResponse):
    """An upstream answer as is: aiohttp adds ``Content-Type: application/octet-stream``
    to a body without one, which would make browsers download what they would sniff.
    (``_prepare_headers`` is aiohttp's hook; tests/test_upstream.py pins the behaviour.)"""

    async def _prepare_headers(self) -> None:
        typed = hdrs.CONTENT_TYPE in self.headers
        await super()._prepare_headers()
        if not typed:
            self.headers.popall(hdrs.CONTENT_TYPE, None)


class _Relayed(_RelayedStream, web.Response):
    __doc__ = _RelayedStream.__doc__


async def _stream(
    request: web.Request, upstream: UpstreamResponse, headers: list[tuple[str, str]]
) -> web.StreamResponse:
    response = _RelayedStream(status=upstream.status, reason=upstream.reason, headers=headers)
    try:
        await response.prepare(request)
        async for chunk in upstream.chunks():
            await response.write(chunk)
    except _UPSTREAM_ERRORS as exc:
        # The upstream broke off, or the client left. Either way a truncated body must not
        # look complete: drop the client connection instead of ending the response.
        LOG.info("stream interrupted: %s", type(exc).__name__)
        if request.transport is not None:
            request.transport.abort()
    finally:
        upstream.release()
    return response
