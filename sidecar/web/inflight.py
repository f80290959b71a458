"""A count of requests in progress, and a wait until none is: the graceful shutdown's.

:class:`~sidecar.web.drain.Drain` (every request of the listeners) and
:class:`~sidecar.web.lean_limits.LeanConnections` (a listener's lean connections) count with
one. Counting is all a request pays: the :class:`asyncio.Event` a waiter needs is made, and
kept in step with the count, only once someone waits (a shutdown), instead of being cleared
and set around every request (two calls into asyncio's Python code each time). The module
is compiled with the hot path (:mod:`sidecar.compiled`).
"""

from __future__ import annotations

import asyncio


class InFlight:
    """Requests begun and not yet ended; :meth:`wait_idle` waits until there are none."""

    __slots__ = ("_count", "_idle")

    def __init__(self) -> None:
        self._count = 0
        self._idle: asyncio.Event | None = None  # set iff _count is 0, once someone waits

    @property
    def count(self) -> int:
        return self._count

    def begin(self) -> None:
        self._count += 1
        if self._idle is not None:
            self._idle.clear()

    def end(self) -> None:
        """A request :meth:`begin` counted is over."""
        self._count -= 1
        if self._count == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no request is in progress (at once if none is); bound it with a
        timeout. As an event's wait: a moment with none in progress is enough."""
        idle = self._idle
        if idle is None:
            idle = self._idle = asyncio.Event()
            if self._count == 0:
                idle.set()
        await idle.wait()
