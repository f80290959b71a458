"""Auth links (GoTrue-style): ``POST /admin/generate_link`` checked, users saved, links minted.

No HTTP here: :mod:`sidecar.links.http` is the edge, :mod:`sidecar.links.verify` redeems.
A link is three credentials for one :class:`~sidecar.store.base.PendingLink`, the newest
of its ``(user, type)`` — minting again makes the older link dead ("superseded"):

* the **token** in ``action_link``: a JWE whose claims bind the user, the type and the
  ``redirect_to``, so the URL's ``redirect_to`` parameter cannot be swapped;
* the **OTP** (``email_otp``): digits from a CSPRNG. Six digits are brute-forceable
  offline from a plain hash, so the store keeps an HMAC keyed by a key derived from the
  active keyset key (``<kid>:<hex>``; old kids keep verifying after a rotation);
* the **hashed_token**: SHA-256 of the token text. A backend that holds the link can
  match it; ``POST /verify {type, token_hash}`` redeems it. The store holds only a
  hash of it again, so a copy of the store redeems nothing.

``email_change`` (the seed shows only ``email``; GoTrue sends ``email`` + ``new_email``):
``email`` is always the account's *current* address. With ``new_email`` the change to that
address is requested. Without it, the change already pending for the account (from an
earlier mint with ``new_email``) gets a fresh link; with none pending it is a 422. Taking
the seed's lone ``email`` as the *new* address cannot work safely: nothing would say whose
account changes, and binding it to whoever clicks lets a mailbox owner attach their
address to a victim's account and then recover it. The OTP for ``email_change`` is
verified with the current address too.

The request is checked first (:mod:`sidecar.links.request`, whose errors this module
raises too: a user who must, or must not, exist).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass, field, replace
from urllib.parse import urlencode

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sidecar.links import errorcodes as codes
from sidecar.links.passwords import hash_password
from sidecar.links.request import (
    InvalidLinkRequest,
    LinkRequest,
    UnprocessableLink,
    UserNotFound,
)
from sidecar.refer.minting import iso_utc
from sidecar.services import Services
from sidecar.store.base import PendingLink, User, UserExists
from sidecar.telemetry import metrics
from sidecar.telemetry.audit import audit
from sidecar.tokens.codec import Claims, TokenTooLong, new_token_id
from sidecar.tokens.keys import KeySet
from sidecar.tokens.records import remember_mint

_OTP_INFO = b"sidecar auth-link otp v1"


@dataclass(frozen=True, slots=True)
class GeneratedLink:
    action_link: str = field(repr=False)
    email_otp: str = field(repr=False)
    hashed_token: str = field(repr=False)
    verification_type: str
    redirect_to: str
    user: User
    token_id: str

    def to_json(self) -> dict[str, object]:
        """GoTrue's answer: the user's fields with the link's properties beside them
        (``@supabase/auth-js`` reads both from the top level)."""
        return {**user_json(self.user), **self.properties()}

    def properties(self) -> dict[str, str]:
        return {
            "action_link": self.action_link,
            "email_otp": self.email_otp,
            "hashed_token": self.hashed_token,
            "verification_type": self.verification_type,
            "redirect_to": self.redirect_to,
        }


def user_json(user: User) -> dict[str, object]:
    """The user as GoTrue spells it (a subset; no password hash, ever)."""
    return {
        "id": user.id,
        "email": user.email,
        "created_at": _when(user.created_at),
        "confirmed_at": _when(user.confirmed_at),
        "email_confirmed_at": _when(user.confirmed_at),
        "invited_at": _when(user.invited_at),
        "user_metadata": user.metadata,
    }


def _when(epoch: float | None) -> str | None:
    return None if epoch is None else iso_utc(epoch)


async def generate(services: Services, request: LinkRequest) -> GeneratedLink:
    """Create or find the user, mint the link and store it as the current one of its type.

    Raises :class:`LinkRequestError`, or ``StoreUnavailable`` from the store."""
    store, config, now = services.store, services.config, services.clock()
    kind = request.link_type
    try:
        user, new_email = await _link_user(services, request, now)
    except _CreateRaced:
        # Another request created this address between our read and our insert: it is
        # the same request twice (a double submit, two workers), so carry on as if we had
        # found the user. Once is enough: the address is taken now, the read will see it.
        user, new_email = await _link_user(services, request, now)

    role = config.roles[config.links.role]
    lifetime = min(config.links.expiry, role.max_expiry)
    claims = Claims(
        token_id=new_token_id(),
        subject=user.id,
        role=role.name,
        issued_at=int(now),
        expires_at=int(now + lifetime),
        one_time=True,
        kind=kind,
        email=user.email,
        redirect_to=request.redirect_to,
    )
    try:
        token = services.codec.seal(claims)
    except TokenTooLong as exc:
        raise InvalidLinkRequest("Invalid request", str(exc)) from None
    otp = "".join(secrets.choice("0123456789") for _ in range(config.links.otp_length))
    hashed_token = hashlib.sha256(token.encode()).hexdigest()
    await store.put_link(
        PendingLink(
            user_id=user.id,
            link_type=kind,
            token_id=claims.token_id,
            hashed_token=lookup_key(hashed_token),
            otp_hash=otp_hash(config.keyset, claims.token_id, otp),
            expires_at=claims.expires_at,
            new_email=new_email,
        )
    )
    await remember_mint(store, claims)
    query = urlencode({"token": token, "type": kind, "redirect_to": request.redirect_to})
    audit(
        "mint",
        kind=kind,
        token_id=claims.token_id,
        user_id=user.id,
        role=role.name,
        expires_at=iso_utc(claims.expires_at),
    )
    metrics.mint(kind)
    return GeneratedLink(
        action_link=f"{config.public_url}{config.proxy.prefix}/verify?{query}",
        email_otp=otp,
        hashed_token=hashed_token,
        verification_type=kind,
        redirect_to=request.redirect_to,
        user=user,
        token_id=claims.token_id,
    )


class _CreateRaced(Exception):
    """``create_user`` met the address created by a concurrent request."""


async def _link_user(
    services: Services, request: LinkRequest, now: float
) -> tuple[User, str | None]:
    """The user the link is for (created or updated as its type says) and, for
    ``email_change``, the new address. Raises :class:`_CreateRaced` once per race."""
    user = await services.store.get_user_by_email(request.email)
    kind = request.link_type
    if kind in ("signup", "invite"):
        if user is not None and user.confirmed_at is not None:
            raise UnprocessableLink(
                "User already registered",
                "a confirmed user has this email",
                error_code=codes.USER_ALREADY_EXISTS,
            )
        return await _save_user(services, user, request, now), None
    if user is None and kind == "magiclink" and services.config.links.create_user_on_magiclink:
        return await _save_user(services, None, request, now), None
    if user is None:
        raise UserNotFound("User not found", f"no user has this email; {kind} needs one")
    if request.data is not None:
        raise InvalidLinkRequest("Invalid data", "data is only used when the link creates a user")
    if kind == "email_change":
        return user, await _new_address(services, user, request.new_email, now)
    return user, None


async def _save_user(
    services: Services, user: User | None, request: LinkRequest, now: float
) -> User:
    password_hash = None
    if request.password is not None:
        # scrypt costs tens of milliseconds of CPU: keep the event loop free meanwhile.
        password_hash = await asyncio.to_thread(hash_password, request.password)
    invited_at = now if request.link_type == "invite" else None
    try:
        if user is None:
            user = User(
                id=str(uuid.uuid4()),
                email=request.email,
                created_at=now,
                invited_at=invited_at,
                password_hash=password_hash,
                metadata=request.data or {},
            )
            try:
                await services.store.create_user(user)
            except UserExists:
                raise _CreateRaced from None
            return user
        user = replace(
            user,
            invited_at=invited_at or user.invited_at,
            password_hash=password_hash or user.password_hash,
            metadata={**user.metadata, **(request.data or {})},
        )
        await services.store.update_user(user)
    except UserExists:
        raise UnprocessableLink(
            "User already registered",
            "a user has this email",
            error_code=codes.USER_ALREADY_EXISTS,
        ) from None
    return user


async def _new_address(services: Services, user: User, new_email: str | None, now: float) -> str:
    if new_email is None:
        pending = await services.store.get_link(user.id, "email_change")
        if pending is None or pending.new_email is None or pending.expires_at <= now:
            raise UnprocessableLink(
                "No email change pending",
                "send new_email with the new address (email is the current address)",
            )
        new_email = pending.new_email
    if await services.store.get_user_by_email(new_email) is not None:
        raise UnprocessableLink(
            "Email address already registered",
            "A user with new_email already exists",
            error_code=codes.EMAIL_EXISTS,
        )
    return new_email


def lookup_key(hashed_token: str) -> str:
    """What the store indexes a link by: a hash of the ``hashed_token`` credential."""
    return hashlib.sha256(b"sidecar-link:" + hashed_token.encode()).hexdigest()


def otp_hash(keyset: KeySet, token_id: str, otp: str, kid: str | None = None) -> str:
    """``<kid>:<HMAC-SHA256(key derived from that keyset key, token_id:otp)>``."""
    kid = kid or keyset.active_kid
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_OTP_INFO).derive(
        keyset.keys[kid]
    )
    mac = hmac.new(key, f"{token_id}:{otp}".encode(), hashlib.sha256).hexdigest()
    return f"{kid}:{mac}"


def otp_matches(keyset: KeySet, link: PendingLink, otp: str) -> bool:
    """Constant-time check of ``otp`` against the link's stored HMAC."""
    kid, _, _ = link.otp_hash.partition(":")
    if kid not in keyset.keys:
        return False
    expected = otp_hash(keyset, link.token_id, otp, kid)
    return hmac.compare_digest(expected.encode(), link.otp_hash.encode())
