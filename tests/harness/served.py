"""A real sidecar on real sockets, in front of the recording upstream.

:func:`running_sidecar` runs the product exactly as ``sidecar serve`` does
(:func:`sidecar.app.build_services` + :func:`sidecar.app.serve`: both listeners, the timed
store, the drain, the handler limits) on free loopback ports. Only the clock is injected,
so expiry and rate-limit windows move without sleeping.

A :class:`Sidecar` offers three ways in: ``client`` (a session on the proxy port whose
cookie jar keeps the session, like a browser), ``http`` (no cookie jar: every request says
which cookie it carries) and :func:`tests.harness.raw.raw_http` on ``proxy_port`` /
``admin_port`` for bytes no client library would send.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import yaml
from yarl import URL

from sidecar.app import ServeError, build_services, serve
from sidecar.config import Config, parse_config
from sidecar.config.values import HostPort
from sidecar.services import Services
from sidecar.store.base import Store
from sidecar.tokens.codec import Claims, TokenCodec, new_token_id
from sidecar.tokens.keys import KeySet, generate_keyset
from tests.harness.config import ADMIN_KEY, config_doc, deep_merge, environment
from tests.harness.upstream import Upstream


class Clock:
    """The sidecar's time, moved by tests instead of sleeping."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Sidecar:
    """A running sidecar: its config, services, clock, upstream and the ways in."""

    config: Config
    services: Services
    clock: Clock
    upstream: Upstream
    http: aiohttp.ClientSession  # no cookie jar
    client: aiohttp.ClientSession  # base URL = the proxy; keeps cookies like a browser
    admin_port: int
    proxy_port: int
    memo: dict[str, str] = field(default_factory=dict)  # state a Hypothesis test keeps

    @property
    def store(self) -> Store:
        return self.services.store

    @property
    def keyset(self) -> KeySet:
        return self.config.keyset

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_KEY}"}

    @property
    def cookie_name(self) -> str:
        return self.config.session.cookie_name

    # -- links through the admin API (what a backend does) ----------------------------

    async def mint(self, **body: object) -> dict[str, str]:
        """POST /referstring with ``body`` (userId defaults to user-1); the JSON answer."""
        body.setdefault("userId", "user-1")
        async with self.http.post(
            self.admin_url + "/referstring", json=body, headers=self.admin_headers
        ) as resp:
            assert resp.status == 200, await resp.text()
            answer: dict[str, str] = await resp.json()
            return answer

    async def generate_link(self, **body: object) -> dict[str, str]:
        async with self.http.post(
            self.admin_url + "/admin/generate_link", json=body, headers=self.admin_headers
        ) as resp:
            assert resp.status == 200, await resp.text()
            answer: dict[str, str] = await resp.json()
            return answer

    async def redeem(self, token: str, path: str = "/") -> str:
        """Follow a refer link (without a cookie jar); returns the session cookie it set."""
        async with self.http.get(
            self.proxy_url + path, params={"refer": token}, allow_redirects=False
        ) as resp:
            assert resp.status == 303, (resp.status, await resp.text())
            morsel = resp.cookies.get(self.cookie_name)
            assert morsel is not None
            assert morsel.value
            return morsel.value

    async def login(self, **body: object) -> str:
        """Mint through the admin API and redeem; the session cookie value."""
        return await self.redeem((await self.mint(**body))["referString"])

    def cookie_header(self, value: str) -> dict[str, str]:
        return {"Cookie": f"{self.cookie_name}={value}"}

    # -- links sealed directly with the keyset (any claims, any time) -----------------

    def seal(
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
        """A token for exactly these claims, issued now by the sidecar's clock."""
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

    async def sign_in(self, **claims: object) -> str:
        """Redeem a freshly sealed link through ``client``; its jar keeps the session.
        Returns the session cookie value."""
        token, _ = self.seal(**claims)  # type: ignore[arg-type]  # keyword pass-through
        response = await self.client.get(f"/?refer={token}", allow_redirects=False)
        assert response.status == 303, await response.text()
        return response.cookies[self.cookie_name].value

    def jar_cookie(self) -> str:
        """The session cookie value ``client``'s jar holds."""
        cookies = self.client.cookie_jar.filter_cookies(URL(self.proxy_url))
        return cookies[self.cookie_name].value


def _on_ports(config: Config, admin_port: int, proxy_port: int) -> Config:
    return dataclasses.replace(
        config,
        admin=dataclasses.replace(config.admin, listen=HostPort("127.0.0.1", admin_port)),
        proxy=dataclasses.replace(config.proxy, listen=HostPort("127.0.0.1", proxy_port)),
    )


@contextlib.asynccontextmanager
async def running_sidecar(
    tmp_path: Path,
    *,
    config: Config | None = None,
    store_url: str | None = None,
    overrides: dict[str, object] | None = None,
    upstream: Upstream | None = None,
    keyset: KeySet | None = None,
    store: Store | None = None,
    public_host: str | None = None,
) -> AsyncIterator[Sidecar]:
    """Serve a sidecar (both listeners) for the duration of the block.

    With ``config`` (e.g. from :func:`tests.harness.config.make_config`) it is served as
    given, on free ports; ``upstream`` is then only what :attr:`Sidecar.upstream` shows
    and stays the caller's. Without, the adversarial preset (:func:`config_doc`) with
    ``overrides`` merged in fronts ``upstream`` (a new one by default), which is started
    if needed and stopped at the end. ``store`` replaces the one the store URL names
    (e.g. a counting wrapper); it is opened and closed by the sidecar. With
    ``public_host`` the preset's ``public_url`` is ``http://<public_host>:<proxy port>``
    (a browser's view of it)."""
    if isinstance(tmp_path, Config):  # the old harness's running_sidecar(config)
        raise TypeError("call running_sidecar(tmp_path, config=config)")
    if config is not None and (store_url or overrides or keyset or public_host):
        raise TypeError("pass either config or store_url/overrides/keyset/public_host")
    if store is not None and store_url:
        raise TypeError("pass either store or store_url")
    own_upstream = config is None and (upstream is None or not upstream.running)
    upstream = upstream or Upstream()
    if own_upstream:
        await upstream.start()
    tmp_path.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240  # a local temp dir
    keyset = keyset or generate_keyset("k-sec-1")
    clock = Clock()
    try:
        async with (
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
            contextlib.AsyncExitStack() as stack,
        ):
            for _attempt in range(5):
                admin_port, proxy_port = free_port(), free_port()
                if config is not None:
                    served = _on_ports(config, admin_port, proxy_port)
                else:
                    doc = config_doc(
                        upstream=upstream.url,
                        store_url=store_url or f"sqlite:///{tmp_path}/sidecar.db",
                        admin_port=admin_port,
                        proxy_port=proxy_port,
                    )
                    if public_host is not None:
                        doc["public_url"] = f"http://{public_host}:{proxy_port}"
                    served = parse_config(
                        yaml.safe_dump(deep_merge(doc, overrides or {})),
                        env=environment(keyset),
                        base_dir=tmp_path,
                    )
                if store is None:
                    services = build_services(served)
                    services.clock = clock
                else:
                    codec = TokenCodec(served.keyset)
                    services = Services(config=served, store=store, codec=codec, clock=clock)
                ready, stop = asyncio.Event(), asyncio.Event()
                task = asyncio.create_task(serve(services, ready=ready, stop=stop))
                waiter = asyncio.create_task(ready.wait())
                await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if ready.is_set():
                    break
                waiter.cancel()
                exc = task.exception()
                if not isinstance(exc, ServeError) or "cannot listen" not in str(exc):
                    raise exc or RuntimeError("serve() returned before it was ready")
            else:
                pytest.fail("no free ports for the sidecar after 5 attempts")
            stack.push_async_callback(lambda: task)
            stack.callback(stop.set)
            client = await stack.enter_async_context(
                aiohttp.ClientSession(
                    base_url=f"http://127.0.0.1:{proxy_port}",
                    cookie_jar=aiohttp.CookieJar(unsafe=True),
                )
            )
            yield Sidecar(served, services, clock, upstream, http, client, admin_port, proxy_port)
    finally:
        if own_upstream:
            await upstream.stop()
