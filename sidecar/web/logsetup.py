"""Process-wide logging: JSON lines on stderr, and aiohttp's parse errors as warnings."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from aiohttp.http_exceptions import HttpProcessingError

from sidecar.telemetry.audit import ACCESS, JsonLineFormatter
from sidecar.telemetry.logwriter import (
    DEFAULT_BACKLOG,
    DEFAULT_BUFFER,
    DEFAULT_FLUSH,
    LoopBatchedHandler,
)


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a request it could not parse as an error with a traceback
    ("Error handling request"). That is the client's doing, not a fault of ours: one warning
    line with the parser's reason instead. Errors of our own handlers stay errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = (
                "malformed request: %s: %s",
                (type(exc).__name__, _reason(exc)),
            )
            record.exc_info = None
        return True


def _reason(exc: HttpProcessingError) -> str:
    """The parser's reason without the bytes it quotes: they may hold a refer token (request
    line) or a cookie (header), and those never reach a log."""
    first = str(exc.message).split("\n", 1)[0]
    for quote in ("'", '"', "b'"):
        first = first.split(quote, 1)[0]
    return first.strip().rstrip(":")[:120]


def configure_logging(
    level: str = "info",
    stream: TextIO | None = None,
    *,
    access: bool = True,
    buffer: int = DEFAULT_BUFFER,
    flush_after: float = DEFAULT_FLUSH,
    backlog: int = DEFAULT_BACKLOG,
) -> None:
    """One JSON line per record on ``stream`` (stderr by default), at ``level`` and above;
    ``access=False`` turns off the access lines (``logging.access``); access lines are held
    up to ``buffer`` bytes or ``flush_after`` seconds (``logging.buffer``, ``logging.flush``:
    :mod:`sidecar.telemetry.logwriter`); at most ``backlog`` bytes wait for a slow stream
    (``logging.backlog``: :mod:`sidecar.telemetry.logthread`)."""
    handler = LoopBatchedHandler(
        sys.stderr if stream is None else stream,
        buffer=buffer,
        flush_after=flush_after,
        backlog=backlog,
    )
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger()
    previous = root.handlers[:]
    for old in previous:
        old.flush()
    root.handlers[:] = [handler]
    for old in previous:
        if isinstance(old, LoopBatchedHandler):
            old.close()  # its writing thread ends (what it held is written)
    set_levels(level, access=access)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server.filters):
        server.addFilter(MalformedRequestFilter())


def set_levels(level: str, *, access: bool) -> None:
    """The root logger at ``level``; the access log at the same level, or off."""
    logging.getLogger().setLevel(level.upper())
    ACCESS.setLevel(logging.NOTSET if access else logging.CRITICAL + 1)


def set_buffering(buffer: int, flush_after: float, backlog: int = DEFAULT_BACKLOG) -> None:
    """``logging.buffer``, ``logging.flush`` and ``logging.backlog`` on a reload (what is held
    is written first)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, LoopBatchedHandler):
            handler.set_buffering(buffer, flush_after, backlog)


def flush_logs() -> None:
    """Write every line the root's handlers hold (SIGHUP: an operator rotating the log, or
    looking for the latest access lines, sees them now)."""
    for handler in logging.getLogger().handlers:
        handler.flush()
