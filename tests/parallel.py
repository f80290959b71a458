"""How ``scripts/test`` shares the suite between pytest-xdist workers (``-n 2 --dist loadfile``).

A test file is one unit of work, so its module-scoped servers (nginx, Chromium, the real
upstream frameworks) start once, on one worker. Three files share the session-scoped Redis
topologies (a 3+3 Cluster, Sentinels, TLS), which would otherwise start once per worker:
they go to one worker together (:data:`GROUPS`). Files holding a ``slow`` or ``browser``
test are handed out first (:func:`heaviest_first`), so a long file never starts last while
the other worker has nothing left to do.

What a worker counts for the summary (:mod:`tests.security.casebook`, the compiled run's
deselected tests) travels back in ``config.workeroutput`` (:func:`worker_output`) and is
added up on the controller as each worker ends (``pytest_testnodedown``).
"""

from __future__ import annotations

from typing import Any

import pytest

# test file -> the unit it is scheduled in, when it is not its own
_TOPOLOGIES = "redis topologies (tests/redis_topologies.py)"
GROUPS: dict[str, str] = {
    "tests/test_store_contract.py": _TOPOLOGIES,
    "tests/test_redis_topologies.py": _TOPOLOGIES,
    "tests/test_redis_tls.py": _TOPOLOGIES,
}

_HEAVY = ("slow", "browser")


def unit_of(nodeid: str) -> str:
    """The unit of work a test belongs to: its file, or its file's group."""
    path = nodeid.split("::", 1)[0]
    return GROUPS.get(path, path)


def scheduler(config: pytest.Config, log: Any) -> Any:
    """For ``--dist loadfile``: xdist's ``loadfile`` with :data:`GROUPS` (:func:`unit_of`),
    handing units out in collection order (which :func:`heaviest_first` arranged) rather
    than by their number of tests. None (xdist's own) for any other mode.

    xdist is imported here, when it runs: a venv without it runs the suite in one process."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):  # type: ignore[misc]  # xdist has no py.typed
        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid)

        def schedule(self) -> None:
            # xdist would sort the units by how many tests they hold; a file of 200 quick
            # tests is not a long one, so the order the workers collected stands.
            self.config.option.loadscopereorder = False
            super().schedule()

    return FileScheduling(config, log)


def heaviest_first(items: list[pytest.Item]) -> None:
    """Moves the files holding a slow or browser test to the front, in place; each file's
    tests stay together and in their order, and so do the files within each half."""
    heavy = {
        item.nodeid.split("::", 1)[0]
        for item in items
        if any(item.get_closest_marker(mark) for mark in _HEAVY)
    }
    items.sort(key=lambda item: item.nodeid.split("::", 1)[0] not in heavy)


def worker_output(config: pytest.Config) -> dict[str, Any] | None:
    """What this process sends the controller when it ends, when it is an xdist worker."""
    output: dict[str, Any] | None = getattr(config, "workeroutput", None)
    return output
