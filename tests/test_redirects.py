"""The redirect_to allow-list: globs, exact scheme/host/port, and every trick refused."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from sidecar.links.redirects import (
    AllowList,
    RedirectPatternError,
    RedirectRejected,
    allow_list,
    compile_pattern,
)

PATTERNS = (
    "https://app.example.com/**",
    "https://*.example.com/welcome",
    "https://**.corp.example.org/cb/*",
    "http://localhost:3000/callback",
    "https://pr-*.preview.example.net/",
    "https://bücher.example/**",
    "http://127.0.0.1:8080/**",
    "https://[::1]:8443/x",
)
ALLOW = AllowList(PATTERNS)

ALLOWED = [
    # (candidate, the normalised URL bound into the link)
    ("https://app.example.com/", "https://app.example.com/"),
    ("https://app.example.com", "https://app.example.com/"),
    ("https://app.example.com/dashboard", "https://app.example.com/dashboard"),
    (
        "https://app.example.com/a/b/c?x=1&y=%2F#/display/5",
        "https://app.example.com/a/b/c?x=1&y=%2F#/display/5",
    ),
    ("HTTPS://APP.Example.COM/Path", "https://app.example.com/Path"),
    ("https://app.example.com:443/x", "https://app.example.com/x"),
    ("https://a.example.com/welcome", "https://a.example.com/welcome"),
    ("https://x.corp.example.org/cb/1", "https://x.corp.example.org/cb/1"),
    ("https://a.b.c.corp.example.org/cb/1", "https://a.b.c.corp.example.org/cb/1"),
    ("http://localhost:3000/callback", "http://localhost:3000/callback"),
    ("https://pr-42.preview.example.net/", "https://pr-42.preview.example.net/"),
    ("https://BÜCHER.example/ä", "https://xn--bcher-kva.example/%C3%A4"),
    ("https://xn--bcher-kva.example/", "https://xn--bcher-kva.example/"),
    # Fullwidth letters and dots: IDNA maps them as browsers do, so the check sees the real host.
    ("https://\uff41\uff50\uff50\uff0eexample\uff0ecom/", "https://app.example.com/"),
    ("http://127.0.0.1:8080/", "http://127.0.0.1:8080/"),
    ("https://[0:0::1]:8443/x", "https://[::1]:8443/x"),
    ("https://app.example.com/%7Euser/a%20b", "https://app.example.com/%7Euser/a%20b"),
    (
        "https://app.example.com/q?next=https://evil.com",
        "https://app.example.com/q?next=https://evil.com",
    ),
]

NOT_IN_LIST = [
    "https://app.example.com.evil.com/",  # subdomain trick
    "https://evilapp.example.com/",  # not the exact host
    "https://app.example.co/",
    "https://example.com/welcome",  # * needs one label
    "https://a.b.example.com/welcome",  # * never crosses "."
    "https://a.example.com/welcome/",  # path exact
    "https://a.example.com/welcome/x",
    "https://corp.example.org/cb/1",  # ** needs at least one label
    "https://x.corp.example.org/cb/1/2",  # path * never crosses "/"
    "http://app.example.com/",  # scheme switch
    "https://localhost:3000/callback",  # scheme switch the other way
    "https://app.example.com:8443/",  # port
    "https://app.example.com:80/",
    "http://localhost/callback",  # absent port = 80, not 3000
    "http://localhost:3001/callback",
    "https://pr-1.preview.example.net.evil/",
    "https://preview.example.net/",
    "http://127.0.0.1:8081/",
    "http://2130706433:8080/",  # 127.0.0.1 in another spelling
    "https://[::2]:8443/x",
    "https://evil.com/?.example.com",
    "https://evil.com#.example.com",
]

REFUSED = [
    ("", "non-empty"),
    ("/dashboard", "absolute"),
    ("//app.example.com/", "absolute"),  # scheme-relative
    ("app.example.com/", "absolute"),
    ("javascript:alert(1)//https://app.example.com/", "absolute"),
    ("data:text/html,hi", "absolute"),
    ("ftp://app.example.com/", "absolute"),
    ("https:/app.example.com/", "absolute"),
    ("https:app.example.com", "absolute"),
    ("https://user@app.example.com/", "user info"),
    ("https://app.example.com@evil.com/", "user info"),
    ("https://app.example.com:443@evil.com/", "user info"),
    ("https://app.example.com%40evil.com/", "percent"),
    ("https://app.example.com%2f.evil.com/", "percent"),
    ("https://app.example.com%5c.evil.com/", "percent"),
    ("https://evil.com%2fapp.example.com/", "percent"),
    ("https://app.example.com\\@evil.com/", "backslash"),
    ("https://app.example.com\\.evil.com/", "backslash"),
    ("https:\\\\evil.com/", "backslash"),
    ("https://app.example.com/\\evil.com", "backslash"),
    ("https://app.example.com/ x", "whitespace"),
    ("https://app.example.com/\tx", "whitespace"),
    ("https://app.example.com/x\r\nSet-Cookie: a=b", "whitespace"),
    ("https://app.example.com/\x00", "whitespace"),
    ("https://app.example.com/\u200bx", "whitespace"),  # zero-width space
    ("https://app.example.com/\u202ex", "whitespace"),  # bidi override
    (" https://app.example.com/", "whitespace"),
    ("https://app.example.com./", "domain"),  # trailing dot
    ("https://app..example.com/", "domain"),
    ("https://-app.example.com/", "domain"),
    ("https://app_x.example.com/", "domain"),
    ("https://app.example.com:/", "port"),
    ("https://app.example.com:0/", "port"),
    ("https://app.example.com:65536/", "port"),
    ("https://app.example.com:+443/", "port"),
    ("https://app.example.com:443:443/", "port"),
    ("https://[::1/", "IPv6"),
    ("https://[nope]/", "IPv6"),
    ("https://app.example.com//evil.com", "//"),
    ("https://app.example.com/a/%2f/b", "encoded"),
    ("https://app.example.com/a%2Fb", "encoded"),
    ("https://app.example.com/a%5cb", "encoded"),
    ("https://app.example.com/a%00b", "encoded"),
    ("https://app.example.com/a/../b", "dot segment"),
    ("https://app.example.com/a/./b", "dot segment"),
    ("https://app.example.com/%2e%2e/b", "dot segment"),
    ("https://app.example.com/%2E./b", "dot segment"),
    ("https://app.example.com/%zz", "malformed"),
    ("https://app.example.com/?x=%z", "malformed"),
    ("https://" + "a" * 64 + ".example.com/", "domain"),
    ("https://app.example.com/" + "a" * 2048, "longer"),
]


@pytest.mark.parametrize(("candidate", "normalised"), ALLOWED)
def test_allowed(candidate: str, normalised: str) -> None:
    assert ALLOW.check(candidate) == normalised
    assert ALLOW.check(normalised) == normalised  # the bound URL passes again, unchanged


@pytest.mark.parametrize("candidate", NOT_IN_LIST)
def test_not_in_the_allow_list(candidate: str) -> None:
    with pytest.raises(RedirectRejected, match="not in the allow-list"):
        ALLOW.check(candidate)


@pytest.mark.parametrize(("candidate", "why"), REFUSED)
def test_refused_before_matching(candidate: str, why: str) -> None:
    with pytest.raises(RedirectRejected) as caught:
        ALLOW.check(candidate)
    assert why in str(caught.value)
    assert "allow-list" not in str(caught.value)


def test_star_vs_double_star_in_the_path() -> None:
    single = AllowList(["https://app.example.com/app/*"])
    double = AllowList(["https://app.example.com/app/**"])
    assert single.check("https://app.example.com/app/x") == "https://app.example.com/app/x"
    with pytest.raises(RedirectRejected):
        single.check("https://app.example.com/app/x/y")
    assert double.check("https://app.example.com/app/x/y") == "https://app.example.com/app/x/y"
    assert double.check("https://app.example.com/app") == "https://app.example.com/app"
    with pytest.raises(RedirectRejected):
        double.check("https://app.example.com/application")


def test_empty_allow_list_allows_nothing() -> None:
    with pytest.raises(RedirectRejected):
        AllowList([]).check("https://app.example.com/")


def test_compiled_once_per_pattern_tuple() -> None:
    assert allow_list(PATTERNS) is allow_list(PATTERNS)


@pytest.mark.parametrize(
    "pattern",
    [
        "app.example.com/**",
        "//app.example.com/**",
        "ftp://app.example.com/**",
        "https://app.example.com/**?x=1",
        "https://app.example.com/#/x",
        "https://user@app.example.com/",
        "https://app.example.com%2f/",
        "https://app.example.com\\/",
        "https://app.example.com:*/",
        "https://app.example.com:99999/",
        "https://a**b.example.com/",
        "https://app.exa mple.com/",
        "https:///",
        "https://app..example.com/",
    ],
)
def test_bad_patterns(pattern: str) -> None:
    with pytest.raises(RedirectPatternError):
        compile_pattern(pattern)


PREFIXES = [
    "https://app.example.com",
    "https://app.example.com/",
    "https://a.example.com",
    "https://x.corp.example.org/cb/",
    "http://localhost:3000",
    "http://127.0.0.1:8080",
    "https://",
    "",
]
ALLOWED_HOST = re.compile(
    r"app\.example\.com|[a-z0-9-]+\.example\.com|([a-z0-9-]+\.)+corp\.example\.org"
    r"|pr-[a-z0-9-]*\.preview\.example\.net|localhost|127\.0\.0\.1|::1|xn--bcher-kva\.example"
)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(PREFIXES), st.text(max_size=40))
def test_whatever_passes_lands_where_the_check_looked(prefix: str, tail: str) -> None:
    try:
        out = ALLOW.check(prefix + tail)
    except RedirectRejected:
        return
    assert out.isascii()
    assert not any(ch <= " " or ch in "\\\x7f" for ch in out)
    parts = urlsplit(out)
    assert parts.scheme in ("http", "https")
    assert parts.username is None
    assert parts.password is None
    assert parts.hostname is not None
    assert ALLOWED_HOST.fullmatch(parts.hostname)
    assert URL(out).host == parts.hostname  # aiohttp's parser reads the same host
    assert ALLOW.check(out) == out
