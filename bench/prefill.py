"""Fill a SQLite store with already-burned tokens, fast (seconds for a million).

The schema comes from the store itself (``SQLiteStore.open()`` creates it); the rows go in
with ``executemany`` in one transaction, sorted by id so the B-tree is appended to, not split
at random. Their expiry is a day away, so the store's purge leaves them alone.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sqlite3
import time
from pathlib import Path

from sidecar.store.sqlite import SQLiteStore

BATCH = 100_000


async def _create_schema(path: Path) -> None:
    store = SQLiteStore(str(path))
    await store.open()
    await store.close()


def _ids(count: int) -> list[str]:
    # The same shape as sidecar.tokens.codec.new_token_id(): 16 random bytes, base64url.
    raw = os.urandom(16 * count)
    return sorted(
        base64.urlsafe_b64encode(raw[i : i + 16]).rstrip(b"=").decode()
        for i in range(0, len(raw), 16)
    )


def prefill_burned(path: Path, count: int) -> float:
    """Create the store at ``path`` with ``count`` used tokens; returns the seconds it took."""
    start = time.monotonic()
    asyncio.run(_create_schema(path))
    expires = time.time() + 86400
    ids = _ids(count)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN")
        for i in range(0, count, BATCH):
            conn.executemany(
                "INSERT INTO tokens (id, state, expires_at) VALUES (?, 'used', ?)",
                ((token_id, expires) for token_id in ids[i : i + BATCH]),
            )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return time.monotonic() - start
