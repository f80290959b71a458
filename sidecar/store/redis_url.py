"""Redis store URLs: one Redis, a Redis Cluster, or a primary found through Sentinel.

    redis://[user[:password]@]host:port/db        one Redis (rediss:// for TLS)
    unix:///path/redis.sock?db=N                  one Redis on a unix socket
    redis+cluster://[user@]h1:p1,h2:p2/           Redis Cluster, any reachable nodes to start
    rediss+cluster://…                            the same over TLS
    redis+sentinel://h1:p1,h2:p2/<service>/<db>   the primary of <service>, asked of Sentinels
    rediss+sentinel://…                           the same over TLS (sentinels and data nodes)

Parsing needs no Redis client library, so the configuration checks a URL without loading
one. The password in a URL is accepted here; the configuration refuses it when the URL is
written in the YAML itself (see ``store.password``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote, urlsplit

Mode = Literal["single", "cluster", "sentinel"]

_SCHEMES: dict[str, tuple[Mode, bool]] = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "unix": ("single", False),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}
REDIS_SCHEMES = tuple(_SCHEMES)
_HOSTPORT = re.compile(
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.\-_]+)):(?P<port>\d{1,5})"
)
_SERVICE = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where the Redis store lives. ``url`` is the original (a single Redis is opened from
    it); ``nodes`` are the cluster's start nodes or the sentinels."""

    mode: Mode
    tls: bool
    url: str = field(repr=False)
    nodes: tuple[tuple[str, int], ...] = ()
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    service: str | None = None
    db: int = 0


def parse_redis_url(url: str) -> RedisTarget:
    """The :class:`RedisTarget` for ``url``; ``ValueError`` naming what is wrong."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ValueError(f"store URL {scheme}://…: not a Redis scheme")
    mode, tls = _SCHEMES[scheme]
    if mode == "single":
        user, password = _unquoted(parts.username), _unquoted(parts.password)
        return RedisTarget("single", tls, url, username=user, password=password)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if at else ("", "", "")
    nodes = tuple(_node(url, item) for item in hosts.split(","))
    if parts.query or parts.fragment:
        raise ValueError(f"store URL {scheme}://…: no query or fragment is allowed")
    segments = [s for s in parts.path.split("/") if s]
    service, db = None, 0
    if mode == "cluster":
        if segments not in ([], ["0"]):
            raise ValueError(
                f"store URL {scheme}://…: a cluster has only database 0; "
                f"end the URL with '/', got path {parts.path!r}"
            )
    else:
        if not 1 <= len(segments) <= 2 or not _SERVICE.fullmatch(segments[0]):
            raise ValueError(
                f"store URL {scheme}://…: expected {scheme}://host:port,…/<service>/<db>, "
                f"got path {parts.path!r}"
            )
        service = segments[0]
        if len(segments) == 2:
            if not segments[1].isdigit() or int(segments[1]) > 15_999:
                why = f"database {segments[1]!r} is not a number"
                raise ValueError(f"store URL {scheme}://…: {why}")
            db = int(segments[1])
    return RedisTarget(
        mode, tls, url, nodes,
        username=unquote(username) or None, password=unquote(password) or None,
        service=service, db=db,
    )  # fmt: skip


def _node(url: str, item: str) -> tuple[str, int]:
    match = _HOSTPORT.fullmatch(item)
    port = int(match["port"]) if match else 0
    if match is None or not 0 < port < 65536:
        scheme = urlsplit(url).scheme
        raise ValueError(f"store URL {scheme}://…: expected host:port, got {item!r}")
    return match["v6"] or match["host"], port


def _unquoted(value: str | None) -> str | None:
    return unquote(value) if value else None
