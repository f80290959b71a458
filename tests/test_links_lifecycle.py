"""Auth-link lifecycles across links: what one redemption does to the user's other links,
and ``generate_link`` for a new address under concurrency (SQLite and a real Redis)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientSession

from sidecar.store.base import Store
from sidecar.store.redis import RedisStore
from sidecar.store.sqlite import SQLiteStore
from tests.harness import Upstream, make_config, running_sidecar
from tests.harness.links import AUTH, LINKS, Env


async def test_email_change_kills_links_sent_to_the_old_address(env: Env) -> None:
    await env.user("old@example.com")
    magic = await env.link(type="magiclink", email="old@example.com")
    recovery = await env.link(type="recovery", email="old@example.com")
    change = await env.link(type="email_change", email="old@example.com", new_email="new@x.org")
    assert (await env.follow(change["action_link"])).status == 303

    for doc in (magic, recovery):
        response = await env.follow(doc["action_link"], headers={"Accept": "application/json"})
        assert response.status == 410, await response.text()
        assert (await response.json())["error"] == "revoked"
        assert "Set-Cookie" not in response.headers
    # Their OTPs and hashed tokens are dead too (the OTP now answers like an unknown code).
    otp = await env.proxy.post(
        "/_sidecar/verify",
        json={"type": "magiclink", "email": "new@x.org", "token": magic["email_otp"]},
    )
    assert otp.status == 401
    by_hash = await env.proxy.post(
        "/_sidecar/verify", json={"type": "recovery", "token_hash": recovery["hashed_token"]}
    )
    assert by_hash.status == 401


async def test_recovery_kills_the_other_pending_links(env: Env) -> None:
    await env.user("r@example.com")
    magic = await env.link(type="magiclink", email="r@example.com")
    change = await env.link(type="email_change", email="r@example.com", new_email="n@x.org")
    recovery = await env.link(type="recovery", email="r@example.com")
    response = await env.proxy.post(
        "/_sidecar/verify",
        json={"type": "recovery", "token_hash": recovery["hashed_token"], "password": "pw-new-12"},
    )
    assert response.status == 200, await response.text()
    for doc in (magic, change):
        failed = await env.follow(doc["action_link"], headers={"Accept": "application/json"})
        assert failed.status == 410
        assert (await failed.json())["error"] == "revoked"
    user = await env.sc.store.get_user_by_email("r@example.com")
    assert user is not None  # the change never happened


async def test_a_magiclink_leaves_the_other_links_alone(env: Env) -> None:
    await env.user("m@example.com")
    recovery = await env.link(type="recovery", email="m@example.com")
    magic = await env.link(type="magiclink", email="m@example.com")
    assert (await env.follow(magic["action_link"])).status == 303
    assert (await env.follow(recovery["action_link"])).status == 303


async def test_refer_links_outlive_an_email_change(env: Env) -> None:
    user = await env.user("f@example.com")
    token, _ = env.sc.seal(user=user.id)
    change = await env.link(type="email_change", email="f@example.com", new_email="g@x.org")
    assert (await env.follow(change["action_link"])).status == 303
    response = await env.proxy.get(f"/?refer={token}", allow_redirects=False)
    assert response.status == 303


# -- generate_link for a new address, 20 at once ------------------------------------------

CONCURRENT = 20
CREATING = [
    ("magiclink", {}),
    ("signup", {"password": "secret-pass-1"}),
    ("invite", {"data": {"plan": "pro"}}),
]


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        yield SQLiteStore(str(tmp_path / "sidecar.db"))
    else:
        url: str = request.getfixturevalue("redis_url")
        yield RedisStore(url, prefix=f"g{uuid.uuid4().hex[:12]}:")


@pytest.mark.parametrize(("kind", "extra"), CREATING)
async def test_concurrent_generate_for_a_new_address_is_idempotent(
    tmp_path: Path, upstream: Upstream, any_store: Store, kind: str, extra: dict[str, object]
) -> None:
    config = make_config(tmp_path, upstream.url, links={**LINKS, "create_user_on_magiclink": True})
    async with (
        running_sidecar(tmp_path, config=config, store=any_store, upstream=upstream) as sc,
        ClientSession(base_url=sc.admin_url) as admin,
    ):
        body = {"type": kind, "email": "fresh@example.com", **extra}
        responses = await asyncio.gather(
            *(
                admin.post("/admin/generate_link", json=body, headers=AUTH)
                for _ in range(CONCURRENT)
            )
        )
        statuses = [r.status for r in responses]
        texts = [await r.text() for r in responses]
        assert statuses == [200] * CONCURRENT, texts
        user = await sc.store.get_user_by_email("fresh@example.com")
        assert user is not None
        # One user: every answer names it (GoTrue puts the user's fields beside the link).
        assert {json.loads(text)["id"] for text in texts} == {user.id}
        assert await sc.store.get_link(user.id, kind) is not None


# -- the request shapes @supabase/auth-js sends ---------------------------------------------


async def test_redirect_to_from_the_query_and_redirect_to_in_the_body(env: Env) -> None:
    await env.user("q@example.com")
    target = "http://app.test/after"
    body = {"type": "magiclink", "email": "q@example.com", "redirectTo": target}
    response = await env.admin.post(
        "/admin/generate_link", params={"redirect_to": target}, json=body, headers=AUTH
    )
    assert response.status == 200, await response.text()
    assert (await response.json())["redirect_to"] == target
    only_query = await env.admin.post(
        "/admin/generate_link",
        params={"redirect_to": target},
        json={"type": "magiclink", "email": "q@example.com"},
        headers=AUTH,
    )
    assert (await only_query.json())["redirect_to"] == target
    disagree = await env.admin.post(
        "/admin/generate_link",
        params={"redirect_to": "http://app.test/elsewhere"},
        json=body,
        headers=AUTH,
    )
    assert disagree.status == 400
    assert (await disagree.json())["msg"] == "Invalid redirect_to"


@pytest.mark.parametrize("kind", ["email_change_current", "email_change_new"])
async def test_auth_js_email_change_types_are_the_one_email_change(env: Env, kind: str) -> None:
    await env.user("cur@example.com")
    doc = await env.link(type=kind, email="cur@example.com", new_email="next@example.com")
    assert doc["verification_type"] == "email_change"
    assert (await env.follow(doc["action_link"])).status == 303
    assert await env.sc.store.get_user_by_email("next@example.com") is not None


def test_a_non_ascii_letter_never_folds_into_an_ascii_address() -> None:
    from sidecar.links.request import normalise_email

    assert normalise_email("\u212aate@example.com") is None  # KELVIN SIGN lowers to "k"
    assert normalise_email(" Kate@Example.com ") == "kate@example.com"


# -- supabase-js's `type: "email"` on POST /verify ----------------------------------------


@pytest.mark.parametrize("kind", ["magiclink", "signup"])
async def test_type_email_verifies_a_magiclink_or_signup_code(env: Env, kind: str) -> None:
    await env.user("e@example.com", confirmed=False)
    extra = {"password": "secret-pass-1"} if kind == "signup" else {}
    doc = await env.link(type=kind, email="e@example.com", **extra)
    response = await env.proxy.post(
        "/_sidecar/verify",
        json={"type": "email", "email": "E@example.com", "token": doc["email_otp"]},
    )
    assert response.status == 200, await response.text()
    assert (await response.json())["verification_type"] == kind


async def test_type_email_by_token_hash_and_not_for_other_types(env: Env) -> None:
    await env.user("h@example.com")
    magic = await env.link(type="magiclink", email="h@example.com")
    recovery = await env.link(type="recovery", email="h@example.com")
    refused = await env.proxy.post(
        "/_sidecar/verify", json={"type": "email", "token_hash": recovery["hashed_token"]}
    )
    assert refused.status == 401
    wrong = await env.proxy.post(
        "/_sidecar/verify", json={"type": "email", "email": "h@example.com", "token": "000000"}
    )
    assert wrong.status == 401
    user = await env.sc.store.get_user_by_email("h@example.com")
    assert user is not None
    link = await env.sc.store.get_link(user.id, "magiclink")
    assert link is not None
    assert link.failed_attempts == (0 if magic["email_otp"] == "000000" else 1)
    accepted = await env.proxy.post(
        "/_sidecar/verify", json={"type": "email", "token_hash": magic["hashed_token"]}
    )
    assert accepted.status == 200
