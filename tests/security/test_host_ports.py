"""The port part of ``Host`` is a port or nothing: the check compares host names without
the port, so what follows the last ``:`` must not be able to carry another authority.

An app that builds ``https://{Host}/reset?token=…`` from ``Host: app.example.com:@evil.example``
writes a link whose host is ``evil.example`` (``app.example.com:`` is read as userinfo) —
the reset-link poisoning the 421 exists to stop.
"""

from __future__ import annotations

from tests.harness import Sidecar, raw_http
from tests.security import casebook

PORT_TRICKS = [
    "app.example.com:@evil.example",
    "app.example.com:443@evil.example",
    "app.example.com:x@evil.example",
    "app.example.com:443/@evil.example",
    "app.example.com:443#@evil.example",
    "app.example.com:443?@evil.example",
    "app.example.com:443:evil.example",
    "app.example.com:443\\@evil.example",
    "app.example.com:evil",
    "app.example.com:-1",
    "app.example.com:123456",
    "127.0.0.1:@evil.example",
    "[::1]:@evil.example",
]


async def test_the_port_part_of_host_cannot_carry_another_authority(sidecar: Sidecar) -> None:
    cookie = f"{sidecar.cookie_name}={await sidecar.login()}"
    through = []
    for host in PORT_TRICKS:
        data = (
            f"GET /app HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
        ).encode()
        before = len(sidecar.upstream.requests)
        answer = await raw_http(sidecar.proxy_port, data)
        if answer.status not in (400, 421) or len(sidecar.upstream.requests) > before:
            through.append((host, answer.status))
    casebook.record("hosts", tried=len(PORT_TRICKS), through=len(through))
    assert not through, through
