"""What the admin API tells a support desk about minted links and live sessions.

Every mint (refer string or auth link) is remembered as a
:class:`~sidecar.store.base.TokenRecord` until :data:`KEEP_AFTER_EXPIRY` after the link
expires, so ``GET /tokens?user_id=`` can show a user's pending *and recent* links. A record
holds what the link is for, never its text; a session is shown by a hash of its store key,
never by its cookie value.

A link's state, as ``GET /tokens/{id}`` answers it:

* ``used`` / ``revoked``: the store's burn or revocation record (with the time);
* ``expired``: past ``expires_at`` and neither of the above;
* ``superseded``: an auth link whose ``(user, type)`` now has a newer pending link, or none
  (a later link of the type, or a verified email change or recovery, ended it);
* ``unused``: still redeemable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

from sidecar.config import LINK_TYPES
from sidecar.config.values import RateLimit
from sidecar.store.base import SessionRecord, Store, TokenRecord, TokenRecordStore, TokenState
from sidecar.store.ratelimit import RateLimited
from sidecar.tokens.codec import Claims

KEEP_AFTER_EXPIRY = 7 * 86400.0  # seconds a record stays listed after its link expired
MAX_PAGE = 100
STATES = ("unused", "used", "revoked", "expired", "superseded")


async def remember_mint(store: TokenRecordStore, claims: Claims) -> None:
    """Record a minted link (raises ``StoreUnavailable`` like any store call)."""
    await store.record_token(_record(claims), claims.expires_at + KEEP_AFTER_EXPIRY)


async def remember_counted_mint(
    store: TokenRecordStore, claims: Claims, key: str, rate: RateLimit, now: float
) -> None:
    """Count a mint under ``key`` and record the link, in one store call; raise
    :class:`~sidecar.store.ratelimit.RateLimited` (nothing recorded) past ``rate``."""
    count, reset_at = await record_counted_mint(store, claims, key, rate, now)
    if count > rate.limit:
        raise RateLimited.until(reset_at, now)


def record_counted_mint(
    store: TokenRecordStore, claims: Claims, key: str, rate: RateLimit, now: float
) -> Coroutine[Any, Any, tuple[int, float]]:
    """:func:`remember_counted_mint`'s store call, not started: it answers ``(count,
    reset_at)``, and recorded the link if and only if ``count`` is at most ``rate.limit``
    (the caller's check; past it, ``RateLimited.until(reset_at, now)``)."""
    keep = claims.expires_at + KEEP_AFTER_EXPIRY
    return store.record_counted(_record(claims), keep, key, rate.window, rate.limit, now)


def _record(claims: Claims) -> TokenRecord:
    return TokenRecord(
        token_id=claims.token_id,
        kind=claims.kind,
        user_id=claims.subject,
        role=claims.role,
        created_at=float(claims.issued_at),
        expires_at=float(claims.expires_at),
        one_time=claims.one_time,
        email=claims.email,
        module=claims.module,
    )


async def describe_token(store: Store, record: TokenRecord, now: float) -> dict[str, object]:
    """The record as the admin API shows it, with its state computed now."""
    use = await store.token_use(record.token_id)
    state = use.state.value
    if use.state is TokenState.UNUSED:
        if record.expires_at <= now:
            state = "expired"
        elif record.kind in LINK_TYPES:
            pending = await store.get_link(record.user_id, record.kind)
            if pending is None or pending.token_id != record.token_id:
                state = "superseded"
    return {
        "id": record.token_id,
        "kind": record.kind,
        "state": state,
        "user_id": record.user_id,
        "role": record.role,
        "one_time": record.one_time,
        "email": record.email,
        "module": record.module,
        "created_at": iso(record.created_at),
        "expires_at": iso(record.expires_at),
        "used_at": iso(use.at) if use.state is TokenState.USED and use.at else None,
        "revoked_at": iso(use.at) if use.state is TokenState.REVOKED and use.at else None,
    }


def describe_session(session: SessionRecord) -> dict[str, object]:
    """A live session as the admin API shows it: never the cookie, nor the store key."""
    return {
        "id": session_id(session.key),
        "user_id": session.user_id,
        "role": session.role,
        "created_at": iso(session.created_at),
        "last_seen": iso(session.last_seen),
        "expires_at": iso(min(session.expires_at, session.last_seen + session.idle_timeout)),
        "token_id": session.token_id,
        "client": session.client,
        "module": session.module,
    }


def session_id(key: str) -> str:
    """A stable name for a session that opens nothing: a hash of the store's key (which is
    itself a hash of the cookie value)."""
    return hashlib.sha256(b"sidecar-session-id:" + key.encode()).hexdigest()[:32]


def iso(epoch: float) -> str:
    """RFC 3339 UTC with milliseconds (session and use times are not whole seconds)."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def encode_cursor(record: TokenRecord) -> str:
    """An opaque page cursor: ``<created_at repr>~<token id>`` (ids never hold ``~``)."""
    return f"{record.created_at!r}~{record.token_id}"


def decode_cursor(cursor: str) -> tuple[float, str] | None:
    """The ``(created_at, token_id)`` a cursor names, or None if it is not one of ours."""
    created, sep, token_id = cursor.partition("~")
    if not sep or not token_id or len(cursor) > 200:
        return None
    try:
        at = float(created)
    except ValueError:
        return None
    if at != at or at in (float("inf"), float("-inf")):  # NaN, infinities
        return None
    return at, token_id
