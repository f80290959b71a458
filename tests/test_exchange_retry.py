"""The express lane's retry on a stale idle upstream connection (sidecar.proxy.exchange):
once more on a fresh connection only for an idempotent request without a body (RFC 9110
§9.2.2), through a served sidecar and an upstream that closes its idle connection as the
second request arrives."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.raw import raw_http
from tests.harness.served import running_sidecar
from tests.test_upstream import closing_after_first_answer, raw_upstream


@pytest.mark.parametrize(("method", "body", "retried"), [
    ("GET", b"", True), ("PUT", b"", True), ("PUT", b"payload", False), ("POST", b"", False),
])  # fmt: skip
async def test_a_stale_idle_connection_retry_follows_method_and_body(
    tmp_path: Path, method: str, body: bytes, retried: bool
) -> None:
    async with raw_upstream(closing_after_first_answer()) as up:
        overrides: dict[str, object] = {"proxy": {"upstream": f"http://127.0.0.1:{up.port}"}}
        async with running_sidecar(tmp_path, overrides=overrides) as sc:
            cookie = f"{sc.cookie_name}={await sc.login()}"
            host = f"127.0.0.1:{sc.proxy_port}"
            first = (
                f"GET /a HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
            )
            assert (await raw_http(sc.proxy_port, first.encode())).status == 200
            length = f"Content-Length: {len(body)}\r\n" if body else ""
            second = (f"{method} /b HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n{length}"
                      "Connection: close\r\n\r\n").encode() + body  # fmt: skip
            response = await raw_http(sc.proxy_port, second)
            assert response.status == (200 if retried else 502), response.status
            assert up.connections == (2 if retried else 1)
