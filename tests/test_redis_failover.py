"""Failover under load: two sidecar processes redeem links through Sentinel while the
primary is SIGKILLed and a replica is promoted.

Just before the kill the replicas fall behind (frozen with SIGSTOP and cut off by
``CLIENT KILL TYPE replica`` for 0.6 s), as a replica on a slow link would. With
``redis_min_replicas_ack: 1`` nothing is acknowledged in that window (503s) and every
redemption answered 303 before the kill is still refused after it. With 0, the burns
acknowledged in the window existed on the dead primary only: the test counts them as
lost and prints the figures (seconds to the first 303 after the kill, burns lost).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from redis.crc import key_slot
from redis.exceptions import RedisError

from sidecar.store.redis_client import RedisOptions
from tests.redis_topologies import (
    SERVICE,
    Node,
    Topology,
    cluster_primary_for,
    sentinel_primary,
    start_cluster,
    start_sentinel,
    wait_for,
)
from tests.sidecar_procs import Fleet, redeem, start_fleet

pytestmark = [pytest.mark.redis, pytest.mark.slow]

WORKERS = 16
ACKED_BEFORE_KILL = 100  # redemptions answered 303 before the primary dies
AFTER_RECOVERY = 20  # and after the first 303 that follows the kill
DEADLINE = 40.0


@dataclass
class Load:
    """Redemptions of fresh links, each (token, status, sent, answered) in monotonic time."""

    fleet: Fleet
    http: aiohttp.ClientSession
    results: list[tuple[str, int, float, float]] = field(default_factory=list)
    ids: dict[str, str] = field(default_factory=dict)  # token -> token id
    killed_at: float | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def worker(self, n: int) -> None:
        sidecars = self.fleet.sidecars
        i = 0
        while not self.stop.is_set():
            token, token_id = self.fleet.mint_with_id(f"load-{n}-{i}")
            self.ids[token] = token_id
            sent = time.monotonic()
            try:
                status = (await redeem(self.http, sidecars[(n + i) % len(sidecars)], token, 5))[0]
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            self.results.append((token, status, sent, time.monotonic()))
            i += 1

    def acked(self, before: float) -> list[str]:
        return [t for t, s, _, done in self.results if s == 303 and done < before]

    def first_303_after_kill(self, where: Callable[[str], bool] = lambda _: True) -> float | None:
        """When the first redemption sent after the kill (of a token ``where`` accepts)
        was answered 303."""
        assert self.killed_at is not None
        done = [
            d for t, s, sent, d in self.results if s == 303 and sent > self.killed_at and where(t)
        ]
        return min(done) if done else None


async def until(what: str, check: Callable[[], bool], deadline: float) -> None:
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


def _promoted(topology: Topology, old: Node) -> bool:
    new = sentinel_primary(topology)
    if new is old:
        return False
    return int(new.cmd("INFO", "replication")["connected_slaves"]) >= 1


@pytest.mark.parametrize("ack", [1, 0])
async def test_sentinel_failover_keeps_acknowledged_burns(
    ack: int, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    (tmp_path / "redis").mkdir()
    topology = start_sentinel(tmp_path / "redis", replicas=2)
    fleet: Fleet | None = None
    try:
        options = RedisOptions(min_replicas_ack=ack)
        fleet = start_fleet(tmp_path, topology.url, options=options, prefix="failover")
        load = Load(fleet, http)
        deadline = time.monotonic() + DEADLINE
        workers = [asyncio.create_task(load.worker(n)) for n in range(WORKERS)]
        try:
            enough = ACKED_BEFORE_KILL
            await until("redemptions", lambda: len(load.acked(1e18)) >= enough, deadline)
            old = sentinel_primary(topology)
            # The replicas fall behind: frozen, and cut off by the primary, so what the
            # primary acknowledges from now on exists nowhere else when it dies.
            replicas = [n for n in topology.nodes if "--replicaof" in n.args]
            for replica in replicas:
                replica.signal(signal.SIGSTOP)
            old.cmd("CLIENT", "KILL", "TYPE", "replica")
            cut = time.monotonic()
            lag_end = cut + 0.6
            await until("the lag", lambda: time.monotonic() > lag_end, deadline)
            acked_in_lag = len([r for r in load.results if r[1] == 303 and r[2] > cut])
            old.kill()
            load.killed_at = time.monotonic()
            for replica in replicas:
                replica.signal(signal.SIGCONT)
            await until("a 303", lambda: load.first_303_after_kill() is not None, deadline)
            recovered = load.first_303_after_kill()
            assert recovered is not None
            later = recovered

            def enough_after() -> bool:
                done = [r for r in load.results if r[1] == 303 and r[2] > later]
                return len(done) >= AFTER_RECOVERY

            await until("redemptions after recovery", enough_after, deadline)
        finally:
            load.stop.set()
            await asyncio.gather(*workers)
        wait_for(f"{SERVICE}: a promoted primary with a replica", lambda: _promoted(topology, old))
        before = load.acked(load.killed_at)
        after = [t for t, s, sent, _ in load.results if s == 303 and sent > load.killed_at]
        replays = await asyncio.gather(
            *(redeem(http, fleet.sidecars[0], t) for t in before + after)
        )
        lost_before = sum(1 for status, _, _ in replays[: len(before)] if status == 303)
        lost_after = sum(1 for status, _, _ in replays[len(before) :] if status == 303)
        unavailable = sum(1 for _, s, sent, _ in load.results if s == 503 and sent > load.killed_at)
        seconds = recovered - load.killed_at
        print(
            f"\nfailover ack={ack}: {len(before)} acknowledged before the kill "
            f"({acked_in_lag} while the replicas lagged), {lost_before} lost; first 303 "
            f"{seconds:.2f} s after SIGKILL; {unavailable} 503s meanwhile; "
            f"{len(after)} redeemed after, {lost_after} lost"
        )
        assert all(status in (303, 410) for status, _, _ in replays)
        assert lost_after == 0
        if ack:
            assert acked_in_lag == 0  # WAIT 1 cannot succeed without a replica: 503s
            assert lost_before == 0
        else:  # what asynchronous replication costs: every burn inside the lag is gone
            assert acked_in_lag > 0
            assert lost_before >= acked_in_lag - WORKERS  # those still in flight at the cut
        assert recovered - load.killed_at < 20
    finally:
        if fleet is not None:
            fleet.stop()
        topology.stop()


async def test_cluster_failover_keeps_acknowledged_burns(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A 3+3 cluster with ``redis_min_replicas_ack: 1``: SIGKILL one primary; its replica
    takes over (cluster-node-timeout 1 s); the killed node comes back empty, as a restarted
    pod would, and rejoins as the new primary's replica — only after the promotion: an
    empty primary back before it would wipe its shard (run Redis with persistence)."""
    (tmp_path / "redis").mkdir()
    topology = start_cluster(tmp_path / "redis")
    fleet: Fleet | None = None
    try:
        options = RedisOptions(min_replicas_ack=1)
        fleet = start_fleet(tmp_path, topology.url, options=options, prefix="cfailover")
        prefix = fleet.prefix
        victim = cluster_primary_for(topology, f"{prefix}tok:probe")
        slots = _slots_of(victim)

        def in_shard(token: str) -> bool:
            return key_slot(f"{prefix}tok:{load.ids[token]}".encode()) in slots

        load = Load(fleet, http)
        deadline = time.monotonic() + DEADLINE
        workers = [asyncio.create_task(load.worker(n)) for n in range(WORKERS)]
        try:
            enough = ACKED_BEFORE_KILL
            await until("redemptions", lambda: len(load.acked(1e18)) >= enough, deadline)
            victim.kill()
            load.killed_at = time.monotonic()
            await until(
                "a promoted replica",
                lambda: _promoted_in_cluster(topology, victim, slots),
                deadline,
            )
            promoted_after = time.monotonic() - load.killed_at
            victim.start()  # back empty; it must become a replica, never a primary again
            await until(
                "the old primary as a replica", lambda: _is_synced_replica(victim), deadline
            )
            await until(
                "a 303 in the failed shard",
                lambda: load.first_303_after_kill(in_shard) is not None,
                deadline,
            )
            recovered = load.first_303_after_kill(in_shard)
            assert recovered is not None
        finally:
            load.stop.set()
            await asyncio.gather(*workers)
        before = load.acked(load.killed_at)
        after = [t for t, s, sent, _ in load.results if s == 303 and sent > load.killed_at]
        replays = await asyncio.gather(
            *(redeem(http, fleet.sidecars[1], t) for t in before + after)
        )
        lost = sum(1 for status, _, _ in replays if status == 303)
        print(
            f"\ncluster failover ack=1: {len(before)} acknowledged before the kill "
            f"({sum(1 for t in before if in_shard(t))} in the failed shard), {lost} lost; "
            f"replica promoted {promoted_after:.2f} s after SIGKILL; first 303 in that shard "
            f"{recovered - load.killed_at:.2f} s after; {len(after)} redeemed after"
        )
        assert all(status in (303, 410) for status, _, _ in replays)
        assert lost == 0
    finally:
        if fleet is not None:
            fleet.stop()
        topology.stop()


def _slots_of(primary: Node) -> set[int]:
    slots: set[int] = set()
    for start, end, owner, *_ in primary.cmd("CLUSTER", "SLOTS"):
        if int(owner[1]) == primary.port:
            slots.update(range(int(start), int(end) + 1))
    return slots


def _promoted_in_cluster(topology: Topology, victim: Node, slots: set[int]) -> bool:
    live = next(n for n in topology.nodes if n is not victim and n.proc is not None)
    probe = min(slots)
    try:
        for start, end, owner, *_ in live.cmd("CLUSTER", "SLOTS"):
            if int(start) <= probe <= int(end):
                return int(owner[1]) != victim.port
    except (RedisError, OSError):
        return False
    return False


def _is_synced_replica(node: Node) -> bool:
    try:
        info = node.cmd("INFO", "replication")
    except (RedisError, OSError):
        return False
    return bool(info["role"] == "slave" and info.get("master_link_status") == "up")
