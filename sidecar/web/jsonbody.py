"""Strict JSON request bodies for the admin routes and ``<prefix>/verify``.

Duplicate keys and NaN/Infinity are refused: two parsers (ours and whatever sits in front
or behind) must never disagree about what a request asked for. So is a body with a
``Content-Encoding``: the listeners read bodies as they came (``auto_decompress=False``,
:func:`sidecar.app.listener_options`), and a JSON body is never worth decoding.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Final

from aiohttp import hdrs, web


class BadBody(ValueError):
    """The body is not the JSON object expected; the message is safe to show."""


async def read_json_object(request: web.BaseRequest) -> dict[str, object]:
    """The body as one JSON object; raise :class:`BadBody` for anything else."""
    if request.content_type != "application/json":
        raise BadBody("expected Content-Type: application/json")
    if any(
        coding.strip().lower() not in ("", "identity")
        for coding in request.headers.getall(hdrs.CONTENT_ENCODING, ())
    ):
        raise BadBody("a Content-Encoding is not accepted: send the JSON body as is")
    return parse_json_object(await request.read())


def parse_json_object(raw: bytes) -> dict[str, object]:
    """``raw`` as one JSON object; raise :class:`BadBody` for anything else."""
    try:
        text = raw.decode("utf-8")
        if text[:1] in _SPACE or text[-1:] in _SPACE:  # "" included: an empty body
            doc = _DECODER.decode(text)
        else:
            # What decode() does without its two whitespace matches (a regex each, and
            # two Python calls) nor raw_decode (a Python call around the scanner, which
            # raises StopIteration where there is no value): the value, then nothing after.
            doc, end = _SCAN(text, 0)
            if end != len(text):
                raise ValueError("extra data")
    except UnicodeDecodeError:
        raise BadBody("the body is not UTF-8") from None
    except BadBody:
        raise
    except (ValueError, RecursionError, StopIteration):
        raise BadBody("the body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise BadBody("the body must be a JSON object")
    return doc


def _pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        raise BadBody("the body has duplicate keys")
    return doc


def _constant(name: str) -> object:
    raise BadBody(f"the body contains {name}, which is not JSON")


_SPACE = " \t\n\r"  # JSON's whitespace (what json.decoder.WHITESPACE matches)
# One decoder: json.loads with hooks builds a decoder and its C scanner on every call. It
# keeps nothing between calls (the scanner clears its memo after each).
_DECODER = json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=_constant)
# Its scanner (the C one), what raw_decode calls. (typeshed does not declare the attribute.)
_SCAN: Final[Callable[[str, int], tuple[object, int]]] = _DECODER.scan_once  # type: ignore[attr-defined]
