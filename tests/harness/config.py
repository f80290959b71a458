"""The harness's two config presets, as YAML documents run through the real parser.

* :func:`make_config` — the small preset the feature tests use: ``http://app.test``,
  roles ``Authenticated`` (deny ``/admin/**``, ``/secret.txt``), ``Reader`` (reusable,
  narrow allow list) and ``Admin`` (confirm page), default limits.
* :func:`config_doc` — the adversarial preset of ``tests/security``: every surface on
  (links, public paths, ``unauthenticated: deny``), generous rate limits so an attack
  loop measures the defence under test and not a limit, and an 8 KiB header limit.

Keys and the admin key come from the environment (:data:`ENV_NAMES`), as in production.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from pathlib import Path

import yaml

from sidecar.config import Config, parse_config
from sidecar.tokens.keys import KeySet, generate_keyset

ADMIN_KEY = "adm-" + secrets.token_urlsafe(32)
PUBLIC_URL = "https://app.example.com"
ROLES: dict[str, object] = {
    "Authenticated": {
        "params": ["tenant"],
        "modules": ["*"],
        "deny": ["/admin/**", "/secret.txt"],
        "headers": {
            "X-Forwarded-User": "{user_id}",
            "X-Forwarded-Role": "{role}",
            "X-Forwarded-Tenant": "{param.tenant}",
        },
    },
    "Reader": {
        "allow": ["/docs/**", "/api/*/read"],
        "one_time": False,
        "headers": {"X-Forwarded-User": "{user_id}", "X-Auth-Email": "{email}"},
    },
    "Admin": {"redeem": "confirm"},
}


def environment(keyset: KeySet) -> dict[str, str]:
    """The environment both presets read their secrets from."""
    return {"SIDECAR_KEYSET": keyset.to_json(), "SIDECAR_ADMIN_KEY": ADMIN_KEY}


def make_config(
    tmp: Path, upstream: str, proxy: Mapping[str, object] | None = None, **top: object
) -> Config:
    """The small preset; ``proxy`` is merged into the ``proxy`` section, ``top`` replaces
    whole top-level sections. Listen addresses are the defaults: :func:`running_sidecar`
    moves them to free loopback ports."""
    doc: dict[str, object] = {
        "public_url": "http://app.test",
        "keys": {"env": "SIDECAR_KEYSET"},
        "admin": {"key": {"env": "SIDECAR_ADMIN_KEY"}},
        "proxy": {
            "upstream": upstream,
            "upstream_timeout": "500ms",
            "allowed_hosts": ["127.0.0.1"],  # the test clients' Host
            **(proxy or {}),
        },
        "session": {"cookie_secure": False},
        "store": {"url": f"sqlite:///{tmp}/sidecar.db"},
        "default_role": "Authenticated",
        "roles": ROLES,
        "shutdown": {"grace_period": "1s"},
        **top,
    }
    return parse_config(yaml.safe_dump(doc), env=environment(generate_keyset()), base_dir=tmp)


def deep_merge(base: dict[str, object], extra: dict[str, object]) -> dict[str, object]:
    out = dict(base)
    for key, value in extra.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            out[key] = deep_merge(old, value)
        else:
            out[key] = value
    return out


def config_doc(
    *, upstream: str, store_url: str, admin_port: int, proxy_port: int
) -> dict[str, object]:
    """The adversarial preset, as a document (tests merge overrides into it)."""
    return {
        "public_url": PUBLIC_URL,
        "keys": {"env": "SIDECAR_KEYSET"},
        "admin": {
            "listen": f"127.0.0.1:{admin_port}",
            "key": {"env": "SIDECAR_ADMIN_KEY"},
            "mint_rate": "100000/1m",
        },
        "proxy": {
            "listen": f"127.0.0.1:{proxy_port}",
            "upstream": upstream,
            "connect_timeout": "2s",
            "upstream_timeout": "5s",
            "unauthenticated": "deny",
            "public_paths": ["/favicon.ico", "/static/**"],
            "max_header_size": "8KiB",
            "failed_redeem_rate": "100000/5m",
            # Tests reach the listener as 127.0.0.1:<port>; browsers use the public URL.
            "allowed_hosts": ["127.0.0.1"],
        },
        "session": {"cookie_secure": False},
        "store": {"url": store_url},
        "default_role": "Authenticated",
        "roles": {
            "Authenticated": {
                "params": ["tenant"],
                "allow": ["/**"],
                "deny": ["/admin/**", "/private/**", "/api/internal/**"],
                "headers": {
                    "X-Forwarded-User": "{user_id}",
                    "X-Forwarded-Role": "{role}",
                    "X-Forwarded-Tenant": "{param.tenant}",
                    "X-Forwarded-Email": "{email}",
                },
            },
            "Confirm": {"redeem": "confirm"},
            "Reusable": {"one_time": False},
            "Narrow": {"allow": ["/app/**", "/index.html"], "deny": ["/app/admin/**"]},
        },
        "links": {
            "role": "Authenticated",
            "default_redirect": PUBLIC_URL + "/",
            "redirect_allow": [PUBLIC_URL + "/**", "https://*.example.com/welcome"],
            "otp_rate": "100000/15m",
            "create_user_on_magiclink": True,
        },
        "logging": {"level": "debug"},
        "shutdown": {"grace_period": "1s"},
    }
