"""The upstream pool over real sockets: an aiohttp upstream, and raw asyncio servers that
answer exactly the bytes a test scripts (framing corner cases, broken upstreams)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from sidecar.proxy.pool import (
    HIGH_WATER,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeout,
)
from tests.harness import Sidecar, make_config, raw_request, running_sidecar

MiB = 1024 * 1024
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def head(method: str = "GET", path: str = "/", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: upstream\r\n{extra}\r\n".encode()


class RawUpstream:
    """Runs ``script`` for every accepted connection and counts them."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.port = 0
        self.open: dict[asyncio.StreamWriter, asyncio.Future[None]] = {}

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        done = self.open[writer] = asyncio.get_running_loop().create_future()
        try:
            await self.script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            del self.open[writer]
            done.set_result(None)

    async def close(self) -> None:
        """Drop every connection; the scripts waiting on them see the end of input."""
        waits = list(self.open.values())
        for writer in self.open:
            writer.transport.abort()
        await asyncio.gather(*waits)


@asynccontextmanager
async def raw_upstream(script: Script) -> AsyncIterator[RawUpstream]:
    upstream = RawUpstream(script)
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
    upstream.port = server.sockets[0].getsockname()[1]
    try:
        yield upstream
    finally:
        server.close()
        await upstream.close()
        await server.wait_closed()


@asynccontextmanager
async def pool_for(port: int, **options: float) -> AsyncIterator[UpstreamPool]:
    settings: dict[str, float] = {"limit": 8, "connect_timeout": 5.0, "response_timeout": 10.0}
    settings.update(options)
    pool = UpstreamPool(
        "127.0.0.1",
        port,
        limit=int(settings["limit"]),
        connect_timeout=settings["connect_timeout"],
        response_timeout=settings["response_timeout"],
    )
    try:
        yield pool
    finally:
        await pool.close()


async def fetch(
    pool: UpstreamPool, method: str = "GET", path: str = "/", extra: str = ""
) -> tuple[int, list[tuple[str, str]], bytes]:
    response = await pool.request(method, head(method, path, extra))
    try:
        return response.status, response.headers, await response.read()
    finally:
        response.release()


def answering(*answers: bytes) -> Script:
    """A script answering successive requests on a connection with ``answers``, then
    keeping the connection open until the client closes it."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
        await reader.read()

    return script


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


# -- a real aiohttp upstream ----------------------------------------------------------
@pytest.fixture
async def app_port() -> AsyncIterator[int]:
    async def hello(request: web.Request) -> web.StreamResponse:
        response = web.Response(text="hello", headers={"X-One": "1"})
        response.headers.add("Set-Cookie", "a=1")
        response.headers.add("Set-Cookie", "b=2")
        return response

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for part in (b"one,", b"two,", b"three"):
            await response.write(part)
        await response.write_eof()
        return response

    async def echo(request: web.Request) -> web.StreamResponse:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        framing = request.headers.get("Transfer-Encoding", "length")
        return web.Response(text=f"{size} {digest.hexdigest()} {framing}")

    app = web.Application()
    app.router.add_get("/hello", hello)
    app.router.add_get("/chunked", chunked)
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def test_headers_keep_their_order_and_duplicates(app_port: int) -> None:
    async with pool_for(app_port) as pool:
        status, headers, body = await fetch(pool, path="/hello")
    assert (status, body) == (200, b"hello")
    assert [v for n, v in headers if n == "Set-Cookie"] == ["a=1", "b=2"]
    names = [n for n, _ in headers]
    assert names.index("X-One") < names.index("Set-Cookie")


async def test_chunked_body_arrives_whole(app_port: int) -> None:
    async with pool_for(app_port) as pool:
        response = await pool.request("GET", head(path="/chunked"))
        try:
            assert b"".join([c async for c in response.chunks()]) == b"one,two,three"
        finally:
            response.release()


async def test_a_thousand_sequential_requests_share_one_connection(app_port: int) -> None:
    async with pool_for(app_port) as pool:
        for _ in range(1000):
            status, _, body = await fetch(pool, path="/hello")
            assert (status, body) == (200, b"hello")
        assert pool.opened == 1


async def test_concurrency_is_bounded_by_the_limit(app_port: int) -> None:
    async with pool_for(app_port, limit=3) as pool:
        results = await asyncio.gather(*(fetch(pool, path="/hello") for _ in range(50)))
        assert all(status == 200 for status, _, _ in results)
        assert pool.opened <= 3


@pytest.mark.parametrize("size", [0, 10, 3 * MiB])
@pytest.mark.parametrize("chunked", [False, True])
async def test_request_bodies_stream_with_either_framing(
    app_port: int, size: int, chunked: bool
) -> None:
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)

    async def body() -> AsyncIterator[bytes]:
        for at in range(0, size, 100_000):
            yield data[at : at + 100_000]

    framing = "Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {size}\r\n"
    async with pool_for(app_port) as pool:
        response = await pool.request(
            "POST", head("POST", "/echo", framing), body(), chunked=chunked
        )
        try:
            answer = (await response.read()).decode()
        finally:
            response.release()
        assert answer == f"{size} {hashlib.sha256(data).hexdigest()} " + (
            "chunked" if chunked else "length"
        )
        # The body was sent whole and answered: the connection is reused.
        await fetch(pool, path="/hello")
        assert pool.opened == 1


# -- framing corner cases ---------------------------------------------------------------
async def test_a_body_delimited_by_close_is_read_to_the_end() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ")
        await writer.drain()
        writer.write(b"the end")

    async with raw_upstream(script) as up, pool_for(up.port) as pool:
        assert (await fetch(pool))[2] == b"until the end"
        assert (await fetch(pool))[2] == b"until the end"
        assert up.connections == 2


async def test_head_answers_have_no_body_whatever_content_length_says() -> None:
    script = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    async with raw_upstream(script) as up, pool_for(up.port) as pool:
        status, headers, body = await fetch(pool, "HEAD")
        assert (status, body) == (200, b"")
        assert ("Content-Length", "1000") in headers
        # llhttp does not know it answered HEAD: that connection is not reused.
        await fetch(pool, "HEAD")
        assert up.connections == 2


async def test_interim_answers_are_skipped() -> None:
    script = answering(
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" + OK,
        OK,
    )
    async with raw_upstream(script) as up, pool_for(up.port) as pool:
        status, headers, body = await fetch(pool)
        assert (status, headers, body) == (200, [("Content-Length", "2")], b"ok")
        assert (await fetch(pool))[2] == b"ok"
        assert up.connections == 1


@pytest.mark.parametrize("status", [204, 304])
async def test_no_body_statuses_keep_the_connection(status: int) -> None:
    answer = f"HTTP/1.1 {status} X\r\nContent-Length: 5\r\n\r\n".encode()
    async with raw_upstream(answering(answer, OK)) as up, pool_for(up.port) as pool:
        assert (await fetch(pool))[::2] == (status, b"")
        assert (await fetch(pool))[2] == b"ok"
        assert up.connections == 1


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["connection-close", "http-1.0"],
)
async def test_connections_the_upstream_will_close_are_not_reused(answer: bytes) -> None:
    async with raw_upstream(answering(answer, answer)) as up, pool_for(up.port) as pool:
        assert (await fetch(pool))[2] == b"ok"
        assert (await fetch(pool))[2] == b"ok"
        assert up.connections == 2


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTTP/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Ctl: a\x01b\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
    ],
    ids=[
        "status",
        "version",
        "header-name",
        "control-char",
        "two-lengths",
        "chunk-size",
        "unasked-101",
        "huge-head",
    ],
)
async def test_malformed_answers_are_upstream_errors(answer: bytes) -> None:
    async with raw_upstream(answering(answer)) as up, pool_for(up.port) as pool:
        with pytest.raises(UpstreamError):
            await fetch(pool)


async def test_a_control_character_in_the_reason_falls_back_to_the_standard_phrase() -> None:
    answer = b"HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\n\r\nok"
    async with raw_upstream(answering(answer)) as up, pool_for(up.port) as pool:
        response = await pool.request("GET", head())
        assert (response.status, response.reason) == (200, None)
        response.release()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n",
    ],
    ids=["length", "chunked"],
)
async def test_a_body_cut_short_is_an_error_not_a_shorter_body(answer: bytes) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()

    async with raw_upstream(script) as up, pool_for(up.port) as pool:
        response = await pool.request("GET", head())
        received: list[bytes] = []
        with pytest.raises(UpstreamError, match="mid-body"):
            await collect(response, received)
        response.release()
        assert b"".join(received) == b"0123456789"


async def collect(response: UpstreamResponse, into: list[bytes]) -> None:
    async for chunk in response.chunks():
        into.append(chunk)


async def test_trailing_bytes_after_an_answer_cost_only_the_reuse() -> None:
    script = answering(OK + b"HTTP/1.1 200 OK\r\nX: y\r\n\r\n", OK)
    async with raw_upstream(script) as up, pool_for(up.port) as pool:
        status, headers, body = await fetch(pool)
        assert (status, headers, body) == (200, [("Content-Length", "2")], b"ok")
        assert (await fetch(pool))[2] == b"ok"
        assert up.connections == 2


async def test_events_arrive_as_they_are_sent() -> None:
    release = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"9\r\ndata: 1\n\n\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"9\r\ndata: 2\n\n\r\n0\r\n\r\n")
        await reader.read()

    async with raw_upstream(script) as up, pool_for(up.port) as pool:
        response = await pool.request("GET", head())
        events = response.chunks()
        assert await anext(events) == b"data: 1\n\n"
        release.set()
        assert await anext(events) == b"data: 2\n\n"
        assert [c async for c in events] == []
        response.release()


async def test_a_large_body_is_held_back_while_unread() -> None:
    total = 64 * MiB
    blocked = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n".encode())
        block = b"z" * (256 * 1024)
        for _ in range(total // len(block)):
            writer.write(block)
            if writer.transport.get_write_buffer_size() > 0:
                blocked.set()  # the client stopped reading the socket
            await writer.drain()
        await reader.read()

    async with raw_upstream(script) as up, pool_for(up.port) as pool:
        response = await pool.request("GET", head())
        await blocked.wait()
        chunks = response.chunks()
        first = await anext(chunks)
        size, peak = len(first), 0
        async for chunk in chunks:
            size += len(chunk)
            peak = max(peak, pool_buffered(response))
        response.release()
        assert size == total
        assert peak <= HIGH_WATER + 256 * 1024


def pool_buffered(response: object) -> int:
    conn = getattr(response, "_conn", None)
    return int(getattr(conn, "_buffered", 0))


# -- failures and retries -------------------------------------------------------------
async def test_slow_response_head_is_a_timeout() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with raw_upstream(script) as up, pool_for(up.port, response_timeout=0.2) as pool:
        with pytest.raises(UpstreamTimeout):
            await fetch(pool)


async def test_refused_connection_is_an_upstream_error() -> None:
    async with raw_upstream(answering(OK)) as up:
        port = up.port
    async with pool_for(port) as pool:
        with pytest.raises(UpstreamError, match="cannot connect"):
            await fetch(pool)


def closing_after_first_answer() -> Script:
    """Answers the first request on each connection; closes at the second, as an upstream
    whose keep-alive timer fired just as the request arrived."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")

    return script


async def test_a_stale_connection_is_retried_once_for_a_get() -> None:
    async with raw_upstream(closing_after_first_answer()) as up, pool_for(up.port) as pool:
        assert (await fetch(pool))[2] == b"ok"
        assert (await fetch(pool))[2] == b"ok"
        assert up.connections == 2


@pytest.mark.parametrize("with_body", [False, True])
async def test_a_stale_connection_is_not_retried_for_a_post(with_body: bool) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"payload"

    async with raw_upstream(closing_after_first_answer()) as up, pool_for(up.port) as pool:
        assert (await fetch(pool))[2] == b"ok"
        with pytest.raises(UpstreamError):
            await pool.request(
                "POST",
                head("POST", extra="Content-Length: 7\r\n" if with_body else ""),
                body() if with_body else None,
            )
        assert up.connections == 1


async def test_an_idle_connection_closed_by_the_upstream_is_not_used() -> None:
    closed = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        closed.set()

    async with raw_upstream(script) as up, pool_for(up.port) as pool:
        assert (await fetch(pool))[2] == b"ok"
        await closed.wait()
        assert (await fetch(pool))[2] == b"ok"
        assert up.connections == 2


async def test_a_cancelled_request_gives_its_slot_back() -> None:
    asked = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        asked.set()
        if up.connections == 1:
            await reader.read()  # never answers the first connection
        writer.write(OK)
        await writer.drain()
        await reader.read()

    async with raw_upstream(script) as up, pool_for(up.port, limit=1) as pool:
        task = asyncio.create_task(fetch(pool))
        await asked.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await fetch(pool))[2] == b"ok"


async def test_waiting_for_a_busy_pool_is_bounded_by_the_response_timeout() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
        await writer.drain()
        await reader.read()  # an open stream holds its connection (and slot)

    async with raw_upstream(script) as up, pool_for(up.port, limit=1, response_timeout=0.2) as pool:
        stream = await pool.request("GET", head())
        try:
            with pytest.raises(UpstreamTimeout, match="busy"):
                await fetch(pool)  # a 504, not a request parked forever
        finally:
            stream.release()


class Queued:
    """A :class:`~sidecar.proxy.pool.SlotWaiter` that notes what the pool told it; with
    ``wants`` False it has left (its client gone) and declines the slot."""

    def __init__(self, name: str, told: list[str], wants: bool = True) -> None:
        self.name = name
        self.told = told
        self.wants = wants
        self.slot_deadline = 0.0

    def slot_free(self) -> bool:
        self.told.append(f"{self.name}: slot" if self.wants else f"{self.name}: declined")
        return self.wants

    def slot_timeout(self) -> None:
        self.told.append(f"{self.name}: timeout")


async def test_queued_requests_and_waiting_tasks_share_one_queue_in_order() -> None:
    told: list[str] = []
    async with raw_upstream(answering(OK, OK, OK, OK)) as up, pool_for(up.port, limit=1) as pool:
        assert pool.slot_for(Queued("first", told))  # a free slot: taken at once
        assert not pool.slot_for(Queued("second", told))
        task = asyncio.create_task(fetch(pool))  # a task waits behind it
        await asyncio.sleep(0.05)
        assert not pool.slot_for(Queued("gone", told, wants=False))
        assert not pool.slot_for(Queued("third", told))
        assert told == []
        pool.give_back()  # first's slot: to the second, in callbacks
        assert told == ["second: slot"]
        pool.give_back()  # second's: to the task, which answers and passes it on
        assert (await asyncio.wait_for(task, 5))[2] == b"ok"
        # The task's slot went past the one that left to the third.
        assert told == ["second: slot", "gone: declined", "third: slot"]
        pool.give_back()
        assert (await asyncio.wait_for(fetch(pool), 5))[2] == b"ok"  # nobody holds a slot


async def test_a_queued_request_gets_no_slot_after_the_response_timeout() -> None:
    told: list[str] = []
    async with (
        raw_upstream(answering(OK)) as up,
        pool_for(up.port, limit=1, response_timeout=0.2) as pool,
    ):
        assert pool.slot_for(Queued("holder", told))
        assert not pool.slot_for(Queued("waiter", told))
        await asyncio.sleep(0.15)
        assert told == []
        await asyncio.sleep(0.4)  # the sweep runs every tenth of the timeout
        assert told == ["waiter: timeout"]
        pool.give_back()  # nobody queued: the slot is free again
        assert told == ["waiter: timeout"]
        assert (await asyncio.wait_for(fetch(pool), 5))[2] == b"ok"


# -- through the sidecar: what the client gets ------------------------------------------
@asynccontextmanager
async def sidecar_before(tmp_path: Path, answer: bytes) -> AsyncIterator[Sidecar]:
    """A sidecar passing every request to an upstream that answers ``answer`` and closes."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()

    async with (
        raw_upstream(script) as up,
        running_sidecar(
            tmp_path,
            config=make_config(
                tmp_path, f"http://127.0.0.1:{up.port}", {"unauthenticated": "pass"}
            ),
        ) as sc,
    ):
        yield sc


@pytest.mark.parametrize(
    ("answer", "content_type"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", None),
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html;charset=UTF-8\r\n\r\nhello",
            "text/html;charset=UTF-8",
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", None),
    ],
    ids=["untyped-length", "typed-until-close", "untyped-chunked"],
)
async def test_the_content_type_passes_as_sent(
    tmp_path: Path, answer: bytes, content_type: str | None
) -> None:
    async with sidecar_before(tmp_path, answer) as sc:
        response = await raw_request(sc.proxy_port, "GET", "/page")
    body = response.body
    if response.header("Transfer-Encoding") == "chunked":
        body = dechunk(body)
    assert (response.status, body) == (200, b"hello")
    assert response.header("Content-Type") == content_type


def dechunk(data: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return out
        out, data = out + data[:size], data[size + 2 :]


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        (b"HTTP/1.1 100 Continue\r\n\r\n" + OK, 200),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n", 204),
        (b"HTTP/1.1 2OO OK\r\n\r\n", 502),
        (b"HTTP/1.1 200 OK\r\nX-Ctl: a\x7fb\r\nContent-Length: 2\r\n\r\nok", 502),
    ],
    ids=["interim", "no-content", "malformed", "control-char"],
)
async def test_the_client_gets_the_final_answer_or_a_502(
    tmp_path: Path, answer: bytes, status: int
) -> None:
    async with sidecar_before(tmp_path, answer) as sc:
        response = await raw_request(sc.proxy_port, "GET", "/page")
    assert response.status == status


async def test_no_more_idle_connections_are_kept_than_max_idle(app_port: int) -> None:
    """A burst opens what it needs; once it is over, the pool keeps ``max_idle`` of them
    (the most recently used) and closes the rest, as nginx's ``keepalive`` does."""
    pool = UpstreamPool(
        "127.0.0.1", app_port, limit=8, connect_timeout=5.0, response_timeout=10.0, max_idle=2
    )
    try:
        responses = await asyncio.gather(
            *(pool.request("GET", head("GET", "/hello")) for _ in range(8))
        )
        assert pool.opened == 8  # all eight were in flight together
        for response in responses:
            assert await response.read() == b"hello"
            response.release()
        assert pool.idle_connections == 2
        await asyncio.gather(*(fetch(pool, path="/hello") for _ in range(2)))
        assert pool.opened == 8  # the two kept were reused
    finally:
        await pool.close()
