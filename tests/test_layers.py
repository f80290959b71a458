"""The layering rule: domain packages never import the web edge (aiohttp).

Each domain module is imported in a fresh interpreter where ``aiohttp`` cannot be imported;
if one of them (or anything it pulls in) reaches for it, the import fails and so does this test.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

DOMAIN_MODULES = [
    "sidecar.config",
    "sidecar.tokens.keys",
    "sidecar.tokens.codec",
    "sidecar.tokens.records",
    "sidecar.refer.minting",
    "sidecar.links.generate",
    "sidecar.links.request",
    "sidecar.links.verify",
    "sidecar.links.passwords",
    "sidecar.links.redirects",
    "sidecar.proxy.paths",
    "sidecar.proxy.templates",
    "sidecar.store",
    "sidecar.store.base",
    "sidecar.store.sqlite",
    "sidecar.store.redis",
    "sidecar.store.ratelimit",
    "sidecar.services",
    "sidecar.telemetry.audit",
    "sidecar.telemetry.metrics",
]

_PROBE = textwrap.dedent(
    """
    import importlib, importlib.abc, sys

    class HideAiohttp(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "aiohttp" or name.startswith("aiohttp."):
                raise ImportError(f"domain code imported {name}")
            return None

    sys.meta_path.insert(0, HideAiohttp())
    importlib.import_module(sys.argv[1])
    """
)


@pytest.mark.parametrize("module", DOMAIN_MODULES)
def test_domain_module_imports_without_aiohttp(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, module], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_the_probe_can_fail() -> None:
    """The edge does import aiohttp, so the probe must refuse it: the check is live."""
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, "sidecar.proxy.gateway"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "domain code imported aiohttp" in result.stderr
