"""The store contract: one suite, run against SQLite (bare, and through the timing wrapper
the product runs it in) and a real Redis in every supported topology.

Time is injected: ``now`` is the real clock rounded down, because Redis expires keys
by its own clock, and the tests move ``now`` forward instead of sleeping.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import itertools
import os
import sqlite3
import time
import typing
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from sidecar.store import (
    BurnResult,
    PendingLink,
    RedisStore,
    SessionRecord,
    SQLiteStore,
    Store,
    StoreUnavailable,
    TokenRecord,
    TokenState,
    TokenUse,
    User,
    UserExists,
    open_store,
)
from sidecar.store.base import CONCERNS, STORE_METHODS, Persistence
from sidecar.store.timed import timed
from sidecar.telemetry.metrics import REGISTRY
from tests.conftest import RedisServer
from tests.redis_topologies import Topology

HOUR = 3600.0


@dataclass
class Backend:
    name: str
    store: Store
    path: Path | None = None  # SQLite file
    redis: Redis | RedisCluster | None = None  # raw client on the store's Redis
    prefix: str = ""


# Every Redis topology the store supports runs the same suite (tests/redis_topologies.py).
TOPOLOGIES = {"redis-cluster": "redis_cluster", "redis-sentinel": "redis_sentinel",
              "redis-tls": "redis_tls"}  # fmt: skip
REDIS_BACKENDS = ["redis", *TOPOLOGIES]


@pytest.fixture(
    params=[
        "sqlite",
        "sqlite-timed",
        *(pytest.param(n, marks=pytest.mark.redis) for n in REDIS_BACKENDS),
    ]
)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param in ("sqlite", "sqlite-timed"):
        path = tmp_path / "store.db"
        sqlite: Store = SQLiteStore(str(path))
        b = Backend("sqlite", timed(sqlite) if request.param == "sqlite-timed" else sqlite, path)
    elif request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        prefix = f"t{uuid.uuid4().hex[:12]}:"  # one shared server, one namespace per test
        raw = Redis.from_url(url, decode_responses=True)
        b = Backend("redis", RedisStore(url, prefix=prefix), redis=raw, prefix=prefix)
    else:
        topology: Topology = request.getfixturevalue(TOPOLOGIES[request.param])
        prefix = f"{topology.prefix}{uuid.uuid4().hex[:12]}:"
        store = RedisStore(topology.url, prefix=prefix, options=topology.options)
        b = Backend(request.param, store, redis=topology.admin(), prefix=prefix)
    await b.store.open()
    try:
        yield b
    finally:
        await b.store.close()
        if b.redis is not None:
            await b.redis.aclose()


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.store


@pytest.fixture
def now() -> float:
    return float(int(time.time()))


def session(key: str, now: float, *, user: str = "u1", expires: float = HOUR) -> SessionRecord:
    return SessionRecord(
        key=key, user_id=user, role="Viewer", params={"module": "m1", "tenant": "ä"},
        created_at=now, expires_at=now + expires, idle_timeout=600.0, last_seen=now,
        token_id=f"tok-{key}", email="a@example.org",
    )  # fmt: skip


def link(now: float, *, ident: str = "t1", expires: float = HOUR) -> PendingLink:
    return PendingLink(
        user_id="u:1", link_type="recovery", token_id=ident, hashed_token=f"hash-{ident}",
        otp_hash=f"otp-{ident}", expires_at=now + expires,
    )  # fmt: skip


# -- the protocols ------------------------------------------------------------------------
def test_store_is_exactly_the_union_of_the_concerns() -> None:
    members = {
        name
        for name in dir(Store)
        if not name.startswith("_") and inspect.iscoroutinefunction(getattr(Store, name))
    }
    assert set(STORE_METHODS) == members
    assert len(STORE_METHODS) == len(members)  # no method in two concerns
    for concern in CONCERNS:
        assert concern in Store.__mro__


@pytest.mark.parametrize("backend_class", [SQLiteStore, RedisStore])
def test_every_backend_implements_every_concern(backend_class: type) -> None:
    for concern in CONCERNS:
        assert concern in backend_class.__mro__, concern
    for name in STORE_METHODS:
        implementation = getattr(backend_class, name)
        assert implementation is not getattr(Store, name), f"{name} is the protocol's stub"
        assert inspect.iscoroutinefunction(implementation), name


def _sample(hint: object, index: int) -> object:
    """A value of the type ``hint`` (a parameter's or an answer's), distinct per ``index``."""
    args = typing.get_args(hint)
    if type(None) in args:  # X | None: an X, which shows it was passed on
        (hint,) = (arg for arg in args if arg is not type(None))
    token = TokenRecord(
        token_id=f"t{index}", kind="refer", user_id="u", role="Viewer", created_at=1.0,
        expires_at=2.0, one_time=True,
    )  # fmt: skip
    samples: dict[object, object] = {
        str: f"text-{index}", float: 0.5 + index, int: 10 + index, bool: True, None: None,
        type(None): None, tuple[int, float]: (index, 0.25), tuple[float, str]: (0.75, "c"),
        SessionRecord: session(f"k{index}", 100.0), TokenRecord: token,
        User: User(id=f"u{index}", email="a@example.org", created_at=1.0),
        PendingLink: link(100.0, ident=f"l{index}"), BurnResult: BurnResult.REVOKED,
        TokenState: TokenState.USED, TokenUse: TokenUse(TokenState.REVOKED, 3.0),
        Persistence: Persistence(None, "unknown"), list[TokenRecord]: [token],
        list[SessionRecord]: [session("k", 100.0)],
    }  # fmt: skip
    return samples[hint]


class Recorder:
    """Answers every store method with a value of the type it declares, and records the
    call (its arguments bound to the protocol's parameters, defaults applied)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, object]]] = []
        self.answers: dict[str, object] = {}

    def __getattr__(self, name: str) -> Callable[..., Awaitable[object]]:
        protocol = getattr(Store, name)

        async def method(*args: object, **kwargs: object) -> object:
            bound = inspect.signature(protocol).bind(self, *args, **kwargs)
            bound.apply_defaults()
            self.calls.append((name, dict(list(bound.arguments.items())[1:])))
            if name == "ping":
                raise StoreUnavailable("down")
            answer = self.answers[name] = _sample(typing.get_type_hints(protocol)["return"], 99)
            return answer

        return method


async def test_the_timed_store_forwards_and_times_every_method() -> None:
    inner = Recorder()
    store = timed(cast(Store, inner))
    for name in STORE_METHODS:
        assert name in vars(type(store)), f"{name} is not written out in the timed store"
        protocol = getattr(Store, name)
        hints = typing.get_type_hints(protocol)
        parameters = list(inspect.signature(protocol).parameters.values())[1:]
        given = {p.name: _sample(hints[p.name], i) for i, p in enumerate(parameters)}
        required = {p.name: given[p.name] for p in parameters if p.default is p.empty}
        defaults = {p.name: p.default for p in parameters if p.default is not p.empty}
        # Every parameter given, then only the required ones (the protocol's defaults).
        for args, seen in ((given, given), (required, {**required, **defaults})):
            seconds = REGISTRY.get_sample_value("sidecar_store_seconds_count", {"op": name})
            method = getattr(store, name)
            if name == "ping":
                with pytest.raises(StoreUnavailable):
                    await method(*args.values())
                assert REGISTRY.get_sample_value("sidecar_store_up") == 0
            else:
                assert await method(*args.values()) == inner.answers[name]
                assert REGISTRY.get_sample_value("sidecar_store_up") == 1
            assert inner.calls[-1] == (name, seen)
            after = REGISTRY.get_sample_value("sidecar_store_seconds_count", {"op": name})
            assert after == (seconds or 0) + 1, name
    assert len(inner.calls) == 2 * len(STORE_METHODS)
    with pytest.raises(AttributeError):
        store.not_a_store_method  # type: ignore[attr-defined]  # noqa: B018


# -- one-time tokens ----------------------------------------------------------------------
async def test_burn_once_then_already_used(store: Store, now: float) -> None:
    assert await store.token_state("t1") is TokenState.UNUSED
    assert await store.burn("t1", now + HOUR) is BurnResult.BURNED
    assert await store.burn("t1", now + HOUR) is BurnResult.ALREADY_USED
    assert await store.token_state("t1") is TokenState.USED
    assert await store.token_state("t2") is TokenState.UNUSED


async def test_revoke(store: Store, now: float) -> None:
    assert await store.revoke("r1", now + HOUR) is TokenState.UNUSED
    assert await store.token_state("r1") is TokenState.REVOKED
    assert await store.revoke("r1", now + HOUR) is TokenState.REVOKED
    assert await store.burn("r1", now + HOUR) is BurnResult.REVOKED
    assert await store.burn("u1", now + HOUR) is BurnResult.BURNED
    assert await store.revoke("u1", now + HOUR) is TokenState.USED
    assert await store.token_state("u1") is TokenState.USED


async def test_500_concurrent_burns_of_one_id_give_one_burned(store: Store, now: float) -> None:
    results = await asyncio.gather(*(store.burn("hot", now + HOUR) for _ in range(500)))
    assert results.count(BurnResult.BURNED) == 1
    assert results.count(BurnResult.ALREADY_USED) == 499


async def test_concurrent_burns_of_many_ids(store: Store, now: float) -> None:
    ids = [f"id-{i}" for i in range(200)] * 3
    results = await asyncio.gather(*(store.burn(i, now + HOUR) for i in ids))
    burned = {i for i, r in zip(ids, results, strict=True) if r is BurnResult.BURNED}
    assert burned == set(ids)
    assert results.count(BurnResult.ALREADY_USED) == 400


async def test_burn_with_a_session(store: Store, now: float) -> None:
    first = replace(session("s1", now), token_id="once")
    assert await store.burn("once", now + HOUR, first) is BurnResult.BURNED
    assert await store.get_session("s1") == first
    assert await store.token_state("once") is TokenState.USED
    # a replay, and a revoked link: no session
    replay = replace(session("s2", now), token_id="once")
    assert await store.burn("once", now + HOUR, replay) is (BurnResult.ALREADY_USED)
    await store.revoke("gone", now + HOUR)
    late = replace(session("s3", now), token_id="gone")
    assert await store.burn("gone", now + HOUR, late) is BurnResult.REVOKED
    assert await store.get_session("s2") is None
    assert await store.get_session("s3") is None
    # a token burned the plain way is used for this call too
    await store.burn("plain", now + HOUR)
    other = replace(session("s4", now), token_id="plain")
    assert await store.burn("plain", now + HOUR, other) is (BurnResult.ALREADY_USED)
    assert await store.get_session("s4") is None
    assert await store.delete_token_sessions("once") == 1  # indexed like any session


async def test_200_concurrent_redemptions_of_one_link_make_one_session(
    store: Store, now: float
) -> None:
    sessions = [replace(session(f"c{i}", now), token_id="hot") for i in range(200)]
    results = await asyncio.gather(*(store.burn("hot", now + HOUR, s) for s in sessions))
    assert results.count(BurnResult.BURNED) == 1
    winner = sessions[results.index(BurnResult.BURNED)]
    found = [await store.get_session(s.key) for s in sessions]
    assert [s for s in found if s is not None] == [winner]
    assert await store.delete_token_sessions("hot") == 1


async def test_concurrent_redemptions_of_many_links_store_each_winners_session(
    store: Store, now: float
) -> None:
    """77 links, each redeemed twice at once (SQLite writes one transaction's sessions in
    multi-row INSERTs of 32, 32, 8, 4 and 1 rows): every winner's session reads back
    whole, no loser's exists, and each is indexed under its link and user."""
    calls = []
    for i in range(77):
        for side in ("a", "b"):
            record = replace(
                session(f"m{i}{side}", now, user=f"user-{i % 5}"),
                token_id=f"link-{i}",
                module=None if i % 2 else f"mod{i}",
                client=f"192.0.2.{i}",
            )
            calls.append((record, store.burn(f"link-{i}", now + HOUR, record)))
    results = await asyncio.gather(*(call for _, call in calls))
    assert results.count(BurnResult.BURNED) == 77
    for (record, _), result in zip(calls, results, strict=True):
        stored = await store.get_session(record.key)
        assert stored == (record if result is BurnResult.BURNED else None)
    assert len(await store.list_user_sessions("user-0")) == 16
    assert await store.delete_token_sessions("link-76") == 1


async def test_token_use_says_when(store: Store, now: float) -> None:
    assert await store.token_use("t") == TokenUse(TokenState.UNUSED, None)
    before = time.time()
    await store.burn("t", now + HOUR)
    await store.revoke("r", now + HOUR)
    after = time.time()
    used, revoked = await store.token_use("t"), await store.token_use("r")
    assert used.state is TokenState.USED
    assert revoked.state is TokenState.REVOKED
    for use in (used, revoked):
        assert use.at is not None
        assert before - 1 <= use.at <= after + 1  # the store's clock (Redis: its TIME)
    await store.revoke("t", now + HOUR)  # USED stays USED, and so does its time
    assert await store.token_use("t") == used


# -- minted-link records --------------------------------------------------------------------
def record(ident: str, created: float, *, user: str = "u:1", kind: str = "refer") -> TokenRecord:
    return TokenRecord(
        token_id=ident, kind=kind, user_id=user, role="Viewer", created_at=created,
        expires_at=created + HOUR, one_time=kind != "refer", email=None, module="m1",
    )  # fmt: skip


async def test_token_records_round_trip(store: Store, now: float) -> None:
    magic = dataclasses.replace(record("m", now, kind="magiclink"), email="a@x.org", module=None)
    await store.record_token(magic, now + HOUR)
    await store.record_token(record("r", now), now + HOUR)
    assert await store.get_token("m") == magic
    assert await store.get_token("r") == record("r", now)
    assert await store.get_token("nope") is None


@pytest.mark.parametrize("email", [None, "a@x.org"])
@pytest.mark.parametrize("module", [None, "m2"])
async def test_token_records_keep_email_and_module_given_or_not(
    store: Store, now: float, email: str | None, module: str | None
) -> None:
    made = dataclasses.replace(record("e", now), email=email, module=module)
    counted = dataclasses.replace(made, token_id="c")
    await store.record_token(made, now + HOUR)
    assert await store.record_counted(counted, now + HOUR, "em", 60, 5, now) == (
        1, (now // 60 + 1) * 60,
    )  # fmt: skip
    assert await store.get_token("e") == made
    assert await store.get_token("c") == counted
    assert await store.list_user_tokens("u:1", 5) == [made, counted]  # same time: id desc


async def test_list_user_tokens_pages_newest_first(store: Store, now: float) -> None:
    # Three share a created_at: the id breaks the tie, and the cursor must not skip any.
    made = [record(f"t{i}", now + (i // 3)) for i in range(8)]
    for r in made:
        await store.record_token(r, now + HOUR)
    await store.record_token(record("other", now, user="u:2"), now + HOUR)
    newest_first = sorted(made, key=lambda r: (r.created_at, r.token_id), reverse=True)
    pages: list[list[TokenRecord]] = []
    after: tuple[float, str] | None = None
    while True:
        page = await store.list_user_tokens("u:1", 3, after)
        if not page:
            break
        pages.append(page)
        after = (page[-1].created_at, page[-1].token_id)
    assert [len(p) for p in pages] == [3, 3, 2]
    assert [r for p in pages for r in p] == newest_first
    assert await store.list_user_tokens("u:2", 10) == [record("other", now, user="u:2")]
    assert await store.list_user_tokens("nobody", 10) == []


async def test_token_records_go_after_keep_until(backend: Backend, now: float) -> None:
    store = backend.store
    await store.record_token(record("old", now - 10), now - 1)
    await store.record_token(record("new", now), now + HOUR)
    await store.purge_expired(now)  # SQLite deletes; Redis has expired the key already
    assert await store.get_token("old") is None
    assert [r.token_id for r in await store.list_user_tokens("u:1", 10)] == ["new"]


# -- sessions -----------------------------------------------------------------------------
async def test_list_user_sessions(store: Store, now: float) -> None:
    first = dataclasses.replace(session("a1", now, user="ann"), client="192.0.2.7")
    second = session("a2", now + 1, user="ann")
    await store.create_session(second)
    await store.create_session(first)
    await store.create_session(session("b1", now, user="bob"))
    assert await store.list_user_sessions("ann") == [first, second]
    await store.delete_session("a1")
    assert await store.list_user_sessions("ann") == [second]
    await store.delete_user_sessions("ann")
    assert await store.list_user_sessions("ann") == []
    assert [s.key for s in await store.list_user_sessions("bob")] == ["b1"]


async def test_session_round_trip_and_expiry_by_injected_now(store: Store, now: float) -> None:
    record = session("s1", now)
    bare = dataclasses.replace(session("s2", now), email=None, params={})
    await store.create_session(record)
    await store.create_session(bare)
    assert await store.get_session("s1") == record
    assert await store.get_session("s2") == bare
    assert await store.get_session("nope") is None
    got = await store.get_session("s1")
    assert got is not None
    assert got.is_live(now + 599)
    assert not got.is_live(now + 600)  # idle
    assert not got.is_live(now + HOUR)


async def test_session_round_trip_with_each_optional_field_given_or_not(
    store: Store, now: float
) -> None:
    """Email, module and client each given or None (SQLite writes a None as the literal
    NULL: eight statement texts), stored alone and with a burn."""
    for index, (email, module, client) in enumerate(
        itertools.product(("a@example.org", None), ("m1", None), ("192.0.2.7", None))
    ):
        record = replace(session(f"o{index}", now), email=email, module=module, client=client)
        burned = replace(record, key=f"b{index}", token_id=f"link-{index}")
        await store.create_session(record)
        assert await store.burn(burned.token_id, now + HOUR, burned) is BurnResult.BURNED
        assert await store.get_session(record.key) == record
        assert await store.get_session(burned.key) == burned


async def test_touch_session_moves_last_seen_forward_only(store: Store, now: float) -> None:
    await store.create_session(session("s1", now))
    await store.touch_session("s1", now + 500)
    await store.touch_session("s1", now + 100)  # a late, out-of-order touch
    got = await store.get_session("s1")
    assert got is not None
    assert got.last_seen == now + 500
    assert got.is_live(now + 1000)
    await store.touch_session("missing", now)
    assert await store.get_session("missing") is None


async def test_delete_sessions(store: Store, now: float) -> None:
    for key, user in [("a1", "ann"), ("a2", "ann"), ("a3", "ann"), ("b1", "bob")]:
        await store.create_session(session(key, now, user=user))
    assert await store.delete_session("a1") is True
    assert await store.delete_session("a1") is False
    assert await store.delete_user_sessions("ann") == 2
    assert await store.get_session("a2") is None
    assert await store.get_session("a3") is None
    assert await store.get_session("b1") is not None
    assert await store.delete_user_sessions("ann") == 0


async def test_delete_the_sessions_of_one_link(store: Store, now: float) -> None:
    """A reusable link may have opened several sessions; revoking it ends them all."""
    shared = [("l1", "ann", "tok-L"), ("l2", "bob", "tok-L"), ("l3", "ann", "tok-other")]
    for key, user, token in shared:
        await store.create_session(replace(session(key, now, user=user), token_id=token))
    await store.touch_session("l1", now + 30)
    assert await store.delete_token_sessions("tok-L") == 2
    assert await store.get_session("l1") is None
    assert await store.get_session("l2") is None
    assert await store.get_session("l3") is not None
    assert await store.delete_token_sessions("tok-L") == 0
    # the user index is not confused by sessions the link index already ended
    assert await store.delete_user_sessions("ann") == 1
    # a session re-created under the same key moves to its new link's index
    await store.create_session(replace(session("l4", now), token_id="tok-A"))
    await store.create_session(replace(session("l4", now), token_id="tok-B"))
    assert await store.delete_token_sessions("tok-A") == 0
    assert await store.delete_token_sessions("tok-B") == 1


# -- users --------------------------------------------------------------------------------
async def test_users(store: Store, now: float) -> None:
    ann = User(id="u1", email="Ann@Example.org", created_at=now, metadata={"n": 1, "l": ["x"]})
    await store.create_user(ann)
    assert await store.get_user("u1") == ann
    assert await store.get_user_by_email("ann@example.org") == ann
    assert await store.get_user("u2") is None
    assert await store.get_user_by_email("bob@example.org") is None
    with pytest.raises(UserExists):
        await store.create_user(User(id="u2", email="ann@EXAMPLE.org", created_at=now))
    assert await store.get_user("u2") is None


async def test_update_user(store: Store, now: float) -> None:
    await store.create_user(User(id="u1", email="ann@example.org", created_at=now))
    await store.create_user(User(id="u2", email="bob@example.org", created_at=now))
    moved = User(id="u1", email="ann@new.org", created_at=now, confirmed_at=now + 1)
    await store.update_user(moved)
    assert await store.get_user("u1") == moved
    assert await store.get_user_by_email("ann@new.org") == moved
    assert await store.get_user_by_email("ann@example.org") is None
    with pytest.raises(UserExists):
        await store.update_user(dataclasses.replace(moved, email="Bob@example.org"))
    assert await store.get_user("u1") == moved
    await store.update_user(dataclasses.replace(moved, email="ann@example.org"))  # free again
    await store.update_user(User(id="ghost", email="g@example.org", created_at=now))
    assert await store.get_user("ghost") is None


async def test_refusal_does_not_fail_concurrent_writes(store: Store, now: float) -> None:
    """On SQLite these land in one group transaction; the refusal must stay local."""
    await store.create_user(User(id="u1", email="ann@example.org", created_at=now))
    ops = [store.burn(f"g{i}", now + HOUR) for i in range(50)]
    dup = store.create_user(User(id="u2", email="ann@example.org", created_at=now))
    new_session = store.create_session(session("s", now))
    results = await asyncio.gather(*ops, dup, new_session, return_exceptions=True)
    assert isinstance(results[50], UserExists)
    assert results[:50] == [BurnResult.BURNED] * 50
    assert await store.get_session("s") is not None


# -- pending links ------------------------------------------------------------------------
async def test_links(store: Store, now: float) -> None:
    first = link(now, ident="t1")
    await store.put_link(first)
    assert await store.get_link("u:1", "recovery") == first
    assert await store.get_link_by_hash("hash-t1") == first
    assert await store.get_link("u:1", "invite") is None
    assert await store.get_link("u", "1:recovery") is None
    newer = dataclasses.replace(link(now, ident="t2"), new_email="new@example.org")
    await store.put_link(newer)
    assert await store.get_link("u:1", "recovery") == newer
    assert await store.get_link_by_hash("hash-t1") is None
    assert await store.get_link_by_hash("hash-t2") == newer
    await store.delete_link("u:1", "recovery")
    assert await store.get_link("u:1", "recovery") is None
    assert await store.get_link_by_hash("hash-t2") is None


async def test_failed_attempts(store: Store, now: float) -> None:
    assert await store.record_failed_attempt("u:1", "recovery") == 0
    await store.put_link(link(now))
    assert await store.record_failed_attempt("u:1", "recovery") == 1
    assert await store.record_failed_attempt("u:1", "recovery") == 2
    got = await store.get_link("u:1", "recovery")
    assert got is not None
    assert got.failed_attempts == 2
    await store.put_link(link(now, ident="t2"))  # a new link starts from zero
    assert await store.record_failed_attempt("u:1", "recovery") == 1


# -- rate limits --------------------------------------------------------------------------
async def test_hit_counts_in_fixed_windows(store: Store, now: float) -> None:
    start = (now // 60 + 1) * 60  # a window boundary in the future
    assert await store.hit("ip:1", 60, start) == (1, start + 60)
    assert await store.hit("ip:1", 60, start + 30) == (2, start + 60)
    assert await store.hit("ip:1", 60, start + 59.9) == (3, start + 60)
    assert await store.hit("ip:2", 60, start + 1) == (1, start + 60)
    assert await store.hit("ip:1", 60, start + 60) == (1, start + 120)
    assert await store.hit("ip:1", 60, start + 61) == (2, start + 120)
    # Another window length is another limit, so another key: a key is counted in one
    # window length (its counter is told by its window's end; "ip:1"'s 60 s window above
    # may end on the hour, as its 3600 s one would, one run in sixty).
    assert await store.hit("ip:3", 3600, start) == (1, (start // 3600 + 1) * 3600)
    with pytest.raises(ValueError, match="window"):
        await store.hit("ip:1", 0, now)


async def test_record_counted_records_only_within_the_limit(store: Store, now: float) -> None:
    start = (now // 60 + 1) * 60
    for i in (1, 2):
        got = await store.record_counted(record(f"k{i}", start), start + HOUR, "m", 60, 2, start)
        assert got == (i, start + 60)
    over = await store.record_counted(record("k3", start), start + HOUR, "m", 60, 2, start + 1)
    assert over == (3, start + 60)
    assert await store.get_token("k2") == record("k2", start)
    assert await store.get_token("k3") is None  # refused: not remembered
    assert await store.hit("m", 60, start + 2) == (4, start + 60)  # one counter with hit's
    # A new window counts from one again, and records again.
    again = await store.record_counted(record("k4", start), start + HOUR, "m", 60, 2, start + 60)
    assert again == (1, start + 120)
    assert await store.get_token("k4") == record("k4", start)


async def test_concurrent_counted_mints_count_one_after_another(store: Store, now: float) -> None:
    """Mints at once (one SQLite group commit) are counted as many hits one after another:
    each count once, and exactly the first ``limit`` of them recorded."""
    start = (now // 60 + 1) * 60
    records = [
        dataclasses.replace(record(f"c{i}", start), email="a@x.org" if i % 3 else None)
        for i in range(30)
    ]
    calls = [store.record_counted(r, start + HOUR, "burst", 60, 20, start) for r in records]
    got = await asyncio.gather(*calls)
    assert sorted(got) == [(n, start + 60) for n in range(1, 31)]
    for i, (count, _) in enumerate(got):
        kept = await store.get_token(f"c{i}")
        assert (kept is not None) == (count <= 20), (i, count)
        if kept is not None:
            assert kept.email == ("a@x.org" if i % 3 else None)
    assert await store.hit("burst", 60, start + 1) == (31, start + 60)


# -- purging ------------------------------------------------------------------------------
async def test_expired_records_are_purged(backend: Backend, now: float) -> None:
    store = backend.store
    await store.burn("short", now + 10)
    await store.burn("long", now + HOUR)
    await store.create_session(session("short", now, expires=10))
    await store.create_session(session("long", now))
    await store.put_link(link(now, expires=10))
    # Redis expires the counter at its window's end in real time, as little as a second
    # away at ``now``: counted a minute ahead there (as a replica's clock may be), so that
    # a slow run cannot see it expire before it is looked at.
    counted = now if backend.name == "sqlite" else now + 60
    await store.hit("ip", 10, counted)
    await store.create_user(User(id="u1", email="a@example.org", created_at=now))
    if backend.name == "sqlite":
        assert await store.purge_expired(now + 11) == 3  # session, link, counter
        assert await store.token_state("short") is TokenState.USED  # burns outlive tokens
        assert await store.purge_expired(now + 311) == 1  # ... by 5 minutes
        assert backend.path is not None
        with sqlite3.connect(backend.path) as db:
            counts = [db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # noqa: S608
                      for t in ("tokens", "sessions", "links", "ratelimits", "users")]  # fmt: skip
        db.close()
        assert counts == [1, 1, 0, 0, 1]
        assert await store.token_state("long") is TokenState.USED
        assert await store.get_session("short") is None
        assert await store.get_session("long") is not None
        assert await store.get_user("u1") is not None
    else:
        assert await store.purge_expired(now + 11) == 0  # Redis expires keys itself
        ttls = await redis_ttls(backend)
        users = "{u}:" if backend.name == "redis-cluster" else ""  # one slot for all users
        assert ttls.pop(f"{users}user:u1") == ttls.pop(f"{users}email:a@example.org") == -1
        reset = (counted // 10 + 1) * 10
        floor = 300_000  # burns outlive their token (clock skew between replicas)
        expected = {
            "tok:short": floor, "tok:long": HOUR * 1000, "sess:short": 10_000,
            "tokat:short": floor, "tokat:long": HOUR * 1000,  # the burn's time, alike
            # The user index lives to the last session's absolute expiry, not its idle one.
            "sess:long": 600_000, "usess:u1": HOUR * 1000, "link:3:u:1:recovery": 10_000,
            "tsess:tok-short": 10_000, "tsess:tok-long": HOUR * 1000,
            "linkhash:hash-t1": 10_000, f"rl:10:{reset!r}:ip": (reset - now) * 1000,
        }  # fmt: skip
        assert set(ttls) == set(expected)
        for key, ttl in ttls.items():
            assert expected[key] - 5_000 < ttl <= expected[key], key


async def redis_ttls(backend: Backend) -> dict[str, int]:
    assert backend.redis is not None
    ttls = {}
    async for key in backend.redis.scan_iter(match=f"{backend.prefix}*"):
        ttls[key.removeprefix(backend.prefix)] = await backend.redis.pttl(key)
    return ttls


async def test_touch_extends_session_expiry(backend: Backend, now: float) -> None:
    store = backend.store
    await store.create_session(session("s", now))
    await store.touch_session("s", now + 300)
    if backend.name == "sqlite":
        assert await store.purge_expired(now + 601) == 0
        assert await store.purge_expired(now + 901) == 1
    else:
        ttls = await redis_ttls(backend)
        assert 900_000 - 5_000 < ttls["sess:s"] <= 900_000
        # Touched sessions stay findable by user: DELETE /sessions must still reach them.
        assert ttls["usess:u1"] > ttls["sess:s"]
        assert await store.delete_user_sessions("u1") == 1


# -- the backend is down ------------------------------------------------------------------
async def test_closed_store_is_unavailable(store: Store, now: float) -> None:
    await store.close()
    calls: list[Callable[[], Awaitable[object]]] = [
        store.ping, lambda: store.burn("t", now + HOUR), lambda: store.token_state("t"),
        lambda: store.get_session("s"), lambda: store.hit("k", 60, now),
        lambda: store.create_user(User(id="u", email="e", created_at=now)),
    ]  # fmt: skip
    for call in calls:
        with pytest.raises(StoreUnavailable):
            await call()


async def test_a_locked_sqlite_file_fails_the_batch_once(tmp_path: Path, now: float) -> None:
    """BEGIN failing is nobody's op: the queued writes fail together after one busy
    timeout (5 s), instead of being replayed one by one, 5 s each."""
    path = tmp_path / "locked.db"
    store = SQLiteStore(str(path))
    await store.open()
    locker = sqlite3.connect(path, isolation_level=None)
    try:
        locker.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        results = await asyncio.gather(
            *(store.burn(f"t{i}", now + HOUR) for i in range(6)), return_exceptions=True
        )
        elapsed = time.monotonic() - started
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        assert elapsed < 12, elapsed  # op by op it took six timeouts (30 s)
        locker.execute("ROLLBACK")
        assert await store.burn("t0", now + HOUR) is BurnResult.BURNED  # and it recovers
    finally:
        locker.close()
        await store.close()


@pytest.mark.parametrize("kind", ["missing-dir", "directory", "not-a-database"])
async def test_sqlite_unusable_path(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "missing" / "x.db"
    if kind == "directory":
        path = tmp_path
    elif kind == "not-a-database":
        path = tmp_path / "junk.db"
        path.write_bytes(b"this is not SQLite" * 512)
    store = SQLiteStore(str(path))
    with pytest.raises(StoreUnavailable):
        await store.open()
    await store.close()


def _fail_inserts(path: Path, table: str, column: str) -> None:
    """A fault the writer cannot foresee: inserting into ``table`` a row whose ``column``
    begins with ``bad`` aborts (an SQLite trigger)."""
    with sqlite3.connect(path) as db:
        db.execute(
            f"CREATE TRIGGER boom BEFORE INSERT ON {table} WHEN NEW.{column} LIKE 'bad%'"
            " BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
        )
    db.close()


async def test_sqlite_failed_write_fails_alone_and_writes_nothing(
    tmp_path: Path, now: float
) -> None:
    path = tmp_path / "store.db"
    store = SQLiteStore(str(path))
    await store.open()
    try:
        _fail_inserts(path, "tokens", "id")
        ids = [f"ok{i}" for i in range(100)] + ["bad"] + [f"ok{i}" for i in range(100, 200)]
        results = await asyncio.gather(
            *(store.burn(i, now + HOUR) for i in ids), return_exceptions=True
        )
        assert isinstance(results[100], StoreUnavailable)
        assert results[:100] + results[101:] == [BurnResult.BURNED] * 200
        assert await store.token_state("bad") is TokenState.UNUSED
        assert await store.burn("ok0", now + HOUR) is BurnResult.ALREADY_USED
    finally:
        await store.close()


async def test_sqlite_burn_and_its_session_are_one_transaction(tmp_path: Path, now: float) -> None:
    """A session row that cannot be written takes its burn with it (the token stays
    usable, the caller gets StoreUnavailable), and fails no neighbour in its batch."""
    path = tmp_path / "store.db"
    store = SQLiteStore(str(path))
    await store.open()
    try:
        _fail_inserts(path, "sessions", "key")
        keys = [f"ok{i}" for i in range(50)] + ["bad"] + [f"ok{i}" for i in range(50, 100)]
        calls = [store.burn(f"t-{k}", now + HOUR, session(k, now)) for k in keys]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(results[50], StoreUnavailable)
        assert results[:50] + results[51:] == [BurnResult.BURNED] * 100
        assert await store.token_state("t-bad") is TokenState.UNUSED
        assert await store.get_session("ok0") is not None
        assert await store.token_state("t-ok0") is TokenState.USED
    finally:
        await store.close()


async def test_sqlite_counted_mints_of_one_batch_count_in_queue_order(
    tmp_path: Path, now: float
) -> None:
    """One group commit's mints, across keys, windows and another op on their counter,
    count exactly as one record_counted after another (the counter read and written once
    per run of mints), and record exactly the ones within their limit."""
    store = SQLiteStore(str(tmp_path / "store.db"))
    await store.open()
    try:
        start = (now // 60 + 1) * 60
        first, second = start + 60, start + 120  # the two windows' ends

        def mint(ident: str, key: str, at: float, limit: int = 3) -> Awaitable[tuple[int, float]]:
            return store.record_counted(record(ident, start), start + HOUR, key, 60, limit, at)

        got = await asyncio.gather(
            mint("a1", "k", start),
            mint("b1", "j", start),
            mint("a2", "k", start + 1),
            store.hit("k", 60, start + 2),  # another op on the counter, between mints
            mint("a3", "k", start + 3),  # the 4th hit: over the limit
            mint("a4", "k", start + 3, limit=10),  # a limit of its own (a reload's)
            mint("a5", "k", start + 60),  # the next window: from one
            mint("a6", "k", start + 61),
            mint("a7", "k", start + 4),  # the earlier window again: from one, as hit does
            mint("b2", "j", start + 5),
        )
        assert got == [
            (1, first), (1, first), (2, first), (3, first), (4, first), (5, first),
            (1, second), (2, second), (1, first), (2, first),
        ]  # fmt: skip
        kept = {i for i in ("a1", "a2", "a3", "a4", "a5", "a6", "a7", "b1", "b2")
                if await store.get_token(i) is not None}  # fmt: skip
        assert kept == {"a1", "a2", "a4", "a5", "a6", "a7", "b1", "b2"}
        assert await store.hit("k", 60, start + 6) == (2, first)
        assert await store.hit("j", 60, start + 6) == (3, first)
        # A run that moves its counter to the next window leaves it there.
        again = await asyncio.gather(mint("a8", "k", start + 62), mint("a9", "k", start + 63))
        assert list(again) == [(1, second), (2, second)]
        assert await store.hit("k", 60, start + 64) == (3, second)
    finally:
        await store.close()


async def test_sqlite_counted_mint_that_cannot_be_recorded_fails_alone(
    tmp_path: Path, now: float
) -> None:
    """A mint whose record cannot be written fails (StoreUnavailable) and is not counted;
    the mints of its batch are counted and recorded as if it had not been sent."""
    path = tmp_path / "store.db"
    store = SQLiteStore(str(path))
    await store.open()
    try:
        _fail_inserts(path, "token_records", "token_id")
        start = (now // 60 + 1) * 60
        ids = [f"ok{i}" for i in range(20)] + ["bad"] + [f"ok{i}" for i in range(20, 40)]
        calls = [
            store.record_counted(record(i, start), start + HOUR, "m", 60, 30, start) for i in ids
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(results[20], StoreUnavailable)
        assert results[:20] + results[21:] == [(n, start + 60) for n in range(1, 41)]
        assert await store.get_token("bad") is None
        assert await store.get_token("ok29") is not None
        assert await store.get_token("ok30") is None  # the 31st counted: over the limit
        assert await store.hit("m", 60, start) == (41, start + 60)
    finally:
        await store.close()


async def test_sqlite_burns_write_no_temporary_file(tmp_path: Path, now: float) -> None:
    """A batch's burns touch many pages of a large table, and still no temporary file is
    made: their INSERT keeps no statement journal, which spilled to one past 64 KiB (a
    file created, written and deleted in the directory SQLite keeps them in, per batch).
    Creating or deleting a file there moves the directory's mtime, set to 0 first."""
    spill = tmp_path / "sqlite-temp"
    spill.mkdir()
    path = tmp_path / "store.db"
    store = SQLiteStore(str(path))
    await store.open()
    # Where SQLite makes its temporary files: a process-wide setting, put back below.
    setting = sqlite3.connect(":memory:")
    try:
        with sqlite3.connect(path) as db:  # burned links enough for ~200 leaf pages
            rows = ((uuid.uuid4().hex, now + HOUR) for _ in range(20_000))
            db.executemany("INSERT INTO tokens (id, state, expires_at) VALUES (?, 'used', ?)", rows)
        db.close()
        setting.execute(f"PRAGMA temp_store_directory = '{spill}'")
        os.utime(spill, ns=(0, 0))
        ids = [uuid.uuid4().hex for _ in range(300)]
        results = await asyncio.gather(*(store.burn(i, now + HOUR) for i in ids))
        assert results == [BurnResult.BURNED] * 300
        assert spill.stat().st_mtime_ns == 0, "a temporary file was made and deleted"
        assert await store.burn(ids[0], now + HOUR) is BurnResult.ALREADY_USED
    finally:
        setting.execute("PRAGMA temp_store_directory = ''")
        setting.close()
        await store.close()


@pytest.mark.redis
async def test_redis_down_then_back(redis_server: RedisServer, now: float) -> None:
    store = RedisStore(redis_server.url, prefix="down:")
    await store.open()
    try:
        assert await store.burn("before", now + HOUR) is BurnResult.BURNED
        redis_server.stop()
        calls: list[Callable[[], Awaitable[object]]] = [
            store.ping,
            lambda: store.burn("during", now + HOUR),
            lambda: store.get_user("u"),
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await call()
            assert time.monotonic() - started < 5  # fails closed, and fast
        redis_server.start()  # an empty Redis, as after a restart without persistence
        await store.ping()
        assert await store.burn("after", now + HOUR) is BurnResult.BURNED
        assert await store.burn("after", now + HOUR) is BurnResult.ALREADY_USED
    finally:
        await store.close()


@pytest.mark.redis
async def test_redis_store_opens_while_redis_is_down(redis_server: RedisServer) -> None:
    redis_server.stop()
    store = RedisStore(redis_server.url)
    await store.open()
    try:
        with pytest.raises(StoreUnavailable):
            await store.ping()
        redis_server.start()
        await store.ping()
    finally:
        await store.close()


# -- open_store ---------------------------------------------------------------------------
def test_open_store_picks_backend_by_url() -> None:
    assert repr(open_store("sqlite:///rel/x.db")) == "SQLiteStore('rel/x.db')"
    assert repr(open_store("sqlite:////abs/x%20y.db")) == "SQLiteStore('/abs/x y.db')"
    for url in ("redis://localhost:6379/0", "rediss://h:6380", "unix:///run/r.sock?db=2"):
        assert isinstance(open_store(url, prefix="p:"), RedisStore)


@pytest.mark.parametrize(
    "url",
    ["postgres://db/x", "/var/lib/x.db", "sqlite://host/x.db", "sqlite:///", "sqlite:///:memory:"],
)
def test_open_store_rejects_unusable_urls(url: str) -> None:
    with pytest.raises(ValueError, match="store URL"):
        open_store(url)


async def test_sqlite_file_of_the_first_schema_gets_the_new_columns(
    tmp_path: Path, now: float
) -> None:
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as conn:  # the tables as release 1 wrote them
        conn.execute("CREATE TABLE tokens (id TEXT PRIMARY KEY, state TEXT NOT NULL,"
                     " expires_at REAL NOT NULL) WITHOUT ROWID")  # fmt: skip
        conn.execute("INSERT INTO tokens VALUES ('old', 'used', ?)", (now + HOUR,))
        conn.execute(
            "CREATE TABLE sessions (key TEXT PRIMARY KEY, user_id TEXT NOT NULL,"
            " role TEXT NOT NULL, params TEXT NOT NULL, created_at REAL NOT NULL,"
            " expires_at REAL NOT NULL, idle_timeout REAL NOT NULL, last_seen REAL NOT NULL,"
            " token_id TEXT NOT NULL, email TEXT, module TEXT, dead_at REAL NOT NULL)"
        )
    store = SQLiteStore(str(path))
    await store.open()
    try:
        assert await store.token_use("old") == TokenUse(TokenState.USED, None)
        fresh = dataclasses.replace(session("s", now), client="::1")
        await store.create_session(fresh)
        assert await store.get_session("s") == fresh
    finally:
        await store.close()
