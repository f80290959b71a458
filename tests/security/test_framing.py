"""HTTP framing attacks on the proxy port, byte for byte on raw sockets.

Every smuggling shape hides ``GET /smuggled`` after an ambiguous body. The oracle: the
upstream never receives ``/smuggled`` nor more requests than the client sent unambiguously,
the sidecar never answers 5xx, and a clean request afterwards reaches the upstream alone
(the pooled upstream connection was not poisoned).
"""

from __future__ import annotations

import asyncio
import gzip
import io
import random
import re
from pathlib import Path

import pytest

from tests.harness import RawResponse, RawUpstream, Sidecar, raw_http, running_sidecar
from tests.security import casebook


def smuggled(host: str, cookie: str) -> str:
    return f"GET /smuggled HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n"


def shapes(host: str, cookie: str) -> dict[str, str]:
    """name -> the raw text of one attack (``{S}`` is the smuggled request)."""
    s = smuggled(host, cookie)
    head = f"POST /app/frame HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
    chunked_body = f"0\r\n\r\n{s}"
    cl = len(chunked_body)
    te_variants = {
        "te-chunked+cl": "Transfer-Encoding: chunked",
        "te-xchunked": "Transfer-Encoding: xchunked",
        "te-leading-space": "Transfer-Encoding:  chunked",
        "te-tab": "Transfer-Encoding:\tchunked",
        "te-chunked-identity": "Transfer-Encoding: chunked, identity",
        "te-identity-chunked-list": "Transfer-Encoding: identity, chunked",
        "te-case": "Transfer-Encoding: CHUNKED",
        "te-name-case": "transfer-encoding: chunked",
        "te-space-before-colon": "Transfer-Encoding : chunked",
        "te-tab-before-colon": "Transfer-Encoding\t: chunked",
        "te-twice": "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
        "te-twice-chunked": "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        "te-obs-fold": "Transfer-Encoding:\r\n chunked",
        "te-vtab": "Transfer-Encoding:\x0bchunked",
        "te-trailing-garbage": "Transfer-Encoding: chunked;q=1",
        "te-quoted": 'Transfer-Encoding: "chunked"',
        "te-underscore": "Transfer_Encoding: chunked",
        "te-nul": "Transfer-Encoding: chunked\x00",
        "te-cr-only": "Transfer-Encoding: chunked\rX: y",
    }
    out = {
        name: f"{head}{line}\r\nContent-Length: {cl}\r\n\r\n{chunked_body}"
        for name, line in te_variants.items()
    }
    out |= {
        f"{name}-cl-first": f"{head}Content-Length: {cl}\r\n{line}\r\n\r\n{chunked_body}"
        for name, line in te_variants.items()
    }
    # Without Content-Length a *valid* chunked spelling makes /smuggled a legitimately
    # pipelined request, so only the invalid spellings are attacks there.
    valid = {"te-chunked+cl", "te-leading-space", "te-tab", "te-case", "te-name-case"}
    out |= {
        f"{name}-no-cl": f"{head}{line}\r\n\r\n{chunked_body}"
        for name, line in te_variants.items()
        if name not in valid
    }
    body = "x" * 5 + s
    out |= {
        "two-cl-differ": f"{head}Content-Length: 5\r\nContent-Length: {len(body)}\r\n\r\n{body}",
        "two-cl-same": f"{head}Content-Length: 5\r\nContent-Length: 5\r\n\r\n{body}",
        "cl-list": f"{head}Content-Length: 5, {len(body)}\r\n\r\n{body}",
        "cl-plus": f"{head}Content-Length: +5\r\n\r\n{body}",
        "cl-negative": f"{head}Content-Length: -5\r\n\r\n{body}",
        "cl-hex": f"{head}Content-Length: 0x5\r\n\r\n{body}",
        "cl-space-inside": f"{head}Content-Length: 5 0\r\n\r\n{body}",
        "cl-underscore": f"{head}Content_Length: 5\r\n\r\n{body}",
        "cl-space-before-colon": f"{head}Content-Length : 5\r\n\r\n{body}",
        "cl-huge": f"{head}Content-Length: 99999999999999999999999\r\n\r\n{body}",
        "cl-obs-fold": f"{head}Content-Length:\r\n 5\r\n\r\n{body}",
        "get-with-cl-body": (
            f"GET /app/frame HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
            f"Content-Length: {len(s)}\r\n\r\n{s}"
        ),
        # Hop-by-hop by nomination: the body's framing must survive "Connection: …".
        "connection-names-cl": (
            f"{head}Connection: keep-alive, Content-Length\r\nContent-Length: {len(s)}\r\n\r\n{s}"
        ),
        "connection-names-cl-close": (
            f"{head}Connection: close, content-length\r\nContent-Length: {len(s)}\r\n\r\n{s}"
        ),
        "connection-names-te": (
            f"{head}Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n"
            f"{len(s):x}\r\n{s}\r\n0\r\n\r\n"
        ),
        "http10-te": (
            f"POST /app/frame HTTP/1.0\r\nHost: {host}\r\nCookie: {cookie}\r\n"
            f"Transfer-Encoding: chunked\r\n\r\n{chunked_body}"
        ),
    }
    bad_chunks = {
        "chunk-0x": "0x5\r\nhello\r\n0\r\n\r\n",
        "chunk-negative": "-5\r\nhello\r\n0\r\n\r\n",
        "chunk-plus": "+5\r\nhello\r\n0\r\n\r\n",
        "chunk-overflow": "ffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        "chunk-space": "5 \r\nhello\r\n0\r\n\r\n",
        "chunk-space-before": " 5\r\nhello\r\n0\r\n\r\n",
        "chunk-lf-only": "5\nhello\n0\n\n",
        "chunk-data-too-long": "3\r\nhello\r\n0\r\n\r\n",
        "chunk-data-too-short": "9\r\nhello\r\n0\r\n\r\n",
        "chunk-no-crlf-after-data": "5\r\nhelloX0\r\n\r\n",
        "chunk-bad-ext": "5;\x00\r\nhello\r\n0\r\n\r\n",
        "chunk-underscore": "5_0\r\nhello\r\n0\r\n\r\n",
        "chunk-bad-trailer": "5\r\nhello\r\n0\r\nX-Forwarded-User SPOOFED\r\n\r\n",
        "chunk-last-nonzero": "5\r\nhello\r\n00x\r\n\r\n",
    }
    out |= {
        name: f"{head}Transfer-Encoding: chunked\r\n\r\n{chunks}{s}"
        for name, chunks in bad_chunks.items()
    }
    return out


async def follow_up_is_clean(sc: Sidecar, cookie: str, n: int) -> bool:
    path = f"/app/after-{n}"
    before = len(sc.upstream.requests)
    data = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{sc.proxy_port}\r\nCookie: {cookie}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    resp = await raw_http(sc.proxy_port, data)
    seen = [s.raw_path for s in sc.upstream.requests[before:]]
    return resp.status == 200 and seen == [path]


async def test_smuggling_shapes_never_reach_the_upstream_as_two_requests(
    sidecar: Sidecar,
) -> None:
    cookie = f"{sidecar.cookie_name}={await sidecar.login()}"
    host = f"127.0.0.1:{sidecar.proxy_port}"
    through: list[tuple[str, str]] = []
    attacks = shapes(host, cookie)
    for n, (name, text) in enumerate(attacks.items()):
        before = len(sidecar.upstream.requests)
        # Where the sidecar keeps the connection open after its answer, a probe follows on
        # it: a request smuggled inside the attack would be answered before the probe.
        probe = f"/app/probe-{n}"
        probe_request = (
            f"GET {probe} HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
        )
        resp = await raw_http(
            sidecar.proxy_port, text.encode("latin-1"), then=probe_request.encode(), quiet=1.5
        )
        seen = [s.raw_path for s in sidecar.upstream.requests[before:]]
        probed = int(probe in seen)
        if "/smuggled" in seen or len(seen) - probed > 1:
            through.append((name, f"upstream saw {seen}"))
        if resp.status >= 500:
            through.append((name, f"status {resp.status}"))
        if resp.responses > 1 + probed:
            through.append((name, f"{resp.responses} responses on one connection"))
        if not await follow_up_is_clean(sidecar, cookie, n):
            through.append((name, "the next request was disturbed"))
    casebook.record("framing", tried=len(attacks), through=len(through))
    assert not through, through
    assert "/smuggled" not in [s.raw_path for s in sidecar.upstream.requests]


async def test_a_legitimately_pipelined_request_is_still_served_in_order(
    sidecar: Sidecar,
) -> None:
    cookie = f"{sidecar.cookie_name}={await sidecar.login()}"
    host = f"127.0.0.1:{sidecar.proxy_port}"
    data = (
        f"POST /app/one HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
        "Content-Length: 5\r\n\r\nhello"
        f"GET /app/two HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    ).encode()
    resp = await raw_http(sidecar.proxy_port, data, answers=2)
    assert resp.status == 200
    assert resp.responses == 2
    assert [s.raw_path for s in sidecar.upstream.requests] == ["/app/one", "/app/two"]
    assert sidecar.upstream.requests[0].body == b"hello"


async def test_a_chunked_body_reaches_the_upstream_intact(sidecar: Sidecar) -> None:
    cookie = f"{sidecar.cookie_name}={await sidecar.login()}"
    data = (
        f"POST /app/chunked HTTP/1.1\r\nHost: 127.0.0.1:{sidecar.proxy_port}\r\n"
        f"Cookie: {cookie}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"
    ).encode()
    resp = await raw_http(sidecar.proxy_port, data)
    assert resp.status == 200
    assert sidecar.upstream.requests[-1].body == b"hello world"


class _Received:
    """A raw upstream that keeps each request it reads (its request line, its
    ``X-Forwarded-User`` values and the ``Content-Length`` bytes of its body)."""

    def __init__(self) -> None:
        self.requests: list[tuple[bytes, list[bytes], bytes]] = []

    async def __call__(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        length = re.search(rb"(?im)^content-length: *(\d+)", head)
        body = await reader.readexactly(int(length.group(1))) if length else b""
        users = re.findall(rb"(?im)^x-forwarded-user: *([^\r\n]*)", head)
        self.requests.append((head.split(b"\r\n", 1)[0], users, body))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True


def _inflating(hidden: bytes) -> bytes:
    """A gzip body over the lean front's 16 KiB whose inflated bytes are as many as its own
    and then ``hidden``: forwarded inflated under the client's Content-Length, ``hidden``
    would be the upstream's next request."""
    noise = random.Random(7).randbytes(17000)
    for pad in range(4000):
        prefix = noise + b"A" * pad
        body = gzip.compress(prefix + hidden, mtime=0)
        if len(body) == len(prefix):
            return body
    raise AssertionError("no padding lines the inflated body up")


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "aiohttp"])
async def test_a_compressed_body_reaches_the_upstream_as_the_client_sent_it(
    tmp_path: Path, lean: bool
) -> None:
    """aiohttp's server inflates a request body sent with ``Content-Encoding: gzip`` unless
    told not to; relayed inflated under the client's ``Content-Length`` (and still labelled
    gzip), what lies past that length reached the upstream as a request no rule judged, here
    a denied path with a forged identity. The body must go up byte for byte as it came."""
    received = _Received()
    front: dict[str, object] = {"proxy": {"lean_front": lean}}
    async with (
        RawUpstream(received) as upstream,
        running_sidecar(tmp_path, upstream=upstream.pointing(), overrides=front) as sc,
    ):
        cookie = f"{sc.cookie_name}={await sc.login()}"
        body = _inflating(b"GET /private/x HTTP/1.1\r\nHost: up\r\nX-Forwarded-User: admin\r\n\r\n")
        data = (
            f"POST /app/upload HTTP/1.1\r\nHost: 127.0.0.1:{sc.proxy_port}\r\nCookie: {cookie}\r\n"
            f"Content-Encoding: gzip\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode() + body
        response = await raw_http(sc.proxy_port, data, quiet=5.0)
        # The upstream answered the upload; a request hidden in it would have been read
        # off the same connection right after, before the answer was relayed.
        casebook.record("framing", through=int(len(received.requests) != 1))
        assert response.status == 200
        assert received.requests == [(b"POST /app/upload HTTP/1.1", [b"user-1"], body)]


def header_limit_cases(sc: Sidecar, cookie: str) -> dict[str, bytes]:
    limit = sc.config.proxy.max_header_size
    host = f"127.0.0.1:{sc.proxy_port}"
    base = f"GET /app/big HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nConnection: close\r\n"
    many = "".join(f"X-Filler-{i}: {'v' * 100}\r\n" for i in range(limit // 100 + 10))
    return {
        "one-long-header": f"{base}X-Big: {'a' * (limit + 100)}\r\n\r\n".encode(),
        "many-headers": f"{base}{many}\r\n".encode(),
        "long-cookie": f"{base}Cookie: a={'c' * (limit + 100)}\r\n\r\n".encode(),
        "long-header-name": f"{base}X-{'n' * (limit + 100)}: 1\r\n\r\n".encode(),
        "long-url": f"GET /app/{'u' * (limit + 100)} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(),
    }


@pytest.mark.parametrize(
    "case", ["one-long-header", "many-headers", "long-cookie", "long-header-name", "long-url"]
)
async def test_headers_over_the_limit_are_431(sidecar: Sidecar, case: str) -> None:
    cookie = f"{sidecar.cookie_name}={await sidecar.login()}"
    data = header_limit_cases(sidecar, cookie)[case]
    resp: RawResponse = await raw_http(sidecar.proxy_port, data)
    expected = (414, 431) if case == "long-url" else (431,)
    casebook.record("framing", through=int(resp.status not in expected))
    assert resp.status in expected, resp.raw[:200]
    assert sidecar.upstream.requests == []


async def test_bodies_over_the_limit_are_413_where_the_sidecar_reads_them(
    sidecar: Sidecar,
) -> None:
    big = b'{"type":"magiclink","email":"a@example.org","token":"' + b"1" * 2_000_000 + b'"}'
    async with sidecar.http.post(
        sidecar.proxy_url + "/_sidecar/verify",
        data=io.BytesIO(big),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    ) as r:
        casebook.record("framing", through=int(r.status != 413))
        assert r.status == 413
