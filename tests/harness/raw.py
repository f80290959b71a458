"""Raw HTTP on a socket, for what a well-behaved client library would never send.

:func:`raw_http` writes bytes exactly as given and reads the answers by their framing
(``Content-Length``, chunked, bodiless statuses), so it returns as soon as the answer is
complete instead of waiting for the connection to go quiet. It waits for silence only
where framing cannot tell: a server that answers nothing, or an unframed body.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

QUIET = 3.0  # the longest silence accepted while an answer is still incomplete


@dataclass(frozen=True, slots=True)
class RawResponse:
    """The first answer on the connection; ``body`` holds everything after its head."""

    status: int  # 0 when nothing came back
    headers: tuple[tuple[str, str], ...]
    body: bytes
    responses: int  # how many status lines came back on the connection
    raw: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


def request_bytes(method: str, target: str, *headers: str, host: str = "app.test") -> bytes:
    """One request, written exactly as given (no URL normalisation), ``Connection: close``."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def raw_request(port: int, method: str, target: str, *headers: str) -> RawResponse:
    """:func:`request_bytes` sent with :func:`raw_http`."""
    return await raw_http(port, request_bytes(method, target, *headers))


async def raw_http(
    port: int,
    data: bytes,
    *,
    source: str | None = None,
    answers: int = 1,
    then: bytes | None = None,
    quiet: float = QUIET,
) -> RawResponse:
    """Send ``data`` as-is on a fresh connection (from address ``source``, if given).

    Reading stops when the server closes the connection, or once ``answers`` complete
    responses arrived on a connection the server keeps open, or after ``quiet`` seconds
    of silence. With ``then``, those bytes are sent at that point instead of stopping, and
    reading goes on until the server closes: as a server answers in order, anything it
    still had queued from ``data`` (a smuggled request) answers before ``then`` does."""
    local = (source, 0) if source else None
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=local)
    received = b""
    head_first = data.startswith(b"HEAD ")
    try:
        writer.write(data)
        await writer.drain()
        with contextlib.suppress(TimeoutError, ConnectionError):
            while chunk := await asyncio.wait_for(reader.read(65536), quiet):
                received += chunk
                complete, closing = _framed(received, head_first=head_first)
                if complete >= answers and not closing:
                    if then is None:
                        break
                    writer.write(then)
                    await writer.drain()
                    then, answers = None, 1 << 30  # from here on: until the server closes
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return parse_raw(received)


def _framed(raw: bytes, *, head_first: bool) -> tuple[int, bool]:
    """(complete answers at the start of ``raw``, whether more may follow: False only when
    the last answer is complete and leaves the connection open)."""
    pos = count = 0
    while True:
        end = raw.find(b"\r\n\r\n", pos)
        if end < 0:
            return count, True
        lines = raw[pos:end].decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        try:
            status = int(rest[:3])
        except ValueError:
            return count, True  # not HTTP: read until the server closes
        fields: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip().lower()
        start = end + 4
        if 100 <= status < 200 and status != 101:
            pos = start  # an interim answer: the final one follows
            continue
        if status == 101:
            return count + 1, False  # the connection now speaks another protocol
        if (head_first and count == 0) or status in (204, 304):
            stop: int | None = start
        elif "chunked" in fields.get("transfer-encoding", ""):
            stop = _chunked_end(raw, start)
        elif "content-length" in fields:
            stop = start + int(fields["content-length"])
        else:
            return count, True  # the body runs until the connection closes
        if stop is None or stop > len(raw):
            return count, True
        count += 1
        pos = stop
        closes = "close" in fields.get("connection", "") or (
            version == "HTTP/1.0" and "keep-alive" not in fields.get("connection", "")
        )
        if pos == len(raw):
            return count, closes


def _chunked_end(raw: bytes, pos: int) -> int | None:
    """Where a chunked body starting at ``pos`` ends (after its trailers), if it has."""
    while True:
        line_end = raw.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(raw[pos:line_end].split(b";")[0], 16)
        if size == 0:
            trailers_end = raw.find(b"\r\n\r\n", line_end)
            if raw[line_end : line_end + 4] == b"\r\n\r\n":
                return line_end + 4
            return None if trailers_end < 0 else trailers_end + 4
        pos = line_end + 2 + size + 2
        if pos > len(raw):
            return None


def parse_raw(raw: bytes) -> RawResponse:
    if not raw:
        return RawResponse(0, (), b"", 0, raw)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = tuple(
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])
    )
    responses = raw.count(b"HTTP/1.1 ") + raw.count(b"HTTP/1.0 ")
    return RawResponse(status, headers, body, responses, raw)
