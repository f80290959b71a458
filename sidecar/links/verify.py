"""Redeeming auth links: the token (``GET``), the OTP or the ``hashed_token`` (``POST``).

No HTTP here (:mod:`sidecar.links.http` is the edge). Every path ends in :func:`_consume`:
burn the link's token id exactly once (across replicas), apply the type's effect, delete
the pending link. Effects: every type confirms an unconfirmed address (the user proved they
hold the mailbox); ``email_change`` switches to the new address; ``recovery`` and
``invite`` set a new password when one is sent with the ``POST``.

A link is accepted only while it is the *current* one of its ``(user, type)``: a newer mint
makes it "superseded". The token's ``redirect_to`` claim decides where the browser goes;
the query's copy must agree, and the claim must still be allowed by today's config.

Errors: :class:`VerifyFailed` with a ``reason`` the failure pages know (malformed,
tampered, unknown_key, expired, used, revoked, superseded, invalid_otp, invalid_link,
redirect_mismatch, email_exists, weak_password, bad_request, and burn_unconfirmed when the
store fails once the burn is sent); :class:`~sidecar.store.ratelimit.RateLimited` for OTP
guesses; ``StoreUnavailable`` from the store before any burn.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass, replace

from sidecar.config import LINK_TYPES, Config
from sidecar.links.generate import lookup_key, otp_matches
from sidecar.links.passwords import PasswordPolicyError, check_policy, hash_password
from sidecar.links.redirects import RedirectRejected, allow_list, parse_url
from sidecar.links.request import normalise_email
from sidecar.services import Services
from sidecar.store.base import (
    BurnResult,
    PendingLink,
    StoreUnavailable,
    TokenState,
    User,
    UserExists,
)
from sidecar.store.ratelimit import enforce
from sidecar.telemetry.audit import audit
from sidecar.tokens.codec import Claims, ExpiredToken, TokenError

_OTP = re.compile(r"[0-9]{6,10}")
_TOKEN_HASH = re.compile(r"[0-9a-f]{64}")
PASSWORD_TYPES = ("recovery", "invite")
# supabase-js's verifyOtp({type: "email"}): GoTrue's one name for the code of a magic
# link or of a signup confirmation, whichever the address has pending.
EMAIL_OTP = "email"
EMAIL_OTP_TYPES = ("magiclink", "signup")
# After these, a link still pending for the account may sit in a mailbox that no longer
# belongs to it (email change) or be the attacker's way back in (recovery): as GoTrue
# clears a user's tokens on verify, the user's other auth links die. Refer links are the
# backend's own flows and are left alone.
KILLS_OTHER_LINKS = ("email_change", "recovery")


class VerifyFailed(Exception):
    """Verification refused; ``reason`` is a short code (see the module docstring)."""

    def __init__(self, reason: str, token_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.token_id = token_id


@dataclass(frozen=True, slots=True)
class Checked:
    claims: Claims
    link: PendingLink


@dataclass(frozen=True, slots=True)
class Verified:
    """A redeemed link: the user after its effect, and where the browser goes next."""

    user: User
    link_type: str
    token_id: str
    redirect_to: str | None = None
    password_changed: bool = False


async def check_token(
    services: Services, token: str, link_type: str, redirect_to: str | None
) -> Checked:
    """Open an ``action_link`` token and find its current link, consuming nothing (``HEAD``
    and the confirm page stop here). Raise :class:`VerifyFailed`."""
    try:
        claims = services.codec.open(token, services.clock())
    except ExpiredToken as exc:
        raise VerifyFailed("expired", exc.claims.token_id) from None
    except TokenError as exc:
        raise VerifyFailed(exc.reason) from None
    token_id = claims.token_id
    if claims.kind not in LINK_TYPES or claims.kind != link_type or claims.redirect_to is None:
        raise VerifyFailed("malformed", token_id)
    if redirect_to is not None and not _same_url(redirect_to, claims.redirect_to):
        raise VerifyFailed("redirect_mismatch", token_id)
    if not _still_allowed(services.config, claims.redirect_to):
        raise VerifyFailed("redirect_mismatch", token_id)
    link = await services.store.get_link(claims.subject, claims.kind)
    if link is None or link.token_id != token_id:
        state = await services.store.token_state(token_id)
        raise VerifyFailed("superseded" if state is TokenState.UNUSED else state.value, token_id)
    return Checked(claims, link)


async def redeem_token(
    services: Services, token: str, link_type: str, redirect_to: str | None
) -> Verified:
    """``GET <prefix>/verify``: check, burn once, apply the effect; redirect per the claims."""
    checked = await check_token(services, token, link_type, redirect_to)
    verified = await _consume(services, checked.link, None)
    return replace(verified, redirect_to=checked.claims.redirect_to)


async def verify_otp(
    services: Services,
    link_type: str,
    email: str,
    otp: str,
    *,
    client: str,
    password: str | None = None,
) -> Verified:
    """``POST <prefix>/verify {type, email, token}``. Every guess counts against
    ``links.otp_rate`` per client address and per email (raise ``RateLimited``); each wrong
    code counts against the link, which dies after ``links.max_otp_attempts``."""
    address = normalise_email(email)
    types = _types(link_type)
    if not types or address is None:
        raise VerifyFailed("malformed")
    store, links, now = services.store, services.config.links, services.clock()
    await enforce(store, "otp-client:" + client, links.otp_rate, now)
    await enforce(store, "otp-email:" + _digest(address), links.otp_rate, now)
    user = await store.get_user_by_email(address)
    pending = [] if user is None else [await store.get_link(user.id, t) for t in types]
    candidates = [link for link in pending if link is not None]
    if not candidates:
        raise VerifyFailed("invalid_otp")
    keyset = services.config.keyset
    good = _OTP.fullmatch(otp) is not None
    link = next((c for c in candidates if good and otp_matches(keyset, c, otp)), None)
    if link is None:
        for wrong in candidates:
            if wrong.expires_at > now:
                await _count_wrong_code(services, wrong)
        # The same answer as for an address with no link: a wrong code must not tell
        # whether the address has a (now expired) pending link.
        raise VerifyFailed("invalid_otp", candidates[0].token_id)
    if link.expires_at <= now:
        raise VerifyFailed("expired", link.token_id)
    return await _consume(services, link, password)


async def _count_wrong_code(services: Services, link: PendingLink) -> None:
    store = services.store
    failures = await store.record_failed_attempt(link.user_id, link.link_type)
    if failures >= services.config.links.max_otp_attempts:
        await store.revoke(link.token_id, link.expires_at)
        await store.delete_link(link.user_id, link.link_type)
        audit("otp_locked", kind=link.link_type, token_id=link.token_id, user_id=link.user_id)


def _types(link_type: str) -> tuple[str, ...]:
    """The link types a ``type`` in a verify body stands for (none: not a type)."""
    if link_type == EMAIL_OTP:
        return EMAIL_OTP_TYPES
    return (link_type,) if link_type in LINK_TYPES else ()


async def verify_token_hash(
    services: Services, link_type: str, token_hash: str, *, password: str | None = None
) -> Verified:
    """``POST <prefix>/verify {type, token_hash}`` with a link's ``hashed_token``."""
    types = _types(link_type)
    if not types or not _TOKEN_HASH.fullmatch(token_hash):
        raise VerifyFailed("malformed")
    link = await services.store.get_link_by_hash(lookup_key(token_hash))
    if link is None or link.link_type not in types:
        raise VerifyFailed("invalid_link")
    if link.expires_at <= services.clock():
        raise VerifyFailed("expired", link.token_id)
    return await _consume(services, link, password)


async def _consume(services: Services, link: PendingLink, password: str | None) -> Verified:
    """Burn the link once and apply its type's effect to the user."""
    store, kind = services.store, link.link_type
    if password is not None:
        if kind not in PASSWORD_TYPES:
            raise VerifyFailed("bad_request", link.token_id)
        try:
            check_policy(password)
        except PasswordPolicyError:
            raise VerifyFailed("weak_password", link.token_id) from None
    # Checked before the burn so a taken address does not use the link up (the update
    # after it still catches a race).
    if link.new_email is not None and await store.get_user_by_email(link.new_email) is not None:
        raise VerifyFailed("email_exists", link.token_id)
    try:
        return await _burn_and_apply(services, link, password)
    except StoreUnavailable:
        # Once the burn is sent a store failure cannot say whether it landed (a frozen
        # Redis may still run the queued write, a replica may not have acknowledged it):
        # the honest answer, as refer links give it (``refer.redeem``).
        raise VerifyFailed("burn_unconfirmed", link.token_id) from None


async def _burn_and_apply(services: Services, link: PendingLink, password: str | None) -> Verified:
    """The part of :func:`_consume` from the burn on: every store failure here is after it."""
    store, now, kind = services.store, services.clock(), link.link_type
    result = await store.burn(link.token_id, link.expires_at)
    if result is not BurnResult.BURNED:
        raise VerifyFailed(
            "used" if result is BurnResult.ALREADY_USED else "revoked", link.token_id
        )
    user = await store.get_user(link.user_id)
    if user is None:
        raise VerifyFailed("revoked", link.token_id)
    updated = replace(user, confirmed_at=user.confirmed_at or now)
    if kind == "email_change" and link.new_email is not None:
        updated = replace(updated, email=link.new_email, confirmed_at=now)
    if password is not None:
        # scrypt costs tens of milliseconds of CPU: keep the event loop free meanwhile.
        updated = replace(updated, password_hash=await asyncio.to_thread(hash_password, password))
    if updated != user:
        try:
            await store.update_user(updated)
        except UserExists:
            raise VerifyFailed("email_exists", link.token_id) from None
    current = await store.get_link(link.user_id, kind)
    if current is not None and current.token_id == link.token_id:
        await store.delete_link(link.user_id, kind)
    if kind in KILLS_OTHER_LINKS:
        await _kill_other_links(services, link)
    audit("redeem", kind=kind, token_id=link.token_id, user_id=user.id)
    return Verified(updated, kind, link.token_id, password_changed=password is not None)


async def _kill_other_links(services: Services, redeemed: PendingLink) -> None:
    """Revoke and drop every other pending auth link of the user. The revocation is what
    makes a link dead (its burn fails even if it is read again meanwhile); dropping the
    record makes its OTP and ``hashed_token`` unknown, like any never-issued code."""
    store = services.store
    for other in LINK_TYPES:
        if other == redeemed.link_type:
            continue
        pending = await store.get_link(redeemed.user_id, other)
        if pending is None:
            continue
        await store.revoke(pending.token_id, pending.expires_at)
        current = await store.get_link(redeemed.user_id, other)
        if current is not None and current.token_id == pending.token_id:
            await store.delete_link(redeemed.user_id, other)
        audit(
            "revoke",
            token_id=pending.token_id,
            user_id=redeemed.user_id,
            kind=other,
            reason=redeemed.link_type,
        )


def _same_url(given: str, bound: str) -> bool:
    if given == bound:
        return True
    try:
        return str(parse_url(given)) == bound
    except RedirectRejected:
        return False


def _still_allowed(config: Config, url: str) -> bool:
    """The bound redirect must still be allowed now (the allow-list may have shrunk)."""
    if url == config.links.default_redirect:
        return True
    try:
        return allow_list(config.links.redirect_allow).check(url) == url
    except RedirectRejected:
        return False


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]
