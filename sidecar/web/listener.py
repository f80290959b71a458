"""The HTTP server every listener runs: aiohttp's, with the limits a public port needs.

aiohttp's server keeps an idle connection for an hour and waits for a request head for as
long as its bytes keep trickling in; it serves as many connections as the process has file
descriptors. :class:`ListenerRunner` runs the same server with:

* ``request_head_timeout``: a request head not complete within this time of its first byte
  is answered ``408`` and the connection closed (slowloris). A connection that sends
  nothing at all is an idle one;
* ``keepalive_timeout``: a connection with no request in progress is closed after this long
  (aiohttp's own timer, given the configured value);
* ``max_connections`` (proxy listener only): a connection beyond the cap is answered
  ``503`` with ``Retry-After`` and closed at once, before the process runs out of file
  descriptors;
* the errors aiohttp answers itself (a malformed request, too many headers, a handler that
  raised) come as the sidecar's own JSON error document; ``Too many headers`` and an
  over-long header line are ``431`` (RFC 6585), not ``400``.

:func:`own_answer_headers` (an ``on_response_prepare`` hook every app installs) removes the
``Server: Python/… aiohttp/…`` header from everything the sidecar answers itself and adds
``X-Content-Type-Options: nosniff``; answers relayed from the upstream (``relayed = True``)
keep the upstream's headers, its ``Server`` included.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

from aiohttp import hdrs, web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from sidecar.web.lanes import Lane
from sidecar.web.lean import LeanConnection
from sidecar.web.lean_limits import LeanConnections

LANE: Final = web.AppKey("lane", Lane)

LOG = logging.getLogger("sidecar.listener")
NOSNIFF: Final = {"X-Content-Type-Options": "nosniff"}
RETRY_AFTER_BUSY: Final = 1  # seconds a client turned away at the connection cap waits


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What :class:`ListenerRunner` enforces per connection (``max_connections``: None for
    no cap)."""

    head_timeout: float
    max_connections: int | None = None
    max_head_size: int = 8190  # the lean front serves no head over it (proxy.max_header_size)


def error_document(status: int, error: str, message: str, error_code: str | None = None) -> bytes:
    """The sidecar's JSON error ``{"code", "error", "message"}`` — the one place it is
    written (:func:`sidecar.web.pages.failure_json` answers with it too) — plus GoTrue's
    ``error_code`` on a GoTrue-shaped route (``POST <prefix>/verify``)."""
    doc = {"code": status, "error": error, "message": message}
    if error_code is not None:
        doc["error_code"] = error_code
    return json.dumps(doc).encode()


def canned_answer(status: int, error: str, message: str, *extra: str) -> bytes:
    """A whole ``Connection: close`` answer, for when there is no request to answer."""
    body = error_document(status, error, message)
    head = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
        "Connection: close",
        *extra,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


_HEAD_TIMEOUT: Final = canned_answer(408, "request_timeout", "The request was not sent in time.")
_BUSY: Final = canned_answer(
    503,
    "too_many_connections",
    "The service is busy. Try again in a moment.",
    f"Retry-After: {RETRY_AFTER_BUSY}",
)


def raise_fd_limit(needed: int) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` towards ``needed`` (never above the hard limit, as
    nginx's ``worker_rlimit_nofile`` does); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        soft = target
    return soft


async def own_answer_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """``on_response_prepare``: no ``Server`` of ours, and ``nosniff``, on our own answers."""
    if getattr(response, "relayed", False):
        return
    response.headers.popall(hdrs.SERVER, None)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")


class _Handler(RequestHandler):
    """aiohttp's per-connection protocol with a head deadline and the connection cap."""

    __slots__ = ("_guard", "_head_timer", "_refused")

    def __init__(self, manager: _Server, *, guard: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._manager
        if isinstance(server, _Server) and not server.admit(transport):  # type: ignore[arg-type]
            self._refused = True
            return
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            return
        self._stop_head_timer()
        server = self._manager
        if isinstance(server, _Server):
            server.open_connections -= 1
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        waiter = self._waiter
        # Bytes while no request is being handled (before the first, or while the loop
        # waits for the next) begin a request head; bytes during a request are its body.
        idle = self._request_count == 0 or (waiter is not None and not waiter.done())
        if idle and self._head_timer is None:
            self._head_timer = self._loop.call_later(self._guard.head_timeout, self._head_late)
        count = self._request_count
        super().data_received(data)
        if self._request_count != count:
            self._stop_head_timer()

    def head_began(self, at: float) -> None:
        """The request head in progress began at loop time ``at``, before this handler
        had the connection (the lean front's handover): its deadline counts from then."""
        self._stop_head_timer()
        self._head_timer = self._loop.call_at(at + self._guard.head_timeout, self._head_late)

    def _stop_head_timer(self) -> None:
        timer, self._head_timer = self._head_timer, None
        if timer is not None:
            timer.cancel()

    def _head_late(self) -> None:
        self._head_timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        LOG.info("request head not complete within %ss: 408, connection closed",
                 self._guard.head_timeout)  # fmt: skip
        transport.write(_HEAD_TIMEOUT)
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's own error answers, as the sidecar's JSON document (431 for headers)."""
        # aiohttp logs (sidecar.web.logsetup turns a parse error into one warning) and raises
        # if the answer had begun.
        super().handle_error(request, status, exc, message)
        error = "bad_request" if status == 400 else "internal_error"
        if isinstance(exc, LineTooLong):
            # The request target and header lines have limits one byte apart
            # (sidecar.app.listener_options): the limit says which line it was.
            if len(exc.args) > 1 and exc.args[1] == self.max_field_size:
                status, error = 431, "headers_too_large"
            else:
                status, error = 414, "uri_too_long"
        elif isinstance(exc, BadHttpMessage) and "too many headers" in str(exc).lower():
            status, error = 431, "headers_too_large"
        phrase = HTTPStatus(status).phrase
        response = _Bare(
            status=status,
            body=error_document(status, error, phrase + "."),
            content_type="application/json",
            headers={hdrs.CACHE_CONTROL: "no-store", **NOSNIFF},
        )
        response.force_close()
        return response


class _Bare(web.Response):
    """A response without aiohttp's ``Server`` header (the error path runs no app hooks;
    ``_prepare_headers`` is where aiohttp adds it)."""

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        self.headers.popall(hdrs.SERVER, None)


class _Server(web.Server):
    """aiohttp's server, counting its connections and making :class:`_Handler` ones — or,
    with a ``lane``, :class:`~sidecar.web.lean.LeanConnection` ones that hand what they do
    not serve over to a :class:`_Handler`."""

    def __init__(
        self, *args: Any, guard: ConnectionLimits, lane: Lane | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard
        self.open_connections = 0
        self.refused = 0  # connections turned away at the cap, since start
        self.warn_after = 0.0
        self._lane = lane
        self.clock = self._loop.time
        self.lean = LeanConnections(
            guard.head_timeout, self._kwargs.get("keepalive_timeout", 75.0), self.clock
        )
        self.max_head = guard.max_head_size
        self.max_headers = self._kwargs.get("max_headers", 128)
        self.head_timeout_answer = _HEAD_TIMEOUT

    def __call__(self) -> asyncio.Protocol:  # type: ignore[override]  # any protocol will do
        if self._lane is not None:
            return LeanConnection(self, self._lane)
        return self.handler()

    def handler(self) -> _Handler:
        """An aiohttp connection of this server (not yet connected)."""
        return _Handler(self, loop=self._loop, guard=self.guard, **self._kwargs)

    def admit(self, transport: asyncio.Transport) -> bool:
        """Count a new connection in, or refuse it at the cap: ``503``, close, False."""
        cap = self.guard.max_connections
        if cap is not None and self.open_connections >= cap:
            # Refused before anything is parsed: no task, no parser, one write, one close.
            transport.write(_BUSY)
            transport.close()
            self.refused += 1
            now = self._loop.time()
            if now >= self.warn_after:  # one line a minute, not one per connection
                self.warn_after = now + 60
                LOG.warning(
                    "connections refused: %d client connections already open "
                    "(proxy.max_client_connections); %d refused so far",
                    cap,
                    self.refused,
                )
            return False
        self.open_connections += 1
        return True

    def pre_shutdown(self) -> None:
        for conn in self.lean:
            conn.shut()
        super().pre_shutdown()

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 (aiohttp's)
        await asyncio.gather(self.lean.shutdown(timeout or 0.0), super().shutdown(timeout))


class ListenerRunner(web.AppRunner):
    """``web.AppRunner`` whose server enforces :class:`ConnectionLimits`, with the lean
    front (:mod:`sidecar.web.lean`) before aiohttp when the app has a :data:`LANE`."""

    def __init__(self, app: web.Application, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._limits = limits

    @property
    def open_connections(self) -> int:
        """Client connections open now: aiohttp's and the lean front's (aiohttp's
        ``server.connections`` lists only its own)."""
        server = self.server
        return server.open_connections if isinstance(server, _Server) else 0

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        # The same server aiohttp built for the app (its handler, request factory and
        # options), made again with the guarded protocol.
        return _Server(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=asyncio.get_running_loop(),
            guard=self._limits,
            lane=self.app.get(LANE),
            **made._kwargs,  # what AppRunner and the app passed (no public accessor)
        )
