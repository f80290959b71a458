"""A listener's lean connections (:mod:`sidecar.web.lean`) and the one timer that enforces
their limits.

Instead of a timer per connection and per request, one sweep every quarter of the shortest
limit (at most a second) closes the connections whose request head is late
(``request_head_timeout``: 408) or that have been idle too long (``keepalive_timeout``).
At shutdown idle connections close at once and busy ones get the grace period, then are
dropped (their requests cancelled).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from sidecar.web.inflight import InFlight

if TYPE_CHECKING:
    from sidecar.web.lean import LeanConnection


class LeanConnections:
    """A listener's lean connections and the one timer that enforces their limits."""

    def __init__(
        self,
        head_timeout: float,
        keepalive_timeout: float,
        clock: Callable[[], float],
    ) -> None:
        self._head_timeout = head_timeout
        self._keepalive_timeout = keepalive_timeout
        self._clock = clock
        # A late 408 or idle close by a quarter of the limit (at most a second) is no harm.
        self._tick = max(0.02, min(1.0, head_timeout / 4, keepalive_timeout / 4))
        self._connections: set[LeanConnection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._busy = InFlight()

    def __len__(self) -> int:
        return len(self._connections)

    def __iter__(self) -> Iterator[LeanConnection]:
        return iter(list(self._connections))

    def add(self, conn: LeanConnection) -> None:
        self._connections.add(conn)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self._tick, self._sweep)

    def discard(self, conn: LeanConnection) -> None:
        self._connections.discard(conn)

    def entered(self) -> None:
        """A request is in progress on one of the connections."""
        self._busy.begin()

    def left(self) -> None:
        """A request :meth:`entered` is over."""
        self._busy.end()

    def _sweep(self) -> None:
        now = self._clock()
        for conn in list(self._connections):
            conn.check_limits(now, self._head_timeout, self._keepalive_timeout)
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(self._tick, self._sweep) if self._connections else None

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    async def shutdown(self, grace: float) -> None:
        """Close idle connections, give busy ones ``grace`` seconds, then cancel them."""
        for conn in list(self._connections):
            conn.shut()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._busy.wait_idle()
        for conn in list(self._connections):
            conn.cancel()
        self.stop()
