"""The hot path: one request in, the same request out to the upstream, the answer streamed back.

Everything that can be decided once is decided in :class:`Forwarder`'s constructor: the
upstream origin, the timeouts, the header rules (:class:`~sidecar.proxy.headers.HeaderPolicy`:
what is dropped, added or rewritten on the way up and down). Per request there is one
pass over the headers, one pooled upstream request, and either one plain
:class:`web.Response` (bodies already received whole, or with a small ``Content-Length``)
or a :class:`web.StreamResponse` fed chunk by chunk as the upstream sends them (large
bodies, server-sent events) — nothing is buffered whole. The upstream's headers go back
as sent: aiohttp adds no ``Content-Type``.

The request head is built from the client's raw header bytes and sent as is through
:class:`~sidecar.proxy.pool.UpstreamPool`: nothing is added (no ``User-Agent``, no
``Accept-Encoding``), nothing is decompressed (``Content-Encoding`` passes through), no
cookie jar, no redirects followed. The path and query reach the upstream byte for byte.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Final

import aiohttp
from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict
from yarl import URL

from sidecar.config import Config
from sidecar.proxy.headers import Header, HeaderPolicy, request_head
from sidecar.proxy.pool import (
    UpstreamBodyTimeout,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeout,
)
from sidecar.proxy.websocket import Alive, relay_websocket
from sidecar.session_cookies import RequestCookies
from sidecar.telemetry import metrics
from sidecar.web import pages
from sidecar.web.accesslog import set_upstream_error, set_upstream_time

LOG = logging.getLogger("sidecar.forward")

# Small bodies with a Content-Length are read whole and answered with a plain Response,
# which costs less per request than a StreamResponse; anything bigger streams.
SMALL_BODY: Final = 64 * 1024

UPSTREAM_ERRORS = (UpstreamError, aiohttp.ClientError, HttpProcessingError, OSError)


class Forwarder:
    """Forwards requests to the one upstream through one shared connection pool."""

    def __init__(self, config: Config, headers: HeaderPolicy) -> None:
        px = config.proxy
        upstream = URL(px.upstream)
        self._origin = upstream.origin()
        self._base_path = upstream.raw_path.rstrip("/").encode()
        self.headers = headers
        self._session_check = config.session.cache_ttl
        self._header_timeout = px.upstream_timeout
        self._stream_idle_timeout = px.stream_idle_timeout
        self._send_timeout = px.send_timeout
        self._connect_timeout = px.connect_timeout
        self._max_connections = px.max_connections
        self._max_idle = px.max_idle_connections
        self._idle_timeout = px.upstream_keepalive_timeout
        self._max_field_size = max(8190, px.max_header_size)
        # The upstream pool, None outside the app's lifetime (cleanup_ctx). An attribute,
        # not a property: the lean front reads it per request, from compiled code.
        self.pool: UpstreamPool | None = None
        self._ws_session: aiohttp.ClientSession | None = None

    def configure(self, config: Config, headers: HeaderPolicy) -> None:
        """Take a reloaded config's header policy and session check; the upstream and its
        pool stay (they need a restart: :data:`sidecar.reload.RESTART_ONLY`)."""
        self.headers = headers
        self._session_check = config.session.cache_ttl

    async def cleanup_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """Open the upstream pool for the app's lifetime (``app.cleanup_ctx.append``)."""
        self.pool = UpstreamPool(
            self._origin.host or "127.0.0.1",
            self._origin.port or 80,
            tls=self._origin.scheme == "https",
            limit=self._max_connections,
            connect_timeout=self._connect_timeout,
            response_timeout=self._header_timeout,
            max_head_size=max(64 * 1024, self._max_field_size),
            stream_idle_timeout=self._stream_idle_timeout,
            max_idle=self._max_idle,
            idle_timeout=self._idle_timeout,
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
            await self.pool.close()
            await self._ws_session.close()
            self.pool = self._ws_session = None

    # -- HTTP ------------------------------------------------------------------------
    async def forward(
        self,
        request: web.Request,
        cookies: RequestCookies,
        identity: Iterable[tuple[str, str]],
    ) -> web.StreamResponse:
        """Send ``request`` upstream and stream the answer back (502/504 pages on failure).

        ``cookies`` are the request's, as read for the session lookup; identity headers
        are added after the client's copies of them are dropped."""
        headers, has_length = self.headers.request_headers(request, cookies, identity)
        chunked = request.body_exists and not has_length
        if chunked:
            headers.append((b"Transfer-Encoding", b"chunked"))
        target = request.raw_path.encode("utf-8", "surrogateescape")
        head = self.upstream_head(request.method, target, headers)
        ready, body = _in_hand(request.content) if request.body_exists else (b"", None)
        upstream = await self.exchange(request.method, head, body, chunked, ready=ready)
        if isinstance(upstream, Failure):
            return pages.failure(request, upstream.status, upstream.reason)
        out_headers = self.headers.response_headers(upstream.headers)
        if not self.buffered(upstream):
            return await _stream(request, upstream, out_headers, self._send_timeout)
        payload = await read_whole(upstream)
        if isinstance(payload, Failure):
            return pages.failure(request, payload.status, payload.reason)
        return _Relayed(
            status=upstream.status, reason=upstream.reason, headers=out_headers, body=payload
        )

    @property
    def response_timeout(self) -> float:
        """How long the upstream may take to begin its answer (``proxy.upstream_timeout``)."""
        return self._header_timeout

    @property
    def send_timeout(self) -> float:
        """How long a client may take to accept the next chunk of a streamed answer."""
        return self._send_timeout

    def upstream_head(self, method: str, target: bytes, headers: list[Header]) -> bytes:
        """The request head sent upstream: ``target`` (path and query, as the client sent
        them) below the upstream's base path, and ``headers`` as given."""
        return request_head(method, self._base_path, target, headers)

    async def exchange(
        self,
        method: str,
        head: bytes,
        body: AsyncIterable[bytes] | None = None,
        chunked: bool = False,
        slot_held: bool = False,
        ready: bytes = b"",
    ) -> UpstreamResponse | Failure:
        """Send the request and wait for the response head; the failure to answer with
        (502/504, logged and recorded for the access line) when none came. ``slot_held``:
        the pool gave the caller a slot already (see :meth:`UpstreamPool.queue`); ``ready``:
        the body's bytes in hand, sent with the head (:meth:`UpstreamPool.request`)."""
        pool = self.pool
        if pool is None:
            raise RuntimeError("Forwarder used outside its cleanup_ctx")
        started = time.perf_counter()
        try:
            # The pool's deadline for the response head counts from the last body byte sent.
            upstream = await pool.request(
                method, head, body, chunked=chunked, slot_held=slot_held, ready=ready
            )
        except UpstreamError as exc:
            set_upstream_time(time.perf_counter() - started)
            return upstream_failure(exc, self._header_timeout)
        elapsed = time.perf_counter() - started
        set_upstream_time(elapsed)
        metrics.observe_upstream(elapsed)
        return upstream

    @staticmethod
    def buffered(upstream: UpstreamResponse) -> bool:
        """Whether the answer is relayed whole (it is in, or small and of known length)
        rather than streamed."""
        if upstream.complete:
            return True
        length = upstream.content_length
        return length is not None and length <= SMALL_BODY

    # -- WebSocket -------------------------------------------------------------------
    async def forward_websocket(
        self,
        request: web.Request,
        cookies: RequestCookies,
        identity: Iterable[tuple[str, str]],
        alive: Alive | None = None,
    ) -> web.StreamResponse:
        """Open the same WebSocket upstream (with identity headers) and relay messages;
        ``alive`` (checked every ``session.cache_ttl``) ends the relay with the session."""
        session = self._ws_session
        if session is None:
            raise RuntimeError("Forwarder used outside its cleanup_ctx")
        pairs, _ = self.headers.request_headers(request, cookies, identity)
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


@dataclass(frozen=True, slots=True)
class Failure:
    """The upstream's answer could not be relayed: answer ``status`` with the page for
    ``reason`` (nothing has been sent to the client)."""

    status: int
    reason: str


GATEWAY_TIMEOUT: Final = Failure(504, "gateway_timeout")
BAD_GATEWAY: Final = Failure(502, "bad_gateway")


def upstream_failure(error: UpstreamError, timeout: float) -> Failure:
    """The failure to answer, logged, when no answer came: a 504 when none came within
    ``timeout`` (``proxy.upstream_timeout``), else a 502."""
    if isinstance(error, UpstreamTimeout):
        LOG.warning("upstream did not answer within %ss", timeout)
        return GATEWAY_TIMEOUT
    LOG.warning("upstream request failed: %s", error)
    return BAD_GATEWAY


def _in_hand(content: aiohttp.StreamReader) -> tuple[bytes, AsyncIterable[bytes] | None]:
    """The request body's bytes already received, and the rest as it comes (None when
    they are all of it): what is in hand goes upstream with the head, nothing is waited
    for to join it."""
    if content.exception() is not None:
        return b"", content.iter_any()  # (raises it in the sending task, as any break)
    ready = content.read_nowait()
    return ready, None if content.at_eof() else content.iter_any()


async def read_whole(upstream: UpstreamResponse) -> bytes | Failure:
    """The whole body of a :meth:`Forwarder.buffered` answer, and the upstream connection
    released; the failure to answer with if the body stalled or broke off."""
    try:
        return await upstream.read()
    except UpstreamBodyTimeout as exc:
        # Nothing was sent yet: the client gets a clear 504, the stalled connection is
        # dropped (release() closes what did not end cleanly) and its slot freed.
        set_upstream_error("body_timeout")
        LOG.warning("upstream response body stalled: %s", exc)
        return GATEWAY_TIMEOUT
    except UpstreamError as exc:
        set_upstream_error("body_broken")
        LOG.warning("upstream response failed: %s", exc)
        return BAD_GATEWAY
    finally:
        upstream.release()


def client_stopped_reading(send_timeout: float) -> None:
    """Record and log a client cut off for not reading a streamed answer (the caller
    aborts its connection and so frees the upstream one)."""
    set_upstream_error("client_send_timeout")
    LOG.info("client stopped reading for %ss; cut off", send_timeout)


def stream_broken(exc: BaseException) -> None:
    """Record and log why a streamed answer stopped short (the caller drops the client
    connection: a truncated body must not look complete)."""
    if isinstance(exc, UpstreamBodyTimeout):
        set_upstream_error("body_timeout")
    elif isinstance(exc, UpstreamError):
        set_upstream_error("body_broken")
    LOG.info("stream interrupted: %s", type(exc).__name__)


class _RelayedStream(web.StreamResponse):
    """An upstream answer as is: aiohttp adds ``Content-Type: application/octet-stream``
    to a body without one, which would make browsers download what they would sniff, and
    its own ``Server``; neither is sent unless the upstream sent it. (``_prepare_headers``
    is aiohttp's hook; tests/test_upstream.py and tests/security/test_small_leaks.py pin
    the behaviour.)"""

    relayed = True  # sidecar.web.listener.own_answer_headers leaves the headers alone

    async def _prepare_headers(self) -> None:
        headers = self.headers
        typed = hdrs.CONTENT_TYPE in headers
        served = hdrs.SERVER in headers
        await super()._prepare_headers()
        if not typed:
            headers.popall(hdrs.CONTENT_TYPE, None)
        if not served:
            headers.popall(hdrs.SERVER, None)


class _Relayed(_RelayedStream, web.Response):
    __doc__ = _RelayedStream.__doc__


class _ClientStopsReading(Exception):
    """The client took more than ``proxy.send_timeout`` to accept the next chunk."""


async def _send(response: web.StreamResponse, chunk: bytes, send_timeout: float) -> None:
    # A client that stops reading would otherwise hold the upstream connection for ever.
    sending = asyncio.timeout(send_timeout)
    try:
        async with sending:
            await response.write(chunk)
    except TimeoutError:
        if sending.expired():
            raise _ClientStopsReading from None
        raise


async def _stream(
    request: web.Request,
    upstream: UpstreamResponse,
    headers: list[tuple[str, str]],
    send_timeout: float,
) -> web.StreamResponse:
    response = _RelayedStream(status=upstream.status, reason=upstream.reason, headers=headers)
    try:
        await response.prepare(request)
        async for chunk in upstream.chunks():
            await _send(response, chunk, send_timeout)
    except _ClientStopsReading:
        client_stopped_reading(send_timeout)
        if request.transport is not None:
            request.transport.abort()
    except UPSTREAM_ERRORS as exc:
        # The upstream broke off or stalled, or the client left. Either way a truncated
        # body must not look complete: drop the client connection instead of ending it.
        stream_broken(exc)
        if request.transport is not None:
            request.transport.abort()
    finally:
        upstream.release()
    return response
