"""The hot path's upstream client: a pool of HTTP/1.1 keep-alive connections to one origin
(:class:`~sidecar.proxy.upstream_conn.Connection`: an asyncio Protocol parsing with httptools),
without the per-request machinery of ``aiohttp.ClientSession``.

The forwarder knows the exact bytes of the request head it wants to send, so a request is:
take the most recently idle connection (or open one; at most ``limit`` are busy at once),
write the head in one ``write``, stream the body if there is one, and wait for the response
head. The body then arrives chunk by chunk (:meth:`UpstreamResponse.chunks`), or whole
(:meth:`UpstreamResponse.read`) when it is known to be small.

* Idle connections are reused last-in first-out, at most ``max_idle`` kept, none reused
  once the upstream closed it or past ``idle_timeout``; one idle that long is closed (as
  nginx's upstream ``keepalive_timeout``, aiohttp's connector), by one sweep per pool due
  when the oldest idle connection is, at most a tenth of the timeout (1 s) late.
* A reused connection that the upstream closed before answering (its keep-alive timer
  fired as the request left) is retried once on a fresh connection, but only for an
  idempotent request without a body: one with a body cannot be sent twice.
* At most ``limit`` requests hold a slot; the others wait in one queue, first come first
  served, for at most ``response_timeout``: a task awaiting :meth:`UpstreamPool.request`, or
  a request served in callbacks (the express lane's, :class:`SlotWaiter`) queued with
  :meth:`UpstreamPool.slot_for` — a queued object rather than a task, its coroutines and its
  timer, because a burst larger than the pool queues hundreds at once.
* Connections are opened, and the pool's timers run, in an empty context: a transport
  keeps the context it was made in, so one opened in a request's task would keep that
  request's context variables (its access-log record) alive, and visible, while pooled.
* Deadlines: ``connect_timeout`` to connect; ``response_timeout`` for the response head,
  counted from the last request byte sent. One timer per pool checks the connections
  waiting for a head, instead of one timer per request. A body read whole
  (:meth:`UpstreamResponse.read`) may go ``response_timeout`` without a byte, a streamed
  one (:meth:`UpstreamResponse.chunks`) ``stream_idle_timeout``; then the connection is
  dropped and its slot freed when the response is released.

Errors: :class:`UpstreamTimeout` (no response head in time), its subclass
:class:`UpstreamBodyTimeout` (a body stalled) and :class:`UpstreamError` (everything else:
refused, closed, malformed).
"""

from __future__ import annotations

import asyncio
import contextvars
import ssl
from collections import deque
from collections.abc import AsyncIterable
from typing import Final, Protocol

from sidecar.proxy.upstream_body import HIGH_WATER
from sidecar.proxy.upstream_conn import Connection
from sidecar.proxy.upstream_errors import (
    StaleConnection,
    UpstreamBodyTimeout,
    UpstreamError,
    UpstreamTimeout,
)
from sidecar.proxy.upstream_response import UpstreamResponse

__all__ = [
    "HIGH_WATER",
    "SlotWaiter",
    "UpstreamBodyTimeout",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamResponse",
    "UpstreamTimeout",
]

IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class SlotWaiter(Protocol):
    """A request waiting for a slot in callbacks, not in a task (:meth:`UpstreamPool.slot_for`)."""

    slot_deadline: float  # set by the pool: when the wait ends in slot_timeout()

    def slot_free(self) -> bool:
        """A slot is this request's now; False when it no longer wants one (its client
        left), and the slot goes to the next in the queue."""

    def slot_timeout(self) -> None:
        """No slot came within the pool's ``response_timeout`` (the request is out of the
        queue, and holds no slot)."""


class UpstreamPool:
    """Keep-alive connections to ``host:port`` (TLS when ``tls``), for the app's lifetime."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: bool = False,
        limit: int,
        connect_timeout: float,
        response_timeout: float,
        max_head_size: int = 64 * 1024,
        idle_timeout: float = 15.0,
        stream_idle_timeout: float | None = None,
        max_idle: int | None = None,
    ) -> None:
        self._host = host
        self._max_idle = limit if max_idle is None else max_idle
        self._port = port
        self._ssl = ssl.create_default_context() if tls else None
        self._limit = limit
        self._connect_timeout = connect_timeout
        self._response_timeout = response_timeout
        self._max_head = max_head_size
        self._idle_timeout = idle_timeout
        # How late the idle sweep may close a connection: a sweep closes every connection
        # that is due within this, so there is at most one sweep per slack, however the
        # connections' idle times are spread.
        self._idle_slack = min(1.0, idle_timeout / 10)
        self._idle_sweeper: asyncio.TimerHandle | None = None
        # The context the pool's timers run in (passed, it is not copied per timer).
        self._context = contextvars.Context()
        self.stream_idle_timeout = (
            response_timeout if stream_idle_timeout is None else stream_idle_timeout
        )
        # A late 504 by a tenth of the timeout (at most a second) is no harm.
        self._tick = max(0.005, min(1.0, response_timeout / 10))
        self._sweeper: asyncio.TimerHandle | None = None
        self._busy: set[Connection] = set()
        self._slots_taken = 0
        # Tasks' futures and queued requests, in the order they came.
        self._slot_waiters: deque[asyncio.Future[None] | SlotWaiter] = deque()
        self._queued = 0  # SlotWaiters among them
        self._idle: list[Connection] = []
        self._closed = False
        self.opened = 0  # connections opened so far

    async def request(
        self,
        method: str,
        head: bytes,
        body: AsyncIterable[bytes] | None = None,
        *,
        chunked: bool = False,
        slot_held: bool = False,
        ready: bytes = b"",
    ) -> UpstreamResponse:
        """Send ``head`` (request line and headers, ending in the blank line) and the body
        (re-chunked when ``chunked``): ``ready``, the bytes of it in hand, in the head's
        write, then what ``body`` yields (None: nothing more). Return the final response
        head. ``slot_held``: the caller was given a slot already
        (:meth:`SlotWaiter.slot_free`)."""
        if slot_held:
            pass
        elif self._slots_taken < self._limit and not self._slot_waiters:
            self._slots_taken += 1
        else:
            await self._wait_for_slot()
        conn: Connection | None = None
        try:
            conn = self._pop_idle() or await self._connect()
            try:
                await self._exchange(conn, method, head, body, chunked, ready)
            except StaleConnection:
                if body is not None or ready or chunked or method not in IDEMPOTENT:
                    # A request with a body is not sent twice (the upstream may have
                    # acted on it before closing), not even one held whole.
                    raise UpstreamError("the upstream closed the idle connection") from None
                conn = await self._connect()
                await self._exchange(conn, method, head, body, chunked, ready)
        except BaseException:
            if conn is not None:
                conn.abort()
            self._free_slot()
            raise
        return UpstreamResponse(self, conn)

    @property
    def idle_connections(self) -> int:
        """Connections kept open for the next requests."""
        return len(self._idle)

    def take_idle(self) -> Connection | None:
        """A slot and an idle connection, if both are free now (no waiting, no connect);
        then :meth:`begin`, and :meth:`response` or :meth:`drop` when done."""
        if self._slots_taken >= self._limit or self._slot_waiters:
            return None
        conn = self._pop_idle()
        if conn is not None:
            self._slots_taken += 1
        return conn

    def slot_for(self, waiter: SlotWaiter) -> bool:
        """A slot for ``waiter`` now (True: it connects, ``request(..., slot_held=True)``),
        or ``waiter`` queued for one (False): its ``slot_free()`` is called with a slot,
        or its ``slot_timeout()`` after ``response_timeout``."""
        if self._slots_taken < self._limit and not self._slot_waiters:
            self._slots_taken += 1
            return True
        loop = asyncio.get_running_loop()
        waiter.slot_deadline = loop.time() + self._response_timeout
        self._slot_waiters.append(waiter)
        self._queued += 1
        if self._sweeper is None:
            self._sweeper = loop.call_later(self._tick, self._sweep, context=self._context)
        return False

    def give_back(self) -> None:
        """A slot from :meth:`slot_for` or ``slot_free()`` that was not used after all."""
        self._free_slot()

    def take_held(self) -> Connection | None:
        """An idle connection for a request given a slot (:meth:`SlotWaiter.slot_free`);
        None: it connects (``request(..., slot_held=True)``)."""
        return self._pop_idle()

    def begin(self, conn: Connection) -> None:
        """``conn`` (from :meth:`take_idle`) waits for a response head: enforce its deadline."""
        self._busy.add(conn)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(
                self._tick, self._sweep, context=self._context
            )

    def drop(self, conn: Connection) -> None:
        """Close ``conn`` and free its slot."""
        self._busy.discard(conn)
        conn.detach()
        conn.abort()
        self._free_slot()

    def response(self, conn: Connection) -> UpstreamResponse:
        """``conn``'s answer, read as :meth:`request` would return it."""
        self._busy.discard(conn)
        return UpstreamResponse(self, conn)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.abort()
        for timer in (self._sweeper, self._idle_sweeper):
            if timer is not None:
                timer.cancel()
        self._sweeper = self._idle_sweeper = None

    async def _exchange(
        self,
        conn: Connection,
        method: str,
        head: bytes,
        body: AsyncIterable[bytes] | None,
        chunked: bool,
        ready: bytes,
    ) -> None:
        busy = self._busy
        busy.add(conn)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(
                self._tick, self._sweep, context=self._context
            )
        try:
            await conn.exchange(method, head, body, chunked, ready)
        finally:
            busy.discard(conn)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn in list(self._busy):
            conn.check_deadline(now)
        if self._queued:
            self._expire(now)
        again = self._busy or self._queued
        self._sweeper = (
            loop.call_at(now + self._tick, self._sweep, context=self._context) if again else None
        )

    def _close_idle(self) -> None:
        """The idle sweep: close the connections idle for ``idle_timeout`` and forget the
        ones the upstream closed; again when the next one is due."""
        loop = asyncio.get_running_loop()
        oldest = loop.time() - self._idle_timeout
        idle = self._idle
        kept: list[Connection] = []
        for conn in idle:
            if conn.idle_since > oldest and not conn.closed:
                kept.append(conn)
            else:
                conn.abort()
        idle[:] = kept  # in the order they went idle: the first is the next one due
        due = kept[0].idle_since + self._idle_timeout + self._idle_slack if kept else 0.0
        self._idle_sweeper = (
            loop.call_at(due, self._close_idle, context=self._context) if kept else None
        )

    def _expire(self, now: float) -> None:
        """Out of the queue with the requests that waited ``response_timeout`` for a slot
        (a task's wait has its own timeout)."""
        waiters = self._slot_waiters
        expired = [
            w for w in waiters if not isinstance(w, asyncio.Future) and w.slot_deadline <= now
        ]
        if not expired:
            return
        self._slot_waiters = deque(
            w for w in waiters if isinstance(w, asyncio.Future) or w.slot_deadline > now
        )
        self._queued -= len(expired)
        for waiter in expired:
            waiter.slot_timeout()

    def _pop_idle(self) -> Connection | None:
        idle = self._idle
        if not idle:
            return None
        oldest = idle[-1].loop.time() - self._idle_timeout
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.idle_since > oldest:
                return conn
            conn.abort()
        return None

    async def _connect(self) -> Connection:
        if self._closed:
            raise UpstreamError("the upstream pool is closed")
        # In a task of its own with an empty context: the transport runs the connection's
        # callbacks in a copy of the context it is made in, for as long as it lives, and
        # a pooled connection outlives the request that happened to open it.
        opening = asyncio.get_running_loop().create_task(
            self._open(), context=contextvars.Context()
        )
        try:
            conn = await opening
        except BaseException:
            # Cancelled just as the connection was made: it is nobody's.
            if opening.done() and not opening.cancelled() and opening.exception() is None:
                opening.result().abort()
            raise
        self.opened += 1
        return conn

    async def _open(self) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(loop, self._max_head, self._response_timeout),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except TimeoutError:
            raise UpstreamError(f"no connection within {self._connect_timeout}s") from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect: {exc.strerror or exc}") from None
        return conn

    def release_connection(self, conn: Connection) -> None:
        try:
            if conn.finish() and not self._closed and self._max_idle > 0:
                conn.reused = True
                conn.idle_since = now = conn.loop.time()
                idle = self._idle
                if len(idle) >= self._max_idle:
                    # Kept: the one just used; closed: the one idle longest (as nginx's
                    # keepalive cache does), so a burst leaves no crowd of idle sockets.
                    idle.pop(0).abort()
                idle.append(conn)
                if self._idle_sweeper is None:
                    self._idle_sweeper = conn.loop.call_at(
                        now + self._idle_timeout + self._idle_slack,
                        self._close_idle,
                        context=self._context,
                    )
            else:
                conn.abort()
        finally:
            self._free_slot()

    async def _wait_for_slot(self) -> None:
        """Wait for one of the ``limit`` slots; as long as the upstream itself may take to
        answer, no longer (all slots held by streams or slow readers is a 504, not a hang)."""
        waiter = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            async with asyncio.timeout(self._response_timeout):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._free_slot()  # handed a slot just as it was cancelled: pass it on
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout(f"all {self._limit} upstream connections are busy") from None
            raise

    def _free_slot(self) -> None:
        """Hand the slot to the first live waiter, or give it back."""
        waiters = self._slot_waiters
        while waiters:
            waiter = waiters.popleft()
            if isinstance(waiter, asyncio.Future):
                if not waiter.done():
                    waiter.set_result(None)
                    return
            else:
                self._queued -= 1
                if waiter.slot_free():
                    return
        self._slots_taken -= 1
