"""sidecar's PEP 517 build backend: setuptools', plus mypyc when ``SIDECAR_COMPILE=1``.

A compiled build (see setup.py) needs mypy, and mypy type-checks the sources against the
packages they import. Under pip's build isolation those are installed only if the backend
asks for them, so this asks for them then: the ``compile`` extra, the dependencies and the
``speed`` extra, all read from pyproject.toml (setuptools documents this wrapper as the way
to add build requirements dynamically). Everything else is setuptools' own.

An editable install stays pure Python: its modules are the checkout's .py files, and
``scripts/compile`` builds in place beside them when wanted.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403  (the hooks this module does not change)


def _compiling() -> bool:
    return os.environ.get("SIDECAR_COMPILE") == "1"


def _compile_requires() -> list[str]:
    project = tomllib.loads(Path("pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    return [*extras["compile"], *project["dependencies"], *extras["speed"]]


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    if not _compiling():
        pure: list[str] = _setuptools.get_requires_for_build_wheel(config_settings)
        return pure
    # setuptools' hook runs setup.py to find what it needs, and a compiling setup.py imports
    # mypyc, which is what is being asked for: it runs as the pure build, then mypy is added.
    del os.environ["SIDECAR_COMPILE"]
    try:
        requires: list[str] = _setuptools.get_requires_for_build_wheel(config_settings)
    finally:
        os.environ["SIDECAR_COMPILE"] = "1"
    return requires + _compile_requires()


def build_editable(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    if _compiling():
        raise SystemExit(
            "SIDECAR_COMPILE=1: an editable install stays pure Python; "
            "run scripts/compile in the checkout for an in-place compiled build"
        )
    name: str = _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
    return name
