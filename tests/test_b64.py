"""sidecar.tokens.b64: unpadded base64 decoded strictly, exactly as the reference reads it.

The reference is what the module did before it dropped its regex: the alphabet checked by
a regular expression, then ``base64.b64decode(..., validate=True)``. Every string of
characters near the alphabets (both alphabets, ``=``, whitespace, dots, non-ASCII) must be
decoded to the same bytes or refused alike.
"""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.tokens.b64 import b64decode, b64encode
from tests.security.fuzzing import fuzz

_ALPHABETS = {True: re.compile(r"[A-Za-z0-9_-]*"), False: re.compile(r"[A-Za-z0-9+/]*")}


def _reference(text: str, urlsafe: bool) -> bytes | None:
    if not _ALPHABETS[urlsafe].fullmatch(text):
        return None
    padded = text + "=" * (-len(text) % 4)
    try:
        return base64.b64decode(padded, altchars=b"-_" if urlsafe else None, validate=True)
    except ValueError:
        return None


def _ours(text: str, urlsafe: bool) -> bytes | None:
    try:
        return b64decode(text, urlsafe=urlsafe)
    except ValueError:
        return None


@fuzz(3000)
@given(
    text=st.text(alphabet="AZaz09-_+/=*. \n\t\x00é\u0660", max_size=14),
    urlsafe=st.booleans(),
)
def test_decoding_agrees_with_the_reference(text: str, urlsafe: bool) -> None:
    assert _ours(text, urlsafe) == _reference(text, urlsafe)


@pytest.mark.parametrize("urlsafe", [True, False])
@fuzz(300)
@given(raw=st.binary(max_size=64))
def test_what_is_encoded_decodes_back(urlsafe: bool, raw: bytes) -> None:
    assert b64decode(b64encode(raw, urlsafe=urlsafe), urlsafe=urlsafe) == raw


def test_refusals() -> None:
    for text in ("A", "AAAAA", "QQ==", "Q Q", "QQ\n", "+/", "Q\u00e9"):
        assert _ours(text, urlsafe=True) is None, text
    for text in ("-_", "QQ=", "A"):
        assert _ours(text, urlsafe=False) is None, text
    assert b64decode("-_8") == b64decode("+/8", urlsafe=False) == b"\xfb\xff"


@fuzz(300)
@given(raw=st.binary(max_size=64))
def test_encoding_is_the_standard_librarys(raw: bytes) -> None:
    """What secrets.token_urlsafe writes for the same bytes (a session's cookie value)."""
    assert b64encode(raw) == base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    assert b64encode(raw, urlsafe=False) == base64.b64encode(raw).rstrip(b"=").decode("ascii")
