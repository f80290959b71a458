"""A raw-socket upstream, for tests that need one to misbehave exactly (stall mid-body,
flood a client that stopped reading, answer bytes no framework would write).

:class:`RawUpstream` reads request heads off each connection and hands every one to its
``answer`` coroutine, which writes whatever it likes and says whether to keep the
connection; :meth:`RawUpstream.pointing` is the harness's upstream slot pointed at it, for
``running_sidecar(..., upstream=up.pointing())``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Self

from tests.harness.upstream import Upstream

# (request head, reader, writer) -> whether to read another request on the connection.
Answer = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


def request_path(head: bytes) -> bytes:
    """The request target of a raw request head."""
    return head.split(b" ", 2)[1]


class RawUpstream:
    """Serves ``answer`` on a free 127.0.0.1 port inside ``async with``; counts the
    connections it was opened."""

    def __init__(self, answer: Answer) -> None:
        self.port = 0
        self.opened = 0
        self._answer = answer
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while head := await reader.readuntil(b"\r\n\r\n"):
                if not await self._answer(head, reader, writer):
                    break
                await writer.drain()
        writer.close()

    def pointing(self) -> Upstream:
        """The harness upstream slot, pointed at this server (never started or stopped by
        ``running_sidecar``)."""
        return _Pointing(port=self.port)

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()


class _Pointing(Upstream):
    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None
