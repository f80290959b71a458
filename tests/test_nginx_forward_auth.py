"""Forward-auth through a real nginx running the shipped recipe (deploy/nginx/forward-auth.conf)
in front of the demo app, with a real sidecar beside it on a real Redis (so the store can go
down). nginx proxies every authorised request; the sidecar only answers sub-requests and the
requests nginx hands it (links, its own pages, refusals).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest

from sidecar.proxy.strip import DEFAULT_STRIP_HEADERS
from tests.conftest import RedisServer
from tests.nginx_stack import RECIPE, Stack, running_stack


@dataclass
class Answer:
    status: int
    headers: Message
    body: bytes

    def json(self) -> dict[str, object]:
        doc = json.loads(self.body)
        assert isinstance(doc, dict)
        return doc


def call(base: str, method: str, target: str, *headers: tuple[str, str]) -> Answer:
    """One request exactly as written (no redirects followed, no URL clean-up)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("nginx-redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis: RedisServer) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("nginx-stack"), redis.url) as running:
        yield running


def sign_in(stack: Stack, user: str, module: str | None = None, **params: str) -> str:
    """Open a freshly minted link through nginx; return the session cookie it set."""
    link = stack.mint(user, module=module, **params)
    target = link.removeprefix(stack.nginx).partition("#")[0]
    answer = call(stack.nginx, "GET", target)
    assert answer.status == 303, answer.body
    cookie = SimpleCookie(answer.headers["Set-Cookie"])["sidecar_session"]
    return cookie.value


def whoami(stack: Stack, cookie: str | None, *headers: tuple[str, str]) -> Answer:
    sent = [("Accept", "application/json"), *headers]
    if cookie is not None:
        sent.append(("Cookie", f"theme=dark; sidecar_session={cookie}; lang=en"))
    return call(stack.nginx, "GET", "/api/whoami", *sent)


def test_a_refer_link_redeems_through_nginx(stack: Stack) -> None:
    link = stack.mint("alice", module="orders", tenant="acme")
    assert "/?refer=" in link
    assert link.endswith("/#/display/orders")
    answer = call(stack.nginx, "GET", link.removeprefix(stack.nginx).partition("#")[0])
    assert answer.status == 303
    assert answer.headers["Location"] == "/#/display/orders", "the module's fragment is kept"
    assert answer.headers["Cache-Control"] == "no-store"
    morsel = SimpleCookie(answer.headers["Set-Cookie"])["sidecar_session"]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Lax"
    again = call(stack.nginx, "GET", link.removeprefix(stack.nginx).partition("#")[0])
    assert again.status == 410, "one-time: the second use is refused by the sidecar"
    assert "Set-Cookie" not in again.headers


def test_the_app_receives_identity_and_never_a_spoofed_copy(stack: Stack) -> None:
    cookie = sign_in(stack, "bob", module="orders")
    answer = whoami(
        stack,
        cookie,
        ("X-Forwarded-User", "mallory"),
        ("x-forwarded-role", "Admin"),
        ("X_Forwarded_User", "mallory"),
        ("X-Forwarded-Tenant", "evil"),
        ("X-Forwarded-Email", "mallory@example.com"),
        ("X-Original-URI", "/static/x"),
    )
    assert answer.status == 200, answer.body
    doc = answer.json()
    assert doc["user"] == "bob"
    assert doc["role"] == "Viewer"
    assert doc["tenant"] is None, "bob's link has no tenant: the client's copy is gone too"
    headers = doc["headers"]
    assert isinstance(headers, dict)
    seen = {k.lower(): v for k, v in headers.items()}
    assert seen["x-forwarded-user"] == "bob"
    assert seen["x-forwarded-module"] == "orders"
    assert "mallory" not in json.dumps(doc)
    assert "evil" not in json.dumps(doc)
    assert doc["cookies"] == ["lang", "theme"], "the session cookie is cut, the others pass"


@pytest.mark.parametrize(
    ("header", "kept"),
    [
        ("sidecar_session={c}", []),
        ("sidecar_session={c}; a=1", ["a"]),
        ("a=1;sidecar_session={c}", ["a"]),
        ("sidecar_session={c}; a=1; sidecar_session=old; b=2", ["a", "b"]),
        # sidecar.yaml's name (cookie_secure: true) beside the pre-prefix one
        ("sidecar_session={c}; a=1; __Host-sidecar_session=new", ["a"]),
        ("__Secure-sidecar_session=x; sidecar_session={c}; b=2", ["b"]),
    ],
)
def test_the_session_cookie_never_reaches_the_app(
    stack: Stack, header: str, kept: list[str]
) -> None:
    cookie = sign_in(stack, "hal")
    answer = call(stack.nginx, "GET", "/api/whoami", ("Cookie", header.format(c=cookie)))
    assert answer.status == 200, answer.body
    assert answer.json()["cookies"] == kept


def test_spoofed_identity_without_a_session_never_reaches_the_app(stack: Stack) -> None:
    answer = whoami(stack, None, ("X-Forwarded-User", "mallory"), ("X-Original-URI", "/app.js"))
    assert answer.status == 401
    assert answer.json()["error"] == "unauthenticated", "the sidecar's page, not the app"
    public = call(stack.nginx, "GET", "/app.js", ("X-Forwarded-User", "mallory"))
    assert public.status == 200, "public paths pass without a session"


@pytest.mark.parametrize(
    ("target", "status", "reason"),
    [
        ("/admin/users", 403, "forbidden"),
        ("/ADMIN;x/users", 403, "forbidden"),
        ("/docs/%2e%2e/admin/users", 400, "bad_path"),
        ("/api/%252e%252e/admin", 400, "bad_path"),
    ],
)
def test_denied_and_refused_paths_get_the_proxy_modes_answer(
    stack: Stack, target: str, status: int, reason: str
) -> None:
    # The sub-request answers 403 for both; nginx then lets the sidecar answer the request
    # itself, with the page proxy mode gives: 403 for a rule, 400 for an unsafe spelling.
    cookie = sign_in(stack, "carol")
    answer = call(
        stack.nginx,
        "GET",
        target,
        ("Cookie", f"sidecar_session={cookie}"),
        ("Accept", "application/json"),
    )
    assert answer.status == status, answer.body
    assert answer.json()["error"] == reason, "the sidecar's answer, not the app's"


def test_logout_through_nginx(stack: Stack) -> None:
    cookie = sign_in(stack, "dave")
    assert whoami(stack, cookie).status == 200
    answer = call(
        stack.nginx,
        "POST",
        "/_sidecar/logout",
        ("Cookie", f"sidecar_session={cookie}"),
        ("Origin", stack.nginx),
        ("Content-Length", "0"),
    )
    assert answer.status == 303
    cleared = SimpleCookie(answer.headers["Set-Cookie"])["sidecar_session"]
    assert cleared.value == ""
    assert whoami(stack, cookie).status == 401


def test_a_revoked_session_is_refused_within_cache_ttl(stack: Stack) -> None:
    cookie = sign_in(stack, "erin")
    assert whoami(stack, cookie).status == 200
    status, doc = stack.admin_call("DELETE", "/sessions?user_id=erin")
    assert status == 200, doc
    deadline = time.monotonic() + 2.0 + 1.0  # session.cache_ttl (default 2 s) + slack
    while (answer := whoami(stack, cookie)).status == 200:
        assert time.monotonic() < deadline, "revocation not enforced within cache_ttl"
        time.sleep(0.05)
    assert answer.status == 401


def test_the_auth_endpoint_is_internal_to_nginx(stack: Stack) -> None:
    cookie = sign_in(stack, "finn")
    answer = call(stack.nginx, "GET", "/_sidecar/auth", ("Cookie", f"sidecar_session={cookie}"))
    assert answer.status == 404, "only nginx's own sub-requests reach it"


def test_store_down_is_503(stack: Stack, redis: RedisServer) -> None:
    cookie = sign_in(stack, "gus")
    assert whoami(stack, cookie).status == 200
    redis.stop()
    try:
        deadline = time.monotonic() + 2.0 + 3.0  # cache_ttl + slack on a busy machine
        while (answer := whoami(stack, cookie)).status == 200:
            assert time.monotonic() < deadline, "still answered from the cache after cache_ttl"
            time.sleep(0.05)
        assert answer.status == 503, answer.body
        assert answer.json()["error"] == "store_unavailable"
    finally:
        redis.start()


def test_the_recipe_copies_every_identity_header_the_roles_render() -> None:
    import yaml

    doc = yaml.safe_load((RECIPE / "sidecar.yaml").read_text(encoding="utf-8"))
    conf = (RECIPE / "forward-auth.conf").read_text(encoding="utf-8")
    for role in doc["roles"].values():
        for name in role["headers"]:
            variable = "$upstream_http_" + name.lower().replace("-", "_")
            assert variable in conf, f"no auth_request_set for {name}"
            assert f"proxy_set_header {name} " in conf, f"{name} is not set for the app"
    assert doc["proxy"]["trusted_proxies"] == ["127.0.0.1/32"]


def test_the_recipe_strips_the_sidecars_well_known_headers() -> None:
    conf = (RECIPE / "forward-auth.conf").read_text(encoding="utf-8")
    app_location = conf[conf.index("        location / {") :]
    set_for_app = {
        line.split()[1].lower()
        for line in app_location.splitlines()
        if line.strip().startswith("proxy_set_header ")
    }
    exact = [n for n in DEFAULT_STRIP_HEADERS if not n.endswith("*")]
    missing = [n for n in exact if n.lower() not in set_for_app]
    assert not missing, f'add proxy_set_header <name> "" for {missing}'


def test_stack_state_is_private(stack: Stack) -> None:
    # The sidecar's log never holds a token or a cookie value, even with nginx in front.
    log = (stack.state / "sidecar.log").read_text(encoding="utf-8")
    assert "refer=ey" not in log
    assert Path(stack.state / "error.log").exists()


def _ws(stack: Stack, *headers: tuple[str, str]) -> tuple[int, str | None]:
    """Open /ws through nginx (status of the handshake), send "hi", return the reply."""

    async def go() -> tuple[int, str | None]:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.ws_connect(
                    stack.nginx + "/ws",
                    headers=dict(headers),
                    timeout=aiohttp.ClientWSTimeout(ws_close=5),
                ) as socket:
                    await socket.send_str("hi")
                    message = await asyncio.wait_for(socket.receive(), 5)
                    return 101, str(message.data)
            except aiohttp.WSServerHandshakeError as refused:
                return refused.status, None

    return asyncio.run(go())


def test_websockets_pass_with_the_identity_and_not_without_a_session(stack: Stack) -> None:
    cookie = sign_in(stack, "ivan")
    session = ("Cookie", f"sidecar_session={cookie}")
    assert _ws(stack, session, ("X-Forwarded-User", "mallory")) == (101, "ivan:hi")
    status, _ = _ws(stack, ("X-Forwarded-User", "mallory"))
    assert status == 401
    # Cross-site WebSocket hijacking: the browser would send the cookie; the Origin tells.
    assert _ws(stack, session, ("Origin", stack.nginx)) == (101, "ivan:hi")
    status, _ = _ws(stack, session, ("Origin", "http://evil.example"))
    assert status == 403


def _access_log_once_written(stack: Stack, last: str) -> str:
    """nginx's access log once it holds ``last``: nginx writes a request's line after the
    answer has gone out, so the client can be a moment ahead of it."""
    deadline = time.monotonic() + 5
    while True:
        log = (stack.state / "access.log").read_text(encoding="utf-8")
        if last in log or time.monotonic() > deadline:
            return log
        time.sleep(0.01)  # polling a file another process appends to


def test_no_token_reaches_nginxs_access_log(stack: Stack) -> None:
    """The recipe's log_format cuts the query: a ?refer= token, in the URL, in signin's rd= or
    in a Referer, is never written (reusable and confirm links stay valid after use)."""
    link = stack.mint("lena", module="orders", tenant="acme")
    target = link.removeprefix(stack.nginx).partition("#")[0]
    token = target.partition("refer=")[2]
    assert len(token) > 20
    assert call(stack.nginx, "GET", target).status == 303
    signin = "/_sidecar/signin?rd=" + quote(link, safe="")
    call(stack.nginx, "GET", signin)
    call(stack.nginx, "GET", "/api/whoami?x=1", ("Referer", link))
    log = _access_log_once_written(stack, '"GET /api/whoami?')
    assert token not in log
    assert quote(token, safe="") not in log
    assert '"GET /?... HTTP/1.1" 303' in log, "the request is still logged, query cut"
    assert '"GET /_sidecar/signin?... HTTP/1.1"' in log
    assert '"GET /api/whoami?... HTTP/1.1"' in log
    assert f'"{stack.nginx}/?..."' in log, "the Referer is cut too"
