"""The proxy listener's lean front (sidecar.web.lean, sidecar.proxy.express).

The lean front answers plain forwarded requests itself and hands everything else to
aiohttp's server on the same connection. These tests hold it to three things:

* **the same answers**: every request of a corpus, sent byte for byte to a sidecar with the
  lean front and to one without (``proxy.lean_front: false``, aiohttp alone), gets the same
  status line, headers (``Date`` and ``X-Request-Id`` values aside) and body;
* **the right owner**: the hot path is served without a handover; anything else is handed
  over with its bytes intact, also mid-connection and mid-pipeline;
* **the listener's limits** on its own connections: idle close, a client that leaves.

(The rest of the suite — tests/security's framing, smuggling, slow-client and stall cases,
streaming, SSE, WebSockets — runs against the lean front too: it is on by default.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sidecar.app import build_services
from sidecar.proxy import answers
from sidecar.proxy.express import ExpressLane
from sidecar.proxy.forward import Forwarder
from sidecar.proxy.gateway import Gateway, build_proxy_app
from sidecar.session_cookies import cookie_values
from sidecar.sessions import SESSIONS
from sidecar.telemetry import metrics
from sidecar.web.drain import Drain
from sidecar.web.heads import parse_head
from sidecar.web.listener import LANE, ConnectionLimits, ListenerRunner
from tests.harness.config import make_config
from tests.harness.raw import RawResponse, raw_http
from tests.harness.served import Sidecar, running_sidecar
from tests.harness.upstream import Upstream, running_upstream
from tests.serve_process import Served, running_serve

_MASKED = ("date", "x-request-id")


def _handovers() -> float:
    value = metrics.REGISTRY.get_sample_value("sidecar_lean_handovers_total")
    return 0.0 if value is None else value


def _respond(request: web.BaseRequest) -> web.StreamResponse:
    """The upstream's answers for the corpus, by path."""
    path = request.path
    if path.startswith("/app/status/"):
        code = int(path.rsplit("/", 1)[1])
        return web.Response(status=code, headers={"X-Code": str(code)})
    if path == "/app/reason":
        return web.Response(status=299, reason="Fine Thanks", text="odd")
    if path == "/app/untyped":
        response = web.Response(body=b"\x00\x01raw")
        response.headers.popall("Content-Type", None)
        return response
    if path == "/app/cookies":
        response = web.Response(text="c")
        response.headers.add("Set-Cookie", "a=1; Path=/")
        response.headers.add("Set-Cookie", "b=2; Path=/")
        return response
    if path == "/app/own-id":
        return web.Response(text="id", headers={"X-Request-Id": "upstream-id"})
    return web.Response(text="ok " + request.raw_path, headers={"X-Upstream": "yes"})


def _corpus(host: str, cookie: str) -> dict[str, bytes]:
    def get(target: str, *extra: str, method: str = "GET", close: bool = True) -> bytes:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", f"Cookie: {cookie}"]
        lines += [*extra, *(["Connection: close"] if close else [])]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def send(
        target: str,
        body: bytes,
        *extra: str,
        method: str = "POST",
        close: bool = True,
        length: int | None = None,
    ) -> bytes:
        size = f"Content-Length: {len(body) if length is None else length}"
        return get(target, size, *extra, method=method, close=close) + body

    form = b"name=Ada&role=admin&note=" + b"x" * 300
    return {
        "plain": get("/app/x"),
        "query": get("/app/x?a=1&b=two"),
        "client-request-id": get("/app/x", "X-Request-Id: client-id-1"),
        "upstream-request-id": get("/app/own-id"),
        "json-accept": get("/app/x", "Accept: application/json"),
        "other-cookies": get("/app/x", "Cookie: theme=dark; lang=en"),
        "post-no-body": get("/app/form", method="POST"),
        "delete": get("/app/thing/1", method="DELETE"),
        "content-length-0": get("/app/form", "Content-Length: 0", method="POST"),
        "status-201": get("/app/status/201"),
        "status-204": get("/app/status/204"),
        "status-304": get("/app/status/304"),
        "status-404": get("/app/status/404"),
        "status-503": get("/app/status/503"),
        "reason": get("/app/reason"),
        "untyped": get("/app/untyped"),
        "set-cookies": get("/app/cookies"),
        "own-cookie-from-upstream": get("/_up/cookie"),
        "hop-by-hop": get("/_up/hop"),
        "gzip": get("/_up/gzip", "Accept-Encoding: gzip"),
        "big-chunked": get("/_up/big?size=300000"),
        "big-length": get("/_up/big?size=300000&length=1"),
        # (Not a small chunked answer: whether one is relayed whole, with X-Request-Id, or
        # streamed depends on when its last chunk arrives, in either implementation.)
        "post-body": send("/_up/upload", b"hello world"),
        "post-form": send("/app/form", form, "Content-Type: application/x-www-form-urlencoded"),
        "put-json": send(
            "/app/thing/1", b'{"a": 1}', "Content-Type: application/json", method="PUT"
        ),
        "patch-body": send("/_up/upload", b"patch", method="PATCH"),
        "get-with-body": send("/_up/upload", b"odd", method="GET"),
        "length-leading-zeros": get("/_up/upload", "Content-Length: 005", method="POST") + b"12345",
        "body-upstream-refuses-unread": send("/_up/reject", b"y" * 5000),
        "body-larger-than-lean-takes": send("/_up/upload", b"z" * 20000),
        "body-pipelined": send("/_up/upload", b"first", close=False)
        + send("/_up/upload", b"second", close=False)
        + get("/app/three"),
        "body-then-chunked": send("/_up/upload", b"first", close=False)
        + get("/_up/upload", "Transfer-Encoding: chunked", method="POST")
        + b"3\r\nabc\r\n0\r\n\r\n",
        "keep-alive-pipelined": get("/app/one", close=False) + get("/app/two"),
        "hot-then-anonymous": get("/app/one", close=False)
        + f"GET /app/anon HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode(),
        "hot-then-own-page": get("/app/one", close=False) + get("/_sidecar/healthz"),
    }


_HEAD = re.compile(rb"HTTP/1\.1 (\d{3})[^\r\n]*\r\n(?:[^\r\n]+\r\n)*\r\n")
_FRAMING = (b"content-length", b"transfer-encoding")


def _shape(resp: RawResponse) -> list[tuple[object, ...]]:
    """What must agree, answer by answer: the status line, the headers (masked, sorted) and
    the body bytes. The framing is read, not compared: whether an upstream's small chunked
    answer is relayed whole (``Content-Length``) or as it comes (chunked) depends on how its
    packets fall, in either implementation."""
    raw = resp.raw
    for name in _MASKED:
        raw = re.sub(rb"(?im)^(" + name.encode() + rb"):[^\r\n]*", rb"\1: *", raw)
    answers: list[tuple[object, ...]] = []
    pos = 0
    while match := _HEAD.match(raw, pos):
        lines = match.group().split(b"\r\n")[1:-2]
        fields = {line.partition(b":")[0].strip().lower(): line for line in lines}
        pos = match.end()
        if b"transfer-encoding" in fields:
            body = b""
            while True:
                size_line, _, rest = raw[pos:].partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                body += rest[:size]
                pos += len(size_line) + 2 + size + 2
                if size == 0:
                    break
        elif b"content-length" in fields:
            length = int(fields[b"content-length"].partition(b":")[2])
            body, pos = raw[pos : pos + length], pos + length
        elif int(match.group(1)) in (204, 304):
            body = b""
        else:
            body, pos = raw[pos:], len(raw)
        kept = sorted(
            line.lower() for line in lines if line.partition(b":")[0].lower() not in _FRAMING
        )
        answers.append((match.group().split(b"\r\n", 1)[0], kept, body))
    answers.append(("after the answers", raw[pos:]))
    return answers


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Sidecar, Sidecar, Upstream]]:
    async with running_upstream() as upstream:
        upstream.respond = _respond
        async with (
            running_sidecar(tmp_path / "lean", upstream=upstream) as lean,
            running_sidecar(
                tmp_path / "plain", upstream=upstream, overrides={"proxy": {"lean_front": False}}
            ) as plain,
        ):
            yield lean, plain, upstream


async def test_the_lean_front_answers_exactly_as_aiohttp_does(
    pair: tuple[Sidecar, Sidecar, Upstream],
) -> None:
    lean, plain, _ = pair
    lean_cookie = f"{lean.cookie_name}={await lean.login()}"
    plain_cookie = f"{plain.cookie_name}={await plain.login()}"
    differ = []
    for name, lean_request in _corpus(f"127.0.0.1:{lean.proxy_port}", lean_cookie).items():
        plain_request = _corpus(f"127.0.0.1:{plain.proxy_port}", plain_cookie)[name]
        got = await raw_http(lean.proxy_port, lean_request, answers=2, quiet=1.0)
        want = await raw_http(plain.proxy_port, plain_request, answers=2, quiet=1.0)
        assert want.status != 0, name
        if _shape(got) != _shape(want):
            differ.append((name, got.raw[:600], want.raw[:600]))
    assert not differ, differ


async def test_upstream_failures_get_the_same_pages(
    pair: tuple[Sidecar, Sidecar, Upstream],
) -> None:
    lean, plain, upstream = pair
    cookies = [
        (lean, f"{lean.cookie_name}={await lean.login()}"),
        (plain, f"{plain.cookie_name}={await plain.login()}"),
    ]
    await upstream.stop()
    try:
        for accept in ("text/html", "application/json"):
            shapes = []
            for sc, cookie in cookies:
                request = (
                    f"GET /app/x HTTP/1.1\r\nHost: 127.0.0.1:{sc.proxy_port}\r\n"
                    f"Cookie: {cookie}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
                )
                response = await raw_http(sc.proxy_port, request.encode())
                assert response.status == 502
                shapes.append(_shape(response))
            assert shapes[0] == shapes[1], accept
    finally:
        await upstream.start()


async def test_the_hot_path_is_not_handed_over_and_the_rest_is_mid_connection(
    tmp_path: Path,
) -> None:
    async with running_sidecar(tmp_path) as sc:
        cookie = f"{sc.cookie_name}={await sc.login()}"
        host = f"127.0.0.1:{sc.proxy_port}"
        hot = f"GET /app/hot HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n".encode()
        before = _handovers()
        response = await raw_http(sc.proxy_port, hot * 3, answers=3, quiet=1.0)
        assert response.responses == 3
        assert response.status == 200
        assert _handovers() == before  # three requests, all the lean front's
        # Hot, anonymous (the lean front's 401 page), the prefix's health page (handed
        # over: aiohttp's from here on), hot again: in order, on one connection.
        anonymous = f"GET /app/anon HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n\r\n"
        page = f"GET /_sidecar/healthz HTTP/1.1\r\nHost: {host}\r\n\r\n"
        last = f"GET /app/last HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
        data = hot + (anonymous + page + last + "Connection: close\r\n\r\n").encode()
        response = await raw_http(sc.proxy_port, data, answers=4, quiet=1.0)
        statuses = re.findall(rb"HTTP/1\.1 (\d{3})", response.raw)
        assert statuses == [b"200", b"401", b"200", b"200"]
        assert _handovers() == before + 1
        seen = [r.raw_path for r in sc.upstream.requests[-2:]]
        assert seen == ["/app/hot", "/app/last"]


async def test_a_body_that_came_with_its_head_is_forwarded_by_the_lean_front_as_aiohttp_does(
    pair: tuple[Sidecar, Sidecar, Upstream],
) -> None:
    """A small POST whose body arrived with its head (as browsers send one) stays on the
    lean front, and the upstream receives the same request, byte for byte, as from
    aiohttp's server; a body still on its way is aiohttp's, the connection handed over."""
    lean, plain, upstream = pair
    received = []
    for sc in (lean, plain):
        cookie = f"{sc.cookie_name}={await sc.login()}"
        head = (
            f"POST /app/form?x=1 HTTP/1.1\r\nHost: 127.0.0.1:{sc.proxy_port}\r\n"
            f"Cookie: theme=dark; {cookie}\r\nContent-Type: application/json\r\n"
            "Content-Length: 11\r\n\r\n"
        ).encode()
        before = _handovers()
        response = await raw_http(sc.proxy_port, (head + b"hello world") * 2, answers=2)
        assert re.findall(rb"HTTP/1\.1 (\d{3})", response.raw) == [b"200", b"200"]
        if sc is lean:
            assert _handovers() == before  # both the lean front's
        recorded = upstream.requests[-2:]
        assert [r.body for r in recorded] == [b"hello world"] * 2
        received.append([(r.method, r.raw_path, _unvaried(r.headers), r.body) for r in recorded])
        # The body split from its head: handed over, and the same request still arrives.
        reader, writer = await asyncio.open_connection("127.0.0.1", sc.proxy_port)
        try:
            writer.write(head)
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"hello world")
            answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 200")
        assert upstream.requests[-1].body == b"hello world"
        if sc is lean:
            assert _handovers() == before + 1
    assert received[0] == received[1]


def _unvaried(headers: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """A recorded request's headers without those that differ between two sidecars."""
    varies = {"x-request-id", "host", "x-forwarded-host", "x-forwarded-for"}
    return [(n, v) for n, v in headers if n.lower() not in varies]


def _anonymous(port: int, cookie_name: str) -> dict[str, bytes]:
    """Requests without a live session: proxy.unauthenticated's (sidecar.proxy.gateway)."""

    def req(target: str, *extra: str, method: str = "GET") -> bytes:
        lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", *extra]
        return ("\r\n".join([*lines, "Connection: close"]) + "\r\n\r\n").encode("latin-1")

    return {
        "get": req("/app/page?x=1&y=two"),
        "json": req("/api/orders", "Accept: application/json"),
        "html-over-json": req("/app/p", "Accept: text/html, application/json;q=0.5"),
        "post": req("/app/form", "Content-Length: 3", method="POST") + b"a=1",
        "delete": req("/app/thing/1", method="DELETE"),
        "off-site-rd": req("//evil.example/x"),
        "backslash-rd": req("/\\evil.example/x"),
        "non-ascii": req("/app/caf\xe9?q=\xfc"),
        "unknown-cookie": req("/app/x", f"Cookie: {cookie_name}={'A' * 43}"),
        "garbage-cookie": req("/app/x", f"Cookie: {cookie_name}=not a cookie"),
        "public-path": req("/static/app.css"),
        "keep-alive-twice": req("/app/1")[: -len("Connection: close\r\n\r\n")]
        + b"\r\n"
        + req("/app/2", "Accept: application/json"),
    }


@pytest.fixture(params=["deny", "pass", "redirect"])
async def anonymous_pair(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Sidecar, Sidecar, str]]:
    mode = {"unauthenticated": request.param}
    if request.param == "redirect":
        mode["login_url"] = "https://login.example.com/signin?app=1"
    async with running_upstream() as upstream:
        upstream.respond = _respond
        async with (
            running_sidecar(
                tmp_path / "lean", upstream=upstream, overrides={"proxy": mode}
            ) as lean,
            running_sidecar(
                tmp_path / "plain",
                upstream=upstream,
                overrides={"proxy": {**mode, "lean_front": False}},
            ) as plain,
        ):
            yield lean, plain, request.param


async def test_anonymous_requests_get_the_same_answers_from_the_lean_front(
    anonymous_pair: tuple[Sidecar, Sidecar, str],
) -> None:
    """Without a live session the lean front does what proxy.unauthenticated says, with
    aiohttp's bytes: forwards without identity (pass), redirects to login_url (302, 303
    after a POST; the 401 page for JSON) or answers the 401 page (deny)."""
    lean, plain, mode = anonymous_pair
    lean_corpus = _anonymous(lean.proxy_port, lean.cookie_name)
    plain_corpus = _anonymous(plain.proxy_port, plain.cookie_name)
    differ = []
    statuses = {}
    handed = set()
    for name, lean_request in lean_corpus.items():
        before = _handovers()
        got = await raw_http(lean.proxy_port, lean_request, answers=2, quiet=1.0)
        if _handovers() != before:
            handed.add(name)
        want = await raw_http(plain.proxy_port, plain_corpus[name], answers=2, quiet=1.0)
        assert want.status != 0, name
        statuses[name] = want.status
        if _shape(got) != _shape(want):
            differ.append((name, got.raw[:600], want.raw[:600]))
    assert not differ, differ
    # The lean front's, but for targets the path oracle or llhttp leaves to aiohttp.
    assert handed == {"off-site-rd", "backslash-rd", "non-ascii"}, handed
    expected = {"deny": (401, 401), "pass": (200, 200), "redirect": (302, 303)}[mode]
    assert (statuses["get"], statuses["post"]) == expected
    assert statuses["json"] == (200 if mode == "pass" else 401)


def _sub_requests(port: int, cookie: str) -> dict[str, bytes]:
    """Forward-auth sub-requests as ingresses send them (127.0.0.1 is a trusted proxy)."""

    def auth(
        *extra: str, target: str = "/_sidecar/auth", method: str = "GET", who: str | None = cookie
    ) -> bytes:
        lines = [f"{method} {target} HTTP/1.1", "Host: app.example.com"]
        lines += [*([f"Cookie: {who}"] if who else []), *extra, "Connection: close"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    here = f"127.0.0.1:{port}"
    return {
        "allowed": auth("X-Original-URI: /app/x?a=1", f"X-Forwarded-Host: {here}"),
        "no-original": auth(),
        "anonymous": auth("X-Original-URI: /app/x", who=None),
        # Not in the cache: the lean front asks the store, in a task.
        "unknown-cookie": auth("X-Original-URI: /app/x", who=cookie.split("=")[0] + "=" + "A" * 43),
        "anonymous-json": auth("X-Original-URI: /app/x", "Accept: application/json", who=None),
        "denied-path": auth("X-Original-URI: /private/x", f"X-Forwarded-Host: {here}"),
        "public-path": auth("X-Original-URI: /static/a.css", who=None),
        "refer-query": auth("X-Original-URI: /?refer=abc"),
        "own-prefix": auth("X-Original-URI: /_sidecar/session"),
        "unsafe-path": auth("X-Original-URI: /app/../private/x"),
        "twice": auth("X-Original-URI: /app/x", "X-Original-URI: /private/x"),
        "disagree": auth("X-Original-URI: /app/x", "X-Forwarded-Uri: /private/x"),
        "ingress-nginx-url": auth(f"X-Original-URL: http://{here}/app/y", "X-Original-Method: GET"),
        "bad-url": auth("X-Original-URL: http://a:80?/app/y"),
        "other-host": auth("X-Original-URI: /app/x", "X-Forwarded-Host: evil.example"),
        "traefik": auth(
            "X-Forwarded-Uri: /app/t",
            "X-Forwarded-Method: POST",
            f"X-Forwarded-Host: {here}",
            "X-Forwarded-Proto: http",
        ),
        "bad-method": auth("X-Original-URI: /app/x", "X-Original-Method: G(ET"),
        "websocket-bad-origin": auth(
            "X-Original-URI: /app/ws", "Sec-WebSocket-Key: x", "Origin: https://evil.example"
        ),
        "query-on-auth": auth("X-Original-URI: /app/x", target="/_sidecar/auth?x=1&refer=z"),
        "client-request-id": auth("X-Original-URI: /app/x", "X-Request-Id: ingress-id-7"),
        "post": auth("X-Original-URI: /app/x", method="POST"),
        "encoded-route": auth("X-Original-URI: /app/x", target="/_sidecar%2Fauth"),
        "keep-alive-twice": auth("X-Original-URI: /app/1")[: -len("Connection: close\r\n\r\n")]
        + b"\r\n"
        + auth("X-Original-URI: /private/2"),
    }


@pytest.fixture
async def trusting_pair(tmp_path: Path) -> AsyncIterator[tuple[Sidecar, Sidecar]]:
    trusted = {"trusted_proxies": ["127.0.0.1/32"]}
    async with (
        running_sidecar(tmp_path / "lean", overrides={"proxy": trusted}) as lean,
        running_sidecar(
            tmp_path / "plain", overrides={"proxy": {**trusted, "lean_front": False}}
        ) as plain,
    ):
        yield lean, plain


async def test_forward_auth_sub_requests_get_the_same_answers_from_the_lean_front(
    trusting_pair: tuple[Sidecar, Sidecar],
) -> None:
    """``GET <prefix>/auth`` is answered by the lean front (sidecar.proxy.auth_lane) with
    the bytes aiohttp's handler writes: identity headers, 401/403 and their hints; what
    it does not take (other methods, an encoded route) is aiohttp's."""
    lean, plain = trusting_pair
    lean_cookie = f"{lean.cookie_name}={await lean.login(additionalParams={'tenant': 't1'})}"
    plain_cookie = f"{plain.cookie_name}={await plain.login(additionalParams={'tenant': 't1'})}"
    lean_corpus = _sub_requests(lean.proxy_port, lean_cookie)
    plain_corpus = _sub_requests(plain.proxy_port, plain_cookie)
    differ = []
    statuses = {}
    for name, lean_request in lean_corpus.items():
        before = _handovers()
        got = await raw_http(lean.proxy_port, lean_request, answers=2, quiet=1.0)
        handed = _handovers() - before
        want = await raw_http(plain.proxy_port, plain_corpus[name], answers=2, quiet=1.0)
        assert want.status != 0, name
        statuses[name] = (want.status, handed)
        if _shape(got) != _shape(want):
            differ.append((name, got.raw[:600], want.raw[:600]))
    assert not differ, differ
    # Who answered, and the answers themselves (so the corpus does test something).
    assert statuses["allowed"] == (200, 0)
    assert statuses["anonymous"] == (401, 0)
    assert statuses["unknown-cookie"] == (401, 0)
    assert statuses["denied-path"] == (403, 0)
    assert statuses["public-path"] == (200, 0)
    assert statuses["other-host"] == (403, 0)
    assert statuses["post"] == (405, 1)
    assert statuses["encoded-route"][1] == 1
    allowed = await raw_http(lean.proxy_port, lean_corpus["allowed"])
    assert allowed.header("X-Forwarded-Tenant") == "t1"


async def test_a_head_sent_a_byte_at_a_time_is_served_by_the_lean_front(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path) as sc:
        cookie = f"{sc.cookie_name}={await sc.login()}"
        data = (
            f"GET /app/trickle HTTP/1.1\r\nHost: 127.0.0.1:{sc.proxy_port}\r\n"
            f"Cookie: {cookie}\r\nConnection: close\r\n\r\n"
        ).encode()
        before = _handovers()
        reader, writer = await asyncio.open_connection("127.0.0.1", sc.proxy_port)
        try:
            for i in range(len(data)):
                writer.write(data[i : i + 1])
                await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert _handovers() == before
        assert sc.upstream.last.raw_path == "/app/trickle"


async def test_after_a_408_the_client_still_sending_gets_the_answer_and_an_eof_not_a_reset(
    tmp_path: Path,
) -> None:
    """A slow head gets its 408 and our FIN; what the client keeps sending meanwhile is read
    and dropped (a close with unread bytes would send a reset, which can destroy the 408
    unread), and the connection is closed within the linger bound even if the client never
    stops."""
    limits: dict[str, object] = {"proxy": {"request_head_timeout": "300ms"}}
    async with running_sidecar(tmp_path, overrides=limits) as sc:
        reader, writer = await asyncio.open_connection("127.0.0.1", sc.proxy_port)
        writer.write(f"GET /app/x HTTP/1.1\r\nHost: 127.0.0.1:{sc.proxy_port}\r\n".encode())
        stop = asyncio.Event()

        async def trickle() -> None:  # a header line every 20 ms, never the blank line
            i = 0
            while not stop.is_set():
                writer.write(f"X-Slow-{i}: {'v' * 200}\r\n".encode())
                await writer.drain()
                await asyncio.sleep(0.02)
                i += 1

        sender = asyncio.create_task(trickle())
        try:
            answer = await asyncio.wait_for(reader.read(-1), 5)  # until our FIN
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
            assert not sender.done()  # the client could still send: nothing was reset
            gauge = "sidecar_client_connections"
            before = metrics.REGISTRY.get_sample_value(gauge)
            assert before is not None
            assert before >= 1
            deadline = time.monotonic() + 4.0  # the 2 s linger and a sweep tick
            while metrics.REGISTRY.get_sample_value(gauge) == before:
                assert time.monotonic() < deadline, "the lingering connection was never closed"
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            sender.cancel()
            writer.close()


async def test_an_idle_lean_connection_is_closed_after_keepalive_timeout(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path, overrides={"proxy": {"keepalive_timeout": "300ms"}}) as sc:
        cookie = f"{sc.cookie_name}={await sc.login()}"
        reader, writer = await asyncio.open_connection("127.0.0.1", sc.proxy_port)
        try:
            writer.write(
                f"GET /app/x HTTP/1.1\r\nHost: 127.0.0.1:{sc.proxy_port}\r\n"
                f"Cookie: {cookie}\r\n\r\n".encode()
            )
            started = time.monotonic()
            received = b""
            while chunk := await asyncio.wait_for(reader.read(65536), 5):
                received += chunk
            closed_after = time.monotonic() - started
        finally:
            writer.close()
        assert received.startswith(b"HTTP/1.1 200 ")
        assert 0.25 <= closed_after < 2.0


async def test_a_client_that_leaves_frees_its_upstream_connection_at_once(
    tmp_path: Path,
) -> None:
    # One upstream connection: while the abandoned request held it, the next would wait.
    overrides: dict[str, object] = {"proxy": {"max_connections": 1, "upstream_timeout": "3s"}}
    async with running_sidecar(tmp_path, overrides=overrides) as sc:
        cookie = f"{sc.cookie_name}={await sc.login()}"
        host = f"127.0.0.1:{sc.proxy_port}"
        _reader, writer = await asyncio.open_connection("127.0.0.1", sc.proxy_port)
        writer.write(f"GET /_up/slow HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n".encode())
        await writer.drain()
        await asyncio.sleep(0.2)  # the request is upstream, holding the only connection
        writer.close()
        started = time.monotonic()
        request = f"GET /app/next HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
        response = await raw_http(sc.proxy_port, (request + "Connection: close\r\n\r\n").encode())
        assert response.status == 200
        assert time.monotonic() - started < 1.5  # not the 3 s upstream_timeout


def _read_to_end(sock: socket.socket) -> bytes:
    with sock:
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
        return b"".join(chunks)


async def test_requests_beyond_the_pool_wait_in_its_queue_without_a_task_each(
    tmp_path: Path,
) -> None:
    """A burst larger than ``proxy.max_connections``: the requests that find every upstream
    connection busy wait in the pool's queue as objects, not as tasks (a task and its
    coroutines per waiting request were most of the memory a burst of 1,000 left behind),
    and are all answered, never more than ``max_connections`` upstream at once."""
    burst = 40
    overrides: dict[str, object] = {"proxy": {"max_connections": 2, "upstream_timeout": "10s"}}
    gate = asyncio.Event()
    inside = most = 0

    async def held(request: web.BaseRequest) -> web.StreamResponse:
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        try:
            await gate.wait()
        finally:
            inside -= 1
        return web.Response(text="ok")

    async with running_sidecar(tmp_path, overrides=overrides) as sc:
        cookie = f"{sc.cookie_name}={await sc.login()}"
        request = (
            f"GET /app/burst HTTP/1.1\r\nHost: 127.0.0.1:{sc.proxy_port}\r\n"
            f"Cookie: {cookie}\r\nConnection: close\r\n\r\n"
        ).encode()
        assert (await raw_http(sc.proxy_port, request)).status == 200  # session cached
        sc.upstream.respond = held
        before = len(asyncio.all_tasks())
        # Blocking sockets: the clients add no tasks of their own to count.
        clients = [socket.create_connection(("127.0.0.1", sc.proxy_port), 10) for _ in range(burst)]
        for client in clients:
            client.sendall(request)
        deadline = time.monotonic() + 5
        while inside < 2:
            assert time.monotonic() < deadline, "the first requests never reached the upstream"
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # every request in: two upstream, the rest queued
        # The two relayed requests' tasks and the upstream's handlers (two each); a task
        # per queued request would be 38 more.
        assert len(asyncio.all_tasks()) - before <= 8
        gate.set()
        answers = await asyncio.wait_for(
            asyncio.gather(*(asyncio.to_thread(_read_to_end, c) for c in clients)), 10
        )
        assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"HTTP/1.1 200 OK"] * burst
        assert most == 2


async def test_a_request_queued_for_a_slot_keeps_only_what_it_sends_upstream(
    tmp_path: Path,
) -> None:
    """A request waiting in the pool's queue holds the request it will send upstream, not
    also its bytes as received, its parsed head and its cookies: with 4 KiB of the app's
    own cookies, each of the 38 queued requests of a burst holds about one copy of them
    (about four before: ~16 KiB each), measured by tracemalloc while they wait."""
    burst = 40
    overrides: dict[str, object] = {"proxy": {"max_connections": 2, "upstream_timeout": "10s"}}
    gate = asyncio.Event()
    inside = 0

    async def held(request: web.BaseRequest) -> web.StreamResponse:
        nonlocal inside
        inside += 1
        await gate.wait()
        return web.Response(text="ok")

    app_cookies = "; ".join(f"app{i}={'v' * 90}" for i in range(40))  # ~4 KiB
    async with running_sidecar(tmp_path, overrides=overrides) as sc:
        cookie = f"{sc.cookie_name}={await sc.login()}; {app_cookies}"
        request = (
            f"GET /app/burst HTTP/1.1\r\nHost: 127.0.0.1:{sc.proxy_port}\r\n"
            f"Cookie: {cookie}\r\nConnection: close\r\n\r\n"
        ).encode()
        assert (await raw_http(sc.proxy_port, request)).status == 200  # session cached
        sc.upstream.respond = held
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            # Blocking sockets: the clients allocate nothing traced here.
            clients = [
                socket.create_connection(("127.0.0.1", sc.proxy_port), 10) for _ in range(burst)
            ]
            for client in clients:
                client.sendall(request)
            deadline = time.monotonic() + 5
            while inside < 2:
                assert time.monotonic() < deadline, "the first requests never reached the upstream"
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)  # every request in: two upstream, the rest queued
            held_bytes = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        gate.set()
        answers = await asyncio.wait_for(
            asyncio.gather(*(asyncio.to_thread(_read_to_end, c) for c in clients)), 10
        )
        assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"HTTP/1.1 200 OK"] * burst
    # Everything the burst holds (the two upstream requests and aiohttp's handling of
    # them included), per request: one copy of the cookies and the rest of the request.
    per_request = held_bytes / burst
    assert per_request < 2.5 * len(app_cookies), per_request


async def test_a_request_queued_for_a_slot_longer_than_upstream_timeout_gets_a_504(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    overrides: dict[str, object] = {"proxy": {"max_connections": 1, "upstream_timeout": "1s"}}
    async with running_sidecar(tmp_path, overrides=overrides) as sc:
        cookie = f"{sc.cookie_name}={await sc.login()}"
        host = f"127.0.0.1:{sc.proxy_port}"
        # An open event stream holds the only slot (stream_idle_timeout: minutes).
        reader, holder = await asyncio.open_connection("127.0.0.1", sc.proxy_port)
        holder.write(f"GET /_up/sse HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n".encode())
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        caplog.set_level(logging.WARNING, logger="sidecar.forward")
        started = time.monotonic()
        request = f"GET /app/waits HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
        response = await raw_http(sc.proxy_port, (request + "Connection: close\r\n\r\n").encode())
        took = time.monotonic() - started
        assert response.status == 504
        assert 0.9 <= took < 3.0, took  # its own wait of upstream_timeout, bounded
        assert "upstream did not answer within 1.0s" in caplog.text
        holder.close()  # the stream ends: its slot comes back for the next request
        response = await raw_http(sc.proxy_port, (request + "Connection: close\r\n\r\n").encode())
        assert response.status == 200


async def test_a_fault_in_the_lane_is_answered_by_aiohttp_or_drops_the_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug must never leave a client waiting: before anything is written the request is
    handed to aiohttp (which answers it), after that the connection is dropped and the
    upstream connection's slot freed (one slot here: the next request needs it)."""
    overrides: dict[str, object] = {"proxy": {"max_connections": 1, "upstream_timeout": "3s"}}
    async with running_sidecar(tmp_path, overrides=overrides) as sc:
        cookie = f"{sc.cookie_name}={await sc.login()}"
        request = (
            f"GET /app/x HTTP/1.1\r\nHost: 127.0.0.1:{sc.proxy_port}\r\nCookie: {cookie}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        await raw_http(sc.proxy_port, request)  # an idle pooled connection for what follows

        def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("a bug")

        before = _handovers()
        with monkeypatch.context() as patched:
            patched.setattr(ExpressLane, "_admit", broken)
            response = await raw_http(sc.proxy_port, request)
        assert response.status == 200  # aiohttp's answer
        assert _handovers() == before + 1
        with monkeypatch.context() as patched:
            patched.setattr(answers, "whole", broken)
            started = time.monotonic()
            response = await raw_http(sc.proxy_port, request)
            assert response.status == 0  # dropped, not a hang
            assert time.monotonic() - started < 2.0
        response = await raw_http(sc.proxy_port, request)
        assert response.status == 200  # the slot came back
        with monkeypatch.context() as patched:
            # After the request was counted in, before anything was sent upstream.
            patched.setattr(Forwarder, "upstream_head", broken)
            response = await raw_http(sc.proxy_port, request)
            assert response.status == 0
        in_flight = metrics.REGISTRY.get_sample_value("sidecar_requests_in_flight")
        assert in_flight == 0  # counted out again: a SIGTERM would not wait for it
        response = await raw_http(sc.proxy_port, request)
        assert response.status == 200


async def test_lean_connections_count_in_the_connections_gauge(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path) as sc:
        cookie = f"{sc.cookie_name}={await sc.login()}"
        hot = (
            f"GET /app/x HTTP/1.1\r\nHost: 127.0.0.1:{sc.proxy_port}\r\nCookie: {cookie}\r\n\r\n"
        ).encode()
        before = _handovers()
        opened = []
        try:
            for _ in range(5):
                reader, writer = await asyncio.open_connection("127.0.0.1", sc.proxy_port)
                opened.append(writer)
                writer.write(hot)
                assert (await asyncio.wait_for(reader.readuntil(b"ok"), 5)).startswith(
                    b"HTTP/1.1 200 "
                )
            assert _handovers() == before  # five lean connections, kept alive
            gauge = metrics.REGISTRY.get_sample_value("sidecar_client_connections")
            assert gauge is not None
            assert gauge >= 5
        finally:
            for writer in opened:
                writer.close()


async def test_clients_that_leave_at_every_stage_give_the_one_upstream_slot_back(
    tmp_path: Path,
) -> None:
    # One upstream connection: a slot not given back makes the next request wait its
    # upstream_timeout and fail with a 504.
    overrides: dict[str, object] = {"proxy": {"max_connections": 1, "upstream_timeout": "2s"}}
    async with running_sidecar(tmp_path, overrides=overrides) as sc:
        cookie = f"{sc.cookie_name}={await sc.login()}"
        host = f"127.0.0.1:{sc.proxy_port}"

        def get(path: str, close: bool = False) -> bytes:
            end = "Connection: close\r\n" if close else ""
            return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n{end}\r\n".encode()

        async def leave(path: str, after: bytes | None) -> asyncio.StreamWriter:
            """Send ``path``, read up to ``after`` (or only send), and return the writer."""
            reader, writer = await asyncio.open_connection("127.0.0.1", sc.proxy_port)
            writer.write(get(path))
            await writer.drain()
            if after is not None:
                await asyncio.wait_for(reader.readuntil(after), 5)
            return writer

        async def next_request_is_prompt(stage: str) -> None:
            started = time.monotonic()
            response = await raw_http(sc.proxy_port, get("/app/next", close=True))
            assert response.status == 200, stage
            assert time.monotonic() - started < 1.5, stage  # not the 2 s upstream_timeout

        # Mid-stream: a large body, the client leaves after its head.
        (await leave("/_up/big?size=50000000", b"\r\n\r\n")).close()
        await next_request_is_prompt("mid-stream")
        # An idle stream (server-sent events): the client leaves after its head.
        (await leave("/_up/sse", b"\r\n\r\n")).close()
        await next_request_is_prompt("idle stream")
        # Waiting for the slot: one client holds it (upstream silent), a second waits for
        # it and leaves, then the first leaves.
        holder = await leave("/_up/slow", None)
        await asyncio.sleep(0.2)  # the first request is upstream, holding the slot
        waiter = await leave("/app/waits", None)
        await asyncio.sleep(0.2)  # the second waits for the slot
        waiter.close()
        holder.close()
        await next_request_is_prompt("waiting for a slot")


async def test_a_handover_from_the_store_lookup_mid_pipeline_keeps_every_byte_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large streamed answer (reading pauses behind it), then a request whose unknown
    cookie sends the lane to the store and back, where a fault makes it decline (handed
    over from a task; aiohttp's handler answers its 401), then 400 more: every answer, in
    order, on one connection."""
    anonymous = Gateway.anonymous
    faults = iter([RuntimeError("a bug in the lane, once")])

    def once_broken(self: Gateway, *args: Any, **kwargs: Any) -> object:
        fault = next(faults, None)
        if fault is not None:
            raise fault
        return anonymous(self, *args, **kwargs)

    monkeypatch.setattr(Gateway, "anonymous", once_broken)
    async with running_sidecar(tmp_path) as sc:
        sc.upstream.respond = lambda request: web.Response(text="ok " + request.raw_path)
        cookie = f"{sc.cookie_name}={await sc.login()}"
        host = f"127.0.0.1:{sc.proxy_port}"

        def get(path: str, cookie: str = cookie, close: bool = False) -> bytes:
            end = "Connection: close\r\n" if close else ""
            return (
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
                f"Accept: application/json\r\n{end}\r\n"
            ).encode()

        count = 400
        unknown = f"{sc.cookie_name}={'A' * 43}"
        data = b"".join(
            [
                get("/_up/big?size=3000000"),
                get("/app/anonymous", unknown),
                *(get(f"/app/{i}") for i in range(count)),
                get("/app/last", close=True),
            ]
        )
        before = _handovers()
        reader, writer = await asyncio.open_connection("127.0.0.1", sc.proxy_port)
        try:
            writer.write(data)
            received = await asyncio.wait_for(reader.read(-1), 10)
        finally:
            writer.close()
        statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", received)
        assert statuses[:3] == [b"200", b"401", b"200"]
        assert len(statuses) == count + 3
        paths = [p.decode() for p in re.findall(rb"ok (/app/(?:\d+|last))", received)]
        assert paths == [f"/app/{i}" for i in range(count)] + ["/app/last"]
        assert _handovers() == before + 1


async def _session_cookie(http: aiohttp.ClientSession, served: Served) -> str:
    async with http.post(
        served.admin + "/referstring", json={"userId": "u-1"}, headers=served.admin_headers()
    ) as response:
        assert response.status == 200
        link = str((await response.json())["url"])
    async with http.get(link.partition("#")[0], allow_redirects=False) as response:
        assert response.status == 303
        (value,) = [m.value for m in response.cookies.values()]
        (name,) = list(response.cookies)
        return f"{name}={value}"


async def test_a_served_process_on_uvloop_answers_the_same_with_and_without_the_lean_front(
    tmp_path: Path,
) -> None:
    """``sidecar serve`` as deployed (uvloop, whose transports hand over differently from
    asyncio's): the corpus again, each request to a process with the lean front and to one
    with ``SIDECAR_PROXY__LEAN_FRONT=false``."""
    pytest.importorskip("uvloop", reason="the served process runs on uvloop when installed")
    plain_env = {**os.environ, "SIDECAR_PROXY__LEAN_FRONT": "false"}
    for name in ("lean", "plain"):
        (tmp_path / name).mkdir()
    async with (
        running_upstream() as upstream,
        running_serve(tmp_path / "lean", upstream.url) as lean,
        running_serve(tmp_path / "plain", upstream.url, env=plain_env) as plain,
        aiohttp.ClientSession() as http,
    ):
        upstream.respond = _respond
        lean_cookie = await _session_cookie(http, lean)
        plain_cookie = await _session_cookie(http, plain)
        differ = []
        for name, lean_request in _corpus(lean.proxy.removeprefix("http://"), lean_cookie).items():
            plain_request = _corpus(plain.proxy.removeprefix("http://"), plain_cookie)[name]
            lean_port = int(lean.proxy.rsplit(":", 1)[1])
            plain_port = int(plain.proxy.rsplit(":", 1)[1])
            got = await raw_http(lean_port, lean_request, answers=2, quiet=1.0)
            want = await raw_http(plain_port, plain_request, answers=2, quiet=1.0)
            assert want.status != 0, name
            if _shape(got) != _shape(want):
                differ.append((name, got.raw[:600], want.raw[:600]))
        assert not differ, differ
        assert not [line for line in lean.logs() if "Fatal error" in line or "Traceback" in line]


async def test_a_fault_after_an_answer_began_leaves_nothing_for_the_shutdown_to_wait_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request that failed after it was counted in is counted out once: the listener's
    shutdown then finds no request in progress (it waited out its whole cancel window,
    0.25 s, once a later request had come and gone)."""
    served = running_sidecar(tmp_path)
    sc = await served.__aenter__()
    try:
        request = (
            f"GET /app/x HTTP/1.1\r\nHost: 127.0.0.1:{sc.proxy_port}\r\n"
            f"Cookie: {sc.cookie_name}={await sc.login()}\r\nConnection: close\r\n\r\n"
        ).encode()
        await raw_http(sc.proxy_port, request)  # an idle pooled connection

        def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("a bug")

        with monkeypatch.context() as patched:
            patched.setattr(Forwarder, "upstream_head", broken)
            assert (await raw_http(sc.proxy_port, request)).status == 0
        assert (await raw_http(sc.proxy_port, request)).status == 200
    finally:
        started = time.monotonic()
        await served.__aexit__(None, None, None)
    assert time.monotonic() - started < 0.2


class _HeldReply:
    """A client connection as the lane sees it (sidecar.web.lanes.Reply), in memory."""

    peer: str | None = "127.0.0.1"
    sockname: object = ("127.0.0.1", 8080)

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.finished_count = 0

    def write(self, data: bytes) -> None:
        self.written.append(data)

    async def drain(self, within: float) -> bool:
        return True

    def abort(self) -> None:
        return None

    def finished(self) -> None:
        self.finished_count += 1

    def decline(self) -> None:
        raise AssertionError("declined")

    def committed(self) -> None:
        return None


async def test_a_request_whose_client_left_before_its_task_began_is_counted_out(
    tmp_path: Path,
) -> None:
    """A request that must wait (no idle upstream connection: a task relays it) whose client
    leaves in the same loop iteration: the task is cancelled before its first step, so its
    body and its ``finally`` never run. It is still finished once, as a 499, and the drain
    does not wait for it (a SIGTERM would otherwise wait out its whole grace period)."""
    cfg = make_config(tmp_path, "http://127.0.0.1:9")
    services = build_services(cfg)
    await services.store.open()
    app = build_proxy_app(services)
    drain = Drain()
    drain.attach(app)
    runner = ListenerRunner(app, limits=ConnectionLimits(head_timeout=10, max_head_size=8192))
    await runner.setup()
    try:
        value = await app[SESSIONS].start(user_id="u-1", role=cfg.roles["Authenticated"],
                                          token_id="t-1")  # fmt: skip
        head = parse_head(
            f"GET /app/x HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Cookie: {cfg.session.cookie_name}={value}\r\n\r\n".encode(),
            100,
            8192,
        )
        assert head is not None
        # The session in this process's cache: the verdict is given at once (no store task).
        cookies = cookie_values([head.headers[1][1]], cfg.session.cookie_name)
        assert await app[SESSIONS].lookup_cookies(cookies) is not None
        reply = _HeldReply()
        started = app[LANE].start(head, reply)  # no idle upstream connection: a task
        assert started is not None
        assert drain.in_flight == 1
        started.cancel()  # the client left, before the task's first step
        await asyncio.sleep(0.05)
        assert reply.finished_count == 1
        assert reply.written == []
        assert drain.in_flight == 0
    finally:
        await runner.cleanup()
        await services.store.close()
