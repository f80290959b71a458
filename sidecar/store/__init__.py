"""Storage: the :class:`Store` contract and its backends, picked by URL.

sqlite:///relative/path.db      SQLite file relative to the working directory (the config
                                anchors it to its own directory: :func:`anchor_sqlite_url`)
sqlite:////absolute/path.db     (SQLAlchemy's convention: four slashes = absolute)
redis://[user@]host:port/db, rediss://…, unix:///path/redis.sock?db=N
redis+cluster://h1:p1,h2:p2/, rediss+cluster://…     Redis Cluster
redis+sentinel://h1:p1,h2:p2/<service>/<db>, rediss+sentinel://…   primary via Sentinel
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote, urlsplit

from sidecar.store.base import (
    BurnResult,
    PendingLink,
    SessionRecord,
    Store,
    StoreError,
    StoreUnavailable,
    TokenRecord,
    TokenState,
    TokenUse,
    User,
    UserExists,
)
from sidecar.store.redis_url import REDIS_SCHEMES, parse_redis_url

if TYPE_CHECKING:
    from sidecar.store.redis import RedisStore
    from sidecar.store.redis_client import RedisOptions
    from sidecar.store.sqlite import SQLiteStore

__all__ = [
    "BurnResult",
    "PendingLink",
    "RedisStore",
    "SQLiteStore",
    "SessionRecord",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "TokenRecord",
    "TokenState",
    "TokenUse",
    "User",
    "UserExists",
    "anchor_sqlite_url",
    "check_store_url",
    "open_store",
]


def open_store(
    url: str,
    *,
    prefix: str = "sidecar:",
    purge_interval: float = 60.0,
    redis: RedisOptions | None = None,
) -> Store:
    """Build the backend for ``url``; the caller then awaits ``open()`` and ``close()``.

    ``prefix`` namespaces Redis keys; ``redis`` carries the password, TLS files and
    ``WAIT`` setting a URL does not; ``purge_interval`` is how often SQLite deletes
    expired rows (Redis expires keys itself). Raises ``ValueError`` for a URL that names
    no backend.
    """
    # Backends are imported on demand: redis-py alone costs ~7 MiB of RSS on SQLite setups.
    if check_store_url(url) == "sqlite":
        from sidecar.store.sqlite import SQLiteStore

        return SQLiteStore(_sqlite_path(url), purge_interval=purge_interval)
    from sidecar.store.redis import RedisStore

    return RedisStore(url, prefix=prefix, options=redis)


def __getattr__(name: str) -> object:
    if name == "RedisStore":
        from sidecar.store.redis import RedisStore

        return RedisStore
    if name == "SQLiteStore":
        from sidecar.store.sqlite import SQLiteStore

        return SQLiteStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_store_url(url: str) -> str:
    """The backend ``url`` names (``"sqlite"`` or ``"redis"``); ``ValueError`` if none."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        _sqlite_path(url)
        return "sqlite"
    if scheme in REDIS_SCHEMES:
        parse_redis_url(url)
        return "redis"
    shown = f"{scheme}://…" if scheme else repr(url)
    raise ValueError(
        f"store URL {shown}: unknown scheme; use sqlite:///relative.db, "
        "sqlite:////absolute.db, redis://host:port/db, rediss://…, unix:///path.sock, "
        "redis+cluster://h1:p1,h2:p2/ or redis+sentinel://h1:p1,h2:p2/<service>/<db>"
    )


_EPHEMERAL_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run")  # noqa: S108  # we warn about them


def durability_warnings(url: str) -> list[str]:
    """Why the store at ``url`` may not keep burns and revocations across a restart.

    A SQLite file in a temporary directory (inside a container: on its writable layer or a
    tmpfs) is lost with the process's container; a restart then re-opens every link already
    used. Nothing here can prove a path is on a persistent volume, so this only names the
    cases that certainly are not.
    """
    if check_store_url(url) != "sqlite":
        return []
    path = Path(_sqlite_path(url)).resolve()
    warnings = []
    temporary = {Path(d).resolve() for d in (*_EPHEMERAL_DIRS, tempfile.gettempdir())}
    if any(path.is_relative_to(d) for d in temporary):
        warnings.append(
            f"store.url: {path} is in a temporary directory; burned and revoked links "
            "re-open when it is lost (put the database on a persistent volume)"
        )
    if not path.parent.is_dir():
        warnings.append(f"store.url: the directory {path.parent} does not exist")
    elif not os.access(path.parent, os.W_OK):
        warnings.append(f"store.url: the directory {path.parent} is not writable by this user")
    return warnings


def anchor_sqlite_url(url: str, base_dir: str | os.PathLike[str]) -> str:
    """``url`` with a relative SQLite path made absolute under ``base_dir``; any other URL
    (absolute SQLite, Redis) unchanged. ``ValueError`` as :func:`check_store_url`."""
    if check_store_url(url) != "sqlite":
        return url
    path = _sqlite_path(url)
    if os.path.isabs(path):
        return url
    return "sqlite:///" + quote(os.path.join(os.path.abspath(base_dir), path))


def _sqlite_path(url: str) -> str:
    parts = urlsplit(url)
    if parts.netloc or not parts.path.startswith("/") or parts.query or parts.fragment:
        raise ValueError(
            f"store URL {url!r}: a SQLite URL is sqlite:///relative.db or sqlite:////absolute.db"
        )
    path = unquote(parts.path[1:])
    if path in ("", ":memory:"):
        raise ValueError(f"store URL {url!r}: SQLite needs a file path (WAL, two connections)")
    return path
