"""The Redis store's plumbing: one connection slot per command, the cluster slot map
loaded alone, scripts by SHA with a fallback, and writes that ``WAIT`` for replicas.

Every Redis or cluster error becomes :class:`~sidecar.store.base.StoreUnavailable` (the
callers fail closed); nothing here is ever resent (see :mod:`sidecar.store.redis_client`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
from collections.abc import AsyncIterator, Iterator, Sequence

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from sidecar.store.base import StoreUnavailable
from sidecar.store.redis_client import CALL_TIMEOUT, RedisOptions, build_client
from sidecar.store.redis_url import parse_redis_url

_WAIT_TIMEOUT_MS = 1000  # below CALL_TIMEOUT: a slow replica is a clean 503
Client = Redis | RedisCluster


@functools.cache
def _sha(script: str) -> str:
    return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    try:
        yield
    except (RedisError, RedisClusterException, OSError) as exc:
        raise StoreUnavailable(f"Redis: {exc}") from exc


class RedisCalls:
    """Commands on one Redis, a cluster or a Sentinel-found primary.

    :meth:`open` does not contact Redis, so a replica starts while Redis is down and
    recovers by itself when it is back; until then every call raises
    :class:`StoreUnavailable` within the 2 s connect/operation timeouts.
    At most ``max_connections`` commands are in flight; callers beyond that queue in
    order (redis-py's own blocking pool is not fair and starves some callers under load).
    """

    def __init__(
        self, url: str, *, max_connections: int = 32, options: RedisOptions | None = None
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self._target = parse_redis_url(url)
        self._options = options or RedisOptions()
        self._redis: Client | None = None
        self._helpers: list[Redis] = []
        # redis-py's async cluster client loses connections when commands run while it
        # loads the slot map (seen with 8.1): load it alone, before any command and again
        # after any error (a failover), and let commands through only once it is loaded.
        self._slot_map_lock = asyncio.Lock()
        self._slot_map_loaded = False
        self._slots = asyncio.Semaphore(max_connections)
        self._max_connections = max_connections

    async def open(self) -> None:
        self._redis, self._helpers = build_client(
            self._target, self._options, max_connections=self._max_connections
        )

    async def close(self) -> None:
        redis, self._redis = self._redis, None
        helpers, self._helpers = self._helpers, []
        with _unavailable():
            for client in [redis, *helpers]:
                if client is not None:
                    await client.aclose()

    @contextlib.asynccontextmanager
    async def _call(self) -> AsyncIterator[Client]:
        """A client for one command, with a free connection; errors become StoreUnavailable."""
        if self._redis is None:
            raise StoreUnavailable("Redis store is not open")
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                await self._slots.acquire()
        except TimeoutError as exc:
            raise StoreUnavailable("Redis: no free connection") from exc
        try:
            with _unavailable():
                if isinstance(self._redis, RedisCluster) and not self._slot_map_loaded:
                    await self._load_slot_map(self._redis)
                try:
                    yield self._redis
                except (RedisError, RedisClusterException):
                    self._slot_map_loaded = False
                    raise
        finally:
            self._slots.release()

    async def _load_slot_map(self, cluster: RedisCluster) -> None:
        async with self._slot_map_lock:
            if not self._slot_map_loaded:
                await cluster.initialize()
                self._slot_map_loaded = True

    async def _get(self, key: str) -> str | None:
        async with self._call() as redis:
            return as_text(await redis.get(key))

    async def _eval(self, script: str, keys: list[str], args: Sequence[str | int] = ()) -> object:
        async with self._call() as redis:
            try:
                result: object = await redis.evalsha(_sha(script), len(keys), *keys, *args)
            except NoScriptError:  # not run: this node has not cached the script yet
                result = await redis.eval(script, len(keys), *keys, *args)
        return result

    async def _eval_acked(
        self, script: str, key: str | list[str], args: Sequence[str | int] = ()
    ) -> object:
        """Run a write script and, with ``min_replicas_ack``, ``WAIT`` for the replicas
        on the same connection (``WAIT`` counts only that connection's writes). Several
        keys only outside a cluster (on a cluster they may live on several nodes)."""
        keys = [key] if isinstance(key, str) else key
        need = self._options.min_replicas_ack
        if need == 0:
            return await self._eval(script, keys, args)
        async with self._call() as redis:
            if isinstance(redis, RedisCluster):
                if len(keys) != 1:
                    raise ValueError("a write script on a cluster names one key")
                key = keys[0]
                node = redis.get_node_from_key(key)
                cpipe = redis.pipeline()
                cpipe.eval(script, 1, key, *args)
                cpipe.execute_command("WAIT", need, _WAIT_TIMEOUT_MS, target_nodes=node)
                result, acked = await cpipe.execute()
                if redis.get_node_from_key(key) is not node:  # redirected: WAIT went astray
                    raise StoreUnavailable("Redis: the slot moved during an acknowledged write")
            else:
                pipe = redis.pipeline(transaction=False)
                pipe.eval(script, len(keys), *keys, *args)
                pipe.execute_command("WAIT", need, _WAIT_TIMEOUT_MS)
                result, acked = await pipe.execute()
        if not isinstance(acked, int) or acked < need:
            raise StoreUnavailable(f"Redis: write acknowledged by {acked} of {need} replicas")
        return result

    async def _hgetall(self, key: str) -> dict[str, str]:
        async with self._call() as redis:
            fields = await redis.hgetall(key)
        return {str(k): str(v) for k, v in fields.items()}


def as_text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def config_items(settings: object) -> list[tuple[bytes | str, bytes | str]]:
    """``CONFIG GET``'s answer as pairs: a dict from Redis, or per node from a cluster."""
    if not isinstance(settings, dict):
        return []
    pairs: list[tuple[bytes | str, bytes | str]] = []
    for key, value in settings.items():
        if isinstance(value, dict):  # a cluster answers {node: {key: value}}
            pairs.extend(value.items())
        else:
            pairs.append((key, value))
    return pairs


def reply_strs(values: object) -> list[str]:
    """A reply that must be a list of strings (a range query's)."""
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise StoreUnavailable("Redis returned an unexpected reply to a range query")
    return [str(v) for v in values]


def reply_int(value: object) -> int:
    """A script's reply that must be an integer."""
    if not isinstance(value, int):
        raise StoreUnavailable(f"Redis script returned {type(value).__name__}, expected int")
    return value
