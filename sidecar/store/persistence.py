"""Watching whether the store keeps what it acknowledged across its own restart.

A Redis with neither an append-only file nor RDB snapshots forgets every burn when it
restarts: used one-time links open again. :class:`PersistenceWatch` asks the store
(:meth:`~sidecar.store.base.Store.persistence`) at start and then at most every
``every`` seconds (the readiness probe asks every few seconds), and logs when the answer
changes, so an operator sees one warning, not one per probe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sidecar.store.base import Persistence, StoreLifecycle, StoreUnavailable

_LOG = logging.getLogger("sidecar.store")


class PersistenceWatch:
    def __init__(
        self,
        store: StoreLifecycle,
        *,
        every: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._every = every
        self._clock = clock
        self._last: Persistence | None = None
        self._checked_at = float("-inf")

    async def current(self) -> Persistence:
        """The latest answer, asked again when older than ``every``; the previous answer
        while the store does not answer. Raises :class:`StoreUnavailable` if it never has."""
        now = self._clock()
        last = self._last
        if last is not None and now - self._checked_at < self._every:
            return last
        try:
            found = await self._store.persistence()
        except StoreUnavailable:
            if last is None:
                raise
            return last
        self._checked_at = now
        if found != last:
            _log(found)
        self._last = found
        return found


def _log(found: Persistence) -> None:
    if found.durable is False:
        _LOG.warning("store not persistent: %s", found.detail)
    elif found.durable is None:
        _LOG.warning("store persistence unknown: %s", found.detail)
    else:
        _LOG.info("store persistence: %s", found.detail)
