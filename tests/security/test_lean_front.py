"""An adversarial review of the proxy listener's lean front (sidecar.web.lean, .proxy.express).

The lean front serves the hot path without aiohttp's server; whatever it serves must be
what aiohttp's server would have served, and nothing more:

* a request head aiohttp refuses (400) is never forwarded by the lean front: sent to a
  sidecar with the lean front and to one without (``proxy.lean_front: false``), it gets
  the same status, and the upstream receives nothing from either;
* the upstream receives the headers the lane judged, as aiohttp would pass them;
* a request the upstream may have acted on is never sent to it twice.

Real sockets throughout: raw clients, the recording upstream, a raw upstream that closes
a kept-alive connection exactly as a request arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from tests.harness import (
    RawUpstream,
    Sidecar,
    raw_http,
    request_path,
    running_sidecar,
)
from tests.security import casebook
from tests.security.fuzzing import fuzz


async def _cookie(sc: Sidecar) -> str:
    return f"{sc.cookie_name}={await sc.login()}"


def _request(sc: Sidecar, cookie: str, target: str, *extra: str, method: str = "GET") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{sc.proxy_port}", f"Cookie: {cookie}"]
    return ("\r\n".join([*lines, *extra]) + "\r\n\r\n").encode("latin-1")


# -- a stale keep-alive connection: retried only when sending twice is harmless -------------


class _ClosesSecondRequests:
    """A raw upstream that answers the first request on each connection and closes the
    connection, unanswered, on the second — as an upstream whose keep-alive timer fires
    just as a request arrives, or one that crashes while acting on it."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        # Keyed by the writer itself, not id(writer): a closed connection's writer may be
        # freed and its id reused by the next connection's, which then looked "second".
        self._served: dict[asyncio.StreamWriter, int] = {}

    async def __call__(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        self.seen.append(head.split(b"\r\n", 1)[0])
        count = self._served[writer] = self._served.get(writer, 0) + 1
        if count > 1:
            return False  # closed without a byte of an answer
        path = request_path(head)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(path), path))
        return True


@pytest.fixture(params=[True, False], ids=["lean", "aiohttp"])
async def stale_upstream(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Sidecar, _ClosesSecondRequests]]:
    answer = _ClosesSecondRequests()
    front: dict[str, object] = {"proxy": {"lean_front": request.param}}
    async with (
        RawUpstream(answer) as upstream,
        running_sidecar(tmp_path, upstream=upstream.pointing(), overrides=front) as sc,
    ):
        yield sc, answer


@pytest.mark.parametrize(
    ("method", "extra", "body"),
    [
        ("POST", (), b""),
        ("POST", ("Content-Length: 0",), b""),
        ("PATCH", (), b""),
        # A body (the lean front's when it came with its head) is never sent twice either,
        # even with an idempotent method: the pool's rule, on both fronts.
        ("POST", ("Content-Length: 6",), b"amount"),
        ("PUT", ("Content-Length: 6",), b"amount"),
    ],
)
async def test_a_request_unsafe_to_repeat_is_not_sent_twice_after_a_stale_connection(
    stale_upstream: tuple[Sidecar, _ClosesSecondRequests],
    method: str,
    extra: tuple[str, ...],
    body: bytes,
) -> None:
    sc, upstream = stale_upstream
    cookie = await _cookie(sc)
    warm = _request(sc, cookie, "/warm")
    act = _request(sc, cookie, "/pay", *extra, "Connection: close", method=method) + body
    # /warm leaves one idle upstream connection; /pay is sent on it and the upstream closes
    # it unanswered. It may have acted on it: a second copy could pay twice (RFC 9110 §9.2.2).
    response = await raw_http(sc.proxy_port, warm + act, answers=2, quiet=2.0)
    sent = [line for line in upstream.seen if line.startswith(method.encode())]
    casebook.record("framing", through=int(len(sent) != 1))
    assert len(sent) == 1, sent
    assert response.raw.count(b"HTTP/1.1 ") == 2
    assert b"HTTP/1.1 502 " in response.raw


async def test_an_idempotent_request_is_retried_once_after_a_stale_connection(
    stale_upstream: tuple[Sidecar, _ClosesSecondRequests],
) -> None:
    sc, upstream = stale_upstream
    cookie = await _cookie(sc)
    data = _request(sc, cookie, "/warm") + _request(sc, cookie, "/again", "Connection: close")
    response = await raw_http(sc.proxy_port, data, answers=2, quiet=2.0)
    assert response.raw.count(b"HTTP/1.1 200 ") == 2
    assert response.raw.endswith(b"/again")
    assert upstream.seen.count(b"GET /again HTTP/1.1") == 2  # the stale copy and the retry


# -- a body's framing: never lost on the way upstream -------------------------------------


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "aiohttp"])
@pytest.mark.parametrize("stripped", ["content-length", "content-*"])
async def test_a_body_stays_framed_when_the_config_strips_its_content_length(
    tmp_path: Path, lean: bool, stripped: str
) -> None:
    """``proxy.strip_headers`` may name ``Content-Length`` (or a prefix of it): the body must
    still reach the upstream framed (aiohttp's front re-frames it chunked). Sent after a head
    without its length, the body would be read by the upstream as a second request that no
    rule judged, carrying whatever identity headers the client wrote into it."""
    overrides: dict[str, object] = {"proxy": {"lean_front": lean, "strip_headers": [stripped]}}
    async with running_sidecar(tmp_path, overrides=overrides) as sc:
        cookie = await _cookie(sc)
        smuggled = (
            f"GET /private/x HTTP/1.1\r\nHost: 127.0.0.1:{sc.upstream.port}\r\n"
            "X-Forwarded-User: admin\r\n\r\n"
        ).encode()
        data = _request(
            sc, cookie, "/app/form", f"Content-Length: {len(smuggled)}", "Connection: close",
            method="POST",
        ) + smuggled  # fmt: skip
        seen = len(sc.upstream.requests)
        response = await raw_http(sc.proxy_port, data, quiet=2.0)
        await asyncio.sleep(0.2)  # a second request the upstream parsed would be recorded now
        received = sc.upstream.requests[seen:]
        casebook.record("framing", through=int(len(received) != 1))
        assert response.status == 200
        assert [(r.method, r.raw_path, r.body) for r in received] == [
            ("POST", "/app/form", smuggled)
        ]


# -- heads: the lean front serves none that aiohttp's server refuses -------------------------

# Header lines added to an authenticated GET; each name says what the head carries.
ODD_HEADS: dict[str, tuple[str, ...]] = {
    "no Host": ("-host",),
    "two Hosts": ("Host: 127.0.0.1",),
    "two User-Agents": ("User-Agent: a", "User-Agent: b"),
    "two Content-Types": ("Content-Type: text/plain", "Content-Type: text/html"),
    "two ETags": ("ETag: a", "ETag: b"),
    "two Servers": ("Server: a", "Server: b"),
    "two Max-Forwards": ("Max-Forwards: 1", "Max-Forwards: 2"),
    "two Content-Locations": ("Content-Location: /a", "Content-Location: /b"),
    "two Content-Ranges": ("Content-Range: bytes 0-1/2", "Content-Range: bytes 0-1/3"),
    "old WebSocket key": ("Sec-WebSocket-Key1: 4 @1  46546xW%0l 1 5",),
    "two Content-Length 0": ("Content-Length: 0", "Content-Length: 0"),
    "Content-Length 0 and chunked": ("Content-Length: 0", "Transfer-Encoding: chunked"),
    "Content-Length list": ("Content-Length: 0, 0",),
    "Content-Length +0": ("Content-Length: +0",),
    "obs-fold": ("X-A: a", " b"),
    "space before colon": ("X-A : a",),
    "NUL in a value": ("X-A: a\x00b",),
    "bare CR in a value": ("X-A: a\rb",),
    "DEL in a value": ("X-A: a\x7fb",),
    "empty name": (": v",),
    "space in a name": ("X A: v",),
    "bare LF line": ("X-A: a\nX-B: b",),
}


def _odd_request(sc: Sidecar, cookie: str, extra: tuple[str, ...]) -> bytes:
    lines = [
        "GET /app/odd HTTP/1.1",
        *([] if extra == ("-host",) else [f"Host: 127.0.0.1:{sc.proxy_port}"]),
        f"Cookie: {cookie}",
        *(line for line in extra if line != "-host"),
        "Connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Records:
    """A raw upstream that records each request head byte for byte and answers 200: it
    sees what was sent, where an HTTP server would refuse, or tidy, what it parses."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []

    async def __call__(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        self.heads.append(head)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    def lines(self, name: bytes) -> list[bytes]:
        """The ``name:`` lines of the last head, as sent."""
        prefix = name.lower() + b":"
        return [ln for ln in self.heads[-1].split(b"\r\n") if ln.lower().startswith(prefix)]


@pytest.fixture
async def fronts(tmp_path: Path) -> AsyncIterator[tuple[Sidecar, Sidecar, _Records]]:
    """A sidecar with the lean front and one without, before one raw upstream."""
    records = _Records()
    plain: dict[str, object] = {"proxy": {"lean_front": False}}
    async with RawUpstream(records) as upstream:
        up = upstream.pointing()
        async with (
            running_sidecar(tmp_path / "lean", upstream=up) as lean,
            running_sidecar(tmp_path / "plain", upstream=up, overrides=plain) as aiohttp_only,
        ):
            yield lean, aiohttp_only, records


async def test_a_head_aiohttp_refuses_is_refused_and_never_forwarded(
    fronts: tuple[Sidecar, Sidecar, _Records],
) -> None:
    lean, plain, upstream = fronts
    cookies = {id(sc): await _cookie(sc) for sc in (lean, plain)}
    differ = []
    for name, extra in ODD_HEADS.items():
        outcome = []
        for sc in (lean, plain):
            before = len(upstream.heads)
            response = await raw_http(sc.proxy_port, _odd_request(sc, cookies[id(sc)], extra))
            outcome.append((response.status, len(upstream.heads) - before))
        if outcome[0] != outcome[1] or outcome[1] != (400, 0):
            differ.append((name, outcome))
    casebook.record("framing", tried=len(ODD_HEADS), through=len(differ))
    assert not differ, differ


# Whole requests ({host} and {cookie} filled in) the lean front hands over or serves at a
# limit: each must get aiohttp's status, and the upstream the same requests, byte for byte.
EDGE_REQUESTS: dict[str, str] = {
    "asterisk form": "OPTIONS * HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n",
    "absolute form": "GET http://{host}/app/x HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n",
    "authority form": "CONNECT {host} HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n",
    "HTTP/1.0": "GET /app/x HTTP/1.0\r\nHost: {host}\r\nCookie: {cookie}\r\n",
    "HTTP/1.0 keep-alive": "GET /app/x HTTP/1.0\r\nHost: {host}\r\nCookie: {cookie}\r\n"
    "Connection: keep-alive\r\n",
    "HTTP/2 preface": "PRI * HTTP/2.0\r\n\r\nSM\r\n",
    "leading CRLF": "\r\nGET /app/x HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n",
    "a line of 9000 bytes": "GET /app/x HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
    "X-Long: " + "a" * 9000 + "\r\n",
    "a target of 9000 bytes": "GET /app/" + "a" * 9000 + " HTTP/1.1\r\nHost: {host}\r\n"
    "Cookie: {cookie}\r\n",
    "128 header lines": "GET /app/x HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
    + "X-N: n\r\n" * 125,
    "129 header lines": "GET /app/x HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
    + "X-N: n\r\n" * 126,
    "Connection names Host": "GET /app/x HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
    "Connection: Host, Cookie, X-Forwarded-For\r\n",
    "an empty Host": "GET /app/x HTTP/1.1\r\nHost:\r\nCookie: {cookie}\r\n",
    "a Host with a path": "GET /app/x HTTP/1.1\r\nHost: {host}/x\r\nCookie: {cookie}\r\n",
    "a Host with userinfo": "GET /app/x HTTP/1.1\r\nHost: a@{host}\r\nCookie: {cookie}\r\n",
}


def _sent(sc: Sidecar, heads: list[bytes]) -> list[bytes]:
    """The heads the upstream received from ``sc``, with what differs between two sidecars
    masked: the request id, the listener's port."""
    port = str(sc.proxy_port).encode()
    return [
        re.sub(rb"(?im)^x-request-id:[^\r\n]*\r\n", b"", head).replace(port, b"PORT")
        for head in heads
    ]


async def test_edge_requests_get_the_answer_aiohttp_gives(
    fronts: tuple[Sidecar, Sidecar, _Records],
) -> None:
    lean, plain, upstream = fronts
    cookies = {id(sc): await _cookie(sc) for sc in (lean, plain)}
    differ = []
    for name, template in EDGE_REQUESTS.items():
        outcome = []
        for sc in (lean, plain):
            host = f"127.0.0.1:{sc.proxy_port}"
            text = template.format(host=host, cookie=cookies[id(sc)]) + "Connection: close\r\n\r\n"
            before = len(upstream.heads)
            response = await raw_http(sc.proxy_port, text.encode())
            outcome.append((response.status, _sent(sc, upstream.heads[before:])))
        if outcome[0] != outcome[1]:
            differ.append((name, outcome))
    casebook.record("framing", tried=len(EDGE_REQUESTS), through=len(differ))
    assert not differ, differ


# Request lines the lean front must serve exactly as aiohttp does or hand over: llhttp
# reads some of them as HTTP/1.1 that are not (RTSP/1.1, ICE/1.1), others as another
# version, with other separators, or not at all.
ODD_REQUEST_LINES: dict[str, str] = {
    "plain": "GET /app/x HTTP/1.1",
    "HTTP/1.0": "GET /app/x HTTP/1.0",
    "HTTP/0.9": "GET /app/x HTTP/0.9",
    "HTTP/1.2": "GET /app/x HTTP/1.2",
    "HTTP/2.0": "GET /app/x HTTP/2.0",
    "RTSP/1.1": "GET /app/x RTSP/1.1",
    "ICE/1.1": "SOURCE /app/x ICE/1.1",
    "lower-case http/1.1": "GET /app/x http/1.1",
    "HTTP/1.1 and junk": "GET /app/x HTTP/1.1x",
    "two versions": "GET /app/x HTTP/1.1 HTTP/1.0",
    "no version": "GET /app/x",
    "a space after the version": "GET /app/x HTTP/1.1 ",
    "two spaces before the target": "GET  /app/x HTTP/1.1",
    "two spaces before the version": "GET /app/x  HTTP/1.1",
    "a tab before the target": "GET\t/app/x HTTP/1.1",
    "a tab before the version": "GET /app/x\tHTTP/1.1",
    "a tab in the target": "GET /app/x\tHTTP/1.1 HTTP/1.1",
    "a bare CR ending it": "GET /app/x HTTP/1.1\r",
    "a bare LF ending it": "GET /app/x HTTP/1.1\n",
    "a bare CR before it": "\rGET /app/x HTTP/1.1",
    "a bare LF before it": "\nGET /app/x HTTP/1.1",
    "CRLF CRLF before it": "\r\n\r\nGET /app/x HTTP/1.1",
    "a lower-case method": "get /app/x HTTP/1.1",
    "absolute form in upper case": "GET HTTP://{host}/app/x HTTP/1.1",
}


async def test_odd_request_lines_and_the_request_after_get_what_aiohttp_gives(
    fronts: tuple[Sidecar, Sidecar, _Records],
) -> None:
    """Each line starts a request that leaves the connection open if its version allows,
    and a plain request follows in the same packet: both fronts give the same answers on
    the connection, and the upstream receives the same requests, byte for byte."""
    lean, plain, upstream = fronts
    cookies = {id(sc): await _cookie(sc) for sc in (lean, plain)}
    differ = []
    for name, line in ODD_REQUEST_LINES.items():
        outcome = []
        for sc in (lean, plain):
            host = f"127.0.0.1:{sc.proxy_port}"
            rest = f"Host: {host}\r\nCookie: {cookies[id(sc)]}\r\n"
            text = (
                f"{line.format(host=host)}\r\n{rest}\r\n"
                f"GET /app/next HTTP/1.1\r\n{rest}Connection: close\r\n\r\n"
            )
            before = len(upstream.heads)
            response = await raw_http(sc.proxy_port, text.encode(), answers=2)
            statuses = re.findall(rb"(?m)^HTTP/1\.[01] (\d{3}) ", response.raw)
            outcome.append((statuses, _sent(sc, upstream.heads[before:])))
        if outcome[0] != outcome[1]:
            differ.append((name, outcome))
    casebook.record("framing", tried=len(ODD_REQUEST_LINES), through=len(differ))
    assert not differ, differ


async def test_header_values_reach_the_upstream_as_aiohttp_passes_them(
    fronts: tuple[Sidecar, Sidecar, _Records],
) -> None:
    lean, plain, upstream = fronts
    seen = []
    for sc in (lean, plain):
        cookie = await _cookie(sc)
        extra = ("X-Trailing: value \t ", "Accept: text/html\t", "Cookie: theme=dark ")
        response = await raw_http(sc.proxy_port, _odd_request(sc, cookie, extra))
        assert response.status == 200
        seen.append([upstream.lines(b"X-Trailing"), upstream.lines(b"Accept"),
                     upstream.lines(b"Cookie")])  # fmt: skip
    assert seen[0] == seen[1] == [[b"X-Trailing: value"], [b"Accept: text/html"],
                                  [b"Cookie: theme=dark"]]  # fmt: skip


# -- upstreams that misbehave: the lean front relays (or refuses) exactly as aiohttp does ---

_ANSWERS: dict[bytes, bytes] = {
    b"/interim": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\ninterim",
    b"/close": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nclose",
    b"/until-close": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody until the close",
    b"/http10": b"HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nhttp10",
    b"/204-body": b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
    b"/304-body": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nhello",
    b"/extra": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra"
    b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL",
    b"/length-and-chunked": b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"/switch": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
    b"/garbage": b"SPDY/3 200 OK\r\n\r\n",
    b"/huge-head": b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"p" * 70_000 + b"\r\n\r\n",
    b"/cut-head": b"HTTP/1.1 200 OK\r\nContent-Le",
    b"/short-body": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",
    b"/length-zeros": b"HTTP/1.1 200 OK\r\nContent-Length: 005\r\n\r\nzeros",
    b"/length-spaces": b"HTTP/1.1 200 OK\r\nContent-Length:   5  \r\n\r\nspace",
    b"/two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\ntwice",
    b"/chunked-ext": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;name=value\r\nchunk\r\n0\r\nTrailer: x\r\n\r\n",
    b"/gzip-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\n",
    b"/obs-fold": b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 4\r\n\r\nfold",
    b"/lf-only": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nlf",
    b"/no-reason": b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nnr",
    b"/odd-status": b"HTTP/1.1 599 Whatever\r\nContent-Length: 3\r\n\r\nodd",
    b"/set-cookie-own": b"HTTP/1.1 200 OK\r\nSet-Cookie: sidecar_session=evil\r\n"
    b"Set-Cookie:  sidecar_session =evil2\r\nContent-Length: 2\r\n\r\nsc",
}


class _Misbehaves:
    """A raw upstream answering each path of :data:`_ANSWERS` with its bytes; ``/silent``
    gets no answer until the test ends (longer than ``proxy.upstream_timeout``: a 504)."""

    def __init__(self) -> None:
        self.over = asyncio.Event()

    async def __call__(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        path = request_path(head)
        if path == b"/silent":
            await self.over.wait()
            return False
        answer = _ANSWERS.get(path)
        if answer is None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(path), path))
            return True
        writer.write(answer)
        return path not in (b"/close", b"/until-close", b"/http10", b"/short-body", b"/cut-head")


@pytest.fixture
async def misbehaving(tmp_path: Path) -> AsyncIterator[tuple[Sidecar, Sidecar]]:
    limits: dict[str, object] = {"proxy": {"upstream_timeout": "500ms"}}
    plain: dict[str, object] = {"proxy": {"lean_front": False, "upstream_timeout": "500ms"}}
    answers = _Misbehaves()
    async with RawUpstream(answers) as upstream:
        up = upstream.pointing()
        try:
            async with (
                running_sidecar(tmp_path / "lean", upstream=up, overrides=limits) as lean,
                running_sidecar(tmp_path / "plain", upstream=up, overrides=plain) as aiohttp_only,
            ):
                yield lean, aiohttp_only
        finally:
            answers.over.set()


def _masked(raw: bytes) -> bytes:
    return re.sub(rb"(?im)^(date|x-request-id):[^\r\n]*", rb"\1: *", raw)


async def test_a_misbehaving_upstream_gets_the_same_answers_as_through_aiohttp(
    misbehaving: tuple[Sidecar, Sidecar],
) -> None:
    lean, plain = misbehaving
    cookies = {id(sc): await _cookie(sc) for sc in (lean, plain)}
    differ = []
    paths = [p.decode() for p in _ANSWERS] + ["/silent"]
    for path in paths:
        got = []
        for sc in (lean, plain):
            cookie = cookies[id(sc)]
            # The answer, then a plain request on the same connection: framed as aiohttp
            # frames it, the second answer is /after's and nothing else.
            data = _request(sc, cookie, path) + _request(sc, cookie, "/after", "Connection: close")
            response = await raw_http(sc.proxy_port, data, answers=2, quiet=2.0)
            got.append(_masked(response.raw))
        if got[0] != got[1]:
            differ.append((path, got[0][:300], got[1][:300]))
    casebook.record("failure", tried=len(paths), through=len(differ))
    assert not differ, differ


# -- the listener's limits hold across a handover ------------------------------------------


async def test_a_slow_head_handed_over_midway_gets_no_second_head_timeout(
    tmp_path: Path,
) -> None:
    """``request_head_timeout`` counts from the head's first byte, whichever server holds
    the connection when it runs out: a slow head that grows past what the lean front reads
    is handed over to aiohttp's server with the time it already took."""
    timeout = 1.0
    limits: dict[str, object] = {"proxy": {"request_head_timeout": "1s"}}
    async with running_sidecar(tmp_path, overrides=limits) as sc:
        reader, writer = await asyncio.open_connection("127.0.0.1", sc.proxy_port)
        started = time.monotonic()
        writer.write(f"GET /app/x HTTP/1.1\r\nHost: 127.0.0.1:{sc.proxy_port}\r\n".encode())

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                await asyncio.sleep(0.8 * timeout)  # the slow client's pace: the attack
                # Past proxy.max_header_size (8 KiB here): the lean front hands it over.
                writer.write(b"X-Long: " + b"a" * 9000)
                for _ in range(50):
                    await asyncio.sleep(0.1)
                    writer.write(b"a")
                    await writer.drain()

        dribbler = asyncio.create_task(trickle())
        try:
            data = await asyncio.wait_for(reader.read(-1), 5 * timeout)
            closed_after = time.monotonic() - started
        finally:
            dribbler.cancel()
            writer.close()
    late = closed_after > timeout + 0.5
    casebook.record("connections", through=int(late))
    assert data.startswith(b"HTTP/1.1 408 "), data[:100]
    assert not late, closed_after


# -- a reload: the lean front judges by the new config at once ----------------------------


@pytest.mark.parametrize("lean_front", [True, False], ids=["lean", "aiohttp"])
async def test_a_renamed_session_cookie_stops_working_under_its_old_name_at_once(
    tmp_path: Path, lean_front: bool
) -> None:
    """``session.cookie_name`` changes on a reload (e.g. to a ``__Host-`` name, whose rules
    a cookie under the old name — set with a Domain, open to cookie tossing from a sibling
    subdomain — never had): a cookie under the old name is an ordinary cookie from then on."""
    front: dict[str, object] = {"proxy": {"lean_front": lean_front}}
    async with running_sidecar(tmp_path, overrides=front) as sc:
        old = await _cookie(sc)
        assert (await raw_http(sc.proxy_port, _request(sc, old, "/app/before"))).status == 200
        session = dataclasses.replace(sc.config.session, cookie_name="sidecar_v2")
        sc.services.reconfigure(dataclasses.replace(sc.config, session=session))
        accept = "Accept: application/json"
        response = await raw_http(sc.proxy_port, _request(sc, old, "/app/after", accept))
        casebook.record("cookies", through=int(response.status != 401))
        assert response.status == 401
        assert sc.upstream.last.raw_path == "/app/before"


# -- a client that pipelines and never reads ------------------------------------------------


@pytest.mark.parametrize("lean_front", [True, False], ids=["lean", "aiohttp"])
async def test_a_client_that_does_not_read_stops_its_pipeline(
    tmp_path: Path, lean_front: bool
) -> None:
    """Thousands of pipelined requests for a 60 KB answer, and not a byte read: answers
    are not written faster than the client takes them, so the requests behind wait (the
    upstream never sees them) instead of piling answers up in the sidecar's memory."""
    front: dict[str, object] = {"proxy": {"lean_front": lean_front}}
    async with running_sidecar(tmp_path, overrides=front) as sc:
        sc.upstream.respond = lambda request: web.Response(body=b"x" * 60_000)
        cookie = await _cookie(sc)
        count = 2000
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", sc.proxy_port))
        _, writer = await asyncio.open_connection(sock=sock)
        try:
            writer.write(_request(sc, cookie, "/app/big") * count)
            await writer.drain()
            before = -1
            while before != len(sc.upstream.requests):  # until the sidecar stops forwarding
                before = len(sc.upstream.requests)
                await asyncio.sleep(0.3)
        finally:
            writer.close()
        # What socket buffers and a transport's high-water mark hold, not 2000 answers.
        forwarded = len(sc.upstream.requests)
        casebook.record("connections", through=int(forwarded > 200))
        assert forwarded < 200, forwarded


@pytest.mark.parametrize("lean_front", [True, False], ids=["lean", "aiohttp"])
async def test_a_reload_that_denies_a_path_applies_to_the_next_request_in_flight_ones_finish(
    tmp_path: Path, lean_front: bool
) -> None:
    """The role's rules change (``/app/**`` denied) while a request for ``/app/slow`` is
    upstream: that one is answered, the next one on the same connection is refused 403."""
    front: dict[str, object] = {"proxy": {"lean_front": lean_front}}
    async with running_sidecar(tmp_path, overrides=front) as sc:
        arrived, release = asyncio.Event(), asyncio.Event()

        async def respond(request: web.BaseRequest) -> web.StreamResponse:
            if request.path == "/app/slow":
                arrived.set()
                await release.wait()
            return web.Response(text="ok " + request.path)

        sc.upstream.respond = respond
        cookie = await _cookie(sc)
        data = _request(sc, cookie, "/app/slow") + _request(
            sc, cookie, "/app/next", "Accept: application/json", "Connection: close"
        )
        answer = asyncio.create_task(raw_http(sc.proxy_port, data, answers=2, quiet=5.0))
        await asyncio.wait_for(arrived.wait(), 5)  # the first request is upstream
        role = sc.config.roles["Authenticated"]
        denied = dataclasses.replace(role, deny=type(role.deny)((*role.deny, "/app/**")))
        roles = {**sc.config.roles, "Authenticated": denied}
        sc.services.reconfigure(dataclasses.replace(sc.config, roles=roles))
        release.set()
        response = await answer
        statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", response.raw)
        through = statuses != [b"200", b"403"]
        casebook.record("paths", through=int(through))
        assert statuses == [b"200", b"403"], response.raw[:400]
        assert sc.upstream.last.raw_path == "/app/slow"


# -- a differential fuzz: random heads, the same outcome through either front --------------

_TARGET_PARTS = st.sampled_from(
    ["/", "app", "a", "%", "%2F", "%41", "?", "&", "=", "refer", "..", ".", "//", ";", "~",
     "+", "*", "!", "$", "'", "(", ":", "@", "[", "%00", "%e9", "\u00e9", "#", "_sidecar",
     "static", "favicon.ico", "admin", "private"]
)  # fmt: skip
_NAMES = st.sampled_from(
    ["X-A", "Cookie", "Accept", "X-Forwarded-For", "X-Forwarded-Host", "Forwarded",
     "Connection", "Keep-Alive", "TE", "X-Forwarded-User", "X_Forwarded_User",
     "X.Forwarded.User", "x-forwarded-role", "Authorization", "X-Request-Id", "Content-Length",
     "X-Original-URL", "Origin", "Range", "Max-Forwards", "Content-Type", "User-Agent", "Host"]
)  # fmt: skip
_VALUES = st.sampled_from(
    ["", "0", "1", "close", "keep-alive", "X-A", "x-a, close", "a=b", "sidecar_session=junk",
     "1.2.3.4", "evil.com", "host=evil.com", " v ", "\t", "a,b", "Content-Length", "*", "%",
     "\u00e9", "text/html", "application/json", "http://evil.com", "/admin"]
)  # fmt: skip


@fuzz(150)
@given(
    method=st.sampled_from(["GET", "POST", "DELETE", "OPTIONS", "PUT", "PATCH", "HEAD", "TRACE"]),
    target=st.one_of(
        st.sampled_from(["/app/x", "/app/x?a=1", "/static/s.css", "/admin/x", "/", "/a/b/c"]),
        st.lists(_TARGET_PARTS, max_size=5).map(lambda parts: "/" + "".join(parts)),
    ),
    headers=st.lists(st.tuples(_NAMES, _VALUES), max_size=4),
    cookie=st.sampled_from(["live", "live", "unknown", "none"]),
)
async def test_random_heads_get_the_same_answer_and_upstream_request_through_either_front(
    fronts: tuple[Sidecar, Sidecar, _Records],
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    cookie: str,
) -> None:
    lean, plain, upstream = fronts
    outcomes = []
    for sc in (lean, plain):
        if not sc.memo:
            sc.memo["live"] = await _cookie(sc)
        lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{sc.proxy_port}"]
        if cookie != "none":
            value = sc.memo["live"] if cookie == "live" else f"{sc.cookie_name}={'B' * 43}"
            lines.append(f"Cookie: {value}")
        lines += [f"{name}: {value}" for name, value in headers] + ["Connection: close"]
        before = len(upstream.heads)
        response = await raw_http(sc.proxy_port, ("\r\n".join(lines) + "\r\n\r\n").encode())
        outcomes.append((response.status, _sent(sc, upstream.heads[before:])))
    casebook.record("framing", through=int(outcomes[0] != outcomes[1]))
    assert outcomes[0] == outcomes[1]


# -- refer links: random redemptions, the same outcome through either front ----------------

_LINKS: dict[str, dict[str, object]] = {
    "fresh": {},
    "module": {"module": "m-1"},
    "reusable": {"role": "Reusable", "one_time": False},
    "confirm role": {"role": "Confirm"},
    "unknown role": {"role": "Gone"},
    "expired": {"ttl": -60},
    "auth link": {"kind": "magiclink"},
}
# Query parameters before and after the link.
_BEFORE = ["a=1", "", "b", "refer", "x=%41", "y=a+b", "r=/"]
_AFTER = ["c=3", "", "refer=junk", "d", "e=f=g", "h=~"]
_SET_COOKIE = re.compile(rb"(?im)^(set-cookie: [^=\r\n]+=)[A-Za-z0-9_-]{43}")


def _answer_shape(raw: bytes) -> bytes:
    """An answer with what differs between two sidecars masked: the date, the request id,
    a new session cookie's value."""
    raw = _SET_COOKIE.sub(rb"\1*", raw)
    return re.sub(rb"(?im)^(date|x-request-id):[^\r\n]*", rb"\1: *", raw)


@fuzz(120)
@given(
    method=st.sampled_from(["GET", "GET", "GET", "POST", "HEAD", "PUT"]),
    path=st.sampled_from(["/", "/app/x", "/app/x/", "//app", "/a/./b", "/_sidecar/x", "/%61pp"]),
    before=st.lists(st.sampled_from(_BEFORE), max_size=2),
    after=st.lists(st.sampled_from(_AFTER), max_size=2),
    link=st.sampled_from([*_LINKS, "used", "revoked", "garbage"]),
    tail=st.sampled_from(["", "/", "x", "%2F"]),
    headers=st.lists(
        st.sampled_from(
            ["Accept: application/json", "Accept: text/html", "X-Request-Id: req-1",
             "X-Forwarded-For: 203.0.113.9", "Origin: https://evil.example",
             "Content-Length: 0", "Connection: keep-alive", "Cookie: live"]
        ),
        max_size=3,
        unique=True,
    ),
)  # fmt: skip
async def test_random_redemptions_get_the_same_answer_through_either_front(
    fronts: tuple[Sidecar, Sidecar, _Records],
    method: str,
    path: str,
    before: list[str],
    after: list[str],
    link: str,
    tail: str,
    headers: list[str],
) -> None:
    """Each side redeems its own link (sealed with the same claims, used or revoked the
    same way first): the answers agree but for the masked values, and the upstream gets
    the same number of requests from either."""
    lean, plain, upstream = fronts
    outcomes = []
    for sc in (lean, plain):
        if not sc.memo:
            sc.memo["live"] = await _cookie(sc)
        token, claims = sc.seal(**_LINKS.get(link, {}))  # type: ignore[arg-type]
        if link == "used":
            await sc.redeem(token)
        elif link == "revoked":
            await sc.store.revoke(claims.token_id, claims.expires_at)
        elif link == "garbage":
            token = token[::-1]
        query = "&".join([*before, f"refer={token}{tail}", *after])
        lines = [f"{method} {path}?{query} HTTP/1.1", f"Host: 127.0.0.1:{sc.proxy_port}"]
        lines += [f"Cookie: {sc.memo['live']}" if h == "Cookie: live" else h for h in headers]
        seen = len(upstream.heads)
        response = await raw_http(
            sc.proxy_port, ("\r\n".join([*lines, "Connection: close"]) + "\r\n\r\n").encode()
        )
        outcomes.append((_answer_shape(response.raw), len(upstream.heads) - seen))
    casebook.record("replay", through=int(outcomes[0] != outcomes[1]))
    assert outcomes[0] == outcomes[1]
