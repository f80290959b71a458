"""The hot path's memo (:mod:`sidecar.memo`): bounded in entries and in what they hold."""

from __future__ import annotations

import sys

from sidecar.memo import Memo
from sidecar.proxy.paths import GlobSet, normalise


def test_values_are_remembered_and_the_memo_is_emptied_when_full() -> None:
    calls: list[str] = []

    def upper(text: str) -> str:
        calls.append(text)
        return text.upper()

    memo = Memo(upper, size=2)
    assert [memo("a"), memo("a"), memo("b"), memo("a")] == ["A", "A", "B", "A"]
    assert calls == ["a", "b"]
    memo("c")  # full: emptied, then c
    memo("a")
    assert calls == ["a", "b", "c", "a"]


def test_long_values_are_answered_but_not_remembered() -> None:
    calls: list[str] = []

    def length(text: str) -> int:
        calls.append(text)
        return len(text)

    memo = Memo(length, max_key=8)
    assert memo("x" * 9) == 9
    assert memo("x" * 9) == 9
    assert len(calls) == 2
    assert memo("x" * 8) == memo("x" * 8) == 8
    assert len(calls) == 3


def test_a_flood_of_distinct_long_paths_keeps_little_resident() -> None:
    """The lane's normalise memo and a GlobSet's (public paths, a role's rules) see every
    path a client sends, up to proxy.max_header_size (16 KiB by default): 4,096 of them
    were kept, with what was made of them, ~130 MiB for normalise's alone."""
    paths = [f"/app/{i:08d}{'a' * 15_000}" for i in range(300)]
    memo = Memo(normalise)
    globs = GlobSet(["/static/*"])
    for path in paths:
        memo(path)
        assert not globs.matches(path)
    held = sum(sys.getsizeof(k) for k in memo._data) + sum(
        sys.getsizeof(k) for k in globs._matches._data
    )
    assert held < 1_000_000
