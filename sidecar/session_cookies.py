"""The session cookie in a request's ``Cookie`` headers: its copies, and what is left for
the upstream.

Read once per request and shared by the session lookup (:mod:`sidecar.sessions`) and the
header policy (:mod:`sidecar.proxy.headers`), on both fronts.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Protocol, cast

from aiohttp import hdrs, web

COOKIE_VALUE = re.compile(r"[A-Za-z0-9_-]{43}")
# Copies of the cookie looked up per request, at most: bounds the store reads one request
# with a stuffed Cookie header can cause.
MAX_COOKIE_COPIES = 4


@dataclass(frozen=True, slots=True, init=False)
class RequestCookies:
    """A request's ``Cookie`` headers, read once and shared by the session lookup and the
    header policy (:mod:`sidecar.proxy.headers`).

    ``values`` are the well-formed copies of the sidecar's cookie, in the order sent (at
    most :data:`MAX_COOKIE_COPIES`). Several copies mean someone set one beside ours — a
    sibling host with ``Domain=`` (cookie tossing) or a stale one with another path — so
    the session lookup tries each
    (:meth:`sidecar.sessions.SessionManager.lookup_cookies`). ``others`` holds, for each
    ``Cookie`` header in order, what is left of it for the upstream (empty when nothing
    is)."""

    values: tuple[str, ...]
    others: tuple[bytes, ...]

    def __init__(self, values: tuple[str, ...], others: tuple[bytes, ...]) -> None:
        # Frozen: set as the generated __init__ sets them, but compiled (see Head in
        # sidecar.web.heads).
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "others", others)

    @property
    def value(self) -> str | None:
        """The first well-formed copy, if any."""
        return self.values[0] if self.values else None


NO_COOKIES = RequestCookies((), ())


def read_cookies(request: web.BaseRequest, name: str) -> RequestCookies:
    """Split every ``Cookie`` header of ``request`` into the copies of the sidecar's
    cookie ``name`` and the rest (see :func:`split_cookie_header`)."""
    if hdrs.COOKIE not in request.headers:
        return NO_COOKIES
    raw = [value for header, value in request.raw_headers if header.lower() == b"cookie"]
    return cookie_values(raw, name)


def is_cookie_value(value: str) -> bool:
    """Whether ``value`` is one :data:`COOKIE_VALUE` matches whole (43 base64url
    characters), checked without the regex engine: every proxied request checks its cookie.
    ``str.isalnum`` of an ASCII string takes exactly ``[A-Za-z0-9]``."""
    return (
        len(value) == 43 and value.isascii() and value.replace("-", "A").replace("_", "A").isalnum()
    )


# A bytes.translate table that writes every byte of a well-formed cookie value as "a"
# and every other byte as NUL: a header is our cookie alone when it starts with "name="
# and translates to what "name=" and 43 "a" do. (A table alone is bytes.translate's fast
# loop; with bytes to delete it builds a table per call, dearer than the check it makes.)
_COOKIE_TABLE: Final = bytes(
    0x61 if chr(byte) in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" else 0
    for byte in range(256)
)
# By cookie name (one or two per configuration): "name=" in bytes, and the translation of
# that followed by a well-formed value.
_ALONE: Final[dict[str, tuple[bytes, bytes]]] = {}


def cookie_values(headers: Iterable[bytes], name: str) -> RequestCookies:
    """:func:`read_cookies` for the raw values of a request's ``Cookie`` headers, in order.
    They are read as latin-1, so other cookies reach the upstream byte for byte."""
    found: list[str] = []
    others: list[bytes] = []
    alone = name + "="
    known = _ALONE.get(name)
    if known is None:
        if len(_ALONE) > 8:  # (names come from the configuration: a reload may change it)
            _ALONE.clear()
        prefix = alone.encode("latin-1")
        known = _ALONE[name] = (prefix, prefix.translate(_COOKIE_TABLE) + b"a" * 43)
    alone_bytes, well_formed = known
    whole = len(alone_bytes) + 43
    for raw in headers:
        if (
            len(raw) == whole
            and raw.startswith(alone_bytes)
            and raw.translate(_COOKIE_TABLE) == well_formed
        ):
            # The usual header, read in bytes: our cookie alone and well-formed (nothing
            # to strip; what the shortcut below and the general pass give for it).
            value = raw[whole - 43 :].decode("ascii")
            if len(found) < MAX_COOKIE_COPIES and value not in found:
                found.append(value)
            others.append(b"")
            continue
        text = raw.decode("latin-1")
        if ";" not in text and text.startswith(alone):
            # The usual header: our cookie alone. What _split_cookie_header gives for it,
            # without its general pass (name is a cookie token: no "=", no whitespace).
            values = [text[len(alone) :].strip().strip('"')]
            rest = ""
        else:
            values, rest = _split_cookie_header(text, name)
        for value in values:
            if len(found) < MAX_COOKIE_COPIES and is_cookie_value(value) and value not in found:
                found.append(value)
        others.append(rest.encode("latin-1"))
    if not others:
        return NO_COOKIES
    return RequestCookies(tuple(found), tuple(others))


class _Digest(Protocol):
    def hexdigest(self) -> str: ...


def _sha256_constructor() -> Callable[[bytes], _Digest]:
    """CPython's own SHA-256 (``_sha2`` from 3.12, ``_sha256`` before), else hashlib's.

    The same digests (tests/test_session_cookies.py pins them to hashlib's); for one
    43-byte cookie the builtin's set-up is far cheaper than OpenSSL's EVP that
    ``hashlib.sha256`` goes through, and every proxied request hashes its cookie."""
    for module in ("_sha2", "_sha256"):
        try:
            constructor = getattr(importlib.import_module(module), "sha256", None)
        except ImportError:
            continue
        if callable(constructor):
            return cast(Callable[[bytes], _Digest], constructor)
    return hashlib.sha256


_SHA256: Final = _sha256_constructor()


def session_key(cookie_value: str) -> str:
    """The store's key for a session: the SHA-256 of its cookie, in hex."""
    return _SHA256(cookie_value.encode("ascii")).hexdigest()


def split_cookie_header(header: str, name: str) -> tuple[str | None, str]:
    """Return (the value of cookie ``name``, the header without it).

    Every other cookie is kept byte for byte, so the upstream sees exactly what the browser
    sent for its own cookies. Every copy of ``name`` is removed; the first one is
    returned. A pair that hides ``name`` behind a ``,`` (RFC 2109 servers split there) is
    dropped whole."""
    values, rest = _split_cookie_header(header, name)
    return (values[0] if values else None), rest


def _split_cookie_header(header: str, name: str) -> tuple[list[str], str]:
    """Every value of cookie ``name`` in order, and the header without them.

    Every spelling of the name with or without a ``__Host-``/``__Secure-`` prefix is cut
    out too (only ``name`` itself is read): after the default name gained its prefix,
    browsers still send the old cookie, whose session is live until it expires."""
    found: list[str] = []
    kept: list[str] = []
    base = _base_name(name)
    spellings = _spellings(base)
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        key = key.rstrip()
        if sep and key == name:
            found.append(value.strip().strip('"'))
        elif sep and spellings.fullmatch(key):
            continue
        elif part.strip() and not (base in part and _hidden_cookie(base).search(part)):
            kept.append(part.strip())
    return found, "; ".join(kept)


def _base_name(name: str) -> str:
    """``name`` without its cookie prefix (browsers read prefixes in any letter case)."""
    lower = name.lower()
    for prefix in ("__host-", "__secure-"):
        if lower.startswith(prefix):
            return name[len(prefix) :]
    return name


@functools.lru_cache(maxsize=4)
def _spellings(base: str) -> re.Pattern[str]:
    return re.compile(r"(?i:__host-|__secure-)?" + re.escape(base))


@functools.lru_cache(maxsize=4)
def _hidden_cookie(base: str) -> re.Pattern[str]:
    return re.compile(r"[\s,](?i:__host-|__secure-)?" + re.escape(base) + r"\s*=")
