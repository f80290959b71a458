"""The one failure path of every redemption on the proxy listener: refer links
(:mod:`sidecar.refer.redeem`) and auth links (:mod:`sidecar.links.http`) alike.

A failed redemption is, in order:

* counted in ``sidecar_redemptions_total`` under the outcome the client got (its reason, or
  ``rate_limited``/``store_unavailable`` when the limit decided) and written as an audit line
  (``replay`` for a used token, ``redeem_failed`` otherwise) with the token id — never the
  token — and the client's address (:class:`~sidecar.proxy.clientaddr.ClientAddresses`);
* unless the store is what failed, or the caller says it is counted elsewhere (OTP guesses
  have their own per-address budget), counted against ``proxy.failed_redeem_rate`` under
  ``redeem-fail:<client>`` in the store, so the limit holds across replicas; past it the
  answer is 429. Each process remembers a block until its window ends, so a blocked
  client's further failures cost no store write;
* answered with the failure page (or the JSON ``{"code", "error", "message"}``, plus GoTrue's
  ``error_code`` on the verify API) whose status :data:`STATUS` gives for the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from aiohttp import web

from sidecar.links import errorcodes as codes
from sidecar.proxy.clientaddr import ClientAddresses
from sidecar.services import Services
from sidecar.store.base import StoreUnavailable
from sidecar.store.ratelimit import RateLimited, enforce
from sidecar.telemetry import metrics
from sidecar.telemetry.audit import audit
from sidecar.web import pages

# Domain failure reason -> HTTP status; a reason not listed is a 401.
STATUS: Final[dict[str, int]] = {
    # the token cannot be read, or names what no longer exists
    "malformed": 401,
    "tampered": 401,
    "unknown_key": 401,
    "unknown_role": 401,
    "invalid_otp": 401,
    "invalid_link": 401,
    # the token was good once
    "expired": 410,
    "used": 410,
    "revoked": 410,
    "superseded": 410,
    # the request around the token
    "bad_request": 400,
    "redirect_mismatch": 400,
    "email_exists": 409,
    "weak_password": 422,
    "cross_origin": 403,  # a sign-in POST from another site (login CSRF)
    "rate_limited": 429,
    "store_unavailable": 503,
    "burn_unconfirmed": 503,  # the store failed after a burn was sent (see refer.redeem)
}
_BLOCK_MEMO_SIZE: Final = 4096


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a client whose redemption failed gets: ``status`` and the page for ``reason``
    (``rate_limited`` past the limit), with ``Retry-After: retry_after`` when set."""

    status: int
    reason: str
    retry_after: int | None = None


def status_of(reason: str) -> int:
    """The HTTP status for a domain failure ``reason``."""
    return STATUS.get(reason, 401)


class FailedRedemptions:
    """Counts, audits, limits and answers failed redemptions for one proxy app."""

    def __init__(self, services: Services, clients: ClientAddresses) -> None:
        self._services = services
        self._clients = clients
        # client address -> epoch second its failure window resets (this process's memo).
        self._blocked: dict[str, float] = {}

    async def answer(
        self,
        request: web.BaseRequest,
        reason: str,
        *,
        token_id: str | None = None,
        count: bool = True,
        gotrue_json: bool = False,
        retry_after: int | None = None,
    ) -> web.Response:
        """Record the failure ``reason`` and answer it (see the module docstring).

        ``count=False`` leaves ``proxy.failed_redeem_rate`` alone; ``gotrue_json`` answers
        JSON whatever the client accepts, with GoTrue's ``error_code`` (the verify API);
        ``retry_after`` goes with a 429 decided elsewhere."""
        outcome = await self.record(
            self._clients.of(request),
            reason,
            token_id=token_id,
            count=count,
            retry_after=retry_after,
        )
        if gotrue_json:
            code = codes.for_verify_failure(outcome.reason)
            return pages.failure_json(
                outcome.status, outcome.reason, retry_after=outcome.retry_after, error_code=code
            )
        return pages.failure(
            request, outcome.status, outcome.reason, retry_after=outcome.retry_after
        )

    async def record(
        self,
        client: str,
        reason: str,
        *,
        token_id: str | None = None,
        count: bool = True,
        retry_after: int | None = None,
    ) -> Outcome:
        """:meth:`answer` but the page: audit, count and limit the failure ``reason`` of
        ``client``, and return what the client is to get (the lean front writes the page
        itself: :mod:`sidecar.proxy.redeem_lane`)."""
        audit(
            "replay" if reason == "used" else "redeem_failed",
            reason=reason,
            token_id=token_id,
            client=client,
        )
        status = status_of(reason)
        if count and status != 503:
            try:
                await self._count(client)
            except RateLimited as limited:
                status, reason, retry_after = 429, "rate_limited", limited.retry_after
            except StoreUnavailable:
                status, reason = 503, "store_unavailable"
        metrics.redemption(reason)  # the outcome the client got: rate_limited included
        return Outcome(status, reason, retry_after)

    async def _count(self, client: str) -> None:
        """Count one failure of ``client``; :class:`RateLimited` past the limit."""
        now = self._services.clock()
        blocked_until = self._blocked.get(client)
        if blocked_until is not None:
            if now < blocked_until:
                raise RateLimited(max(1, int(blocked_until - now)))
            del self._blocked[client]
        try:
            limit = self._services.config.proxy.failed_redeem_rate  # a reload may change it
            await enforce(self._services.store, "redeem-fail:" + client, limit, now)
        except RateLimited as limited:
            if len(self._blocked) < _BLOCK_MEMO_SIZE:
                self._blocked[client] = now + limited.retry_after
            raise


FAILED_REDEMPTIONS = web.AppKey("failed_redemptions", FailedRedemptions)
