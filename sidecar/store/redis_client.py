"""Building the redis-py client for a :class:`~sidecar.store.redis_url.RedisTarget`.

Every topology gets the same promises: bounded connect and command timeouts, TLS with the
configured CA (and optional client certificate), ACL user and password, and **no automatic
resend** of a command whose reply was lost. A burn that reached Redis but whose answer did
not come back must not run a second time: the first click would come back "used". A
broken connection fails that call (503, fail closed) and the client reconnects — or, on a
cluster, reloads the slot map; through Sentinel, asks for the current primary — for the
next one. Redirections (``MOVED``/``ASK``) are still followed: they mean "not run here".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import ConnectionPool, Redis, SSLConnection
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import RedisSSLContext
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelManagedSSLConnection
from redis.backoff import NoBackoff

from sidecar.store.redis_url import RedisTarget

CALL_TIMEOUT = 2.0  # seconds, for connecting and for each command


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """What the URL does not say. ``password`` (from a file or the environment) wins over
    one in the URL; the TLS files are paths; ``min_replicas_ack`` is for ``WAIT``."""

    password: str | None = field(default=None, repr=False)
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    min_replicas_ack: int = 0

    def __post_init__(self) -> None:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("a TLS client certificate needs both tls_cert_file and tls_key_file")
        if not 0 <= self.min_replicas_ack <= 16:
            raise ValueError(f"min_replicas_ack must be 0..16, got {self.min_replicas_ack}")


def _shared_tls_context(base: type[SSLConnection]) -> type[SSLConnection]:
    """``base`` with one TLS context for all its connections.

    redis-py builds a context per connection, and ``ssl.create_default_context()`` loads
    the system CA bundle each time: ~100 ms of blocked event loop per new connection, so
    a burst of 32 new connections stalls every request for seconds. The files are read
    once, at the first connection (rotating the CA or client certificate needs a restart).
    """
    shared: list[RedisSSLContext] = []

    class SharedContext(base):  # type: ignore[valid-type,misc]  # a class made at run time
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            context: RedisSSLContext = self.ssl_context  # type: ignore[has-type]
            if not shared:
                shared.append(context)
            self.ssl_context = shared[0]

    return SharedContext


def _no_resend() -> Retry:
    return Retry(NoBackoff(), retries=0)


def _tls_kwargs(target: RedisTarget, options: RedisOptions) -> dict[str, Any]:
    if not target.tls:
        return {}
    kwargs: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    if options.tls_ca_file is not None:
        kwargs["ssl_ca_certs"] = options.tls_ca_file
    if options.tls_cert_file is not None:
        kwargs["ssl_certfile"] = options.tls_cert_file
        kwargs["ssl_keyfile"] = options.tls_key_file
    return kwargs


def _common(target: RedisTarget, options: RedisOptions) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "socket_connect_timeout": CALL_TIMEOUT,
        "socket_timeout": CALL_TIMEOUT,
        "retry": _no_resend(),
        "decode_responses": True,
        **_tls_kwargs(target, options),
    }
    password = options.password or target.password
    if password is not None:
        kwargs["password"] = password
    if target.username is not None:
        kwargs["username"] = target.username
    return kwargs


def build_client(
    target: RedisTarget, options: RedisOptions, *, max_connections: int
) -> tuple[Redis | RedisCluster, list[Redis]]:
    """A client that has not contacted Redis yet (the first command does), and the
    clients it uses to find its primary (the sentinels'), which close with it."""
    common = _common(target, options)
    if target.mode == "cluster":
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            max_connections=max_connections,
            require_full_coverage=True,
            ssl=target.tls,  # without it RedisCluster drops every ssl_* setting
            **common,
        )
        if target.tls:  # RedisCluster insists on its SSLConnection; swap it everywhere
            shared = _shared_tls_context(SSLConnection)
            cluster.connection_kwargs["connection_class"] = shared
            for node in cluster.startup_nodes:
                node.connection_class = shared
        return cluster, []
    if target.mode == "sentinel":
        assert target.service is not None  # parse_redis_url sets it for sentinel URLs
        # The sentinels speak TLS when the data nodes do; the ACL user is the data nodes'.
        sentinel_kwargs = {
            "socket_connect_timeout": CALL_TIMEOUT,
            "socket_timeout": CALL_TIMEOUT,
            "retry": _no_resend(),
            **_tls_kwargs(target, options),
        }
        if target.tls:
            sentinel_kwargs["ssl"] = True
        sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
            list(target.nodes), sentinel_kwargs=sentinel_kwargs
        )
        if target.tls:  # each new primary connection asks a sentinel: share theirs too
            shared_sentinel = _shared_tls_context(SSLConnection)
            for asked in sentinel.sentinels:
                asked.connection_pool.connection_class = shared_sentinel
        pool_kwargs: dict[str, Any] = {
            "db": target.db,
            "max_connections": max_connections,
            "health_check_interval": 15,
            **common,
        }
        if target.tls:
            pool_kwargs["connection_class"] = _shared_tls_context(SentinelManagedSSLConnection)
        client: Redis = sentinel.master_for(target.service, **pool_kwargs)
        return client, list(sentinel.sentinels)
    pool = ConnectionPool.from_url(
        target.url, max_connections=max_connections, health_check_interval=15, **common
    )
    if target.tls:  # from_url lets the scheme pick the class; swap it afterwards
        pool.connection_class = _shared_tls_context(SSLConnection)
    return Redis.from_pool(pool), []
