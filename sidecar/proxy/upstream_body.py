"""The bodies of an upstream exchange: the request's, sent, and the response's, read.

:class:`BodyIO` is the half of :class:`~sidecar.proxy.upstream_conn.Connection` that moves
body bytes (a mixin: its state is the connection's own). Both directions keep flow
control: the request body waits for ``resume_writing``, and the socket stops being read
while more than :data:`HIGH_WATER` bytes of response body wait for the reader. Each wait
for more of the response body is bounded by the ``idle`` the reader passes: a body that
makes no progress for that long fails with
:class:`~sidecar.proxy.upstream_errors.UpstreamBodyTimeout` and the connection is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from typing import TYPE_CHECKING, Final, Protocol

from aiohttp import ClientError
from aiohttp.http_exceptions import HttpProcessingError

from sidecar.proxy.upstream_errors import UpstreamBodyTimeout

if TYPE_CHECKING:
    from sidecar.proxy.upstream_errors import UpstreamError

HIGH_WATER: Final = 256 * 1024  # response body bytes buffered before reading pauses
LOW_WATER: Final = 64 * 1024
# What reading the client's request body raises when the client goes away mid-body.
BODY_SOURCE_ERRORS: Final = (OSError, ClientError, HttpProcessingError)

# The state of a connection's current exchange.
IDLE, HEAD, BODY, DONE = range(4)


class _Exchange(Protocol):
    """The state of :class:`~sidecar.proxy.upstream_conn.Connection` that :class:`BodyIO`
    works on (the mixin's self-type)."""

    loop: asyncio.AbstractEventLoop
    _transport: asyncio.Transport | None
    _state: int
    _error: UpstreamError | None
    _waiter: asyncio.Future[None] | None
    _chunks: list[bytes]
    _buffered: int
    _reading_paused: bool
    _writing_paused: bool
    _drain: asyncio.Future[None] | None
    closed: bool
    deadline: float
    timeout: float

    @property
    def complete(self) -> bool: ...

    def abort(self) -> None: ...

    def _fail(self, error: UpstreamError) -> None: ...

    def _tell(self) -> None: ...

    def _stalled(self, idle: float) -> None: ...

    def take_body(self) -> bytes: ...

    def chunk_in_hand(self) -> bytes: ...

    async def next_chunk(self, idle: float | None = None) -> bytes: ...


class BodyIO:
    """Request body out, response body in (mixed into ``Connection``)."""

    __slots__ = ()
    # Declared for the type checker; the slots are the connection's.
    _waiter: asyncio.Future[None] | None
    _drain: asyncio.Future[None] | None

    async def _send_body(
        self: _Exchange, transport: asyncio.Transport, body: AsyncIterable[bytes], chunked: bool
    ) -> None:
        loop = self.loop
        try:
            async for chunk in body:
                if self.closed:
                    return
                # The upstream's time to answer counts from the last byte sent: a long
                # upload is not a slow upstream.
                self.deadline = loop.time() + self.timeout
                if not chunk:
                    continue
                if chunked:
                    transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                else:
                    transport.write(chunk)
                if self._writing_paused:
                    drain: asyncio.Future[None] = loop.create_future()
                    self._drain = drain
                    await drain
            if chunked and not self.closed:
                transport.write(b"0\r\n\r\n")
        except BODY_SOURCE_ERRORS:
            # The client went away mid-body: the upstream must not take a truncated body
            # for a whole one.
            self.abort()

    async def next_chunk(self: _Exchange, idle: float | None = None) -> bytes:
        """The next piece of the response body; ``b""`` at its end. Waiting longer than
        ``idle`` seconds for it raises :class:`UpstreamBodyTimeout` and drops the connection."""
        while True:
            if self._chunks:
                return self.chunk_in_hand()
            if self._error is not None:
                raise self._error
            if self._state == DONE:
                return b""
            waiter: asyncio.Future[None] = self.loop.create_future()
            self._waiter = waiter
            # One timer per wait, only when there is nothing to read yet: a body that keeps
            # arriving costs no timers, and a wait ends at the next byte.
            timer = None if idle is None else self.loop.call_later(idle, self._stalled, idle)
            try:
                await waiter
            finally:
                if timer is not None:
                    timer.cancel()

    def chunk_in_hand(self: _Exchange) -> bytes:
        """The next piece of the response body if it has arrived, else ``b""`` (at once:
        neither an error nor the body's end is looked at; :meth:`next_chunk` tells them)."""
        chunks = self._chunks
        if not chunks:
            return b""
        chunk = chunks.pop(0)
        self._buffered -= len(chunk)
        if self._reading_paused and self._buffered <= LOW_WATER:
            self._reading_paused = False
            if self._transport is not None and not self.closed:
                self._transport.resume_reading()
        return chunk

    def _stalled(self: _Exchange, idle: float) -> None:
        if self._state == BODY:
            self._fail(UpstreamBodyTimeout(f"no response body byte within {idle}s"))
            self.abort()
            self._tell()

    def take_body(self: _Exchange) -> bytes:
        """The whole response body, once :attr:`complete`."""
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        return body

    async def read(self: _Exchange) -> bytes:
        """The whole response body (for bodies known to be small); each wait for more of
        it is bounded by the response timeout."""
        if self.complete:
            return self.take_body()
        parts = []
        while chunk := await self.next_chunk(self.timeout):
            parts.append(chunk)
        return b"".join(parts)
