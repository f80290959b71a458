"""The layering rule: domain packages never import the web edge.

Two checks. Each listed domain module is imported in a fresh interpreter where ``aiohttp``
cannot be imported; if one of them (or anything it pulls in) reaches for it, the import fails.
And, import-linter style, every module of the domain packages is read as a syntax tree: none
may import ``sidecar.web``, ``sidecar.admin``, ``sidecar.links.http``, ``sidecar.links.edge``
or any module that imports aiohttp, directly or through other sidecar modules (even under
``TYPE_CHECKING``).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import sidecar

DOMAIN_MODULES = [
    "sidecar.config",
    "sidecar.tokens.keys",
    "sidecar.tokens.codec",
    "sidecar.tokens.records",
    "sidecar.refer.minting",
    "sidecar.links.generate",
    "sidecar.links.errorcodes",
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
    "sidecar.telemetry.access",
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


# --- The import graph, read from source: no domain module may reach the edge. ---

SIDECAR = Path(sidecar.__file__).resolve().parent
DOMAIN_PACKAGES = ("config", "tokens", "links", "store", "telemetry")
DOMAIN_SINGLES = ("sidecar.refer.minting",)
# Edge modules that live inside a domain package (their HTTP handlers).
EDGE_IN_DOMAIN = ("sidecar.links.http", "sidecar.links.edge")
EDGE_PACKAGES = ("sidecar.web", "sidecar.admin")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SIDECAR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _all_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SIDECAR.rglob("*.py"))}


def imported_names(module: str, source: str, *, is_package: bool) -> set[str]:
    """Every module ``source`` imports (relative imports resolved, ``TYPE_CHECKING`` included:
    a type-only arrow is still an arrow), each as its dotted name and every parent of it."""
    names: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            # ``from sidecar import web`` imports the module sidecar.web.
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _edge_modules(graph: dict[str, set[str]]) -> set[str]:
    """The web edge: ``web``, ``admin``, and every module that imports aiohttp itself."""
    return {
        name
        for name, imports in graph.items()
        if name.startswith(EDGE_PACKAGES)
        or name in EDGE_IN_DOMAIN
        or any(i == "aiohttp" or i.startswith("aiohttp.") for i in imports)
    }


def _is_domain(name: str) -> bool:
    if name in EDGE_IN_DOMAIN:
        return False
    return name in DOMAIN_SINGLES or any(
        name == f"sidecar.{p}" or name.startswith(f"sidecar.{p}.") for p in DOMAIN_PACKAGES
    )


def edge_arrows(modules: dict[str, str]) -> list[str]:
    """Each domain module's chain of imports that ends in the edge, as ``a -> b -> edge``.

    ``modules`` maps a dotted name to its source (a package's name is its ``__init__``)."""
    packages = {n for n in modules if any(m.startswith(n + ".") for m in modules)}
    graph = {
        name: imported_names(name, source, is_package=name in packages)
        for name, source in modules.items()
    }
    edge = _edge_modules(graph)
    arrows: list[str] = []
    for start in sorted(n for n in modules if _is_domain(n)):
        # Breadth first over sidecar modules only, so the reported chain is a shortest one.
        paths = {start: [start]}
        queue = [start]
        while queue:
            here = queue.pop(0)
            for target in sorted(graph.get(here, ())):
                if target not in modules or target in paths:
                    continue
                paths[target] = [*paths[here], target]
                if target in edge:
                    arrows.append(" -> ".join(paths[target]))
                else:
                    queue.append(target)
    return arrows


def test_no_domain_module_imports_the_edge() -> None:
    """Every module of the domain packages, and what it imports in turn, stays off the edge."""
    sources = {name: path.read_text() for name, path in _all_modules().items()}
    assert sum(_is_domain(n) for n in sources) >= 30  # the walk found the packages
    assert edge_arrows(sources) == []


@pytest.mark.parametrize(
    "line",
    [
        "from sidecar.web import pages",
        "from sidecar.web.pages import failure_json",
        "import sidecar.admin.guards",
        "from sidecar import admin",
        "from ..web import pages",
        "from sidecar.links import http",
        "from sidecar.proxy.gateway import Gateway",
    ],
)
def test_the_import_check_can_fail(line: str) -> None:
    """A domain module with any spelling of an edge import is reported, directly or through
    a non-edge module in between."""
    sources = {name: path.read_text() for name, path in _all_modules().items()}
    direct = dict(sources)
    direct["sidecar.links.request"] += "\n" + line + "\n"
    assert any(a.startswith("sidecar.links.request -> ") for a in edge_arrows(direct))
    # Through sidecar.proxy.paths (not edge itself), which sidecar.links.redirects imports.
    indirect = dict(sources)
    indirect["sidecar.proxy.paths"] += "\n" + line + "\n"
    assert any(
        a.startswith("sidecar.links.redirects -> sidecar.proxy.paths -> ")
        for a in edge_arrows(indirect)
    )
