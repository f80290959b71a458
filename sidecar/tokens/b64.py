"""Unpadded base64, the way JOSE (base64url, RFC 7515 §2) and PHC strings (standard
alphabet) write it: encoded without ``=``, decoded strictly — a character outside the
alphabet, or a length no encoder makes, is a :class:`ValueError`."""

from __future__ import annotations

import base64
import re

_URLSAFE = re.compile(r"[A-Za-z0-9_-]*")
_STANDARD = re.compile(r"[A-Za-z0-9+/]*")


def b64encode(raw: bytes, *, urlsafe: bool = True) -> str:
    """``raw`` as unpadded base64url (or standard base64 with ``urlsafe=False``)."""
    coded = base64.urlsafe_b64encode(raw) if urlsafe else base64.b64encode(raw)
    return coded.rstrip(b"=").decode("ascii")


def b64decode(text: str, *, urlsafe: bool = True) -> bytes:
    """The bytes :func:`b64encode` made ``text`` from; :class:`ValueError` otherwise."""
    if not (_URLSAFE if urlsafe else _STANDARD).fullmatch(text):
        raise ValueError("not unpadded base64")
    padded = text + "=" * (-len(text) % 4)
    return base64.b64decode(padded, altchars=b"-_" if urlsafe else None, validate=True)
