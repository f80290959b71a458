"""The steps of ``POST /referstring``, shared by its aiohttp handler
(:func:`sidecar.admin.api.referstring`) and the lean front's lane
(:class:`sidecar.admin.lane.MintLane`), so that both answer the same.

:func:`mint_link` checks the body and seals the link (:class:`RequestError` 400),
:func:`keep_link` counts the mint against ``admin.mint_rate`` and records the link in one
store call (:class:`~sidecar.store.ratelimit.RateLimited` past the rate, nothing recorded;
``StoreUnavailable`` as any store call), and :func:`announce` counts it, writes its audit
line and gives the answer's document.
"""

from __future__ import annotations

from collections.abc import Awaitable

from sidecar.admin.guards import Guards, RequestError
from sidecar.refer.minting import MintedLink, MintError, mint_refer, parse_refer_request
from sidecar.services import Services
from sidecar.telemetry import metrics
from sidecar.telemetry.audit import audit_mint
from sidecar.tokens.codec import TokenTooLong
from sidecar.tokens.records import remember_counted_mint


def mint_link(services: Services, body: dict[str, object]) -> MintedLink:
    """The link ``body`` asks for, sealed; :class:`RequestError` 400 naming the field."""
    try:
        mint = parse_refer_request(body, services.config)
        return mint_refer(
            mint, services.codec, public_url=services.config.public_url, now=services.clock()
        )
    except MintError as exc:
        raise RequestError(400, str(exc), field=exc.field) from None
    except TokenTooLong as too_long:  # its own name: compiled, `exc` is typed MintError
        raise RequestError(400, str(too_long), field="additionalParams") from None


def keep_link(services: Services, guards: Guards, link: MintedLink) -> Awaitable[None]:
    """Count the mint and record the link: one store call (one SQLite transaction), to be
    awaited. Not a coroutine itself: one coroutine level fewer on every mint."""
    key, rate = guards.quota()
    return remember_counted_mint(services.store, link.claims, key, rate, services.clock())


def announce(link: MintedLink) -> str:
    """A kept link: counted, audit-logged (its id, never its text), and its answer's JSON."""
    claims = link.claims
    metrics.mint(claims.kind)
    expires_at = link.expires_at_iso
    audit_mint(
        claims.token_id,
        claims.subject,
        claims.role,
        claims.kind,
        claims.one_time,
        expires_at,
        claims.module,
    )
    return link.answer_text(expires_at)
