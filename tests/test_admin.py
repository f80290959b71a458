"""The admin listener over real sockets: every guard, every status, every route."""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from sidecar.admin.api import build_admin_app
from sidecar.admin.guards import own_hosts, peer_allowed
from sidecar.config import Config
from sidecar.config.values import HostPort
from sidecar.services import Services
from sidecar.sessions import SESSIONS, SessionManager
from sidecar.store import BurnResult, SessionRecord, TokenState, open_store
from sidecar.tokens.codec import TokenCodec
from sidecar.web.appkeys import SERVICES
from tests.test_config import ADMIN_KEY, build_config, config_doc

NOW = 1_800_000_000.0
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


MakeServices = Callable[..., Awaitable[Services]]
MakeClient = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
async def make_services(tmp_path: Path, clock: Clock) -> AsyncIterator[MakeServices]:
    opened: list[Services] = []

    async def make(**overrides: object) -> Services:
        cfg: Config = build_config(tmp_path, config_doc(**overrides))
        store = open_store("sqlite:///" + str(tmp_path / f"store{len(opened)}.db"))
        await store.open()
        services = Services(config=cfg, store=store, codec=TokenCodec(cfg.keyset), clock=clock)
        opened.append(services)
        return services

    yield make
    for services in opened:
        await services.store.close()


@pytest.fixture
def make_client(make_services: MakeServices, aiohttp_client: AiohttpClient) -> MakeClient:
    async def make(**overrides: object) -> TestClient[web.Request, web.Application]:
        return await aiohttp_client(build_admin_app(await make_services(**overrides)))

    return make


@pytest.fixture
async def client(make_client: MakeClient) -> TestClient[web.Request, web.Application]:
    return await make_client()


def services_of(client: TestClient[web.Request, web.Application]) -> Services:
    assert isinstance(client.app, web.Application)
    return client.app[SERVICES]


async def mint(
    client: TestClient[web.Request, web.Application], body: object, **headers: str
) -> tuple[int, dict[str, object]]:
    response = await client.post("/referstring", json=body, headers={**AUTH, **headers})
    return response.status, await response.json()


# -- POST /referstring -------------------------------------------------------------------


async def test_mint(
    client: TestClient[web.Request, web.Application], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    body = {
        "userId": "0000000abc",
        "expireMeasure": "days",
        "expireOffset": 7,
        "oneTimeUse": True,
        "module": "5e9f83275349fc020f8db299",
        "additionalParams": {"role": "Authenticated", "tenant": "acme"},
    }
    response = await client.post("/referstring", json=body, headers=AUTH)
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    answer = await response.json()
    assert set(answer) == {"referString", "url", "expiresAt", "id"}
    token = answer["referString"]
    claims = services_of(client).codec.open(token, NOW)
    assert claims.token_id == answer["id"]
    assert claims.subject == "0000000abc"
    assert dict(claims.params) == {"tenant": "acme"}
    assert claims.expires_at == int(NOW) + 7 * 86400
    assert (
        answer["url"]
        == f"https://app.example.test/?refer={token}/#/display/5e9f83275349fc020f8db299"
    )
    assert answer["expiresAt"] == "2027-01-22T08:00:00Z"

    events = [json.loads(r.getMessage()) for r in caplog.records if r.name == "sidecar.audit"]
    assert events == [
        {
            "ts": events[0]["ts"],
            "level": "info",
            "event": "mint",
            "request_id": response.headers["X-Request-Id"],
            "token_id": answer["id"],
            "user_id": "0000000abc",
            "role": "Authenticated",
            "kind": "refer",
            "one_time": True,
            "expires_at": "2027-01-22T08:00:00Z",
            "module": "5e9f83275349fc020f8db299",
        }
    ]
    assert all(token not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "userId"),
        ({"userId": 7}, "userId"),
        ({"userId": "u", "expireMeasure": "fortnights", "expireOffset": 1}, "expireMeasure"),
        ({"userId": "u", "expireMeasure": "days", "expireOffset": 1.5}, "expireOffset"),
        ({"userId": "u", "expireMeasure": "days", "expireOffset": 31}, "expireOffset"),
        ({"userId": "u", "oneTimeUse": "no"}, "oneTimeUse"),
        ({"userId": "u", "additionalParams": {"role": "Root"}}, "additionalParams.role"),
        ({"userId": "u", "additionalParams": {"colour": "red"}}, "additionalParams.colour"),
        ({"userId": "u", "module": "x", "additionalParams": {"role": "Admin"}}, "module"),
        ({"userId": "u", "admin": True}, "admin"),
    ],
)
async def test_mint_rules(
    client: TestClient[web.Request, web.Application], body: dict[str, object], field: str
) -> None:
    status, answer = await mint(client, body)
    assert status == 400
    assert answer["code"] == 400
    assert answer["field"] == field
    assert isinstance(answer["message"], str)
    assert answer["message"].startswith(f"{field}: ")


async def test_over_the_cap_names_the_limit(
    client: TestClient[web.Request, web.Application],
) -> None:
    body = {"userId": "u", "expireMeasure": "days", "expireOffset": 8}
    status, answer = await mint(client, body)
    assert status == 400
    assert "role Authenticated allows at most 7d" in str(answer["message"])


async def test_token_too_long(client: TestClient[web.Request, web.Application]) -> None:
    body = {"userId": "u", "additionalParams": {"tenant": "t" * 2000, "locale": "l" * 2000}}
    status, answer = await mint(client, body)
    assert status == 400
    assert "tokens must be shorter than 4096" in str(answer["message"])


@pytest.mark.parametrize(
    ("data", "content_type", "message"),
    [
        (b"{", "application/json", "not valid JSON"),
        (b"", "application/json", "not valid JSON"),
        (b"[1]", "application/json", "must be a JSON object"),
        (b'"u"', "application/json", "must be a JSON object"),
        (b"null", "application/json", "must be a JSON object"),
        (b'{"userId": "a", "userId": "b"}', "application/json", "duplicate keys"),
        (b'{"userId": "a", "n": NaN}', "application/json", "contains NaN, which is not JSON"),
        (b'{"userId": "\xff"}', "application/json", "not UTF-8"),
        (b"[" * 100_00 + b"]" * 100_00, "application/json", "not valid JSON"),
        (b'{"userId": "u"}', "text/plain", "Content-Type: application/json"),
        (b'{"userId": "u"}', "application/x-www-form-urlencoded", "Content-Type"),
    ],
)
async def test_bad_bodies(
    client: TestClient[web.Request, web.Application], data: bytes, content_type: str, message: str
) -> None:
    headers = {**AUTH, "Content-Type": content_type}
    response = await client.post("/referstring", data=data, headers=headers)
    assert response.status == 400
    answer = await response.json()
    assert answer["code"] == 400
    assert message in answer["message"]


async def test_charset_in_content_type_is_fine(
    client: TestClient[web.Request, web.Application],
) -> None:
    headers = {**AUTH, "Content-Type": "application/json; charset=utf-8"}
    response = await client.post("/referstring", data=b'{"userId": "u"}', headers=headers)
    assert response.status == 200


async def test_body_over_the_limit(make_client: MakeClient) -> None:
    client = await make_client(admin={"key": {"env": "SIDECAR_ADMIN_KEY"}, "max_body": "1KiB"})
    big = {"userId": "u", "additionalParams": {"tenant": "x" * 2000}}
    response = await client.post("/referstring", json=big, headers=AUTH)
    assert response.status == 413
    assert (await response.json())["code"] == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while reading
        yield b'{"userId": "u", "additionalParams": {"tenant": "'
        for _ in range(4):
            yield b"x" * 500
        yield b'"}}'

    headers = {**AUTH, "Content-Type": "application/json"}
    response = await client.post("/referstring", data=chunks(), headers=headers)
    assert response.status == 413
    assert "admin.max_body" in (await response.json())["message"]


async def test_mint_rate_limit(make_client: MakeClient, clock: Clock) -> None:
    admin = {"key": {"env": "SIDECAR_ADMIN_KEY"}, "mint_rate": "3/1m"}
    client = await make_client(admin=admin)
    for _ in range(3):
        assert (await mint(client, {"userId": "u"}))[0] == 200
    response = await client.post("/referstring", json={"userId": "u"}, headers=AUTH)
    assert response.status == 429
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert (await response.json())["code"] == 429
    assert (await client.get("/healthz", headers=AUTH)).status == 200  # only mints count
    clock.now += 61
    assert (await mint(client, {"userId": "u"}))[0] == 200


async def test_refused_mints_count_and_limited_mints_are_not_recorded(
    make_client: MakeClient, clock: Clock
) -> None:
    admin = {"key": {"env": "SIDECAR_ADMIN_KEY"}, "mint_rate": "3/1m"}
    client = await make_client(admin=admin)
    assert (await mint(client, {"userId": "u", "bogus": 1}))[0] == 400  # counted: 1
    assert (await mint(client, {"userId": "u"}))[0] == 200
    assert (await mint(client, {"userId": "u"}))[0] == 200
    # Over the limit, a valid mint is refused and leaves no record; an invalid one is a 429
    # too (as when the count came before the body was read).
    assert (await mint(client, {"userId": "u"}))[0] == 429
    assert (await mint(client, {"userId": ""}))[0] == 429
    listed = await client.get("/tokens", params={"user_id": "u"}, headers=AUTH)
    assert len((await listed.json())["tokens"]) == 2
    clock.now += 61
    assert (await mint(client, {"userId": ""}))[0] == 400


# -- the guards --------------------------------------------------------------------------


async def test_missing_admin_key(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.post("/referstring", json={"userId": "u"})
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert (await response.json())["code"] == 401


@pytest.mark.parametrize(
    "header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", ADMIN_KEY, "Token x"]
)
async def test_malformed_authorization(
    client: TestClient[web.Request, web.Application], header: str
) -> None:
    response = await client.get("/healthz", headers={"Authorization": header})
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "key", ["not-the-key-zz9", ADMIN_KEY[:-1], ADMIN_KEY + "x", ADMIN_KEY.upper()]
)
async def test_wrong_admin_key(client: TestClient[web.Request, web.Application], key: str) -> None:
    response = await client.post(
        "/referstring", json={"userId": "u"}, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status == 403
    body = await response.text()
    assert ADMIN_KEY not in body
    assert key not in body


async def test_bearer_scheme_is_case_insensitive(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get("/healthz", headers={"Authorization": f"bearer {ADMIN_KEY}"})
    assert response.status == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1:9091"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
async def test_browser_requests_are_refused(
    client: TestClient[web.Request, web.Application], headers: dict[str, str]
) -> None:
    response = await client.post("/referstring", json={"userId": "u"}, headers={**AUTH, **headers})
    assert response.status == 403
    assert "browser" in (await response.json())["message"]


async def test_sec_fetch_site_none_is_allowed(
    client: TestClient[web.Request, web.Application],
) -> None:
    status, _ = await mint(client, {"userId": "u"}, **{"Sec-Fetch-Site": "none"})
    assert status == 200


async def test_host_must_be_the_listener(client: TestClient[web.Request, web.Application]) -> None:
    port = client.port
    for good in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}"):
        response = await client.get("/healthz", headers={**AUTH, "Host": good})
        assert response.status == 200, good
    for bad in (f"evil.example:{port}", "127.0.0.1:1", "127.0.0.1", f"127.0.0.1.evil:{port}"):
        response = await client.get("/healthz", headers={**AUTH, "Host": bad})
        assert response.status == 421, bad
        assert (await response.json())["code"] == 421


async def test_unauthenticated_requests_learn_nothing_about_routes(
    client: TestClient[web.Request, web.Application],
) -> None:
    assert (await client.get("/nope")).status == 401
    assert (await client.get("/nope", headers=AUTH)).status == 404


async def test_non_ip_peer_is_refused(make_services: MakeServices, tmp_path: Path) -> None:
    # A unix-socket peer is no IP address, so neither loopback nor allow-listed.
    runner = web.AppRunner(build_admin_app(await make_services()))
    await runner.setup()
    sock = str(tmp_path / "admin.sock")
    await web.UnixSite(runner, sock).start()
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as session,
            session.get("http://127.0.0.1:9091/healthz", headers=AUTH) as response,
        ):
            assert response.status == 403
            assert "peer" in (await response.json())["message"]
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("remote", "allowed", "ok"),
    [
        ("127.0.0.1", (), True),
        ("127.8.9.10", (), True),
        ("::1", (), True),
        ("::ffff:127.0.0.1", (), True),
        ("10.1.2.3", (), False),
        ("10.1.2.3", ("10.1.2.0/24",), True),
        ("::ffff:10.1.2.3", ("10.1.2.0/24",), True),
        ("10.1.3.3", ("10.1.2.0/24",), False),
        ("fd00::5", ("fd00::/64",), True),
        ("", (), False),
        (None, (), False),
        ("not-an-ip", ("0.0.0.0/0",), False),
    ],
)
def test_peer_allowed(remote: str | None, allowed: tuple[str, ...], ok: bool) -> None:
    networks = tuple(ipaddress.ip_network(n) for n in allowed)
    assert peer_allowed(remote, networks) is ok


def test_own_hosts() -> None:
    hosts = own_hosts(HostPort("127.0.0.1", 9091), ("127.0.0.1", 9091))
    assert hosts == {"localhost:9091", "127.0.0.1:9091", "[::1]:9091"}
    assert "10.0.0.5:9091" in own_hosts(HostPort("0.0.0.0", 9091), ("10.0.0.5", 9091))  # noqa: S104
    assert "localhost" in own_hosts(HostPort("127.0.0.1", 80), ("127.0.0.1", 80))


# -- revoke, sessions, health, errors ----------------------------------------------------


async def test_revoke(client: TestClient[web.Request, web.Application]) -> None:
    _, minted = await mint(client, {"userId": "u"})
    token_id = str(minted["id"])
    store = services_of(client).store
    response = await client.post(f"/tokens/{token_id}/revoke", headers=AUTH)
    assert response.status == 200
    assert await response.json() == {
        "id": token_id,
        "previous": "unused",
        "state": "revoked",
        "sessions_ended": 0,
    }
    assert await store.token_state(token_id) is TokenState.REVOKED
    assert await store.burn(token_id, NOW + 3600) is BurnResult.REVOKED
    again = await (await client.post(f"/tokens/{token_id}/revoke", headers=AUTH)).json()
    assert again["previous"] == "revoked"


async def test_revoke_a_used_token(client: TestClient[web.Request, web.Application]) -> None:
    store = services_of(client).store
    assert await store.burn("used-one", NOW + 60) is BurnResult.BURNED
    answer = await (await client.post("/tokens/used-one/revoke", headers=AUTH)).json()
    assert answer == {"id": "used-one", "previous": "used", "state": "used", "sessions_ended": 0}


@pytest.mark.parametrize("token_id", ["a.b", "a%20b", "x" * 129])
async def test_revoke_bad_id(
    client: TestClient[web.Request, web.Application], token_id: str
) -> None:
    response = await client.post(f"/tokens/{token_id}/revoke", headers=AUTH)
    assert response.status == 400
    assert (await response.json())["field"] == "id"


def _session(key: str, user_id: str) -> SessionRecord:
    return SessionRecord(
        key=key,
        user_id=user_id,
        role="Authenticated",
        params={},
        created_at=NOW,
        expires_at=NOW + 3600,
        idle_timeout=600,
        last_seen=NOW,
        token_id="t",
    )


async def test_end_sessions(client: TestClient[web.Request, web.Application]) -> None:
    store = services_of(client).store
    for key, user in (("k1", "alice"), ("k2", "alice"), ("k3", "bob")):
        await store.create_session(_session(key, user))
    response = await client.delete("/sessions", params={"user_id": "alice"}, headers=AUTH)
    assert response.status == 200
    assert await response.json() == {"user_id": "alice", "ended": 2}
    assert await store.get_session("k1") is None
    assert await store.get_session("k3") is not None
    response = await client.delete("/sessions", headers=AUTH)
    assert response.status == 400
    assert (await response.json())["field"] == "user_id"


async def test_end_sessions_drops_the_shared_session_cache(
    make_services: MakeServices, aiohttp_client: AiohttpClient
) -> None:
    services = await make_services()
    sessions = SessionManager(services)
    app = build_admin_app(services)
    app[SESSIONS] = sessions
    client = await aiohttp_client(app)
    role = services.config.roles["Authenticated"]
    cookie = await sessions.start(user_id="alice", role=role, token_id="t1")
    assert await sessions.lookup_value(cookie) is not None  # now cached
    response = await client.delete("/sessions", params={"user_id": "alice"}, headers=AUTH)
    assert (await response.json())["ended"] == 1
    assert await sessions.lookup_value(cookie) is None


async def test_healthz(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/healthz", headers=AUTH)
    assert response.status == 200
    assert (await response.json())["status"] == "ok"
    await services_of(client).store.close()
    response = await client.get("/healthz", headers=AUTH)
    assert response.status == 503
    assert (await response.json())["code"] == 503


async def test_unknown_route_and_method(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/referstring", headers=AUTH)
    assert response.status == 405
    assert "POST" in response.headers["Allow"]
    assert (await response.json())["code"] == 405
    response = await client.get("/nothing-here", headers=AUTH)
    assert response.status == 404
    assert await response.json() == {"code": 404, "error_code": "not_found", "message": "Not Found"}


async def test_unexpected_errors_are_a_plain_500(
    make_services: MakeServices, aiohttp_client: AiohttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret detail that must not leak")

    app = build_admin_app(await make_services())
    app.router.add_get("/boom", boom)
    client = await aiohttp_client(app)
    response = await client.get("/boom", headers=AUTH)
    assert response.status == 500
    text = await response.text()
    assert json.loads(text) == {
        "code": 500,
        "error_code": "unexpected_failure",
        "message": "internal error",
    }
    assert "secret detail" not in text
    assert "Traceback" not in text
    assert any("unhandled error during GET /boom" in r.getMessage() for r in caplog.records)


# -- POST /admin/generate_link sits behind the same guards -------------------------------


async def test_generate_link_is_guarded(make_client: MakeClient) -> None:
    client = await make_client(admin={"key": {"env": "SIDECAR_ADMIN_KEY"}, "mint_rate": "2/1m"})
    body = {"type": "signup", "email": "new@example.test", "password": "correct horse battery"}
    assert (await client.post("/admin/generate_link", json=body)).status == 401
    response = await client.post(
        "/admin/generate_link", json=body, headers={**AUTH, "Origin": "https://evil.example"}
    )
    assert response.status == 403
    response = await client.post("/admin/generate_link", json=body, headers=AUTH)
    assert response.status == 200, await response.text()
    answer = await response.json()
    assert answer["action_link"].startswith("https://app.example.test/_sidecar/verify?token=")
    assert answer["verification_type"] == "signup"
    assert (await mint(client, {"userId": "u"}))[0] == 200  # the second mint of the window
    response = await client.post("/admin/generate_link", json=body, headers=AUTH)
    assert response.status == 429


async def test_each_route_family_answers_its_own_error_shape(
    client: TestClient[web.Request, web.Application],
) -> None:
    """Refusals on the GoTrue-style route read like GoTrue's errors; elsewhere the admin
    API's ``{code, error_code, message[, field]}``."""
    gotrue = await client.post("/admin/generate_link", json={})
    assert gotrue.status == 401
    assert await gotrue.json() == {
        "code": 401,
        "error_code": "no_authorization",
        "msg": "Unauthorized",
        "details": "missing admin key: send Authorization: Bearer <key>",
    }
    assert gotrue.headers["WWW-Authenticate"] == "Bearer"
    assert gotrue.headers["Cache-Control"] == "no-store"
    admin = await client.post("/referstring", json={})
    assert admin.status == 401
    assert await admin.json() == {
        "code": 401,
        "error_code": "no_authorization",
        "message": "missing admin key: send Authorization: Bearer <key>",
    }
    bad = await client.post("/referstring", json={"userId": 5}, headers=AUTH)
    assert bad.status == 400
    assert await bad.json() == {
        "code": 400,
        "error_code": "validation_failed",
        "message": "userId: expected a non-empty string, got 5",
        "field": "userId",
    }
