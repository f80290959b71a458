"""A sidecar proxy under test: real config, real SQLite store, real sockets, injected clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.app import listener_options
from sidecar.config import Config, parse_config
from sidecar.proxy.gateway import build_proxy_app
from sidecar.services import Services
from sidecar.store.base import Store
from sidecar.store.sqlite import SQLiteStore
from sidecar.tokens.codec import Claims, TokenCodec, new_token_id
from sidecar.tokens.keys import generate_keyset

ADMIN_KEY = "k" * 40
ROLES: dict[str, object] = {
    "Authenticated": {
        "params": ["tenant"],
        "modules": ["*"],
        "deny": ["/admin/**", "/secret.txt"],
        "headers": {
            "X-Forwarded-User": "{user_id}",
            "X-Forwarded-Role": "{role}",
            "X-Forwarded-Tenant": "{param.tenant}",
        },
    },
    "Reader": {
        "allow": ["/docs/**", "/api/*/read"],
        "one_time": False,
        "headers": {"X-Forwarded-User": "{user_id}", "X-Auth-Email": "{email}"},
    },
    "Admin": {"redeem": "confirm"},
}


class Clock:
    """The sidecar's time, moved by tests instead of sleeping."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_config(
    tmp: Path, upstream: str, proxy: Mapping[str, object] | None = None, **top: object
) -> Config:
    keyset = generate_keyset()
    doc: dict[str, object] = {
        "public_url": "http://app.test",
        "keys": {"env": "TEST_KEYSET"},
        "admin": {"key": {"env": "TEST_ADMIN_KEY"}},
        "proxy": {"upstream": upstream, "upstream_timeout": "500ms", **(proxy or {})},
        "session": {"cookie_secure": False},
        "store": {"url": f"sqlite:///{tmp}/sidecar.db"},
        "default_role": "Authenticated",
        "roles": ROLES,
        **top,
    }
    env = {"TEST_KEYSET": keyset.to_json(), "TEST_ADMIN_KEY": ADMIN_KEY}
    return parse_config(yaml.safe_dump(doc), env=env, base_dir=tmp)


@dataclass
class Sidecar:
    services: Services
    client: TestClient[web.Request, web.Application]
    clock: Clock

    @property
    def store(self) -> Store:
        return self.services.store

    @property
    def config(self) -> Config:
        return self.services.config

    def mint(
        self,
        *,
        user: str = "u1",
        role: str = "Authenticated",
        one_time: bool = True,
        module: str | None = None,
        ttl: int = 3600,
        params: Mapping[str, str] | None = None,
        email: str | None = None,
        kind: str = "refer",
        token_id: str | None = None,
    ) -> tuple[str, Claims]:
        now = int(self.clock())
        claims = Claims(
            token_id=token_id or new_token_id(),
            subject=user,
            role=role,
            issued_at=now,
            expires_at=now + ttl,
            one_time=one_time,
            kind=kind,
            params=dict(params or {}),
            module=module,
            email=email,
        )
        return self.services.codec.seal(claims), claims

    async def login(self, **mint: object) -> str:
        """Redeem a fresh link; return the session cookie value (the client keeps it too)."""
        token, _ = self.mint(**mint)  # type: ignore[arg-type]  # test helper pass-through
        response = await self.client.get(f"/?refer={token}", allow_redirects=False)
        assert response.status == 303, await response.text()
        return response.cookies[self.config.session.cookie_name].value


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)


async def raw_http(sc: Sidecar, method: str, target: str, *headers: str) -> RawResponse:
    """Send a request line exactly as written (no client-side URL normalisation)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: app.test", "Connection: close", *headers]
    return await raw_bytes(sc, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


async def raw_bytes(sc: Sidecar, data: bytes) -> RawResponse:
    """Send ``data`` as is; read until the sidecar closes the connection (at most 5 s).
    ``body`` then holds everything after the first response head."""
    server = sc.client.server
    assert server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(data)
    await writer.drain()
    async with asyncio.timeout(5):
        data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    pairs = [tuple(line.split(": ", 1)) for line in header_lines]
    return RawResponse(int(status_line.split()[1]), [(n, v) for n, v in pairs], body)


@asynccontextmanager
async def running_sidecar(config: Config, store: Store | None = None) -> AsyncIterator[Sidecar]:
    clock = Clock()
    store = store or SQLiteStore(config.store.url.removeprefix("sqlite:///"))
    await store.open()
    services = Services(config=config, store=store, codec=TokenCodec(config.keyset), clock=clock)
    server = TestServer(build_proxy_app(services), host="127.0.0.1")
    await server.start_server(**listener_options(config))
    client: TestClient[web.Request, web.Application] = TestClient(server)
    try:
        yield Sidecar(services, client, clock)
    finally:
        await client.close()
        await store.close()
