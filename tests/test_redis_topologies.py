"""Two real sidecar processes on each Redis topology: one Redis, a 3+3 Redis Cluster,
a primary + replica behind three Sentinels (with ``redis_min_replicas_ack: 1``), and TLS
with an ACL user. Plus what happens when Redis freezes or a replica does not acknowledge.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from sidecar.store.redis import RedisStore
from sidecar.store.redis_client import RedisOptions
from tests.redis_topologies import Node, Topology, _server, wait_for
from tests.sidecar_procs import Fleet, redeem, start_fleet

pytestmark = [pytest.mark.redis, pytest.mark.slow]

CONCURRENT = 500


@dataclass
class OnTopology:
    name: str
    url: str
    options: RedisOptions
    fleet: Fleet
    topology: Topology | None = None

    def store(self) -> RedisStore:
        return RedisStore(self.url, prefix=self.fleet.prefix, options=self.options)


@pytest.fixture(scope="module", params=["single", "cluster", "sentinel", "tls"])
def on(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OnTopology]:
    name = request.param
    topology: Topology | None = None
    if name == "single":
        url, options, prefix = request.getfixturevalue("redis_url"), RedisOptions(), "fleet"
    else:
        topology = request.getfixturevalue(f"redis_{name}")
        url, options, prefix = topology.url, topology.options, f"{topology.prefix}fleet"
        if name == "sentinel":  # the replica must hold every burn before it counts
            options = RedisOptions(min_replicas_ack=1)
    fleet = start_fleet(
        tmp_path_factory.mktemp(f"fleet-{name}"), url, options=options, prefix=prefix
    )
    try:
        yield OnTopology(name, url, options, fleet, topology)
    finally:
        fleet.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=CONCURRENT)
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        yield session


async def sessions_of(on: OnTopology, user: str) -> int:
    store = on.store()
    await store.open()
    try:
        return len(await store.list_user_sessions(user))
    finally:
        await store.close()


async def test_500_concurrent_redemptions_of_one_link_make_one_session(
    on: OnTopology, http: aiohttp.ClientSession
) -> None:
    user = f"carol-{on.name}"
    token = on.fleet.mint(user)
    a, b = on.fleet.sidecars
    results = await asyncio.gather(
        *(redeem(http, (a, b)[i % 2], token, within=30) for i in range(CONCURRENT))
    )
    statuses = sorted(status for status, _, _ in results)
    assert statuses.count(303) == 1, statuses[:5] + statuses[-5:]
    assert statuses.count(410) == CONCURRENT - 1
    assert sum(1 for _, _, cookie in results if cookie) == 1
    assert await sessions_of(on, user) == 1


@pytest.mark.parametrize("on", ["sentinel"], indirect=True)
async def test_an_unacknowledged_burn_is_a_503_and_redeems_nothing(
    on: OnTopology, http: aiohttp.ClientSession
) -> None:
    """``redis_min_replicas_ack: 1`` with the only replica frozen: WAIT times out (1 s)."""
    assert on.topology is not None
    replica = next(n for n in on.topology.nodes if "--replicaof" in n.args)
    user = "dave-unacked"
    token = on.fleet.mint(user)
    replica.signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        status, error, cookie = await redeem(http, on.fleet.sidecars[0], token)
        elapsed = time.monotonic() - started
    finally:
        replica.signal(signal.SIGCONT)
    assert (status, error, cookie) == (503, "burn_unconfirmed", False)
    assert 0.9 < elapsed < 5, elapsed  # WAIT's 1 s, not a hang
    assert await sessions_of(on, user) == 0
    # The burn is on the primary, so the link stays used up: the 503 page said it may.
    assert (await redeem(http, on.fleet.sidecars[1], token))[:2] == (410, "used")
    fresh = on.fleet.mint(user)
    status = 0
    deadline = time.monotonic() + 10
    while status != 303 and time.monotonic() < deadline:  # the replica catches up
        status = (await redeem(http, on.fleet.sidecars[0], fresh))[0]
        if status == 503:
            fresh = on.fleet.mint(user)
    assert status == 303


@pytest.fixture
def frozen_redis(tmp_path: Path) -> Iterator[Node]:
    node = _server(tmp_path, "freezable")
    node.start()
    try:
        wait_for("redis", lambda: node.cmd("PING"))
        yield node
    finally:
        node.stop()


async def test_a_frozen_redis_gives_an_honest_503(
    frozen_redis: Node, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """SIGSTOP: the burn times out (503 'burn_unconfirmed', no session). The write was
    already queued, so after SIGCONT it lands and the retry says "used" — which the 503
    page told the user might happen. Nothing was redeemed, and new links work again."""
    url = f"redis://127.0.0.1:{frozen_redis.port}/0"
    fleet = start_fleet(tmp_path, url, count=1)
    on = OnTopology("frozen", url, RedisOptions(), fleet)
    try:
        (sidecar,) = fleet.sidecars
        assert (await redeem(http, sidecar, fleet.mint("warm-up")))[0] == 303
        token = fleet.mint("erin")
        frozen_redis.signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            status, error, cookie = await redeem(http, sidecar, token)
            elapsed = time.monotonic() - started
        finally:
            frozen_redis.signal(signal.SIGCONT)
        assert (status, error, cookie) == (503, "burn_unconfirmed", False)
        assert elapsed < 5, elapsed  # the 2 s command timeout, not a hang
        wait_for("redis after SIGCONT", lambda: frozen_redis.cmd("PING"))
        assert await sessions_of(on, "erin") == 0
        assert (await redeem(http, sidecar, token))[:2] == (410, "used")
        assert await sessions_of(on, "erin") == 0
        assert (await redeem(http, sidecar, fleet.mint("erin")))[0] == 303
    finally:
        fleet.stop()
