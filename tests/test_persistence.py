"""``Store.persistence()``: does the backend keep burns and revocations across its restart?

Real servers: a Redis with neither an append-only file nor RDB saves (the test fixture's
default) is not durable; one with ``appendonly yes`` is; an ACL user without ``CONFIG``
gets "unknown"; SQLite is durable by construction.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

import pytest
from redis.asyncio import Redis

from sidecar.store import open_store
from sidecar.store.base import Persistence, Store
from sidecar.store.persistence import PersistenceWatch
from tests.conftest import RedisServer
from tests.serve_process import running_serve, write_config


async def _persistence(store: Store) -> Persistence:
    await store.open()
    try:
        return await store.persistence()
    finally:
        await store.close()


async def test_sqlite_is_durable(tmp_path: Path) -> None:
    found = await _persistence(open_store(f"sqlite:///{tmp_path}/s.db"))
    assert found.durable is True


@pytest.mark.redis
async def test_a_redis_that_saves_nothing_is_not_durable(redis_server: RedisServer) -> None:
    found = await _persistence(open_store(redis_server.url))
    assert found.durable is False
    assert "appendonly no and no RDB saves" in found.detail


@pytest.mark.redis
async def test_a_redis_with_an_append_only_file_is_durable(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, appendonly=True)
    server.start()
    try:
        found = await _persistence(open_store(server.url))
    finally:
        server.stop()
    assert found.durable is True
    assert found.detail == "Redis persists with appendonly"


@pytest.mark.redis
async def test_an_acl_user_without_config_rights_gets_unknown(redis_server: RedisServer) -> None:
    raw = Redis(unix_socket_path=str(redis_server.socket))
    try:
        await raw.acl_setuser(
            "sidecar",
            enabled=True,
            passwords=["+pw-for-tests"],
            keys=["sidecar:*"],
            commands=["+@all", "-config"],
        )
    finally:
        await raw.aclose()
    limited = f"unix://sidecar:pw-for-tests@{redis_server.socket}"
    found = await _persistence(open_store(limited))
    assert found.durable is None
    assert "cannot read the Redis configuration" in found.detail


@pytest.mark.redis
async def test_the_watch_logs_once_per_change_and_rechecks_after_its_interval(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.store")
    now = [0.0]
    store = open_store(redis_server.url)
    await store.open()
    raw = Redis(unix_socket_path=str(redis_server.socket))
    try:
        watch = PersistenceWatch(store, every=30.0, clock=lambda: now[0])
        assert (await watch.current()).durable is False
        assert (await watch.current()).durable is False
        await raw.config_set("appendonly", "yes")
        now[0] = 29.0
        assert (await watch.current()).durable is False, "cached for 30 s"
        now[0] = 30.0
        assert (await watch.current()).durable is True
    finally:
        # Back off, or the shared server's shutdown waits for the AOF rewrite it started.
        await raw.config_set("appendonly", "no")
        await raw.aclose()
        await store.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "sidecar.store"]
    assert len(messages) == 2, messages
    assert messages[0].startswith("store not persistent: Redis has appendonly no")
    assert messages[1] == "store persistence: Redis persists with appendonly"


@pytest.mark.redis
@pytest.mark.parametrize("required", [False, True])
async def test_serve_warns_or_refuses_a_redis_that_persists_nothing(
    tmp_path: Path, redis_server: RedisServer, required: bool
) -> None:
    env = {**os.environ, "SIDECAR_STORE__URL": redis_server.url}
    if required:
        env["SIDECAR_STORE__REQUIRE_PERSISTENCE"] = "true"
        config, *_ = write_config(tmp_path, "http://127.0.0.1:9")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sidecar", "serve", "--config", str(config),
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        async with asyncio.timeout(60):
            out, _ = await proc.communicate()
        assert proc.returncode == 1
        assert "store.require_persistence: Redis has appendonly no" in out.decode()
        return
    async with running_serve(tmp_path, "http://127.0.0.1:9", env=env) as served:
        served.proc.send_signal(signal.SIGTERM)
        await served.proc.wait()
    warnings = [json.loads(x) for x in served.logs() if "not persistent" in x]
    assert len(warnings) == 1
    assert warnings[0]["level"] == "warning"
