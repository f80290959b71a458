"""TLS and ACL against a real TLS-only redis-server (throwaway CA, client certificates
required) with an ACL user limited to the sidecar's key prefix: what the store refuses."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import time
import warnings
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError

from sidecar.store.base import BurnResult, StoreUnavailable
from sidecar.store.redis import RedisStore
from tests.redis_topologies import (
    ACL_PASSWORD,
    ACL_PREFIX,
    Topology,
    make_pki,
    pki_of,
    start_cluster,
    start_sentinel,
)

pytestmark = pytest.mark.redis


async def _burns(topology: Topology, **changes: object) -> BurnResult:
    options = dataclasses.replace(topology.options, **changes)  # type: ignore[arg-type]
    store = RedisStore(topology.url, prefix=f"{ACL_PREFIX}tls-test:", options=options)
    await store.open()
    try:
        return await store.burn(f"t-{time.monotonic_ns()}", time.time() + 60)
    finally:
        await store.close()


async def test_the_configured_ca_and_client_certificate_connect(redis_tls: Topology) -> None:
    assert await _burns(redis_tls) is BurnResult.BURNED


@pytest.mark.parametrize(
    "change",
    ["an unrelated CA", "no client certificate", "a wrong password", "no password"],
)
async def test_what_the_server_refuses_is_a_store_failure(redis_tls: Topology, change: str) -> None:
    pki = pki_of(redis_tls)
    changes: dict[str, object] = {
        "an unrelated CA": {"tls_ca_file": str(pki.other_ca)},
        "no client certificate": {"tls_cert_file": None, "tls_key_file": None},
        "a wrong password": {"password": ACL_PASSWORD + "x"},
        "no password": {"password": None},
    }[change]  # type: ignore[assignment]
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await _burns(redis_tls, **changes)
    assert time.monotonic() - started < 5
    # redis-py (8.1) sometimes drops a refused TLS connection without closing its socket;
    # the store closed everything it holds. Collect it here, not in an unrelated test.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


async def test_the_acl_user_reaches_only_its_prefix(redis_tls: Topology) -> None:
    pki = pki_of(redis_tls)
    port = int(redis_tls.url.rsplit(":", 1)[1].split("/")[0])
    user = Redis(
        host="127.0.0.1", port=port, username="sidecar", password=ACL_PASSWORD, ssl=True,
        ssl_ca_certs=str(pki.ca), ssl_certfile=str(pki.client_cert),
        ssl_keyfile=str(pki.client_key), decode_responses=True,
    )  # fmt: skip
    try:
        assert await user.set(f"{ACL_PREFIX}mine", "1")
        with pytest.raises(NoPermissionError):
            await user.set("someone-else:key", "1")
        with pytest.raises(NoPermissionError):
            await user.flushall()
    finally:
        await user.aclose()
    outside = RedisStore(redis_tls.url, prefix="other-app:", options=redis_tls.options)
    await outside.open()
    try:
        with pytest.raises(StoreUnavailable):
            await outside.burn("t", time.time() + 60)
    finally:
        await outside.close()


@pytest.mark.parametrize("kind", ["cluster", "sentinel"])
async def test_tls_cluster_and_sentinel(tmp_path: Path, kind: str) -> None:
    """rediss+cluster:// and rediss+sentinel:// — TLS to every node and Sentinel (the
    shared TLS context is swapped into each client's own connection class); one burn wins
    among 300, and 300 ids burn once each."""
    (tmp_path / "pki").mkdir()
    (tmp_path / "nodes").mkdir()
    pki = make_pki(tmp_path / "pki")
    if kind == "cluster":
        topology = start_cluster(tmp_path / "nodes", replicas=0, pki=pki)
    else:
        topology = start_sentinel(tmp_path / "nodes", pki=pki)
    assert topology.url.startswith("rediss+")
    store = RedisStore(topology.url, prefix="tls-cluster:", options=topology.options)
    await store.open()
    try:
        expires = time.time() + 60
        results = await asyncio.gather(*(store.burn("hot", expires) for _ in range(300)))
        assert results.count(BurnResult.BURNED) == 1
        many = await asyncio.gather(*(store.burn(f"id-{i}", expires) for i in range(300)))
        assert many == [BurnResult.BURNED] * 300
    finally:
        await store.close()
        topology.stop()
