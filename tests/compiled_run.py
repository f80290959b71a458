"""The compiled run: the hot path's tests against the mypyc build (:mod:`sidecar.compiled`).

``scripts/test`` runs these tests a second time, as ``python -m pytest -p
tests.compiled_run ...``, with a compiled copy of ``sidecar/`` first on ``PYTHONPATH``
(``scripts/compile --into``); every ``sidecar serve`` the tests start inherits it. This
plugin refuses to start unless every module of :data:`sidecar.compiled.MODULES` is
compiled, and deselects the tests of :data:`DESELECTED`, naming each with its reason in the
summary. A name there that no longer matches a test is an error, so the list cannot rot.
Under pytest-xdist the workers collect and deselect; each sends the names it deselected to
the controller, which prints them.

A test that monkeypatches a class or a function of a compiled module fails here at once,
saying so: compiled callers call them natively, so the patch would never be reached and
the test would fail (or pass) for the wrong reason. Such a test belongs in DESELECTED.
"""

from __future__ import annotations

import types
from typing import Any

import pytest

from sidecar import compiled
from tests import parallel

# node id -> why it cannot run against the compiled build. Native classes and functions
# are called directly by compiled callers: a monkeypatched replacement is never reached.
_LEAN = "tests/test_lean.py::"
DESELECTED: dict[str, str] = {
    _LEAN + "test_a_fault_in_the_lane_is_answered_by_aiohttp_or_drops_the_connection": (
        "injects its faults by monkeypatching ExpressLane._admit and answers.whole, which "
        "the compiled lane calls natively (the patch is never reached)"
    ),
    _LEAN + "test_a_handover_from_the_store_lookup_mid_pipeline_keeps_every_byte_in_order": (
        "injects its fault by monkeypatching Gateway.anonymous, which the compiled lane "
        "calls natively (the patch is never reached)"
    ),
}

_SEEN = pytest.StashKey[list[str]]()
_SETATTR = pytest.MonkeyPatch.setattr


def _native(target: object, args: tuple[Any, ...]) -> str | None:
    """What a ``monkeypatch.setattr`` call would replace, when compiled code calls it
    natively: a class of a compiled module, or one of its attributes, or a module's
    function."""
    if isinstance(target, str):  # setattr("package.module.name", value)
        module, _, name = target.rpartition(".")
        return target if module in compiled.MODULES else None
    name = str(args[0]) if args else "?"
    if isinstance(target, types.ModuleType):
        patched = getattr(target, name, None)
        if target.__name__ in compiled.MODULES and callable(patched):
            return f"{target.__name__}.{name}"
    elif isinstance(target, type) and target.__module__ in compiled.MODULES:
        return f"{target.__module__}.{target.__qualname__}.{name}"
    return None


def _guarded_setattr(self: pytest.MonkeyPatch, target: Any, *args: Any, **kwargs: Any) -> None:
    where = _native(target, args)
    if where is not None:
        pytest.fail(
            f"monkeypatches {where}, which compiled callers call natively (the patch is never "
            "reached): add this test to DESELECTED in tests/compiled_run.py, with the reason"
        )
    _SETATTR(self, target, *args, **kwargs)


def pytest_configure(config: pytest.Config) -> None:
    state = compiled.state()
    if state.label != "mypyc":
        raise pytest.UsageError(
            f"tests.compiled_run: the hot path is {state.describe()}; put a compiled copy "
            "first on PYTHONPATH (scripts/compile --into DIR)"
        )
    config.stash[_SEEN] = []
    pytest.MonkeyPatch.setattr = _guarded_setattr  # type: ignore[method-assign]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    files = {item.nodeid.split("::")[0] for item in items}
    dropped = [item for item in items if item.nodeid in DESELECTED]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item.nodeid not in DESELECTED]
    seen: list[str] = config.stash[_SEEN]
    seen.extend(item.nodeid for item in dropped)
    stale = [node for node in DESELECTED if node.split("::")[0] in files and node not in seen]
    if stale:
        raise pytest.UsageError(f"tests.compiled_run: DESELECTED names no test: {stale}")


def pytest_sessionfinish(session: pytest.Session) -> None:
    output = parallel.worker_output(session.config)
    if output is not None:
        output["compiled_deselected"] = session.config.stash[_SEEN]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """On the controller: the tests a worker deselected join the summary (once each)."""
    seen: list[str] = node.config.stash[_SEEN]
    names = getattr(node, "workeroutput", {}).get("compiled_deselected", [])
    seen.extend(name for name in names if name not in seen)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    terminalreporter.section("compiled run (sidecar.compiled)")
    terminalreporter.write_line(f"hot path {compiled.state().describe()}")
    for node in terminalreporter.config.stash[_SEEN]:
        terminalreporter.write_line(f"deselected {node}: {DESELECTED[node]}")
