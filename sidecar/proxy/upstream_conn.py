"""One HTTP/1.1 connection to the upstream: an :class:`asyncio.Protocol` that writes a request
and parses the answer with httptools (llhttp, in C). :mod:`sidecar.proxy.pool` pools them.

Framing decisions, per RFC 9112:

* interim ``1xx`` answers are skipped (``101`` is an error: no request asks to upgrade);
* ``204``/``304`` and answers to ``HEAD`` have no body, whatever ``Content-Length`` says;
  llhttp cannot be told a request was ``HEAD``, so that connection is not reused;
* an answer with neither ``Content-Length`` nor chunked coding ends when the upstream
  closes; any other answer cut short by a close is an error, never a shorter body;
* a connection can carry another request only when its answer was read to the end, the
  request body was sent whole, and neither side asked to close (``Connection: close``,
  HTTP/1.0), and no stray bytes followed the answer.

Every wait for the upstream is bounded: the response head by :attr:`Connection.deadline`
(the pool enforces it), the body as :mod:`sidecar.proxy.upstream_body` (the half that moves
body bytes, with flow control both ways) says.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from typing import Protocol, cast

import httptools

from sidecar.proxy.upstream_body import (
    BODY,
    DONE,
    HEAD,
    HIGH_WATER,
    IDLE,
    BodyIO,
)
from sidecar.proxy.upstream_errors import (
    StaleConnection,
    UpstreamError,
    UpstreamTimeout,
)


class Listener(Protocol):
    """Told of a bodyless exchange's progress (:meth:`Connection.start`): the head has come,
    more of the body, the end, or an error. Called outside the parser's callbacks."""

    def upstream_event(self, conn: Connection) -> None: ...


class Connection(BodyIO, asyncio.Protocol):
    """One keep-alive connection; at most one exchange at a time.

    The final response head is in :attr:`status`, :attr:`reason` and :attr:`headers` once
    :meth:`exchange` returns; the body is read with :meth:`next_chunk` or :meth:`read`, and
    :meth:`finish` ends the exchange. :meth:`start` begins an exchange without awaiting:
    its :class:`Listener` is called instead (until :meth:`detach`)."""

    # Up to proxy.max_connections of these sit in the pool: no per-instance dict.
    __slots__ = (
        "_buffered",
        "_chunks",
        "_drain",
        "_error",
        "_head_only",
        "_head_size",
        "_headers",
        "_interim",
        "_keep_alive",
        "_listener",
        "_max_head",
        "_parser",
        "_reading_paused",
        "_reason",
        "_received",
        "_sender",
        "_state",
        "_told",
        "_transport",
        "_until_eof",
        "_waiter",
        "_writing_paused",
        "closed",
        "deadline",
        "headers",
        "idle_since",
        "loop",
        "reason",
        "reused",
        "status",
        "timeout",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, max_head: int, timeout: float) -> None:
        self.loop = loop  # its clock too: asyncio.get_running_loop() is a getpid() on 3.11
        self._max_head = max_head
        self.timeout = timeout
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.deadline = 0.0  # for the response head; the pool enforces it
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[str, str]] = []
        self._state = IDLE
        self._head_only = False
        self._interim = False
        self._received = False
        self._head_size = 0
        self._reason = b""
        self._headers: list[tuple[str, str]] = []
        self._keep_alive = False
        self._until_eof = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        # A list, not a deque: an idle pooled connection keeps one (a deque's first block
        # alone is ~0.6 KiB), and an answer is a handful of chunks.
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._reading_paused = False
        self._writing_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._listener: Listener | None = None
        self._told = True  # the listener knows the latest state

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is one without subclassing asyncio.Transport).
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state == HEAD:
            self._received = True
            self._head_size += len(data)
        elif state != BODY:
            # Bytes nobody asked for: the connection cannot be trusted with another request.
            self._keep_alive = False
            if state == IDLE:
                self.abort()
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self._state != DONE:
                self._fail(UpstreamError(f"malformed response from the upstream: {exc}"))
            # After a complete answer, trailing bytes only cost the connection its reuse.
            self.abort()
        else:
            if state == HEAD and self._head_size > self._max_head and self._head_too_large():
                self._fail(UpstreamError("the upstream's response head is too large"))
                self.abort()
        self._tell()

    def _head_too_large(self) -> bool:
        # The bytes counted may include body bytes that came in the same packets.
        if self._state == HEAD:
            return True
        return sum(len(n) + len(v) + 4 for n, v in self.headers) > self._max_head

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._state == HEAD:
            if self.reused and not self._received:
                self._fail(StaleConnection("the idle connection was closed by the upstream"))
            else:
                self._fail(UpstreamError("the upstream closed the connection before answering"))
        elif self._state == BODY:
            if self._until_eof and exc is None:
                self._state = DONE
                self._wake()
            else:
                self._fail(UpstreamError("the upstream closed the connection mid-body"))
        self.resume_writing()
        self._tell()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- httptools callbacks -----------------------------------------------------------
    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode(), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        if self._state != HEAD:
            raise UpstreamError("an answer to no request")
        status = self._parser.get_status_code()
        if status < 200:
            if status == 101:
                raise UpstreamError("the upstream switched protocols unasked")
            # 100 Continue, 103 Early Hints: the final answer follows on this connection.
            self._interim = True
            self._headers = []
            self._reason = b""
            return
        self.status = status
        self.reason = self._reason
        self.headers = headers = self._headers
        self._headers = []
        keep_alive = self._parser.should_keep_alive()
        self._until_eof = not keep_alive and _delimited_by_close(headers)
        if self._head_only:
            self._state = DONE
            keep_alive = False
        else:
            self._state = BODY
        self._keep_alive = keep_alive
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._state == BODY:
            self._chunks.append(body)
            self._buffered += len(body)
            if self._buffered > HIGH_WATER and not self._reading_paused:
                self._reading_paused = True
                if self._transport is not None:
                    self._transport.pause_reading()
            self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        elif self._state == BODY:
            self._state = DONE
            self._wake()

    # -- the exchange ----------------------------------------------------------------
    async def exchange(
        self,
        method: str,
        head: bytes,
        body: AsyncIterable[bytes] | None,
        chunked: bool,
        ready: bytes = b"",
    ) -> None:
        """Send the request (``chunked``: re-chunk the body) and wait for the final response
        head, or raise :class:`UpstreamError`. The caller enforces :attr:`deadline`.

        The body is ``ready`` (bytes already in hand) followed by what ``body`` yields
        (None: the body ends with ``ready``). ``ready`` goes in the head's write, and so
        does the last chunk when ``body`` is None: a body received whole reaches the
        upstream with its head, not a read later."""
        transport = self._transport
        if transport is None or self.closed:
            raise StaleConnection("the idle connection was closed by the upstream")
        loop = self.loop
        self._state = HEAD
        self._head_only = method == "HEAD"
        self._received = False
        self._head_size = 0
        self._reason = b""
        self._headers = []
        self.deadline = loop.time() + self.timeout
        waiter = self._waiter = loop.create_future()
        if chunked:
            first = [head, b"%x\r\n" % len(ready), ready, b"\r\n"] if ready else [head]
            if body is None:
                first.append(b"0\r\n\r\n")
            transport.writelines(first)
        elif ready:
            transport.writelines((head, ready))
        else:
            transport.write(head)
        if body is not None:
            # Sent alongside: an upstream may answer (413, 401) before reading it all.
            self._sender = asyncio.create_task(self._send_body(transport, body, chunked))
        try:
            await waiter
        except BaseException:
            self._stop()
            raise
        if self._error is not None:
            self._stop()
            raise self._error

    def check_deadline(self, now: float) -> None:
        """Fail the exchange if it is still waiting for the response head at ``now``."""
        if self._state == HEAD and self.deadline <= now:
            self._fail(UpstreamTimeout(f"no response head within {self.timeout}s"))
            self.abort()
            self._tell()

    def start(self, request: bytes, listener: Listener) -> None:
        """Send a request held whole (its head, and any body its ``Content-Length``
        frames; not ``HEAD``) and return at once; ``listener`` hears of the answer.
        Raises :class:`StaleConnection` if the connection is gone."""
        transport = self._transport
        if transport is None or self.closed:
            raise StaleConnection("the idle connection was closed by the upstream")
        self._state = HEAD
        self._head_only = False
        self._received = False
        self._head_size = 0
        self._reason = b""
        self._headers = []
        self.deadline = self.loop.time() + self.timeout
        self._listener = listener
        self._told = True
        transport.write(request)

    def detach(self) -> None:
        """Stop telling the listener: the exchange goes on with :meth:`next_chunk`."""
        self._listener = None

    @property
    def error(self) -> UpstreamError | None:
        return self._error

    @property
    def head_pending(self) -> bool:
        """Still waiting for the final response head."""
        return self._state == HEAD

    @property
    def complete(self) -> bool:
        """Whether the whole body is buffered (and not so much that reading was paused)."""
        return self._state == DONE and self._error is None and not self._reading_paused

    def finish(self) -> bool:
        """End the exchange; whether the connection can carry another request."""
        sender, self._sender = self._sender, None
        reusable = (
            self._state == DONE
            and self._error is None
            and self._keep_alive
            and not self.closed
            and (sender is None or sender.done())
        )
        if sender is not None and not sender.done():
            sender.cancel()
        self._state = IDLE
        self._listener = None
        self._told = True
        self._chunks.clear()
        self._buffered = 0
        # The answer's head belongs to its UpstreamResponse now; an idle connection in the
        # pool need not keep it alive.
        self.headers = []
        self.reason = b""
        if self._reading_paused:
            self._reading_paused = False
            if reusable and self._transport is not None:
                self._transport.resume_reading()
        return reusable

    def abort(self) -> None:
        self._keep_alive = False
        if self._transport is not None and not self.closed:
            self._transport.abort()

    def _stop(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None and not sender.done():
            sender.cancel()
        self.abort()

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        self._told = False
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _tell(self) -> None:
        # After the parser is done with the bytes: the listener may end the exchange and
        # start the next one on this connection.
        listener = self._listener
        if listener is not None and not self._told:
            self._told = True
            listener.upstream_event(self)


def _delimited_by_close(headers: list[tuple[str, str]]) -> bool:
    """Whether a response without keep-alive has its body end at the connection's close."""
    length = chunked = False
    for name, value in headers:
        lower = name.lower()
        if lower == "content-length":
            length = True
        elif lower == "transfer-encoding":
            chunked = value.rsplit(",", 1)[-1].strip().lower() == "chunked"
    return not chunked and not length
