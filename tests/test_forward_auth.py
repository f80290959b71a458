"""``<prefix>/auth`` over real sockets: the header conventions of nginx, ingress-nginx, Traefik,
Caddy and Envoy, the answers an ingress acts on, and ``<prefix>/signin`` (ingress-nginx's
``auth-signin``). tests/test_nginx_forward_auth.py runs the shipped nginx recipe for real.

The test client connects from 127.0.0.1, which the configs below trust unless a test says not.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import ClientResponse

from sidecar.config import ConfigError
from sidecar.config.model import PREFIX_ROUTES
from sidecar.proxy.gateway import build_proxy_app
from sidecar.store.base import Store
from sidecar.store.sqlite import SQLiteStore
from sidecar.tokens.codec import TokenCodec
from tests.harness import Sidecar, make_config, raw_request, running_sidecar

UPSTREAM = "http://127.0.0.1:9"  # never contacted: forward-auth answers, it does not forward
TRUSTED = {"trusted_proxies": ["127.0.0.1/32"]}
IDENTITY = ("X-Forwarded-User", "X-Forwarded-Role", "X-Forwarded-Tenant", "X-Auth-Email")


@pytest.fixture
async def sidecar(tmp_path: Path) -> AsyncIterator[Sidecar]:
    config = make_config(
        tmp_path,
        UPSTREAM,
        {**TRUSTED, "public_paths": ["/health", "/static/**"]},
        forward_auth={"envoy_path_prefix": "/_sidecar/envoy"},
    )
    async with running_sidecar(tmp_path, config=config) as sc:
        yield sc


async def _auth(sc: Sidecar, cookie: str | None, **headers: str) -> ClientResponse:
    sc.client.cookie_jar.clear()  # only the Cookie header given here is sent
    sent = {k.replace("_", "-"): v for k, v in headers.items()}
    if cookie is not None:
        sent["Cookie"] = f"theme=dark; sidecar_session={cookie}"
    response = await sc.client.get("/_sidecar/auth", headers=sent, allow_redirects=False)
    await _assert_bare(response)
    return response


async def _assert_bare(response: ClientResponse) -> None:
    """Never a cookie, never a body, never cached."""
    assert "Set-Cookie" not in response.headers
    assert await response.read() == b""
    assert "Content-Type" not in response.headers
    assert response.headers["Cache-Control"] == "no-store"
    if response.status != 200:
        assert not any(name in response.headers for name in IDENTITY)


# -- the conventions -------------------------------------------------------------------
async def test_nginx_convention_answers_200_with_identity_headers(sidecar: Sidecar) -> None:
    cookie = await sidecar.sign_in(user="alice", params={"tenant": "acme"})
    response = await _auth(
        sidecar, cookie, X_Original_URI="/app/page?x=1", X_Original_Method="POST"
    )
    assert response.status == 200
    assert response.headers["X-Forwarded-User"] == "alice"
    assert response.headers["X-Forwarded-Role"] == "Authenticated"
    assert response.headers["X-Forwarded-Tenant"] == "acme"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"X_Original_URI": "/admin/users"}, id="nginx"),
        pytest.param({"X_Original_URL": "https://app.test/admin/users?q=1"}, id="ingress-nginx"),
        pytest.param(
            {
                "X_Forwarded_Uri": "/admin/users",
                "X_Forwarded_Method": "DELETE",
                "X_Forwarded_Host": "app.test",
                "X_Forwarded_Proto": "https",
            },
            id="traefik-caddy",
        ),
        pytest.param({"X_Original_URI": "/ok/../admin/users"}, id="dot-dot-resolves-into-deny"),
        pytest.param({"X_Original_URI": "/ADMIN;x/users"}, id="loose-spelling-of-deny"),
        pytest.param({"X_Original_URI": "/%2e%2e/admin"}, id="encoded-dot-segment-refused"),
        pytest.param({"X_Original_URI": "/docs/%252e%252e/x"}, id="double-encoding-refused"),
        pytest.param({"X_Original_URI": "/a\\..\\b"}, id="backslash-dot-dot-refused"),
    ],
)
async def test_path_rules_and_refusals_answer_403(
    sidecar: Sidecar, headers: dict[str, str]
) -> None:
    cookie = await sidecar.sign_in()
    assert (await _auth(sidecar, cookie, **headers)).status == 403


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"X_Original_URL": "https://app.test/app?refer=x"}, id="ingress-nginx"),
        pytest.param({"X_Forwarded_Uri": "/app?a=1&refer=eyJ/"}, id="traefik"),
        pytest.param({"X_Original_URI": "/?%72efer=eyJ"}, id="encoded-name"),
    ],
)
async def test_a_refer_link_is_401_even_with_a_session(
    sidecar: Sidecar, headers: dict[str, str]
) -> None:
    cookie = await sidecar.sign_in()
    # 401: the ingress sends the request to the proxy listener, which redeems the link.
    assert (await _auth(sidecar, cookie, **headers)).status == 401


async def test_the_sidecars_own_paths_are_401_for_the_proxy_listener(sidecar: Sidecar) -> None:
    cookie = await sidecar.sign_in()
    for uri in ("/_sidecar/logout", "/_sidecar", "/_sidecar/verify?token=x"):
        assert (await _auth(sidecar, cookie, X_Original_URI=uri)).status == 401, uri


async def test_envoy_path_prefix_carries_the_original_path_and_method(sidecar: Sidecar) -> None:
    cookie = await sidecar.sign_in(user="erin")
    headers = {"Cookie": f"sidecar_session={cookie}", "X-Forwarded-Proto": "https"}
    allowed = await sidecar.client.post("/_sidecar/envoy/api/orders?x=1", headers=headers)
    await _assert_bare(allowed)
    assert allowed.status == 200
    assert allowed.headers["X-Forwarded-User"] == "erin"
    # Envoy only overrides what the answer carries: the rest is removed by name.
    removed = allowed.headers["x-envoy-auth-headers-to-remove"].split(", ")
    assert {"x-auth-email", "x-forwarded-email", "x-forwarded-tenant"} <= set(removed)
    assert {"remote-user", "x-auth-request-user", "cf-connecting-ip"} <= set(removed)
    assert "x-forwarded-user" not in removed, "never the headers the answer sets"
    assert "x-forwarded-role" not in removed
    public = await sidecar.client.get("/_sidecar/envoy/static/a.js")
    assert public.status == 200
    assert set(sidecar.config.identity_header_names) <= set(
        public.headers["x-envoy-auth-headers-to-remove"].split(", ")
    )
    denied = await sidecar.client.delete("/_sidecar/envoy/admin/x", headers=headers)
    await _assert_bare(denied)
    assert denied.status == 403
    sidecar.client.cookie_jar.clear()
    nobody = await sidecar.client.get("/_sidecar/envoy/api/orders")
    await _assert_bare(nobody)
    assert nobody.status == 401


async def test_no_session_is_401_and_public_paths_are_200_without_identity(
    sidecar: Sidecar,
) -> None:
    assert (await _auth(sidecar, None, X_Original_URI="/app")).status == 401
    assert (await _auth(sidecar, "A" * 43, X_Original_URI="/app")).status == 401
    cookie = await sidecar.sign_in()
    for cookie_or_none in (None, cookie):
        public = await _auth(sidecar, cookie_or_none, X_Original_URI="/static/app.js?v=2")
        assert public.status == 200
        assert not any(name in public.headers for name in IDENTITY)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(
            {"X_Original_URI": "/admin", "X_Forwarded_Uri": "/app"}, id="two-targets-disagree"
        ),
        pytest.param(
            {"X_Original_URL": "https://app.test/app", "X_Original_URI": "/admin"},
            id="url-and-uri-disagree",
        ),
        pytest.param(
            {"X_Original_URI": "/app", "X_Original_Method": "GET", "X_Forwarded_Method": "PUT"},
            id="two-methods-disagree",
        ),
        pytest.param({"X_Original_URI": "app"}, id="relative-target"),
        pytest.param({"X_Original_URL": "/app"}, id="url-not-absolute"),
        pytest.param({"X_Original_URI": "/app", "X_Original_Method": "G T"}, id="bad-method"),
        pytest.param({"X_Forwarded_Uri": "/app", "X_Forwarded_Host": "a b"}, id="bad-host"),
        pytest.param({"X_Forwarded_Uri": "/app", "X_Forwarded_Proto": "ftp"}, id="bad-scheme"),
    ],
)
async def test_an_unusable_description_is_refused(
    sidecar: Sidecar, headers: dict[str, str]
) -> None:
    cookie = await sidecar.sign_in()
    assert (await _auth(sidecar, cookie, **headers)).status == 403


async def test_a_header_sent_twice_is_refused(sidecar: Sidecar) -> None:
    cookie = await sidecar.sign_in()
    response = await raw_request(
        sidecar.proxy_port,
        "GET",
        "/_sidecar/auth",
        f"Cookie: sidecar_session={cookie}",
        "X-Original-URI: /app",
        "X-Original-URI: /admin",
    )
    assert response.status == 403
    assert response.body == b""


async def test_headers_from_an_untrusted_peer_are_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path, UPSTREAM, {"public_paths": ["/static/**"]})
    async with running_sidecar(tmp_path, config=config) as sc:
        cookie = await sc.sign_in()
        # Judged: the sub-request's own path (under the prefix: 401), not the claimed one.
        with caplog.at_level(logging.WARNING, logger="sidecar.forward_auth"):
            for claim in ({"x_original_uri": "/static/x"}, {"X_Forwarded_Uri": "/static/x"}):
                assert (await _auth(sc, cookie, **claim)).status == 401
        warnings = [r for r in caplog.records if r.name == "sidecar.forward_auth"]
        assert len(warnings) == 1, "the set-up mistake is named, once"
        assert "proxy.trusted_proxies" in warnings[0].getMessage()


async def test_head_works_and_other_methods_are_405(sidecar: Sidecar) -> None:
    cookie = await sidecar.sign_in(user="hank")
    head = await sidecar.client.head(
        "/_sidecar/auth",
        headers={"Cookie": f"sidecar_session={cookie}", "X-Original-URI": "/app"},
    )
    assert head.status == 200
    assert head.headers["X-Forwarded-User"] == "hank"
    post = await sidecar.client.post("/_sidecar/auth")
    assert post.status == 405
    assert post.headers["Allow"] == "GET, HEAD"


# -- unauthenticated modes, store, revocation ------------------------------------------
async def test_redirect_mode_gives_a_hint_and_pass_mode_a_bare_200(tmp_path: Path) -> None:
    redirect = make_config(
        tmp_path, UPSTREAM, {**TRUSTED, "unauthenticated": "redirect", "login_url": "/login"}
    )
    async with running_sidecar(tmp_path, config=redirect) as sc:
        response = await _auth(sc, None, X_Original_URI="/app?x=1")
        assert response.status == 401
        assert response.headers["X-Sidecar-Redirect"] == "/login?rd=/app?x%3D1"
        # "//evil.test" would make rd leave the site: refused like the proxy refuses it.
        assert (await _auth(sc, None, X_Original_URI="//evil.test/app")).status == 403
        refer = await _auth(sc, None, X_Original_URI="/app?refer=x")
        assert refer.status == 401
    passing = make_config(tmp_path / "p", UPSTREAM, {**TRUSTED, "unauthenticated": "pass"})
    (tmp_path / "p").mkdir()
    async with running_sidecar(tmp_path, config=passing) as sc:
        response = await _auth(sc, None, X_Original_URI="/app")
        assert response.status == 200
        assert not any(name in response.headers for name in IDENTITY)
        assert "X-Sidecar-Redirect" not in response.headers


async def test_store_down_is_503(sidecar: Sidecar) -> None:
    cookie = await sidecar.sign_in()
    sidecar.clock.advance(sidecar.config.session.cache_ttl)  # the cache no longer answers
    await sidecar.store.close()
    try:
        assert (await _auth(sidecar, cookie, X_Original_URI="/app")).status == 503
        # Public paths need no store.
        assert (await _auth(sidecar, cookie, X_Original_URI="/health")).status == 200
    finally:
        await sidecar.store.open()
    assert (await _auth(sidecar, cookie, X_Original_URI="/app")).status == 200


async def test_a_revoked_session_is_refused_within_cache_ttl(sidecar: Sidecar) -> None:
    cookie = await sidecar.sign_in(user="ivy")
    assert (await _auth(sidecar, cookie, X_Original_URI="/app")).status == 200
    # Another replica ends the session: this process's cache may answer until cache_ttl.
    assert await sidecar.store.delete_user_sessions("ivy") == 1
    sidecar.clock.advance(sidecar.config.session.cache_ttl)
    assert (await _auth(sidecar, cookie, X_Original_URI="/app")).status == 401


class _CountingStore:
    """A real SQLite store that counts the calls made to it."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if not callable(method):
            return method

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return await cast(Callable[..., Awaitable[Any]], method)(*args, **kwargs)

        return counted


async def test_a_cached_session_costs_no_store_io_and_no_crypto(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(tmp_path, UPSTREAM, TRUSTED)
    counting = _CountingStore(SQLiteStore(str(tmp_path / "sidecar.db")))
    async with running_sidecar(tmp_path, config=config, store=cast(Store, counting)) as sc:
        cookie = await sc.sign_in(user="jo")
        assert (await _auth(sc, cookie, X_Original_URI="/warm")).status == 200
        counting.calls.clear()

        def no_crypto(*args: object, **kwargs: object) -> None:
            raise AssertionError("forward-auth opened or sealed a token")

        monkeypatch.setattr(TokenCodec, "open", no_crypto)
        monkeypatch.setattr(TokenCodec, "seal", no_crypto)
        for _ in range(20):
            response = await _auth(sc, cookie, X_Original_URI="/app/page")
            assert response.status == 200
            assert response.headers["X-Forwarded-User"] == "jo"
        assert counting.calls == []


# -- <prefix>/signin (ingress-nginx auth-signin) ----------------------------------------
async def test_signin_redeems_the_refer_link_inside_rd(sidecar: Sidecar) -> None:
    token, _ = sidecar.seal(user="kim", module="orders")
    rd = f"http://app.test/app/page?a=1&refer={token}/"
    response = await sidecar.client.get(
        "/_sidecar/signin", params={"rd": rd}, allow_redirects=False
    )
    assert response.status == 303
    assert response.headers["Location"] == "/app/page?a=1#/display/orders"
    cookie = response.cookies["sidecar_session"].value
    assert (await _auth(sidecar, cookie, X_Original_URI="/app/page?a=1")).status == 200
    again = await sidecar.client.get("/_sidecar/signin", params={"rd": rd}, allow_redirects=False)
    assert again.status == 410, "one-time links stay one-time through signin"


@pytest.mark.parametrize(
    "rd",
    ["http://evil.test/?refer=x", "//evil.test/x", "/\\evil.test", "https://app.test/x"],
)
async def test_signin_refuses_another_origin(sidecar: Sidecar, rd: str) -> None:
    response = await sidecar.client.get(
        "/_sidecar/signin", params={"rd": rd}, allow_redirects=False
    )
    assert response.status == 400
    assert "Set-Cookie" not in response.headers


async def test_signin_without_a_link_shows_the_link_needed_page(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path, config=make_config(tmp_path, UPSTREAM, TRUSTED)) as sc:
        response = await sc.client.get("/_sidecar/signin", params={"rd": "http://app.test/x"})
        assert response.status == 401
        assert "sign in with a valid link" in await response.text()
    redirect = make_config(
        tmp_path / "r", UPSTREAM, {"unauthenticated": "redirect", "login_url": "/login"}
    )
    (tmp_path / "r").mkdir()
    async with running_sidecar(tmp_path, config=redirect) as sc:
        response = await sc.client.get(
            "/_sidecar/signin", params={"rd": "http://app.test/x?y=1"}, allow_redirects=False
        )
        assert response.status == 302
        assert response.headers["Location"] == "/login?rd=/x?y%3D1"


async def test_signin_confirm_links_burn_only_on_the_post(sidecar: Sidecar) -> None:
    token, _ = sidecar.seal(user="lee", role="Admin")
    rd = f"http://app.test/?refer={token}"
    shown = await sidecar.client.get("/_sidecar/signin", params={"rd": rd})
    assert shown.status == 200
    assert "Continue" in await shown.text()
    posted = await sidecar.client.post("/_sidecar/signin", params={"rd": rd}, allow_redirects=False)
    assert posted.status == 303
    assert "sidecar_session" in posted.cookies


@pytest.mark.parametrize(
    "prefix", ["/envoy", "/_sidecar", "/_sidecar/auth", "/_sidecar/x/", "_sidecar/envoy"]
)
def test_envoy_path_prefix_must_be_a_new_path_under_the_prefix(tmp_path: Path, prefix: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(tmp_path, UPSTREAM, forward_auth={"envoy_path_prefix": prefix})
    assert any(e.startswith("forward_auth.envoy_path_prefix: got") for e in caught.value.errors)


async def test_the_config_knows_every_route_under_the_prefix(sidecar: Sidecar) -> None:
    # forward_auth.envoy_path_prefix must not shadow one of them (sidecar/config/model.py).
    prefix = sidecar.config.proxy.prefix
    app = build_proxy_app(sidecar.services)
    fixed = {
        info["path"]
        for route in app.router.routes()
        if route.resource is not None and "path" in (info := route.resource.get_info())
    }
    own = {p.removeprefix(prefix) for p in fixed if p.startswith(prefix + "/")}
    assert own <= set(PREFIX_ROUTES), own - set(PREFIX_ROUTES)


# -- the public origin, applied to the original request --------------------------------
@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({"X_Forwarded_Uri": "/app", "X_Forwarded_Host": "app.test"}, 200, id="ok"),
        pytest.param({"X_Forwarded_Uri": "/app", "X_Forwarded_Host": "evil.test"}, 403, id="xfh"),
        pytest.param({"X_Original_URL": "https://evil.test/app"}, 403, id="original-url"),
        pytest.param({"X_Original_URL": "https://app.test:8443/app"}, 200, id="port-ignored"),
        pytest.param({"X_Original_URI": "/app", "Host": "evil.test"}, 403, id="nginx-host"),
    ],
)
async def test_the_original_host_must_be_the_public_one(
    sidecar: Sidecar, headers: dict[str, str], status: int
) -> None:
    cookie = await sidecar.login()
    assert (await _auth(sidecar, cookie, **headers)).status == status


async def test_envoy_original_host_is_checked(sidecar: Sidecar) -> None:
    cookie = await sidecar.login()
    for host, status in (("app.test", 200), ("evil.test", 403)):
        response = await sidecar.client.get(
            "/_sidecar/envoy/app",
            headers={"Cookie": f"sidecar_session={cookie}", "Host": host},
        )
        assert response.status == status, host


@pytest.mark.parametrize(
    ("origin", "status"),
    [(None, 200), ("http://app.test", 200), ("http://evil.test", 403), ("null", 403)],
)
async def test_a_websocket_handshake_from_another_origin_is_refused(
    sidecar: Sidecar, origin: str | None, status: int
) -> None:
    cookie = await sidecar.login()
    # Sec-WebSocket-Key is what tells: nginx, Traefik and Caddy drop the hop-by-hop Upgrade.
    headers = {"X_Original_URI": "/ws", "Sec_WebSocket_Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    if origin is not None:
        headers["Origin"] = origin
    assert (await _auth(sidecar, cookie, **headers)).status == status


async def test_signin_post_from_another_origin_is_refused(sidecar: Sidecar) -> None:
    token, _ = sidecar.seal(user="max", role="Admin")
    rd = f"http://app.test/?refer={token}"
    refused = await sidecar.client.post(
        "/_sidecar/signin",
        params={"rd": rd},
        headers={"Origin": "http://evil.test", "Accept": "application/json"},
        allow_redirects=False,
    )
    assert refused.status == 403
    assert (await refused.json())["error"] == "cross_origin"
    assert "Set-Cookie" not in refused.headers
    posted = await sidecar.client.post(
        "/_sidecar/signin",
        params={"rd": rd},
        headers={"Origin": "http://app.test"},
        allow_redirects=False,
    )
    assert posted.status == 303, "the link was not used up by the refused POST"
