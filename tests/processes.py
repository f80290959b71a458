"""Helpers for tests that run other programs: a free loopback port, and an installed
program's path (or a skip, which ``SIDECAR_REQUIRE_ALL=1`` turns into a failure)."""

from __future__ import annotations

import shutil
import socket

from tests.conftest import skip_or_fail


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def executable(name: str, missing: str) -> str:
    """The path of the program ``name`` on ``PATH``; else skip, saying ``missing``."""
    exe = shutil.which(name)
    if exe is None:
        skip_or_fail(missing)
        raise AssertionError("unreachable")
    return exe
