"""The bytes of the answers the lean front writes (:mod:`sidecar.proxy.express`).

Each is what aiohttp's server writes for the same answer from the forwarder or the gateway
(tests/test_lean.py compares them byte for byte, ``Date`` and ``X-Request-Id`` values
aside): the upstream's status, reason and headers as the header policy passes them, a
``Date`` when the upstream sent none, ``X-Request-Id`` on what is relayed whole and on the
sidecar's own pages, ``Content-Length`` where the body is known (none for ``1xx``, ``204``
and ``304``), chunked coding for a stream of unknown length, and ``Connection: close``
when the client asked to close.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from email.utils import formatdate
from functools import lru_cache
from http import HTTPStatus
from typing import Final

from sidecar.proxy.forward import Failure
from sidecar.proxy.verdicts import Redirect
from sidecar.web import pages

_REASONS: Final = {s.value: s.phrase for s in HTTPStatus}
NO_BODY: Final = frozenset((204, 304, *range(100, 200)))


def whole(
    status: int,
    reason: str | None,
    headers: list[tuple[str, str]],
    body: bytes,
    request_id: str,
    keep_alive: bool,
) -> bytes:
    """An upstream answer relayed whole."""
    if status in NO_BODY:
        return _whole_bodyless(status, reason, headers, request_id, keep_alive)
    # The usual answer, in one pass over its headers: their lines, and whether the upstream
    # gave the three the answer would otherwise get (a name is lower-cased only when it is
    # as long as one of them). Every answer relayed whole comes this way: no set of names,
    # no string formatted per header.
    parts: list[str] = []
    has_id = has_length = has_date = False
    for name, value in headers:
        size = len(name)
        if size == 12 or size == 14 or size == 4:
            lower = name.lower()
            if lower == "x-request-id":
                has_id = True
            elif lower == "content-length":
                has_length = True
            elif lower == "date":
                has_date = True
        parts.append(name)
        parts.append(": ")
        parts.append(value)
        parts.append("\r\n")
    # Values go back as the bytes that came (surrogateescape), as _head_lines writes them.
    lines = [_status_line_for(status, reason), "".join(parts).encode("utf-8", "surrogateescape")]
    if not has_id:
        lines.append(b"X-Request-Id: " + request_id.encode() + b"\r\n")
    if not has_length:
        lines.append(b"Content-Length: %d\r\n" % len(body))
    if not has_date:
        lines.append(_date_line(int(time.time())))
    if not keep_alive:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    lines.append(body)
    return b"".join(lines)


def _whole_bodyless(
    status: int,
    reason: str | None,
    headers: list[tuple[str, str]],
    request_id: str,
    keep_alive: bool,
) -> bytes:
    """:func:`whole` for a status that has no body (``1xx``, ``204``, ``304``): no
    ``Content-Length`` (the upstream's dropped), no body."""
    names = {n.lower() for n, _ in headers}
    if "content-length" in names:
        headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
    lines = _head_lines(status, reason, headers)
    if "x-request-id" not in names:
        lines.append(b"X-Request-Id: " + request_id.encode() + b"\r\n")
    return _finish(lines, names, keep_alive)


def stream_head(
    status: int, reason: str | None, headers: list[tuple[str, str]], keep_alive: bool
) -> tuple[bytes, bool]:
    """The head of an upstream answer relayed as it comes, and whether its body is to be
    sent chunked (the upstream gave no length)."""
    lines = _head_lines(status, reason, headers)
    names = {n.lower() for n, _ in headers}
    chunked = "content-length" not in names
    if chunked:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    return _finish(lines, names, keep_alive), chunked


def failure(
    accept: str | None,
    templates: Mapping[str, str],
    failed: Failure,
    request_id: str,
    keep_alive: bool,
    *,
    retry_after: int | None = None,
) -> bytes:
    """The sidecar's own failure page (:func:`sidecar.web.pages.failure_for`)."""
    page = pages.failure_for(
        accept or "", templates, failed.status, failed.reason, retry_after=retry_after
    )
    body = page.body
    assert isinstance(body, bytes)  # a Response built from text
    lines = _head_lines(page.status, None, page.headers.items())
    lines.append(b"X-Request-Id: " + request_id.encode() + b"\r\n")
    lines.append(b"Content-Length: %d\r\n" % len(body))
    return _finish(lines, {n.lower() for n in page.headers}, keep_alive) + body


def refusal(
    refused: Failure | Redirect,
    accept: str | None,
    templates: Mapping[str, str],
    request_id: str,
    keep_alive: bool,
) -> bytes:
    """A request the lean front refuses itself: the failure page, or the login redirect
    (``Location``, then :data:`sidecar.web.pages.NO_STORE`, as the handler writes it)."""
    if isinstance(refused, Redirect):
        headers = [("Location", refused.location), *pages.NO_STORE.items()]
        return bodyless(refused.status, headers, request_id, keep_alive)
    return failure(accept, templates, refused, request_id, keep_alive)


def bodyless(
    status: int,
    headers: list[tuple[str, str]],
    request_id: str,
    keep_alive: bool,
    names: AbstractSet[str] | None = None,
) -> bytes:
    """An answer of the sidecar's own without a body (a redemption's 303): ``headers``,
    then what aiohttp's server adds, in its order — the access middleware's
    ``X-Request-Id``, the framing, ``Date``, and the ``nosniff`` of
    :func:`~sidecar.web.listener.own_answer_headers`. Each only when ``headers`` has none
    (forward-auth's answer carries a role's headers, whose names the config may choose),
    and never a ``Server``, as aiohttp's server does.

    ``names``: the lower-cased names of ``headers``, when the caller knows them ahead
    (a redemption's are constants: :data:`sidecar.refer.redeem.REDIRECT_NAMES`); read
    from ``headers`` otherwise."""
    if names is None:
        names = {n.lower() for n, _ in headers}
    if names & _ADDED:
        return _bodyless_as_named(status, headers, names, request_id, keep_alive)
    lines = _head_lines(status, None, headers)
    lines.append(b"X-Request-Id: " + request_id.encode() + b"\r\nContent-Length: 0\r\n")
    lines.append(_date_line(int(time.time())))
    if not keep_alive:
        lines.append(b"Connection: close\r\n")
    lines.append(b"X-Content-Type-Options: nosniff\r\n\r\n")
    return b"".join(lines)


# The names of the headers aiohttp's server adds to an answer, or takes away (Server).
_ADDED: Final = frozenset(("x-request-id", "date", "x-content-type-options", "server"))


def _bodyless_as_named(
    status: int,
    headers: list[tuple[str, str]],
    names: AbstractSet[str],
    request_id: str,
    keep_alive: bool,
) -> bytes:
    lines = _head_lines(status, None, [(n, v) for n, v in headers if n.lower() != "server"])
    if "x-request-id" not in names:
        lines.append(b"X-Request-Id: " + request_id.encode() + b"\r\n")
    lines.append(b"Content-Length: 0\r\n")
    if "date" not in names:
        lines.append(_date_line(int(time.time())))
    if not keep_alive:
        lines.append(b"Connection: close\r\n")
    if "x-content-type-options" not in names:
        lines.append(b"X-Content-Type-Options: nosniff\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def _status_line(status: int, phrase: str) -> bytes:
    return b"HTTP/1.1 %d %b\r\n" % (status, phrase.encode("latin-1", "replace"))


# Every standard status's line, formatted once rather than per answer (every redemption's
# 303 is one, and most relayed answers).
_STATUS_LINES: Final = {status: _status_line(status, phrase) for status, phrase in _REASONS.items()}


def _status_line_for(status: int, reason: str | None) -> bytes:
    """The status line of ``status`` with ``reason`` (None: the standard phrase)."""
    status_line = _STATUS_LINES.get(status)
    # The line formatted once also serves an upstream's reason that is the standard one
    # (most answers relayed: "200 OK").
    if status_line is None or (reason is not None and reason != _REASONS[status]):
        status_line = _status_line(status, _REASONS.get(status, "") if reason is None else reason)
    return status_line


def _head_lines(status: int, reason: str | None, headers: Iterable[tuple[str, str]]) -> list[bytes]:
    # Names are tokens (ASCII); values go back as the bytes that came (surrogateescape).
    text = "".join([f"{name}: {value}\r\n" for name, value in headers])
    return [_status_line_for(status, reason), text.encode("utf-8", "surrogateescape")]


def _finish(lines: list[bytes], names: set[str], keep_alive: bool) -> bytes:
    if "date" not in names:
        lines.append(_date_line(int(time.time())))
    if not keep_alive:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


@lru_cache(maxsize=2)
def _date_line(second: int) -> bytes:
    return b"Date: " + formatdate(second, usegmt=True).encode() + b"\r\n"
