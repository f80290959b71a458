"""Two real ``sidecar serve`` processes sharing one real Redis, as two pods of a Deployment.

The processes own their clocks, so the one wait here is the bounded one the product
promises: a logout on replica A reaches replica B within ``session.cache_ttl``. It is
measured by polling B, never by sleeping a fixed time.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import yaml

from sidecar.tokens.keys import generate_keyset
from tests.harness import Upstream

pytestmark = [pytest.mark.redis, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
ADMIN_KEY = "replica-admin-key-" + "x" * 32
CACHE_TTL = 1.0
STARTUP = 30.0


@dataclass
class Replica:
    proc: asyncio.subprocess.Process
    proxy: str = ""
    admin: str = ""
    log: list[str] = field(default_factory=list)
    drain: asyncio.Task[None] | None = None

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()
        if self.drain is not None:
            await self.drain


async def _start(config: Path) -> Replica:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar", "serve", "--config", str(config),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    replica = Replica(proc)
    assert proc.stderr is not None
    stderr = proc.stderr
    async with asyncio.timeout(STARTUP):
        while not (replica.proxy and replica.admin):
            line = (await stderr.readline()).decode()
            if not line:
                pytest.fail("sidecar serve exited:\n" + "".join(replica.log))
            replica.log.append(line)
            msg = json.loads(line).get("msg", "") if line.startswith("{") else ""
            if msg.startswith("listening: proxy on "):
                replica.proxy = msg.rsplit(" ", 1)[1]
            elif msg.startswith("listening: admin on "):
                replica.admin = msg.rsplit(" ", 1)[1]

    async def drain() -> None:
        while line := await stderr.readline():
            replica.log.append(line.decode())

    replica.drain = asyncio.create_task(drain())
    return replica


@pytest.fixture
async def replicas(
    tmp_path: Path, redis_url: str, upstream: Upstream
) -> AsyncIterator[tuple[Replica, Replica]]:
    (tmp_path / "keyset.json").write_text(generate_keyset().to_json())
    (tmp_path / "admin.key").write_text(ADMIN_KEY)
    doc = {
        "public_url": "http://app.test",
        "keys": {"file": "keyset.json"},
        "admin": {"listen": "127.0.0.1:0", "key": {"file": "admin.key"}},
        "proxy": {
            "listen": "127.0.0.1:0",
            "upstream": upstream.url,
            "allowed_hosts": ["127.0.0.1"],
        },
        "session": {"cookie_secure": False, "cache_ttl": f"{int(CACHE_TTL * 1000)}ms"},
        "store": {"url": redis_url, "key_prefix": f"replicas-{uuid.uuid4().hex[:8]}:"},
        "roles": {"Authenticated": {}},
        # No access line held past its loop iteration: the log is searched for tokens
        # while the replicas run.
        "logging": {"level": "info", "buffer": 0},
        "shutdown": {"grace_period": "1s"},
    }
    config = tmp_path / "sidecar.yaml"
    config.write_text(yaml.safe_dump(doc))
    started = await asyncio.gather(_start(config), _start(config), return_exceptions=True)
    running = [r for r in started if isinstance(r, Replica)]
    try:
        for result in started:
            if isinstance(result, BaseException):
                raise result
        yield running[0], running[1]
    finally:
        await asyncio.gather(*(r.stop() for r in running))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


async def _mint(http: aiohttp.ClientSession, replica: Replica) -> tuple[str, str]:
    async with http.post(
        replica.admin + "/referstring",
        json={"userId": "carol"},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    ) as response:
        assert response.status == 200, await response.text()
        doc = await response.json()
    return doc["referString"], doc["id"]


async def _redeem(http: aiohttp.ClientSession, replica: Replica, token: str) -> tuple[int, str]:
    async with http.get(
        f"{replica.proxy}/?refer={token}/",
        allow_redirects=False,
        headers={"Accept": "application/json"},
    ) as response:
        cookie = response.cookies.get("sidecar_session")
        return response.status, cookie.value if cookie is not None else ""


async def _get(http: aiohttp.ClientSession, replica: Replica, cookie: str) -> int:
    async with http.get(
        replica.proxy + "/app",
        headers={"Cookie": f"sidecar_session={cookie}", "Accept": "application/json"},
    ) as response:
        return response.status


async def test_link_redeemed_on_one_replica_is_refused_on_the_other(
    replicas: tuple[Replica, Replica], http: aiohttp.ClientSession, upstream: Upstream
) -> None:
    a, b = replicas
    token, _ = await _mint(http, a)
    status, cookie = await _redeem(http, a, token)
    assert status == 303
    assert await _get(http, b, cookie) == 200  # the session is shared
    assert upstream.last.values("X-Forwarded-User") == ["carol"]
    assert (await _redeem(http, b, token))[0] == 410
    # Both at once, on different replicas: exactly one wins.
    token, _ = await _mint(http, b)
    results = await asyncio.gather(*(_redeem(http, r, token) for r in (a, b, a, b)))
    assert sorted(status for status, _ in results) == [303, 410, 410, 410]
    for replica in replicas:
        assert not any(token[:40] in line for line in replica.log)


async def test_revocation_on_one_replica_holds_on_the_other(
    replicas: tuple[Replica, Replica], http: aiohttp.ClientSession
) -> None:
    a, b = replicas
    token, token_id = await _mint(http, a)
    async with http.post(
        f"{a.admin}/tokens/{token_id}/revoke", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    ) as response:
        assert response.status == 200
    assert (await _redeem(http, b, token))[0] == 410


async def test_logout_on_one_replica_ends_the_session_on_the_other_within_cache_ttl(
    replicas: tuple[Replica, Replica], http: aiohttp.ClientSession
) -> None:
    a, b = replicas
    token, _ = await _mint(http, a)
    _, cookie = await _redeem(http, a, token)
    assert await _get(http, b, cookie) == 200  # B now holds the session in its cache
    async with http.post(
        a.proxy + "/_sidecar/logout",
        headers={"Cookie": f"sidecar_session={cookie}"},
        allow_redirects=False,
    ) as response:
        assert response.status == 303
    ended = time.monotonic()
    assert await _get(http, a, cookie) == 401  # at once where the logout happened
    while await _get(http, b, cookie) != 401:
        assert time.monotonic() - ended <= CACHE_TTL + 1.0, "B still serves the ended session"
        await asyncio.sleep(0.05)
    assert time.monotonic() - ended <= CACHE_TTL + 1.0
