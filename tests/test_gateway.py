"""The proxy listener over real sockets: redeem → cookie → 303 → forwarded with identity.

A recording upstream (tests/harness/upstream.py) shows exactly what the unmodified app receives.
Time is injected through ``Services.clock``; nothing here sleeps.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sidecar.store.base import TokenState
from sidecar.tokens.codec import Claims, TokenCodec
from sidecar.tokens.keys import generate_keyset
from tests.harness import Sidecar, Upstream, make_config, raw_request, running_sidecar

JSON = {"Accept": "application/json"}


@pytest.fixture
async def sidecar(tmp_path: Path, upstream: Upstream) -> AsyncIterator[Sidecar]:
    async with running_sidecar(
        tmp_path, config=make_config(tmp_path, upstream.url), upstream=upstream
    ) as sc:
        yield sc


async def _failure(sc: Sidecar, url: str, status: int, reason: str) -> None:
    response = await sc.client.get(url, headers=JSON, allow_redirects=False)
    assert response.status == status
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "Set-Cookie" not in response.headers
    doc = await response.json()
    assert doc["code"] == status
    assert doc["error"] == reason


# -- redemption ----------------------------------------------------------------------
async def test_full_flow_redeem_cookie_redirect_forward(
    sidecar: Sidecar, upstream: Upstream
) -> None:
    token, _ = sidecar.seal(user="alice", module="5e9f01", params={"tenant": "acme"})
    response = await sidecar.client.get(
        f"/app/page?a=1&refer={token}/&b=x%20y", allow_redirects=False
    )
    assert response.status == 303
    assert response.headers["Location"] == "/app/page?a=1&b=x%20y#/display/5e9f01"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    cookie = response.cookies["sidecar_session"]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
    assert cookie["path"] == "/"
    assert upstream.requests == []  # the refer request itself is never forwarded

    forwarded = await sidecar.client.get("/app/page?a=1")
    assert forwarded.status == 200
    assert await forwarded.text() == "ok"
    seen = upstream.last
    assert seen.raw_path == "/app/page?a=1"
    assert seen.values("X-Forwarded-User") == ["alice"]
    assert seen.values("X-Forwarded-Role") == ["Authenticated"]
    assert seen.values("X-Forwarded-Tenant") == ["acme"]
    assert "cookie" not in seen.header_names()
    record = (await sidecar.client.get("/_sidecar/session")).status
    assert record == 200


async def test_unqork_root_form_and_module_fragment(sidecar: Sidecar) -> None:
    token, _ = sidecar.seal(module="abc")
    response = await sidecar.client.get(f"/?refer={token}/", allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == "/#/display/abc"


async def test_redirect_never_leaves_the_origin(sidecar: Sidecar) -> None:
    for path in ("//evil.example/x", "/\\evil.example/x"):  # refused before redemption
        token, _ = sidecar.seal()
        response = await raw_request(sidecar.proxy_port, "GET", f"{path}?refer={token}")
        assert response.status == 400
    for path in ("/%2Fevil.example/x", "/%2f%2Fevil.example/x"):
        token, _ = sidecar.seal()
        response = await raw_request(sidecar.proxy_port, "GET", f"{path}?refer={token}")
        assert response.status == 303
        location = response.header("Location")
        assert location is not None
        assert location.startswith("/"), location
        assert location[1] not in "/\\", location


async def test_one_time_link_replay_is_refused(sidecar: Sidecar, upstream: Upstream) -> None:
    token, _ = sidecar.seal()
    first = await sidecar.client.get(f"/?refer={token}", allow_redirects=False)
    assert first.status == 303
    sidecar.client.cookie_jar.clear()
    await _failure(sidecar, f"/?refer={token}", 410, "used")
    assert upstream.requests == []


async def test_reusable_link_works_until_expiry(sidecar: Sidecar) -> None:
    token, _ = sidecar.seal(role="Reader", one_time=False, ttl=600)
    for _ in range(3):
        response = await sidecar.client.get(f"/docs/?refer={token}", allow_redirects=False)
        assert response.status == 303
    sidecar.clock.advance(600)
    await _failure(sidecar, f"/docs/?refer={token}", 410, "expired")


async def test_expired_link_refused_with_injected_time(sidecar: Sidecar) -> None:
    token, claims = sidecar.seal(ttl=60)
    sidecar.clock.advance(61)
    await _failure(sidecar, f"/?refer={token}", 410, "expired")
    assert await sidecar.store.token_state(claims.token_id) is TokenState.UNUSED


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda t: "garbage", "malformed"),
        (lambda t: t[:-4] + ("AAAA" if not t.endswith("AAAA") else "BBBB"), "tampered"),
        (lambda t: t.replace(".", "", 1), "malformed"),
    ],
)
async def test_bad_tokens_are_401(sidecar: Sidecar, mangle: object, reason: str) -> None:
    token, _ = sidecar.seal()
    assert callable(mangle)
    await _failure(sidecar, f"/?refer={mangle(token)}", 401, reason)


async def test_unknown_key_wrong_kind_and_removed_role_are_401(sidecar: Sidecar) -> None:
    foreign = TokenCodec(generate_keyset())
    now = int(sidecar.clock())
    claims = Claims("id1", "u", "Authenticated", now, now + 60, True, "refer")
    await _failure(sidecar, f"/?refer={foreign.seal(claims)}", 401, "unknown_key")
    link, _ = sidecar.seal(kind="magiclink")
    await _failure(sidecar, f"/?refer={link}", 401, "malformed")
    gone, _ = sidecar.seal(role="NoSuchRole")
    await _failure(sidecar, f"/?refer={gone}", 401, "unknown_role")


async def test_failure_page_is_html_by_default(sidecar: Sidecar) -> None:
    response = await sidecar.client.get("/?refer=nope", headers={"Accept": "text/html"})
    assert response.status == 401
    assert response.content_type == "text/html"
    assert "not valid" in await response.text()


async def test_head_never_burns(sidecar: Sidecar) -> None:
    token, claims = sidecar.seal()
    response = await sidecar.client.head(f"/?refer={token}", allow_redirects=False)
    assert response.status == 200
    assert "Set-Cookie" not in response.headers
    assert response.headers["Cache-Control"] == "no-store"
    assert await sidecar.store.token_state(claims.token_id) is TokenState.UNUSED
    assert (await sidecar.client.get(f"/?refer={token}", allow_redirects=False)).status == 303


async def test_confirm_role_get_shows_button_and_only_post_burns(
    sidecar: Sidecar, upstream: Upstream
) -> None:
    token, claims = sidecar.seal(role="Admin", module="admin-1")
    url = f"/?refer={token}/"
    for _ in range(2):  # a mail scanner fetching twice changes nothing
        page = await sidecar.client.get(url, allow_redirects=False)
        assert page.status == 200
        assert "Set-Cookie" not in page.headers
        html = await page.text()
        assert '<form method="post">' in html
        assert token not in html
        assert page.headers["X-Frame-Options"] == "DENY"
    assert await sidecar.store.token_state(claims.token_id) is TokenState.UNUSED
    posted = await sidecar.client.post(url, allow_redirects=False)
    assert posted.status == 303
    assert posted.headers["Location"] == "/#/display/admin-1"
    assert "sidecar_session" in posted.cookies
    assert await sidecar.store.token_state(claims.token_id) is TokenState.USED
    again = await sidecar.client.get(url, headers=JSON, allow_redirects=False)
    assert again.status == 410
    assert upstream.requests == []


async def test_store_down_fails_closed(sidecar: Sidecar, upstream: Upstream) -> None:
    token, _ = sidecar.seal()
    await sidecar.store.close()
    try:
        # A one-time link: the page cannot say whether the burn landed, and says so.
        await _failure(sidecar, f"/?refer={token}", 503, "burn_unconfirmed")
        reusable, _ = sidecar.seal(one_time=False)
        await _failure(sidecar, f"/?refer={reusable}", 503, "store_unavailable")
        assert (await sidecar.client.get("/_sidecar/readyz")).status == 503
        assert (await sidecar.client.get("/_sidecar/healthz")).status == 200
    finally:
        await sidecar.store.open()
    assert (await sidecar.client.get("/_sidecar/readyz")).status == 200
    assert upstream.requests == []


async def test_token_text_never_logged(sidecar: Sidecar, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token, claims = sidecar.seal()
    await sidecar.client.get(f"/?refer={token}", allow_redirects=False)
    sidecar.client.cookie_jar.clear()
    await sidecar.client.get(f"/?refer={token}", allow_redirects=False)
    await sidecar.client.get(f"/?refer={token[:-3]}", allow_redirects=False)
    events = [json.loads(r.getMessage()) for r in caplog.records if r.name == "sidecar.audit"]
    assert [e["event"] for e in events] == ["redeem", "replay", "redeem_failed"]
    assert events[0]["token_id"] == claims.token_id
    for record in caplog.records:
        assert token[:40] not in record.getMessage()


# -- sidecar routes ------------------------------------------------------------------
async def test_logout_get_shows_button_post_ends_session(sidecar: Sidecar) -> None:
    await sidecar.sign_in()
    page = await sidecar.client.get("/_sidecar/logout")
    assert page.status == 200
    assert '<form method="post">' in await page.text()
    assert (await sidecar.client.get("/_sidecar/session")).status == 200
    done = await sidecar.client.post("/_sidecar/logout?rd=/bye", allow_redirects=False)
    assert done.status == 303
    assert done.headers["Location"] == "/bye"
    assert done.cookies["sidecar_session"].value == ""
    assert (await sidecar.client.get("/_sidecar/session")).status == 401


@pytest.mark.parametrize(
    ("target", "location"),
    [
        ("", "/_sidecar/signed-out"),
        ("?next=/a/b%3Fc", "/a/b?c"),
        ("?rd=https://evil.example/", "/"),
        ("?rd=//evil.example/", "/"),
        ("?rd=/%5Cevil.example/", "/"),
        ("?rd=javascript:alert(1)", "/"),
        ("?rd=/ok%0d%0aSet-Cookie:x", "/"),
    ],
)
async def test_logout_redirects_only_to_same_origin_paths(
    sidecar: Sidecar, target: str, location: str
) -> None:
    done = await sidecar.client.post("/_sidecar/logout" + target, allow_redirects=False)
    assert done.status == 303
    assert done.headers["Location"] == location


async def test_logout_without_a_target_lands_on_the_signed_out_page(sidecar: Sidecar) -> None:
    """Not on the app's ``/``, which may answer 401 to someone who just signed out."""
    await sidecar.sign_in()
    done = await sidecar.client.post("/_sidecar/logout")  # the redirect is followed
    assert done.status == 200
    assert str(done.url).endswith("/_sidecar/signed-out")
    assert "You are signed out" in await done.text()
    assert done.headers["Cache-Control"] == "no-store"
    assert (await sidecar.client.post("/_sidecar/signed-out")).status == 405


async def test_session_endpoint_reports_identity(sidecar: Sidecar) -> None:
    anonymous = await sidecar.client.get("/_sidecar/session")
    assert anonymous.status == 401
    assert (await anonymous.json())["error"] == "unauthenticated"
    await sidecar.sign_in(user="bob", params={"tenant": "t9"}, module="m1")
    doc = await (await sidecar.client.get("/_sidecar/session")).json()
    assert doc["user_id"] == "bob"
    assert doc["role"] == "Authenticated"
    assert doc["params"] == {"tenant": "t9"}
    assert doc["module"] == "m1"


async def test_prefix_is_configurable_and_owned(tmp_path: Path, upstream: Upstream) -> None:
    config = make_config(tmp_path, upstream.url, {"prefix": "/.auth"})
    async with running_sidecar(tmp_path, config=config, upstream=upstream) as sc:
        assert (await sc.client.get("/.auth/healthz")).status == 200
        assert (await sc.client.get("/.auth/readyz")).status == 200
        assert (await sc.client.get("/.auth/nothing", headers=JSON)).status == 404
        assert (await sc.client.get("/_sidecar/healthz")).status == 401  # not ours any more
        assert upstream.requests == []


# -- authorisation -------------------------------------------------------------------
async def test_path_rules_per_role(sidecar: Sidecar, upstream: Upstream) -> None:
    await sidecar.sign_in(role="Reader", one_time=False)
    for path, status in [
        ("/docs/a/b", 200),
        ("/api/v1/read", 200),
        ("/api/v1/write", 403),
        ("/api/v1/x/read", 403),
        ("/other", 403),
        ("/docs/../other", 403),
    ]:
        response = await sidecar.client.get(path, headers=JSON)
        assert response.status == status, path
    assert [r.raw_path for r in upstream.requests] == ["/docs/a/b", "/api/v1/read"]


@pytest.mark.parametrize(
    "path",
    [
        "/admin",
        "/admin/",
        "/ADMIN/x",
        "/admin./x",
        "/admin;jsessionid=1/x",
        "/x/../admin/y",
        "/admin%2fx",
        "/%61dmin/x",
        "/admin%5cx",
        "//admin/y",
        "/x/./../admin",
        "/admin\\x",
        "/secret.txt",
        "/SECRET.TXT.",
        "/secret.txt;x",
        "/x/%2e%2e/admin/",
    ],
)
async def test_denied_paths_in_every_spelling(
    sidecar: Sidecar, upstream: Upstream, path: str
) -> None:
    cookie = await sidecar.sign_in()
    response = await raw_request(
        sidecar.proxy_port, "GET", path, f"Cookie: sidecar_session={cookie}"
    )
    assert response.status in (400, 403), path
    assert upstream.requests == []


@pytest.mark.parametrize(
    "path", ["/..", "/a/%2e%2e/admin", "/a/..;/admin", "/%252e%252e/admin", "/a%00b", "/a/%zz"]
)
async def test_ambiguous_paths_are_400(sidecar: Sidecar, upstream: Upstream, path: str) -> None:
    cookie = await sidecar.sign_in()
    response = await raw_request(
        sidecar.proxy_port, "GET", path, f"Cookie: sidecar_session={cookie}"
    )
    assert response.status == 400
    assert upstream.requests == []


async def test_unauthenticated_deny(sidecar: Sidecar, upstream: Upstream) -> None:
    response = await sidecar.client.get("/private", headers=JSON)
    assert response.status == 401
    assert (await response.json())["error"] == "unauthenticated"
    assert upstream.requests == []


async def test_unauthenticated_redirect(tmp_path: Path, upstream: Upstream) -> None:
    config = make_config(
        tmp_path,
        upstream.url,
        {"unauthenticated": "redirect", "login_url": "https://sso.test/login?app=1"},
    )
    async with running_sidecar(tmp_path, config=config, upstream=upstream) as sc:
        response = await sc.client.get("/a/b?c=d", allow_redirects=False)
        assert response.status == 302
        assert response.headers["Location"] == "https://sso.test/login?app=1&rd=/a/b?c%3Dd"
        api = await sc.client.get("/api", headers=JSON, allow_redirects=False)
        assert api.status == 401
        assert upstream.requests == []


async def test_unauthenticated_pass_still_strips_identity(
    tmp_path: Path, upstream: Upstream
) -> None:
    config = make_config(tmp_path, upstream.url, {"unauthenticated": "pass"})
    async with running_sidecar(tmp_path, config=config, upstream=upstream) as sc:
        response = await sc.client.get(
            "/anything", headers={"X-Forwarded-User": "root", "x_forwarded_role": "Admin"}
        )
        assert response.status == 200
        names = upstream.last.header_names()
        assert "x-forwarded-user" not in names
        assert "x_forwarded_role" not in names


async def test_public_paths_forwarded_without_identity(tmp_path: Path, upstream: Upstream) -> None:
    config = make_config(tmp_path, upstream.url, {"public_paths": ["/static/**", "/favicon.ico"]})
    async with running_sidecar(tmp_path, config=config, upstream=upstream) as sc:
        assert (await sc.client.get("/static/app.js")).status == 200
        assert "x-forwarded-user" not in upstream.last.header_names()
        await sc.sign_in()
        assert (await sc.client.get("/favicon.ico")).status == 200
        assert "x-forwarded-user" not in upstream.last.header_names()
        assert (await sc.client.get("/static/../private", headers=JSON)).status == 200
        assert upstream.last.values("X-Forwarded-User") == ["u1"]  # not public: identity
        sc.client.cookie_jar.clear()
        assert (await sc.client.get("/static/../private", headers=JSON)).status == 401


# -- what reaches the upstream -------------------------------------------------------
async def test_own_cookie_removed_other_cookies_kept(sidecar: Sidecar, upstream: Upstream) -> None:
    cookie = await sidecar.sign_in()
    sidecar.client.cookie_jar.clear()
    response = await sidecar.client.get(
        "/p", headers={"Cookie": f'a=1; sidecar_session={cookie}; b="x y"; c=%41'}
    )
    assert response.status == 200
    assert upstream.last.values("Cookie") == ['a=1; b="x y"; c=%41']
    assert upstream.last.values("X-Forwarded-User") == ["u1"]
