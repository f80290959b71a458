"""How the suite is shared between pytest-xdist workers (tests/parallel.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import cast

import pytest

from tests import parallel
from tests.security import casebook

ROOT = Path(__file__).resolve().parent.parent
# by name, or built from the topology's name (f"redis_{name}")
TOPOLOGY_FIXTURES = re.compile(r"\bredis_(cluster|sentinel|tls)\b|\bredis_\{")


def test_every_file_on_the_shared_topologies_is_scheduled_together() -> None:
    """A file that asks for a session-scoped topology and is not in GROUPS would start a
    second Cluster (or Sentinel, TLS) on the other worker."""
    users = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "tests").rglob("test_*.py")
        if path != Path(__file__).resolve() and TOPOLOGY_FIXTURES.search(path.read_text("utf-8"))
    }
    assert users == set(parallel.GROUPS)
    assert len(set(parallel.GROUPS.values())) == 1


def test_a_file_is_its_own_unit_unless_grouped() -> None:
    split = parallel.unit_of
    assert split("tests/test_b64.py::test_x[a-b]") == "tests/test_b64.py"
    assert split("tests/security/test_replay.py::K::test_y") == "tests/security/test_replay.py"
    grouped = {split(f"{path}::test_z") for path in parallel.GROUPS}
    assert grouped == set(parallel.GROUPS.values())


class _Item:
    def __init__(self, nodeid: str, *marks: str) -> None:
        self.nodeid = nodeid
        self.marks = marks

    def get_closest_marker(self, name: str) -> object:
        return name if name in self.marks else None


def test_files_with_a_slow_or_browser_test_go_first_each_whole_and_in_order() -> None:
    items = [
        _Item("tests/a.py::one"),
        _Item("tests/b.py::one"),
        _Item("tests/b.py::two", "slow"),
        _Item("tests/c.py::one"),
        _Item("tests/d.py::one", "browser"),
        _Item("tests/d.py::two"),
    ]
    ordered = list(items)
    parallel.heaviest_first(cast("list[pytest.Item]", ordered))
    assert [item.nodeid for item in ordered] == [
        "tests/b.py::one",
        "tests/b.py::two",
        "tests/d.py::one",
        "tests/d.py::two",
        "tests/a.py::one",
        "tests/c.py::one",
    ]


def test_a_workers_security_counts_add_up_on_the_controller() -> None:
    before = casebook.counts()
    try:
        casebook.add({"tokens": (5, 0), "headers": (2, 1)})
        after = casebook.counts()
        assert after["tokens"][0] == before.get("tokens", (0, 0))[0] + 5
        assert after["headers"] == (
            before.get("headers", (0, 0))[0] + 2,
            before.get("headers", (0, 0))[1] + 1,
        )
    finally:  # this process's table counts only real cases
        casebook.TRIED.subtract({"tokens": 5, "headers": 2})
        casebook.THROUGH.subtract({"headers": 1})
