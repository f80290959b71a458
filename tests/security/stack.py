"""A real sidecar on real sockets, to be attacked from outside, and raw-HTTP helpers.

``sidecar`` runs the product exactly as ``sidecar serve`` does (``sidecar.app.serve``: both
listeners, the store, the handler limits) on free loopback ports, in front of a recording
upstream. Only the clock is injected, so expiry and rate-limit windows move without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from sidecar.app import ServeError, serve
from sidecar.config import Config, parse_config
from sidecar.services import Services
from sidecar.store import open_store
from sidecar.tokens.codec import TokenCodec
from sidecar.tokens.keys import KeySet, generate_keyset
from tests.harness import Clock

ADMIN_KEY = "adm-" + secrets.token_urlsafe(32)
PUBLIC_URL = "https://app.example.com"
IDENTITY_HEADERS = (
    "X-Forwarded-User",
    "X-Forwarded-Role",
    "X-Forwarded-Tenant",
    "X-Forwarded-Email",
)


@dataclass(frozen=True, slots=True)
class Seen:
    """One request as the upstream received it, headers exactly as sent on the wire."""

    method: str
    raw_path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


Responder = Callable[[web.BaseRequest], web.StreamResponse | Awaitable[web.StreamResponse]]


def _echo(request: web.BaseRequest) -> web.StreamResponse:
    return web.json_response({"path": request.raw_path})


@dataclass
class Upstream:
    """A recording upstream app on a real socket; it can be stopped and started again."""

    port: int = 0
    requests: list[Seen] = field(default_factory=list)
    respond: Responder = _echo
    _runner: web.ServerRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers)
        self.requests.append(Seen(request.method, request.raw_path, headers, body))
        answer = self.respond(request)
        return await answer if inspect.isawaitable(answer) else answer

    async def start(self) -> None:
        runner = web.ServerRunner(web.Server(self._handle), handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def deep_merge(base: dict[str, object], extra: dict[str, object]) -> dict[str, object]:
    out = dict(base)
    for key, value in extra.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            out[key] = deep_merge(old, value)
        else:
            out[key] = value
    return out


def config_doc(
    *, upstream: str, store_url: str, admin_port: int, proxy_port: int
) -> dict[str, object]:
    return {
        "public_url": PUBLIC_URL,
        "keys": {"env": "SIDECAR_KEYSET"},
        "admin": {
            "listen": f"127.0.0.1:{admin_port}",
            "key": {"env": "SIDECAR_ADMIN_KEY"},
            "mint_rate": "100000/1m",
        },
        "proxy": {
            "listen": f"127.0.0.1:{proxy_port}",
            "upstream": upstream,
            "connect_timeout": "2s",
            "upstream_timeout": "5s",
            "unauthenticated": "deny",
            "public_paths": ["/favicon.ico", "/static/**"],
            "max_header_size": "8KiB",
            "failed_redeem_rate": "100000/5m",
        },
        "session": {"cookie_secure": False},
        "store": {"url": store_url},
        "default_role": "Authenticated",
        "roles": {
            "Authenticated": {
                "params": ["tenant"],
                "allow": ["/**"],
                "deny": ["/admin/**", "/private/**", "/api/internal/**"],
                "headers": {
                    "X-Forwarded-User": "{user_id}",
                    "X-Forwarded-Role": "{role}",
                    "X-Forwarded-Tenant": "{param.tenant}",
                    "X-Forwarded-Email": "{email}",
                },
            },
            "Confirm": {"redeem": "confirm"},
            "Reusable": {"one_time": False},
            "Narrow": {"allow": ["/app/**", "/index.html"], "deny": ["/app/admin/**"]},
        },
        "links": {
            "role": "Authenticated",
            "default_redirect": PUBLIC_URL + "/",
            "redirect_allow": [PUBLIC_URL + "/**", "https://*.example.com/welcome"],
            "otp_rate": "100000/15m",
            "create_user_on_magiclink": True,
        },
        "logging": {"level": "debug"},
        "shutdown": {"grace_period": "1s"},
    }


@dataclass
class Sidecar:
    """A running sidecar: its config, services, clock, upstream and the ways in."""

    config: Config
    services: Services
    clock: Clock
    upstream: Upstream
    keyset: KeySet
    http: aiohttp.ClientSession
    admin_port: int
    proxy_port: int
    memo: dict[str, str] = field(default_factory=dict)  # state a Hypothesis test keeps

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
        """Follow a refer link; returns the session cookie value it set."""
        async with self.http.get(
            self.proxy_url + path, params={"refer": token}, allow_redirects=False
        ) as resp:
            assert resp.status == 303, (resp.status, await resp.text())
            morsel = resp.cookies.get(self.cookie_name)
            assert morsel is not None
            assert morsel.value
            return morsel.value

    async def login(self, **body: object) -> str:
        return await self.redeem((await self.mint(**body))["referString"])

    def cookie_header(self, value: str) -> dict[str, str]:
        return {"Cookie": f"{self.cookie_name}={value}"}


@contextlib.asynccontextmanager
async def running_sidecar(
    tmp_path: Path,
    *,
    store_url: str | None = None,
    overrides: dict[str, object] | None = None,
    upstream: Upstream | None = None,
    keyset: KeySet | None = None,
    public_host: str | None = None,
) -> AsyncIterator[Sidecar]:
    """Serve a sidecar (both listeners) for the duration of the block; with ``public_host``
    its ``public_url`` is ``http://<public_host>:<proxy port>`` (a browser's view of it)."""
    upstream = upstream or Upstream()
    if upstream._runner is None:
        await upstream.start()
    tmp_path.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240  # a local temp dir
    keyset = keyset or generate_keyset("k-sec-1")
    env = {"SIDECAR_KEYSET": keyset.to_json(), "SIDECAR_ADMIN_KEY": ADMIN_KEY}
    store_url = store_url or f"sqlite:///{tmp_path}/sidecar.db"
    clock = Clock()
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        for _attempt in range(5):
            admin_port, proxy_port = free_port(), free_port()
            doc = config_doc(
                upstream=upstream.url,
                store_url=store_url,
                admin_port=admin_port,
                proxy_port=proxy_port,
            )
            if public_host is not None:
                doc["public_url"] = f"http://{public_host}:{proxy_port}"
            config = parse_config(
                yaml.safe_dump(deep_merge(doc, overrides or {})), env=env, base_dir=tmp_path
            )
            store = open_store(config.store.url, prefix=config.store.key_prefix)
            services = Services(config=config, store=store, codec=TokenCodec(keyset), clock=clock)
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
        try:
            yield Sidecar(config, services, clock, upstream, keyset, http, admin_port, proxy_port)
        finally:
            stop.set()
            await task
            await upstream.stop()


# -- raw HTTP, for what a well-behaved client library would never send -------------------


@dataclass(frozen=True, slots=True)
class RawResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    responses: int  # how many status lines came back on the connection
    raw: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


async def raw_http(
    port: int,
    data: bytes,
    *,
    quiet: float = 3.0,
    source: str | None = None,
    first_only: bool = False,
) -> RawResponse:
    """Send ``data`` as-is on a fresh connection (from ``source``, if given); read until
    the server closes or sends nothing for ``quiet`` seconds — or, with ``first_only``,
    until one response with a ``Content-Length`` is complete."""
    local = (source, 0) if source else None
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=local)
    chunks: list[bytes] = []
    try:
        writer.write(data)
        await writer.drain()
        with contextlib.suppress(TimeoutError, ConnectionError):
            while True:
                chunk = await asyncio.wait_for(reader.read(65536), quiet)
                if not chunk:
                    break
                chunks.append(chunk)
                if first_only and _complete(b"".join(chunks)):
                    break
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return parse_raw(b"".join(chunks))


def _complete(raw: bytes) -> bool:
    head, sep, body = raw.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    return bool(sep) and length is not None and len(body) >= int(length.group(1))


def parse_raw(raw: bytes) -> RawResponse:
    if not raw:
        return RawResponse(0, (), b"", 0, raw)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = tuple(
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])
    )
    responses = raw.count(b"HTTP/1.1 ") + raw.count(b"HTTP/1.0 ")
    return RawResponse(status, headers, body, responses, raw)
