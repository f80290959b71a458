"""The reference parts of a run: the plain upstream, nginx in front of it, a private Redis.

Each is a child process with its own temp directory; nothing touches system config or ports
other than free loopback ones.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.procs import PYTHON, Child, free_port, spawn, wait_path, wait_port, which

NGINX_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin")


@dataclass
class Server:
    child: Child
    port: int

    @property
    def pid(self) -> int:
        return self.child.pid


def start_upstream(workdir: Path, cores: Sequence[int] | None) -> Server:
    port = free_port()
    child = spawn(
        "upstream", [PYTHON, "-m", "bench.upstream", str(port)], logdir=workdir, cores=cores
    )
    wait_port(child, port)
    return Server(child, port)


def nginx_path() -> str | None:
    return which("nginx", *NGINX_DIRS)


_NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    {access_log}
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream app {{
        server 127.0.0.1:{upstream};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
        }}
    }}
}}
"""


def start_nginx(
    workdir: Path, upstream_port: int, cores: Sequence[int] | None, *, access_log: bool = False
) -> Server | None:
    """nginx (master + 1 worker, keep-alive pool to the upstream), or None if not installed.

    ``access_log``: one ``combined`` line per request to a file, unbuffered, as Debian's
    nginx.conf ships it (``access_log /var/log/nginx/access.log;``); off by default."""
    exe = nginx_path()
    if exe is None:
        return None
    prefix = workdir / ("nginx-logged" if access_log else "nginx")
    prefix.mkdir(exist_ok=True)
    port = free_port()
    conf = prefix / "nginx.conf"
    log = f"access_log {prefix}/access.log;" if access_log else "access_log off;"
    conf.write_text(
        _NGINX_CONF.format(prefix=prefix, upstream=upstream_port, port=port, access_log=log)
    )
    argv = [exe, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    child = spawn("nginx", argv, logdir=workdir, cores=cores)
    wait_port(child, port)
    return Server(child, port)


def nginx_version() -> str | None:
    exe = nginx_path()
    if exe is None:
        return None
    out = subprocess.run([exe, "-v"], capture_output=True, text=True, check=False)
    return (out.stderr or out.stdout).strip().removeprefix("nginx version: ")


@dataclass
class Redis:
    child: Child
    url: str


def start_redis(workdir: Path, cores: Sequence[int] | None) -> Redis | None:
    """A private redis-server on a unix socket (no port race), or None if not installed."""
    exe = which("redis-server")
    if exe is None:
        return None
    rdir = workdir / "redis"
    rdir.mkdir(exist_ok=True)
    sock = rdir / "redis.sock"
    argv = [
        exe,
        "--port",
        "0",
        "--unixsocket",
        str(sock),
        "--unixsocketperm",
        "700",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(rdir),
    ]
    child = spawn("redis", argv, logdir=workdir, cores=cores)
    wait_path(child, sock)
    return Redis(child, f"unix://{sock}")


def tool_version(argv: Sequence[str]) -> str | None:
    if which(argv[0]) is None:
        return None
    out = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else None
