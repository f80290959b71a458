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


EXEMPT_SPELLINGS = [
    "/_sidecar%2Fauth",
    "/_sidecar%2fauth?x=1",
    "/_sidecar%2Fhealthz",
    "/_sidecar%2freadyz",
    "/%5Fsidecar/auth",
    "/_sidecar/%61uth",
    "/_sidecar/%68ealthz",
]


async def test_only_the_probe_and_auth_paths_themselves_escape_the_host_check(
    sidecar: Sidecar,
) -> None:
    """Probes and forward-auth answer any Host; another spelling of their paths is routed
    elsewhere (the proxy or the prefix's 404), so it must not skip the check with them."""
    cookie = f"{sidecar.cookie_name}={await sidecar.login()}"
    through = []
    for target in EXEMPT_SPELLINGS:
        data = (
            f"GET {target} HTTP/1.1\r\nHost: evil.example\r\nCookie: {cookie}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        before = len(sidecar.upstream.requests)
        answer = await raw_http(sidecar.proxy_port, data)
        if len(sidecar.upstream.requests) > before:
            through.append((target, answer.status))
    for target in ("/_sidecar/healthz", "/_sidecar/readyz"):  # the exemption itself stays
        data = f"GET {target} HTTP/1.1\r\nHost: 10.1.2.3\r\nConnection: close\r\n\r\n".encode()
        assert (await raw_http(sidecar.proxy_port, data)).status == 200
    casebook.record("hosts", tried=len(EXEMPT_SPELLINGS), through=len(through))
    assert not through, through
