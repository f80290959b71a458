"""Redis backend: shared state for several replicas.

Every check-and-write is one atomic Redis command or Lua script, so replicas cannot
race each other. Records carry Redis expiries at their ``expires_at`` (so Redis does
the purging); users are the only records that never expire. Keys, under ``prefix``:

    tok:<id>                  "used" | "revoked"
    sess:<key>                hash of a SessionRecord
    usess:<user_id>           set of that user's sess:* keys
    user:<id>                 hash {data: User as JSON, email_key}
    email:<email_key>         user id
    link:<len(user_id)>:<user_id>:<type>   hash of a PendingLink
    linkhash:<hashed_token>   the link:* key holding that hash
    rl:<window reset>:<key>   counter of one rate-limit window

The scripts touch keys they derive at run time, which is fine on one Redis (or a
replicated primary) but not on Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Iterator, Sequence

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from sidecar.store import _codec
from sidecar.store.base import (
    BurnResult,
    PendingLink,
    SessionRecord,
    StoreUnavailable,
    TokenState,
    User,
    UserExists,
)

# A burn record outlives its token by at least this long: a replica whose clock runs
# behind Redis' must still find the record while it still thinks the token is valid.
_MIN_TOKEN_TTL_MS = 300_000
_CALL_TIMEOUT = 2.0  # seconds, for connecting, for each command, for a free connection

# KEYS: token key. ARGV: state to set, expires_at (ms), min ttl (ms). Returns old state.
_SET_STATE_ONCE = """
local t = redis.call('TIME')
local floor = t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[3])
local at = math.max(tonumber(ARGV[2]), floor)
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PXAT', at, 'GET')
"""

# KEYS: session, user index. ARGV: dead_at (ms), expires_at (ms), user index prefix,
# field, value, ... The index lives until the last session's *absolute* expiry: touches
# push a session's own expiry forward, and the index must still find it then.
_CREATE_SESSION = """
local old = redis.call('HGET', KEYS[1], 'user_id')
if old then redis.call('SREM', ARGV[3] .. old, KEYS[1]) end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], KEYS[1])
if redis.call('PEXPIRETIME', KEYS[2]) < tonumber(ARGV[2]) then
  redis.call('PEXPIREAT', KEYS[2], ARGV[2])
end
"""

# KEYS: session. ARGV: last_seen. Never moves last_seen back, never revives a session.
_TOUCH_SESSION = """
local v = redis.call('HMGET', KEYS[1], 'last_seen', 'expires_at', 'idle_timeout')
if not v[1] then return 0 end
local seen = tonumber(v[1])
if tonumber(ARGV[1]) > seen then
  seen = tonumber(ARGV[1])
  redis.call('HSET', KEYS[1], 'last_seen', ARGV[1])
end
local dead = math.min(tonumber(v[2]), seen + tonumber(v[3]))
redis.call('PEXPIREAT', KEYS[1], string.format('%d', math.ceil(dead * 1000)))
return 1
"""

# KEYS: session. ARGV: user index prefix.
_DELETE_SESSION = """
local u = redis.call('HGET', KEYS[1], 'user_id')
if not u then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', ARGV[1] .. u, KEYS[1])
return 1
"""

# KEYS: user index. Counts only sessions that still existed.
_DELETE_USER_SESSIONS = """
local n = 0
for _, k in ipairs(redis.call('SMEMBERS', KEYS[1])) do n = n + redis.call('DEL', k) end
redis.call('DEL', KEYS[1])
return n
"""

# KEYS: user, email index. ARGV: id, email_key, data. Returns 0 if id or email is taken.
_CREATE_USER = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('HSET', KEYS[1], 'data', ARGV[3], 'email_key', ARGV[2])
redis.call('SET', KEYS[2], ARGV[1])
return 1
"""

# KEYS: user, new email index. ARGV: id, email_key, data, email index prefix.
# Returns -1 (no such user), 0 (email taken), 1 (updated).
_UPDATE_USER = """
local old = redis.call('HGET', KEYS[1], 'email_key')
if not old then return -1 end
local owner = redis.call('GET', KEYS[2])
if owner and owner ~= ARGV[1] then return 0 end
if old ~= ARGV[2] then redis.call('DEL', ARGV[4] .. old) end
redis.call('HSET', KEYS[1], 'data', ARGV[3], 'email_key', ARGV[2])
redis.call('SET', KEYS[2], ARGV[1])
return 1
"""

# KEYS: link, hash index. ARGV: expires_at (ms), hash index prefix, field, value, ...
_PUT_LINK = """
local old = redis.call('HGET', KEYS[1], 'hashed_token')
if old and redis.call('GET', ARGV[2] .. old) == KEYS[1] then
  redis.call('DEL', ARGV[2] .. old)
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], KEYS[1], 'PXAT', ARGV[1])
"""

# KEYS: link.
_FAILED_ATTEMPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HINCRBY', KEYS[1], 'failed_attempts', 1)
"""

# KEYS: link. ARGV: hash index prefix.
_DELETE_LINK = """
local old = redis.call('HGET', KEYS[1], 'hashed_token')
if old and redis.call('GET', ARGV[1] .. old) == KEYS[1] then
  redis.call('DEL', ARGV[1] .. old)
end
redis.call('DEL', KEYS[1])
"""

# KEYS: counter. ARGV: window reset (ms).
_HIT = """
local c = redis.call('INCR', KEYS[1])
if c == 1 then redis.call('PEXPIREAT', KEYS[1], ARGV[1]) end
return c
"""


_SCRIPTS = (
    _SET_STATE_ONCE, _CREATE_SESSION, _TOUCH_SESSION, _DELETE_SESSION, _DELETE_USER_SESSIONS,
    _CREATE_USER, _UPDATE_USER, _PUT_LINK, _FAILED_ATTEMPT, _DELETE_LINK, _HIT,
)  # fmt: skip


def _ms(epoch_seconds: float) -> int:
    return math.ceil(epoch_seconds * 1000)


def _flat(fields: dict[str, str]) -> list[str]:
    return [item for pair in fields.items() for item in pair]


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(f"Redis: {exc}") from exc


class RedisStore:
    """A :class:`~sidecar.store.base.Store` in Redis (``redis://``, ``rediss://``,
    ``unix:///path.sock?db=N``).

    :meth:`open` does not contact Redis, so a replica starts while Redis is down and
    recovers by itself when it is back; until then every call raises
    :class:`StoreUnavailable` within the 2 s connect/operation timeouts.
    At most ``max_connections`` commands are in flight; callers beyond that queue in
    order (redis-py's own blocking pool is not fair and starves some callers under load).
    """

    def __init__(self, url: str, *, prefix: str = "sidecar:", max_connections: int = 32) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self._url = url
        self._prefix = prefix
        self._redis: Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._slots = asyncio.Semaphore(max_connections)
        self._max_connections = max_connections

    def __repr__(self) -> str:
        return f"RedisStore(prefix={self._prefix!r})"  # the URL may carry a password

    async def open(self) -> None:
        pool = ConnectionPool.from_url(
            self._url,
            max_connections=self._max_connections,
            socket_connect_timeout=_CALL_TIMEOUT,
            socket_timeout=_CALL_TIMEOUT,
            health_check_interval=15,
            # No automatic resend: a burn whose reply was lost must not run twice (the
            # first click would come back "used"). A broken connection fails this call
            # (503, fail closed) and the pool reconnects for the next one.
            retry=Retry(NoBackoff(), retries=0),
            decode_responses=True,
        )
        self._redis = Redis.from_pool(pool)
        self._scripts = {src: self._redis.register_script(src) for src in _SCRIPTS}

    async def close(self) -> None:
        redis, self._redis = self._redis, None
        self._scripts = {}
        if redis is not None:
            with _unavailable():
                await redis.aclose()

    @contextlib.asynccontextmanager
    async def _call(self) -> AsyncIterator[Redis]:
        """A client for one command, with a free connection; errors become StoreUnavailable."""
        if self._redis is None:
            raise StoreUnavailable("Redis store is not open")
        try:
            async with asyncio.timeout(_CALL_TIMEOUT):
                await self._slots.acquire()
        except TimeoutError as exc:
            raise StoreUnavailable("Redis: no free connection") from exc
        try:
            with _unavailable():
                yield self._redis
        finally:
            self._slots.release()

    def _key(self, kind: str, name: str) -> str:
        return f"{self._prefix}{kind}:{name}"

    def _link_key(self, user_id: str, link_type: str) -> str:
        # The length prefix keeps ("a:b", "c") and ("a", "b:c") apart.
        return self._key("link", f"{len(user_id)}:{user_id}:{link_type}")

    async def ping(self) -> None:
        async with self._call() as redis:
            await redis.ping()

    # -- one-time tokens --------------------------------------------------------------
    async def _set_state(self, token_id: str, state: TokenState, expires_at: float) -> str | None:
        args = [state.value, _ms(expires_at), _MIN_TOKEN_TTL_MS]
        old = await self._eval(_SET_STATE_ONCE, [self._key("tok", token_id)], args)
        return None if old is None else str(old)

    async def burn(self, token_id: str, expires_at: float) -> BurnResult:
        old = await self._set_state(token_id, TokenState.USED, expires_at)
        if old is None:
            return BurnResult.BURNED
        return BurnResult.REVOKED if old == TokenState.REVOKED.value else BurnResult.ALREADY_USED

    async def revoke(self, token_id: str, expires_at: float) -> TokenState:
        old = await self._set_state(token_id, TokenState.REVOKED, expires_at)
        return TokenState.UNUSED if old is None else TokenState(old)

    async def token_state(self, token_id: str) -> TokenState:
        state = await self._get(self._key("tok", token_id))
        return TokenState.UNUSED if state is None else TokenState(state)

    # -- sessions ---------------------------------------------------------------------
    async def create_session(self, session: SessionRecord) -> None:
        s = session
        dead_at = _ms(_codec.session_dead_at(s.expires_at, s.last_seen, s.idle_timeout))
        keys = [self._key("sess", s.key), self._key("usess", s.user_id)]
        args: list[str | int] = [
            dead_at,
            _ms(s.expires_at),
            self._key("usess", ""),
            *_flat(_codec.session_fields(s)),
        ]
        await self._eval(_CREATE_SESSION, keys, args)

    async def get_session(self, key: str) -> SessionRecord | None:
        fields = await self._hgetall(self._key("sess", key))
        return _codec.session_from_fields(fields) if fields else None

    async def touch_session(self, key: str, last_seen: float) -> None:
        await self._eval(_TOUCH_SESSION, [self._key("sess", key)], [repr(last_seen)])

    async def delete_session(self, key: str) -> bool:
        keys = [self._key("sess", key)]
        return await self._eval(_DELETE_SESSION, keys, [self._key("usess", "")]) == 1

    async def delete_user_sessions(self, user_id: str) -> int:
        return _int(await self._eval(_DELETE_USER_SESSIONS, [self._key("usess", user_id)]))

    # -- users ------------------------------------------------------------------------
    async def create_user(self, user: User) -> None:
        email_key = _codec.email_key(user.email)
        keys = [self._key("user", user.id), self._key("email", email_key)]
        args = [user.id, email_key, _codec.user_to_json(user)]
        if await self._eval(_CREATE_USER, keys, args) != 1:
            raise UserExists("a user with this email already exists")

    async def update_user(self, user: User) -> None:
        email_key = _codec.email_key(user.email)
        keys = [self._key("user", user.id), self._key("email", email_key)]
        args = [user.id, email_key, _codec.user_to_json(user), self._key("email", "")]
        if await self._eval(_UPDATE_USER, keys, args) == 0:
            raise UserExists("a user with this email already exists")

    async def get_user(self, user_id: str) -> User | None:
        async with self._call() as redis:
            data = _text(await redis.hget(self._key("user", user_id), "data"))
        return None if data is None else _codec.user_from_json(data)

    async def get_user_by_email(self, email: str) -> User | None:
        user_id = await self._get(self._key("email", _codec.email_key(email)))
        return None if user_id is None else await self.get_user(user_id)

    # -- pending auth links -----------------------------------------------------------
    async def put_link(self, link: PendingLink) -> None:
        link_key = self._link_key(link.user_id, link.link_type)
        keys = [link_key, self._key("linkhash", link.hashed_token)]
        args: list[str | int] = [_ms(link.expires_at), self._key("linkhash", "")]
        args += _flat(_codec.link_fields(link))
        await self._eval(_PUT_LINK, keys, args)

    async def get_link(self, user_id: str, link_type: str) -> PendingLink | None:
        fields = await self._hgetall(self._link_key(user_id, link_type))
        return _codec.link_from_fields(fields) if fields else None

    async def get_link_by_hash(self, hashed_token: str) -> PendingLink | None:
        link_key = await self._get(self._key("linkhash", hashed_token))
        if link_key is None:
            return None
        fields = await self._hgetall(link_key)
        # The index is written with the link, but a replaced link may be read in between.
        if not fields or fields.get("hashed_token") != hashed_token:
            return None
        return _codec.link_from_fields(fields)

    async def record_failed_attempt(self, user_id: str, link_type: str) -> int:
        return _int(await self._eval(_FAILED_ATTEMPT, [self._link_key(user_id, link_type)]))

    async def delete_link(self, user_id: str, link_type: str) -> None:
        keys = [self._link_key(user_id, link_type)]
        await self._eval(_DELETE_LINK, keys, [self._key("linkhash", "")])

    # -- rate limits ------------------------------------------------------------------
    async def hit(self, key: str, window: float, now: float) -> tuple[int, float]:
        reset = _codec.window_reset(window, now)
        counter = self._key("rl", f"{reset!r}:{key}")
        return _int(await self._eval(_HIT, [counter], [_ms(reset)])), reset

    # -- housekeeping -----------------------------------------------------------------
    async def purge_expired(self, now: float) -> int:
        """Nothing to do: every record but users carries a Redis expiry."""
        return 0

    # -- plumbing ---------------------------------------------------------------------
    async def _get(self, key: str) -> str | None:
        async with self._call() as redis:
            return _text(await redis.get(key))

    async def _eval(self, script: str, keys: list[str], args: Sequence[str | int] = ()) -> object:
        compiled = self._scripts.get(script)
        if compiled is None:
            raise StoreUnavailable("Redis store is not open")
        async with self._call():
            result: object = await compiled(keys=keys, args=args)
        return result

    async def _hgetall(self, key: str) -> dict[str, str]:
        async with self._call() as redis:
            fields = await redis.hgetall(key)
        return {str(k): str(v) for k, v in fields.items()}


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _int(value: object) -> int:
    if not isinstance(value, int):
        raise StoreUnavailable(f"Redis script returned {type(value).__name__}, expected int")
    return value
