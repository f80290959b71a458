"""Forward-auth's sub-request on the lean front (sidecar.proxy.auth_lane), against aiohttp.

tests/test_lean.py holds the lean front's answers to ``GET <prefix>/auth`` to aiohttp's
for the ingresses' usual spellings. These add what an adversary or an odd config varies:
header values in latin-1 and UTF-8, names in any case, empty and repeated originals,
schemes, WebSocket origins, bodies, pipelines, cookies in several copies, peers outside
``proxy.trusted_proxies``, each ``proxy.unauthenticated`` mode — and role headers named
like the headers the server adds itself (``X-Request-Id``, ``Date``, ``Server``,
``X-Content-Type-Options``), which aiohttp's answer carries once, as the role says.

Answers are compared header by header with repeats kept (``Date`` and ``X-Request-Id``
values masked): a header written twice is a difference.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.harness.raw import RawResponse, raw_http
from tests.harness.served import Sidecar, running_sidecar
from tests.test_lean import _handovers

_MASKED = ("date", "x-request-id")
_HEAD = re.compile(rb"HTTP/1\.[01] [^\r\n]*\r\n(?:[^\r\n]+\r\n)*\r\n")
_TRUSTED = {"trusted_proxies": ["127.0.0.1/32"], "login_url": "https://login.example/in"}


def _answers(resp: RawResponse) -> list[object]:
    """Each answer's status line and its headers, sorted with repeats kept (``Date`` and
    ``X-Request-Id`` values masked unless a role set them), then its body."""
    out: list[object] = []
    pos = 0
    raw = resp.raw
    while match := _HEAD.match(raw, pos):
        lines = match.group().decode("latin-1").split("\r\n")[:-2]
        fields = []
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            value = value.strip()
            if name.lower() == "content-length":
                length = int(value)
            masked = name.lower() in _MASKED and not value.startswith("user-")
            fields.append((name.lower(), "*" if masked else value))
        out.append((lines[0], sorted(fields), raw[match.end() : match.end() + length]))
        pos = match.end() + length
    return out


async def _compare(
    lean: Sidecar, plain: Sidecar, corpus: dict[str, tuple[bytes, bytes]], source: str
) -> dict[str, tuple[int, float]]:
    """Send each (lean, plain) pair of requests from ``source``; the differences fail the
    test, and each name's (status, handovers) is returned."""
    differ = []
    seen = {}
    for name, (to_lean, to_plain) in corpus.items():
        before = _handovers()
        got = await raw_http(lean.proxy_port, to_lean, answers=2, quiet=0.5, source=source)
        handed = _handovers() - before
        want = await raw_http(plain.proxy_port, to_plain, answers=2, quiet=0.5, source=source)
        assert want.status != 0, name
        seen[name] = (want.status, handed)
        if _answers(got) != _answers(want):
            differ.append((name, got.raw[:700], want.raw[:700]))
    assert not differ, differ
    return seen


def _auth(
    cookie: str | None,
    *extra: str,
    target: str = "/_sidecar/auth",
    close: bool = True,
    host: str | None = "Host: app.example.com",
) -> bytes:
    lines = [f"GET {target} HTTP/1.1", *([host] if host else [])]
    lines += [*([f"Cookie: {cookie}"] if cookie else []), *extra]
    lines += ["Connection: close"] if close else []
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _corpus(port: int, cookie: str, name: str) -> dict[str, bytes]:
    here = f"127.0.0.1:{port}"
    utf8 = "/app/é".encode().decode("latin-1")
    return {
        "allowed": _auth(cookie, "X-Original-URI: /app/x"),
        "anonymous": _auth(None, "X-Original-URI: /app/x"),
        "latin-1-uri": _auth(cookie, "X-Original-URI: /app/\xe9"),
        "utf-8-uri": _auth(cookie, f"X-Original-URI: {utf8}"),
        "whitespace-around": _auth(cookie, "X-Original-URI: \t /private/x \t"),
        "lower-case-name": _auth(cookie, "x-original-uri: /private/x"),
        "upper-case-name": _auth(cookie, "X-ORIGINAL-URI: /private/x"),
        "underscore-name": _auth(cookie, "X_Original_URI: /private/x"),
        "twice-the-same": _auth(cookie, "X-Original-URI: /app/x", "X-Original-URI: /app/x"),
        "empty-then-uri": _auth(cookie, "X-Original-URI:", "X-Original-URI: /app/x"),
        "forwarded-host-twice": _auth(
            cookie,
            "X-Original-URI: /app/x",
            f"X-Forwarded-Host: {here}",
            f"X-Forwarded-Host: {here}",
        ),
        "lower-case-method": _auth(cookie, "X-Original-URI: /app/x", "X-Original-Method: post"),
        "proto-upper-case": _auth(cookie, "X-Original-URI: /app/x", "X-Forwarded-Proto: HTTPS"),
        "proto-ftp": _auth(cookie, "X-Original-URI: /app/x", "X-Forwarded-Proto: ftp"),
        "websocket-two-origins": _auth(
            cookie,
            "X-Original-URI: /app/ws",
            "Sec-WebSocket-Key: x",
            f"Origin: http://{here}",
            "Origin: https://evil.example",
        ),
        "websocket-upgrade-only": _auth(
            cookie, "X-Original-URI: /app/ws", "Upgrade: websocket", "Origin: https://evil.example"
        ),
        "body": _auth(cookie, "X-Original-URI: /app/x", "Content-Length: 5") + b"hello",
        "body-then-pipelined": _auth(
            cookie, "X-Original-URI: /app/x", "Content-Length: 5", close=False
        )
        + b"hello"
        + _auth(cookie, "X-Original-URI: /private/x"),
        "empty-host": _auth(cookie, "X-Original-URI: /app/x", host="Host:"),
        "utf-8-host": _auth(cookie, "X-Original-URI: /app/x", host="Host: \xc3\xa9.example"),
        "garbage-cookie-first": _auth(f"{name}=garbage; {cookie}", "X-Original-URI: /app/x"),
        "cookie-in-a-second-header": _auth("a=b", "X-Original-URI: /app/x", f"Cookie: {cookie}"),
        "latin-1-cookie": _auth(f"x=\xe9; {cookie}", "X-Original-URI: /app/x"),
        "quoted-cookie": _auth(cookie.replace("=", '="', 1) + '"', "X-Original-URI: /app/x"),
        "odd-query": _auth(cookie, "X-Original-URI: /app/x", target="/_sidecar/auth?a=%zz"),
        "url-upper-case-scheme": _auth(cookie, f"X-Original-URL: HTTPS://{here}/app/y"),
        "url-latin-1": _auth(cookie, f"X-Original-URL: http://{here}/app/\xe9"),
        "refer-spelt-with-escape": _auth(cookie, "X-Original-URI: /app/x?%72efer=abc"),
        "escaped-path": _auth(cookie, "X-Original-URI: /%70rivate/x"),
        "absolute-original": _auth(cookie, "X-Original-URI: http://evil/app"),
    }


@pytest.fixture(params=["deny", "redirect", "pass"])
async def modes(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Sidecar, Sidecar]]:
    proxy = {**_TRUSTED, "unauthenticated": request.param}
    async with (
        running_sidecar(tmp_path / "lean", overrides={"proxy": proxy}) as lean,
        running_sidecar(tmp_path / "plain", overrides={"proxy": {**proxy, "lean_front": False}})
        as plain,
    ):  # fmt: skip
        yield lean, plain


async def test_odd_sub_requests_get_aiohttps_answers_from_trusted_and_other_peers(
    modes: tuple[Sidecar, Sidecar],
) -> None:
    lean, plain = modes
    params = {"additionalParams": {"tenant": "tä"}}
    lean_cookie = f"{lean.cookie_name}={await lean.login(userId='Zoë ü', **params)}"
    plain_cookie = f"{plain.cookie_name}={await plain.login(userId='Zoë ü', **params)}"
    lean_corpus = _corpus(lean.proxy_port, lean_cookie, lean.cookie_name)
    plain_corpus = _corpus(plain.proxy_port, plain_cookie, plain.cookie_name)
    corpus = {name: (lean_corpus[name], plain_corpus[name]) for name in lean_corpus}
    trusted = await _compare(lean, plain, corpus, "127.0.0.1")
    untrusted = await _compare(lean, plain, corpus, "127.0.0.2")
    # The corpus tests something: the lean front answers, and the peers are told apart.
    assert trusted["allowed"] == (200, 0)
    assert trusted["lower-case-name"] == (403, 0)
    assert trusted["utf-8-uri"] == (200, 0)
    assert untrusted["lower-case-name"] == (401, 0)  # its own path judged: the prefix
    assert trusted["websocket-upgrade-only"][1] == 1  # Upgrade: aiohttp's


async def test_role_headers_named_like_the_servers_own_are_written_once(
    tmp_path: Path,
) -> None:
    named = ("X-Forwarded-User", "X-Request-Id", "Date", "Server", "X-Content-Type-Options")
    headers = dict.fromkeys(named, "{user_id}")
    overrides: dict[str, object] = {
        "proxy": _TRUSTED,
        "roles": {"Authenticated": {"headers": headers}},
    }
    async with (
        running_sidecar(tmp_path / "lean", overrides=overrides) as lean,
        running_sidecar(
            tmp_path / "plain", overrides={**overrides, "proxy": {**_TRUSTED, "lean_front": False}}
        ) as plain,
    ):
        corpus = {
            "allowed": (
                _auth(f"{lean.cookie_name}={await lean.login()}", "X-Original-URI: /app/x"),
                _auth(f"{plain.cookie_name}={await plain.login()}", "X-Original-URI: /app/x"),
            )
        }
        assert await _compare(lean, plain, corpus, "127.0.0.1") == {"allowed": (200, 0)}
        answer = await raw_http(lean.proxy_port, corpus["allowed"][0])
        assert [v for n, v in answer.headers if n.lower() == "x-request-id"] == ["user-1"]
