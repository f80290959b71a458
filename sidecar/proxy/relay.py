"""The bytes an express-lane request sends upstream, and its answer's on their way back.

:class:`~sidecar.proxy.exchange.Exchange` decides *when* (a verdict, a pool slot, the
upstream's events, a task where something must be awaited); this module is *what* goes
over the wire either way, the same as :class:`~sidecar.proxy.forward.Forwarder` sends and
relays for aiohttp's front:

* :func:`upstream_request`: the client's head through the header policy (identity added,
  spoofed copies dropped), below the upstream's base path, and the body the lean front
  read whole, framed;
* :func:`stream`: an answer relayed as it comes (large, or of unknown length), each chunk
  accepted by the client within ``proxy.send_timeout``.

An answer relayed whole is one write of :func:`sidecar.proxy.answers.whole`.
"""

from __future__ import annotations

from sidecar.proxy.answers import stream_head
from sidecar.proxy.forward import UPSTREAM_ERRORS, Forwarder, client_stopped_reading, stream_broken
from sidecar.proxy.pool import UpstreamResponse
from sidecar.session_cookies import RequestCookies
from sidecar.web.heads import Head
from sidecar.web.lanes import Reply


def upstream_request(
    forwarder: Forwarder,
    head: Head,
    peer: str | None,
    cookies: RequestCookies,
    identity: tuple[tuple[str, str], ...],
    request_id: str,
) -> tuple[bytes, bytes]:
    """The request head to send upstream, and the body after it (framed)."""
    headers, has_length = forwarder.headers.raw_request_headers(
        head.headers, peer, "http", cookies, identity, request_id
    )
    body = head.body
    if body and not has_length:
        # proxy.strip_headers dropped the client's Content-Length: framed chunked, as
        # aiohttp's front does (sent unframed, the upstream would read the body as a
        # second request that nothing judged).
        headers.append((b"Transfer-Encoding", b"chunked"))
        body = b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
    return forwarder.upstream_head(head.method, head.target, headers), body


async def stream(
    reply: Reply,
    upstream: UpstreamResponse,
    headers: list[tuple[str, str]],
    keep_alive: bool,
    send_timeout: float,
) -> None:
    """Relay ``upstream`` as it comes, with ``headers`` (the header policy's); the client's
    connection is aborted when the upstream breaks off or stalls (a truncated body must not
    look complete) or the client stops reading. ``upstream`` is released in the end."""
    head, chunked = stream_head(upstream.status, upstream.reason, headers, keep_alive)
    try:
        # The body bytes that came with the head go in the head's write, so the client
        # reads them together; nothing is waited for to join them.
        chunk = upstream.chunk_in_hand()
        reply.write(head + _framed(chunk, chunked) if chunk else head)
        if chunk and not await _accepted(reply, send_timeout):
            return
        async for chunk in upstream.chunks():
            reply.write(_framed(chunk, chunked))
            if not await _accepted(reply, send_timeout):
                return
        if chunked:
            reply.write(b"0\r\n\r\n")
    except UPSTREAM_ERRORS as exc:
        stream_broken(exc)
        reply.abort()
    finally:
        upstream.release()


def _framed(chunk: bytes, chunked: bool) -> bytes:
    return b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk


async def _accepted(reply: Reply, send_timeout: float) -> bool:
    """Whether the client took what was written within ``send_timeout``; if not, it is
    cut off (logged, its connection aborted)."""
    if await reply.drain(send_timeout):
        return True
    client_stopped_reading(send_timeout)
    reply.abort()
    return False
