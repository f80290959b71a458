"""The access log: one JSON line per request on logger ``sidecar.access``, and request metrics.

:func:`access_middleware` wraps every handler of a listener. It writes, when the request
is done (for streamed bodies: when the last byte is written)::

    {"ts": "2026-11-30T03:50:01.123Z", "level": "info", "event": "access", "listener": "proxy",
     "method": "GET", "path": "/api/x",
     "status": 200, "duration_ms": 3.1, "upstream_ms": 2.4, "user_id": "u-1",
     "request_id": "…", "remote": "127.0.0.1"}

* ``path`` is the raw path *without the query*: refer strings and verify tokens travel in
  the query and must never reach a log.
* ``request_id`` is the client's ``X-Request-Id`` when it looks like an id (1-128 of
  ``A-Za-z0-9._:@/+=-``), otherwise a fresh random one. It is sent upstream (replacing any
  other) and added to the sidecar's own responses and to buffered upstream responses that
  carry none (a streamed response keeps the upstream's headers as they were).
* ``upstream_ms`` is the time to the upstream's response headers, reported by the
  forwarder with :func:`set_upstream_time`; ``user_id`` is what the handler reported with
  :func:`set_user`.
* ``upstream_error`` is present only when the forwarder reported, with
  :func:`set_upstream_error`, why the upstream's answer was not relayed whole
  (``"body_timeout"``: no body byte within the timeout, ``"body_broken"``: it broke off);
  ``status`` is then the 504/502 the client got, or the upstream's status when the
  answer had begun and the client connection was aborted.

The line itself, and the request ids, are :mod:`sidecar.telemetry.access`'s (compiled with
the hot path; this module's middleware cannot be). ``logging.access: false`` turns the lines
off (the metrics still count every request).

Handlers and the upstream client reach the current request's record through a context
variable: the middleware sets it, and aiohttp runs the handler, and the client calls it
makes, in the same task.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from sidecar.telemetry.access import CLIENT_CLOSED, REQUEST_ID, AccessLine, request_id_for
from sidecar.telemetry.context import CURRENT, RequestRecord, set_user

# set_user lives with the request record, in a compiled module (every redemption names its
# user); it is still this module's to import.
__all__ = [
    "CLIENT_CLOSED",
    "REQUEST_ID",
    "AccessLine",
    "access_middleware",
    "request_id_for",
    "set_upstream_error",
    "set_upstream_time",
    "set_user",
]


def set_upstream_time(seconds: float) -> None:
    """Record the time to the upstream's response headers (the forwarder measures it inline:
    a client ``TraceConfig`` costs the hot path about a third of its CPU)."""
    record = CURRENT.get()
    if record is not None:
        record.upstream_s = seconds


def set_upstream_error(reason: str) -> None:
    """Record why the upstream's answer was not relayed whole (for the access log line)."""
    record = CURRENT.get()
    if record is not None:
        record.upstream_error = reason


def access_middleware(
    listener: str,
    *,
    route: Callable[[web.BaseRequest], str],
    client: Callable[[web.BaseRequest], str | None] | None = None,
) -> Middleware:
    """A middleware logging one JSON line and counting the request for ``listener``.

    ``route(request)`` is the request's kind unless a handler names another (``set_route``);
    ``client`` gives the client's address for ``remote`` (behind trusted proxies, the real
    client rather than the proxy; the socket's peer by default)."""
    done = AccessLine(listener)
    remote_of = client or _peer

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        record = RequestRecord(request_id_for(request.headers.get(REQUEST_ID)), route(request))
        token = CURRENT.set(record)
        status = 500
        try:
            response = await handler(request)
            status = response.status
            if not response.prepared and REQUEST_ID not in response.headers:
                response.headers[REQUEST_ID] = record.request_id
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        finally:
            CURRENT.reset(token)
            elapsed = time.perf_counter() - started
            path = request.rel_url.raw_path
            done(request.method, path, status, elapsed, record, remote_of(request))

    return middleware


def _peer(request: web.BaseRequest) -> str | None:
    return request.remote
