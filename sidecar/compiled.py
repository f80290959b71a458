"""Which modules an optional build compiles with mypyc, and which ones this process runs compiled.

The proxy's hot path (the lean front, the gateway's verdict, the exchange with a pooled
upstream connection, the telemetry it touches), a mint's (the admin listener's lane, the
token codec) and a redemption's (the redemption lane, the redeemer, the SQLite store's
group-commit writer) can be compiled to C extensions with mypyc, the way black and mypy ship:
``SIDECAR_COMPILE=1 pip install .`` (the Docker image) or ``scripts/compile`` in a checkout.
The pure-Python modules stay the reference and the default; a compiled module is the same
source, so every test runs against either.

:data:`MODULES` is the one list: ``setup.py`` and ``scripts/compile`` build it,
``scripts/test`` runs the hot-path tests against it, and :func:`state` tells what a process
actually runs (``sidecar --version``, the ``compiled`` label of ``sidecar_build_info`` and
the start-up log line). This module reads only the standard library, so ``setup.py`` can
run it before anything is installed.

Left interpreted, because mypyc cannot compile them as they are:

- modules with ``@web.middleware`` functions (``web.drain``, ``web.accesslog``,
  ``proxy.guards``): aiohttp marks the function with an attribute, which a native function
  does not take, so the module fails at import;
- modules with async generators (``proxy.forward``), which mypyc does not support
  (``proxy.upstream_response``'s body iterator is a class for this reason).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

MODULES: tuple[str, ...] = (
    "sidecar.web.heads",
    "sidecar.web.lean",
    "sidecar.web.lean_limits",
    "sidecar.web.inflight",
    "sidecar.proxy.express",
    "sidecar.proxy.exchange",
    "sidecar.proxy.relay",
    "sidecar.proxy.answers",
    "sidecar.proxy.verdicts",
    "sidecar.proxy.headers",
    "sidecar.proxy.upstream_conn",
    "sidecar.proxy.pool",
    "sidecar.proxy.upstream_response",
    "sidecar.proxy.upstream_body",
    "sidecar.proxy.upstream_errors",
    "sidecar.proxy.gateway",
    "sidecar.proxy.origins",
    "sidecar.proxy.paths",
    "sidecar.proxy.clientaddr",
    "sidecar.sessions",
    "sidecar.session_cookies",
    "sidecar.memo",
    "sidecar.telemetry.access",
    "sidecar.telemetry.audit",
    "sidecar.telemetry.logwriter",
    "sidecar.telemetry.context",
    "sidecar.telemetry.metrics",
    "sidecar.telemetry.tally",
    # A mint (the admin listener's lean lane): its steps, the token codec, the body parse.
    "sidecar.admin.lane",
    "sidecar.admin.guards",
    "sidecar.admin.mints",
    "sidecar.refer.minting",
    "sidecar.tokens.b64",
    "sidecar.tokens.codec",
    "sidecar.tokens.identity",
    "sidecar.tokens.records",
    "sidecar.web.jsonbody",
    # A redemption (the proxy's lean redeem lane; auth_lane: TakenRequest's other subclass),
    # the redeemer and the SQLite writer that burns the link and stores the session.
    "sidecar.proxy.redeem_lane",
    "sidecar.proxy.taken",
    "sidecar.proxy.auth_lane",
    "sidecar.refer.redeem",
    "sidecar.store._groupcommit",
    # A mint's record, and the SQLite op that counts the mint and writes the record.
    "sidecar.store.token_record",
    "sidecar.store.sqlite_schema",
    # Every store call of both: the latency wrapper around the backend.
    "sidecar.store.timed",
)

# mypyc puts the compiled code of all of MODULES in one shared library, this module's
# sibling `_native__mypyc.<suffix>`; each listed module's own extension is a small shim
# that imports it. Inside the package, it goes wherever the package goes (a wheel, an
# in-place build, a compiled copy put first on PYTHONPATH).
GROUP = "sidecar._native"

_PACKAGE = Path(__file__).resolve().parent


def source_path(module: str) -> Path:
    """``sidecar.web.lean`` -> ``<package>/web/lean.py``."""
    return _PACKAGE.joinpath(*module.split(".")[1:]).with_suffix(".py")


def _is_compiled(module: str) -> bool:
    loaded = sys.modules.get(module)
    if loaded is not None:
        return any(str(getattr(loaded, "__file__", "")).endswith(s) for s in EXTENSION_SUFFIXES)
    # Not imported yet: Python's import system prefers an extension module over the .py
    # beside it, so an extension file there is what an import will load.
    base = source_path(module).with_suffix("")
    return any(base.with_name(base.name + s).is_file() for s in EXTENSION_SUFFIXES)


@dataclass(frozen=True)
class CompiledState:
    compiled: tuple[str, ...]
    interpreted: tuple[str, ...]

    @property
    def label(self) -> str:
        """``mypyc`` (all of :data:`MODULES` compiled), ``no`` (none), ``partial`` (a broken
        or stale build: some are, some are not)."""
        if not self.interpreted:
            return "mypyc"
        return "partial" if self.compiled else "no"

    def describe(self) -> str:
        if self.label == "mypyc":
            return f"compiled with mypyc ({len(self.compiled)} modules)"
        if self.label == "no":
            return "interpreted (pure Python)"
        names = ", ".join(self.interpreted)
        return f"partly compiled: {len(self.compiled)} modules compiled, interpreted: {names}"


def state() -> CompiledState:
    """Which of :data:`MODULES` this process runs (or will import) compiled."""
    flags = [(module, _is_compiled(module)) for module in MODULES]
    return CompiledState(
        compiled=tuple(m for m, c in flags if c),
        interpreted=tuple(m for m, c in flags if not c),
    )
