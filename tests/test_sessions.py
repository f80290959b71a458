"""SessionManager: cookie → record, the bounded TTL cache, and how revocation beats it."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import cast

import pytest
from aiohttp import web
from hypothesis import example, given
from hypothesis import strategies as st

from sidecar import session_cookies
from sidecar.config import RoleConfig
from sidecar.services import Services
from sidecar.session_cookies import cookie_values, session_key, split_cookie_header
from sidecar.sessions import SessionManager
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
def role(tmp_path: Path) -> RoleConfig:
    return make_config(tmp_path, "http://127.0.0.1:9").roles["Authenticated"]


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
    manager: Factory, store: CountingStore, clock: Clock, role: RoleConfig
) -> None:
    sessions = manager(cache_ttl="2s")
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
    manager: Factory, store: CountingStore, clock: Clock, role: RoleConfig
) -> None:
    here, there = manager(cache_ttl="2s"), manager(cache_ttl="2s")
    cookie = await here.start(user_id="u1", role=role, token_id="t1")
    assert await here.lookup_value(cookie) is not None
    assert await there.end_user("u1") == 1  # another process (e.g. admin DELETE /sessions)
    clock.advance(2)
    assert await here.lookup_value(cookie) is None


async def test_cache_size_zero_means_no_cache(
    manager: Factory, store: CountingStore, clock: Clock, role: RoleConfig
) -> None:
    sessions = manager(cache_size=0)
    cookie = await sessions.start(user_id="u1", role=role, token_id="t1")
    for _ in range(3):
        assert await sessions.lookup_value(cookie) is not None
        clock.advance(role.idle_timeout / 5)  # also exercises the touch path
    assert store.reads == 3


async def test_the_cache_stays_bounded(
    manager: Factory, store: CountingStore, role: RoleConfig
) -> None:
    sessions = manager(cache_size=2, cache_ttl="60s")
    cookies = [await sessions.start(user_id=f"u{i}", role=role, token_id=f"t{i}") for i in range(5)]
    for cookie in cookies:
        assert await sessions.lookup_value(cookie) is not None
    reads = store.reads
    for cookie in cookies[-2:]:  # the two most recent stay cached...
        assert await sessions.lookup_value(cookie) is not None
    assert store.reads == reads
    assert await sessions.lookup_value(cookies[0]) is not None  # ...the others were evicted
    assert store.reads == reads + 1


async def test_idle_and_absolute_expiry(manager: Factory, clock: Clock, role: RoleConfig) -> None:
    sessions = manager(cache_ttl="1s")
    cookie = await sessions.start(user_id="u1", role=role, token_id="t1")
    clock.advance(role.idle_timeout + 1)
    assert await sessions.lookup_value(cookie) is None


async def test_a_new_session_holds_each_value_in_its_own_field(
    manager: Factory, store: CountingStore, clock: Clock, role: RoleConfig
) -> None:
    """new() builds its record positionally: every field of one type (the three times, the
    three optional texts) gets a value of its own here, so a swap shows, stored or not."""
    assert role.session_lifetime != role.idle_timeout
    cookie, record = manager().new(
        user_id="u-7", role=role, token_id="t-7", params={"p": "q"}, email="e@example.test",
        module="m-7", client="203.0.113.7",
    )  # fmt: skip
    now = clock()
    expected = (
        session_key(cookie), "u-7", role.name, {"p": "q"}, now, now + role.session_lifetime,
        role.idle_timeout, now, "t-7", "e@example.test", "m-7", "203.0.113.7",
    )  # fmt: skip
    for held in (record, await _stored(store, record)):
        assert (
            held.key, held.user_id, held.role, held.params, held.created_at, held.expires_at,
            held.idle_timeout, held.last_seen, held.token_id, held.email, held.module,
            held.client,
        ) == expected  # fmt: skip


async def _stored(store: Store, record: SessionRecord) -> SessionRecord:
    await store.create_session(record)
    stored = await store.get_session(record.key)
    assert stored is not None
    return stored


@pytest.mark.parametrize(
    "value",
    ["", "a" * 42, "a" * 44, "a" * 42 + "!", "a" * 42 + "=", "a" * 21 + " " + "a" * 21, "é" * 43],
)
async def test_only_a_well_formed_cookie_is_looked_up(
    manager: Factory, store: CountingStore, value: str
) -> None:
    sessions = manager()
    assert await sessions.lookup_value(value) is None
    assert store.reads == 0  # refused before the store is asked
    assert await sessions.lookup_value("a" * 43) is None  # well-formed, unknown: asked
    assert store.reads == 1


def test_the_cookie_header_is_split_into_ours_and_the_rest() -> None:
    value, rest = split_cookie_header("theme=dark; sidecar_session=abc; x=1", "sidecar_session")
    assert value == "abc"
    assert rest == "theme=dark; x=1"


# Headers built of the pieces that matter to the split (our name and its spellings, the
# separators, quotes, whitespace) and any latin-1 character.
_COOKIE_TEXT = st.lists(
    st.sampled_from(["sidecar_session", "__Host-", "SIDECAR_session", "a" * 43, *'=;, \t"x'])
    | st.characters(min_codepoint=0, max_codepoint=255),
    max_size=12,
).map("".join)


# Our cookie alone at its well-formed length, any of whose 43 characters may be one the
# value must not have: the headers the bytes-level shortcut looks at, and must let pass.
_OUR_LENGTH = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" + ';" =,\té\x00',
    min_size=43,
    max_size=43,
).map(lambda value: "sidecar_session=" + value)


@given(st.lists(_COOKIE_TEXT, max_size=3) | st.lists(_OUR_LENGTH, min_size=1, max_size=2))
@example(["sidecar_session=" + "a" * 43])
@example(["sidecar_session=" + "a" * 42 + "é"])  # latin-1, not ASCII
@example(["sidecar_session=" + "a" * 42 + ";"])
@example(["sidecar_session=" + "a" * 42 + " "])
@example(["sidecar_session=" + '"' + "a" * 42])
@example(["sidecar_session=" + "a" * 21 + "=" + "a" * 21])
@example(["sidecar_session=" + "a" * 43 + " "])
# Exactly as long as our cookie alone, with one byte a cookie value does not take: the
# bytes shortcut must not read them (each is the general pass's, or the str shortcut's).
@example(["sidecar_session=" + "a" * 42 + "="])
@example(["sidecar_session=" + "a" * 42 + "\x85"])
@example(["sidecar_session=" + "a" * 42 + ";"])
@example(["sidecar_session=" + "\x00" + "a" * 42])
@example(["sidecar_sessioN=" + "a" * 43])
@example(["sidecar_session=" + "-_" * 21 + "9", "sidecar_session=" + "-_" * 21 + "9"])
@example(['sidecar_session="' + "a" * 43 + '"'])
@example(["sidecar_session=" + "a" * 43 + ", sidecar_session=" + "b" * 43])
@example(["sidecar_session=" + "a" * 43 + "; x=1"])
@example(["sidecar_session==" + "a" * 43])
@example(["sidecar_session=" + "a" * 43, "sidecar_session=" + "b" * 43])
def test_the_lone_cookie_shortcut_reads_what_the_general_split_reads(
    headers: list[str],
) -> None:
    """cookie_values reads a header holding only our cookie without the general pass: it
    must give the same copies and the same rest as that pass, for any header."""
    name = "sidecar_session"
    raws = [h.encode("latin-1") for h in headers]
    found: list[str] = []
    others: list[bytes] = []
    for raw in raws:
        values, rest = session_cookies._split_cookie_header(raw.decode("latin-1"), name)
        for value in values:
            if (
                len(found) < session_cookies.MAX_COOKIE_COPIES
                and session_cookies.COOKIE_VALUE.fullmatch(value)
                and value not in found
            ):
                found.append(value)
        others.append(rest.encode("latin-1"))
    read = cookie_values(raws, name)
    assert read.values == tuple(found)
    assert read.others == tuple(others)


_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@given(
    st.text()
    | st.text(alphabet=_B64URL + "=+/.é٣Ａ\u212a\x00 ", min_size=41, max_size=45)
    | st.text(alphabet=_B64URL, min_size=43, max_size=43)
)
@example("a" * 43)
@example("a" * 42 + "\n")
@example("٣" * 43)  # digits, not ASCII
@example("é" * 43)  # a letter, not ASCII
@example("-" * 43)
@example("_" * 43)
def test_a_cookie_value_is_checked_as_the_pattern_checks_it(value: str) -> None:
    assert session_cookies.is_cookie_value(value) == bool(
        session_cookies.COOKIE_VALUE.fullmatch(value)
    )


@given(st.text(alphabet=_B64URL))
@example("a" * 43)
@example("")
def test_session_keys_are_hashlib_sha256_hex(value: str) -> None:
    """The store's session keys stay the SHA-256 hex of the cookie, whichever SHA-256
    implementation computes it: sessions stored before keep working."""
    assert session_key(value) == hashlib.sha256(value.encode("ascii")).hexdigest()
    assert session_key("a" * 43) == (
        "66d34fba71f8f450f7e45598853e53bfc23bbd129027cbb131a2f4ffd7878cd0"
    )


def test_session_keys_use_cpythons_own_sha256_where_it_has_one() -> None:
    """Not OpenSSL's (through hashlib): its per-call set-up costs more than hashing one
    cookie. Both give the same digests (above)."""
    digest = session_cookies._SHA256(b"x")
    assert type(digest).__module__ in ("_sha256", "_sha2")


@pytest.mark.parametrize(
    "settings",
    [
        {"cookie_secure": False},
        {"cookie_secure": True},
        {"cookie_secure": True, "cookie_domain": "example.test"},
        {"cookie_secure": False, "cookie_domain": ".example.test"},
    ],
)
def test_the_session_cookie_is_what_aiohttp_would_write(
    manager: Factory, role: RoleConfig, settings: dict[str, object]
) -> None:
    """set_cookie writes its header itself; it must be byte for byte aiohttp's (and a value
    that needs quoting, never one of ours, goes through aiohttp)."""
    sessions = manager(**settings)
    for value in ("A" * 21 + "-_" + "z9" * 10, 'needs "quoting"'):
        ours = web.Response()
        sessions.set_cookie(ours, value, role)
        theirs = web.Response()
        theirs.set_cookie(
            sessions.cookie_name, value, max_age=int(role.session_lifetime), path="/",
            domain=cast(str | None, settings.get("cookie_domain")),
            secure=bool(settings["cookie_secure"]),
            httponly=True, samesite="Lax",
        )  # fmt: skip
        expected = [m.output(header="")[1:] for m in theirs.cookies.values()]
        written = ours.headers.getall("Set-Cookie", []) + [
            m.output(header="")[1:] for m in ours.cookies.values()
        ]
        assert written == expected
