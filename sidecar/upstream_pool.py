"""A lean HTTP/1.1 client for the one upstream: pooled keep-alive connections and aiohttp's
C response parser, without the per-request machinery of ``aiohttp.ClientSession``.

The forwarder already knows the exact bytes of the request head it wants to send (it
filters the client's raw headers), so a request here is: take an idle connection (or open
one, at most ``limit`` at a time), write the head in one ``write``, stream the body if there
is one, and wait for the parsed response head. The body is then read from the parser's
:class:`aiohttp.StreamReader`, with its flow control, exactly as ``ClientResponse.content``.

A connection goes back to the pool only when its response was read to the end and
neither side asked to close it. A request without a body on a *reused* connection that
the upstream closed before answering (its keep-alive timer fired) is retried once on a
fresh connection, as ``aiohttp.ClientSession`` does.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterable
from typing import Final

from aiohttp import (
    ClientConnectionError,
    ClientError,
    ClientOSError,
    ServerDisconnectedError,
    StreamReader,
)
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_writer import StreamWriter
from multidict import CIMultiDictProxy
from yarl import URL

_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class UpstreamResponse:
    """The parsed response head; ``content`` streams the body. Call :meth:`release` once."""

    __slots__ = ("_body_task", "_conn", "_pool", "content", "headers", "reason", "status")

    def __init__(
        self,
        pool: UpstreamPool,
        conn: ResponseHandler,
        status: int,
        reason: str,
        headers: CIMultiDictProxy[str],
        content: StreamReader,
        body_task: asyncio.Task[None] | None,
    ) -> None:
        self._pool = pool
        self._conn: ResponseHandler | None = conn
        self._body_task = body_task
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content = content

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None and value.isdigit() else None

    async def read(self) -> bytes:
        return await self.content.read()

    def release(self) -> None:
        """Give the connection back (or close it if it cannot carry another request)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool._release(conn, self._body_task)


class UpstreamPool:
    """Keep-alive connections to one ``http(s)://host:port`` origin."""

    def __init__(
        self,
        origin: URL,
        *,
        limit: int,
        connect_timeout: float,
        keepalive: float = 15.0,
        max_field_size: int = 8190,
    ) -> None:
        self._host = origin.host or "127.0.0.1"
        self._port = origin.port or (443 if origin.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if origin.scheme == "https" else None
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive
        self._max_field_size = max_field_size
        self._slots = asyncio.Semaphore(limit)
        self._idle: list[tuple[ResponseHandler, float]] = []
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()

    async def request(
        self,
        method: str,
        head: bytes,
        body: AsyncIterable[bytes] | None = None,
        *,
        chunked: bool = False,
    ) -> UpstreamResponse:
        """Send ``head`` (request line and headers, ending in a blank line) and ``body``.

        Raises ``aiohttp.ClientError``/``OSError`` when the upstream cannot be reached or
        breaks off before answering; the caller's timeout bounds the wait."""
        await self._slots.acquire()
        try:
            conn, reused = await self._connection()
            try:
                return await self._exchange(conn, method, head, body, chunked)
            except (ServerDisconnectedError, ClientOSError):
                if not (reused and body is None and method in _IDEMPOTENT):
                    raise
            conn, _ = await self._connection(fresh=True)
            return await self._exchange(conn, method, head, body, chunked)
        except BaseException:
            self._slots.release()
            raise

    async def _exchange(
        self,
        conn: ResponseHandler,
        method: str,
        head: bytes,
        body: AsyncIterable[bytes] | None,
        chunked: bool,
    ) -> UpstreamResponse:
        conn.set_response_params(
            skip_payload=method == "HEAD",
            read_until_eof=True,
            auto_decompress=False,
            max_line_size=self._max_field_size,
            max_field_size=self._max_field_size,
        )
        body_task: asyncio.Task[None] | None = None
        try:
            transport = conn.transport
            if transport is None or transport.is_closing():
                raise ServerDisconnectedError()
            transport.write(head)
            if body is not None:
                # Sent alongside: an upstream may answer (413, 401) before reading it all.
                body_task = asyncio.create_task(_send_body(conn, body, chunked))
            message, payload = await conn.read()
            while 100 <= message.code < 200 and message.code != 101:
                # Interim answers (100 Continue, 103 Early Hints): the final one follows.
                message, payload = await conn.read()
        except BaseException:
            if body_task is not None:
                body_task.cancel()
            conn.close()
            raise
        return UpstreamResponse(
            self, conn, message.code, message.reason, message.headers, payload, body_task
        )

    async def _connection(self, *, fresh: bool = False) -> tuple[ResponseHandler, bool]:
        if self._closed:
            raise ClientConnectionError("the upstream pool is closed")
        now = time.monotonic()
        while self._idle and not fresh:
            conn, since = self._idle.pop()
            if now - since < self._keepalive and conn.is_connected() and not conn.should_close:
                return conn, True
            conn.close()
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout):
            _, conn = await loop.create_connection(
                lambda: ResponseHandler(loop),
                self._host,
                self._port,
                ssl=self._ssl,
                server_hostname=self._host if self._ssl else None,
            )
        return conn, False

    def _release(self, conn: ResponseHandler, body_task: asyncio.Task[None] | None) -> None:
        try:
            if body_task is not None and not body_task.done():
                body_task.cancel()
                conn.close()
            elif self._closed or conn.should_close or not conn.is_connected():
                conn.close()
            else:
                self._idle.append((conn, time.monotonic()))
        finally:
            self._slots.release()


async def _send_body(conn: ResponseHandler, body: AsyncIterable[bytes], chunked: bool) -> None:
    writer = StreamWriter(conn, asyncio.get_running_loop())
    if chunked:
        writer.enable_chunking()
    try:
        async for chunk in body:
            await writer.write(chunk)
        await writer.write_eof()
    except (OSError, ClientError, HttpProcessingError):
        # The client or the upstream went away mid-body: the exchange cannot complete.
        conn.close()
