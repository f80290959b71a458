"""SessionManager: cookie → record, the bounded TTL cache, and how revocation beats it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from sidecar.services import Services
from sidecar.sessions import SessionManager, session_key, split_cookie_header
from sidecar.store.base import SessionRecord, Store
from sidecar.store.sqlite import SQLiteStore
from sidecar.tokens.codec import TokenCodec
from tests.harness import Clock, make_config


class CountingStore(SQLiteStore):
    """A real SQLite store that counts session reads (to see the cache work)."""

    reads = 0

    async def get_session(self, key: str) -> SessionRecord | None:
        self.reads += 1
        return await super().get_session(key)


Factory = Callable[..., SessionManager]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CountingStore]:
    store = CountingStore(str(tmp_path / "sessions.db"))
    await store.open()
    yield store
    await store.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def manager(tmp_path: Path, store: Store, clock: Clock) -> Factory:
    def make(**session: object) -> SessionManager:
        config = make_config(
            tmp_path, "http://127.0.0.1:9", session={"cookie_secure": False, **session}
        )
        services = Services(
            config=config, store=store, codec=TokenCodec(config.keyset), clock=clock
        )
        return SessionManager(services)

    return make


async def test_cached_lookups_skip_the_store_until_the_ttl(
    manager: Factory, store: CountingStore, clock: Clock
) -> None:
    sessions = manager(cache_ttl="2s")
    role = sessions._services.config.roles["Authenticated"]
    cookie = await sessions.start(user_id="u1", role=role, token_id="t1", params={"tenant": "acme"})
    first = await sessions.lookup_value(cookie)
    assert first is not None
    assert first.record.user_id == "u1"
    assert ("X-Forwarded-User", "u1") in first.headers
    reads = store.reads
    assert await sessions.lookup_value(cookie) is not None
    assert store.reads == reads  # served from the cache
    clock.advance(2)
    assert await sessions.lookup_value(cookie) is not None
    assert store.reads == reads + 1  # the TTL ran out: asked the store again


async def test_a_session_ended_elsewhere_is_refused_within_the_ttl(
    manager: Factory, store: CountingStore, clock: Clock
) -> None:
    here, there = manager(cache_ttl="2s"), manager(cache_ttl="2s")
    role = here._services.config.roles["Authenticated"]
    cookie = await here.start(user_id="u1", role=role, token_id="t1")
    assert await here.lookup_value(cookie) is not None
    assert await there.end_user("u1") == 1  # another process (e.g. admin DELETE /sessions)
    clock.advance(2)
    assert await here.lookup_value(cookie) is None


async def test_cache_size_zero_means_no_cache(
    manager: Factory, store: CountingStore, clock: Clock
) -> None:
    sessions = manager(cache_size=0)
    role = sessions._services.config.roles["Authenticated"]
    cookie = await sessions.start(user_id="u1", role=role, token_id="t1")
    for _ in range(3):
        assert await sessions.lookup_value(cookie) is not None
        clock.advance(role.idle_timeout / 5)  # also exercises the touch path
    assert store.reads == 3


async def test_the_cache_stays_bounded(manager: Factory) -> None:
    sessions = manager(cache_size=2)
    role = sessions._services.config.roles["Authenticated"]
    cookies = [await sessions.start(user_id=f"u{i}", role=role, token_id=f"t{i}") for i in range(5)]
    for cookie in cookies:
        assert await sessions.lookup_value(cookie) is not None
    assert len(sessions._cache) == 2


async def test_idle_and_absolute_expiry(manager: Factory, clock: Clock) -> None:
    sessions = manager(cache_ttl="1s")
    role = sessions._services.config.roles["Authenticated"]
    cookie = await sessions.start(user_id="u1", role=role, token_id="t1")
    clock.advance(role.idle_timeout + 1)
    assert await sessions.lookup_value(cookie) is None


def test_only_a_well_formed_cookie_is_looked_up() -> None:
    assert session_key("a" * 43) != session_key("b" * 43)
    value, rest = split_cookie_header("theme=dark; sidecar_session=abc; x=1", "sidecar_session")
    assert value == "abc"
    assert rest == "theme=dark; x=1"
