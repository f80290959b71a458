"""Refer strings and auth-link tokens: compact JWE (RFC 7516), ``dir`` + ``A256GCM``.

The protected header is exactly ``{"alg": "dir", "enc": "A256GCM", "kid": …}`` (``typ`` and
``cty`` tolerated). Anything else — ``alg: none``, another ``enc``, ``zip``, ``crit``, an
unknown ``kid`` — is refused *before* any decryption is attempted, so the decoder has one
narrow shape to accept. With that one shape, JWE is a few lines around AES-256-GCM
(``cryptography``'s, OpenSSL underneath): the AAD is the protected header exactly as sent
(RFC 7516 §5.1 step 14), the IV 96 bits, the tag 128 bits, and there is no encrypted key.
A general JOSE library cost five to ten times more per token (a redemption opens one, a
mint seals one); ``tests/test_tokens.py`` checks both directions against jwcrypto.

Errors (domain, never HTTP)::

    TokenError                 .reason is a short machine word for logs and metrics
     ├── MalformedToken        not a token of ours (shape, header, claims)
     ├── UnknownKey            a kid that is not (or no longer) in the keyset
     ├── TamperedToken         authentication tag does not verify
     └── ExpiredToken          valid, but past ``exp`` (carries the claims)
    TokenTooLong               minting would produce a token of 4,096 characters or more
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _json_str
from typing import ClassVar, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sidecar.tokens.b64 import b64decode, b64encode
from sidecar.tokens.keys import KeySet

MAX_TOKEN_LENGTH = 4096
_HEADER_FIELDS = frozenset({"alg", "enc", "kid", "typ", "cty"})
_IV_BYTES = 12  # A256GCM: a 96-bit IV (RFC 7518 §5.3)
_TAG_BYTES = 16  # and a 128-bit tag
_IV_CHARS = _IV_BYTES * 4 // 3  # its base64: no padding, as _IV_BYTES % 3 == 0
# A raw pattern (re reads the escapes): mypyc refuses surrogates in string literals.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class TokenError(Exception):
    reason: ClassVar[str] = "invalid"


class MalformedToken(TokenError):
    reason: ClassVar[str] = "malformed"


class UnknownKey(TokenError):
    reason: ClassVar[str] = "unknown_key"


class TamperedToken(TokenError):
    reason: ClassVar[str] = "tampered"


class ExpiredToken(TokenError):
    reason: ClassVar[str] = "expired"

    def __init__(self, claims: Claims) -> None:
        super().__init__("token expired")
        self.claims = claims


class TokenTooLong(Exception):
    def __init__(self, length: int) -> None:
        super().__init__(
            f"the token would be {length} characters long; tokens must be shorter than "
            f"{MAX_TOKEN_LENGTH} (use fewer or shorter additionalParams)"
        )
        self.length = length


@dataclass(slots=True, init=False)
class Claims:
    """What a token says. Immutable as a frozen dataclass would be, but built at a fraction
    of its cost (a frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``, in Python even when compiled): its fields are ``Final`` (mypy
    refuses an assignment, and compiled they are read-only), set once by ``__init__``."""

    token_id: Final[str]
    subject: Final[str]
    role: Final[str]
    issued_at: Final[int]
    expires_at: Final[int]
    one_time: Final[bool]
    kind: Final[str]  # "refer" or an auth-link type
    params: Final[Mapping[str, str]]
    module: Final[str | None]
    email: Final[str | None]
    redirect_to: Final[str | None]

    def __init__(
        self,
        token_id: str,
        subject: str,
        role: str,
        issued_at: int,
        expires_at: int,
        one_time: bool,
        kind: str,
        params: Mapping[str, str] | None = None,
        module: str | None = None,
        email: str | None = None,
        redirect_to: str | None = None,
    ) -> None:
        self.token_id = token_id
        self.subject = subject
        self.role = role
        self.issued_at = issued_at
        self.expires_at = expires_at
        self.one_time = one_time
        self.kind = kind
        self.params = {} if params is None else params
        self.module = module
        self.email = email
        self.redirect_to = redirect_to

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "jti": self.token_id,
            "sub": self.subject,
            "role": self.role,
            "iat": self.issued_at,
            "exp": self.expires_at,
            "one_time": self.one_time,
            "kind": self.kind,
            "params": dict(self.params),
        }
        for name in ("module", "email", "redirect_to"):
            value = getattr(self, name)
            if value is not None:
                doc[name] = value
        return doc


def claims_json(claims: Claims) -> str:
    """``json.dumps(claims.to_json(), separators=(",", ":"))``, written directly: every
    mint seals one, and the encoder's walk over a fresh dict cost several times this."""
    c = claims
    params = (
        ",".join([f"{_json_str(k)}:{_json_str(v)}" for k, v in c.params.items()])
        if c.params
        else ""  # most links have none: no list, no join
    )
    text = (
        f'{{"jti":{_json_str(c.token_id)},"sub":{_json_str(c.subject)},'
        f'"role":{_json_str(c.role)},"iat":{int(c.issued_at)},"exp":{int(c.expires_at)},'
        f'"one_time":{"true" if c.one_time else "false"},"kind":{_json_str(c.kind)},'
        f'"params":{{{params}}}'
    )
    for name, value in (("module", c.module), ("email", c.email), ("redirect_to", c.redirect_to)):
        if value is not None:
            text += f',"{name}":{_json_str(value)}'
    return text + "}"


# A token id: the mint's time in milliseconds (48 bits, big-endian), then 80 random bits.
_ID_TIME_BYTES: Final = 6
_ID_RANDOM_BYTES: Final = 10
# The random parts are drawn _ID_BATCH at a time (one getrandom system call per batch, not
# one per mint), taken from the end; a forked child drops the ones its parent drew.
_ID_BATCH: Final = 64
_ID_TAILS: Final[list[bytes]] = []


def _drop_id_tails() -> None:
    # Drawn before the fork, they are the parent's too: both would hand them out, and two
    # links with one id share a burn.
    _ID_TAILS.clear()


os.register_at_fork(after_in_child=_drop_id_tails)


def new_token_id() -> str:
    """A new token id: 128 bits in 22 base64url characters, the time in milliseconds
    (48 bits) then 80 random bits from the OS.

    Time first, because the store keys its records by id: ids minted close together share
    their first characters, so SQLite's tables of minted links' records and of burns
    (B-trees ordered by id) take a group commit's ids on a page or two, not one page per
    id written anywhere in the tree (measured: 3.2 WAL writes per mint before, 1.0 after).
    The text does not sort exactly as the times do (base64url's alphabet is not in ASCII
    order: "z" then "0"), so when the time's last characters wrap the inserts move to
    another, equally small, part of the tree. An id is unique (80 random bits
    per millisecond), never secret: it is logged, listed and revoked by. It never begins
    with ``-`` (``sidecar revoke <id>`` takes it as an argument, not an option): its first
    character holds the time's top 6 bits, which are 0 ("A") until 2109 and would make
    it ``-`` (62) only in the year 10600."""
    try:
        tail = _ID_TAILS.pop()  # one atomic step: no two callers, threads included, share one
    except IndexError:
        drawn = os.urandom(_ID_RANDOM_BYTES * _ID_BATCH)
        tail = drawn[:_ID_RANDOM_BYTES]  # this caller's own; the rest for the next ones
        _ID_TAILS.extend(
            [
                drawn[i : i + _ID_RANDOM_BYTES]
                for i in range(_ID_RANDOM_BYTES, len(drawn), _ID_RANDOM_BYTES)
            ]
        )
    millis = int(time.time() * 1000)
    return b64encode(millis.to_bytes(_ID_TIME_BYTES, "big") + tail)


class TokenCodec:
    """Seals claims with the keyset's active key; opens tokens sealed by any of its keys."""

    def __init__(self, keyset: KeySet) -> None:
        self._keys = {kid: AESGCM(raw) for kid, raw in keyset.keys.items()}
        self._sealer = self._keys[keyset.active_kid]
        # The protected header never changes for one keyset: encoded once.
        header = {"alg": "dir", "enc": "A256GCM", "kid": keyset.active_kid}
        self._header = b64encode(json.dumps(header, separators=(",", ":")).encode())
        self._aad = self._header.encode("ascii")

    def seal(self, claims: Claims) -> str:
        payload = claims_json(claims).encode()
        iv = os.urandom(_IV_BYTES)  # random per token: never reused under one key
        sealed = self._sealer.encrypt(iv, payload, self._aad)
        # The IV is a whole number of base64 groups (12 bytes, 16 characters): encoded with
        # the ciphertext in one call, it is the text of both segments, one after the other.
        iv_ciphertext = b64encode(iv + sealed[:-_TAG_BYTES])
        iv_text, ciphertext = iv_ciphertext[:_IV_CHARS], iv_ciphertext[_IV_CHARS:]
        token = f"{self._header}..{iv_text}.{ciphertext}.{b64encode(sealed[-_TAG_BYTES:])}"
        if len(token) >= MAX_TOKEN_LENGTH:
            raise TokenTooLong(len(token))
        return token

    def open(self, token: object, now: float) -> Claims:
        """Decrypt and verify ``token``; raise a :class:`TokenError` subclass (also for
        what is not a string: compiled, a ``str`` parameter would raise ``TypeError``)."""
        if not isinstance(token, str) or not 0 < len(token) < MAX_TOKEN_LENGTH:
            raise MalformedToken("token is empty or too long")
        parts = token.split(".")
        if len(parts) != 5 or parts[1] or not (parts[0] and parts[2] and parts[3] and parts[4]):
            raise MalformedToken("not a compact JWE with direct encryption")
        kid = _header_kid(parts[0])
        key = None if kid is None else self._keys.get(kid)
        if key is None:
            raise UnknownKey("unknown kid")
        iv_text, ciphertext_text = parts[2], parts[3]
        try:
            if len(iv_text) == _IV_CHARS:
                # Whole base64 groups (as seal writes them): decoded with the ciphertext in
                # one call, which refuses exactly what the two calls would.
                iv_ciphertext = b64decode(iv_text + ciphertext_text)
                iv, ciphertext = iv_ciphertext[:_IV_BYTES], iv_ciphertext[_IV_BYTES:]
            else:
                iv, ciphertext = b64decode(iv_text), b64decode(ciphertext_text)
            tag = b64decode(parts[4])
        except ValueError:  # binascii.Error included
            raise TamperedToken("a segment is not base64url") from None
        if len(iv) != _IV_BYTES or len(tag) != _TAG_BYTES:
            raise TamperedToken("wrong IV or tag length for A256GCM")
        try:
            # The AAD is the header segment as sent: a re-encoded header fails the tag.
            plaintext = key.decrypt(iv, ciphertext + tag, parts[0].encode("ascii"))
        except InvalidTag as exc:
            raise TamperedToken("decryption failed") from exc
        claims = _claims(plaintext)
        if now >= claims.expires_at:
            raise ExpiredToken(claims)
        return claims


@functools.lru_cache(maxsize=32)  # one header per key: every token repeats it
def _header_kid(segment: str) -> str | None:
    """The ``kid`` of a protected header of the one accepted shape (None if it has no
    string ``kid``); :class:`MalformedToken` for any other header. Only answers are
    cached, never refusals: arbitrary headers cannot crowd out the real ones."""
    header = _json_object(segment)
    if header is None or not header.keys() <= _HEADER_FIELDS:
        raise MalformedToken("bad protected header")
    if header.get("alg") != "dir" or header.get("enc") != "A256GCM":
        raise MalformedToken("unsupported alg/enc")
    if not all(isinstance(header.get(name, ""), str) for name in ("typ", "cty")):
        # RFC 7515 §4.1.9-10: strings. joserfc refused anything else; so does this.
        raise MalformedToken("bad protected header")
    kid = header.get("kid")
    return kid if isinstance(kid, str) else None


def _json_object(segment: str) -> dict[str, object] | None:
    try:
        doc = json.loads(b64decode(segment))
    except (ValueError, RecursionError):  # binascii.Error and JSON errors are ValueErrors
        return None
    return doc if isinstance(doc, dict) else None


# json.loads's own scanner (the C one): what json.loads ends in. It keeps nothing between
# calls (it clears its memo after each).
# (typeshed does not declare the attribute.)
_SCAN: Final[Callable[[str, int], tuple[object, int]]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _load_claims(plaintext: bytes) -> object:
    """``json.loads(plaintext)``, the same object or error. The UTF-8 text every sealer
    writes, a JSON document from its first character to its last, is scanned directly:
    json.loads's Python layers around the scanner (the encoding sniff, the decode, two
    whitespace matches) were most of a redemption's cost of reading its claims. Whatever
    that does not read whole (another encoding, a byte-order mark, surrogates, whitespace
    around the document, an error) is json.loads's, as before."""
    try:
        text = plaintext.decode("utf-8")
        doc, end = _SCAN(text, 0)
    except (ValueError, StopIteration, RecursionError):  # UnicodeDecodeError included
        return json.loads(plaintext)
    if end != len(text):
        return json.loads(plaintext)
    return doc


# The claims as claims_json writes them when every string is printable ASCII without a
# quote or backslash (nothing escaped) and there are no params: a redemption's usual link.
_STR = r'"([ !#-\[\]-~]{1,2048})"'
_INT = r"(0|[1-9][0-9]{0,12})"
_CANONICAL: Final = re.compile(
    rf'\{{"jti":{_STR},"sub":{_STR},"role":{_STR},"iat":{_INT},"exp":{_INT},'
    rf'"one_time":(true|false),"kind":{_STR},"params":\{{\}}'
    rf'(?:,"module":{_STR})?(?:,"email":{_STR})?(?:,"redirect_to":{_STR})?\}}'
)
_MAX_INT: Final = 2**40


def _claims(plaintext: bytes) -> Claims:
    """The claims of a decrypted token; :class:`MalformedToken` if they are not JSON of the
    right shape (:func:`_parsed_claims`).

    A text in :data:`_CANONICAL`'s shape is read by that one match instead: json.loads, the
    checks of every field and the lookups of each in the parsed dict were most of a
    redemption's cost of opening its token. Every string it takes is printable ASCII
    (no control character) of 1 to 2,048 characters, every number an int, so the claims are
    those :func:`_parsed_claims` makes of the same text; anything else, even a canonical
    text whose numbers are out of range, is left to it."""
    try:
        match = _CANONICAL.fullmatch(plaintext.decode("utf-8"))
    except UnicodeDecodeError:
        match = None
    if match is not None:
        token_id, subject, role, iat, exp, once, kind, module, email, redirect_to = match.groups()
        issued_at, expires_at = int(iat), int(exp)
        if issued_at < _MAX_INT and expires_at < _MAX_INT:
            return Claims(
                token_id=token_id,
                subject=subject,
                role=role,
                issued_at=issued_at,
                expires_at=expires_at,
                one_time=once == "true",
                kind=kind,
                module=module,
                email=email,
                redirect_to=redirect_to,
            )
    return _parsed_claims(plaintext)


def _parsed_claims(plaintext: bytes) -> Claims:
    """The claims of any JSON text (see :func:`_claims`)."""
    try:
        doc = _load_claims(plaintext)
    except (ValueError, RecursionError):
        raise MalformedToken("claims are not JSON") from None
    if not isinstance(doc, dict):
        raise MalformedToken("claims are not an object")
    # doc.get(...) each time, not a bound `get`: compiled, a dict's get is then a direct
    # lookup instead of a call through a method object.
    params = doc.get("params", {})
    module, email, redirect_to = doc.get("module"), doc.get("email"), doc.get("redirect_to")
    if not (
        _is_str(doc.get("jti"))
        and _is_str(doc.get("sub"))
        and _is_str(doc.get("role"))
        and _is_str(doc.get("kind"))
        and _is_int(doc.get("iat"))
        and _is_int(doc.get("exp"))
        and isinstance(doc.get("one_time"), bool)
        and isinstance(params, dict)
        and all(
            _is_str(k) and isinstance(v, str) and (v == "" or _is_str(v)) for k, v in params.items()
        )
        and (module is None or _is_str(module))
        and (email is None or _is_str(email))
        and (redirect_to is None or _is_str(redirect_to))
    ):
        raise MalformedToken("claims have the wrong shape")
    return Claims(
        token_id=doc["jti"],
        subject=doc["sub"],
        role=doc["role"],
        issued_at=doc["iat"],
        expires_at=doc["exp"],
        one_time=doc["one_time"],
        kind=doc["kind"],
        params=params,
        module=module,  # checked by _is_str above
        email=email,
        redirect_to=redirect_to,
    )


def has_control(text: str) -> bool:
    """Control characters (C0, DEL, C1: header and log injection) or lone surrogates (valid
    JSON escapes that no store or header can encode). Mint and open share this rule."""
    if text.isascii():
        # In ASCII the control characters (C0 and DEL) are exactly the unprintable ones:
        # one pass over the text, without the regular expression's search (every claim a
        # redemption opens is checked).
        return not text.isprintable()
    return _CONTROL.search(text) is not None


def _is_str(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 2048 and not has_control(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _MAX_INT
