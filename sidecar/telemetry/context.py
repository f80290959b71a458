"""What the log lines of one request share: its id and user, carried by a context variable.

The access middleware (:mod:`sidecar.web.accesslog`) sets the record when a request starts;
aiohttp runs the handler, and everything it calls, in the same task, so audit events and the
upstream client reach the same record without it being passed around.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Final


@dataclass(slots=True, init=False)  # its __init__ compiled: see sidecar.web.heads.Head
class RequestRecord:
    request_id: str
    route: str  # proxied, redeem, verify, page, admin: the request-duration histogram's label
    user_id: str | None
    upstream_s: float | None
    upstream_error: str | None

    def __init__(
        self,
        request_id: str,
        route: str,
        user_id: str | None = None,
        upstream_s: float | None = None,
        upstream_error: str | None = None,
    ) -> None:
        self.request_id = request_id
        self.route = route
        self.user_id = user_id
        self.upstream_s = upstream_s
        self.upstream_error = upstream_error


CURRENT: ContextVar[RequestRecord | None] = ContextVar("sidecar_request", default=None)


def current_request_id() -> str | None:
    record = CURRENT.get()
    return None if record is None else record.request_id


def set_route(route: str) -> None:
    """Name what kind of request this turned out to be (``proxied``, ``redeem``, ``verify``)."""
    record = CURRENT.get()
    if record is not None:
        record.route = route


def set_user(user_id: str) -> None:
    """Name the user of the request being handled (for its access log line)."""
    record = CURRENT.get()
    if record is not None:
        record.user_id = user_id


_last = (-1, "")  # the millisecond formatted last, and its text (swapped whole: threads)
_last_second = (-1, "")  # the same for the date and time to the second

# ".000Z" to ".999Z": the milliseconds' part of the text, zero-padded without a format
# spec (compiled, one would cost a str.format call).
_MILLIS: Final = tuple("." + str(1000 + ms)[1:] + "Z" for ms in range(1000))


def rfc3339(timestamp: float) -> str:
    """``timestamp`` as RFC 3339 UTC with milliseconds: ``2026-11-30T03:50:01.123Z``.

    Formatted once per millisecond, the date part once per second (every log line asks,
    and under load many lines share a millisecond)."""
    global _last, _last_second
    millis = int(timestamp * 1000)
    last = _last
    if last[0] == millis:
        return last[1]
    whole = millis // 1000
    second = _last_second
    if second[0] != whole:
        second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
        _last_second = second
    text = second[1] + _MILLIS[millis % 1000]
    _last = (millis, text)
    return text
