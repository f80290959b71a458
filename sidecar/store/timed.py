"""A :class:`~sidecar.store.base.Store` wrapper that observes the latency of every call.

``timed(open_store(...))`` is a Store like any other; each method forwards to the backend
and records its duration in ``sidecar_store_seconds{op="<method>"}``, whether it returned
or raised (a slow failure is exactly what the histogram is for), and keeps the
``sidecar_store_up`` gauge current. The methods are generated from the store protocols
(:data:`~sidecar.store.base.STORE_METHODS`), so a method added to a concern is timed
without an edit here.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import cast

from sidecar.store.base import STORE_METHODS, Store, StoreUnavailable
from sidecar.telemetry.metrics import observe_store, store_up


class TimedStore:
    """Forwards every :class:`Store` method to ``inner``, timing it."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def __repr__(self) -> str:
        return f"TimedStore({self.inner!r})"


def _timed_method(op: str) -> Callable[..., Awaitable[object]]:
    """``TimedStore.<op>``: the backend's ``op``, with the same arguments, timed."""

    async def method(self: TimedStore, /, *args: object, **kwargs: object) -> object:
        call: Callable[..., Awaitable[object]] = getattr(self.inner, op)
        started = time.perf_counter()
        try:
            result = await call(*args, **kwargs)
        except StoreUnavailable:
            store_up(False)
            raise
        finally:
            observe_store(op, time.perf_counter() - started)
        store_up(True)
        return result

    method.__name__ = op
    method.__qualname__ = f"TimedStore.{op}"
    method.__doc__ = getattr(Store, op).__doc__
    return method


for _op in STORE_METHODS:
    setattr(TimedStore, _op, _timed_method(_op))


def timed(store: Store) -> Store:
    """``store`` with every call timed into ``sidecar_store_seconds``."""
    # The methods were generated above from the very protocols Store is made of (and
    # tests/test_store_contract.py checks each one forwards and is timed), which the type
    # checker cannot see: hence the cast.
    return cast(Store, TimedStore(store))
