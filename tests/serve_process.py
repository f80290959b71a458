"""A real ``sidecar serve`` child process with its own config, keys and SQLite file.

Its JSON logs (stderr) go to a file the test reads afterwards. Used by tests/test_logs.py
and tests/test_shutdown.py; the ports are picked free just before the start.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import yaml

from sidecar.tokens.keys import KeySet, generate_keyset
from tests.harness import free_port

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
HEADERS = {"X-Forwarded-User": "{user_id}", "X-Forwarded-Role": "{role}"}


@dataclass
class Served:
    proc: asyncio.subprocess.Process
    proxy: str
    admin: str
    admin_key: str
    keyset: KeySet
    state: Path
    log_path: Path
    config: Path

    @property
    def db(self) -> Path:
        return self.state / "sidecar.db"

    def logs(self) -> list[str]:
        return self.log_path.read_text(encoding="utf-8").splitlines()

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}


def write_config(
    state: Path, upstream: str, keyset: KeySet | None = None, **top: object
) -> tuple[Path, str, KeySet, int, int]:
    """Config, keyset (``keyset`` or a new one) and admin key files in ``state``; returns
    them and the two ports."""
    keyset = keyset or generate_keyset()
    admin_key = secrets.token_urlsafe(32)
    (state / "keyset.json").write_text(keyset.to_json(), encoding="utf-8")
    (state / "admin.key").write_text(admin_key, encoding="utf-8")
    proxy_port, admin_port = free_port(), free_port()
    doc: dict[str, object] = {
        "public_url": f"http://127.0.0.1:{proxy_port}",
        "keys": {"file": "keyset.json"},
        "admin": {"listen": f"127.0.0.1:{admin_port}", "key": {"file": "admin.key"}},
        "proxy": {"listen": f"127.0.0.1:{proxy_port}", "upstream": upstream},
        "session": {"cookie_secure": False},
        "store": {"url": f"sqlite:///{state}/sidecar.db"},
        "roles": {"Member": {"params": ["tenant"], "headers": HEADERS}},
        "links": {"create_user_on_magiclink": True},
        "logging": {"level": "info"},
        **top,
    }
    path = state / "sidecar.yaml"
    # "{public_url}" in a value stands for the proxy's URL, known only once ports are picked.
    text = yaml.safe_dump(doc).replace("{public_url}", f"http://127.0.0.1:{proxy_port}")
    path.write_text(text, encoding="utf-8")
    return path, admin_key, keyset, proxy_port, admin_port


async def _wait_ready(served: Served) -> None:
    async with aiohttp.ClientSession() as http:
        async with asyncio.timeout(START_TIMEOUT):
            while True:
                if served.proc.returncode is not None:
                    pytest.fail("sidecar serve exited:\n" + "\n".join(served.logs()))
                try:
                    async with http.get(served.proxy + "/_sidecar/readyz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)  # polling a starting process, not waiting for time


@asynccontextmanager
async def running_serve(
    state: Path,
    upstream: str,
    env: Mapping[str, str] | None = None,
    keyset: KeySet | None = None,
    **top: object,
) -> AsyncIterator[Served]:
    """``python -m sidecar serve --config …`` until the block ends (then killed if alive)."""
    config, admin_key, keyset, proxy_port, admin_port = write_config(state, upstream, keyset, **top)
    async with _serving(config, env, proxy_port, admin_port, admin_key, keyset) as served:
        yield served


@asynccontextmanager
async def restarted(served: Served, env: Mapping[str, str] | None = None) -> AsyncIterator[Served]:
    """The same config, keys and state served again by a new process (after a kill, say)."""
    async with _serving(
        served.config,
        env,
        int(served.proxy.rsplit(":", 1)[1]),
        int(served.admin.rsplit(":", 1)[1]),
        served.admin_key,
        served.keyset,
    ) as again:
        yield again


@asynccontextmanager
async def _serving(
    config: Path,
    env: Mapping[str, str] | None,
    proxy_port: int,
    admin_port: int,
    admin_key: str,
    keyset: KeySet,
) -> AsyncIterator[Served]:
    state = config.parent
    log_path = state / "sidecar.log"
    with log_path.open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "sidecar", "serve", "--config", str(config)),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
        )
    served = Served(
        proc=proc,
        proxy=f"http://127.0.0.1:{proxy_port}",
        admin=f"http://127.0.0.1:{admin_port}",
        admin_key=admin_key,
        keyset=keyset,
        state=state,
        log_path=log_path,
        config=config,
    )
    try:
        await _wait_ready(served)
        yield served
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
