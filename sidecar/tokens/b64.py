"""Unpadded base64, the way JOSE (base64url, RFC 7515 §2) and PHC strings (standard
alphabet) write it: encoded without ``=``, decoded strictly — a character outside the
alphabet, or a length no encoder makes, is a :class:`ValueError`."""

from __future__ import annotations

import binascii

_URLSAFE = bytes.maketrans(b"-_", b"+/")  # base64url's two characters, as standard base64's
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")


def b64encode(raw: bytes, *, urlsafe: bool = True) -> str:
    """``raw`` as unpadded base64url (or standard base64 with ``urlsafe=False``)."""
    # binascii directly: base64.urlsafe_b64encode is two Python calls around it (every
    # token sealed encodes three parts).
    coded = binascii.b2a_base64(raw, newline=False)
    if urlsafe:
        coded = coded.translate(_TO_URLSAFE)
    return coded.rstrip(b"=").decode("ascii")


def b64decode(text: str, *, urlsafe: bool = True) -> bytes:
    """The bytes :func:`b64encode` made ``text`` from; :class:`ValueError` otherwise."""
    # binascii's strict mode refuses every character outside the standard alphabet and any
    # padding an encoder would not write; what is left to refuse here is the other
    # alphabet's two characters and "=" (a redemption decodes three segments: no regex).
    if "=" in text or (urlsafe and ("+" in text or "/" in text)):
        raise ValueError("not unpadded base64")
    coded = (text + "=" * (-len(text) % 4)).encode("ascii")  # UnicodeEncodeError: ValueError
    return binascii.a2b_base64(coded.translate(_URLSAFE) if urlsafe else coded, strict_mode=True)
