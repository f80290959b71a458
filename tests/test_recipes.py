"""The Traefik, Envoy and Caddy recipes (deploy/traefik, deploy/envoy, deploy/caddy).

* Caddy runs for real (Debian's caddy): ``caddy adapt`` parses the shipped Caddyfile with
  Caddy's own parser, and the recipe fronts the demo app with the sidecar beside it.
* Traefik and Envoy are not packaged for Debian: their files are checked against the field
  names those projects document (Traefik's ForwardAuth middleware reference; Envoy's
  ``ext_authz.proto`` v3), so a misspelt key — silently ignored by both — fails here.
* Every recipe copies exactly the identity headers the recipe's sidecar roles render, and
  asks the sidecar at ``<prefix>/auth`` (or Envoy's ``forward_auth.envoy_path_prefix``).

The header conventions themselves are exercised against the endpoint in
tests/test_forward_auth.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.config import parse_config
from sidecar.tokens.keys import generate_keyset
from tests.nginx_stack import CADDYFILE, RECIPE, ROOT, Stack, caddy_binary, running_stack
from tests.test_nginx_forward_auth import call

TRAEFIK = ROOT / "deploy" / "traefik" / "forward-auth.yml"
ENVOY = ROOT / "deploy" / "envoy" / "ext-authz.yaml"

# doc.traefik.io, "ForwardAuth" middleware reference (v3): every option it lists.
TRAEFIK_FORWARD_AUTH = frozenset(
    {"address", "tls", "trustForwardHeader", "authResponseHeaders", "authResponseHeadersRegex",
     "authRequestHeaders", "addAuthCookiesToResponse", "headerField", "forwardBody",
     "maxBodySize", "preserveLocationHeader", "preserveRequestMethod"}
)  # fmt: skip
TRAEFIK_ROUTER = frozenset(
    {"rule", "ruleSyntax", "priority", "middlewares", "service", "entryPoints", "tls",
     "observability"}
)  # fmt: skip
# envoy api/envoy/extensions/filters/http/ext_authz/v3/ext_authz.proto (v3).
ENVOY_EXT_AUTHZ = frozenset(
    {"grpc_service", "http_service", "transport_api_version", "failure_mode_allow",
     "with_request_body", "clear_route_cache", "status_on_error", "metadata_context_namespaces",
     "typed_metadata_context_namespaces", "filter_enabled", "filter_enabled_metadata",
     "deny_at_disable", "include_peer_certificate", "stat_prefix",
     "bootstrap_metadata_labels_key", "allowed_headers", "include_tls_session", "@type"}
)  # fmt: skip
ENVOY_HTTP_SERVICE = frozenset(
    {"server_uri", "path_prefix", "authorization_request", "authorization_response"}
)
ENVOY_AUTHZ_RESPONSE = frozenset(
    {"allowed_upstream_headers", "allowed_upstream_headers_to_append",
     "allowed_client_headers", "allowed_client_headers_on_success",
     "dynamic_metadata_from_headers"}
)  # fmt: skip
ENVOY_HTTP_URI = frozenset({"uri", "cluster", "timeout"})  # config/core/v3/http_uri.proto
ENVOY_PER_ROUTE = frozenset({"@type", "disabled", "check_settings"})


def _role_headers() -> list[str]:
    doc = yaml.safe_load((RECIPE / "sidecar.yaml").read_text(encoding="utf-8"))
    return sorted({name for role in doc["roles"].values() for name in role["headers"]})


def _sidecar_prefix() -> str:
    doc = yaml.safe_load((RECIPE / "sidecar.yaml").read_text(encoding="utf-8"))
    return str(doc["proxy"].get("prefix", "/_sidecar"))


# -- Traefik ---------------------------------------------------------------------------
def test_traefik_middleware_uses_documented_fields() -> None:
    doc = yaml.safe_load(TRAEFIK.read_text(encoding="utf-8"))
    middleware = doc["http"]["middlewares"]["sidecar-auth"]
    assert set(middleware) == {"forwardAuth"}
    forward = middleware["forwardAuth"]
    assert set(forward) <= TRAEFIK_FORWARD_AUTH, set(forward) - TRAEFIK_FORWARD_AUTH
    assert forward["address"].endswith(_sidecar_prefix() + "/auth")
    assert forward["trustForwardHeader"] is False, "Traefik must set X-Forwarded-* itself"
    assert sorted(forward["authResponseHeaders"]) == _role_headers()
    # The regex (Go RE2; this one reads the same in Python) strips every spelling first.
    spellings = re.compile(forward["authResponseHeadersRegex"])
    for name in _role_headers():
        for variant in (name, name.lower(), name.replace("-", "_"), name.replace("-", ".")):
            assert spellings.search(variant), variant
    assert not spellings.search("X-Forwarded-For")
    assert {"Cookie", "Origin", "Sec-WebSocket-Key"} <= set(forward["authRequestHeaders"])
    routers = doc["http"]["routers"]
    for name, router in routers.items():
        assert set(router) <= TRAEFIK_ROUTER, name
        assert router["service"] in doc["http"]["services"]
    # The sidecar's own pages and links outrank the protected app and skip the middleware.
    app = routers["app"]
    own = [r for n, r in routers.items() if n != "app"]
    assert {r["rule"] for r in own} == {
        f"PathPrefix(`{_sidecar_prefix()}`)",
        "QueryRegexp(`refer`, `.*`)",
    }
    assert all(r["priority"] > app["priority"] and "middlewares" not in r for r in own)
    assert app["middlewares"] == ["sidecar-auth"]


# -- Envoy -----------------------------------------------------------------------------
def _envoy_hcm() -> dict[str, Any]:
    doc = yaml.safe_load(ENVOY.read_text(encoding="utf-8"))
    (listener,) = doc["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (hcm,) = chain["filters"]
    config = hcm["typed_config"]
    assert isinstance(config, dict)
    return config


def test_envoy_filter_uses_documented_fields(tmp_path: Path) -> None:
    hcm = _envoy_hcm()
    # config/core/v3/protocol.proto HttpProtocolOptions.HeadersWithUnderscoresAction
    options = hcm["common_http_protocol_options"]
    assert options == {"headers_with_underscores_action": "DROP_HEADER"}
    ext_authz = hcm["http_filters"][0]
    assert ext_authz["name"] == "envoy.filters.http.ext_authz"
    authz = ext_authz["typed_config"]
    assert set(authz) <= ENVOY_EXT_AUTHZ, set(authz) - ENVOY_EXT_AUTHZ
    assert authz["@type"].endswith("envoy.extensions.filters.http.ext_authz.v3.ExtAuthz")
    assert authz["failure_mode_allow"] is False
    service = authz["http_service"]
    assert set(service) <= ENVOY_HTTP_SERVICE
    assert set(service["server_uri"]) <= ENVOY_HTTP_URI
    assert set(service["authorization_response"]) <= ENVOY_AUTHZ_RESPONSE
    upstream = service["authorization_response"]["allowed_upstream_headers"]["patterns"]
    assert sorted(p["exact"] for p in upstream) == sorted(h.lower() for h in _role_headers())
    sent = {p["exact"] for p in authz["allowed_headers"]["patterns"]}
    assert {"cookie", "origin", "sec-websocket-key"} <= sent

    # path_prefix is a valid forward_auth.envoy_path_prefix for the sidecar.
    keyset = generate_keyset().to_json()
    config = parse_config(
        yaml.safe_dump(
            {
                "public_url": "https://app.example.com",
                "keys": {"env": "K"},
                "admin": {"key": {"env": "A"}},
                "proxy": {"upstream": "http://127.0.0.1:3000"},
                "roles": {"Viewer": {}},
                "forward_auth": {"envoy_path_prefix": service["path_prefix"]},
            }
        ),
        env={"K": keyset, "A": "a" * 40},
        base_dir=tmp_path,
    )
    assert config.forward_auth.envoy_path_prefix == service["path_prefix"]


def test_envoy_routes_links_and_own_pages_to_the_sidecar_unfiltered() -> None:
    (vhost,) = _envoy_hcm()["route_config"]["virtual_hosts"]
    routes = vhost["routes"]
    *bypassing, last = routes
    assert last["route"]["cluster"] == "app"
    assert "typed_per_filter_config" not in last
    for route in bypassing:
        assert route["route"]["cluster"] == "sidecar"
        per_route = route["typed_per_filter_config"]["envoy.filters.http.ext_authz"]
        assert set(per_route) <= ENVOY_PER_ROUTE
        assert per_route["disabled"] is True
    matches = [r["match"] for r in bypassing]
    assert {"prefix": _sidecar_prefix() + "/"} in matches
    assert {"prefix": "/", "query_parameters": [{"name": "refer", "present_match": True}]} in (
        matches
    )


# -- Caddy -----------------------------------------------------------------------------
def test_caddyfile_parses_with_caddy_and_copies_every_identity_header() -> None:
    exe = caddy_binary()
    adapted = subprocess.run(
        [exe, "adapt", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert adapted.returncode == 0, adapted.stderr
    text = adapted.stdout
    json.loads(text)
    for name in _role_headers():
        assert f'"{name}":["{{http.reverse_proxy.header.{name}}}"]' in text
        # the client's copy is deleted before forward_auth runs (order kept by route {})
        assert text.index(f'"delete":["{name}"]') < text.index('"rewrite":{"method":"GET"')
    assert f'"uri":"{_sidecar_prefix()}/auth"' in text


@pytest.fixture(scope="module")
def caddy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("caddy-stack"), front="caddy") as running:
        yield running


def test_through_caddy_link_identity_refusals(caddy: Stack) -> None:
    link = caddy.mint("alice", module="orders", tenant="acme")
    target = link.removeprefix(caddy.nginx).partition("#")[0]
    redeemed = call(caddy.nginx, "GET", target)
    assert redeemed.status == 303, redeemed.body
    assert redeemed.headers["Location"] == "/#/display/orders"
    cookie = SimpleCookie(redeemed.headers["Set-Cookie"])["sidecar_session"].value
    session = ("Cookie", f"sidecar_session={cookie}")

    whoami = call(
        caddy.nginx,
        "GET",
        "/api/whoami",
        session,
        ("X-Forwarded-User", "mallory"),
        ("X-Forwarded-Module", "evil"),
    )
    assert whoami.status == 200, whoami.body
    doc = whoami.json()
    assert doc["user"] == "alice"
    assert doc["tenant"] == "acme"
    assert "mallory" not in json.dumps(doc)
    assert doc["headers"]["X-Forwarded-Module"] == "orders"  # type: ignore[index]

    assert call(caddy.nginx, "GET", "/admin/x", session).status == 403
    nobody = call(caddy.nginx, "GET", "/api/whoami", ("X-Forwarded-User", "mallory"))
    assert nobody.status == 401
    assert nobody.body == b"", "Caddy shows the sidecar's answer: it has no body"
    spoofed_public = call(caddy.nginx, "GET", "/app.js", ("X-Forwarded-User", "mallory"))
    assert spoofed_public.status == 200

    out = call(caddy.nginx, "POST", "/_sidecar/logout", session, ("Content-Length", "0"),
               ("Origin", caddy.nginx))  # fmt: skip
    assert out.status == 303
    assert call(caddy.nginx, "GET", "/api/whoami", session).status == 401


@pytest.mark.parametrize(
    ("header", "kept"),
    [
        ("sidecar_session={c}", []),
        ("sidecar_session={c}; a=1", ["a"]),
        ("a=1;sidecar_session={c}", ["a"]),
        ("a=1; mysidecar_session=2; sidecar_session={c}", ["a", "mysidecar_session"]),
        ("sidecar_session={c}; a=1; sidecar_session=old; b=2", ["a", "b"]),
        ("sidecar_session={c}; a=1; __Host-sidecar_session=new", ["a"]),
        ("__Secure-sidecar_session=x; sidecar_session={c}; b=2", ["b"]),
    ],
)
def test_through_caddy_the_session_cookie_never_reaches_the_app(
    caddy: Stack, header: str, kept: list[str]
) -> None:
    link = caddy.mint("hal")
    redeemed = call(caddy.nginx, "GET", link.removeprefix(caddy.nginx).partition("#")[0])
    assert redeemed.status == 303, redeemed.body
    cookie = SimpleCookie(redeemed.headers["Set-Cookie"])["sidecar_session"].value
    answer = call(caddy.nginx, "GET", "/api/whoami", ("Cookie", header.format(c=cookie)))
    assert answer.status == 200, answer.body
    assert answer.json()["user"] == "hal", "forward_auth still got the session cookie"
    assert answer.json()["cookies"] == kept
