"""The proxy listener's connections: a lean HTTP/1.1 front for the hot path, aiohttp behind it.

Almost every request a proxy sees is the same: a bodyless request with a session cookie,
forwarded upstream. aiohttp's server spends most of the CPU of such a request on its own
machinery (a request object, a payload stream, a writer, middlewares, the router). A
:class:`LeanConnection` reads each request head itself, parses it with httptools (llhttp,
the parser of Node.js and of aiohttp's own C parser) and offers it to the :class:`Lane`
(:class:`sidecar.proxy.express.ExpressLane`), which either serves it completely or declines
before writing a byte.

Whatever the lean front does not take is **handed over**: the connection becomes an
ordinary aiohttp connection (:class:`sidecar.web.listener.RequestHandler` subclass), which
is given every byte received from the first byte of that request on, exactly as it came off
the socket — so aiohttp parses, judges and answers it as if it had owned the connection all
along, and keeps the connection from then on. Handed over are:

* anything that is not a plain, complete HTTP/1.1 request head in origin form with no body
  (a ``Content-Length`` other than ``0``, ``Transfer-Encoding``, ``Expect``, ``Upgrade``,
  ``HEAD``, HTTP/1.0, a head llhttp refuses, bare-LF line ends, over
  ``proxy.max_header_size`` or :data:`~sidecar.app.MAX_HEADERS` lines): the framing and
  smuggling rules stay the ones aiohttp enforces and tests/security pins;
* whatever the lane declines (its rules: :mod:`sidecar.proxy.express`).

The lean front keeps the listener's limits (:mod:`sidecar.web.listener`): the connection
cap (counted with aiohttp's connections), ``request_head_timeout`` (408, then close) and
``keepalive_timeout``, checked by one sweep per listener rather than a timer per request.
A client that leaves cancels its request (as ``handler_cancellation`` does for aiohttp's),
so its upstream connection is freed at once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final, Protocol, cast

from sidecar.telemetry import metrics
from sidecar.web.heads import Head, parse_head

if TYPE_CHECKING:
    from sidecar.web.drain import Drain
    from sidecar.web.listener import _Server

LOG = logging.getLogger("sidecar.lean")

# Bytes of pipelined requests kept while one is served; more pauses reading.
_READ_AHEAD: Final = 64 * 1024


class Reply(Protocol):
    """What a lane answers through (:class:`LeanConnection`); ``peer`` is the client's
    address as the socket gives it."""

    peer: str | None

    def write(self, data: bytes) -> None: ...

    async def drain(self, within: float) -> bool: ...

    def abort(self) -> None: ...


class Lane(Protocol):
    """Serves the hot path: :meth:`serve` answers ``head`` through ``reply`` and returns
    True, or returns False having written nothing (the request is then handed over).
    ``drain`` counts the requests it serves (set by :meth:`Drain.attach`)."""

    drain: Drain | None

    async def serve(self, head: Head, reply: Reply) -> bool: ...


class LeanConnection(asyncio.Protocol):
    """One client connection of the proxy listener while the lean front serves it."""

    __slots__ = (
        "_buffer",
        "_closing",
        "_drained",
        "_handed_over",
        "_head_since",
        "_idle_since",
        "_lane",
        "_paused_reading",
        "_paused_writing",
        "_refused",
        "_server",
        "_task",
        "peer",
        "transport",
    )

    def __init__(self, server: _Server, lane: Lane) -> None:
        self._server = server
        self._lane = lane
        self.transport: asyncio.Transport | None = None
        self.peer: str | None = None
        self._buffer = bytearray()
        self._task: asyncio.Task[None] | None = None
        self._refused = False
        self._handed_over = False
        self._closing = False
        self._paused_reading = False
        self._paused_writing = False
        self._drained: asyncio.Future[None] | None = None
        self._head_since: float | None = None  # the first byte of an incomplete head
        self._idle_since: float | None = None  # no request in progress, none begun

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not an asyncio.Transport subclass).
        transport = cast(asyncio.Transport, transport)
        if not self._server.admit(transport):
            self._refused = True
            return
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else None
        self._idle_since = self._server.clock()
        self._server.lean.add(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            return
        self.transport = None
        self._server.lean.discard(self)
        self._server.open_connections -= 1
        task = self._task
        if task is not None and not task.done():
            task.cancel()  # the client left: its upstream connection is freed at once
        self._wake_writer()

    def data_received(self, data: bytes) -> None:
        if self._refused or self.transport is None:
            return
        self._buffer += data
        if self._task is None:
            self._next()
        elif len(self._buffer) > _READ_AHEAD and not self._paused_reading:
            self._paused_reading = True
            self.transport.pause_reading()

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        self._wake_writer()

    # -- Reply -----------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    async def drain(self, within: float) -> bool:
        """Wait until the client takes what was written (at most ``within`` seconds);
        False when it did not, or left."""
        if not self._paused_writing:
            return self.transport is not None
        waiter = self._drained
        if waiter is None or waiter.done():
            waiter = self._drained = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(waiter), within)
        except TimeoutError:
            return False
        return self.transport is not None

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- requests --------------------------------------------------------------------
    def _next(self) -> None:
        """Start on the next request in the buffer, if its head is complete."""
        transport = self.transport
        if transport is None:
            return
        buffer = self._buffer
        if not buffer:
            if self._closing:
                transport.close()
            else:
                self._idle_since = self._server.clock()
            return
        self._idle_since = None
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > self._server.max_head or b"\n\n" in buffer or buffer[0] in b"\r\n":
                self._hand_over()
            elif self._head_since is None:
                self._head_since = self._server.clock()
            return
        self._head_since = None
        data = bytes(buffer[: end + 4])
        server = self._server
        head = parse_head(data, server.max_headers, server.max_head)
        if head is None:
            self._hand_over()
            return
        del buffer[: end + 4]
        self._task = asyncio.get_running_loop().create_task(self._serve(head, data))

    async def _serve(self, head: Head, data: bytes) -> None:
        try:
            served = await self._lane.serve(head, self)
        except asyncio.CancelledError:
            self._task = None
            raise
        except Exception:
            LOG.exception("the lean front failed on a request; aiohttp answers it")
            served = False
        self._task = None
        if not served:
            self._buffer[:0] = data  # aiohttp reads the request from its first byte
            self._hand_over()
            return
        transport = self.transport
        if transport is None:
            return
        if not head.keep_alive:
            transport.close()
            return
        if self._paused_reading:
            self._paused_reading = False
            transport.resume_reading()
        self._next()

    def _hand_over(self) -> None:
        """Make this connection aiohttp's, with every byte not yet answered."""
        transport = self.transport
        if transport is None:
            return
        self._handed_over = True
        self.transport = None
        server = self._server
        server.lean.discard(self)
        server.open_connections -= 1  # the handler counts itself in again
        metrics.handover()
        handler = server.handler()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._paused_reading:
            transport.resume_reading()
        data, self._buffer = bytes(self._buffer), bytearray()
        if data:
            handler.data_received(data)

    def _wake_writer(self) -> None:
        waiter, self._drained = self._drained, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the listener's limits (LeanConnections.sweep) --------------------------------
    def check_limits(self, now: float, head_timeout: float, keepalive_timeout: float) -> None:
        transport = self.transport
        if transport is None or self._task is not None:
            return
        if self._head_since is not None and now - self._head_since >= head_timeout:
            LOG.info("request head not complete within %ss: 408, connection closed",
                     head_timeout)  # fmt: skip
            transport.write(self._server.head_timeout_answer)
            transport.close()
            self.transport = None
        elif self._idle_since is not None and now - self._idle_since >= keepalive_timeout:
            transport.close()
            self.transport = None

    def shut(self) -> None:
        """Shutdown: close now if idle, else once the request in progress is answered."""
        self._closing = True
        if self._task is None and self.transport is not None:
            self.transport.close()

    def cancel(self) -> None:
        """Shutdown's end: cancel the request in progress and drop the connection."""
        if self._task is not None:
            self._task.cancel()
        if self.transport is not None:
            self.transport.abort()

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The request in progress."""
        return self._task


class LeanConnections:
    """A listener's lean connections and the one timer that enforces their limits."""

    def __init__(
        self,
        head_timeout: float,
        keepalive_timeout: float,
        clock: Callable[[], float],
    ) -> None:
        self._head_timeout = head_timeout
        self._keepalive_timeout = keepalive_timeout
        self._clock = clock
        # A late 408 or idle close by a quarter of the limit (at most a second) is no harm.
        self._tick = max(0.02, min(1.0, head_timeout / 4, keepalive_timeout / 4))
        self._connections: set[LeanConnection] = set()
        self._sweeper: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._connections)

    def __iter__(self) -> Iterator[LeanConnection]:
        return iter(list(self._connections))

    def add(self, conn: LeanConnection) -> None:
        self._connections.add(conn)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self._tick, self._sweep)

    def discard(self, conn: LeanConnection) -> None:
        self._connections.discard(conn)

    def _sweep(self) -> None:
        now = self._clock()
        for conn in list(self._connections):
            conn.check_limits(now, self._head_timeout, self._keepalive_timeout)
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(self._tick, self._sweep) if self._connections else None

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    async def shutdown(self, grace: float) -> None:
        """Close idle connections, give busy ones ``grace`` seconds, then cancel them."""
        for conn in list(self._connections):
            conn.shut()
        busy = [c.task for c in self._connections if c.task is not None]
        if busy:
            await asyncio.wait(busy, timeout=grace)
        for conn in list(self._connections):
            conn.cancel()
        self.stop()
