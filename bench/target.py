"""The sidecar under test: a generated config + keyset in a temp dir, ``sidecar serve`` as a
child process, and the admin-port calls the scenarios need (mint, redeem for a cookie).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.procs import PYTHON, BenchError, Child, free_port, sidecar_env, spawn, wait_port
from sidecar.tokens.keys import generate_keyset

COOKIE = "sidecar_session"
MINT_CONCURRENCY = 32

_CONFIG = """\
public_url: http://127.0.0.1:{proxy_port}
keys:
  file: keyset.json
tokens:
  default_expiry: 1h
admin:
  listen: 127.0.0.1:{admin_port}
  key:
    file: admin.key
  mint_rate: 100000000/1m   # the bench measures minting, not its rate limit
proxy:
  listen: 127.0.0.1:{proxy_port}
  upstream: http://127.0.0.1:{upstream_port}
  trusted_proxies: [{trusted}]
session:
  cookie_name: {cookie}
  cookie_secure: false
store:
  url: {store_url}
default_role: Authenticated
roles:
  Authenticated:
    max_expiry: 1d
    one_time: true
    redeem: direct
    session_lifetime: 8h
    idle_timeout: 1h
    headers:
      X-Forwarded-User: "{{user_id}}"
      X-Forwarded-Role: "{{role}}"
logging:
  level: {log_level}
  access: {access_log}
{log_extra}shutdown:
  grace_period: 2s
"""


@dataclass
class Sidecar:
    """A running ``sidecar serve``; ``admin_key`` authorises the admin port."""

    child: Child
    proxy_port: int
    admin_port: int
    admin_key: str

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}", "Content-Type": "application/json"}

    def stop(self) -> None:
        self.child.stop()


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"  # path is absolute: sqlite:////abs/path.db


def start_sidecar(
    workdir: Path,
    *,
    name: str,
    upstream_port: int,
    store_url: str,
    cores: Sequence[int] | None,
    log_level: str = "info",
    trusted_proxies: Sequence[str] = (),
    workers: int = 1,
    access_log: bool = True,
    env: dict[str, str] | None = None,
    wrap: Sequence[str] = (),
    output: int | None = None,
    log_extra: dict[str, str] | None = None,
) -> Sidecar:
    """Write config, keyset and admin key into ``workdir/name`` and start ``sidecar serve``
    (``--workers workers``: ``pid`` is then the supervisor's, and the CPU figures, summed
    over the process tree, include every worker). ``env``: the child's whole environment
    (default :func:`~bench.procs.sidecar_env`: when compiled, the image's settings too).
    ``wrap``: interpreter arguments before ``-m sidecar``, such as ``-m bench.stallprobe
    OUT`` (:mod:`bench.stallprobe`). ``output``: where its stdout and stderr go (a
    descriptor), instead of ``workdir/name.log``. ``log_extra``: more ``logging`` keys
    (``{"backlog": "0"}``)."""
    home = workdir / name
    home.mkdir(exist_ok=True)
    (home / "keyset.json").write_text(generate_keyset().to_json())
    admin_key = secrets.token_urlsafe(32)
    (home / "admin.key").write_text(admin_key + "\n")
    proxy_port, admin_port = free_port(), free_port()
    config = home / "sidecar.yaml"
    config.write_text(
        _CONFIG.format(
            proxy_port=proxy_port,
            admin_port=admin_port,
            upstream_port=upstream_port,
            store_url=store_url,
            cookie=COOKIE,
            log_level=log_level,
            access_log="true" if access_log else "false",
            trusted=", ".join(trusted_proxies),
            log_extra="".join(f"  {k}: {v}\n" for k, v in (log_extra or {}).items()),
        )
    )
    argv = [PYTHON, *wrap, "-m", "sidecar", "serve", "--config", str(config)]
    if workers != 1:
        argv += ["--workers", str(workers)]
    env = sidecar_env() if env is None else env
    child = spawn(name, argv, logdir=workdir, cores=cores, env=env, cwd=home, output=output)
    wait_port(child, admin_port)
    wait_port(child, proxy_port)
    return Sidecar(child, proxy_port, admin_port, admin_key)


def _mint_body(user: str, one_time: bool) -> dict[str, object]:
    return {"userId": user, "oneTimeUse": one_time, "expireMeasure": "hours", "expireOffset": 1}


async def _mint(session: aiohttp.ClientSession, sc: Sidecar, user: str, one_time: bool) -> str:
    url = f"http://127.0.0.1:{sc.admin_port}/referstring"
    async with session.post(url, json=_mint_body(user, one_time), headers=sc.admin_headers) as r:
        doc = await r.json()
        if r.status != 200 or not isinstance(doc, dict) or "referString" not in doc:
            raise BenchError(f"mint answered {r.status}: {str(doc)[:200]}")
        return str(doc["referString"])


async def _mint_many(sc: Sidecar, count: int, one_time: bool) -> list[str]:
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=MINT_CONCURRENCY)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        jobs = (_mint(session, sc, f"bench-{i}", one_time) for i in range(count))
        return list(await asyncio.gather(*jobs))


def mint_tokens(sc: Sidecar, count: int, *, one_time: bool = True) -> list[str]:
    """Mint ``count`` refer strings through the admin port (32 at a time)."""
    return asyncio.run(_mint_many(sc, count, one_time))


def mint_body_json() -> str:
    """The body the mint scenario posts (a one-time link for one user)."""
    return json.dumps(_mint_body("bench-user", True))


async def _session_cookie(sc: Sidecar) -> str:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        token = await _mint(session, sc, "bench-user", one_time=False)
        url = f"http://127.0.0.1:{sc.proxy_port}/?refer={token}"
        async with session.get(url, allow_redirects=False) as r:
            morsel = r.cookies.get(COOKIE)
            if r.status != 303 or morsel is None:
                raise BenchError(f"redeeming a reusable link answered {r.status}, no cookie")
            return morsel.value


def session_cookie(sc: Sidecar) -> str:
    """A valid session cookie value: a reusable link minted, then redeemed (303)."""
    return asyncio.run(_session_cookie(sc))
