"""A bounded memo for the hot path's pure functions of request text (paths, hosts).

Requests repeat the same few values: reading each once saves a regular expression or a
parse per request. The memo is emptied when it fills, so a flood of distinct values costs
only the memo's benefit (never memory, never a wrong answer). Exceptions are not
remembered: a value the function refuses is refused again, at full price.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Memo(Generic[K, V]):
    """``fn(key)``, remembered for at most ``size`` keys at a time."""

    __slots__ = ("_data", "_fn", "_size")

    def __init__(self, fn: Callable[[K], V], size: int = 4096) -> None:
        self._fn = fn
        self._size = size
        self._data: dict[K, V] = {}

    def __call__(self, key: K) -> V:
        data = self._data
        try:
            return data[key]
        except KeyError:
            pass
        value = self._fn(key)
        if len(data) >= self._size:
            data.clear()
        data[key] = value
        return value
