"""Keysets: several 256-bit keys, each with a ``kid``, one of them active.

The file is a JWK Set (RFC 7517) with one extra member, ``active``, so any JOSE library can
load it::

    {"active": "k-20261122-3f9a", "keys": [{"kty": "oct", "kid": "k-20261122-3f9a",
      "alg": "dir", "use": "enc", "k": "<base64url of 32 bytes>"}, ...]}

The active key encrypts; every key decrypts, so keys rotate without breaking links already
sent (like itsdangerous' ``secret_keys``, except that the ``active`` member — not the
position in ``keys`` — names the key that encrypts; itsdangerous orders its keys
oldest→newest and signs with the last).

Each key may also carry ``created`` and ``deactivated`` (RFC 3339 UTC), which give its
:meth:`KeySet.state`: ``active``; ``staged`` (added to decrypt, never active yet: the first
step of a rolling rotation); ``previous`` (was active until ``deactivated``: links minted
with it live at most the maximum expiry after that); ``decrypt-only`` (no record, as in
files written before these members existed). JOSE libraries ignore the extra members.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Literal

from sidecar.tokens.b64 import b64decode, b64encode

KEY_BYTES = 32
_KID = re.compile(r"[A-Za-z0-9._-]{1,64}")
KeyState = Literal["active", "staged", "previous", "decrypt-only"]


class KeysetError(ValueError):
    """The keyset text is not a valid keyset. Messages never include key material."""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """When a key was made and when it stopped being the active one (epoch seconds)."""

    created: float | None = None
    deactivated: float | None = None


_NO_RECORD = KeyRecord()


@dataclass(frozen=True, slots=True, repr=False)
class KeySet:
    active_kid: str
    keys: Mapping[str, bytes]
    records: Mapping[str, KeyRecord] = field(default_factory=lambda: MappingProxyType({}))

    def __repr__(self) -> str:
        return f"KeySet(active={self.active_kid!r}, kids={sorted(self.keys)!r})"

    def record(self, kid: str) -> KeyRecord:
        return self.records.get(kid, _NO_RECORD)

    def state(self, kid: str) -> KeyState:
        if kid == self.active_kid:
            return "active"
        record = self.record(kid)
        if record.deactivated is not None:
            return "previous"
        return "staged" if record.created is not None else "decrypt-only"

    def to_json(self) -> str:
        jwks: list[dict[str, str]] = []
        for kid, raw in self.keys.items():
            jwk = {"kty": "oct", "kid": kid, "alg": "dir", "use": "enc", "k": b64encode(raw)}
            record = self.record(kid)
            if record.created is not None:
                jwk["created"] = _rfc3339(record.created)
            if record.deactivated is not None:
                jwk["deactivated"] = _rfc3339(record.deactivated)
            jwks.append(jwk)
        return json.dumps({"active": self.active_kid, "keys": jwks}, indent=2) + "\n"

    def with_new_key(
        self, kid: str | None = None, *, activate: bool = True, now: float | None = None
    ) -> KeySet:
        """A copy holding one more random key: the active one, or ``staged`` (decrypt-only
        until :meth:`activate`) when ``activate`` is false."""
        now = time.time() if now is None else now
        kid = kid or new_kid(now)
        if kid in self.keys:
            raise KeysetError(f"kid {kid!r} is already in the keyset")
        keys = {kid: secrets.token_bytes(KEY_BYTES), **self.keys}
        records = {kid: KeyRecord(created=now), **self.records}
        staged = KeySet(self.active_kid, MappingProxyType(keys), MappingProxyType(records))
        return staged.activate(kid, now=now) if activate else staged

    def activate(self, kid: str, *, now: float | None = None) -> KeySet:
        """A copy whose active key is ``kid``; the one it replaces becomes ``previous``."""
        if kid not in self.keys:
            raise KeysetError(f"kid {kid!r} is not in the keyset ({', '.join(self.keys)})")
        if kid == self.active_kid:
            return self
        now = time.time() if now is None else now
        records = dict(self.records)
        records[self.active_kid] = replace(self.record(self.active_kid), deactivated=now)
        records[kid] = replace(self.record(kid), deactivated=None)
        return KeySet(kid, self.keys, MappingProxyType(records))

    def retire(self, kid: str) -> KeySet:
        """A copy without ``kid``: links sealed with it stop opening. Never the active key."""
        if kid not in self.keys:
            raise KeysetError(f"kid {kid!r} is not in the keyset ({', '.join(self.keys)})")
        if kid == self.active_kid:
            raise KeysetError(
                f"kid {kid!r} is the active key; activate another one first (--activate KID)"
            )
        keys = {k: v for k, v in self.keys.items() if k != kid}
        records = {k: v for k, v in self.records.items() if k != kid}
        return KeySet(self.active_kid, MappingProxyType(keys), MappingProxyType(records))


def new_kid(now: float | None = None) -> str:
    day = time.strftime("%Y%m%d", time.gmtime(time.time() if now is None else now))
    return f"k-{day}-{secrets.token_hex(3)}"


def generate_keyset(kid: str | None = None, *, now: float | None = None) -> KeySet:
    now = time.time() if now is None else now
    kid = kid or new_kid(now)
    return KeySet(
        active_kid=kid,
        keys=MappingProxyType({kid: secrets.token_bytes(KEY_BYTES)}),
        records=MappingProxyType({kid: KeyRecord(created=now)}),
    )


def parse_keyset(text: str) -> KeySet:
    try:
        doc = json.loads(text)
    except ValueError:
        raise KeysetError("not valid JSON (expected a JWK Set with an 'active' kid)") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list) or not doc["keys"]:
        raise KeysetError("expected an object with a non-empty 'keys' list")
    keys: dict[str, bytes] = {}
    records: dict[str, KeyRecord] = {}
    for i, jwk in enumerate(doc["keys"]):
        if not isinstance(jwk, dict) or jwk.get("kty") != "oct":
            raise KeysetError(f"keys[{i}]: expected a symmetric JWK with kty 'oct'")
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not _KID.fullmatch(kid):
            raise KeysetError(f"keys[{i}].kid: expected 1-64 of A-Z a-z 0-9 . _ -")
        if kid in keys:
            raise KeysetError(f"keys[{i}].kid: {kid!r} appears twice")
        if jwk.get("alg", "dir") != "dir":
            raise KeysetError(f"keys[{i}].alg: expected 'dir'")
        raw = _unb64(jwk.get("k"))
        if raw is None or len(raw) != KEY_BYTES:
            raise KeysetError(f"keys[{i}].k: expected base64url of exactly {KEY_BYTES} bytes")
        keys[kid] = raw
        created, deactivated = _time(jwk, "created", i), _time(jwk, "deactivated", i)
        if created is not None or deactivated is not None:
            records[kid] = KeyRecord(created, deactivated)
    active = doc.get("active")
    if not isinstance(active, str) or active not in keys:
        raise KeysetError(f"active: expected the kid of one of the keys ({', '.join(keys)})")
    return KeySet(active, MappingProxyType(keys), MappingProxyType(records))


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# A record's time as ``datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")`` reads it, its
# leniencies included (one-digit fields, a space before a one-digit day, any Unicode digit,
# case ignored), without its module: strptime's first call builds the locale's tables and
# compiles its expressions, ~0.3 MiB that a served process (which reads its keyset once)
# would keep for its whole life.
_UTC_TIME = re.compile(
    r"(\d\d\d\d)-(1[0-2]|0[1-9]|[1-9])-(3[0-1]|[1-2]\d|0[1-9]|[1-9]| [1-9])"
    r"T(2[0-3]|[0-1]\d|\d):([0-5]\d|\d):(6[0-1]|[0-5]\d|\d)Z",
    re.IGNORECASE,
)


def _time(jwk: Mapping[str, object], member: str, i: int) -> float | None:
    value = jwk.get(member)
    if value is None:
        return None
    try:
        if not isinstance(value, str) or not value.endswith("Z"):
            raise ValueError
        return parse_utc_time(value)
    except ValueError:
        raise KeysetError(
            f"keys[{i}].{member}: expected a UTC time like 2026-11-30T12:00:00Z"
        ) from None


def parse_utc_time(value: str) -> float:
    """Seconds since the epoch of ``value``, a UTC time such as ``2026-11-30T12:00:00Z``;
    ValueError for anything ``datetime.strptime`` would refuse with that format (a day or
    second that does not exist included)."""
    found = _UTC_TIME.fullmatch(value)
    if found is None:
        raise ValueError(f"not a UTC time: {value!r}")
    year, month, day, hour, minute, second = (int(part) for part in found.groups())
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


def _unb64(value: object) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return b64decode(value)
    except ValueError:
        return None
