"""Refer links on the lean front: a plain redemption answered without aiohttp's server.

The express lane (:mod:`sidecar.proxy.express`) admits a request as it admits any other —
not under the sidecar's own routes, a path :func:`~sidecar.proxy.paths.normalise` takes, a
host the host check takes — and passes it here when it is a bodyless ``GET`` whose target
is ASCII and whose query is plain and names ``refer``
(:func:`~sidecar.refer.redeem.plain_refer_values`). :meth:`RedeemLane.start` opens the link
(:meth:`~sidecar.refer.redeem.Redeemer.open`: decryption, expiry, kind, role; nothing is
read or written) and **declines** — the request is handed to aiohttp, whose handler answers
it exactly as before — when the link does not open or its role confirms
(``redeem: confirm``: the button page). Otherwise it takes the request, and a task
redeems it with the handler's own code (:meth:`~sidecar.refer.redeem.Redeemer.complete`:
burn and session in one store call, the browser's other sessions ended, audit line) and
writes what the handler would: the 303 (:func:`~sidecar.refer.redeem.redirect_headers`,
framed by :func:`~sidecar.proxy.answers.bodyless`), or, once the link was found used or
revoked or the store failed, the failure page of
:meth:`~sidecar.proxy.redemptions.FailedRedemptions.record` (counted against
``proxy.failed_redeem_rate``: a 429 past it). The 303 is written only after the store
call returned, so after the burn is durable. ``tests/test_lean.py`` compares the answers
with aiohttp's byte for byte.

As on aiohttp's path, the request counts for the drain while in flight, a client that
leaves cancels it (a burn already sent stands), and its access line says ``redeem``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from sidecar.proxy import answers
from sidecar.proxy.forward import Failure
from sidecar.proxy.redemptions import FailedRedemptions
from sidecar.proxy.taken import TakenRequest
from sidecar.refer.redeem import REDIRECT_NAMES, Redeemer, RedeemFailed
from sidecar.telemetry.access import CLIENT_CLOSED
from sidecar.telemetry.context import CURRENT
from sidecar.web.heads import Head
from sidecar.web.lanes import Reply, Started

if TYPE_CHECKING:
    from sidecar.config import RoleConfig
    from sidecar.proxy.express import Admitted, ExpressLane
    from sidecar.tokens.codec import Claims

LOG = logging.getLogger("sidecar.redeem")


class RedeemLane:
    """Takes the plain redemptions the express lane admits (see the module docstring)."""

    def __init__(self, redeemer: Redeemer, failures: FailedRedemptions) -> None:
        self.redeemer = redeemer
        self.failures = failures
        # The loop of the listener it serves, asked once: asyncio.get_running_loop() costs
        # a getpid() system call on Python 3.11.
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(
        self, lane: ExpressLane, head: Head, reply: Reply, admitted: Admitted, refer: list[str]
    ) -> Started | None:
        """Take the redemption of ``refer`` (the query's values), or None: declined, with
        nothing read, written or logged."""
        try:
            claims, role = self.redeemer.open(refer)
        except RedeemFailed:
            return None  # the handler answers (and counts) the failure
        if role.redeem == "confirm":
            return None  # the handler's button page
        redemption = LeanRedemption(self, lane, head, reply, admitted, claims, role)
        drain = lane.drain
        if drain is not None:
            drain.begin()
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        task = redemption.task = loop.create_task(redemption.run())
        # A task cancelled before its first step never runs its body (nor its finally).
        task.add_done_callback(redemption.ended)
        return redemption


class LeanRedemption(TakenRequest):
    """One redemption the lean front took (a :class:`~sidecar.web.lanes.Started`)."""

    __slots__ = ("_claims", "_redeem", "_role")

    def __init__(
        self,
        redeem: RedeemLane,
        lane: ExpressLane,
        head: Head,
        reply: Reply,
        admitted: Admitted,
        claims: Claims,
        role: RoleConfig,
    ) -> None:
        super().__init__(lane, head, reply, admitted, "redeem")
        self._redeem = redeem
        self._claims = claims
        self._role = role

    async def run(self) -> None:
        """Redeem, answer, finish (the task's body)."""
        record = self._record
        CURRENT.set(record)  # this task's own context: the audit lines' request id, set_user
        keep_alive = self._head.keep_alive
        try:
            try:
                headers = await self._redeem.redeemer.complete(
                    self._claims,
                    self._role,
                    self._head.target.decode("ascii"),
                    self._client,
                    self._admitted.cookies,
                )
            except RedeemFailed as failed:
                outcome = await self._redeem.failures.record(
                    self._client, failed.reason, token_id=failed.token_id
                )
                answer = answers.failure(
                    self._admitted.accept,
                    self._lane.services.config.pages,
                    Failure(outcome.status, outcome.reason),
                    record.request_id,
                    keep_alive,
                    retry_after=outcome.retry_after,
                )
                self.status = outcome.status
            else:
                answer = answers.bodyless(
                    303, headers, record.request_id, keep_alive, REDIRECT_NAMES
                )
                self.status = 303
            self._reply.write(answer)
        except asyncio.CancelledError:
            self.status = CLIENT_CLOSED
            raise
        except Exception:
            # A bug must not leave the client waiting, nor may anyone else answer now (the
            # burn may have landed): drop the connection.
            LOG.exception("the lean front failed redeeming a link; connection dropped")
            self._reply.abort()
        finally:
            self.finish()
