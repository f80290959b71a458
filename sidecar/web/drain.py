"""Graceful drain: stop accepting, then let the requests in flight finish.

aiohttp's ``AppRunner.cleanup()`` marks every connection as closing before it waits for
the handlers, and a closing connection drops the bytes it receives from then on
(aio-libs/aiohttp#2298). A request whose body is still arriving — a slow upload — can then
never complete and is cancelled when the shutdown timeout ends. So :func:`sidecar.app.serve`
first closes the listening sockets, then waits here until no request is in flight (or the
grace period is over), and only then calls ``cleanup()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Handler

from sidecar.web.inflight import InFlight
from sidecar.web.listener import LANE


class Drain:
    """Counts the requests in flight on every app it is attached to."""

    def __init__(self) -> None:
        self._requests = InFlight()

    @property
    def in_flight(self) -> int:
        return self._requests.count

    def attach(self, app: web.Application) -> None:
        """Track ``app``'s requests (before the app is started; outermost middleware)."""
        app.middlewares.insert(0, self._middleware)
        lane = app.get(LANE)
        if lane is not None:
            # The lean front's requests count too (sidecar.web.lean), with the counter
            # itself: the lanes are compiled, and so is it (this module cannot be).
            lane.drain = self._requests

    def begin(self) -> None:
        """A request started (the middleware's; the lean front's lanes count with the
        :class:`~sidecar.web.inflight.InFlight` :meth:`attach` gives them)."""
        self._requests.begin()

    def end(self) -> None:
        """A request started with :meth:`begin` is over."""
        self._requests.end()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.begin()
        try:
            return await handler(request)
        finally:
            self.end()

    async def stop_accepting_and_wait(
        self, runners: Iterable[web.BaseRunner], grace_period: float
    ) -> bool:
        """Close every listening socket, then wait up to ``grace_period`` seconds for the
        requests in flight. True if they all finished."""
        for runner in runners:
            for site in list(runner.sites):
                await site.stop()
        try:
            async with asyncio.timeout(grace_period):
                await self._requests.wait_idle()
        except TimeoutError:
            return False
        return True
