"""Burns per second of each store backend, and lookup latency with a million burned rows.

    .venv/bin/python -m bench.store_burns [--seconds 3] [--concurrency 256]
        [--dir DIR] [--redis-url URL] [--rows 1000000]

SQLite files go to ``--dir`` (default: a temp dir; it must be on a real disk, not tmpfs,
or fsync is free). Without ``--redis-url`` a private redis-server is started.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bench.servers import Redis, start_redis
from sidecar.store import RedisStore, SQLiteStore, Store

HOUR = 3600.0


async def burns_per_second(store: Store, concurrency: int, seconds: float) -> float:
    run = uuid.uuid4().hex[:8]
    count = 0
    started = time.perf_counter()
    stop = started + seconds

    async def burner(worker: int) -> None:
        nonlocal count
        i = 0
        while time.perf_counter() < stop:
            await store.burn(f"{run}-{worker}-{i}", time.time() + HOUR)
            i += 1
        count += i

    await asyncio.gather(*(burner(w) for w in range(concurrency)))
    return count / (time.perf_counter() - started)


async def lookup_latency_us(
    store: Store, ids: list[str], samples: int = 2000
) -> tuple[float, float]:
    """p50 and p99 of ``token_state`` for random ids, in microseconds (after a warm-up)."""
    for token_id in random.choices(ids, k=samples):
        await store.token_state(token_id)
    timings = []
    for token_id in random.choices(ids, k=samples):
        started = time.perf_counter()
        await store.token_state(token_id)
        timings.append((time.perf_counter() - started) * 1e6)
    quantiles = statistics.quantiles(timings, n=100)
    return quantiles[49], quantiles[98]


def prefill(path: Path, rows: int) -> list[str]:
    """Insert ``rows`` burned tokens directly, much faster than through the store."""
    ids = [uuid.uuid4().hex for _ in range(rows)]
    db = sqlite3.connect(path)
    try:
        with db:
            db.executemany(
                "INSERT INTO tokens (id, state, expires_at) VALUES (?, 'used', ?)",
                ((i, time.time() + HOUR) for i in ids),
            )
    finally:
        db.close()
    return ids


async def main(args: argparse.Namespace) -> None:
    directory = Path(tempfile.mkdtemp(prefix="store-bench-", dir=args.dir))
    rows: list[tuple[str, str]] = []
    redis_server: Redis | None = None
    try:
        sqlite = SQLiteStore(str(directory / "burns.db"))
        await sqlite.open()
        try:
            seq = await burns_per_second(sqlite, 1, args.seconds)
            rows.append(("SQLite, fsync per burn (1 burner)", f"{seq:,.0f} burns/s"))
            group = await burns_per_second(sqlite, args.concurrency, args.seconds)
            rows.append(
                (f"SQLite, group commit ({args.concurrency} burners)", f"{group:,.0f} burns/s")
            )
        finally:
            await sqlite.close()

        url = args.redis_url
        if url is None:
            redis_server = start_redis(directory, cores=None)
            if redis_server is None:
                raise SystemExit("redis-server is not installed; pass --redis-url")
            url = redis_server.url
        redis = RedisStore(url, prefix=f"bench-{uuid.uuid4().hex[:8]}:")
        await redis.open()
        try:
            seq = await burns_per_second(redis, 1, args.seconds)
            rows.append(("Redis (1 burner)", f"{seq:,.0f} burns/s"))
            many = await burns_per_second(redis, args.concurrency, args.seconds)
            rows.append((f"Redis ({args.concurrency} burners)", f"{many:,.0f} burns/s"))
        finally:
            await redis.close()

        if args.rows:
            path = directory / "lookups.db"
            store = SQLiteStore(str(path))
            await store.open()
            await store.close()
            small = prefill(path, 1000)
            await store.open()
            p50, p99 = await lookup_latency_us(store, small)
            await store.close()
            rows.append(("SQLite token_state, 1,000 rows", f"p50 {p50:.0f} µs, p99 {p99:.0f} µs"))
            big = small + prefill(path, args.rows)
            await store.open()
            try:
                p50, p99 = await lookup_latency_us(store, big)
                rows.append(
                    (
                        f"SQLite token_state, {len(big):,} rows",
                        f"p50 {p50:.0f} µs, p99 {p99:.0f} µs",
                    )
                )
                group = await burns_per_second(store, args.concurrency, args.seconds)
                rows.append((f"SQLite group commit, {len(big):,} rows", f"{group:,.0f} burns/s"))
            finally:
                await store.close()
    finally:
        if redis_server is not None:
            redis_server.child.stop()
        shutil.rmtree(directory, ignore_errors=True)

    width = max(len(name) for name, _ in rows)
    print(f"{'backend':<{width}}  result ({args.seconds:g} s per burn run)")
    for name, result in rows:
        print(f"{name:<{width}}  {result}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--dir", default=None, help="where SQLite files go (a real disk)")
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--rows", type=int, default=1_000_000, help="0 skips the lookup test")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
