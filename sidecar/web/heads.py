"""Request heads the lean front (:mod:`sidecar.web.lean`) may serve, parsed with httptools.

:func:`parse_head` parses one complete head with llhttp (through httptools: the parser of
Node.js, and of aiohttp's own C parser) and returns it only when it is a plain HTTP/1.1
request in origin form with no body; for anything else it returns None and aiohttp's
server parses and answers the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import httptools

_NOT_MINE: Final = (b"content-length", b"transfer-encoding", b"expect", b"upgrade")


@dataclass(slots=True)
class Head:
    """A parsed request head the lean front may serve.

    ``target`` is the request target as sent (origin form: path and query), ``headers``
    the raw ``(name, value)`` pairs in order, ``size`` the head's length in bytes."""

    method: str
    target: bytes
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool
    size: int


class _Parsed:
    """httptools callbacks for one request head."""

    __slots__ = ("complete", "headers", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_message_complete(self) -> None:
        self.complete = True


def head_size(
    method: str | bytes, target: str | bytes, headers: Iterable[tuple[bytes, bytes]]
) -> int:
    """A request head's size as ``proxy.max_header_size`` counts it (the request line and
    every header line, as if written ``Name: value``)."""
    size = len(method) + len(target) + 12  # "GET  HTTP/1.1\r\n"
    for name, value in headers:
        size += len(name) + len(value) + 4
    return size


def parse_head(data: bytes, max_headers: int, max_size: int) -> Head | None:
    """``data`` (one request head, through its blank line) as a :class:`Head`, or None when
    the lean front must not serve it (see the module docstring): aiohttp's server answers
    what is malformed or over ``max_headers`` lines or ``max_size`` bytes."""
    parsed = _Parsed()
    parser = httptools.HttpRequestParser(parsed)
    try:
        parser.feed_data(data)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return None
    if not parsed.complete or parser.get_http_version() != "1.1":
        return None
    headers = parsed.headers
    if len(headers) > max_headers:
        return None
    keep_alive = True  # HTTP/1.1's default
    for name, value in headers:
        if len(name) == 10 and name.lower() == b"connection":
            if b"close" in [t.strip() for t in value.lower().split(b",")]:
                keep_alive = False
        elif len(name) in (6, 7, 14, 17):  # the lengths of the names in _NOT_MINE
            # In every spelling a CGI/WSGI upstream reads as the same header (the header
            # policy's canonical_header): "Content_Length" is framing to some upstreams.
            lower = name.lower().replace(b"_", b"-").replace(b".", b"-")
            if lower in _NOT_MINE and not (name.lower() == b"content-length" and value == b"0"):
                return None
    method = parser.get_method()
    url = parsed.url
    if method in (b"HEAD", b"CONNECT") or url[:1] != b"/":
        return None
    if head_size(method, url, headers) > max_size:
        return None
    return Head(method.decode("ascii"), url, headers, keep_alive, len(data))
