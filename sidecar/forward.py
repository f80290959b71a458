"""The hot path: one request in, the same request out to the upstream, the answer streamed back.

Everything that can be decided once is decided in :class:`Forwarder`'s constructor: the
upstream origin, the timeouts, what to do with each request header name (a bounded cache
keyed by the name as received). Per request there is one pass over the headers, one
pooled upstream request, and either one plain :class:`web.Response` (small bodies with a
``Content-Length``) or a :class:`web.StreamResponse` fed chunk by chunk as the upstream
sends them (large bodies, chunked bodies, server-sent events) — nothing is buffered whole.

Request headers sent upstream:

* every client-supplied copy of an identity header is dropped, in any spelling
  (:func:`~sidecar.templates.canonical_header`: case and ``_``/``-``), then the session's
  rendered identity headers are added;
* the sidecar's own cookie is cut out of ``Cookie``; other cookies pass unchanged;
* hop-by-hop headers (RFC 9110 §7.6.1: ``Connection`` and every header it names,
  ``Keep-Alive``, ``Proxy-Connection``, ``TE``, ``Trailer``, ``Transfer-Encoding``,
  ``Upgrade``) and ``Expect`` (the sidecar already answered ``100 Continue``) are dropped;
* ``X-Forwarded-For/Proto/Host``: appended to when the peer is a trusted proxy, otherwise
  replaced (and ``Forwarded``/``X-Real-IP`` from an untrusted peer are dropped).

The client session adds nothing of its own: no ``User-Agent``/``Accept``/``Accept-Encoding``,
no decompression (``Content-Encoding`` passes through), no cookie jar, no redirects.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Final

import aiohttp
from aiohttp import StreamReader, hdrs, web
from multidict import CIMultiDict
from yarl import URL

from sidecar import pages
from sidecar.accesslog import upstream_trace
from sidecar.config import Config, Network
from sidecar.sessions import split_cookie_header
from sidecar.templates import canonical_header

LOG = logging.getLogger("sidecar.forward")

# Small bodies with a Content-Length are read whole and answered with a plain Response,
# which costs less per request than a StreamResponse; anything bigger streams.
SMALL_BODY: Final = 64 * 1024

HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_FORWARDING: Final = frozenset(
    {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip"}
)
# Request-header actions, decided once per header name.
_KEEP, _DROP, _COOKIE, _CONNECTION, _FORWARDED = range(5)
_NAME_CACHE_SIZE: Final = 2048
_NO_BODY: Final = frozenset({204, 304})


class Forwarder:
    """Forwards requests to the one upstream through one shared connection pool."""

    def __init__(self, config: Config) -> None:
        px = config.proxy
        upstream = URL(px.upstream)
        self._origin = str(upstream.origin())
        self._base_path = upstream.raw_path.rstrip("/")
        self._cookie_name = config.session.cookie_name
        self._identity = config.identity_header_names
        self._trusted: tuple[Network, ...] = px.trusted_proxies
        self._trust_cache: dict[str, bool] = {}
        self._actions: dict[str, int] = {}
        self._header_timeout = px.upstream_timeout
        self._connect_timeout = px.connect_timeout
        self._max_connections = px.max_connections
        self._max_field_size = max(8190, px.max_header_size)
        self._session: aiohttp.ClientSession | None = None

    async def cleanup_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """Open the upstream pool for the app's lifetime (``app.cleanup_ctx.append``)."""
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=0,
            keepalive_timeout=30.0,
            ttl_dns_cache=60,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=None, sock_connect=self._connect_timeout, sock_read=None
            ),
            max_field_size=self._max_field_size,
            max_line_size=self._max_field_size,
            requote_redirect_url=False,
            trust_env=False,
            trace_configs=[upstream_trace()],
        )
        try:
            yield
        finally:
            await self._session.close()
            self._session = None

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
    def _action(self, name: str) -> int:
        action = self._actions.get(name)
        if action is None:
            canonical = canonical_header(name)
            if canonical in self._identity or canonical in HOP_BY_HOP or canonical == "expect":
                action = _CONNECTION if canonical == "connection" else _DROP
            elif canonical == "cookie":
                action = _COOKIE
            elif canonical in _FORWARDING:
                action = _FORWARDED
            else:
                action = _KEEP
            if len(self._actions) < _NAME_CACHE_SIZE:
                self._actions[name] = action
        return action

    def upstream_headers(
        self,
        request: web.BaseRequest,
        identity: Iterable[tuple[str, str]],
        *,
        websocket: bool = False,
    ) -> CIMultiDict[str]:
        """The headers to send upstream for ``request`` with the given identity headers."""
        out: CIMultiDict[str] = CIMultiDict()
        named: list[str] | None = None
        trusted = self.peer_is_trusted(request.remote)
        xff: list[str] = []
        proto = host = None
        for name, value in request.headers.items():
            action = self._action(name)
            if action == _KEEP:
                if websocket and name.lower().startswith("sec-websocket-"):
                    continue
                out.add(name, value)
            elif action == _COOKIE:
                _, rest = split_cookie_header(value, self._cookie_name)
                if rest:
                    out.add(name, rest)
            elif action == _CONNECTION:
                named = (named or []) + [t.strip().lower() for t in value.split(",")]
            elif action == _FORWARDED and trusted:
                lower = name.lower()
                if lower == "x-forwarded-for":
                    xff.append(value)
                elif lower == "x-forwarded-proto":
                    proto = proto or value
                elif lower == "x-forwarded-host":
                    host = host or value
                else:
                    out.add(name, value)
        if named:
            for token in named:
                # Connection may not remove what the sidecar itself sets below.
                if token and token not in self._identity:
                    out.popall(token, None)
        xff.append(request.remote or "")
        out[hdrs.X_FORWARDED_FOR] = ", ".join(xff)
        out[hdrs.X_FORWARDED_PROTO] = proto or request.scheme
        out[hdrs.X_FORWARDED_HOST] = host or request.host
        for name, value in identity:
            out.add(name, value)
        return out

    def _url(self, request: web.BaseRequest) -> URL:
        return URL(self._origin + self._base_path + request.raw_path, encoded=True)

    # -- HTTP ------------------------------------------------------------------------
    async def forward(
        self, request: web.Request, identity: Iterable[tuple[str, str]]
    ) -> web.StreamResponse:
        """Send ``request`` upstream and stream the answer back (502/504 pages on failure)."""
        session = self._session
        if session is None:
            raise RuntimeError("Forwarder used outside its cleanup_ctx")
        headers = self.upstream_headers(request, identity)
        try:
            async with asyncio.timeout(self._header_timeout) as timer:
                body = (
                    _body(request.content, timer, self._header_timeout)
                    if request.body_exists
                    else None
                )
                upstream = await session.request(
                    request.method,
                    self._url(request),
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                )
        except TimeoutError:
            LOG.warning("upstream did not answer within %ss", self._header_timeout)
            return pages.failure(request, 504, "gateway_timeout")
        except (aiohttp.ClientError, OSError) as exc:
            LOG.warning("upstream request failed: %s", type(exc).__name__)
            return pages.failure(request, 502, "bad_gateway")
        try:
            out_headers = _response_headers(upstream.raw_headers, self._cookie_name)
            length = upstream.content_length
            if (
                (length is not None and length <= SMALL_BODY)
                or request.method == hdrs.METH_HEAD
                or upstream.status in _NO_BODY
            ):
                payload = await upstream.read()
                return web.Response(
                    status=upstream.status,
                    reason=upstream.reason,
                    headers=out_headers,
                    body=payload,
                )
        except (aiohttp.ClientError, OSError) as exc:
            upstream.release()
            LOG.warning("upstream response failed: %s", type(exc).__name__)
            return pages.failure(request, 502, "bad_gateway")
        return await _stream(request, upstream, out_headers)

    # -- WebSocket -------------------------------------------------------------------
    async def forward_websocket(
        self, request: web.Request, identity: Iterable[tuple[str, str]]
    ) -> web.StreamResponse:
        """Open the same WebSocket upstream (with identity headers) and relay messages."""
        session = self._session
        if session is None:
            raise RuntimeError("Forwarder used outside its cleanup_ctx")
        headers = self.upstream_headers(request, identity, websocket=True)
        protocols = [
            p.strip()
            for v in request.headers.getall(hdrs.SEC_WEBSOCKET_PROTOCOL, ())
            for p in v.split(",")
            if p.strip()
        ]
        try:
            async with asyncio.timeout(self._header_timeout):
                upstream = await session.ws_connect(
                    self._url(request),
                    headers=headers,
                    protocols=protocols,
                    autoping=True,
                    compress=0,
                    max_msg_size=0,
                )
        except TimeoutError:
            LOG.warning("upstream did not answer within %ss", self._header_timeout)
            return pages.failure(request, 504, "gateway_timeout")
        except (aiohttp.ClientError, OSError) as exc:
            LOG.warning("upstream websocket failed: %s", type(exc).__name__)
            return pages.failure(request, 502, "bad_gateway")
        try:
            client = web.WebSocketResponse(
                protocols=(upstream.protocol,) if upstream.protocol else (),
                autoping=True,
                compress=False,
                max_msg_size=0,
            )
            await client.prepare(request)
            await _relay(client, upstream)
            return client
        finally:
            await upstream.close()


async def _body(
    content: StreamReader, timer: asyncio.Timeout, seconds: float
) -> AsyncIterator[bytes]:
    """The request body as it arrives. The upstream's time to answer counts from the last
    byte sent, so a long upload is not a slow upstream: each chunk pushes the deadline."""
    loop = asyncio.get_running_loop()
    async for chunk in content.iter_any():
        timer.reschedule(loop.time() + seconds)
        yield chunk


async def _stream(
    request: web.Request, upstream: aiohttp.ClientResponse, headers: CIMultiDict[str]
) -> web.StreamResponse:
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    try:
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
    except (aiohttp.ClientError, OSError) as exc:
        # The upstream broke off, or the client left. Either way a truncated body must not
        # look complete: drop the client connection instead of ending the response.
        LOG.info("stream interrupted: %s", type(exc).__name__)
        if request.transport is not None:
            request.transport.abort()
    finally:
        upstream.release()
    return response


async def _relay(client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse) -> None:
    async def pump(
        src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
        dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    ) -> None:
        async for msg in src:
            if msg.type is aiohttp.WSMsgType.TEXT:
                await dst.send_str(msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await dst.send_bytes(msg.data)
        code = src.close_code if src.close_code and src.close_code != 1006 else 1000
        await dst.close(code=code)

    tasks = [
        asyncio.create_task(pump(client, upstream)),
        asyncio.create_task(pump(upstream, client)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()


def _response_headers(raw: Iterable[tuple[bytes, bytes]], cookie_name: str) -> CIMultiDict[str]:
    """Upstream response headers minus hop-by-hop ones (and any attempt by the upstream
    to set the sidecar's own session cookie)."""
    out: CIMultiDict[str] = CIMultiDict()
    named: list[str] | None = None
    own_cookie = cookie_name.lower() + "="
    for raw_name, raw_value in raw:
        name = raw_name.decode("latin-1")
        value = raw_value.decode("latin-1")
        lower = name.lower()
        if lower in HOP_BY_HOP:
            if lower == "connection":
                named = (named or []) + [t.strip().lower() for t in value.split(",")]
            continue
        if lower == "set-cookie" and value.lstrip().lower().startswith(own_cookie):
            continue
        out.add(name, value)
    if named:
        for token in named:
            if token:
                out.popall(token, None)
    return out
