"""Auth links on a served sidecar: :class:`Env` (the admin port's client and helpers to mint,
create users and follow action links as a browser would) and :func:`env_for`, which the
``env`` fixture in ``tests/conftest.py`` uses with the default :data:`LINKS`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from aiohttp import ClientResponse, ClientSession

from sidecar.store.base import User
from tests.harness.config import ADMIN_KEY, make_config
from tests.harness.served import Sidecar, running_sidecar
from tests.harness.upstream import Upstream

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
LINKS: dict[str, object] = {
    "default_redirect": "http://app.test/home",
    "redirect_allow": ["http://app.test/**", "https://*.example.com/welcome"],
    "otp_rate": "5/15m",
    "max_otp_attempts": 5,
}


@dataclass
class Env:
    sc: Sidecar
    admin: ClientSession  # base URL = the admin port
    upstream: Upstream

    @property
    def proxy(self) -> ClientSession:
        return self.sc.client

    async def generate(self, **body: object) -> ClientResponse:
        return await self.admin.post("/admin/generate_link", json=body, headers=AUTH)

    async def link(self, **body: object) -> dict[str, str]:
        response = await self.generate(**body)
        assert response.status == 200, await response.text()
        doc: dict[str, str] = await response.json()
        return doc

    async def user(self, email: str, *, confirmed: bool = True) -> User:
        now = self.sc.clock()
        user = User(
            id=f"uid-{email}", email=email, created_at=now, confirmed_at=now if confirmed else None
        )
        await self.sc.store.create_user(user)
        return user

    async def follow(
        self, action_link: str, method: str = "GET", headers: Mapping[str, str] | None = None
    ) -> ClientResponse:
        """Request the action link on the proxy exactly as a browser would (no redirects)."""
        parts = urlsplit(action_link)
        assert f"{parts.scheme}://{parts.netloc}" == "http://app.test"
        return await self.proxy.request(
            method, f"{parts.path}?{parts.query}", allow_redirects=False, headers=headers
        )


async def env_for(tmp_path: Path, upstream: Upstream, **links: object) -> AsyncIterator[Env]:
    """Serve a sidecar with :data:`LINKS` (``links`` merged in) in front of ``upstream``."""
    config = make_config(tmp_path, upstream.url, links={**LINKS, **links})
    async with (
        running_sidecar(tmp_path, config=config, upstream=upstream) as sc,
        ClientSession(base_url=sc.admin_url) as admin,
    ):
        yield Env(sc, admin, upstream)


def token_of(action_link: str) -> str:
    return parse_qs(urlsplit(action_link).query)["token"][0]
