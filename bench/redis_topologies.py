"""The Redis store on each topology, side by side: what a cluster or WAIT costs.

Rows (each on loopback, servers started here, one store client in this process):

- ``single``: one redis-server;
- ``cluster 3+3``: three primaries with a replica each (``redis-cli --cluster create``);
- ``sentinel, ack 0``: a primary and a replica behind three Sentinels;
- ``sentinel, WAIT 1``: the same with ``redis_min_replicas_ack: 1`` (burns wait for the
  replica).

Each trial measures every row in turn (a busy machine slows them alike). Columns:
**redemptions/s** — what the store does for one one-time link (``burn`` then
``create_session``: the session index and the session, three round trips) with
``--concurrency`` redeemers; **session lookups/s** — ``get_session`` of random existing
sessions with the same concurrency, which is what every proxied request costs on a cache
miss; and the CPU each costs, in this process (the sidecar's side of the store) and in
the Redis data nodes together (replication included). CPU per operation holds still on a
busy machine where the rates do not. Medians of ``--trials`` runs of ``--seconds`` each.

``python -m bench.redis_topologies`` (about a minute) prints the table and writes
``bench/results/redis_topologies.json``; ``--smoke`` runs half a second per figure. The
topologies are the test suite's (``tests/redis_topologies.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.machine import describe
from bench.procs import cpu_seconds
from sidecar.store.base import SessionRecord
from sidecar.store.redis import RedisStore
from sidecar.store.redis_client import RedisOptions
from tests.redis_topologies import (
    Node,
    Topology,
    _server,
    start_cluster,
    start_sentinel,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent
JSON = ROOT / "bench" / "results" / "redis_topologies.json"
HOUR = 3600.0


@dataclass(frozen=True)
class Row:
    name: str
    redemptions_per_s: float
    lookups_per_s: float
    # CPU per operation: this process (the sidecar's side) and the Redis data nodes.
    redeem_client_us: float
    redeem_redis_us: float
    lookup_client_us: float
    lookup_redis_us: float


@dataclass(frozen=True)
class Sample:
    per_s: float
    client_us: float
    redis_us: float


async def _sampled(run: Awaitable[tuple[int, float]], pids: Sequence[int]) -> Sample:
    cpu, redis_cpu = time.process_time(), sum(cpu_seconds(p) for p in pids)
    count, elapsed = await run
    client = time.process_time() - cpu
    redis = sum(cpu_seconds(p) for p in pids) - redis_cpu
    return Sample(count / elapsed, client / count * 1e6, redis / count * 1e6)


def _session(key: str, now: float) -> SessionRecord:
    return SessionRecord(
        key=key, user_id=f"user-{key[:4]}", role="Authenticated", params={"tenant": "t"},
        created_at=now, expires_at=now + HOUR, idle_timeout=1800.0, last_seen=now,
        token_id=key, email=None,
    )  # fmt: skip


async def redemptions(store: RedisStore, concurrency: int, seconds: float) -> tuple[int, float]:
    run = uuid.uuid4().hex[:8]
    count = 0
    started = time.perf_counter()
    stop = started + seconds

    async def redeemer(worker: int) -> None:
        nonlocal count
        i = 0
        while time.perf_counter() < stop:
            key = f"{run}{worker:04d}{i}"
            now = time.time()
            await store.burn(key, now + HOUR)
            await store.create_session(_session(key, now))
            i += 1
        count += i

    await asyncio.gather(*(redeemer(w) for w in range(concurrency)))
    return count, time.perf_counter() - started


async def lookups(
    store: RedisStore, keys: list[str], concurrency: int, seconds: float
) -> tuple[int, float]:
    count = 0
    started = time.perf_counter()
    stop = started + seconds

    async def reader() -> None:
        nonlocal count
        i = 0
        while time.perf_counter() < stop:
            if await store.get_session(random.choice(keys)) is None:
                raise RuntimeError("a session written by the benchmark is missing")
            i += 1
        count += i

    await asyncio.gather(*(reader() for _ in range(concurrency)))
    return count, time.perf_counter() - started


async def _prepared(url: str, options: RedisOptions) -> tuple[RedisStore, list[str]]:
    store = RedisStore(url, prefix=f"bench-{uuid.uuid4().hex[:8]}:", options=options)
    await store.open()
    keys = [uuid.uuid4().hex for _ in range(1000)]
    now = time.time()
    await asyncio.gather(*(store.create_session(_session(k, now)) for k in keys))
    return store, keys


async def measure(targets: dict[str, Target], args: argparse.Namespace) -> list[Row]:
    """Every target once per trial, in turn, so a busy machine slows them alike."""
    prepared = {name: await _prepared(t.url, t.options) for name, t in targets.items()}
    redeems: dict[str, list[Sample]] = {name: [] for name in targets}
    reads: dict[str, list[Sample]] = {name: [] for name in targets}
    try:
        for store, _ in prepared.values():  # connections and the script cache
            await redemptions(store, args.concurrency, 0.3)
        for trial in range(args.trials):
            for name, (store, keys) in prepared.items():
                pids = targets[name].pids
                r = await _sampled(redemptions(store, args.concurrency, args.seconds), pids)
                q = await _sampled(lookups(store, keys, args.concurrency, args.seconds), pids)
                redeems[name].append(r)
                reads[name].append(q)
                print(
                    f"  trial {trial + 1} {name}: {r.per_s:,.0f} redemptions/s "
                    f"({r.client_us:,.0f} + {r.redis_us:,.0f} µs CPU), {q.per_s:,.0f} reads/s "
                    f"({q.client_us:,.0f} + {q.redis_us:,.0f} µs CPU)"
                )
    finally:
        for store, _ in prepared.values():
            await store.close()

    def median(samples: list[Sample], field: str) -> float:
        return float(statistics.median(float(getattr(s, field)) for s in samples))

    return [
        Row(
            name,
            median(redeems[name], "per_s"),
            median(reads[name], "per_s"),
            median(redeems[name], "client_us"),
            median(redeems[name], "redis_us"),
            median(reads[name], "client_us"),
            median(reads[name], "redis_us"),
        )
        for name in targets
    ]


@dataclass(frozen=True)
class Target:
    url: str
    options: RedisOptions
    pids: list[int]  # the data nodes whose CPU a row counts


def _pids(nodes: Iterable[Node]) -> list[int]:
    return [n.proc.pid for n in nodes if n.proc is not None and "--sentinel" not in n.args]


async def run(args: argparse.Namespace, directory: Path) -> list[Row]:
    single = _server(directory, "single")
    single.start()
    topologies: list[Topology] = []
    try:
        wait_for("redis", lambda: single.cmd("PING"))
        (directory / "cluster").mkdir()
        topologies.append(start_cluster(directory / "cluster"))
        (directory / "sentinel").mkdir()
        topologies.append(start_sentinel(directory / "sentinel"))
        cluster, sentinel = topologies
        targets = {
            "single": Target(f"redis://127.0.0.1:{single.port}/0", RedisOptions(), _pids([single])),
            "cluster 3+3": Target(cluster.url, RedisOptions(), _pids(cluster.nodes)),
            "sentinel, ack 0": Target(sentinel.url, RedisOptions(), _pids(sentinel.nodes)),
            "sentinel, WAIT 1": Target(
                sentinel.url, RedisOptions(min_replicas_ack=1), _pids(sentinel.nodes)
            ),
        }
        return await measure(targets, args)
    finally:
        single.stop()
        for topology in topologies:
            topology.stop()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.redis_topologies", description=__doc__)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--smoke", action="store_true", help="one half-second trial per figure")
    p.add_argument("--json", type=Path, default=JSON)
    args = p.parse_args()
    if args.smoke:
        args.seconds, args.trials = 0.5, 1
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        rows = asyncio.run(run(args, Path(tmp)))
    width = max(len(r.name) for r in rows)
    print(
        f"\n{'topology':<{width}}  redemptions/s  CPU µs (client + Redis)  "
        "session lookups/s  CPU µs (client + Redis)"
    )
    for r in rows:
        print(
            f"{r.name:<{width}}  {r.redemptions_per_s:>13,.0f}  "
            f"{r.redeem_client_us:>10,.0f} + {r.redeem_redis_us:<10,.0f}  "
            f"{r.lookups_per_s:>17,.0f}  {r.lookup_client_us:>10,.0f} + {r.lookup_redis_us:<10,.0f}"
        )
    meta = {**describe(), "seconds": args.seconds, "trials": args.trials,
            "concurrency": args.concurrency}  # fmt: skip
    doc = {"meta": meta, "rows": [asdict(r) for r in rows]}
    args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
