"""WebSockets: open the same socket upstream (with the identity headers) and relay messages.

Each side keeps its own handshake, pings and compression; the relay copies text and binary
messages and carries a close from either side to the other. Both sides are pinged every
:data:`HEARTBEAT` seconds: one that stops answering is closed, and with it the other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict
from yarl import URL

from sidecar.web import pages

LOG = logging.getLogger("sidecar.forward")
# aiohttp assembles each message whole: without a cap one frame could fill the memory.
# 4 MiB is aiohttp's own default; a bigger message closes the socket with 1009.
MAX_MESSAGE = 4 * 1024 * 1024
# Both sockets are pinged this often (seconds); a side that has not answered half an
# interval later is closed, and so the other: a vanished or stalled peer (a dropped phone,
# a NAT that forgot the flow, a client that stopped reading) frees its upstream socket
# instead of holding it until the session ends.
HEARTBEAT = 30.0
_ABNORMAL = 1006

Socket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse
Alive = Callable[[], Awaitable[bool]]


async def relay_websocket(
    session: aiohttp.ClientSession,
    url: URL,
    request: web.Request,
    headers: CIMultiDict[str],
    handshake_timeout: float,
    *,
    alive: Alive | None = None,
    check_every: float = 2.0,
) -> web.StreamResponse:
    """Connect upstream, then accept the client's upgrade and relay until either closes.

    Without an upstream socket there is no upgrade: the client gets the 502/504 page."""
    protocols = [
        p.strip()
        for v in request.headers.getall(hdrs.SEC_WEBSOCKET_PROTOCOL, ())
        for p in v.split(",")
        if p.strip()
    ]
    # The client's handshake is checked first: a malformed one must not open an
    # authenticated upstream socket (with identity headers) just to be refused after.
    if not web.WebSocketResponse(protocols=protocols).can_prepare(request).ok:
        return pages.failure(request, 400, "bad_request")
    try:
        async with asyncio.timeout(handshake_timeout):
            upstream = await session.ws_connect(
                url,
                headers=headers,
                protocols=protocols,
                autoping=True,
                heartbeat=HEARTBEAT,
                compress=0,
                max_msg_size=MAX_MESSAGE,
            )
    except TimeoutError:
        LOG.warning("upstream websocket did not answer within %ss", handshake_timeout)
        return pages.failure(request, 504, "gateway_timeout")
    except (aiohttp.ClientError, OSError) as exc:
        LOG.warning("upstream websocket failed: %s", type(exc).__name__)
        return pages.failure(request, 502, "bad_gateway")
    try:
        client = web.WebSocketResponse(
            protocols=(upstream.protocol,) if upstream.protocol else (),
            autoping=True,
            heartbeat=HEARTBEAT,
            compress=False,
            max_msg_size=MAX_MESSAGE,
        )
        await client.prepare(request)
        await _relay(client, upstream, alive, check_every)
        return client
    finally:
        await upstream.close()


async def _pump(src: Socket, dst: Socket) -> None:
    async for msg in src:
        if msg.type is aiohttp.WSMsgType.TEXT:
            await dst.send_str(msg.data)
        elif msg.type is aiohttp.WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
    code = src.close_code if src.close_code and src.close_code != _ABNORMAL else 1000
    await dst.close(code=code)


async def _watch(alive: Alive, every: float) -> None:
    """Return once the session behind the socket has ended (logout, DELETE /sessions,
    expiry, idle timeout): a socket must not outlive the identity it was opened with."""
    while True:
        await asyncio.sleep(every)
        if not await alive():
            return


async def _relay(
    client: web.WebSocketResponse,
    upstream: aiohttp.ClientWebSocketResponse,
    alive: Alive | None,
    check_every: float,
) -> None:
    tasks = [
        asyncio.create_task(_pump(client, upstream)),
        asyncio.create_task(_pump(upstream, client)),
    ]
    watcher = asyncio.create_task(_watch(alive, check_every)) if alive is not None else None
    try:
        await asyncio.wait(
            [*tasks, watcher] if watcher else tasks, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        ended = watcher is not None and watcher.done() and not watcher.cancelled()
        for task in [*tasks, watcher] if watcher else tasks:
            task.cancel()
        await asyncio.gather(*tasks, *([watcher] if watcher else []), return_exceptions=True)
        if ended:
            await client.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION, message=b"session ended")
        await client.close()
