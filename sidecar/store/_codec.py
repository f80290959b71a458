"""Encoding shared by the backends: JSON columns, email keys, rate-limit windows.

Everything read back from storage is checked, so a corrupt or foreign record becomes
:class:`StoreUnavailable` instead of a wrongly typed object deep inside a request.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

from sidecar.store.base import PendingLink, SessionRecord, StoreUnavailable, TokenRecord, User


def email_key(email: str) -> str:
    """The form emails are compared in: nobody expects ``Ann@x.org`` and ``ann@x.org``
    to be two accounts, so uniqueness and lookups ignore case."""
    return email.strip().casefold()


def window_reset(window: float, now: float) -> float:
    """End of the fixed ``window``-second window containing ``now``."""
    if not window > 0:
        raise ValueError(f"rate-limit window must be > 0 seconds, got {window!r}")
    return float((math.floor(now / window) + 1) * window)


def session_dead_at(expires_at: float, last_seen: float, idle_timeout: float) -> float:
    """First instant at which a session is no longer live (see ``SessionRecord.is_live``)."""
    return min(expires_at, last_seen + idle_timeout)


def dump_json(value: Mapping[str, object]) -> str:
    # Most sessions carry no params: their "{}" costs no encoder (every redemption writes one).
    return json.dumps(value, separators=(",", ":"), sort_keys=True) if value else "{}"


def load_object(text: str) -> dict[str, object]:
    """A JSON object written by :func:`dump_json`."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise StoreUnavailable(f"corrupt JSON in store: {exc}") from exc
    if not isinstance(value, dict):
        raise StoreUnavailable(f"corrupt record in store: expected an object, got {text[:40]!r}")
    return {str(k): v for k, v in value.items()}


def load_str_map(text: str) -> dict[str, str]:
    raw = load_object(text)
    if not all(isinstance(v, str) for v in raw.values()):
        raise StoreUnavailable("corrupt record in store: params must map strings to strings")
    return {k: str(v) for k, v in raw.items()}


def get_str(record: Mapping[str, object], name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str):
        raise StoreUnavailable(f"corrupt record in store: {name} is {type(value).__name__}")
    return value


def get_opt_str(record: Mapping[str, object], name: str) -> str | None:
    value = record.get(name)
    return None if value is None else get_str(record, name)


def get_float(record: Mapping[str, object], name: str) -> float:
    """A number, stored natively (SQLite, JSON) or as its ``repr`` (Redis hash fields)."""
    value = record.get(name)
    if isinstance(value, bool):
        raise StoreUnavailable(f"corrupt record in store: {name} is a bool")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError as exc:
            raise StoreUnavailable(f"corrupt record in store: {name}={value!r}") from exc
    raise StoreUnavailable(f"corrupt record in store: {name} is {type(value).__name__}")


def get_opt_float(record: Mapping[str, object], name: str) -> float | None:
    return None if record.get(name) is None else get_float(record, name)


def user_to_json(user: User) -> str:
    return dump_json(
        {
            "id": user.id,
            "email": user.email,
            "created_at": user.created_at,
            "confirmed_at": user.confirmed_at,
            "invited_at": user.invited_at,
            "password_hash": user.password_hash,
            "metadata": user.metadata,
        }
    )


def user_from_json(text: str) -> User:
    record = load_object(text)
    metadata = record.get("metadata")
    if not isinstance(metadata, dict):
        raise StoreUnavailable("corrupt record in store: user metadata is not an object")
    return User(
        id=get_str(record, "id"),
        email=get_str(record, "email"),
        created_at=get_float(record, "created_at"),
        confirmed_at=get_opt_float(record, "confirmed_at"),
        invited_at=get_opt_float(record, "invited_at"),
        password_hash=get_opt_str(record, "password_hash"),
        metadata={str(k): v for k, v in metadata.items()},
    )


def session_fields(session: SessionRecord) -> dict[str, str]:
    """A session as flat string fields (a Redis hash); ``None`` fields are left out."""
    fields = {
        "key": session.key,
        "user_id": session.user_id,
        "role": session.role,
        "params": dump_json(session.params),
        "created_at": repr(session.created_at),
        "expires_at": repr(session.expires_at),
        "idle_timeout": repr(session.idle_timeout),
        "last_seen": repr(session.last_seen),
        "token_id": session.token_id,
        "email": session.email,
        "module": session.module,
        "client": session.client,
    }
    return {k: v for k, v in fields.items() if v is not None}


def session_from_fields(record: Mapping[str, object]) -> SessionRecord:
    """Inverse of :func:`session_fields`; also reads a SQLite row turned into a dict."""
    return SessionRecord(
        key=get_str(record, "key"),
        user_id=get_str(record, "user_id"),
        role=get_str(record, "role"),
        params=load_str_map(get_str(record, "params")),
        created_at=get_float(record, "created_at"),
        expires_at=get_float(record, "expires_at"),
        idle_timeout=get_float(record, "idle_timeout"),
        last_seen=get_float(record, "last_seen"),
        token_id=get_str(record, "token_id"),
        email=get_opt_str(record, "email"),
        module=get_opt_str(record, "module"),
        client=get_opt_str(record, "client"),
    )


def token_fields(record: TokenRecord) -> dict[str, str]:
    """A minted-link record as flat string fields (a Redis hash); ``None`` left out."""
    fields = {
        "token_id": record.token_id,
        "kind": record.kind,
        "user_id": record.user_id,
        "role": record.role,
        "created_at": repr(record.created_at),
        "expires_at": repr(record.expires_at),
        "one_time": "1" if record.one_time else "0",
        "email": record.email,
        "module": record.module,
    }
    return {k: v for k, v in fields.items() if v is not None}


def token_from_fields(record: Mapping[str, object]) -> TokenRecord:
    """Inverse of :func:`token_fields`; also reads a SQLite row turned into a dict."""
    one_time = record.get("one_time")
    if one_time not in ("1", "0", 1, 0):
        raise StoreUnavailable(f"corrupt record in store: one_time={one_time!r}")
    return TokenRecord(
        token_id=get_str(record, "token_id"),
        kind=get_str(record, "kind"),
        user_id=get_str(record, "user_id"),
        role=get_str(record, "role"),
        created_at=get_float(record, "created_at"),
        expires_at=get_float(record, "expires_at"),
        one_time=one_time in ("1", 1),
        email=get_opt_str(record, "email"),
        module=get_opt_str(record, "module"),
    )


def link_fields(link: PendingLink) -> dict[str, str]:
    """A link as flat string fields (a Redis hash); ``None`` fields are left out."""
    fields = {
        "user_id": link.user_id,
        "link_type": link.link_type,
        "token_id": link.token_id,
        "hashed_token": link.hashed_token,
        "otp_hash": link.otp_hash,
        "expires_at": repr(link.expires_at),
        "new_email": link.new_email,
        "failed_attempts": str(link.failed_attempts),
    }
    return {k: v for k, v in fields.items() if v is not None}


def link_from_fields(record: Mapping[str, object]) -> PendingLink:
    """Inverse of :func:`link_fields`; also reads a SQLite row turned into a dict."""
    attempts = get_float(record, "failed_attempts")
    return PendingLink(
        user_id=get_str(record, "user_id"),
        link_type=get_str(record, "link_type"),
        token_id=get_str(record, "token_id"),
        hashed_token=get_str(record, "hashed_token"),
        otp_hash=get_str(record, "otp_hash"),
        expires_at=get_float(record, "expires_at"),
        new_email=get_opt_str(record, "new_email"),
        failed_attempts=int(attempts),
    )
