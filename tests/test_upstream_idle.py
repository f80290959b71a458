"""The upstream pool's idle connections over real sockets: closed once they have been idle
for the pool's ``idle_timeout`` (the upstream sees the end of input), never while in use,
and kept free of the context of the request that happened to open them."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from pathlib import Path

from sidecar.proxy.pool import UpstreamPool
from sidecar.proxy.upstream_conn import Connection
from tests.harness import make_config, running_sidecar
from tests.test_upstream import OK, fetch, head, raw_upstream

IDLE = 0.25  # the pools' idle_timeout here, in seconds
BOUND = 10.0  # the longest any wait below may take


@asynccontextmanager
async def idle_pool(port: int, idle_timeout: float = IDLE) -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool(
        "127.0.0.1",
        port,
        limit=8,
        connect_timeout=5.0,
        response_timeout=BOUND,
        idle_timeout=idle_timeout,
    )
    try:
        yield pool
    finally:
        await pool.close()


class Recording:
    """An upstream answering ``OK`` to every request (``/hold``: ``ab`` of a four-byte body,
    then ``cd`` once :attr:`go_on` is set) and noting when each connection's input ends."""

    def __init__(self) -> None:
        self.go_on = asyncio.Event()
        self.ended: list[asyncio.Future[float]] = []  # per connection, in accept order
        self.paths: list[list[bytes]] = []  # the request targets each connection carried

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        ended = loop.create_future()
        paths: list[bytes] = []
        self.ended.append(ended)
        self.paths.append(paths)
        try:
            while request := await reader.readuntil(b"\r\n\r\n"):
                target = request.split(b" ", 2)[1]
                paths.append(target)
                if target == b"/hold":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
                    await writer.drain()
                    await self.go_on.wait()
                    writer.write(b"cd")
                else:
                    writer.write(OK)
                await writer.drain()
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:  # the pool closed the connection between requests
                ended.set_result(loop.time())
            raise


async def test_an_idle_connection_is_closed_after_the_idle_timeout() -> None:
    """The upstream sees the end of input once the connection has been idle for the
    timeout (not before), and the next request gets a new connection."""
    upstream = Recording()
    loop = asyncio.get_running_loop()
    async with raw_upstream(upstream) as up, idle_pool(up.port) as pool:
        assert (await fetch(pool))[2] == b"ok"
        released = loop.time()
        assert pool.idle_connections == 1
        async with asyncio.timeout(BOUND):
            closed_at = await upstream.ended[0]
        assert closed_at - released >= IDLE
        assert pool.idle_connections == 0
        assert (await fetch(pool))[2] == b"ok"
        assert up.connections == 2
        assert upstream.paths == [[b"/"], [b"/"]]


async def test_a_served_sidecar_closes_idle_upstream_connections_as_configured(
    tmp_path: Path,
) -> None:
    """``proxy.upstream_keepalive_timeout`` reaches the served sidecar's pool: its upstream
    connection is closed once idle that long, and the next request opens another."""
    upstream = Recording()
    loop = asyncio.get_running_loop()
    async with raw_upstream(upstream) as up:
        config = make_config(
            tmp_path,
            f"http://127.0.0.1:{up.port}",
            proxy={"upstream_keepalive_timeout": f"{int(IDLE * 1000)}ms"},
        )
        async with running_sidecar(tmp_path, config=config) as sc:
            await sc.sign_in()
            async with sc.client.get("/first") as response:
                assert (response.status, await response.read()) == (200, b"ok")
            answered = loop.time()
            async with asyncio.timeout(BOUND):
                closed_at = await upstream.ended[0]
            assert closed_at - answered >= IDLE - 0.05  # the answer left just before
            async with sc.client.get("/second") as response:
                assert (response.status, await response.read()) == (200, b"ok")
    assert upstream.paths == [[b"/first"], [b"/second"]]


async def test_a_connection_reused_in_time_stays_open() -> None:
    """Each use restarts the connection's idle time: used more often than the timeout, it
    is never closed, and one connection carries every request."""
    upstream = Recording()
    loop = asyncio.get_running_loop()
    async with raw_upstream(upstream) as up, idle_pool(up.port) as pool:
        until = loop.time() + 3 * IDLE
        requests = 0
        while loop.time() < until:
            assert (await fetch(pool))[2] == b"ok"
            requests += 1
            await asyncio.sleep(IDLE / 5)  # the pause between two requests is the point
        assert up.connections == 1
        assert len(upstream.paths[0]) == requests
        assert not upstream.ended[0].done()


async def test_the_idle_sweep_never_closes_a_connection_in_use() -> None:
    """A connection waiting for its answer's body stays open through sweeps that close
    the idle ones, carries its answer to the end, and only then starts its idle time."""
    upstream = Recording()
    loop = asyncio.get_running_loop()
    async with raw_upstream(upstream) as up, idle_pool(up.port) as pool:
        held = await pool.request("GET", head("GET", "/hold"))  # connection 1, in use
        try:
            assert (await fetch(pool))[2] == b"ok"  # connection 2, idle from now
            async with asyncio.timeout(BOUND):
                await upstream.ended[1]  # swept
            # Longer than the idle timeout in use, and at least one sweep ran meanwhile.
            assert not upstream.ended[0].done()
        finally:
            upstream.go_on.set()
        assert await held.read() == b"abcd"
        held.release()
        released = loop.time()
        assert pool.idle_connections == 1
        async with asyncio.timeout(BOUND):
            closed_at = await upstream.ended[0]
        assert closed_at - released >= IDLE
        assert up.connections == 2
        assert upstream.paths == [[b"/hold"], [b"/"]]


async def test_closing_the_pool_stops_its_idle_sweep() -> None:
    """Closed, the pool closes its idle connections at once and leaves nothing scheduled
    on the loop: no timer holds the pool (or keeps the loop busy) any more."""
    upstream = Recording()
    async with raw_upstream(upstream) as up:
        pool = UpstreamPool(
            "127.0.0.1", up.port, limit=8, connect_timeout=5.0, response_timeout=BOUND
        )  # the default idle timeout: 15 s
        assert (await fetch(pool))[2] == b"ok"
        assert _callbacks_of(pool)  # the idle sweep's timer, due in 15 s
        await pool.close()
        async with asyncio.timeout(BOUND):
            await upstream.ended[0]
        assert _callbacks_of(pool) == []


def _callbacks_of(pool: UpstreamPool) -> list[object]:
    """The bound methods of ``pool`` alive (a scheduled timer holds one; compiled with
    mypyc, the pool takes no weak reference)."""
    gc.collect()
    return [ref for ref in gc.get_referrers(pool) if getattr(ref, "__self__", None) is pool]


# -- the context of the request that opened a connection -----------------------------
REQUEST_STATE: ContextVar[object] = ContextVar("request_state")


class _State:
    """Something a request keeps in a context variable (as the access log's record)."""


async def test_a_pooled_connection_keeps_nothing_of_the_request_that_opened_it() -> None:
    """A connection opened in a request's task outlives the request in the pool; the
    request's context variables are freed with the request all the same."""
    upstream = Recording()
    async with raw_upstream(upstream) as up, idle_pool(up.port, idle_timeout=BOUND) as pool:

        async def one_request() -> weakref.ref[_State]:
            state = _State()
            REQUEST_STATE.set(state)
            assert (await fetch(pool))[2] == b"ok"
            return weakref.ref(state)

        state_ref = await asyncio.create_task(one_request())  # in a context of its own
        assert pool.idle_connections == 1
        await asyncio.sleep(0)  # the callback that woke this task holds the finished one
        gc.collect()
        assert state_ref() is None


async def test_a_pooled_connection_answers_in_no_request_context() -> None:
    """The callbacks of a connection opened by one request do not run in that request's
    context when the connection serves the next request in callbacks (the lean front's
    way: :meth:`UpstreamPool.take_idle`, then :meth:`Connection.start`)."""
    upstream = Recording()
    async with raw_upstream(upstream) as up, idle_pool(up.port, idle_timeout=BOUND) as pool:

        async def first_request() -> None:
            REQUEST_STATE.set(_State())
            assert (await fetch(pool))[2] == b"ok"

        await asyncio.create_task(first_request())
        seen: list[object] = []
        answered = asyncio.get_running_loop().create_future()

        class Listener:
            def upstream_event(self, conn: Connection) -> None:
                seen.append(REQUEST_STATE.get(None))
                if not conn.head_pending and not answered.done():
                    answered.set_result(None)

        conn = pool.take_idle()
        assert conn is not None
        conn.start(head(), Listener())
        pool.begin(conn)
        async with asyncio.timeout(BOUND):
            await answered
        response = pool.response(conn)
        assert await response.read() == b"ok"
        response.release()
        assert seen
        assert all(value is None for value in seen)
        assert up.connections == 1
