"""A bounded memo for the hot path's pure functions of request text (paths, hosts).

Requests repeat the same few values: reading each once saves a regular expression or a
parse per request. The memo is emptied when it fills, so a flood of distinct values costs
only the memo's benefit (never a wrong answer). Values longer than ``max_key`` characters
are not remembered: a request head may be ``proxy.max_header_size`` long (16 KiB), and a
client sending distinct long paths would otherwise keep ``size`` of them (and what the
function made of them) resident, tens of MiB per memo. Exceptions are not remembered: a
value the function refuses is refused again, at full price.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K", bound=str)
V = TypeVar("V")


class Memo(Generic[K, V]):
    """``fn(key)``, remembered for at most ``size`` keys of at most ``max_key`` characters
    at a time."""

    __slots__ = ("_data", "_fn", "_max_key", "_size")

    def __init__(self, fn: Callable[[K], V], size: int = 4096, max_key: int = 512) -> None:
        self._fn = fn
        self._size = size
        self._max_key = max_key
        self._data: dict[K, V] = {}

    def __call__(self, key: K) -> V:
        data = self._data
        try:
            return data[key]
        except KeyError:
            pass
        value = self._fn(key)
        if len(key) > self._max_key:
            return value
        if len(data) >= self._size:
            data.clear()
        data[key] = value
        return value
