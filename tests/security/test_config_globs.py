"""Config globs that could never match are refused when the config loads (issue #12, item 2).

A ``deny`` glob that matches nothing is no rule at all, and a ``redirect_allow`` wildcard over
a whole registrable domain lets anyone who registers a matching host receive auth links.
Every case here used to load silently; each must now be an error naming its YAML path.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import ConfigError
from tests.security import casebook
from tests.test_config import build_config, config_doc, errors_of

ROLE = "roles.Authenticated"
# (section, key, bad value, the YAML path the error must name)
NEVER_MATCH = [
    ("role", "deny", "admin/**", f"{ROLE}.deny[0]"),
    ("role", "deny", "/ok/***", f"{ROLE}.deny[0]"),
    ("role", "deny", "/admin**", f"{ROLE}.deny[0]"),
    ("role", "deny", "/a/**x/b", f"{ROLE}.deny[0]"),
    ("role", "deny", "/admin/../x", f"{ROLE}.deny[0]"),
    ("role", "deny", "/admin/./x", f"{ROLE}.deny[0]"),
    ("role", "deny", "/admin//x", f"{ROLE}.deny[0]"),
    ("role", "deny", "/admin?x=1", f"{ROLE}.deny[0]"),
    ("role", "deny", "/admin#x", f"{ROLE}.deny[0]"),
    ("role", "deny", "\\admin\\**", f"{ROLE}.deny[0]"),
    ("role", "deny", "*/admin", f"{ROLE}.deny[0]"),
    ("role", "deny", "", f"{ROLE}.deny"),
    ("role", "allow", "relative/path", f"{ROLE}.allow[0]"),
    ("role", "allow", "**", f"{ROLE}.allow[0]"),
    ("role", "modules", "admin.*", f"{ROLE}.modules[0]"),
    ("role", "modules", "[ab]*", f"{ROLE}.modules[0]"),
    ("proxy", "public_paths", "static/**", "proxy.public_paths[0]"),
    ("proxy", "public_paths", "/static/***", "proxy.public_paths[0]"),
    ("links", "redirect_allow", "https://**", "links.redirect_allow[0]"),
    ("links", "redirect_allow", "https://**/**", "links.redirect_allow[0]"),
    ("links", "redirect_allow", "https://*", "links.redirect_allow[0]"),
    ("links", "redirect_allow", "https://*.com/**", "links.redirect_allow[0]"),
    ("links", "redirect_allow", "https://**.com/", "links.redirect_allow[0]"),
    ("links", "redirect_allow", "https://*.co.uk/", "links.redirect_allow[0]"),
    ("links", "redirect_allow", "https://*.github.io/", "links.redirect_allow[0]"),
    ("links", "redirect_allow", "https://exa*mple.com/", "links.redirect_allow[0]"),
    ("links", "redirect_allow", "https://app.example.com/***", "links.redirect_allow[0]"),
    ("links", "redirect_allow", "https://app.example.com/x**", "links.redirect_allow[0]"),
    ("links", "redirect_allow", "https://app.example.com/a/../b", "links.redirect_allow[0]"),
]
STILL_VALID = [
    ("role", "deny", "/admin/**"),
    ("role", "deny", "/a/**/b"),
    ("role", "deny", "/static/*.css"),
    ("role", "deny", "/my docs/*"),
    ("role", "allow", "/"),
    ("role", "modules", "5e9f*"),
    ("proxy", "public_paths", "/favicon.ico"),
    ("links", "redirect_allow", "https://*.example.com/welcome"),
    ("links", "redirect_allow", "https://**.corp.example.org/cb/*"),
    ("links", "redirect_allow", "https://pr-*.preview.example.co.uk/"),
    ("links", "redirect_allow", "http://localhost:3000/**"),
]


def _doc(section: str, key: str, value: str) -> dict[str, object]:
    doc = config_doc()
    if section == "role":
        roles = doc["roles"]
        assert isinstance(roles, dict)
        roles["Authenticated"][key] = [value]
    elif section == "proxy":
        proxy = doc["proxy"]
        assert isinstance(proxy, dict)
        proxy[key] = [value]
    else:
        doc["links"] = {key: [value]}
    return doc


@pytest.mark.parametrize(("section", "key", "value", "path"), NEVER_MATCH)
def test_a_glob_that_never_matches_is_a_config_error(
    tmp_path: Path, section: str, key: str, value: str, path: str
) -> None:
    try:
        errors = errors_of(tmp_path, _doc(section, key, value))
    except pytest.fail.Exception:  # it loaded: the glob got through
        errors = []
    refused = any(e.startswith(path + ":") for e in errors)
    casebook.record("config", through=0 if refused else 1)
    assert refused, errors


@pytest.mark.parametrize(("section", "key", "value"), STILL_VALID)
def test_globs_that_can_match_still_load(
    tmp_path: Path, section: str, key: str, value: str
) -> None:
    try:
        build_config(tmp_path, _doc(section, key, value))
    except ConfigError as exc:
        pytest.fail(str(exc))
