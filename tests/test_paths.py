"""Path normalisation and glob rules, including an attacker's view of them (Hypothesis)."""

from __future__ import annotations

import itertools
import posixpath
import re
from collections.abc import Iterable
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.proxy.paths import GlobSet, NormalPath, PathRules, UnsafePath, glob_regex, normalise


@pytest.mark.parametrize(
    ("raw", "strict", "loose"),
    [
        ("/", "/", "/"),
        ("/a/b", "/a/b", "/a/b"),
        ("/a/b/", "/a/b/", "/a/b"),
        ("/%61dmin", "/admin", "/admin"),
        ("/Admin./X ", "/Admin./X ", "/admin/x"),
        ("/app;jsessionid=1/page", "/app;jsessionid=1/page", "/app/page"),
        ("/;x/a", "/;x/a", "/a"),
        ("/caf%C3%A9", "/café", "/café"),
        ("/a%2eb/c.", "/a.b/c.", "/a.b/c"),
        ("/.well-known/x", "/.well-known/x", "/.well-known/x"),
    ],
)
def test_normalise(raw: str, strict: str, loose: str) -> None:
    assert normalise(raw) == NormalPath(strict=strict, loose=loose)


@pytest.mark.parametrize(
    ("raw", "strict", "literal"),
    [
        ("/a//b///c", "/a/b/c", "/a//b///c"),
        ("/a%2Fb", "/a/b", "/a%2Fb"),
        ("/a%2fb/%41", "/a/b/A", "/a%2Fb/A"),
        ("/Admin//X;p", "/Admin/X;p", "/Admin//X;p"),
    ],
)
def test_paths_two_routers_split_differently_are_read_both_ways(
    raw: str, strict: str, literal: str
) -> None:
    path = normalise(raw)
    assert (path.strict, path.literal) == (strict, literal)
    assert path.literal_loose == literal.split(";")[0].lower()


def test_every_reading_must_pass() -> None:
    # Express reads "/x%2Fy/secret" as two segments, Werkzeug as three.
    rules = PathRules.compile(["/**"], ["/app/*/secret"])
    assert not rules.permits(normalise("/app/a%2fb/secret"))  # denied by the literal reading
    assert not rules.permits(normalise("/app//secret"))  # "*" matches the empty segment
    allow = PathRules.compile(["/app/*/view"], [])
    assert not allow.permits(normalise("/app/a%2fb/view"))  # strict reading: 3 segments
    assert allow.permits(normalise("/app/ab/view"))


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "a/b",
        "*",
        "/.",
        "/..",
        "/a/./b",
        "/a/b/..",
        "/a/../b",
        "/admin/../static/x",
        "/a/%2e",
        "/a/%2E%2e/b",
        "/a/%2e./b",
        "/a/.%2E",
        "/a/..%2fb",
        "/a/x%2f..%2fb",
        "/a/%2e%2e;x/b",
        "/a/.%20/b",
        "/a/%2e%20/b",
        "/a\\b",
        "/a%5cb",
        "/a%5C..%5Cb",
        "//a/b",
        "//",
        "/%ff",
        "/a/%c0%ae%c0%ae/b",
        "/a/%e0%80%ae/b",
        "/a%ef%bc%8fb",
        "/a/%ef%bc%8e%ef%bc%8e/b",
        "/a/\uff0e\uff0e/b",
        "/a\udcff",
        "/a/../..",
        "/%2e%2e/x",
        "/a/%2E/b",
        "/a/.%2e/b",
        "/a%2f%2e%2e%2fb",
        "/a/..;/b",
        "/a/.;x/b",
        "/a/.../b",
        "/a/.. /b",
        "/%252e%252e/b",
        "/admin/%2f/..",
        "/admin/%5C/..",
        "/admin\\x/..",
        "/%252f",
        "/a%00",
        "/a%0d%0ab",
        "/a\x7f",
        "/a%",
        "/a%g0",
        "/a%2",
    ],
)
def test_unsafe_paths_are_refused(raw: str) -> None:
    with pytest.raises(UnsafePath):
        normalise(raw)


@pytest.mark.parametrize(
    ("glob", "matches", "misses"),
    [
        ("/static/**", ["/static", "/static/", "/static/a", "/static/a/b.js"], ["/staticx", "/"]),
        ("/*.ico", ["/favicon.ico"], ["/a/favicon.ico", "/favicon.icon"]),
        ("/api/*/read", ["/api/v1/read"], ["/api/v1/x/read", "/api/read"]),
        ("/a/**/z", ["/a/z", "/a/b/z", "/a/b/c/z"], ["/a/bz", "/az"]),
        ("/**", ["/", "/x", "/x/y/"], []),
        ("/a.b", ["/a.b"], ["/aXb"]),
        ("/x**", ["/x", "/xy/z"], ["/y"]),
    ],
)
def test_glob_semantics(glob: str, matches: list[str], misses: list[str]) -> None:
    globs = GlobSet([glob])
    for path in matches:
        assert globs.matches(path), (glob, path)
    for path in misses:
        assert not globs.matches(path), (glob, path)
    assert re.compile(glob_regex(glob))


def test_empty_globset_matches_nothing() -> None:
    assert not GlobSet([])
    assert not GlobSet([]).matches("/")


def test_rules_allow_strictly_and_deny_loosely() -> None:
    rules = PathRules.compile(["/app/**"], ["/app/admin/**"])
    assert rules.permits(normalise("/app/x"))
    assert not rules.permits(normalise("/APP/x"))  # allow is exact
    for spelling in ["/app/admin", "/app/ADMIN/x", "/app/admin./x", "/app/admin;a=b/x"]:
        assert not rules.permits(normalise(spelling)), spelling


# -- an attacker's view --------------------------------------------------------------
SEGMENT_LIST = [
    "admin",
    "ADMIN",
    "admin.",
    "x",
    ".",
    "..",
    "%2e",
    "%2e%2e",
    ".%2e",
    "%2f",
    "%5c",
    "\\",
    ";p",
    "..;",
    "%252e",
    "%41dmin",
    "a%2fadmin",
    "a\\admin",
    "",
    "docs",
]
DENY_ADMIN = PathRules.compile(["/**"], ["/admin/**"])


def _interpretations(raw: str) -> list[str]:
    """How differently built upstreams could read one raw path."""
    decoded = unquote(raw, errors="surrogateescape")
    no_params = "/".join(seg.split(";", 1)[0] for seg in raw.split("/"))
    readings = [
        raw,  # never decodes
        raw.replace("\\", "%5c"),  # never decodes, "\\" is no separator
        decoded,  # decodes once
        unquote(decoded, errors="surrogateescape"),  # decodes twice
        unquote(no_params, errors="surrogateescape"),  # Tomcat: ;params first
    ]
    readings.append(decoded.replace("\\", "%5c"))  # decodes once, "\\" is no separator
    out = []
    for reading in readings:
        reading = reading.replace("\\", "/")
        resolved = posixpath.normpath("/" + reading.lstrip("/"))
        out.append(resolved.lower().rstrip(". "))
    return out


def _check_spelling(segments: Iterable[str]) -> None:
    raw = "/" + "/".join(segments)
    try:
        path = normalise(raw)
    except UnsafePath:
        return
    assert path.strict.startswith("/")
    assert "//" not in path.strict
    assert not {".", ".."} & set(path.strict.split("/"))
    if any(r == "/admin" or r.startswith("/admin/") for r in _interpretations(raw)):
        assert not DENY_ADMIN.permits(path), (raw, path)


def test_no_short_spelling_reaches_a_denied_path() -> None:
    for n in (1, 2, 3):
        for segments in itertools.product(SEGMENT_LIST, repeat=n):
            _check_spelling(segments)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(SEGMENT_LIST), min_size=4, max_size=8))
def test_no_long_spelling_reaches_a_denied_path(segments: list[str]) -> None:
    _check_spelling(segments)
