"""A response head from the upstream pool (:mod:`sidecar.proxy.pool`) and its body, read
whole or chunk by chunk; releasing it gives the connection back to the pool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from sidecar.proxy.upstream_conn import Connection
from sidecar.proxy.upstream_errors import UpstreamError

if TYPE_CHECKING:
    from sidecar.proxy.pool import UpstreamPool


class UpstreamResponse:
    """A final response head; read the body with :meth:`read` or :meth:`chunks`, then call
    :meth:`release` exactly once."""

    __slots__ = ("_conn", "_pool", "headers", "reason", "status")

    def __init__(self, pool: UpstreamPool, conn: Connection) -> None:
        self._pool = pool
        self._conn: Connection | None = conn
        self.status = conn.status
        reason = conn.reason.decode("latin-1")
        # aiohttp refuses control characters in a status line; the standard phrase will do.
        self.reason = reason if reason and reason.isprintable() else None
        self.headers = conn.headers  # (name, value) in the upstream's order, duplicates kept

    @property
    def complete(self) -> bool:
        """Whether the whole body has arrived (reading it will not wait)."""
        return self._conn is not None and self._conn.complete

    @property
    def content_length(self) -> int | None:
        for name, value in self.headers:
            if len(name) == 14 and name.lower() == "content-length":
                return int(value) if value.isascii() and value.isdigit() else None
        return None

    def take_body(self) -> bytes:
        """The whole body, when it is :attr:`complete`."""
        if self._conn is None or not self._conn.complete:
            raise UpstreamError("the body is not complete")
        return self._conn.take_body()

    async def read(self) -> bytes:
        """The whole body; for bodies known to be small."""
        if self._conn is None:
            raise UpstreamError("the response was released")
        return await self._conn.read()

    def chunk_in_hand(self) -> bytes:
        """The next piece of the body if it has already arrived (taken: :meth:`chunks`
        goes on after it), else ``b""``; never waits."""
        conn = self._conn
        return b"" if conn is None else conn.chunk_in_hand()

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises :class:`UpstreamError` if it is cut short, and
        :class:`UpstreamBodyTimeout` if it stalls for the pool's ``stream_idle_timeout``."""
        conn = self._conn
        if conn is None:
            raise UpstreamError("the response was released")
        return _Chunks(conn, self._pool.stream_idle_timeout)

    def release(self) -> None:
        """Give the connection back, or close it if it cannot carry another request."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release_connection(conn)


class _Chunks:
    """:meth:`UpstreamResponse.chunks`: an async iterator class rather than an async
    generator, which mypyc cannot compile (this module is on the hot path's compiled list:
    :mod:`sidecar.compiled`)."""

    __slots__ = ("_conn", "_idle")

    def __init__(self, conn: Connection, idle: float) -> None:
        self._conn: Connection | None = conn
        self._idle = idle

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        if conn is not None:
            chunk = await conn.next_chunk(self._idle)
            if chunk:
                return chunk
            self._conn = None  # the end: nothing more, ever (as a finished generator)
        raise StopAsyncIteration
