"""The compiled run: the hot path's tests against the mypyc build (:mod:`sidecar.compiled`).

``scripts/test`` runs these tests a second time, as ``python -m pytest -p
tests.compiled_run ...``, with a compiled copy of ``sidecar/`` first on ``PYTHONPATH``
(``scripts/compile --into``); every ``sidecar serve`` the tests start inherits it. This
plugin refuses to start unless every module of :data:`sidecar.compiled.MODULES` is
compiled, and deselects the tests of :data:`DESELECTED`, naming each with its reason in the
summary. A name there that no longer matches a test is an error, so the list cannot rot.
"""

from __future__ import annotations

import pytest

from sidecar import compiled

# node id -> why it cannot run against the compiled build. Native classes and functions
# are called directly by compiled callers: a monkeypatched replacement is never reached.
DESELECTED: dict[str, str] = {
    "tests/test_lean.py::test_a_fault_in_the_lane_is_answered_by_aiohttp_or_drops_the_connection": (
        "injects its faults by monkeypatching ExpressLane._admit and answers.whole, which "
        "the compiled lane calls natively (the patch is never reached)"
    ),
}

_SEEN = pytest.StashKey[list[str]]()


def pytest_configure(config: pytest.Config) -> None:
    state = compiled.state()
    if state.label != "mypyc":
        raise pytest.UsageError(
            f"tests.compiled_run: the hot path is {state.describe()}; put a compiled copy "
            "first on PYTHONPATH (scripts/compile --into DIR)"
        )
    config.stash[_SEEN] = []


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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    terminalreporter.section("compiled run (sidecar.compiled)")
    terminalreporter.write_line(f"hot path {compiled.state().describe()}")
    for node in terminalreporter.config.stash[_SEEN]:
        terminalreporter.write_line(f"deselected {node}: {DESELECTED[node]}")
