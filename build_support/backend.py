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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403  (the hooks this module does not change)


def _compiling() -> bool:
    return os.environ.get("SIDECAR_COMPILE") == "1"


@contextmanager
def _as_pure() -> Iterator[None]:
    """setuptools' hooks run setup.py; these ones as the pure build: a compiling setup.py
    imports mypyc (which the requirements hook is asked to name, so it is not there yet)
    and runs mypy, which the metadata (the same either way) does not need."""
    saved = os.environ.pop("SIDECAR_COMPILE", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["SIDECAR_COMPILE"] = saved


def _compile_requires() -> list[str]:
    project = tomllib.loads(Path("pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    return [*extras["compile"], *project["dependencies"], *extras["speed"]]


def _refuse_editable() -> None:
    if _compiling():
        raise SystemExit(
            "SIDECAR_COMPILE=1: an editable install stays pure Python; "
            "run scripts/compile in the checkout for an in-place compiled build"
        )


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    compiling = _compiling()
    with _as_pure():
        requires: list[str] = _setuptools.get_requires_for_build_wheel(config_settings)
    return requires + _compile_requires() if compiling else requires


def prepare_metadata_for_build_wheel(
    metadata_directory: str, config_settings: dict[str, Any] | None = None
) -> str:
    with _as_pure():
        name: str = _setuptools.prepare_metadata_for_build_wheel(
            metadata_directory, config_settings
        )
    return name


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    _refuse_editable()
    requires: list[str] = _setuptools.get_requires_for_build_editable(config_settings)
    return requires


def build_editable(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    _refuse_editable()
    name: str = _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
    return name
