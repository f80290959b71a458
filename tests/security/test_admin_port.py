"""The admin port attacked from outside: binding, peers, Host, browsers, keys and bodies.

Every refused attempt below carries an otherwise valid mint, so a refusal proves the check
under test — not a missing key or a bad body — stopped it.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sidecar.config import ConfigError, parse_config
from sidecar.config.values import HostPort, InvalidField
from tests.conftest import skip_or_fail
from tests.harness import (
    ADMIN_KEY,
    Sidecar,
    config_doc,
    free_port,
    raw_http,
    running_sidecar,
)
from tests.security import casebook

MINT_BODY = json.dumps({"userId": "attacker"}).encode()


def mint_request(
    port: int, *, host: str | None = None, extra: str = "", key: str = ADMIN_KEY
) -> bytes:
    host_line = "" if host is None else f"Host: {host}\r\n"
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return (
        f"POST /referstring HTTP/1.1\r\n{host_line}{auth}{extra}"
        f"Content-Type: application/json\r\nContent-Length: {len(MINT_BODY)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1") + MINT_BODY


def refused(category_status: int, body: bytes) -> bool:
    return category_status != 200 and b"referString" not in body


# -- binding ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "listen", ["0.0.0.0:9091", "[::]:9091", "192.0.2.2:9091", "10.0.0.1:9091", "example.com:9091"]
)
def test_config_refuses_a_non_loopback_admin_listen(listen: str, tmp_path: Path) -> None:
    doc = config_doc(
        upstream="http://127.0.0.1:1", store_url="sqlite:///x.db", admin_port=1, proxy_port=2
    )
    doc["admin"] = {**doc["admin"], "listen": listen}  # type: ignore[dict-item]
    env = {"SIDECAR_KEYSET": _keyset_json(), "SIDECAR_ADMIN_KEY": ADMIN_KEY}
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml.safe_dump(doc), env=env, base_dir=tmp_path)
    casebook.record("admin")
    assert any(e.startswith("admin.listen:") for e in caught.value.errors)


def test_check_config_cli_refuses_a_non_loopback_admin_listen(tmp_path: Path) -> None:
    doc = config_doc(
        upstream="http://127.0.0.1:1", store_url="sqlite:///x.db", admin_port=1, proxy_port=2
    )
    doc["admin"] = {**doc["admin"], "listen": "0.0.0.0:9091"}  # type: ignore[dict-item]
    (tmp_path / "sidecar.yaml").write_text(yaml.safe_dump(doc))
    env = {"SIDECAR_KEYSET": _keyset_json(), "SIDECAR_ADMIN_KEY": ADMIN_KEY, "PATH": "/usr/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "check-config", str(tmp_path / "sidecar.yaml")],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    casebook.record("admin")
    assert done.returncode != 0
    assert "admin.listen" in done.stdout + done.stderr


async def test_a_non_loopback_admin_config_cannot_be_built_by_hand(sidecar: Sidecar) -> None:
    """AdminConfig checks the loopback rule itself, so a Config built by hand (not from
    YAML) cannot carry a non-loopback admin listener to serve() either."""
    port = free_port()
    with pytest.raises(InvalidField, match="not a loopback address"):
        dataclasses.replace(sidecar.config.admin, listen=HostPort("0.0.0.0", port))  # noqa: S104  # never bound
    casebook.record("admin")
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "something listens on the port"


# -- peers ------------------------------------------------------------------------------


def non_loopback_address() -> str:
    """A local, non-loopback IPv4 address to connect *from*."""
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError:
        infos = []
    for info in infos:
        address = str(info[4][0])
        if not address.startswith("127."):
            return address
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        try:
            udp.connect(("192.0.2.1", 9))  # no packet is sent; picks the outgoing address
            address = str(udp.getsockname()[0])
        except OSError:
            address = "127.0.0.1"
    if address.startswith("127."):
        skip_or_fail("no non-loopback local address to act as a foreign peer")
    return address


SPOOFED_PEER_HEADERS = [
    "",
    "X-Forwarded-For: 127.0.0.1\r\n",
    "X-Forwarded-For: 127.0.0.1, 127.0.0.1\r\n",
    "Forwarded: for=127.0.0.1\r\n",
    'Forwarded: for="[::1]"\r\n',
    "X-Real-IP: 127.0.0.1\r\n",
    "X-Client-IP: 127.0.0.1\r\n",
    "True-Client-IP: ::1\r\n",
]


async def test_a_foreign_peer_is_refused_whatever_it_claims(sidecar: Sidecar) -> None:
    source = non_loopback_address()
    through = []
    for extra in SPOOFED_PEER_HEADERS:
        host = f"127.0.0.1:{sidecar.admin_port}"
        data = mint_request(sidecar.admin_port, host=host, extra=extra)
        resp = await raw_http(sidecar.admin_port, data, source=source)
        if not refused(resp.status, resp.raw):
            through.append(extra)
        assert resp.status == 403
    casebook.record("admin", tried=len(SPOOFED_PEER_HEADERS), through=len(through))
    assert not through


async def test_a_foreign_peer_in_the_allow_list_is_served(tmp_path: Path) -> None:
    source = non_loopback_address()
    overrides: dict[str, object] = {"admin": {"allowed_peers": [f"{source}/32"]}}
    async with running_sidecar(tmp_path, overrides=overrides) as sc:
        host = f"127.0.0.1:{sc.admin_port}"
        resp = await raw_http(sc.admin_port, mint_request(sc.admin_port, host=host), source=source)
    assert resp.status == 200, resp.raw[:300]


# -- Host (DNS rebinding) -----------------------------------------------------------------


def bad_hosts(port: int) -> list[str | None]:
    return [
        None, "", "evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}",
        f"localhost.evil.example:{port}", f"localhost.:{port}", f"127.0.0.1:{port + 1}",
        f"127.0.0.1:{port}.evil.example", f"127.1:{port}", f"2130706433:{port}",
        f"0x7f000001:{port}", f"0.0.0.0:{port}", f"user@127.0.0.1:{port}",
        f"127.0.0.1:{port}@evil.example", f"127.0.0.1:{port}/", f"[::ffff:127.0.0.1]:{port}",
        f"127.0.0.1:0{port}", f"127.0.0.1 :{port}", f"evil.example, 127.0.0.1:{port}",
        f"127.0.0.1:{port}\tevil", f"xn--80ak6aa92e.com:{port}", f"localhost:{port}#",
    ]  # fmt: skip


async def test_a_host_that_does_not_name_the_admin_listener_is_refused(sidecar: Sidecar) -> None:
    port = sidecar.admin_port
    through = []
    cases = bad_hosts(port)
    for host in cases:
        resp = await raw_http(port, mint_request(port, host=host))
        if not refused(resp.status, resp.raw):
            through.append(host)
    for host in [f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}"]:
        resp = await raw_http(port, mint_request(port, host=host))
        assert resp.status == 200, (host, resp.raw[:300])
    casebook.record("admin", tried=len(cases), through=len(through))
    assert not through


async def test_two_host_headers_are_refused(sidecar: Sidecar) -> None:
    port = sidecar.admin_port
    for extra in (f"Host: evil.example:{port}\r\n", f"Host: 127.0.0.1:{port}\r\n"):
        resp = await raw_http(port, mint_request(port, host=f"127.0.0.1:{port}", extra=extra))
        casebook.record("admin", through=int(resp.status == 200))
        assert refused(resp.status, resp.raw), resp.raw[:300]


# -- browsers (CSRF) ----------------------------------------------------------------------

BROWSER_HEADERS = [
    "Origin: null\r\n",
    "Origin: https://evil.example\r\n",
    "Origin: http://127.0.0.1:{port}\r\n",
    "Origin: http://localhost:{port}\r\n",
    "Origin: \r\n",
    "origin: https://evil.example\r\n",
    "Sec-Fetch-Site: cross-site\r\n",
    "Sec-Fetch-Site: same-site\r\n",
    "Sec-Fetch-Site: CROSS-SITE\r\n",
    "Sec-Fetch-Site: none\r\nOrigin: https://evil.example\r\n",
]


async def test_requests_from_a_browser_are_refused(sidecar: Sidecar) -> None:
    port = sidecar.admin_port
    through = []
    for extra in BROWSER_HEADERS:
        data = mint_request(port, host=f"127.0.0.1:{port}", extra=extra.format(port=port))
        resp = await raw_http(port, data)
        if not refused(resp.status, resp.raw):
            through.append(extra)
        assert resp.header("Access-Control-Allow-Origin") is None
    casebook.record("admin", tried=len(BROWSER_HEADERS), through=len(through))
    assert not through


async def test_a_cors_preflight_gets_no_permission(sidecar: Sidecar) -> None:
    port = sidecar.admin_port
    data = (
        f"OPTIONS /referstring HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: https://evil.example\r\n"
        "Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    resp = await raw_http(port, data)
    casebook.record("admin", through=int(resp.status < 400))
    assert resp.status >= 400
    assert resp.header("Access-Control-Allow-Origin") is None


# -- the admin key ------------------------------------------------------------------------


def wrong_authorizations() -> list[tuple[str | None, int]]:
    b64 = base64.b64encode(f"admin:{ADMIN_KEY}".encode()).decode()
    return [
        (None, 401), ("", 401), ("Bearer", 401), ("Bearer ", 401), (ADMIN_KEY, 401),
        (f"Basic {b64}", 401), (f"Token {ADMIN_KEY}", 401), (f"Bearer{ADMIN_KEY}", 401),
        ("Bearer wrong", 403), (f"Bearer {ADMIN_KEY[:-1]}", 403), (f"Bearer {ADMIN_KEY}x", 403),
        (f"Bearer {ADMIN_KEY.upper()}", 403), (f"Bearer {ADMIN_KEY[1:]}", 403),
        (f"Bearer {ADMIN_KEY} {ADMIN_KEY}", 403), (f"Bearer {ADMIN_KEY},{ADMIN_KEY}", 403),
        (f"Bearer {base64.b64encode(ADMIN_KEY.encode()).decode()}", 403), ("Bearer \u00e9", 403),
        ("Bearer " + "A" * 4000, 403), ("Bearer null", 403), ("Bearer undefined", 403),
    ]  # fmt: skip


async def test_missing_or_wrong_admin_keys_are_refused(sidecar: Sidecar) -> None:
    cases = wrong_authorizations()
    through = []
    for header, expected in cases:
        headers = {"Content-Type": "application/json"}
        if header is not None:
            headers["Authorization"] = header
        async with sidecar.http.post(
            sidecar.admin_url + "/referstring", data=MINT_BODY, headers=headers
        ) as r:
            body = await r.read()
            if not refused(r.status, body):
                through.append(header)
            assert r.status == expected, (header, r.status, body)
            assert ADMIN_KEY.encode() not in body
    casebook.record("admin", tried=len(cases), through=len(through))
    assert not through


async def test_a_key_that_is_not_utf8_is_refused_not_a_500(sidecar: Sidecar) -> None:
    port = sidecar.admin_port
    data = mint_request(port, host=f"127.0.0.1:{port}", key="")
    data = data.replace(b"Content-Type:", b"Authorization: Bearer \xff\xfeabc\r\nContent-Type:", 1)
    resp = await raw_http(port, data)
    casebook.record("admin", through=int(resp.status != 403))
    assert resp.status == 403


@pytest.mark.parametrize(
    "where",
    ["query", "cookie", "x-admin-key", "x-api-key", "proxy-authorization"],
)
async def test_the_admin_key_is_accepted_only_in_authorization(
    sidecar: Sidecar, where: str
) -> None:
    url = sidecar.admin_url + "/referstring"
    headers = {"Content-Type": "application/json"}
    params = {}
    if where == "query":
        params["key"] = ADMIN_KEY
    elif where == "cookie":
        headers["Cookie"] = f"key={ADMIN_KEY}; token={ADMIN_KEY}"
    else:
        headers[where] = f"Bearer {ADMIN_KEY}"
    async with sidecar.http.post(url, data=MINT_BODY, headers=headers, params=params) as r:
        casebook.record("admin", through=int(r.status == 200))
        assert r.status == 401


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/referstring"), ("POST", "/admin/generate_link"), ("POST", "/tokens/abc/revoke"),
     ("DELETE", "/sessions?user_id=user-1"), ("GET", "/healthz"), ("GET", "/nope"),
     ("GET", "/referstring"), ("POST", "//referstring"), ("POST", "/referstring/"),
     ("POST", "/%72eferstring"), ("PUT", "/referstring"), ("TRACE", "/referstring")],
)  # fmt: skip
async def test_every_route_needs_the_key(sidecar: Sidecar, method: str, path: str) -> None:
    async with sidecar.http.request(method, sidecar.admin_url + path, data=MINT_BODY) as r:
        casebook.record("admin", through=int(r.status < 400))
        assert r.status == 401
        assert r.content_type == "application/json"


def _keyset_json() -> str:
    from sidecar.tokens.keys import generate_keyset

    return generate_keyset("k-x").to_json()
