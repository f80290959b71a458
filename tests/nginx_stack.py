"""The shipped recipes, run for real: nginx (or Caddy) → demo app, with the sidecar beside it.

deploy/nginx/forward-auth.conf, deploy/caddy/Caddyfile and deploy/nginx/sidecar.yaml are used
as shipped; only the addresses, file paths and the store change (see :func:`_nginx_conf`,
:func:`_caddyfile` and :func:`_sidecar_yaml`).
Every process is a child of the test run on 127.0.0.1. Synchronous on purpose: the browser
tests (Playwright's sync API) use the same stack.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from sidecar.tokens.keys import generate_keyset
from tests.conftest import end_process, executable, skip_or_fail
from tests.harness import free_port

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "deploy" / "nginx"
CADDYFILE = ROOT / "deploy" / "caddy" / "Caddyfile"
START_TIMEOUT = 30.0
# The demo app, plus a WebSocket that answers each message with the identity it was opened with
# (the demo has none; nginx's recipe must pass upgrades with the identity headers).
_APP = """
import sys
from aiohttp import web
from sidecar.demo_app import build_demo_app

async def ws(request):
    socket = web.WebSocketResponse()
    await socket.prepare(request)
    async for message in socket:
        await socket.send_str(request.headers.get("X-Forwarded-User", "") + ":" + message.data)
    return socket

app = build_demo_app()
app.router.add_get("/ws", ws)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


@dataclass
class Stack:
    nginx: str
    sidecar: str
    admin: str
    app: str
    admin_key: str
    state: Path

    def mint(self, user: str, *, module: str | None = None, **params: str) -> str:
        """A link minted through the admin port, as a backend would."""
        body: dict[str, object] = {"userId": user, "additionalParams": dict(params)}
        if module is not None:
            body["module"] = module
        status, doc = self.admin_call("POST", "/referstring", body)
        assert status == 200, doc
        url = doc["url"]
        assert isinstance(url, str)
        assert url.startswith(self.nginx)
        return url

    def admin_call(
        self, method: str, path: str, body: object = None
    ) -> tuple[int, dict[str, object]]:
        host, port = self.admin.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Authorization": f"Bearer {self.admin_key}"}
            if payload is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            text = response.read()
            return response.status, json.loads(text) if text else {}
        finally:
            conn.close()


def nginx_binary() -> str:
    """Debian's nginx (auth_request built in), or a skip (a failure in CI)."""
    exe = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if exe is None:
        skip_or_fail("nginx is not installed (apt-get install nginx-light)")
        raise AssertionError("unreachable")
    built = subprocess.run([exe, "-V"], capture_output=True, text=True, check=False).stderr
    if "--with-http_auth_request_module" not in built:
        skip_or_fail(f"{exe} lacks ngx_http_auth_request_module")
    return exe


def caddy_binary() -> str:
    """Debian's Caddy (forward_auth since 2.5.1), or a skip (a failure in CI)."""
    return executable("caddy", "caddy is not installed (apt-get install caddy)")


def _caddyfile(port: int, app: int, sidecar: int) -> str:
    text = CADDYFILE.read_text(encoding="utf-8")
    assert text.count("127.0.0.1:8080") == 3, "the sidecar's three routes"
    text = text.replace("127.0.0.1:8080", f"127.0.0.1:{sidecar}")
    text = _replace_once(text, "127.0.0.1:3000", f"127.0.0.1:{app}")
    # No admin endpoint (a fixed port), no certificates (offline, plain http on loopback).
    site = f"{{\n\tadmin off\n\tauto_https off\n}}\nhttp://127.0.0.1:{port} {{"
    return _replace_once(text, "app.example.com {", site)


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"the recipe should contain {old!r} exactly once"
    return text.replace(old, new)


def _nginx_conf(state: Path, port: int, app: int, sidecar: int) -> str:
    text = (RECIPE / "forward-auth.conf").read_text(encoding="utf-8")
    text = _replace_once(text, "server 127.0.0.1:3000;", f"server 127.0.0.1:{app};")
    text = _replace_once(text, "server 127.0.0.1:8080;", f"server 127.0.0.1:{sidecar};")
    text = _replace_once(text, "listen 80;", f"listen 127.0.0.1:{port};")
    # Private scratch space: the compiled-in /var/lib/nginx may not be writable here.
    temp = "".join(
        f"    {kind}_temp_path {state / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # The recipe's own access_log line (its log_format is what tests check), in state/.
    text = _replace_once(
        text, "access_log /var/log/nginx/access.log ", f"access_log {state / 'access.log'} "
    )
    return _replace_once(text, "http {\n", "http {\n" + temp)


def _sidecar_yaml(state: Path, public: str, admin: int, proxy: int, app: int, store: str) -> str:
    doc = yaml.safe_load((RECIPE / "sidecar.yaml").read_text(encoding="utf-8"))
    doc["public_url"] = public
    doc["keys"] = {"file": str(state / "keyset.json")}
    doc["admin"]["listen"] = f"127.0.0.1:{admin}"
    doc["admin"]["key"] = {"file": str(state / "admin.key")}
    doc["proxy"]["listen"] = f"127.0.0.1:{proxy}"
    doc["proxy"]["upstream"] = f"http://127.0.0.1:{app}"
    doc["session"]["cookie_secure"] = False  # plain http on loopback
    doc["store"]["url"] = store
    # No access line held past its loop iteration: the log is searched for tokens while the
    # stack runs (tests/test_nginx_forward_auth.py).
    doc.setdefault("logging", {})["buffer"] = 0
    return yaml.safe_dump(doc)


def _wait_for(
    url_host: str, port: int, proc: subprocess.Popen[bytes], what: str, log: Path
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited ({proc.returncode}):\n{_tail(log)}")
        try:
            socket.create_connection((url_host, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"{what} did not listen within {START_TIMEOUT}s:\n{_tail(log)}")
            time.sleep(0.02)  # polling a starting process


def _tail(log: Path) -> str:
    return log.read_text(encoding="utf-8", errors="replace")[-4000:] if log.exists() else ""


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    host, port = url.removeprefix("http://").split(":")
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            pytest.fail(f"sidecar exited ({proc.returncode}):\n{_tail(log)}")
        try:
            conn = http.client.HTTPConnection(host, int(port), timeout=1)
            conn.request("GET", "/_sidecar/readyz")
            if conn.getresponse().status == 200:
                conn.close()
                return
            conn.close()
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"sidecar not ready within {START_TIMEOUT}s:\n{_tail(log)}")
        time.sleep(0.02)


@contextmanager
def _process(
    argv: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=None if env is None else {**os.environ, **env},
        )
    try:
        yield proc
    finally:
        end_process(proc)


@contextmanager
def running_stack(
    state: Path, store_url: str | None = None, *, front: str = "nginx"
) -> Iterator[Stack]:
    """nginx or Caddy (the shipped recipe) → demo app, sidecar beside it; torn down on exit."""
    exe = nginx_binary() if front == "nginx" else caddy_binary()
    port, app, proxy, admin = free_port(), free_port(), free_port(), free_port()
    public = f"http://127.0.0.1:{port}"
    admin_key = secrets.token_urlsafe(32)
    (state / "keyset.json").write_text(generate_keyset().to_json(), encoding="utf-8")
    (state / "admin.key").write_text(admin_key, encoding="utf-8")
    store = store_url or f"sqlite:///{state / 'sidecar.db'}"
    config = state / "sidecar.yaml"
    config.write_text(_sidecar_yaml(state, public, admin, proxy, app, store), encoding="utf-8")
    conf = state / ("nginx.conf" if front == "nginx" else "Caddyfile")
    if front == "nginx":
        conf.write_text(_nginx_conf(state, port, app, proxy), encoding="utf-8")
        argv = [exe, "-p", str(state), "-c", str(conf), "-e", str(state / "error.log")]
    else:
        conf.write_text(_caddyfile(port, app, proxy), encoding="utf-8")
        argv = [exe, "run", "--config", str(conf), "--adapter", "caddyfile"]
    main = f"daemon off; pid {state / 'nginx.pid'};"
    if os.geteuid() == 0:
        main += " user root;"  # workers must reach the private temp paths under pytest's tmp
    with ExitStack() as stack:
        app_proc = stack.enter_context(
            _process([sys.executable, "-c", _APP, str(app)], state / "app.log")
        )
        sidecar = stack.enter_context(
            _process(
                [sys.executable, "-m", "sidecar", "serve", "--config", str(config)],
                state / "sidecar.log",
            )
        )
        home = {"HOME": str(state), "XDG_DATA_HOME": str(state), "XDG_CONFIG_HOME": str(state)}
        front_proc = stack.enter_context(
            _process([*argv, "-g", main], state / "nginx.out")
            if front == "nginx"
            else _process(argv, state / "error.log", env=home)
        )
        _wait_for("127.0.0.1", app, app_proc, "the demo app", state / "app.log")
        _wait_ready(f"http://127.0.0.1:{proxy}", sidecar, state / "sidecar.log")
        _wait_for("127.0.0.1", port, front_proc, front, state / "error.log")
        yield Stack(
            nginx=public,
            sidecar=f"http://127.0.0.1:{proxy}",
            admin=f"http://127.0.0.1:{admin}",
            app=f"http://127.0.0.1:{app}",
            admin_key=admin_key,
            state=state,
        )
