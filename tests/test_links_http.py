"""Auth links over real sockets: the admin port mints, the proxy port verifies, the upstream sees.

One served sidecar (tests/harness: both listeners, real SQLite store, injected clock); a
recording upstream shows what the unmodified app receives after each verification.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
from aiohttp import ClientResponse

from sidecar.links.passwords import verify_password
from tests.harness import Upstream
from tests.harness.links import AUTH, Env, env_for, token_of

JSON = {"Accept": "application/json"}
TYPE_ERROR = {
    "code": 400,
    "error_code": "validation_failed",
    "msg": "Invalid link type",
    "details": "Link type must be one of: signup, magiclink, recovery, invite, email_change",
}


async def assert_failure(
    response: ClientResponse, status: int, reason: str, error_code: str | None = None
) -> None:
    """A JSON failure: ``error_code`` (GoTrue's) only where given — ``POST <prefix>/verify``,
    which auth-js reads — and absent from every other proxy-side failure."""
    assert response.status == status, await response.text()
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "Set-Cookie" not in response.headers
    doc = await response.json()
    assert doc["code"] == status
    assert doc["error"] == reason
    assert isinstance(doc["message"], str)
    assert doc.get("error_code") == error_code


async def assert_reaches_upstream_as(env: Env, user_id: str, path: str = "/dashboard") -> None:
    before = len(env.upstream.requests)
    response = await env.proxy.get(path)
    assert response.status == 200, await response.text()
    assert len(env.upstream.requests) == before + 1
    seen = env.upstream.last
    assert seen.values("X-Forwarded-User") == [user_id]
    assert seen.values("X-Forwarded-Role") == ["Authenticated"]
    assert "sidecar_session" not in ";".join(seen.values("Cookie"))


# -- happy paths: every type, mint → verify → session → upstream ----------------------------

SEED_BODIES: list[tuple[str, dict[str, object], str]] = [
    (
        "magiclink",
        {"email": "user@example.com", "redirect_to": "http://app.test/dashboard"},
        "http://app.test/dashboard",
    ),
    (
        "recovery",
        {"email": "user@example.com", "redirect_to": "http://app.test/reset-password"},
        "http://app.test/reset-password",
    ),
    (
        "signup",
        {
            "email": "newuser@example.com",
            "password": "s3cure-pass",
            "redirect_to": "https://team.example.com/welcome",
        },
        "https://team.example.com/welcome",
    ),
    (
        "invite",
        {
            "email": "invite@example.com",
            "data": {"first_name": "John", "last_name": "Doe", "role": "team_member"},
            "redirect_to": "http://app.test/setup",
        },
        "http://app.test/setup",
    ),
    (
        "email_change",
        {
            "email": "user@example.com",
            "new_email": "newemail@example.com",
            "redirect_to": "http://app.test/profile",
        },
        "http://app.test/profile",
    ),
]


@pytest.mark.parametrize(("kind", "body", "landing"), SEED_BODIES)
async def test_every_type_from_mint_to_upstream(
    env: Env, kind: str, body: dict[str, object], landing: str
) -> None:
    await env.user("user@example.com", confirmed=False)
    doc = await env.link(type=kind, **body)
    assert set(doc) == {
        "action_link",
        "email_otp",
        "hashed_token",
        "verification_type",
        "redirect_to",
        # the user's fields beside the link's, as GoTrue answers
        *("id", "email", "created_at", "confirmed_at", "email_confirmed_at", "invited_at"),
        "user_metadata",
    }
    assert doc["verification_type"] == kind
    assert doc["redirect_to"] == landing
    assert re.fullmatch(r"[0-9]{6}", doc["email_otp"])
    assert re.fullmatch(r"[0-9a-f]{64}", doc["hashed_token"])
    assert doc["action_link"].startswith("http://app.test/_sidecar/verify?token=")
    assert f"&type={kind}&redirect_to={quote(landing, safe='')}" in doc["action_link"]

    response = await env.follow(doc["action_link"])
    assert response.status == 303, await response.text()
    assert response.headers["Location"] == landing
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    cookie = response.cookies["sidecar_session"]
    assert cookie["httponly"]
    assert cookie["samesite"] == "Lax"

    email = str(body.get("new_email") or body["email"])
    user = await env.sc.store.get_user_by_email(email)
    assert user is not None
    assert user.confirmed_at == env.sc.clock()
    await assert_reaches_upstream_as(env, user.id)
    session = await (await env.proxy.get("/_sidecar/session")).json()
    assert session["email"] == email
    assert session["role"] == "Authenticated"


async def test_identity_headers_carry_the_verified_email(
    tmp_path: Path, upstream: Upstream
) -> None:
    # The "Reader" test role sends X-Auth-Email: {email}.
    async for env in env_for(tmp_path, upstream, role="Reader"):
        await env.user("old@example.com")
        doc = await env.link(
            type="email_change", email="old@example.com", new_email="new@example.com"
        )
        assert (await env.follow(doc["action_link"])).status == 303
        await env.proxy.get("/docs/x")
        assert env.upstream.last.values("X-Auth-Email") == ["new@example.com"]
        assert env.upstream.last.values("X-Forwarded-User") == ["uid-old@example.com"]


async def test_default_redirect_when_absent(env: Env) -> None:
    await env.user("a@example.com")
    doc = await env.link(type="magiclink", email="a@example.com")
    assert doc["redirect_to"] == "http://app.test/home"
    assert "redirect_to=http%3A%2F%2Fapp.test%2Fhome" in doc["action_link"]
    assert (await env.follow(doc["action_link"])).headers["Location"] == "http://app.test/home"


async def test_invite_accepts_a_password_with_the_post(env: Env) -> None:
    doc = await env.link(type="invite", email="inv@example.com")
    response = await env.proxy.post(
        "/_sidecar/verify",
        json={"type": "invite", "token_hash": doc["hashed_token"], "password": "chosen-by-user"},
    )
    assert response.status == 200, await response.text()
    user = await env.sc.store.get_user_by_email("inv@example.com")
    assert user is not None
    assert user.password_hash is not None
    assert verify_password("chosen-by-user", user.password_hash)


# -- POST <prefix>/verify (OTP and token_hash) -----------------------------------------------


async def test_otp_verification_answers_identity_json_and_sets_the_cookie(env: Env) -> None:
    await env.user("otp@example.com", confirmed=False)
    doc = await env.link(type="magiclink", email="otp@example.com")
    response = await env.proxy.post(
        "/_sidecar/verify",
        json={
            "type": "magiclink",
            "email": " OTP@Example.com",
            "token": doc["email_otp"],
            "gotrue_meta_security": {},
        },
    )
    assert response.status == 200, await response.text()
    assert response.headers["Cache-Control"] == "no-store"
    assert "sidecar_session" in response.cookies
    body = await response.json()
    assert body["verification_type"] == "magiclink"
    assert body["user"]["id"] == "uid-otp@example.com"
    assert body["user"]["email"] == "otp@example.com"
    assert body["user"]["email_confirmed_at"] is not None
    assert "password_hash" not in json.dumps(body)
    assert body["session"]["role"] == "Authenticated"
    await assert_reaches_upstream_as(env, "uid-otp@example.com")
    # The code works once, and so does the link it came with.
    again = await env.proxy.post(
        "/_sidecar/verify",
        json={"type": "magiclink", "email": "otp@example.com", "token": doc["email_otp"]},
    )
    await assert_failure(again, 401, "invalid_otp", "otp_expired")
    await assert_failure(await env.follow(doc["action_link"], headers=JSON), 410, "used")


async def test_token_hash_verification_and_recovery_password(env: Env) -> None:
    await env.user("r@example.com")
    doc = await env.link(type="recovery", email="r@example.com")
    weak = await env.proxy.post(
        "/_sidecar/verify",
        json={"type": "recovery", "token_hash": doc["hashed_token"], "password": "short"},
    )
    await assert_failure(weak, 422, "weak_password", "weak_password")
    wrong_type = await env.proxy.post(
        "/_sidecar/verify", json={"type": "magiclink", "token_hash": doc["hashed_token"]}
    )
    await assert_failure(wrong_type, 401, "invalid_link", "otp_expired")
    response = await env.proxy.post(
        "/_sidecar/verify",
        json={"type": "recovery", "token_hash": doc["hashed_token"], "password": "brand-new-pass"},
    )
    assert response.status == 200, await response.text()
    user = await env.sc.store.get_user_by_email("r@example.com")
    assert user is not None
    assert user.password_hash is not None
    assert "brand-new-pass" not in user.password_hash
    assert verify_password("brand-new-pass", user.password_hash)
    await assert_reaches_upstream_as(env, user.id)


async def test_password_change_and_email_change_end_other_sessions(env: Env) -> None:
    await env.user("s@example.com")
    first = await env.link(type="magiclink", email="s@example.com")
    old_cookie = (await env.follow(first["action_link"])).cookies["sidecar_session"].value
    doc = await env.link(type="recovery", email="s@example.com")
    response = await env.proxy.post(
        "/_sidecar/verify",
        json={
            "type": "recovery",
            "email": "s@example.com",
            "token": doc["email_otp"],
            "password": "another-pass-1",
        },
    )
    assert response.status == 200
    assert await env.sc.store.get_session(_key(old_cookie)) is None


def _key(cookie: str) -> str:
    from sidecar.session_cookies import session_key

    return session_key(cookie)


async def test_wrong_otps_lock_the_link(env: Env) -> None:
    await env.user("l@example.com")
    doc = await env.link(type="magiclink", email="l@example.com")
    wrong = "000000" if doc["email_otp"] != "000000" else "111111"
    for n in range(5):
        response = await env.proxy.post(
            "/_sidecar/verify",
            json={"type": "magiclink", "email": "l@example.com", "token": wrong},
            headers={"X-Forwarded-For": f"10.0.0.{n}"},  # not trusted: one client anyway
        )
        await assert_failure(response, 401, "invalid_otp", "otp_expired")
    # Per-email and per-client budgets are spent too (5/15m): the next guess waits.
    limited = await env.proxy.post(
        "/_sidecar/verify",
        json={"type": "magiclink", "email": "l@example.com", "token": doc["email_otp"]},
    )
    await assert_failure(limited, 429, "rate_limited", "over_request_rate_limit")
    assert 0 < int(limited.headers["Retry-After"]) <= 900
    env.sc.clock.advance(900)
    dead = await env.proxy.post(
        "/_sidecar/verify",
        json={"type": "magiclink", "email": "l@example.com", "token": doc["email_otp"]},
    )
    # Five wrong codes killed the link.
    await assert_failure(dead, 401, "invalid_otp", "otp_expired")
    await assert_failure(await env.follow(doc["action_link"], headers=JSON), 410, "revoked")
    assert env.upstream.requests == []


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"type": "magiclink"},
        {"type": "magiclink", "email": "a@example.com"},
        {"type": "magiclink", "token": "123456"},
        {"type": "magiclink", "email": "a@example.com", "token": "123456", "token_hash": "a" * 64},
        {"type": "magiclink", "email": "a@example.com", "token": 123456},
        {"type": 1, "token_hash": "a" * 64},
        {"type": "magiclink", "token_hash": "a" * 64, "redirect_to": "http://app.test/"},
        {"type": "magiclink", "token_hash": "a" * 64, "password": ["x"]},
    ],
)
async def test_bad_verify_bodies(env: Env, body: object) -> None:
    response = await env.proxy.post("/_sidecar/verify", json=body)
    await assert_failure(response, 400, "bad_request", "validation_failed")


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b"{not json", "application/json"),
        (b'{"type": "magiclink", "type": "signup"}', "application/json"),
        (b'{"type": NaN}', "application/json"),
        (b"type=magiclink", "application/x-www-form-urlencoded"),
        (b"\xff\xfe", "application/json"),
        (b"[1, 2]", "application/json"),
    ],
)
async def test_undecodable_verify_bodies(env: Env, data: bytes, content_type: str) -> None:
    """Not a JSON object: GoTrue's ``bad_json``."""
    response = await env.proxy.post(
        "/_sidecar/verify", data=data, headers={"Content-Type": content_type}
    )
    await assert_failure(response, 400, "bad_request", "bad_json")


async def test_malformed_fields_are_precise(env: Env) -> None:
    cases = [
        ({"type": "bogus", "token_hash": "a" * 64}, 401, "malformed"),
        ({"type": "magiclink", "token_hash": "nothex"}, 401, "malformed"),
        ({"type": "magiclink", "token_hash": "a" * 64}, 401, "invalid_link"),
        ({"type": "magiclink", "email": "not-an-email", "token": "123456"}, 401, "malformed"),
        (
            {"type": "magiclink", "email": "nobody@example.com", "token": "123456"},
            401,
            "invalid_otp",
        ),
    ]
    for body, status, reason in cases:
        response = await env.proxy.post("/_sidecar/verify", json=body)
        await assert_failure(response, status, reason, "otp_expired")


# -- GET <prefix>/verify failures ---------------------------------------------------------


async def test_one_time_and_newer_link_kills_older(env: Env) -> None:
    await env.user("a@example.com")
    old = await env.link(type="magiclink", email="a@example.com")
    new = await env.link(type="magiclink", email="a@example.com")
    await assert_failure(await env.follow(old["action_link"], headers=JSON), 410, "superseded")
    assert (await env.follow(new["action_link"])).status == 303
    await assert_failure(await env.follow(new["action_link"], headers=JSON), 410, "used")
    await assert_failure(await env.follow(old["action_link"], headers=JSON), 410, "superseded")


async def test_concurrent_clicks_redeem_once(env: Env) -> None:
    await env.user("a@example.com")
    doc = await env.link(type="magiclink", email="a@example.com")
    responses = await asyncio.gather(
        *(env.follow(doc["action_link"], headers=JSON) for _ in range(8))
    )
    assert sorted(r.status for r in responses) == [303] + [410] * 7
    for response in responses:
        if response.status == 410:
            assert (await response.json())["error"] == "used"


async def test_store_down_fails_closed(env: Env) -> None:
    await env.user("a@example.com")
    doc = await env.link(type="magiclink", email="a@example.com")
    await env.sc.store.close()
    await assert_failure(
        await env.follow(doc["action_link"], headers=JSON), 503, "store_unavailable"
    )
    response = await env.proxy.post(
        "/_sidecar/verify", json={"type": "magiclink", "token_hash": doc["hashed_token"]}
    )
    await assert_failure(response, 503, "store_unavailable", "service_unavailable")
    response = await env.proxy.post(
        "/_sidecar/verify",
        json={"type": "magiclink", "email": "a@example.com", "token": doc["email_otp"]},
    )
    await assert_failure(response, 503, "store_unavailable", "service_unavailable")


async def test_head_never_consumes(env: Env) -> None:
    await env.user("a@example.com")
    doc = await env.link(type="magiclink", email="a@example.com")
    for _ in range(3):
        head = await env.follow(doc["action_link"], method="HEAD")
        assert head.status == 200
        assert "Set-Cookie" not in head.headers
        assert head.headers["Cache-Control"] == "no-store"
    assert (await env.follow(doc["action_link"])).status == 303


async def test_redirect_to_in_the_url_cannot_be_swapped(env: Env) -> None:
    await env.user("a@example.com")
    doc = await env.link(type="magiclink", email="a@example.com", redirect_to="http://app.test/x")
    token = token_of(doc["action_link"])
    for evil in ("https://evil.com/", "http://app.test/y", "//evil.com"):
        query = urlencode({"token": token, "type": "magiclink", "redirect_to": evil})
        response = await env.proxy.get(
            f"/_sidecar/verify?{query}", headers=JSON, allow_redirects=False
        )
        await assert_failure(response, 400, "redirect_mismatch")
    # Leaving it out is fine: the redirect comes from the token.
    query = urlencode({"token": token, "type": "magiclink"})
    response = await env.proxy.get(f"/_sidecar/verify?{query}", allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == "http://app.test/x"


async def test_link_failures(env: Env) -> None:
    await env.user("a@example.com")
    doc = await env.link(type="magiclink", email="a@example.com")
    token = token_of(doc["action_link"])
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    cases = [
        ("", 401, "malformed"),
        (f"token={token}", 401, "malformed"),  # no type
        (f"token={token}&type=recovery", 401, "malformed"),
        (f"token={token}&type=refer", 401, "malformed"),
        (f"token={token}&token={token}&type=magiclink", 401, "malformed"),
        (f"token={tampered}&type=magiclink", 401, "tampered"),
        ("token=garbage&type=magiclink", 401, "malformed"),
    ]
    for query, status, reason in cases:
        response = await env.proxy.get(
            f"/_sidecar/verify?{query}", headers=JSON, allow_redirects=False
        )
        await assert_failure(response, status, reason)
    env.sc.clock.advance(3600)
    await assert_failure(await env.follow(doc["action_link"], headers=JSON), 410, "expired")
    assert env.upstream.requests == []


async def test_a_refer_token_is_not_an_auth_link(env: Env) -> None:
    token, _ = env.sc.seal(user="u1")
    response = await env.proxy.get(
        f"/_sidecar/verify?token={token}&type=magiclink", headers=JSON, allow_redirects=False
    )
    await assert_failure(response, 401, "malformed")


async def test_revoked_through_the_admin_api(env: Env) -> None:
    await env.user("a@example.com")
    doc = await env.link(type="magiclink", email="a@example.com")
    token_id = env.sc.services.codec.open(token_of(doc["action_link"]), env.sc.clock()).token_id
    revoke = await env.admin.post(f"/tokens/{token_id}/revoke", headers=AUTH)
    assert revoke.status == 200
    await assert_failure(await env.follow(doc["action_link"], headers=JSON), 410, "revoked")


async def test_failure_page_is_html_for_browsers(env: Env) -> None:
    response = await env.proxy.get("/_sidecar/verify?token=x&type=magiclink", allow_redirects=False)
    assert response.status == 401
    assert response.content_type == "text/html"
    assert "x&amp;type" not in await response.text()


async def test_other_methods(env: Env) -> None:
    response = await env.proxy.put("/_sidecar/verify", headers=JSON)
    assert response.status == 405
    assert response.headers["Allow"] == "GET, HEAD, POST"


async def test_email_change_to_a_taken_address_is_409(env: Env) -> None:
    await env.user("a@example.com")
    doc = await env.link(type="email_change", email="a@example.com", new_email="b@example.com")
    await env.user("b@example.com")
    await assert_failure(await env.follow(doc["action_link"], headers=JSON), 409, "email_exists")


async def test_failed_link_redemptions_are_rate_limited(env: Env) -> None:
    limit = env.sc.config.proxy.failed_redeem_rate.limit
    for _ in range(limit):
        response = await env.proxy.get("/_sidecar/verify?token=x&type=magiclink", headers=JSON)
        await assert_failure(response, 401, "malformed")
    response = await env.proxy.get("/_sidecar/verify?token=x&type=magiclink", headers=JSON)
    await assert_failure(response, 429, "rate_limited")
    assert int(response.headers["Retry-After"]) > 0


async def test_refer_and_auth_link_failures_share_one_budget(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """One failure path: a client's failed refer links and failed auth links count
    against the same ``proxy.failed_redeem_rate`` and are audited alike."""
    limit = env.sc.config.proxy.failed_redeem_rate.limit
    with caplog.at_level(logging.INFO, logger="sidecar.audit"):
        for i in range(limit):
            if i % 2:
                response = await env.proxy.get("/app?refer=not-a-token", headers=JSON)
            else:
                response = await env.proxy.get(
                    "/_sidecar/verify?token=x&type=magiclink", headers=JSON
                )
            await assert_failure(response, 401, "malformed")
    failures = [json.loads(r.getMessage()) for r in caplog.records if r.name == "sidecar.audit"]
    assert [(f["event"], f["reason"]) for f in failures] == [("redeem_failed", "malformed")] * limit
    assert len({f["client"] for f in failures}) == 1
    over = [
        await env.proxy.get("/app?refer=not-a-token", headers=JSON),
        await env.proxy.get("/_sidecar/verify?token=x&type=magiclink", headers=JSON),
    ]
    for response in over:
        await assert_failure(response, 429, "rate_limited")


async def test_confirm_role_shows_a_button_and_only_the_post_redeems(
    tmp_path: Path, upstream: Upstream
) -> None:
    async for env in env_for(tmp_path, upstream, role="Admin"):  # Admin: redeem: confirm
        await env.user("c@example.com")
        doc = await env.link(type="magiclink", email="c@example.com")
        for _ in range(2):
            page = await env.follow(doc["action_link"])
            assert page.status == 200
            assert "Set-Cookie" not in page.headers
            assert '<form method="post">' in await page.text()
            assert token_of(doc["action_link"]) not in await page.text()
        response = await env.follow(doc["action_link"], method="POST")
        assert response.status == 303
        assert response.headers["Location"] == "http://app.test/home"
        assert "sidecar_session" in response.cookies
        await assert_failure(await env.follow(doc["action_link"], headers=JSON), 410, "used")


# -- POST /admin/generate_link errors: exact status and body -------------------------------


GENERATE_ERRORS: list[tuple[dict[str, object], int, dict[str, object]]] = [
    ({"type": "bogus", "email": "a@example.com"}, 400, TYPE_ERROR),
    ({"email": "a@example.com"}, 400, TYPE_ERROR),
    (
        {"type": "magiclink", "email": "a@example.com", "userId": "x"},
        400,
        {
            "code": 400,
            "error_code": "validation_failed",
            "msg": "Invalid request",
            "details": "unknown field(s): userId; allowed: "
            "type, email, redirect_to, redirectTo, data, password, new_email",
        },
    ),
    (
        {"type": "magiclink"},
        400,
        {
            "code": 400,
            "error_code": "email_address_invalid",
            "msg": "Invalid email",
            "details": "email is required",
        },
    ),
    (
        {"type": "magiclink", "email": "nope"},
        400,
        {
            "code": 400,
            "error_code": "email_address_invalid",
            "msg": "Invalid email",
            "details": "Unable to validate email address: invalid format",
        },
    ),
    (
        {"type": "magiclink", "email": "a@example.com", "redirect_to": "https://evil.com/"},
        400,
        {
            "code": 400,
            "error_code": "validation_failed",
            "msg": "Invalid redirect_to",
            "details": "redirect_to is not in the allow-list (links.redirect_allow)",
        },
    ),
    (
        {"type": "magiclink", "email": "a@example.com", "redirect_to": "https://u@app.test/"},
        400,
        {
            "code": 400,
            "error_code": "validation_failed",
            "msg": "Invalid redirect_to",
            "details": "redirect_to must not contain user info (@)",
        },
    ),
    (
        {"type": "magiclink", "email": "nobody@example.com"},
        404,
        {
            "code": 404,
            "error_code": "user_not_found",
            "msg": "User not found",
            "details": "no user has this email; magiclink needs one",
        },
    ),
    (
        {"type": "recovery", "email": "nobody@example.com"},
        404,
        {
            "code": 404,
            "error_code": "user_not_found",
            "msg": "User not found",
            "details": "no user has this email; recovery needs one",
        },
    ),
    (
        {"type": "signup", "email": "taken@example.com", "password": "long-enough"},
        422,
        {
            "code": 422,
            "error_code": "user_already_exists",
            "msg": "User already registered",
            "details": "a confirmed user has this email",
        },
    ),
    (
        {"type": "invite", "email": "taken@example.com"},
        422,
        {
            "code": 422,
            "error_code": "user_already_exists",
            "msg": "User already registered",
            "details": "a confirmed user has this email",
        },
    ),
    (
        {"type": "signup", "email": "new@example.com"},
        422,
        {
            "code": 422,
            "error_code": "weak_password",
            "msg": "Signup requires a valid password",
            "details": "send password (at least 8 characters)",
            "weak_password": {"reasons": ["length"]},
        },
    ),
    (
        {"type": "signup", "email": "new@example.com", "password": "1234567"},
        422,
        {
            "code": 422,
            "error_code": "weak_password",
            "msg": "Password should be at least 8 characters",
            "details": "weak_password: choose a longer password",
            "weak_password": {"reasons": ["length"]},
        },
    ),
    (
        {"type": "email_change", "email": "taken@example.com"},
        422,
        {
            "code": 422,
            "error_code": "validation_failed",
            "msg": "No email change pending",
            "details": "send new_email with the new address (email is the current address)",
        },
    ),
]


@pytest.mark.parametrize(("body", "status", "expected"), GENERATE_ERRORS)
async def test_generate_link_errors(
    env: Env, body: dict[str, object], status: int, expected: Mapping[str, object]
) -> None:
    await env.user("taken@example.com")
    response = await env.generate(**body)
    assert response.status == status
    assert await response.json() == expected
    assert await env.sc.store.get_user_by_email("new@example.com") is None


@pytest.mark.parametrize(
    ("data", "content_type", "details"),
    [
        (b"{", "application/json", "the body is not valid JSON"),
        (b"[]", "application/json", "the body must be a JSON object"),
        (
            b'{"type": "magiclink", "type": "signup"}',
            "application/json",
            "the body has duplicate keys",
        ),
        (
            b'{"type": Infinity}',
            "application/json",
            "the body contains Infinity, which is not JSON",
        ),
        (
            b"type=magiclink",
            "application/x-www-form-urlencoded",
            "expected Content-Type: application/json",
        ),
    ],
)
async def test_generate_link_bad_bodies(
    env: Env, data: bytes, content_type: str, details: str
) -> None:
    response = await env.admin.post(
        "/admin/generate_link", data=data, headers={**AUTH, "Content-Type": content_type}
    )
    assert response.status == 400
    assert await response.json() == {
        "code": 400,
        "error_code": "bad_json",
        "msg": "Invalid request",
        "details": details,
    }


async def test_generate_link_needs_the_admin_key(env: Env) -> None:
    body = {"type": "magiclink", "email": "a@example.com"}
    missing = await env.admin.post("/admin/generate_link", json=body)
    assert missing.status == 401
    assert await missing.json() == {
        "code": 401,
        "error_code": "no_authorization",
        "msg": "Unauthorized",
        "details": "missing admin key: send Authorization: Bearer <key>",
    }
    wrong = await env.admin.post(
        "/admin/generate_link", json=body, headers={"Authorization": "Bearer " + "x" * 40}
    )
    assert wrong.status == 403
    assert await wrong.json() == {
        "code": 403,
        "error_code": "not_admin",
        "msg": "Forbidden",
        "details": "wrong admin key",
    }
    # The Unqork-style route keeps its own {code, message} shape.
    refer = await env.admin.post("/referstring", json={"userId": "u"})
    assert await refer.json() == {
        "code": 401,
        "error_code": "no_authorization",
        "message": "missing admin key: send Authorization: Bearer <key>",
    }


async def test_secrets_never_logged(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await env.user("a@example.com")
    doc = await env.link(type="magiclink", email="a@example.com")
    otp_doc = await env.link(type="recovery", email="a@example.com")
    await env.follow(doc["action_link"])
    await env.proxy.post(
        "/_sidecar/verify",
        json={"type": "recovery", "email": "a@example.com", "token": otp_doc["email_otp"]},
    )
    events = [json.loads(r.getMessage()) for r in caplog.records if r.name == "sidecar.audit"]
    assert [e["event"] for e in events if e["event"] in ("mint", "redeem")] == [
        "mint",
        "mint",
        "redeem",
        "redeem",
    ]
    assert {e["kind"] for e in events if e["event"] == "mint"} == {"magiclink", "recovery"}
    text = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (
        token_of(doc["action_link"]),
        doc["hashed_token"],
        token_of(otp_doc["action_link"]),
        otp_doc["hashed_token"],
    ):
        assert secret not in text
    # Digits may occur inside timestamps; the code itself must never stand alone.
    assert not re.search(rf"(?<![0-9]){otp_doc['email_otp']}(?![0-9])", text)
