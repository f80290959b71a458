"""Fixed-window rate limits counted in the store, so they hold across replicas."""

from __future__ import annotations

import math

from sidecar.config.values import RateLimit
from sidecar.store.base import CounterStore


class RateLimited(Exception):
    """Too many events; ``retry_after`` is whole seconds until the window resets."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"rate limited; retry after {retry_after}s")
        self.retry_after = retry_after

    @classmethod
    def until(cls, reset_at: float, now: float) -> RateLimited:
        """Limited until the window resets at ``reset_at``."""
        return cls(max(1, math.ceil(reset_at - now)))


async def enforce(store: CounterStore, key: str, limit: RateLimit, now: float) -> None:
    """Count one event under ``key``; raise :class:`RateLimited` past ``limit``."""
    count, reset_at = await store.hit(key, limit.window, now)
    if count > limit.limit:
        raise RateLimited.until(reset_at, now)
