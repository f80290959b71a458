"""Request heads the lean front (:mod:`sidecar.web.lean`) may serve, parsed with httptools.

:func:`parse_head` parses one complete head with llhttp (through httptools: the parser of
Node.js, and of aiohttp's own C parser) and returns it only when it is a plain HTTP/1.1
request in origin form that aiohttp's parser would take too (one ``Host``, no second copy
of a singleton header), with no body or one framed by a plain ``Content-Length``; for
anything else it returns None and aiohttp's server parses and answers the same bytes.
Values lose their trailing whitespace, as aiohttp's parser drops it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Final

import httptools

_NOT_MINE: Final = (b"content-length", b"transfer-encoding", b"expect", b"upgrade")
# What aiohttp's parser refuses (400) in a head llhttp takes: a second copy of one of
# RFC 9110's singleton headers (its list), and the pre-RFC 6455 WebSocket key. The lean
# front hands such heads over, so that they are refused and never forwarded.
_SINGLETONS: Final = frozenset(
    (b"content-length", b"content-location", b"content-range", b"content-type", b"etag",
     b"host", b"max-forwards", b"server", b"transfer-encoding", b"user-agent")
)  # fmt: skip
_REFUSED: Final = b"sec-websocket-key1"


# init=False, here and for the hot path's other per-request dataclasses: the __init__
# written out is compiled with its module, where the one @dataclass generates would run
# interpreted even in the compiled build (mypyc compiles a dataclass's own methods only).
@dataclass(slots=True, init=False)
class Head:
    """A parsed request head the lean front may serve.

    ``target`` is the request target as sent (origin form: path and query), ``headers``
    the raw ``(name, value)`` pairs in order; ``keep_alive`` is false when the client
    asked to close after the answer. ``length`` is the ``Content-Length`` (0 without one)
    and ``body``, once the lean front has read it, those bytes."""

    method: str
    target: bytes
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool
    names: list[bytes]  # the header names lower-cased, in the same order (read once)
    length: int
    body: bytes

    def __init__(
        self,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        names: list[bytes],
        length: int = 0,
        body: bytes = b"",
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.keep_alive = keep_alive
        self.names = names
        self.length = length
        self.body = body


class _Parsed:
    """httptools callbacks for one request head."""

    __slots__ = ("complete", "headers", "url")

    # The callbacks it does not take, found as None: httptools asks for each one a parser
    # may call (getattr with a default), and one not found costs an AttributeError raised
    # and cleared, for every head.
    on_message_begin: ClassVar[None] = None
    on_body: ClassVar[None] = None
    on_message_complete: ClassVar[None] = None
    on_chunk_header: ClassVar[None] = None
    on_chunk_complete: ClassVar[None] = None

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        # The head is whole (a body its Content-Length frames follows: the lean front's).
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
    if not parsed.complete:
        return None
    method = parser.get_method()
    url = parsed.url
    # HTTP/1.1 only, read off the request line rather than asked (get_http_version formats
    # a string per call, and says 1.1 for "RTSP/1.1" and "ICE/1.1" too). llhttp took the
    # line as method, space(s), target, space(s), version (8 bytes): one exactly as long as
    # with single spaces that ends in " HTTP/1.1" is "METHOD TARGET HTTP/1.1", the line
    # sent upstream. llhttp skips CR and LF before a request line; a line that ends
    # otherwise (a bare LF) is handed over.
    line = data.lstrip(b"\r\n")
    end = line.find(b"\r\n")
    if end != len(method) + len(url) + 10 or line[end - 9 : end] != b" HTTP/1.1":
        return None
    headers = parsed.headers
    if len(headers) > max_headers:
        return None
    keep_alive = True  # HTTP/1.1's default
    length = 0
    names: list[bytes] = []
    seen: set[bytes] = set()
    for i, (name, value) in enumerate(headers):
        if value[-1:] in (b" ", b"\t"):
            # llhttp keeps the whitespace after a value; aiohttp drops it (RFC 9110 §5.5),
            # and so must the value judged and forwarded.
            value = value.rstrip(b" \t")
            headers[i] = (name, value)
        lower = name.lower()
        names.append(lower)
        if lower in _SINGLETONS:
            if lower in seen:
                return None
            seen.add(lower)
        if lower == b"connection":
            if b"close" in [t.strip() for t in value.lower().split(b",")]:
                keep_alive = False
        elif lower == _REFUSED:
            return None
        elif lower == b"content-length":
            # One (a second is a singleton's copy, above), digits only as llhttp checked;
            # the body is read by the lean front, and framed upstream by this same header.
            if not value.isdigit():
                return None
            length = int(value)
        elif len(name) in (6, 7, 14, 17):  # the lengths of the names in _NOT_MINE
            # In every other spelling a CGI/WSGI upstream reads as the same header (the
            # header policy's canonical_header): "Content_Length" is framing to some.
            canonical = lower.replace(b"_", b"-").replace(b".", b"-")
            if canonical in _NOT_MINE:
                return None
    if b"host" not in seen:
        return None  # HTTP/1.1 requires one: aiohttp answers 400
    if method in (b"HEAD", b"CONNECT") or url[:1] != b"/":
        return None
    if head_size(method, url, headers) > max_size:
        return None
    return Head(method.decode("ascii"), url, headers, keep_alive, names, length)
