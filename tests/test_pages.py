"""Failure, confirm and logout pages over a real socket: HTML or JSON, never cached."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from sidecar.config.pages import MESSAGES
from sidecar.web import pages

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]


@pytest.fixture
async def client(aiohttp_client: ClientFactory) -> Client:
    async def fail(request: web.Request) -> web.StreamResponse:
        retry = request.query.get("retry")
        return pages.failure(
            request,
            int(request.query["status"]),
            request.query["reason"],
            retry_after=int(retry) if retry else None,
        )

    async def confirm(request: web.Request) -> web.StreamResponse:
        return pages.confirm_page(request)

    async def logout(request: web.Request) -> web.StreamResponse:
        return pages.logout_page(request)

    app = web.Application()
    app.router.add_get("/fail", fail)
    app.router.add_get("/confirm", confirm)
    app.router.add_get("/logout", logout)
    return await aiohttp_client(app)


@pytest.mark.parametrize(
    ("accept", "json"),
    [
        ("", False),
        ("text/html", False),
        ("*/*", False),
        ("application/json", True),
        ("application/problem+json", True),
        ("text/html, application/json;q=0.9", False),
        ("text/html;q=0.5, application/json", True),
        ("application/json, */*", True),
        ("application/json;q=0, text/html", False),
        ("application/json;q=abc", False),
        ("text/html, application/json", True),
    ],
)
async def test_json_only_when_preferred(client: Client, accept: str, json: bool) -> None:
    response = await client.get(
        "/fail?status=410&reason=used", headers={"Accept": accept} if accept else {}
    )
    assert response.status == 410
    assert response.content_type == ("application/json" if json else "text/html")


async def test_json_shape(client: Client) -> None:
    response = await client.get(
        "/fail?status=429&reason=rate_limited&retry=30", headers={"Accept": "application/json"}
    )
    assert response.status == 429
    assert response.headers["Retry-After"] == "30"
    assert await response.json() == {
        "code": 429,
        "error": "rate_limited",
        "message": MESSAGES["rate_limited"],
    }


@pytest.mark.parametrize(
    ("status", "reason", "text"),
    [
        (401, "tampered", "not valid"),
        (410, "expired", "expired"),
        (410, "used", "already been used"),
        (410, "revoked", "withdrawn"),
        (503, "store_unavailable", "temporarily unavailable"),
        (503, "burn_unconfirmed", "this attempt used it up"),
        (502, "bad_gateway", "not reachable"),
        (504, "gateway_timeout", "too long"),
        (418, "<script>", "I&#x27;m a Teapot."),
    ],
)
async def test_html_pages_say_what_happened(
    client: Client, status: int, reason: str, text: str
) -> None:
    response = await client.get("/fail", params={"status": str(status), "reason": reason})
    assert response.status == status
    body = await response.text()
    assert text in body
    assert "<script>" not in body  # the reason code is never echoed


@pytest.mark.parametrize("path", ["/fail?status=401&reason=malformed", "/confirm", "/logout"])
async def test_every_page_is_uncached_unframed_and_inert(client: Client, path: str) -> None:
    response = await client.get(path)
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert "<script" not in await response.text()


async def test_button_pages_post_to_their_own_url(client: Client) -> None:
    for path in ("/confirm", "/logout"):
        body = await (await client.get(path)).text()
        assert '<form method="post">' in body
        assert "action=" not in body
