"""parse_head's HTTP/1.1 check: it reads the version off the request line, and takes a head
only when llhttp itself reads that head as HTTP/1.1 (never a head of another version)."""

from __future__ import annotations

import httptools
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.web.heads import parse_head

_REST = b"Host: a\r\n\r\n"


def _llhttp_version(data: bytes) -> str | None:
    """The version llhttp reads in ``data`` (None: it refuses the head)."""

    class Seen:
        def on_headers_complete(self) -> None:
            return None

    parser = httptools.HttpRequestParser(Seen())
    try:
        parser.feed_data(data)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return None
    return parser.get_http_version()


@pytest.mark.parametrize(
    ("line", "taken"),
    [
        (b"GET /a HTTP/1.1\r\n", True),
        (b"\r\n\r\nGET /a HTTP/1.1\r\n", True),  # llhttp skips CR/LF before a request line
        (b"\nGET /a?x=1 HTTP/1.1\r\n", True),
        (b"GET /a HTTP/1.0\r\n", False),
        (b"GET /a HTTP/2.0\r\n", False),
        (b"GET /a HTTP/1.1 HTTP/1.0\r\n", False),
        (b"GET /a  HTTP/1.1\r\n", False),
        (b"GET  /a HTTP/1.1\r\n", False),
        (b"GET /a HTTP/1.1 \r\n", False),
        (b"GET /a http/1.1\r\n", False),
        (b"GET /a HTTP/1.1\n", False),  # a bare LF: aiohttp's
        (b"ANNOUNCE /a RTSP/1.1\r\n", False),
        (b"GET /a RTSP/1.1\r\n", False),  # llhttp reads it as 1.1
        (b"SOURCE /a ICE/1.1\r\n", False),  # likewise
        (b"GET /a HTTP/1.1\r\r\n", False),
        (b"GET\t/a HTTP/1.1\r\n", False),
        (b"GET /a\tHTTP/1.1\r\n", False),
        (b"GET /a HTTP/11\r\n", False),
    ],
)
def test_only_a_request_line_of_http_1_1_is_taken(line: bytes, taken: bool) -> None:
    head = parse_head(line + _REST, 100, 8192)
    assert (head is not None) is taken
    if taken:
        assert _llhttp_version(line + _REST) == "1.1"


_PIECES = st.sampled_from(
    [b"GET", b"POST", b"SOURCE", b"ANNOUNCE", b"get", b" ", b"  ", b"/a", b"/a b", b"?q=1",
     b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"RTSP/1.1", b"ICE/1.1", b"http/1.1", b"HTTP/1.1 ",
     b"\r\n", b"\n", b"\r", b"\t", b"\x0c", b"\x80", b"1"]
)  # fmt: skip


@given(st.lists(_PIECES, max_size=10).map(b"".join))
def test_a_head_is_taken_only_when_its_request_line_is_plain_http_1_1(line: bytes) -> None:
    """Taken: llhttp read it as HTTP/1.1, and the request line is exactly the method, one
    space, the target, one space and ``HTTP/1.1`` (what the upstream is sent)."""
    data = line + b"\r\n" + _REST
    head = parse_head(data, 100, 8192)
    if head is not None:
        assert _llhttp_version(data) == "1.1"
        request_line = data.lstrip(b"\r\n").split(b"\r\n", 1)[0]
        assert request_line == head.method.encode() + b" " + head.target + b" HTTP/1.1"


@given(
    st.sampled_from([b"GET", b"POST", b"DELETE", b"OPTIONS"]),
    st.from_regex(rb"\A/[A-Za-z0-9/._~%?=&-]{0,40}\Z"),
    st.sampled_from([b"", b"\r\n", b"\n\r\n"]),
)
def test_every_plain_http_1_1_head_is_taken(method: bytes, target: bytes, before: bytes) -> None:
    """The check refuses nothing llhttp reads as an HTTP/1.1 request line of one space each."""
    data = before + method + b" " + target + b" HTTP/1.1\r\n" + _REST
    if _llhttp_version(data) == "1.1":
        assert parse_head(data, 100, 8192) is not None
