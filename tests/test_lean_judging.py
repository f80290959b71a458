"""Requests with one session cookie that the cache cannot judge: the store is asked once.

When the session cache has no entry for a cookie (after a restart, once ``cache_ttl`` ran
out, or before the first request of a new session), a page's burst of requests would each
look the session up in the store, each in a task of its own. The lean front's lane judges
the first in a task and lets the others wait for that judgement
(:meth:`sidecar.proxy.express.ExpressLane._judge`): the same session (or lack of one), each
judged for its own path (:meth:`sidecar.proxy.gateway.Gateway.same_session`).
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

from sidecar.session_cookies import session_key
from sidecar.store.base import SessionRecord
from sidecar.store.sqlite import SQLiteStore
from tests.harness.served import running_sidecar


class GatedStore(SQLiteStore):
    """A real SQLite store that counts session reads and, while ``gate`` is set and not
    open, holds them (the test decides when the store answers)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.reads = 0
        self.gate: asyncio.Event | None = None

    async def get_session(self, key: str) -> SessionRecord | None:
        self.reads += 1
        if self.gate is not None:
            await self.gate.wait()
        return await super().get_session(key)


def _send(port: int, cookie: str, path: str) -> socket.socket:
    """A blocking client socket that sent ``GET path`` (they add no tasks to the loop)."""
    sock = socket.create_connection(("127.0.0.1", port), 10)
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    return sock


def _status(sock: socket.socket) -> int:
    with sock:
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    answer = b"".join(chunks)
    return int(answer.split(b" ", 2)[1]) if answer else 0


async def _statuses(socks: list[socket.socket]) -> list[int]:
    return list(
        await asyncio.wait_for(asyncio.gather(*(asyncio.to_thread(_status, s) for s in socks)), 10)
    )


async def _until(condition: object, what: str) -> None:
    deadline = time.monotonic() + 5
    while not callable(condition) or not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


async def test_a_burst_with_one_uncached_session_cookie_asks_the_store_once(
    tmp_path: Path,
) -> None:
    store = GatedStore(str(tmp_path / "gated.db"))
    async with running_sidecar(tmp_path, store=store) as sc:
        cookie = f"{sc.cookie_name}={await sc.login()}"
        reads = store.reads
        store.gate = asyncio.Event()
        # Forwarded, refused by the role's rules, public: each judged for its own path.
        paths = ["/app/page"] * 20 + ["/private/x", "/static/site.css"] + ["/app/more"] * 8
        before = len(asyncio.all_tasks())
        socks = [_send(sc.proxy_port, cookie, path) for path in paths]
        await _until(lambda: store.reads > reads, "the first request never asked the store")
        await asyncio.sleep(0.3)  # every request in: the first judged, the rest waiting
        # One task judges; the requests waiting for it have none (29 more otherwise).
        assert len(asyncio.all_tasks()) - before <= 3
        store.gate.set()
        statuses = await _statuses(socks)
        assert store.reads == reads + 1
        assert statuses == [200] * 20 + [403, 200] + [200] * 8
        forwarded = [r for r in sc.upstream.requests if r.raw_path.startswith("/app/")]
        assert len(forwarded) == 28
        users = {tuple(r.values("X-Forwarded-User")) for r in forwarded}
        assert len(users) == 1  # the session's user, on every one
        assert len(users.pop()) == 1
        # The public path went without identity, as the gateway forwards it.
        (public,) = [r for r in sc.upstream.requests if r.raw_path == "/static/site.css"]
        assert public.values("X-Forwarded-User") == []


async def test_when_the_first_requests_client_leaves_the_others_are_judged_all_the_same(
    tmp_path: Path,
) -> None:
    store = GatedStore(str(tmp_path / "gated.db"))
    async with running_sidecar(tmp_path, store=store) as sc:
        cookie = f"{sc.cookie_name}={await sc.login()}"
        reads = store.reads
        store.gate = asyncio.Event()
        first = _send(sc.proxy_port, cookie, "/app/first")
        await _until(lambda: store.reads == reads + 1, "the first request never asked the store")
        others = [_send(sc.proxy_port, cookie, "/app/other") for _ in range(5)]
        await asyncio.sleep(0.2)  # waiting for the first one's judgement
        first.close()  # its lookup is cancelled with it
        await asyncio.sleep(0.2)
        store.gate.set()
        assert await _statuses(others) == [200] * 5
        # The first one's lookup was cancelled: one of the others asked again, once.
        assert store.reads == reads + 2


async def test_a_dead_session_cookie_burst_is_refused_with_one_store_read(tmp_path: Path) -> None:
    store = GatedStore(str(tmp_path / "gated.db"))
    async with running_sidecar(tmp_path, store=store) as sc:
        cookie = f"{sc.cookie_name}={'x' * 43}"  # well-formed, no such session
        reads = store.reads
        store.gate = asyncio.Event()
        socks = [_send(sc.proxy_port, cookie, "/app/page") for _ in range(10)]
        await _until(lambda: store.reads > reads, "the first request never asked the store")
        await asyncio.sleep(0.2)
        store.gate.set()
        # unauthenticated: deny (the preset): every one refused, from one lookup.
        statuses = await _statuses(socks)
        assert len(set(statuses)) == 1
        assert statuses[0] in (401, 403)
        assert store.reads == reads + 1


class LateStore(SQLiteStore):
    """A real SQLite store whose next session read, once ``hold`` is set, reads the row at
    once but answers only when ``hold`` opens: a lookup whose read was done before a
    logout and whose answer comes after it."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.hold: asyncio.Event | None = None
        self.held = asyncio.Event()

    async def get_session(self, key: str) -> SessionRecord | None:
        record = await super().get_session(key)
        hold, self.hold = self.hold, None
        if hold is not None:
            self.held.set()
            await hold.wait()
        return record


@pytest.mark.parametrize("lean_front", [True, False], ids=["lean", "aiohttp"])
@pytest.mark.parametrize("end", ["logout", "revocation"])
async def test_a_request_after_a_logout_is_not_judged_by_a_lookup_from_before_it(
    tmp_path: Path, end: str, lean_front: bool
) -> None:
    """A lookup that read the live session before a logout (or an admin's end of the
    user's sessions) and answers after it: neither a request sent after the end may share
    it (the lane's one lookup per cookie), nor may it leave the session in the cache."""
    store = LateStore(str(tmp_path / "late.db"))
    overrides: dict[str, object] = {"proxy": {"lean_front": lean_front}}
    async with running_sidecar(tmp_path, store=store, overrides=overrides) as sc:
        value = await sc.login(userId="user-9")
        cookie = f"{sc.cookie_name}={value}"
        hold = store.hold = asyncio.Event()
        first = _send(sc.proxy_port, cookie, "/app/first")  # read the live session, held
        await asyncio.wait_for(store.held.wait(), 5)
        if end == "logout":
            ending = sc.http.post(
                sc.proxy_url + "/_sidecar/logout",
                headers=sc.cookie_header(value),
                allow_redirects=False,
            )
        else:
            ending = sc.http.delete(
                sc.admin_url + "/sessions", params={"user_id": "user-9"}, headers=sc.admin_headers
            )
        async with ending as out:
            assert out.status in (200, 303), await out.text()
        assert await store.get_session(session_key(value)) is None  # ended, durably
        # Sent after the end was answered: not with the session the held read found.
        after = _send(sc.proxy_port, cookie, "/app/after")
        await asyncio.sleep(0.2)
        hold.set()
        statuses = await _statuses([first, after])
        assert statuses[1] in (401, 403), statuses
        # Nor any request later: the held read must not have put the session in the cache.
        later = await _statuses([_send(sc.proxy_port, cookie, "/app/later")])
        assert later[0] in (401, 403), later
        assert not [r for r in sc.upstream.requests if r.raw_path in ("/app/after", "/app/later")]
