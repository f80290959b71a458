"""Password hashing with scrypt (``cryptography``'s KDF), stored as a PHC-style string.

    $scrypt$ln=14,r=8,p=1$<salt, base64 without padding>$<hash, base64 without padding>

``ln`` is log2 of the cost ``N``. The parameters travel with the hash, so they can be
raised later without invalidating stored hashes (:func:`needs_rehash` says when). The
defaults (N=2^14, r=8, p=1: 16 MiB) are the scrypt paper's interactive-login setting and
cost about 25-50 ms on one core: enough to make offline guessing expensive, cheap enough
that a burst of sign-ups does not stall the process. Hashing is CPU-bound and synchronous;
callers on the event loop run it in a thread (``asyncio.to_thread``).

Passwords are never logged, never in exceptions or reprs; comparisons are constant-time.
"""

from __future__ import annotations

import binascii
import hmac
import re
import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from sidecar.tokens.b64 import b64decode, b64encode

MIN_LENGTH = 8
MAX_LENGTH = 1024  # characters; scrypt's cost does not depend on length, memory does a little
SALT_BYTES = 16
HASH_BYTES = 32

_PHC = re.compile(
    r"\$scrypt\$ln=(?P<ln>\d{1,2}),r=(?P<r>\d{1,2}),p=(?P<p>\d{1,2})"
    r"\$(?P<salt>[A-Za-z0-9+/]{16,88})\$(?P<hash>[A-Za-z0-9+/]{32,88})"
)


class PasswordPolicyError(ValueError):
    """The password is not acceptable; the message is safe to show (it never quotes it)."""


class BadPasswordHash(ValueError):
    """A stored hash string is not one this module wrote or its parameters are out of range."""


@dataclass(frozen=True, slots=True)
class ScryptParams:
    log2_n: int = 14
    r: int = 8
    p: int = 1

    def __post_init__(self) -> None:
        # Bounds for hashes read back from storage too: a corrupt or hostile record must
        # not make one verification allocate gigabytes or run for minutes.
        if not (10 <= self.log2_n <= 20 and 1 <= self.r <= 32 and 1 <= self.p <= 16):
            raise BadPasswordHash(
                f"scrypt parameters out of range: ln={self.log2_n}, r={self.r}, p={self.p}"
            )
        if 128 * self.r * (2**self.log2_n) * self.p > 256 * 1024 * 1024:
            raise BadPasswordHash("scrypt parameters need more than 256 MiB")


DEFAULT_PARAMS = ScryptParams()


def check_policy(password: str) -> None:
    """Raise :class:`PasswordPolicyError` unless ``password`` is acceptable."""
    if len(password) < MIN_LENGTH:
        raise PasswordPolicyError(f"Password should be at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise PasswordPolicyError(f"Password should be at most {MAX_LENGTH} characters")
    if not password.strip():
        raise PasswordPolicyError("Password should not be only whitespace")


def hash_password(password: str, params: ScryptParams = DEFAULT_PARAMS) -> str:
    """The encoded scrypt hash of ``password`` with a fresh random salt."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _derive(password, salt, params)
    encoded = b64encode(salt, urlsafe=False) + "$" + b64encode(digest, urlsafe=False)
    return f"$scrypt$ln={params.log2_n},r={params.r},p={params.p}${encoded}"


def verify_password(password: str, encoded: str) -> bool:
    """True if ``password`` matches ``encoded``. Raise :class:`BadPasswordHash` if the
    stored string is not a valid scrypt hash (a data problem, not a wrong password)."""
    params, salt, expected = _parse(encoded)
    return hmac.compare_digest(_derive(password, salt, params, len(expected)), expected)


def needs_rehash(encoded: str, params: ScryptParams = DEFAULT_PARAMS) -> bool:
    """True if ``encoded`` was made with parameters other than ``params``."""
    return _parse(encoded)[0] != params


def _derive(password: str, salt: bytes, params: ScryptParams, length: int = HASH_BYTES) -> bytes:
    kdf = Scrypt(salt=salt, length=length, n=2**params.log2_n, r=params.r, p=params.p)
    return kdf.derive(password.encode("utf-8", "surrogatepass"))


def _parse(encoded: str) -> tuple[ScryptParams, bytes, bytes]:
    match = _PHC.fullmatch(encoded) if isinstance(encoded, str) else None
    if match is None:
        raise BadPasswordHash("not an encoded scrypt hash")
    params = ScryptParams(int(match["ln"]), int(match["r"]), int(match["p"]))
    try:
        salt = b64decode(match["salt"], urlsafe=False)
        digest = b64decode(match["hash"], urlsafe=False)
    except (binascii.Error, ValueError):
        raise BadPasswordHash("bad base64 in scrypt hash") from None
    if len(salt) < 8 or len(digest) < 16:
        raise BadPasswordHash("scrypt salt or hash too short")
    return params, salt, digest
