"""PublicOrigin (sidecar.proxy.origins) and the config keys that feed it and the strip list."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.proxy.origins import PublicOrigin, parse_origin
from sidecar.proxy.strip import DEFAULT_STRIP_HEADERS, StripList
from sidecar.proxy.templates import canonical_header
from tests.test_config import build_config, config_doc, errors_of

PUBLIC = PublicOrigin("https://app.example.com/base", ["127.0.0.1"], ["http://localhost:3000"])


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("app.example.com", True),
        ("APP.example.com:8443", True),
        ("127.0.0.1:9999", True),
        (None, True),  # HTTP/1.0: no Host, nothing to poison
        ("evil.example", False),
        ("app.example.com.", False),
        ("app.example.com.evil.example", False),
        ("[::1]:8080", False),
    ],
)
def test_hosts(host: str | None, allowed: bool) -> None:
    assert PUBLIC.host_allowed(host) is allowed


@pytest.mark.parametrize(
    ("origin", "fetch_site", "allowed"),
    [
        ("https://app.example.com", None, True),
        ("https://app.example.com:443", "same-origin", True),
        ("http://localhost:3000", "same-site", True),  # allowed_origins
        ("null", "same-origin", True),  # a no-referrer page of our own
        (None, "none", True),
        (None, None, True),  # not a browser
        ("https://evil.example", "same-origin", False),
        ("https://evil.example", None, False),
        ("null", None, False),
        ("null", "cross-site", False),
        (None, "same-site", False),
        ("http://app.example.com", None, False),
    ],
)
def test_same_origin(origin: str | None, fetch_site: str | None, allowed: bool) -> None:
    assert PUBLIC.same_origin(origin, fetch_site) is allowed


def test_origin_serialisation() -> None:
    assert parse_origin("HTTPS://App.Example.COM:443") == "https://app.example.com"
    assert parse_origin("http://[::1]:8080") == "http://[::1]:8080"
    for bad in ("https://a.com/path", "ftp://a.com", "https://u@a.com", "https://*.a.com", "a"):
        with pytest.raises(ValueError, match="expected"):
            parse_origin(bad)


def test_the_strip_list_reads_every_spelling() -> None:
    strip = StripList([*DEFAULT_STRIP_HEADERS, "X-Corp-*"])
    for name in ("REMOTE_USER", "x.amzn.oidc.data", "X-Corp-Tenant", "cf_connecting_ip"):
        assert canonical_header(name) in strip, name
    for name in ("X-Requested-With", "Remote-Addr-Note", "X-Corporate"):
        assert canonical_header(name) not in strip, name


def test_config_keys(tmp_path: Path) -> None:
    doc = config_doc()
    proxy = doc["proxy"]
    assert isinstance(proxy, dict)
    proxy.update(
        allowed_hosts=["App.Internal", "10.0.0.5"],
        allowed_origins=["https://Admin.example.com:443"],
        strip_headers=["X-Legacy-User"],
    )
    cfg = build_config(tmp_path, doc)
    assert cfg.proxy.allowed_hosts == ("app.internal", "10.0.0.5")
    assert cfg.proxy.allowed_origins == ("https://admin.example.com",)
    assert cfg.proxy.strip_headers[-1] == "X-Legacy-User"
    assert "Remote-User" in cfg.proxy.strip_headers


def test_config_errors_name_the_item(tmp_path: Path) -> None:
    doc = config_doc()
    proxy = doc["proxy"]
    assert isinstance(proxy, dict)
    proxy.update(
        allowed_hosts=["ok.example", "app.example.com:443"],
        allowed_origins=["https://app.example.com/login"],
        strip_headers=["X Bad"],
    )
    errors = errors_of(tmp_path, doc)
    for path in ("proxy.allowed_hosts[1]", "proxy.allowed_origins[0]", "proxy.strip_headers[0]"):
        assert any(e.startswith(path + ":") for e in errors), (path, errors)
