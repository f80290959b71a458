"""The hot path's lane: plain forwarded requests, served by the lean front without aiohttp.

:class:`ExpressLane` is the :class:`~sidecar.web.lean.Lane` of the proxy listener. It takes a
request only when its whole answer is "forward it": the decisions are the gateway's own
(:meth:`sidecar.proxy.gateway.Gateway.judge`, :func:`~sidecar.proxy.gateway.hosts_allowed`,
:func:`~sidecar.proxy.paths.normalise`), the request head sent upstream is the header
policy's (:meth:`~sidecar.proxy.headers.HeaderPolicy.raw_request_headers`) and the exchange
the forwarder's (:meth:`~sidecar.proxy.forward.Forwarder.exchange`). It declines — before
writing a byte, so that aiohttp's handler answers instead — whenever the answer could be
anything else:

* a path under the sidecar's own routes (the prefix, forward-auth's Envoy prefix: raw or
  percent-decoded), a query that may hold ``refer`` (any spelling: ``%`` or ``refer``), a
  path :func:`~sidecar.proxy.paths.normalise` refuses;
* a ``Host`` (or a trusted proxy's forwarded host) the host check refuses;
* no session and no public path, a role that refuses the path, a store that cannot answer.

What it relays is what :class:`~sidecar.proxy.forward.Forwarder.forward` would: the upstream's
status, reason and headers (minus hop-by-hop ones and the sidecar's own cookie), a ``Date``
when the upstream sent none, ``X-Request-Id`` on an answer relayed whole, the body whole
when it is in or small, else streamed as it comes (chunked when the upstream gave no
length) with ``proxy.send_timeout`` per chunk. Failures are the same 502/504 pages. Each
request is counted and logged as the access middleware does (:class:`AccessLine`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from email.utils import formatdate
from functools import lru_cache
from http import HTTPStatus
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote

from sidecar.proxy.clientaddr import ClientAddresses
from sidecar.proxy.forward import UPSTREAM_ERRORS, Failure, Forwarder, read_whole
from sidecar.proxy.origins import PublicOrigin, hosts_allowed
from sidecar.proxy.paths import UnsafePath, normalise
from sidecar.proxy.pool import UpstreamBodyTimeout, UpstreamError, UpstreamResponse
from sidecar.proxy.verdicts import STORE_DOWN
from sidecar.services import Services
from sidecar.sessions import cookies_of
from sidecar.telemetry.context import CURRENT, RequestRecord
from sidecar.web import pages
from sidecar.web.accesslog import (
    CLIENT_CLOSED,
    AccessLine,
    request_id_for,
    set_upstream_error,
)
from sidecar.web.drain import Drain
from sidecar.web.heads import Head
from sidecar.web.lean import Reply

if TYPE_CHECKING:
    from sidecar.proxy.gateway import Gateway

LOG = logging.getLogger("sidecar.forward")

_REASONS: Final = {s.value: s.phrase for s in HTTPStatus}
_NO_BODY: Final = frozenset((204, 304, *range(100, 200)))
_FORWARDED_HOST: Final = (b"x-forwarded-host", b"forwarded")


class ExpressLane:
    """Serves plain forwarded requests for the lean front (see the module docstring)."""

    def __init__(
        self,
        services: Services,
        gateway: Gateway,
        forwarder: Forwarder,
        public: PublicOrigin,
        clients: ClientAddresses,
        cookie_name: str,
    ) -> None:
        self._services = services
        self._gateway = gateway
        self._forwarder = forwarder
        self._public = public
        self._clients = clients
        self._cookie_name = cookie_name
        self._own: tuple[str, ...] = (services.config.proxy.prefix,)
        self._access = AccessLine("proxy")
        self.drain: Drain | None = None

    def own_routes(self, literals: tuple[str, ...]) -> None:
        """Decline every path that begins with one of ``literals`` (the router's own)."""
        self._own = literals + self._own

    async def serve(self, head: Head, reply: Reply) -> bool:
        target = head.target
        cut = target.find(b"?")
        raw_path = target if cut < 0 else target[:cut]
        if cut >= 0:
            query = target[cut + 1 :]
            if b"%" in query or b"refer" in query.lower():
                return False  # perhaps a refer link: the redeemer's
        path_text = raw_path.decode("utf-8", "surrogateescape")
        own = self._own
        if path_text.startswith(own) or ("%" in path_text and unquote(path_text).startswith(own)):
            return False
        try:
            path = normalise(path_text)
        except UnsafePath:
            return False
        hosts: list[str] = []
        forwarded: list[tuple[bytes, str]] = []
        request_id = accept = None
        for name, value in head.headers:
            lower = name.lower()
            if lower == b"host":
                hosts.append(value.decode("utf-8", "surrogateescape"))
            elif lower in _FORWARDED_HOST or lower == b"x-forwarded-for":
                forwarded.append((lower, value.decode("utf-8", "surrogateescape")))
            elif lower == b"x-request-id":
                request_id = request_id or value.decode("utf-8", "surrogateescape")
            elif lower == b"accept":
                accept = accept or value.decode("utf-8", "surrogateescape")
        peer = reply.peer
        trusted = self._clients.trusts(peer)
        if not hosts_allowed(
            self._public,
            hosts,
            [v for n, v in forwarded if n == b"x-forwarded-host"] if trusted else (),
            [v for n, v in forwarded if n == b"forwarded"] if trusted else (),
        ):
            return False
        cookies = cookies_of(head.headers, self._cookie_name)
        verdict = await self._gateway.judge(path, cookies)
        # A refusal the judgement made is answered here, as the gateway would: judged
        # again after a handover, a reload in between could turn a 403 into a 401.
        refused = None
        if verdict is STORE_DOWN:
            refused = Failure(503, "store_unavailable")
        elif not verdict.forward:
            if verdict.session is None:
                return False  # no session: proxy.unauthenticated decides (the gateway)
            refused = Failure(403, "forbidden")
        record = RequestRecord(request_id_for(request_id), "proxied")
        if verdict.session is not None:
            record.user_id = verdict.session.record.user_id
        CURRENT.set(record)  # this task's own context: nothing to reset
        drain = self.drain
        if drain is not None:
            drain.begin()
        started = time.perf_counter()
        status = 500
        try:
            if refused is not None:
                status = self._fail(reply, refused, head.keep_alive, record, accept)
            else:
                forwarder = self._forwarder
                headers, _ = forwarder.headers.raw_request_headers(
                    head.headers, peer, "http", cookies, verdict.identity
                )
                upstream_head = forwarder.upstream_head(head.method, target, headers)
                status = await self._relay(head, reply, upstream_head, record, accept)
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        finally:
            if drain is not None:
                drain.end()
            xff = [v for n, v in forwarded if n == b"x-forwarded-for"]
            remote = self._clients.client(peer, xff)
            self._access(head.method, path_text, status, time.perf_counter() - started,
                         record, remote)  # fmt: skip
        return True

    async def _relay(
        self,
        head: Head,
        reply: Reply,
        upstream_head: bytes,
        record: RequestRecord,
        accept: str | None,
    ) -> int:
        forwarder = self._forwarder
        upstream = await forwarder.exchange(head.method, upstream_head)
        if isinstance(upstream, Failure):
            return self._fail(reply, upstream, head.keep_alive, record, accept)
        out = forwarder.headers.response_headers(upstream.headers)
        status = upstream.status
        if not forwarder.buffered(upstream):
            await self._stream(reply, upstream, out, head.keep_alive)
            return status
        payload = await read_whole(upstream)
        if isinstance(payload, Failure):
            return self._fail(reply, payload, head.keep_alive, record, accept)
        lines = _head_lines(status, upstream.reason, out)
        names = {n.lower() for n, _ in out}
        if "x-request-id" not in names:
            lines.append(b"X-Request-Id: " + record.request_id.encode() + b"\r\n")
        if status in _NO_BODY:
            lines = [ln for ln in lines if not ln[:15].lower().startswith(b"content-length:")]
            payload = b""
        elif "content-length" not in names:
            lines.append(b"Content-Length: %d\r\n" % len(payload))
        reply.write(_finish(lines, names, head.keep_alive) + payload)
        return status

    async def _stream(
        self,
        reply: Reply,
        upstream: UpstreamResponse,
        out: list[tuple[str, str]],
        keep_alive: bool,
    ) -> None:
        lines = _head_lines(upstream.status, upstream.reason, out)
        names = {n.lower() for n, _ in out}
        chunked = "content-length" not in names
        if chunked:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        send_timeout = self._forwarder.send_timeout
        try:
            reply.write(_finish(lines, names, keep_alive))
            async for chunk in upstream.chunks():
                reply.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                if not await reply.drain(send_timeout):
                    set_upstream_error("client_send_timeout")
                    LOG.info("client stopped reading for %ss; cut off", send_timeout)
                    reply.abort()
                    return
            if chunked:
                reply.write(b"0\r\n\r\n")
        except UPSTREAM_ERRORS as exc:
            # The upstream broke off or stalled. A truncated body must not look complete:
            # drop the client connection instead of ending it.
            if isinstance(exc, UpstreamBodyTimeout):
                set_upstream_error("body_timeout")
            elif isinstance(exc, UpstreamError):
                set_upstream_error("body_broken")
            LOG.info("stream interrupted: %s", type(exc).__name__)
            reply.abort()
        finally:
            upstream.release()

    def _fail(
        self,
        reply: Reply,
        failure: Failure,
        keep_alive: bool,
        record: RequestRecord,
        accept: str | None,
    ) -> int:
        page = pages.failure_for(
            accept or "", self._services.config.pages, failure.status, failure.reason
        )
        body = page.body
        assert isinstance(body, bytes)
        lines = _head_lines(page.status, None, page.headers.items())
        lines.append(b"X-Request-Id: " + record.request_id.encode() + b"\r\n")
        lines.append(b"Content-Length: %d\r\n" % len(body))
        names = {n.lower() for n in page.headers}
        reply.write(_finish(lines, names, keep_alive) + body)
        return page.status


def _head_lines(status: int, reason: str | None, headers: Iterable[tuple[str, str]]) -> list[bytes]:
    phrase = _REASONS.get(status, "") if reason is None else reason
    lines = [b"HTTP/1.1 %d %b\r\n" % (status, phrase.encode("latin-1", "replace"))]
    for name, value in headers:
        text = value.encode("utf-8", "surrogateescape")
        lines.append(b"%b: %b\r\n" % (name.encode("latin-1"), text))
    return lines


def _finish(lines: list[bytes], names: set[str], keep_alive: bool) -> bytes:
    if "date" not in names:
        lines.append(_date_line(int(time.time())))
    if not keep_alive:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


@lru_cache(maxsize=2)
def _date_line(second: int) -> bytes:
    return b"Date: " + formatdate(second, usegmt=True).encode() + b"\r\n"
