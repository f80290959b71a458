"""Keysets: several 256-bit keys, each with a ``kid``, one of them active.

The file is a JWK Set (RFC 7517) with one extra member, ``active``, so any JOSE library can
load it::

    {"active": "k-20261122-3f9a", "keys": [{"kty": "oct", "kid": "k-20261122-3f9a",
      "alg": "dir", "use": "enc", "k": "<base64url of 32 bytes>"}, ...]}

The active key encrypts; every key decrypts, so keys rotate without breaking links already
sent (newest first, like itsdangerous' ``secret_keys``).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

KEY_BYTES = 32
_KID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class KeysetError(ValueError):
    """The keyset text is not a valid keyset. Messages never include key material."""


@dataclass(frozen=True, slots=True, repr=False)
class KeySet:
    active_kid: str
    keys: Mapping[str, bytes]

    @property
    def active_key(self) -> bytes:
        return self.keys[self.active_kid]

    def __repr__(self) -> str:
        return f"KeySet(active={self.active_kid!r}, kids={sorted(self.keys)!r})"

    def to_json(self) -> str:
        jwks = [
            {"kty": "oct", "kid": kid, "alg": "dir", "use": "enc", "k": _b64(raw)}
            for kid, raw in self.keys.items()
        ]
        return json.dumps({"active": self.active_kid, "keys": jwks}, indent=2) + "\n"

    def with_new_key(self, kid: str | None = None) -> KeySet:
        """A copy holding one more random key, which becomes the active one."""
        kid = kid or new_kid()
        if kid in self.keys:
            raise KeysetError(f"kid {kid!r} is already in the keyset")
        keys = {kid: secrets.token_bytes(KEY_BYTES), **self.keys}
        return KeySet(active_kid=kid, keys=MappingProxyType(keys))


def new_kid(now: float | None = None) -> str:
    day = time.strftime("%Y%m%d", time.gmtime(time.time() if now is None else now))
    return f"k-{day}-{secrets.token_hex(3)}"


def generate_keyset(kid: str | None = None) -> KeySet:
    kid = kid or new_kid()
    return KeySet(active_kid=kid, keys=MappingProxyType({kid: secrets.token_bytes(KEY_BYTES)}))


def parse_keyset(text: str) -> KeySet:
    try:
        doc = json.loads(text)
    except ValueError:
        raise KeysetError("not valid JSON (expected a JWK Set with an 'active' kid)") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list) or not doc["keys"]:
        raise KeysetError("expected an object with a non-empty 'keys' list")
    keys: dict[str, bytes] = {}
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
    active = doc.get("active")
    if not isinstance(active, str) or active not in keys:
        raise KeysetError(f"active: expected the kid of one of the keys ({', '.join(keys)})")
    return KeySet(active_kid=active, keys=MappingProxyType(keys))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(value: object) -> bytes | None:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", value):
        return None
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return None
