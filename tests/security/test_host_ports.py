"""The port part of ``Host`` is a port or nothing: the check compares host names without
the port, so what follows the last ``:`` must not be able to carry another authority.

An app that builds ``https://{Host}/reset?token=…`` from ``Host: app.example.com:@evil.example``
writes a link whose host is ``evil.example`` (``app.example.com:`` is read as userinfo) —
the reset-link poisoning the 421 exists to stop.
"""

from __future__ import annotations

from pathlib import Path

from tests.harness import Sidecar, raw_http, running_sidecar
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


FORWARDED_HOSTS = [
    "for=203.0.113.7;host=evil.example",
    'for=203.0.113.7;host="evil.example"',
    "for=203.0.113.7;proto=https;HOST=evil.example:443",
    "for=198.51.100.1, for=203.0.113.7;host=evil.example",
    "host=app.example.com, host=evil.example",
    "for=203.0.113.7;host=app.example.com:@evil.example",
    'for=203.0.113.7;host="app.example.com";host=evil.example',
]


async def test_a_trusted_proxy_may_not_forward_a_foreign_host_in_forwarded(
    tmp_path: Path,
) -> None:
    """RFC 7239 ``Forwarded: host=`` (Rack 3 and Spring read it first) is checked like
    ``X-Forwarded-Host``: a load balancer passing on what its client wrote must not get a
    foreign host to the upstream."""
    overrides: dict[str, object] = {"proxy": {"trusted_proxies": ["127.0.0.1/32"]}}
    async with running_sidecar(tmp_path, overrides=overrides) as sc:
        cookie = f"{sc.cookie_name}={await sc.login()}"
        through = []
        for value in [*FORWARDED_HOSTS, "for=203.0.113.7;host=app.example.com"]:
            data = (
                f"GET /app HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n"
                f"Forwarded: {value}\r\nConnection: close\r\n\r\n"
            ).encode()
            before = len(sc.upstream.requests)
            answer = await raw_http(sc.proxy_port, data)
            reached = len(sc.upstream.requests) > before
            if value.endswith("host=app.example.com"):  # the public host itself passes
                assert answer.status == 200, answer.raw[:300]
                assert reached
            elif reached or answer.status != 421:
                through.append((value, answer.status))
    casebook.record("hosts", tried=len(FORWARDED_HOSTS), through=len(through))
    assert not through, through
