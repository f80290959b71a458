"""A request one of the express lane's own lanes took and answers itself.

:class:`TakenRequest` is what a redemption (:mod:`sidecar.proxy.redeem_lane`) and a
forward-auth sub-request (:mod:`sidecar.proxy.auth_lane`) share as a
:class:`~sidecar.web.lanes.Started`: the request's record and client address, and the one
way it ends — :meth:`finish` counts it out of the drain, writes its access line and tells
the connection, once, also when its task was cancelled before its first step (such a task
never runs its body, nor its ``finally``: :meth:`ended` covers it).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from sidecar.telemetry.access import CLIENT_CLOSED, request_id_for
from sidecar.telemetry.context import RequestRecord
from sidecar.web.heads import Head
from sidecar.web.lanes import Reply

if TYPE_CHECKING:
    from sidecar.proxy.express import Admitted, ExpressLane


class TakenRequest:
    """A request taken by a lane and answered by it (see the module docstring)."""

    __slots__ = ("_admitted", "_client", "_head", "_lane", "_over", "_record", "_reply",
                 "_started", "status", "task")  # fmt: skip

    def __init__(
        self, lane: ExpressLane, head: Head, reply: Reply, admitted: Admitted, route: str
    ) -> None:
        self._lane = lane
        self._head = head
        self._reply = reply
        self._admitted = admitted
        self._client = lane.clients.client(reply.peer, admitted.forwarded_for)
        self._record = RequestRecord(request_id_for(admitted.request_id), route)
        self._started = time.perf_counter()
        self._over = False
        self.status = 500
        self.task: asyncio.Task[None] | None = None

    def finish(self) -> None:
        """Count out, log the access line, tell the connection."""
        if self._over:
            return
        self._over = True
        lane = self._lane
        if lane.drain is not None:
            lane.drain.end()
        elapsed = time.perf_counter() - self._started
        lane.access(self._head.method, self._admitted.path_text, self.status, elapsed,
                    self._record, self._client)  # fmt: skip
        self._reply.finished()

    def ended(self, task: asyncio.Task[None]) -> None:
        """The task is over: finished, unless it was cancelled before it began."""
        if not self._over:
            self.status = CLIENT_CLOSED
            self.finish()

    def cancel(self) -> None:
        """The client left: stop the task (its ending finishes, with a 499)."""
        task = self.task
        if task is not None and not task.done():
            task.cancel()
