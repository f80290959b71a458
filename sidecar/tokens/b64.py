"""Unpadded base64, the way JOSE (base64url, RFC 7515 §2) and PHC strings (standard
alphabet) write it: encoded without ``=``, decoded strictly — a character outside the
alphabet, or a length no encoder makes, is a :class:`ValueError`."""

from __future__ import annotations

from binascii import a2b_base64, b2a_base64

# Decoding translates base64url's two characters to standard base64's, and the characters
# its text must not hold (the standard alphabet's two, "=") to "*", which strict decoding
# refuses as it refuses any character outside the alphabet.
_URLSAFE = bytes.maketrans(b"-_+/=", b"+/***")
_STANDARD = bytes.maketrans(b"=", b"*")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")


def b64encode(raw: bytes, *, urlsafe: bool = True) -> str:
    """``raw`` as unpadded base64url (or standard base64 with ``urlsafe=False``)."""
    # binascii directly: base64.urlsafe_b64encode is two Python calls around it (every
    # token sealed encodes three parts). Called by its own name with no keyword: a keyword
    # argument (newline=False) is parsed for each call, and compiled, binascii.b2a_base64
    # is an attribute lookup on the module each time (together half of the encoding of a
    # token id); the newline it then ends with is stripped with the padding.
    coded = b2a_base64(raw)
    if urlsafe:
        coded = coded.translate(_TO_URLSAFE)
    return coded.rstrip(b"=\n").decode("ascii")


def b64decode(text: str, *, urlsafe: bool = True) -> bytes:
    """The bytes :func:`b64encode` made ``text`` from; :class:`ValueError` otherwise."""
    # binascii's strict mode refuses every character outside the standard alphabet and any
    # padding an encoder would not write; the other alphabet's two characters and "=" are
    # made such characters first (a redemption decodes three segments: no regex, and no
    # search of the text for each of them).
    coded = text.encode("ascii").translate(_URLSAFE if urlsafe else _STANDARD)
    pad = -len(coded) % 4  # (UnicodeEncodeError above: a ValueError)
    return a2b_base64(coded + b"=" * pad if pad else coded, strict_mode=True)
