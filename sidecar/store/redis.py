"""Redis backend: shared state for several replicas, on one Redis, a Redis Cluster or a
primary found through Sentinel (URLs: :mod:`sidecar.store.redis_url`).

Every check-and-write is one atomic Redis command or Lua script, so replicas cannot race
each other. Records carry Redis expiries at their ``expires_at`` (so Redis does the
purging); users are the only records that never expire. Keys, under ``prefix``:

    tok:<id>                  "used" | "revoked"
    tokat:<id>                when it became so (epoch seconds; see ``_note_state_time``)
    tokrec:<id>               hash of a TokenRecord (a minted link, for the admin API)
    utok:<user_id>            sorted set of that user's token ids, scored by created_at
    sess:<key>                hash of a SessionRecord
    usess:<user_id>           set of that user's sess:* keys (entries checked on use)
    tsess:<token_id>          set of the sess:* keys that link created (checked on use)
    user:<id>                 hash {data: User as JSON, email_key}
    email:<email_key>         user id
    link:<len(user_id)>:<user_id>:<type>   hash of a PendingLink
    linkhash:<hashed_token>   the link:* key holding that hash
    rl:<window>:<reset>:<key> counter of one rate-limit window

On a cluster, ``user:`` and ``email:`` become ``{u}:user:`` and ``{u}:email:``: the hash
tag puts all users in one slot, so "this email is free" and "create the user" stay one
atomic script. Every other script touches one key, so tokens, sessions, links and
counters spread over the whole cluster. Outside a cluster (one node holds every key) a
burn and its time, a session and its index entries, a mint's record and its index entry
are one script each.

With ``min_replicas_ack`` N > 0, burns, revocations and session ends are followed by
``WAIT N`` on the same connection; fewer acknowledgements within 1 s fail the call with
:class:`StoreUnavailable`, so a burn that a failover could still lose is never reported
as ``BURNED``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from redis.exceptions import ResponseError

from sidecar.store import _codec
from sidecar.store import redis_scripts as lua
from sidecar.store.base import (
    BurnResult,
    PendingLink,
    Persistence,
    SessionRecord,
    Store,
    StoreUnavailable,
    TokenRecord,
    TokenState,
    TokenUse,
    User,
    UserExists,
)
from sidecar.store.redis_calls import RedisCalls, as_text, config_items, reply_int, reply_strs
from sidecar.store.redis_client import RedisOptions

# A burn record outlives its token by at least this long: a replica whose clock runs
# behind Redis' must still find the record while it still thinks the token is valid.
_MIN_TOKEN_TTL_MS = 300_000
_LOG = logging.getLogger(__name__)


def _ms(epoch_seconds: float) -> int:
    return math.ceil(epoch_seconds * 1000)


def _flat(fields: dict[str, str]) -> list[str]:
    return [item for pair in fields.items() for item in pair]


class RedisStore(RedisCalls, Store):
    """A :class:`~sidecar.store.base.Store` in Redis: the records and their keys here,
    connections, scripts and ``WAIT`` in :class:`~sidecar.store.redis_calls.RedisCalls`."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "sidecar:",
        max_connections: int = 32,
        options: RedisOptions | None = None,
    ) -> None:
        super().__init__(url, max_connections=max_connections, options=options)
        self._prefix = prefix
        self._users = f"{prefix}{{u}}:" if self._target.mode == "cluster" else prefix

    def __repr__(self) -> str:
        # The URL may carry a password; the mode and prefix are what a log reader needs.
        return f"RedisStore({self._target.mode}, prefix={self._prefix!r})"

    def _key(self, kind: str, name: str) -> str:
        return f"{self._prefix}{kind}:{name}"

    def _user_key(self, kind: str, name: str) -> str:
        return f"{self._users}{kind}:{name}"

    def _link_key(self, user_id: str, link_type: str) -> str:
        # The length prefix keeps ("a:b", "c") and ("a", "b:c") apart.
        return self._key("link", f"{len(user_id)}:{user_id}:{link_type}")

    async def ping(self) -> None:
        async with self._call() as redis:
            await redis.ping()

    async def persistence(self) -> Persistence:
        """From ``CONFIG GET appendonly`` and ``save``: durable when either is on.

        On a cluster the node asked is any primary (they share one configuration in every
        managed offering); where ``CONFIG`` is refused, the answer is "unknown"."""
        try:
            async with self._call() as redis:
                settings = await redis.config_get("appendonly")
                settings.update(await redis.config_get("save"))
        except StoreUnavailable as exc:
            cause = exc.__cause__
            if isinstance(cause, ResponseError):  # NOPERM, unknown or renamed command
                return Persistence(None, f"cannot read the Redis configuration ({cause})")
            raise
        flat = {as_text(k): as_text(v) for k, v in config_items(settings)}
        aof = (flat.get("appendonly") or "").lower() == "yes"
        rdb = bool((flat.get("save") or "").strip())
        if aof or rdb:
            kinds = " and ".join(k for k, on in (("appendonly", aof), ("RDB saves", rdb)) if on)
            return Persistence(True, f"Redis persists with {kinds}")
        return Persistence(
            False,
            "Redis has appendonly no and no RDB saves: after a Redis restart every used "
            "one-time link opens again and revocations are forgotten",
        )

    # -- one-time tokens --------------------------------------------------------------
    async def _set_state(self, token_id: str, state: TokenState, expires_at: float) -> str | None:
        args = [state.value, _ms(expires_at), _MIN_TOKEN_TTL_MS]
        key = self._key("tok", token_id)
        if self._target.mode != "cluster":  # the time in the same script, one round trip
            old = await self._eval_acked(
                lua.SET_STATE_ONCE, [key, self._key("tokat", token_id)], args
            )
            return None if old is None else str(old)
        old = await self._eval_acked(lua.SET_STATE_ONCE, key, args)
        if old is None:
            await self._note_state_time(token_id, expires_at)
        return None if old is None else str(old)

    async def _note_state_time(self, token_id: str, expires_at: float) -> None:
        """Record when a token was burned or revoked, for ``GET /tokens/{id}``.

        On a cluster only (elsewhere the state's script writes it): a second key, which
        cannot share the state's slot, written after the state, and best effort: the state
        is what matters and is already durable, so a failure here must not turn a good
        redemption into a 503 — the time is then absent."""
        at = max(_ms(expires_at), _ms(time.time()) + _MIN_TOKEN_TTL_MS)
        try:
            async with self._call() as redis:
                await redis.set(self._key("tokat", token_id), repr(time.time()), nx=True, pxat=at)
        except StoreUnavailable as exc:
            _LOG.warning("could not record when a token was used or revoked: %s", exc)

    async def burn(
        self, token_id: str, expires_at: float, session: SessionRecord | None = None
    ) -> BurnResult:
        old = await self._set_state(token_id, TokenState.USED, expires_at)
        if old is None:
            if session is not None:  # only after the answer: see Store.burn
                await self.create_session(session)
            return BurnResult.BURNED
        return BurnResult.REVOKED if old == TokenState.REVOKED.value else BurnResult.ALREADY_USED

    async def revoke(self, token_id: str, expires_at: float) -> TokenState:
        old = await self._set_state(token_id, TokenState.REVOKED, expires_at)
        return TokenState.UNUSED if old is None else TokenState(old)

    async def token_state(self, token_id: str) -> TokenState:
        state = await self._get(self._key("tok", token_id))
        return TokenState.UNUSED if state is None else TokenState(state)

    async def token_use(self, token_id: str) -> TokenUse:
        state, at = await asyncio.gather(
            self._get(self._key("tok", token_id)), self._get(self._key("tokat", token_id))
        )
        if state is None:
            return TokenUse(TokenState.UNUSED)
        when = None if at is None else _codec.get_float({"at": at}, "at")
        return TokenUse(TokenState(state), when)

    # -- minted-link records ----------------------------------------------------------
    async def record_token(self, record: TokenRecord, keep_until: float) -> None:
        keep = _ms(keep_until)
        index, key = self._key("utok", record.user_id), self._key("tokrec", record.token_id)
        entry = [repr(record.created_at), record.token_id]
        fields = _flat(_codec.token_fields(record))
        if self._target.mode != "cluster":  # one node holds both keys: one script
            await self._eval(lua.INDEX_AND_RECORD_MINT, [index, key], [keep, *entry, *fields])
            return
        # Index first: a listing drops index entries whose record is missing.
        await self._eval(lua.INDEX_MINT, [index], [keep, *entry])
        await self._eval(lua.RECORD_MINT, [key], [keep, *fields])

    async def record_counted(
        self,
        record: TokenRecord,
        keep_until: float,
        key: str,
        window: float,
        limit: int,
        now: float,
    ) -> tuple[int, float]:
        # Two calls: the counter and the record live in different hash slots on a cluster.
        count, reset = await self.hit(key, window, now)
        if count <= limit:
            await self.record_token(record, keep_until)
        return count, reset

    async def get_token(self, token_id: str) -> TokenRecord | None:
        fields = await self._hgetall(self._key("tokrec", token_id))
        return _codec.token_from_fields(fields) if fields else None

    async def list_user_tokens(
        self, user_id: str, limit: int, after: tuple[float, str] | None = None
    ) -> list[TokenRecord]:
        index = self._key("utok", user_id)
        async with self._call() as redis:
            if after is None:
                ids = reply_strs(await redis.zrevrangebyscore(index, "+inf", "-inf", 0, limit))
            else:
                # Ties on created_at are ordered by id, as ZREVRANGE orders equal scores.
                at = repr(after[0])
                ties = reply_strs(await redis.zrevrangebyscore(index, at, at))
                ids = [i for i in ties if i < after[1]][:limit]
                if len(ids) < limit:
                    rest = limit - len(ids)
                    ids += reply_strs(
                        await redis.zrevrangebyscore(index, f"({at}", "-inf", 0, rest)
                    )
        found = await asyncio.gather(*(self._hgetall(self._key("tokrec", i)) for i in ids))
        records = [_codec.token_from_fields(f) for f in found if f.get("user_id") == user_id]
        gone = [i for i, fields in zip(ids, found, strict=True) if not fields]
        if gone:  # records past keep_until (Redis expired them); their entries go too
            async with self._call() as redis:
                await redis.zrem(index, *gone)
        return records

    # -- sessions ---------------------------------------------------------------------
    async def create_session(self, session: SessionRecord) -> None:
        s = session
        key = self._key("sess", s.key)
        indexes = (self._key("usess", s.user_id), self._key("tsess", s.token_id))
        dead_at = _ms(_codec.session_dead_at(s.expires_at, s.last_seen, s.idle_timeout))
        fields = _flat(_codec.session_fields(s))
        if self._target.mode != "cluster":  # one node holds every key: one script
            args: list[str | int] = [_ms(s.expires_at), dead_at, *fields]
            await self._eval(lua.CREATE_INDEXED_SESSION, [*indexes, key], args)
            return
        # Index first: if the second step fails, the index holds an entry that
        # delete_user_sessions checks and skips, never a session it cannot find.
        for index in indexes:
            await self._eval(lua.INDEX_SESSION, [index], [key, _ms(s.expires_at)])
        await self._eval(lua.CREATE_SESSION, [key], [dead_at, *fields])

    async def get_session(self, key: str) -> SessionRecord | None:
        fields = await self._hgetall(self._key("sess", key))
        return _codec.session_from_fields(fields) if fields else None

    async def touch_session(self, key: str, last_seen: float) -> None:
        await self._eval(lua.TOUCH_SESSION, [self._key("sess", key)], [repr(last_seen)])

    async def delete_session(self, key: str) -> bool:
        session_key = self._key("sess", key)
        user_id = await self._eval_acked(lua.DELETE_SESSION, session_key)
        if not isinstance(user_id, str):
            return False
        async with self._call() as redis:
            await redis.srem(self._key("usess", user_id), session_key)
        return True

    async def delete_user_sessions(self, user_id: str) -> int:
        return await self._delete_indexed(
            self._key("usess", user_id), lua.DELETE_SESSION_OF, user_id
        )

    async def delete_token_sessions(self, token_id: str) -> int:
        # A single logout leaves its entry here; DELETE_SESSION_OF_LINK skips it (0).
        return await self._delete_indexed(
            self._key("tsess", token_id), lua.DELETE_SESSION_OF_LINK, token_id
        )

    async def _delete_indexed(self, index: str, script: str, owner: str) -> int:
        """End the sessions an index lists that still belong to ``owner``."""
        async with self._call() as redis:
            members = sorted(str(m) for m in await redis.smembers(index))
        results = await asyncio.gather(*(self._eval_acked(script, m, [owner]) for m in members))
        # Entries of sessions not (yet) there stay: the session may be being created now,
        # and its entry must outlive this call. The index expires with the last session.
        done = [m for m, r in zip(members, results, strict=True) if r != 0]
        if done:
            async with self._call() as redis:
                await redis.srem(index, *done)
        return sum(1 for r in results if r == 1)

    async def list_user_sessions(self, user_id: str) -> list[SessionRecord]:
        async with self._call() as redis:
            members = sorted(str(m) for m in await redis.smembers(self._key("usess", user_id)))
        found = await asyncio.gather(*(self._hgetall(m) for m in members))
        # Entries may be stale (a session gone, or its key reused): the record decides.
        sessions = [_codec.session_from_fields(f) for f in found if f.get("user_id") == user_id]
        return sorted(sessions, key=lambda s: (s.created_at, s.key))

    # -- users ------------------------------------------------------------------------
    async def create_user(self, user: User) -> None:
        email_key = _codec.email_key(user.email)
        keys = [self._user_key("user", user.id), self._user_key("email", email_key)]
        args = [user.id, email_key, _codec.user_to_json(user)]
        if await self._eval(lua.CREATE_USER, keys, args) != 1:
            raise UserExists("a user with this email already exists")

    async def update_user(self, user: User) -> None:
        email_key = _codec.email_key(user.email)
        user_key = self._user_key("user", user.id)
        for _ in range(8):  # another replica changing the same user's email: read again
            async with self._call() as redis:
                old = as_text(await redis.hget(user_key, "email_key"))
            if old is None:
                return
            keys = [user_key, self._user_key("email", email_key), self._user_key("email", old)]
            args = [user.id, email_key, _codec.user_to_json(user), old]
            result = await self._eval(lua.UPDATE_USER, keys, args)
            if result == 0:
                raise UserExists("a user with this email already exists")
            if result != -2:
                return
        raise StoreUnavailable("Redis: the user kept changing while it was being updated")

    async def get_user(self, user_id: str) -> User | None:
        async with self._call() as redis:
            data = as_text(await redis.hget(self._user_key("user", user_id), "data"))
        return None if data is None else _codec.user_from_json(data)

    async def get_user_by_email(self, email: str) -> User | None:
        user_id = await self._get(self._user_key("email", _codec.email_key(email)))
        return None if user_id is None else await self.get_user(user_id)

    # -- pending auth links -----------------------------------------------------------
    async def put_link(self, link: PendingLink) -> None:
        link_key = self._link_key(link.user_id, link.link_type)
        expires = _ms(link.expires_at)
        # Index first; a reader checks the link's hashed_token, so an index entry whose
        # link was never written (or was replaced) finds nothing.
        async with self._call() as redis:
            await redis.set(self._key("linkhash", link.hashed_token), link_key, pxat=expires)
        args: list[str | int] = [expires, *_flat(_codec.link_fields(link))]
        old = await self._eval(lua.PUT_LINK, [link_key], args)
        if isinstance(old, str) and old != link.hashed_token:
            await self._drop_hash_index(old, link_key)

    async def get_link(self, user_id: str, link_type: str) -> PendingLink | None:
        fields = await self._hgetall(self._link_key(user_id, link_type))
        return _codec.link_from_fields(fields) if fields else None

    async def get_link_by_hash(self, hashed_token: str) -> PendingLink | None:
        link_key = await self._get(self._key("linkhash", hashed_token))
        if link_key is None:
            return None
        fields = await self._hgetall(link_key)
        # The index is written before the link, and a replaced link's entry may linger.
        if not fields or fields.get("hashed_token") != hashed_token:
            return None
        return _codec.link_from_fields(fields)

    async def record_failed_attempt(self, user_id: str, link_type: str) -> int:
        return reply_int(await self._eval(lua.FAILED_ATTEMPT, [self._link_key(user_id, link_type)]))

    async def delete_link(self, user_id: str, link_type: str) -> None:
        link_key = self._link_key(user_id, link_type)
        old = await self._eval(lua.DELETE_LINK, [link_key])
        if isinstance(old, str):
            await self._drop_hash_index(old, link_key)

    async def _drop_hash_index(self, hashed_token: str, link_key: str) -> None:
        await self._eval(lua.DELETE_INDEX_IF, [self._key("linkhash", hashed_token)], [link_key])

    # -- rate limits ------------------------------------------------------------------
    async def hit(self, key: str, window: float, now: float) -> tuple[int, float]:
        reset = _codec.window_reset(window, now)
        # The window is in the name: a 60 s and a 1 h window may end at the same second.
        counter = self._key("rl", f"{window:g}:{reset!r}:{key}")
        return reply_int(await self._eval(lua.HIT, [counter], [_ms(reset)])), reset

    # -- housekeeping -----------------------------------------------------------------
    async def purge_expired(self, now: float) -> int:
        """Nothing to do: every record but users carries a Redis expiry."""
        return 0
