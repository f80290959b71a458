"""parse_json_object: what the admin routes read a JSON body with, byte for byte what the
strict decoder's ``decode`` accepts (its shortcut skips the whitespace matching)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.web.jsonbody import _DECODER, BadBody, parse_json_object


def _reference(raw: bytes) -> object:
    """What parse_json_object returns, or the BadBody message it raises, by decode()."""
    try:
        doc = _DECODER.decode(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return BadBody("the body is not UTF-8")
    except BadBody as refused:
        return refused
    except (ValueError, RecursionError):
        return BadBody("the body is not valid JSON")
    return doc if isinstance(doc, dict) else BadBody("the body must be a JSON object")


def _outcome(raw: bytes) -> object:
    try:
        return parse_json_object(raw)
    except BadBody as refused:
        return refused


def _same(raw: bytes) -> None:
    got, expected = _outcome(raw), _reference(raw)
    if isinstance(expected, BadBody):
        assert isinstance(got, BadBody), raw
        assert str(got) == str(expected), raw
    else:
        assert got == expected, raw


@pytest.mark.parametrize(
    "raw",
    [
        b"{}", b" {}", b"{} ", b"\n{}\r\n", b"\t{}", b"{}{}", b"{} {}", b"{}x", b"{}\x0b",
        b"\x0b{}", b"", b" ", b"[]", b"1", b'"a"', b'{"a": 1, "a": 2}', b'{"a": NaN}',
        b'{"a": [1, {"b": null}]}', b"\xff{}", "{\u00a0}".encode(), "{}\u00a0".encode(),
        b'{"userId": "u", "oneTimeUse": true}',
        b"x", b"}", b"tru", b"x{}", b"\x00",  # no value at the start: StopIteration
    ],
)  # fmt: skip
def test_bodies_read_as_decode_reads_them(raw: bytes) -> None:
    _same(raw)


@given(
    doc=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=4),
    before=st.sampled_from(["", " ", "\n", "\t\r", "\x0b", "\u00a0", "x"]),
    after=st.sampled_from(["", " ", "\n", "\r\n", "\x0b", "\u00a0", "}", "{}", "0"]),
)
def test_any_object_with_any_surrounding_reads_as_decode_reads_it(
    doc: dict[str, object], before: str, after: str
) -> None:
    _same((before + json.dumps(doc) + after).encode())
