"""deploy/kubernetes/forward-auth: ingress-nginx asking the sidecar (auth-url) about each request.

Strict schema validation runs in tests/test_manifests.py over every file. Here: what the schemas
cannot see — annotation names ingress-nginx actually reads, the sub-request URL pointing at the
sidecar's Service and ``<prefix>/auth``, every identity header the roles render being copied
(and nothing else), the sidecar's own pages routed to it without auth, the app's port open to
the ingress controller only, and the ConfigMap being a valid config for this codebase.
"""

from __future__ import annotations

import copy
import re
import secrets
from pathlib import Path

import kubernetes_validate
import pytest
from yarl import URL

from sidecar.proxy.strip import DEFAULT_STRIP_HEADERS
from sidecar.tokens.keys import generate_keyset
from tests.test_manifests import (
    FORWARD_AUTH,
    K8S_VERSION,
    Doc,
    _container,
    _parse_with_secrets,
    _sidecar_yaml,
    _variant,
    _workload,
)

PREFIX = "nginx.ingress.kubernetes.io/"
# ingress-nginx's external-authentication annotations, as its annotations reference lists them
# (docs/user-guide/nginx-configuration/annotations.md, "External Authentication"). A misspelt
# name (auth-response-header) is silently ignored by the controller: no auth at all.
AUTH_ANNOTATIONS = frozenset(
    {"auth-url", "auth-method", "auth-signin", "auth-signin-redirect-param",
     "auth-response-headers", "auth-proxy-set-headers", "auth-request-redirect",
     "auth-cache-key", "auth-cache-duration", "auth-keepalive", "auth-keepalive-share-vars",
     "auth-keepalive-requests", "auth-keepalive-timeout", "auth-snippet", "auth-always-set-cookie",
     "enable-global-auth"}
)  # fmt: skip


@pytest.fixture(scope="module")
def docs() -> dict[str, Doc]:
    return _variant(FORWARD_AUTH)


def _config_text(docs: dict[str, Doc]) -> str:
    return _sidecar_yaml(docs)


def test_annotations_are_ones_ingress_nginx_reads(docs: dict[str, Doc]) -> None:
    annotations = docs["Ingress/legacy-app"]["metadata"]["annotations"]
    names = {k.removeprefix(PREFIX) for k in annotations}
    assert all(k.startswith(PREFIX) for k in annotations)
    assert names <= AUTH_ANNOTATIONS, names - AUTH_ANNOTATIONS
    assert {"auth-url", "auth-signin", "auth-response-headers"} <= names


def test_the_sub_request_goes_to_the_sidecar_service(docs: dict[str, Doc], tmp_path: Path) -> None:
    config = _parse_with_secrets(
        _config_text(docs),
        tmp_path / "secrets",
        keyset=generate_keyset().to_json(),
        admin_key=secrets.token_urlsafe(32),
    )
    annotations = docs["Ingress/legacy-app"]["metadata"]["annotations"]
    auth = URL(annotations[PREFIX + "auth-url"])
    service = docs["Service/legacy-app-sidecar"]
    assert auth.host is not None
    assert auth.host.split(".")[0] == service["metadata"]["name"]
    assert auth.host.endswith(".svc.cluster.local")
    (port,) = service["spec"]["ports"]
    assert auth.port == port["port"]
    assert auth.path == config.proxy.prefix + "/auth"
    sidecar = _container(_workload(docs)["spec"]["template"]["spec"], "sidecar")
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert ports[port["targetPort"]] == config.proxy.listen.port

    signin = annotations[PREFIX + "auth-signin"]
    assert signin == f"https://$host{config.proxy.prefix}/signin"
    assert URL(config.public_url).scheme == "https"
    # ingress-nginx's X-Original-URL and X-Forwarded-For come from the controller's pods.
    assert config.proxy.trusted_proxies


# ingress-nginx's check of each auth-response-headers entry (internal/ingress/annotations/
# authreq/main.go, headerRegexp): one bad name denies the whole location.
INGRESS_NGINX_HEADER = re.compile(r"[a-zA-Z\d\-_]+")
# Path overrides some frameworks honour, beyond strip.py's list (the nginx recipe blanks them too).
PATH_OVERRIDES = frozenset({"x-original-url", "x-rewrite-url", "x-forwarded-uri"})


def test_identity_and_well_known_headers_are_listed_and_nothing_else(
    docs: dict[str, Doc], tmp_path: Path
) -> None:
    """Listed = the roles' headers (copied from the sidecar's 200) + strip.py's names + path
    overrides. ingress-nginx sets each listed header from the auth response, which has no value
    for the extra ones, so nginx sends none: the client's copy is dropped, not passed on."""
    config = _parse_with_secrets(
        _config_text(docs),
        tmp_path / "secrets",
        keyset=generate_keyset().to_json(),
        admin_key=secrets.token_urlsafe(32),
    )
    copied = docs["Ingress/legacy-app"]["metadata"]["annotations"][PREFIX + "auth-response-headers"]
    names = [n.strip() for n in copied.split(",")]
    assert all(INGRESS_NGINX_HEADER.fullmatch(n) for n in names), names
    listed = [n.lower() for n in names]
    assert len(listed) == len(set(listed)), "a name twice"
    rendered = {h.name.lower() for role in config.roles.values() for h in role.headers}
    stripped = {n.lower() for n in DEFAULT_STRIP_HEADERS if not n.endswith("*")}
    assert set(listed) == rendered | stripped | PATH_OVERRIDES
    # What cannot be listed (prefixes) is what the README names as not covered.
    assert {n for n in DEFAULT_STRIP_HEADERS if n.endswith("*")} == {
        "X-Ms-Token-*",
        "X-Amzn-Oidc-*",
    }


def test_the_sidecars_own_pages_bypass_auth(docs: dict[str, Doc], tmp_path: Path) -> None:
    own = docs["Ingress/legacy-app-sidecar"]
    assert not own["metadata"].get("annotations"), "no auth-url on the sidecar's own pages"
    (rule,) = own["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/_sidecar"
    assert path["pathType"] == "Prefix"
    assert path["backend"]["service"]["name"] == "legacy-app-sidecar"
    main = docs["Ingress/legacy-app"]
    assert rule["host"] == main["spec"]["rules"][0]["host"], "same host: the cookie is shared"
    (app_path,) = main["spec"]["rules"][0]["http"]["paths"]
    assert app_path["backend"]["service"]["name"] == "legacy-app"


def test_the_app_port_is_open_to_the_ingress_controller_only(docs: dict[str, Doc]) -> None:
    pod = _workload(docs)["spec"]["template"]["spec"]
    app = _container(pod, "app")
    (app_port,) = app["ports"]
    env = {e["name"]: e.get("value") for e in app["env"]}
    assert env["HOST"] == "0.0.0.0"  # noqa: S104  # the ingress connects to it
    service = docs["Service/legacy-app"]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [app_port["name"]]
    rules = docs["NetworkPolicy/legacy-app"]["spec"]["ingress"]
    for rule in rules:
        assert "from" in rule, "no port is open to every pod"
    port = app_port["containerPort"]
    reaching_app = [r for r in rules if any(p["port"] == port for p in r["ports"])]
    assert len(reaching_app) == 1
    assert reaching_app[0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    ]


def test_a_misspelt_annotation_is_caught() -> None:
    ingress = copy.deepcopy(_variant(FORWARD_AUTH)["Ingress/legacy-app"])
    annotations = ingress["metadata"]["annotations"]
    annotations[PREFIX + "auth-response-header"] = annotations.pop(PREFIX + "auth-response-headers")
    # The schema accepts any annotation: only the list above catches it.
    kubernetes_validate.validate(ingress, K8S_VERSION, strict=True)
    names = {k.removeprefix(PREFIX) for k in annotations}
    assert not names <= AUTH_ANNOTATIONS


def test_redis_wants_the_secret_password_and_the_sidecar_insists_it_persists(
    docs: dict[str, Doc], tmp_path: Path
) -> None:
    config = _parse_with_secrets(
        _config_text(docs),
        tmp_path / "secrets",
        keyset=generate_keyset().to_json(),
        admin_key=secrets.token_urlsafe(32),
    )
    assert config.store.password is not None
    assert config.store.require_persistence is True
    secret = docs["Secret/legacy-app-sidecar"]
    assert "redis-password" in secret["stringData"]
    redis = _container(docs["StatefulSet/legacy-app-redis"]["spec"]["template"]["spec"], "redis")
    args = redis["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert args[args.index("--appendonly") + 1] == "yes"
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in redis["env"]}
    for name in ("REDIS_PASSWORD", "REDISCLI_AUTH"):
        assert refs[name] == {"name": secret["metadata"]["name"], "key": "redis-password"}
