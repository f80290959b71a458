"""The admin API's read routes over real sockets: ``GET /tokens/{id}``, ``GET /tokens``,
``GET /sessions`` — states as a support desk needs them, and never a secret."""

from __future__ import annotations

import pytest

from sidecar.session_cookies import session_key
from tests.harness.links import AUTH, Env, token_of

JSON = {"Accept": "application/json"}


async def mint_refer(env: Env, user: str = "0000000abc", **extra: object) -> dict[str, str]:
    body = {"userId": user, "module": "m1", **extra}
    response = await env.admin.post("/referstring", json=body, headers=AUTH)
    assert response.status == 200, await response.text()
    doc: dict[str, str] = await response.json()
    return doc


async def token(env: Env, token_id: str) -> dict[str, object]:
    response = await env.admin.get(f"/tokens/{token_id}", headers=AUTH)
    assert response.status == 200, await response.text()
    assert response.headers["Cache-Control"] == "no-store"
    doc: dict[str, object] = await response.json()
    return doc


async def test_a_refer_link_from_unused_to_used(env: Env) -> None:
    minted = await mint_refer(env)
    doc = await token(env, minted["id"])
    assert doc == {
        "id": minted["id"],
        "kind": "refer",
        "state": "unused",
        "user_id": "0000000abc",
        "role": "Authenticated",
        "one_time": True,
        "email": None,
        "module": "m1",
        "created_at": doc["created_at"],
        "expires_at": minted["expiresAt"].replace("Z", ".000Z"),
        "used_at": None,
        "revoked_at": None,
    }
    assert minted["referString"] not in str(doc)
    redeemed = await env.proxy.get(f"/?refer={minted['referString']}", allow_redirects=False)
    assert redeemed.status == 303
    used = await token(env, minted["id"])
    assert used["state"] == "used"
    assert isinstance(used["used_at"], str)
    assert used["used_at"].endswith("Z")


async def test_revoked_and_expired(env: Env) -> None:
    revoked, expiring = await mint_refer(env), await mint_refer(env)
    assert (await env.admin.post(f"/tokens/{revoked['id']}/revoke", headers=AUTH)).status == 200
    doc = await token(env, revoked["id"])
    assert (doc["state"], doc["used_at"]) == ("revoked", None)
    assert isinstance(doc["revoked_at"], str)
    env.sc.clock.advance(3601)
    assert (await token(env, expiring["id"]))["state"] == "expired"


async def test_auth_links_superseded_and_used(env: Env) -> None:
    user = await env.user("desk@example.com")
    first = await env.link(type="magiclink", email="desk@example.com")
    second = await env.link(type="magiclink", email="desk@example.com")
    first_id = await _token_id(env, user.id, first["action_link"])
    second_id = await _token_id(env, user.id, second["action_link"])
    assert (await token(env, first_id))["state"] == "superseded"
    doc = await token(env, second_id)
    assert (doc["state"], doc["kind"], doc["email"]) == ("unused", "magiclink", "desk@example.com")
    assert (await env.follow(second["action_link"])).status == 303
    assert (await token(env, second_id))["state"] == "used"


async def _token_id(env: Env, user_id: str, action_link: str) -> str:
    claims = env.sc.services.codec.open(token_of(action_link), env.sc.clock())
    assert claims.subject == user_id
    return claims.token_id


async def test_a_users_links_page_by_page_without_secrets(env: Env) -> None:
    minted = [await mint_refer(env, user="pager") for _ in range(5)]
    await mint_refer(env, user="someone-else")
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = {"user_id": "pager", "limit": "2", **({"cursor": cursor} if cursor else {})}
        response = await env.admin.get("/tokens", params=query, headers=AUTH)
        assert response.status == 200, await response.text()
        text = await response.text()
        assert not any(m["referString"] in text for m in minted)
        doc = await response.json()
        assert doc["user_id"] == "pager"
        seen += [t["id"] for t in doc["tokens"]]
        pages += 1
        cursor = doc["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert sorted(seen) == sorted(m["id"] for m in minted)
    assert len(set(seen)) == 5


async def test_live_sessions_of_a_user(env: Env) -> None:
    await env.sc.sign_in(user="other")  # (this browser's session ends with the next login)
    minted = await mint_refer(env, user="sess-user")
    redeemed = await env.proxy.get(f"/?refer={minted['referString']}", allow_redirects=False)
    cookie = redeemed.cookies["sidecar_session"].value
    response = await env.admin.get("/sessions", params={"user_id": "sess-user"}, headers=AUTH)
    assert response.status == 200
    text = await response.text()
    assert cookie not in text
    assert session_key(cookie) not in text
    doc = await response.json()
    assert doc["user_id"] == "sess-user"
    [session] = doc["sessions"]
    assert session["token_id"] == minted["id"]
    assert session["client"] == "127.0.0.1"
    assert session["role"] == "Authenticated"
    assert session["module"] == "m1"
    assert session["created_at"] == session["last_seen"]
    env.sc.clock.advance(8 * 3600 + 1)  # past the session lifetime: no longer listed
    response = await env.admin.get("/sessions", params={"user_id": "sess-user"}, headers=AUTH)
    assert (await response.json())["sessions"] == []


@pytest.mark.parametrize(
    ("path", "status", "field"),
    [
        ("/tokens/unknown-id", 404, None),
        ("/tokens/bad%20id", 400, "id"),
        ("/tokens", 400, "user_id"),
        ("/tokens?user_id=u&limit=0", 400, "limit"),
        ("/tokens?user_id=u&limit=101", 400, "limit"),
        ("/tokens?user_id=u&limit=%D9%A3", 400, "limit"),  # a non-ASCII digit
        ("/tokens?user_id=u&cursor=nope", 400, "cursor"),
        ("/tokens?user_id=u&cursor=nan~x", 400, "cursor"),
        ("/tokens?user_id=a&user_id=b", 400, "user_id"),
        ("/sessions", 400, "user_id"),
        ("/sessions?user_id=%00", 400, "user_id"),
    ],
)
async def test_bad_reads(env: Env, path: str, status: int, field: str | None) -> None:
    response = await env.admin.get(path, headers=AUTH)
    assert response.status == status, await response.text()
    doc = await response.json()
    assert doc["code"] == status
    assert doc.get("field") == field


async def test_reads_need_the_admin_key(env: Env) -> None:
    for path in ("/tokens/x", "/tokens?user_id=u", "/sessions?user_id=u"):
        assert (await env.admin.get(path)).status == 401
