"""What the figures were measured on: CPU, cores, interpreter and the versions that matter."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from bench.loadgen import loadgen_name
from bench.procs import IMAGE_RUNTIME_ENV, PYTHON, sidecar_env
from bench.servers import nginx_version, tool_version


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            timeout=5,
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def served_build(env: dict[str, str] | None = None) -> str | None:
    """Whether the sidecar the benchmark starts runs its hot path compiled: ``mypyc``,
    ``no`` or ``partial`` (:mod:`sidecar.compiled`), asked of a child started as the
    served ones are (with ``env``, default :func:`~bench.procs.sidecar_env`)."""
    try:
        out = subprocess.run(
            [PYTHON, "-c", "from sidecar import compiled; print(compiled.state().label)"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
            env=sidecar_env() if env is None else env,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def image_settings(env: dict[str, str] | None = None) -> str | None:
    """The image's runtime settings ``sidecar serve`` runs with here (or in ``env``), as
    ``NAME=VALUE`` words (:func:`~bench.procs.sidecar_env`); None when it runs without
    them."""
    env = sidecar_env() if env is None else env
    words = [f"{k}={env[k]}" for k in IMAGE_RUNTIME_ENV if env.get(k)]
    return " ".join(words) or None


def describe() -> dict[str, str | int | None]:
    wrk = tool_version(["wrk", "-v"])
    redis = tool_version(["redis-server", "--version"])
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "aiohttp": _version("aiohttp"),
        "aiosqlite": _version("aiosqlite"),
        "uvloop": _version("uvloop"),  # sidecar serve runs on it when installed
        "httptools": _version("httptools"),
        "compiled": served_build(),  # the hot path compiled with mypyc (scripts/bench)
        "image_settings": image_settings(),  # and run in the image's environment
        "redis_py": _version("redis"),
        "nginx": nginx_version(),
        "wrk": wrk.split(" [")[0].removeprefix("wrk ") if wrk else None,
        "redis_server": redis.split()[2].removeprefix("v=") if redis else None,
        "loadgen": loadgen_name(),
        "commit": _git_commit(),
    }
