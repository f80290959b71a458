"""Real web frameworks as upstreams: the Flask/Werkzeug and Express apps in ``apps/``, run as
child processes on free loopback ports.

Each app routes ``/admin`` and everything under it to a handler that records the raw request
target it was given, and answers ``GET /__hits`` (asked directly, never through the sidecar)
with that record. Express comes from ``npm install`` into ``$SIDECAR_UPSTREAMS_NODE``
(default ``~/.cache/sidecar-upstreams``; ``scripts/test`` installs it), Flask from the
``test`` extra. A missing framework skips, or fails under ``SIDECAR_REQUIRE_ALL=1``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.conftest import end_process, executable, skip_or_fail

APPS = Path(__file__).parent / "apps"
NODE_DIR = Path(
    os.environ.get("SIDECAR_UPSTREAMS_NODE") or Path.home() / ".cache" / "sidecar-upstreams"
)
FRAMEWORKS = ("flask", "express")


@dataclass(frozen=True, slots=True)
class Framework:
    name: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def hits(self, http: aiohttp.ClientSession) -> dict[str, list[str]]:
        """Every raw target each handler saw so far: ``{"admin": [...], "other": [...]}``."""
        async with http.get(self.url + "/__hits") as resp:
            assert resp.status == 200, resp.status
            record: dict[str, list[str]] = await resp.json()
            return record


def _command(name: str) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if name == "flask":
        if importlib.util.find_spec("flask") is None:
            skip_or_fail("Flask is not installed (pip install -e '.[test]')")
        return [sys.executable, str(APPS / "flask_app.py")], env
    node = executable("node", "node is not installed (apt-get install nodejs npm)")
    if not (NODE_DIR / "node_modules" / "express").is_dir():
        skip_or_fail(f"Express is not installed in {NODE_DIR} (scripts/test installs it)")
    env["NODE_PATH"] = str(NODE_DIR / "node_modules")
    return [node, str(APPS / "express_app.js")], env


@contextlib.contextmanager
def running_framework(name: str) -> Iterator[Framework]:
    """Start the ``name`` app (``flask`` or ``express``) and stop it at the end."""
    command, env = _command(name)
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=APPS
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 20
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, remaining))
            if not ready or proc.poll() is not None:
                raise AssertionError(f"{name} did not start (exit code {proc.poll()})")
            line += os.read(proc.stdout.fileno(), 64)
        yield Framework(name, int(line.decode().strip()))
    finally:
        end_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()
