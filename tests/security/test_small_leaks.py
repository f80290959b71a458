"""Small leaks and ambiguities, from outside: the sidecar's own ``Server`` header, sniffable
JSON, a doubled ``Authorization`` on the admin port, a flood of header lines."""

from __future__ import annotations

import asyncio

import pytest

from tests.harness import (
    ADMIN_KEY,
    PUBLIC_URL,
    RawResponse,
    RawUpstream,
    Sidecar,
    raw_http,
    request_bytes,
    running_sidecar,
)
from tests.security import casebook

HOST = PUBLIC_URL.removeprefix("https://")


def get(target: str, *extra: str, host: str = HOST) -> bytes:
    return request_bytes("GET", target, *extra, host=host)


def admin_request(sc: Sidecar, *extra: str, method: str = "GET", path: str = "/healthz") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{sc.admin_port}", *extra]
    lines += ["Content-Length: 0", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def many_headers(n: int) -> tuple[str, ...]:
    return tuple(f"X-Filler-{i}: v" for i in range(n))


async def own_answers(sc: Sidecar) -> dict[str, RawResponse]:
    """Answers the sidecar makes itself, on both ports, for good and bad requests."""
    key = f"Authorization: Bearer {ADMIN_KEY}"
    accept_json = "Accept: application/json"
    proxy, admin = sc.proxy_port, sc.admin_port
    cases = {
        "healthz": (proxy, get("/_sidecar/healthz")),
        "readyz": (proxy, get("/_sidecar/readyz")),
        "session 401 json": (proxy, get("/_sidecar/session")),
        "401 page": (proxy, get("/app/x")),
        "401 json": (proxy, get("/app/x", accept_json)),
        "400 bad path json": (proxy, get("/a/../b", accept_json)),
        "404 under the prefix": (proxy, get("/_sidecar/nope", accept_json)),
        "parser 400": (proxy, b"GET /x HTTP/1.1\r\nHost: h\r\nno colon here\r\n\r\n"),
        "parser 431 many headers": (proxy, get("/app/x", *many_headers(300))),
        "admin healthz": (admin, admin_request(sc, key)),
        "admin 401": (admin, admin_request(sc)),
        "admin 403": (admin, admin_request(sc, "Authorization: Bearer wrong-key")),
        "admin 431 many headers": (admin, admin_request(sc, key, *many_headers(300))),
    }
    answers = await asyncio.gather(*(raw_http(port, data) for port, data in cases.values()))
    return dict(zip(cases, answers, strict=True))


async def test_own_answers_carry_no_server_header_and_json_is_nosniff(sidecar: Sidecar) -> None:
    answers = await own_answers(sidecar)
    leaks = []
    for name, answer in answers.items():
        assert answer.status, name
        content_type = answer.header("Content-Type") or ""
        sniffable = "json" in content_type and answer.header("X-Content-Type-Options") != "nosniff"
        if answer.header("Server") is not None or sniffable:
            leaks.append((name, answer.header("Server"), content_type))
    casebook.record("leaks", tried=len(answers), through=len(leaks))
    assert not leaks, leaks
    assert answers["parser 431 many headers"].status == 431
    assert answers["admin 431 many headers"].status == 431
    assert answers["parser 400"].status == 400
    assert b'"error": "headers_too_large"' in answers["parser 431 many headers"].body


@pytest.mark.parametrize(
    "pair",
    [("good", "good"), ("good", "bad"), ("bad", "good"), ("good", "empty")],
)
async def test_two_authorization_headers_on_the_admin_port_are_400(
    sidecar: Sidecar, pair: tuple[str, str]
) -> None:
    values = {"good": f"Bearer {ADMIN_KEY}", "bad": "Bearer nope", "empty": ""}
    headers = [f"Authorization: {values[which]}" for which in pair]
    answer = await raw_http(
        sidecar.admin_port,
        admin_request(
            sidecar,
            *headers,
            "Content-Type: application/json",
            method="POST",
            path="/referstring",
        ),
    )
    casebook.record("leaks", through=int(answer.status != 400))
    assert answer.status == 400, answer.raw[:300]
    assert b"more than one Authorization header" in answer.body


def _fixed_upstream(answer: bytes) -> RawUpstream:
    """An upstream that answers every request with the same raw bytes (so its headers are
    exactly what the test says: aiohttp's own server would add a ``Server``)."""

    async def always(
        head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(answer)
        return True

    return RawUpstream(always)


@pytest.mark.parametrize(
    ("sent", "small"),
    [(None, True), (None, False), ("upstream-app/1.0", True), ("upstream-app/1.0", False)],
)
async def test_relayed_answers_keep_the_upstreams_server_header_and_add_none(
    tmp_path_factory: pytest.TempPathFactory, sent: str | None, small: bool
) -> None:
    body = b"x" * (10 if small else 100_000)  # buffered whole, or streamed
    head = [b"HTTP/1.1 200 OK", b"Content-Length: %d" % len(body), b"Content-Type: text/plain"]
    if sent is not None:
        head.append(b"Server: " + sent.encode())
    fixed = _fixed_upstream(b"\r\n".join(head) + b"\r\n\r\n" + body)
    async with (
        fixed,
        running_sidecar(tmp_path_factory.mktemp("relayed"), upstream=fixed.pointing()) as sc,
    ):
        answer = await raw_http(sc.proxy_port, get("/static/x"))
    assert answer.status == 200
    servers = [v for k, v in answer.headers if k.lower() == "server"]
    casebook.record("leaks", through=int(servers != ([sent] if sent else [])))
    assert servers == ([sent] if sent else []), servers
    assert answer.body == body
