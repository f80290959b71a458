"""Role path rules attacked through the proxy port with raw request targets.

Oracle: whatever raw path the upstream receives is read every way an upstream might read it
(cut at a raw ``?`` or ``#``, decoded once or twice, ``\\`` as ``/``, ``;params`` cut, dot
segments resolved with or without ``..;``, case and trailing dots folded). If *any*
reading is denied by the role — or outside its allow list, or outside ``public_paths`` for a
request without a session — the rule was bypassed.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from urllib.parse import unquote

from hypothesis import given
from hypothesis import strategies as st

from sidecar.proxy.paths import GlobSet
from tests.harness import Sidecar, raw_http
from tests.security import casebook
from tests.security.fuzzing import fuzz

DENY = GlobSet(["/admin/**", "/private/**", "/api/internal/**"], ignore_case=True)
NARROW_ALLOW = GlobSet(["/app/**", "/index.html", "/favicon.ico", "/static/**"])  # + public
NARROW_DENY = GlobSet(["/app/admin/**"], ignore_case=True)
PUBLIC = GlobSet(["/favicon.ico", "/static/**"])


def _resolve(path: str, *, tomcat: bool) -> str:
    segments: list[str] = []
    for seg in path.split("/"):
        bare = seg.split(";", 1)[0] if tomcat else seg
        if bare in ("", "."):
            continue
        if bare == "..":
            if segments:
                segments.pop()
            continue
        segments.append(seg)
    return "/" + "/".join(segments)


def readings(raw_path: str) -> set[str]:
    """Every plausible way an upstream could read ``raw_path`` (no query)."""
    out: set[str] = set()
    cut = re.split(r"[?#]", raw_path, maxsplit=1)[0]
    once = unquote(cut)
    for text in (cut, once, unquote(once)):
        for slashes in (text, text.replace("\\", "/")):
            for tomcat in (False, True):
                resolved = _resolve(posixpath.normpath("/" + slashes), tomcat=tomcat)
                out.add(resolved)
                folded = "/".join(
                    s.split(";", 1)[0].rstrip(". ").lower() for s in resolved.split("/")
                )
                out.add(folded or "/")
    return out


def escapes(seen_path: str, *, deny: GlobSet, allow: GlobSet | None) -> list[str]:
    bad = []
    for reading in readings(seen_path.split("?", 1)[0]):
        if deny.matches(reading) or (allow is not None and not allow.matches(reading)):
            bad.append(reading)
    return bad


def request(target: str, port: int, cookie: str | None, extra: str = "") -> bytes:
    cookie_line = f"Cookie: {cookie}\r\n" if cookie else ""
    return (
        f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{cookie_line}{extra}"
        "Connection: close\r\n\r\n"
    ).encode("utf-8", "surrogateescape")


async def probe(
    sc: Sidecar,
    targets: Iterable[str],
    *,
    cookie: str | None,
    deny: GlobSet,
    allow: GlobSet | None,
    extra: str = "",
) -> list[tuple[str, object]]:
    through: list[tuple[str, object]] = []
    tried = 0
    for target in targets:
        tried += 1
        before = len(sc.upstream.requests)
        resp = await raw_http(sc.proxy_port, request(target, sc.proxy_port, cookie, extra))
        if resp.status >= 500 or resp.status == 0:
            through.append((target, resp.status))
        for seen in sc.upstream.requests[before:]:
            bad = escapes(seen.raw_path, deny=deny, allow=allow)
            for header in ("X-Original-URL", "X-Rewrite-URL", "X-Forwarded-Uri", "X-Original-URI"):
                for value in seen.values(header):
                    bad += escapes(value, deny=deny, allow=allow)
            if bad:
                through.append((target, (seen.raw_path, bad[:3])))
    casebook.record("paths", tried=tried, through=len(through))
    return through


TRICKS = [
    "/admin", "/admin/", "/admin/x", "/Admin/x", "/ADMIN/x", "/admin./x", "/admin%2e/x",
    "/admin../x", "/admin%20/x", "/admin;x/x", "/admin;/x", "/admin%3bx/x", "/%61dmin/x",
    "/%41dmin/x", "/adm%69n/x", "/%2561dmin/x", "/admin%2fx", "/admin%2Fx", "/admin%5cx",
    "/admin\\x", "//admin/x", "///admin/x", "/./admin/x", "/x/../admin/x", "/x/..%2fadmin/x",
    "/x%2f..%2fadmin/x", "/x/%2e%2e/admin/x", "/x/%2E%2E/admin/x", "/x/.%2e/admin/x",
    "/x/..;/admin/x", "/x/..;a/admin/x", "/x/%252e%252e/admin/x", "/x/%252e%252e%252fadmin/x",
    "/x/..\\admin/x", "/x\\..\\admin\\x", "/x/%5c..%5cadmin/x", "/static/../admin/x",
    "/static/..%2fadmin/x", "/static%2f..%2fadmin/x", "/static/%2e%2e/admin/x",
    "/static/..;/admin/x", "/static/.../admin/x", "/static/%2e./admin/x", "/static/.. /admin/x",
    "/admin%00/x", "/admin%00.css", "/admin%0a/x", "/admin%0d%0a/x", "/admin%09/x",
    "/admin#/static/x", "/admin%23/static/x", "/admin%3f/static/x", "/admin?/static/x",
    "/admin?x=/static/y", "/static/x?/admin/", "/static/x%3f/../../admin/x",
    "/static/x%23/../../admin/x", "/private", "/Private/X", "/private%2e", "/api/internal/x",
    "/api//internal/x", "/api/./internal/x", "/api/x/../internal/x", "/api%2finternal/x",
    "/API/Internal/x", "/api/internal./x", "/api/internal;jsessionid=1/x", "/%2e/admin/x",
    "/%2e%2e/admin/x", "/..%2f..%2fadmin/x", "/admin%252f..%252fx", "/admin/..", "/admin/../",
    "/admin/%2e%2e", "/admin%u002fx", "/admin%c0%afx", "/admin%e0%80%afx", "/admin%ef%bc%8fx",
    "/\u0430dmin/x", "/admin\u3002/x", "/ad%E2%80%8Bmin/x", "/admin%ff/x", "/admin%/x",
    "/admin%2/x", "/admin%zz/x", "*", "http://127.0.0.1/admin/x", "//evil.example/admin/x",
]  # fmt: skip


async def test_deny_rules_hold_against_path_tricks(sidecar: Sidecar) -> None:
    cookie = f"{sidecar.cookie_name}={await sidecar.login()}"
    through = await probe(sidecar, TRICKS, cookie=cookie, deny=DENY, allow=None)
    assert not through, through


async def test_allow_rules_hold_against_path_tricks(sidecar: Sidecar) -> None:
    cookie = f"{sidecar.cookie_name}={await sidecar.login(additionalParams={'role': 'Narrow'})}"
    targets = [t.replace("/admin", "/app/admin") for t in TRICKS] + [
        t.replace("/admin", "/app/..") for t in TRICKS
    ]
    narrow_deny = GlobSet([*NARROW_DENY.patterns])
    through = await probe(sidecar, targets, cookie=cookie, deny=narrow_deny, allow=NARROW_ALLOW)
    assert not through, through
    async with sidecar.http.get(
        sidecar.proxy_url + "/app/ok", headers={"Cookie": cookie}
    ) as r:  # the rules do let the allowed through
        assert r.status == 200


async def test_public_paths_never_open_a_private_path_without_a_session(
    sidecar: Sidecar,
) -> None:
    targets = [t for t in TRICKS if "static" in t] + [
        "/static/x/../../app", "/static/../app", "/static%2f..%2fapp", "/static/..%5capp",
        "/favicon.ico/../app", "/favicon.ico;/../app", "/favicon.ico%00", "/favicon.ico/..",
        "/static/x/..;/..;/app", "/static/%2e%2e%2f%2e%2e/app", "/STATIC/../app",
    ]  # fmt: skip
    through = await probe(sidecar, targets, cookie=None, deny=GlobSet([]), allow=PUBLIC)
    assert not through, through


PATH_OVERRIDES = [
    "X-Original-URL: /admin/x\r\n",
    "X-Rewrite-URL: /admin/x\r\n",
    "X-Forwarded-Uri: /admin/x\r\n",
    "X-Original-URI: /admin/x\r\n",
    "X_Original_URL: /admin/x\r\n",
]


async def test_path_override_headers_do_not_smuggle_a_denied_path(sidecar: Sidecar) -> None:
    cookie = f"{sidecar.cookie_name}={await sidecar.login()}"
    through = []
    for extra in PATH_OVERRIDES:
        through += await probe(
            sidecar, ["/app/ok", "/static/x"], cookie=cookie, deny=DENY, allow=None, extra=extra
        )
    assert not through, through


async def test_path_override_headers_do_not_open_a_path_without_a_session(
    sidecar: Sidecar,
) -> None:
    for extra in (e.replace("/admin/x", "/static/x") for e in PATH_OVERRIDES):
        resp = await raw_http(
            sidecar.proxy_port, request("/app/secret", sidecar.proxy_port, None, extra)
        )
        casebook.record("paths", through=int(resp.status != 401))
        assert resp.status == 401


SEGMENTS = st.sampled_from(
    ["admin", "Admin", "ADMIN", "admin.", "admin%2e", "%61dmin", "static", "app", "private",
     "x", ".", "..", "%2e", "%2e%2e", ".%2e", "..;", ";x", "%3b", "%2f", "%2F", "%5c", "\\",
     "%00", "%252f", "%252e", "", "~", "%20", "admin%20", "admin;a=b", "%3f", "%23", "?",
     "#", "..%2f", "%2e%2e%2f", "api", "internal"]
)  # fmt: skip


@fuzz(150)
@given(segments=st.lists(SEGMENTS, min_size=1, max_size=6), tail=st.sampled_from(["", "/", "/x"]))
async def test_generated_paths_never_escape_the_role_rules(
    sidecar: Sidecar, segments: list[str], tail: str
) -> None:
    if "paths" not in sidecar.memo:
        sidecar.memo["paths"] = await sidecar.login()
    cookie = f"{sidecar.cookie_name}={sidecar.memo['paths']}"
    target = "/" + "/".join(segments) + tail
    through = await probe(sidecar, [target], cookie=cookie, deny=DENY, allow=None)
    through += await probe(sidecar, [target], cookie=None, deny=GlobSet([]), allow=PUBLIC)
    assert not through, through
