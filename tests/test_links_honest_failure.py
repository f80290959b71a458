"""Auth links fail as honestly as refer links: once the burn is sent, a store failure is
503 ``burn_unconfirmed`` (you are not signed in; a retry may say "used"), never the plain
``store_unavailable`` that promises nothing happened.

The store is the real :class:`RedisStore` on a real redis-server; all it is told is *when*
to SIGSTOP that server — just before it sends the burn — since the reads before it must be
answered for the redemption to get that far.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from sidecar.store.base import BurnResult, SessionRecord
from sidecar.store.redis import RedisStore
from tests.conftest import RedisServer
from tests.harness import Sidecar, running_sidecar

pytestmark = pytest.mark.redis

JSON = {"Accept": "application/json"}


class FreezesAtTheBurn(RedisStore):
    """The real Redis store, which SIGSTOPs its server right before sending an armed burn
    (``when="before"``) or right after the burn's answer (``"after"``: the user update,
    link deletion and session that follow find the store frozen)."""

    def __init__(self, server: RedisServer, when: str = "before") -> None:
        super().__init__(server.url, prefix=f"honest-{os.getpid()}-{time.monotonic_ns()}:")
        self.server = server
        self.when = when
        self.armed = False
        self.frozen = False

    async def burn(
        self, token_id: str, expires_at: float, session: SessionRecord | None = None
    ) -> BurnResult:
        if not self.armed:
            return await super().burn(token_id, expires_at, session)
        self.armed, self.frozen = False, True
        if self.when == "before":
            os.kill(self.server.pid, signal.SIGSTOP)
            return await super().burn(token_id, expires_at, session)
        result = await super().burn(token_id, expires_at, session)
        os.kill(self.server.pid, signal.SIGSTOP)
        return result


async def _redeem(sc: Sidecar, how: str, link: dict[str, str]) -> tuple[int, str, bool]:
    """Redeem ``link`` by its action link (``GET``) or its ``hashed_token`` (``POST``):
    the status, the failure's ``error`` (or ``""``), whether a session cookie was set."""
    if how == "action_link":
        parts = urlsplit(link["action_link"])
        url = f"{sc.proxy_url}{parts.path}?{parts.query}"
        response = await sc.http.get(url, headers=JSON, allow_redirects=False)
    else:
        body = {"type": "magiclink", "token_hash": link["hashed_token"]}
        response = await sc.http.post(sc.proxy_url + "/_sidecar/verify", json=body)
    async with response:
        doc = await response.json() if response.status >= 400 else {}
        return response.status, str(doc.get("error", "")), sc.cookie_name in response.cookies


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("how", ["action_link", "token_hash"])
async def test_a_burn_sent_to_a_frozen_redis_is_burn_unconfirmed(
    tmp_path: Path, redis_server: RedisServer, how: str, when: str
) -> None:
    store = FreezesAtTheBurn(redis_server, when)
    async with running_sidecar(tmp_path, store=store) as sc:
        # A first redemption loads the burn's script, so the frozen one is the write itself
        # (an EVALSHA that would only answer NOSCRIPT could not burn anything).
        warm_up = await sc.generate_link(type="magiclink", email=f"warm-{how}-{when}@example.com")
        assert (await _redeem(sc, how, warm_up))[0] in (200, 303)
        email = f"frozen-{how.replace('_', '-')}-{when}@example.com"
        link = await sc.generate_link(type="magiclink", email=email)
        store.armed = True
        started = time.monotonic()
        try:
            status, error, cookie = await _redeem(sc, how, link)
        finally:
            os.kill(redis_server.pid, signal.SIGCONT)
        elapsed = time.monotonic() - started
        assert store.frozen  # the redemption got as far as the burn
        assert (status, error, cookie) == (503, "burn_unconfirmed", False)
        assert elapsed < 5, elapsed  # the store's call timeout, not a hang
        await store.ping()  # awake again; the frozen burn, queued first, has run
        user = await store.get_user_by_email(email)
        assert user is not None
        assert await store.list_user_sessions(user.id) == []
        # The queued burn ran when Redis woke: the retry says "used", as the 503 warned.
        assert (await _redeem(sc, how, link))[:2] == (410, "used")
        assert await store.list_user_sessions(user.id) == []
        fresh = await sc.generate_link(type="magiclink", email=email)
        assert (await _redeem(sc, how, fresh))[0] in (200, 303)


async def test_a_store_down_before_the_burn_is_still_store_unavailable(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Nothing was sent: the plain 503 stays, so the burn_unconfirmed above is not simply
    every 503 renamed."""
    store = FreezesAtTheBurn(redis_server)
    async with running_sidecar(tmp_path, store=store) as sc:
        link = await sc.generate_link(type="magiclink", email="before-burn@example.com")
        os.kill(redis_server.pid, signal.SIGSTOP)
        try:
            status, error, cookie = await _redeem(sc, "token_hash", link)
        finally:
            os.kill(redis_server.pid, signal.SIGCONT)
        assert not store.frozen
        assert (status, error, cookie) == (503, "store_unavailable", False)
        assert (await _redeem(sc, "token_hash", link))[0] == 200
