"""Forward-auth and trusted-peer review: what the front proxy forwards is what was judged.

* ingress-nginx builds ``X-Original-URL`` as ``$scheme://$http_host$request_uri``: the
  ``Host`` part is the client's. A real nginx, configured with ingress-nginx's auth
  sub-request lines, in front of a real sidecar: a ``Host`` carrying ``?`` or ``#`` after
  the port (nginx still routes it to the right ``server``) must not move the denied
  ``$request_uri`` into the query or fragment of what the sidecar judges.
* Proxy mode behind a trusted proxy: path overrides (``X-Original-URL`` and friends) a
  client slipped past that proxy never reach the upstream (an IIS/Symfony/Zend upstream
  would serve them instead of the judged path).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import end_process
from tests.harness import RawResponse, Sidecar, free_port, raw_http, running_sidecar
from tests.nginx_stack import nginx_binary
from tests.security import casebook
from tests.security.test_paths import DENY, TRICKS, escapes

TRUSTED: dict[str, object] = {"proxy": {"trusted_proxies": ["127.0.0.1/32"]}}


@pytest.fixture
async def trusting(tmp_path: Path) -> AsyncIterator[Sidecar]:
    async with running_sidecar(tmp_path, overrides=TRUSTED) as running:
        yield running


# ingress-nginx's auth sub-request (its nginx.tmpl, "location = /_external-auth-…"): the
# client's headers pass (proxy_pass_request_headers on), these are set on top.
_INGRESS_NGINX = """
pid {state}/nginx.pid;
error_log {state}/error.log;
events {{}}
http {{
    access_log off;
{temp}
    server {{
        listen 127.0.0.1:{port};
        server_name app.example.com;
        location = /_external-auth {{
            internal;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Forwarded-Proto "";
            proxy_set_header Host 127.0.0.1;
            proxy_set_header X-Original-URL $scheme://$http_host$request_uri;
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Sent-From "nginx-ingress-controller";
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Auth-Request-Redirect $request_uri;
            proxy_pass http://127.0.0.1:{sidecar}/_sidecar/auth;
        }}
        location / {{
            auth_request /_external-auth;
            auth_request_set $user $upstream_http_x_forwarded_user;
            proxy_set_header X-Forwarded-User $user;
            proxy_pass http://127.0.0.1:{app};
        }}
    }}
}}
"""


@contextmanager
def ingress_nginx(state: Path, sidecar_port: int, app_port: int) -> Iterator[int]:
    exe = nginx_binary()
    port = free_port()
    temp = "".join(
        f"    {kind}_temp_path {state / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = state / "nginx.conf"
    conf.write_text(
        _INGRESS_NGINX.format(
            state=state, temp=temp, port=port, sidecar=sidecar_port, app=app_port
        ),
        encoding="utf-8",
    )
    proc = subprocess.Popen(
        [exe, "-p", str(state), "-c", str(conf), "-g", "daemon off;"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (state / "error.log").read_text(errors="replace")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not listen within 20 s"
                time.sleep(0.02)  # polling a starting process
        yield port
    finally:
        end_process(proc)


# Hosts nginx routes to server_name app.example.com (what follows ":" is not matched) whose
# "?"/"#" would end the authority of the URL ingress-nginx builds and swallow the path.
SPLITTING_HOSTS = [
    "app.example.com:80?",
    "app.example.com:80#",
    "app.example.com:?",
    "app.example.com:#x",
    "app.example.com:80?x=",
    "app.example.com:80/..",  # refused by nginx itself (a path separator)
    "app.example.com:80@evil.example",
]


async def test_ingress_nginx_host_cannot_move_the_path_out_of_what_is_judged(
    trusting: Sidecar, tmp_path: Path
) -> None:
    cookie = f"{trusting.cookie_name}={await trusting.login()}"
    state = tmp_path / "nginx"
    state.mkdir()
    through: list[tuple[str, int]] = []
    with ingress_nginx(state, trusting.proxy_port, trusting.upstream.port) as port:
        # The recipe works at all: an allowed path passes, the denied one is refused.
        ok = await _via(port, "/app/ok", "app.example.com", cookie)
        assert ok.status == 200, ok.raw[:300]
        assert (await _via(port, "/admin/x", "app.example.com", cookie)).status == 403
        for host in SPLITTING_HOSTS:
            before = len(trusting.upstream.requests)
            answer = await _via(port, "/admin/x", host, cookie)
            reached = [r.raw_path for r in trusting.upstream.requests[before:]]
            if answer.status == 200 or any(p.startswith("/admin") for p in reached):
                through.append((host, answer.status))
    casebook.record("paths", tried=len(SPLITTING_HOSTS), through=len(through))
    assert not through, through


async def _via(port: int, target: str, host: str, cookie: str) -> RawResponse:
    data = (
        f"GET {target} HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")
    return await asyncio.wait_for(raw_http(port, data), 15)


PATH_OVERRIDES = ["X-Original-URL", "X-Rewrite-URL", "X-Original-URI", "X-Forwarded-Uri"]


async def test_path_overrides_from_a_trusted_peer_never_reach_the_upstream(
    trusting: Sidecar,
) -> None:
    """A load balancer in proxy.trusted_proxies passes what its client sent; the sidecar
    judged the request line, so an override naming another path must not follow it."""
    cookie = f"{trusting.cookie_name}={await trusting.login()}"
    leaked: list[tuple[str, list[str]]] = []
    for name in PATH_OVERRIDES:
        before = len(trusting.upstream.requests)
        data = (
            f"GET /app/ok HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n"
            f"X-Forwarded-For: 203.0.113.9\r\n{name}: /admin/x\r\nConnection: close\r\n\r\n"
        ).encode("latin-1")
        answer = await raw_http(trusting.proxy_port, data)
        assert answer.status == 200, answer.raw[:300]
        for seen in trusting.upstream.requests[before:]:
            if seen.values(name):
                leaked.append((name, seen.values(name)))
    casebook.record("strip", tried=len(PATH_OVERRIDES), through=len(leaked))
    assert not leaked, leaked


async def test_forward_auth_holds_the_deny_rules_against_path_tricks(trusting: Sidecar) -> None:
    """Every trick of the proxy-mode suite, as nginx (X-Original-URI) and Traefik/Caddy
    (X-Forwarded-Uri) describe it: a 200 lets the ingress forward that very target."""
    cookie = f"{trusting.cookie_name}={await trusting.login()}"
    through: list[tuple[str, str, int]] = []
    tried = 0
    for header in ("X-Original-URI", "X-Forwarded-Uri"):
        for target in TRICKS:
            if not target.startswith("/"):
                continue
            tried += 1
            data = (
                f"GET /_sidecar/auth HTTP/1.1\r\nHost: app.example.com\r\nCookie: {cookie}\r\n"
                f"{header}: {target}\r\nConnection: close\r\n\r\n"
            ).encode("utf-8", "surrogateescape")
            answer = await raw_http(trusting.proxy_port, data)
            opened = answer.status == 200 and escapes(target, deny=DENY, allow=None)
            if opened or answer.status not in (200, 401, 403):
                through.append((header, target, answer.status))
    casebook.record("paths", tried=tried, through=len(through))
    assert not through, through
