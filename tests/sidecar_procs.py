"""Real ``sidecar serve`` processes on a Redis topology, started and stopped synchronously
(so session- and module-scoped fixtures can own them), and tokens sealed with their keyset.

The processes announce their addresses on stderr; a thread keeps draining it so a chatty
process never blocks on a full pipe.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import yaml

from sidecar.store.redis_client import RedisOptions
from sidecar.tokens.codec import Claims, TokenCodec, new_token_id
from sidecar.tokens.keys import generate_keyset
from tests.conftest import end_process

REPO = Path(__file__).resolve().parent.parent
ADMIN_KEY = "topology-admin-key-" + "x" * 32
STARTUP = 30.0


@dataclass
class SidecarProc:
    proc: subprocess.Popen[str]
    proxy: str = ""
    admin: str = ""
    log: list[str] = field(default_factory=list)

    def stop(self) -> None:
        end_process(self.proc, within=15)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@dataclass
class Fleet:
    """Sidecar processes sharing one store, and a way to mint links they accept."""

    sidecars: list[SidecarProc]
    codec: TokenCodec
    prefix: str

    def mint(self, user: str = "carol", ttl: int = 3600) -> str:
        return self.mint_with_id(user, ttl)[0]

    def mint_with_id(self, user: str = "carol", ttl: int = 3600) -> tuple[str, str]:
        """A one-time link and its token id (the store's ``tok:<id>`` key)."""
        now = int(time.time())
        claims = Claims(
            token_id=new_token_id(), subject=user, role="Authenticated", issued_at=now,
            expires_at=now + ttl, one_time=True, kind="refer",
        )  # fmt: skip
        return self.codec.seal(claims), claims.token_id

    def stop(self) -> None:
        for sidecar in self.sidecars:  # all at once: each takes its grace period
            if sidecar.proc.poll() is None:
                sidecar.proc.terminate()
        for sidecar in self.sidecars:
            sidecar.stop()


def _spawn(config: Path) -> tuple[SidecarProc, queue.Queue[str | None]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
        # After what is there already: the compiled run of scripts/test puts a compiled copy
        # of the package first (tests/compiled_run.py).
        env={**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (os.environ.get("PYTHONPATH"), str(REPO)) if p
        )},
    )  # fmt: skip
    sidecar = SidecarProc(proc)
    lines: queue.Queue[str | None] = queue.Queue()

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            sidecar.log.append(line)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    return sidecar, lines


def _wait_listening(sidecar: SidecarProc, lines: queue.Queue[str | None]) -> None:
    deadline = time.monotonic() + STARTUP
    while not (sidecar.proxy and sidecar.admin):
        try:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            line = None
        if line is None:
            sidecar.stop()
            pytest.fail("sidecar serve did not start:\n" + "".join(sidecar.log))
        msg = json.loads(line).get("msg", "") if line.startswith("{") else ""
        if msg.startswith("listening: proxy on "):
            sidecar.proxy = msg.rsplit(" ", 1)[1]
        elif msg.startswith("listening: admin on "):
            sidecar.admin = msg.rsplit(" ", 1)[1]


def start_fleet(
    directory: Path,
    url: str,
    *,
    options: RedisOptions | None = None,
    prefix: str = "fleet",
    count: int = 2,
) -> Fleet:
    """``count`` sidecar processes on the store at ``url``; the password goes to a file
    (never the YAML), the TLS files and ``WAIT`` setting from ``options``."""
    options = options or RedisOptions()
    keyset = generate_keyset()
    (directory / "keyset.json").write_text(keyset.to_json())
    (directory / "admin.key").write_text(ADMIN_KEY)
    key_prefix = f"{prefix}{uuid.uuid4().hex[:8]}:"
    store: dict[str, object] = {"url": url, "key_prefix": key_prefix}
    if options.password is not None:
        (directory / "redis-password").write_text(options.password)
        store["password"] = {"file": "redis-password"}
    for key in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
        if getattr(options, key) is not None:
            store[key] = getattr(options, key)
    if options.min_replicas_ack:
        store["redis_min_replicas_ack"] = options.min_replicas_ack
    doc = {
        "public_url": "http://app.test",
        "keys": {"file": "keyset.json"},
        "admin": {"listen": "127.0.0.1:0", "key": {"file": "admin.key"}},
        # All clients are 127.0.0.1 here: the per-client failure limit must not answer 429.
        "proxy": {
            "listen": "127.0.0.1:0",
            "upstream": "http://127.0.0.1:9",
            "failed_redeem_rate": "1000000/1m",
            "allowed_hosts": ["127.0.0.1"],  # the clients' Host
        },
        "session": {"cookie_secure": False},
        "store": store,
        "roles": {"Authenticated": {}},
        "logging": {"level": "info"},  # the "listening:" lines are info
        "shutdown": {"grace_period": "1s"},
    }
    config = directory / "sidecar.yaml"
    config.write_text(yaml.safe_dump(doc))
    spawned = [_spawn(config) for _ in range(count)]  # start in parallel
    fleet = Fleet([sidecar for sidecar, _ in spawned], TokenCodec(keyset), key_prefix)
    try:
        for sidecar, lines in spawned:
            _wait_listening(sidecar, lines)
    except BaseException:
        fleet.stop()
        raise
    return fleet


async def redeem(
    http: aiohttp.ClientSession, sidecar: SidecarProc, token: str, within: float = 10.0
) -> tuple[int, str, bool]:
    """(status, error code or "", whether a session cookie was set)."""
    async with http.get(
        f"{sidecar.proxy}/?refer={token}",
        allow_redirects=False,
        headers={"Accept": "application/json"},
        timeout=aiohttp.ClientTimeout(total=within),
    ) as response:
        cookie = "sidecar_session" in response.cookies
        if response.status == 303:
            return 303, "", cookie
        body = await response.json()
        return response.status, str(body.get("error", "")), cookie
