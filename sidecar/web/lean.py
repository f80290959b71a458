"""A listener's connections: a lean HTTP/1.1 front for the hot path, aiohttp behind it.

Almost every request a proxy sees is the same: a bodyless request with a session cookie,
forwarded upstream. aiohttp's server spends most of the CPU of such a request on its own
machinery (a request object, a payload stream, a writer, middlewares, the router). A
:class:`LeanConnection` reads each request head itself, parses it with httptools (llhttp,
the parser of Node.js and of aiohttp's own C parser) and offers it to the listener's
:class:`~sidecar.web.lanes.Lane` (:class:`sidecar.proxy.express.ExpressLane`), which either
serves it completely or declines before writing a byte.

Whatever the lean front does not take is **handed over**: the connection becomes an
ordinary aiohttp connection (:class:`sidecar.web.listener.RequestHandler` subclass), which
is given every byte received from the first byte of that request on, exactly as it came off
the socket — so aiohttp parses, judges and answers it as if it had owned the connection all
along, and keeps the connection from then on. Handed over are:

* anything that is not a plain, complete HTTP/1.1 request in origin form, with no body or
  a body of at most 16 KiB framed by one ``Content-Length`` and received whole with its
  head (``Transfer-Encoding``, ``Expect``, ``Upgrade``, ``HEAD``, HTTP/1.0, a head llhttp
  refuses, bare-LF line ends, over ``proxy.max_header_size`` or
  :data:`~sidecar.app.MAX_HEADERS` lines): the framing and smuggling rules stay the ones
  aiohttp enforces and tests/security pins;
* whatever the lane declines (the proxy's: :mod:`sidecar.proxy.express`; the admin
  listener's, which serves mints: :mod:`sidecar.admin.lane`).

The lean front keeps the listener's limits (:mod:`sidecar.web.listener`): the connection
cap (counted with aiohttp's connections), ``request_head_timeout`` (408, then close) and
``keepalive_timeout``, checked by one sweep per listener rather than a timer per request.
A client that leaves cancels its request (as ``handler_cancellation`` does for aiohttp's),
so its upstream connection is freed at once.

Answers go out at the end of the event-loop iteration that wrote them
(:meth:`LeanConnection.write`; :class:`~sidecar.web.lean_limits.LeanConnections` sends them),
all of that iteration's together: a client on another core is woken once for the burst
rather than once per answer spread over the iteration, and pipelined answers given in one
iteration leave in one write. Anything else done to the socket (waiting for the client to
read, closing it, the 408, a handover) sends what is held first, so the order on the wire
is the order written.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import TYPE_CHECKING, Final, cast

from sidecar.telemetry import metrics
from sidecar.web.heads import parse_head
from sidecar.web.lanes import Lane, Started

if TYPE_CHECKING:
    from sidecar.web.listener import _Server

LOG = logging.getLogger("sidecar.lean")

# Seconds a connection closed after a 408 keeps reading (and dropping) what still comes.
_LINGER: Final = 2.0
# Bytes of pipelined requests kept while one is served; more pauses reading.
_READ_AHEAD: Final = 64 * 1024
# The largest request body the lean front forwards itself, when it came with its head
# (browsers send a small body in the head's packet); larger ones are aiohttp's, streamed.
_MAX_BODY: Final = 16 * 1024
# Answers held for the end of an iteration (pipelined ones, answered at once) beyond which
# they are sent at once, so that a client that does not read is paused as before.
_MAX_HELD: Final = 16


class _Starting:
    """The request being started: an answer given within :meth:`Lane.start` is noted."""

    def cancel(self) -> None:
        return None


_STARTING: Final = _Starting()
_UNASKED: Final = object()  # LeanConnection.sockname, not read yet


class LeanConnection(asyncio.Protocol):
    """One client connection of the proxy listener while the lean front serves it."""

    __slots__ = (
        "_answered",
        "_buffer",
        "_closing",
        "_current",
        "_drained",
        "_head_since",
        "_idle_since",
        "_keep_alive",
        "_lane",
        "_linger_until",
        "_max_head",
        "_max_headers",
        "_out",
        "_paused_reading",
        "_paused_writing",
        "_pending",
        "_refused",
        "_server",
        "_sockname",
        "peer",
        "transport",
    )

    def __init__(self, server: _Server, lane: Lane) -> None:
        self._server = server
        self._lane = lane
        # The listener's head limits (fixed for its life), read once per connection: the
        # server is interpreted, and each read of its attributes a lookup per request.
        self._max_head: int = server.max_head
        self._max_headers: int = server.max_headers
        self.transport: asyncio.Transport | None = None
        self.peer: str | None = None
        self._sockname: object = _UNASKED
        # What came and is not answered yet: the bytes as read while they are one whole
        # read (the usual case: no copy, and nothing held between requests), a bytearray
        # only while a head arrives in pieces.
        self._buffer: bytes | bytearray = b""
        self._current: Started | None = None  # the request in progress
        self._pending = b""  # its head, for a handover
        self._out: list[bytes] | None = None  # written, not sent yet (send_out)
        self._keep_alive = True
        self._answered = False
        self._refused = False
        self._closing = False
        self._paused_reading = False
        self._paused_writing = False
        self._drained: asyncio.Future[None] | None = None
        self._head_since: float | None = None  # the first byte of an incomplete head
        self._idle_since: float | None = None  # no request in progress, none begun
        self._linger_until: float | None = None  # after a 408: reading, dropping, until

    @property
    def sockname(self) -> object:
        """The listener's own address, as the socket gives it: asked when first needed
        (the admin lane's host check), not kept for every connection."""
        if self._sockname is _UNASKED:
            transport = self.transport
            self._sockname = None if transport is None else transport.get_extra_info("sockname")
        return self._sockname

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not an asyncio.Transport subclass).
        transport = cast(asyncio.Transport, transport)
        if not self._server.admit(transport):
            self._refused = True
            return
        # (asyncio and uvloop both set TCP_NODELAY on every TCP transport themselves.)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        # Interned: the connections from one address (a load balancer's) share one string.
        self.peer = sys.intern(peer[0]) if isinstance(peer, tuple) else None
        self._idle_since = self._server.clock()
        self._server.lean.add(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            return
        self.transport = None
        self._out = None
        self._server.lean.discard(self)
        self._server.open_connections -= 1
        current, self._current = self._current, None
        if current is not None:
            current.cancel()  # the client left: its upstream connection is freed at once
            self._server.lean.left()
        self._wake_writer()

    def data_received(self, data: bytes) -> None:
        if self._refused or self.transport is None or self._linger_until is not None:
            return
        buffer = self._buffer
        if not buffer:
            self._buffer = data
        elif isinstance(buffer, bytes):
            self._buffer = bytearray(buffer) + data
        else:
            buffer += data
        if self._current is None:
            self._next()
        elif len(self._buffer) > _READ_AHEAD and not self._paused_reading:
            self._paused_reading = True
            self.transport.pause_reading()

    def eof_received(self) -> None:
        # The client's FIN: the transport closes once this returns (half-closed clients
        # are not served on). An answer this iteration gave before it, held for the end of
        # the iteration, goes out first, as it did when each answer was written at once.
        self.send_out()

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        self._wake_writer()
        if self._current is None and self._go_on():
            self._next()  # the requests that waited for the client to read

    # -- Reply -----------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Send ``data`` at the end of this event-loop iteration, with whatever else this
        iteration writes (see the module docstring)."""
        if self.transport is None:
            return
        out = self._out
        if out is None:
            self._out = [data]
            self._server.lean.send_later(self)
        else:
            out.append(data)
            if len(out) >= _MAX_HELD:
                self.send_out()

    def send_out(self) -> None:
        """Send what :meth:`write` holds, now."""
        out = self._out
        if out is None:
            return
        self._out = None
        transport = self.transport
        # (Closing: nothing written after close() is sent, as with the transport's write.)
        if transport is not None and not transport.is_closing():
            if len(out) == 1:
                transport.write(out[0])
            else:
                transport.writelines(out)

    async def drain(self, within: float) -> bool:
        """Wait until the client takes what was written (at most ``within`` seconds);
        False when it did not, or left."""
        # Sent first, so that the transport's flow control sees it (a stream's pace).
        self.send_out()
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
        self._out = None  # (an abort drops what the transport holds too)
        if self.transport is not None:
            self.transport.abort()

    def finished(self) -> None:
        if self._current is _STARTING:
            self._answered = True  # _next goes on once start() returns
            return
        if self._current is None:
            return  # the client left meanwhile
        self._current = None
        self._pending = b""
        self._server.lean.left()
        if self._go_on():
            self._next()

    def committed(self) -> None:
        self._pending = b""

    def decline(self) -> None:
        if self._current is None or self._current is _STARTING:
            return
        self._current = None
        self._server.lean.left()
        self._buffer = self._pending + self._buffer  # aiohttp reads it from its first byte
        self._hand_over()

    # -- requests --------------------------------------------------------------------
    def _next(self) -> None:
        """Start on the requests in the buffer while their heads are complete and their
        answers come at once."""
        server = self._server
        while (transport := self.transport) is not None:
            buffer = self._buffer
            if not buffer:
                if self._closing:
                    self.send_out()
                    transport.close()
                else:
                    self._idle_since = server.clock()
                return
            if self._paused_writing:
                # The client is not reading its answers: no more of them until it does
                # (resume_writing), as aiohttp's handler waits in drain().
                if len(buffer) > _READ_AHEAD and not self._paused_reading:
                    self._paused_reading = True
                    transport.pause_reading()
                return
            self._idle_since = None
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > self._max_head or b"\n\n" in buffer or buffer[0] in b"\r\n":
                    self._hand_over()
                elif self._head_since is None:
                    self._head_since = server.clock()
                return
            self._head_since = None
            data = bytes(buffer[: end + 4])  # the same object when it is the whole read
            head = parse_head(data, self._max_headers, self._max_head)
            if head is None:
                self._hand_over()
                return
            taken = end + 4
            if head.length:
                taken += head.length
                if head.length > _MAX_BODY or len(buffer) < taken:
                    # Not all here (or too much to hold): aiohttp's server reads it as it
                    # comes, with its own limits. Nothing is read twice: no byte was taken.
                    self._hand_over()
                    return
                head.body = bytes(buffer[end + 4 : taken])
                data += head.body
            if len(buffer) == taken:
                self._buffer = b""
            elif isinstance(buffer, bytearray):
                del buffer[:taken]  # cheap at the front of a bytearray: pipelines
            else:
                self._buffer = bytearray(buffer[taken:])
            self._pending = data
            self._keep_alive = head.keep_alive
            self._current = _STARTING
            self._answered = False
            try:
                started = self._lane.start(head, self)
            except Exception:
                if self._answered:
                    # An answer was begun: nobody else may answer now. The request is over
                    # (counted out by the lane): drop the connection.
                    LOG.exception("the lean front failed after answering; connection dropped")
                    self._current = None
                    transport.abort()
                    return
                LOG.exception("the lean front failed on a request; aiohttp answers it")
                started = None
            if started is None:
                self._current = None
                self._buffer = data + self._buffer
                self._hand_over()
                return
            if not self._answered:
                self._current = started
                server.lean.entered()
                return
            self._current = None  # answered within start(): on to the next one
            if not self._go_on():
                return

    def _go_on(self) -> bool:
        """After an answer: whether to read the next request on this connection."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        if not self._keep_alive:
            self.send_out()
            transport.close()
            return False
        if self._paused_writing:
            return False  # resume_writing goes on
        if self._paused_reading:
            self._paused_reading = False
            transport.resume_reading()
        return True

    def _hand_over(self) -> None:
        """Make this connection aiohttp's, with every byte not yet answered."""
        transport = self.transport
        if transport is None:
            return
        self.send_out()  # (aiohttp's answers come after)
        self.transport = None
        server = self._server
        server.lean.discard(self)
        server.open_connections -= 1  # the handler counts itself in again
        metrics.handover()
        handler = server.handler()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._head_since is not None:  # an incomplete head: its time is partly spent
            handler.head_began(self._head_since)
        if self._paused_reading:
            transport.resume_reading()
        data, self._buffer = bytes(self._buffer), b""
        if data:
            handler.data_received(data)

    def _wake_writer(self) -> None:
        waiter, self._drained = self._drained, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the listener's limits (sidecar.web.lean_limits) ------------------------------
    def check_limits(self, now: float, head_timeout: float, keepalive_timeout: float) -> None:
        transport = self.transport
        if transport is None or self._current is not None:
            return
        self.send_out()
        if self._linger_until is not None:
            if now >= self._linger_until:
                transport.abort()
                self.transport = None
        elif self._head_since is not None and now - self._head_since >= head_timeout:
            LOG.info("request head not complete within %ss: 408, connection closed",
                     head_timeout)  # fmt: skip
            transport.write(self._server.head_timeout_answer)
            self._linger(transport, now)
        elif self._idle_since is not None and now - self._idle_since >= keepalive_timeout:
            transport.close()
            self.transport = None

    def _linger(self, transport: asyncio.Transport, now: float) -> None:
        """Close after an answer to a client that may still be sending: the answer, then
        our end's FIN, and what still comes is read and dropped for at most
        :data:`_LINGER` seconds (nginx's lingering close). Closed at once with unread
        bytes, the socket would send a reset, which can destroy the answer unread."""
        if not transport.can_write_eof():
            transport.close()
            self.transport = None
            return
        transport.write_eof()
        self._buffer = b""
        self._head_since = None
        self._linger_until = now + _LINGER

    def shut(self) -> None:
        """Shutdown: close now if idle, else once the request in progress is answered."""
        self._closing = True
        if self._current is None and self.transport is not None:
            self.send_out()
            self.transport.close()

    def cancel(self) -> None:
        """Shutdown's end: drop the connection (the request in progress is cancelled)."""
        self._out = None
        if self.transport is not None:
            self.transport.abort()
