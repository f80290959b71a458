"""deploy/kubernetes/forward-auth/snippets/cut-session-cookie.conf run by a real nginx, pasted
into a location as ingress-nginx pastes a configuration-snippet: the app gets the browser's
Cookie minus the sidecar's session cookie (every spelling, two copies), the rest intact.
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import end_process
from tests.harness import free_port
from tests.nginx_stack import nginx_binary

SNIPPET = (
    Path(__file__).resolve().parent.parent
    / "deploy/kubernetes/forward-auth/snippets/cut-session-cookie.conf"
)


class _Echo(BaseHTTPRequestHandler):
    """The app: answers with the Cookie header it got ("-" for none)."""

    def do_GET(self) -> None:
        body = (self.headers.get("Cookie") or "-").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the cookie values are the test's, but nothing needs logging."""


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    exe = nginx_binary()
    state = tmp_path_factory.mktemp("ingress-snippet")
    app = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    port = free_port()
    temp = "".join(
        f"    {kind}_temp_path {state / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = state / "nginx.conf"
    conf.write_text(
        f"daemon off;\npid {state / 'nginx.pid'};\nevents {{}}\nhttp {{\n{temp}"
        f"    access_log off;\n"
        f"    server {{\n        listen 127.0.0.1:{port};\n        location / {{\n"
        f"            include {SNIPPET};\n"
        f"            proxy_pass http://127.0.0.1:{app.server_address[1]};\n"
        f"        }}\n    }}\n}}\n",
        encoding="utf-8",
    )
    log = (state / "nginx.out").open("wb")
    proc = subprocess.Popen(
        [exe, "-p", str(state), "-c", str(conf), "-e", str(state / "error.log")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                pytest.fail((state / "error.log").read_text(errors="replace"))
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("nginx did not listen within 10s")
                time.sleep(0.05)
        yield port
    finally:
        end_process(proc)
        log.close()
        app.shutdown()
        app.server_close()


def _cookie_seen(port: int, cookie: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/", headers={"Cookie": cookie})
        response = conn.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("sidecar_session=s", []),
        ("sidecar_session=s; a=1", ["a=1"]),
        ("a=1;sidecar_session=s", ["a=1"]),
        ("a=1; mysidecar_session=2; sidecar_session=s", ["a=1", "mysidecar_session=2"]),
        ("sidecar_session=s; a=1; sidecar_session=old; b=2", ["a=1", "b=2"]),
        ("sidecar_session=s; a=1; __Host-sidecar_session=new", ["a=1"]),
        ("__Secure-sidecar_session=x; sidecar_session=s; b=2", ["b=2"]),
        ("theme=dark; lang=en", ["theme=dark", "lang=en"]),
    ],
)
def test_the_snippet_cuts_the_session_cookie(front: int, sent: str, kept: list[str]) -> None:
    seen = _cookie_seen(front, sent)
    pairs = [p.strip() for p in seen.split(";") if p.strip() and seen != "-"]
    assert pairs == kept
    assert "sidecar_session=" not in seen.replace("mysidecar_session=", "")


def test_the_ingress_points_at_the_snippet() -> None:
    """The app Ingress's comment tells where the snippet is and why it is not on by default."""
    ingress = (SNIPPET.parent.parent / "ingress.yaml").read_text(encoding="utf-8")
    assert "snippets/cut-session-cookie.conf" in ingress
    assert "configuration-snippet" in SNIPPET.read_text(encoding="utf-8")
