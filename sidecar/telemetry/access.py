"""The access log's line and its request ids: the part of :mod:`sidecar.web.accesslog` that
runs for every request, kept apart from the aiohttp middleware so that it can be compiled
with the hot path (:mod:`sidecar.compiled`; a module with a ``@web.middleware`` function
cannot be). The line's fields and their meaning are documented in
:mod:`sidecar.web.accesslog`.

The line is built with an f-string and the C string escaper of :mod:`json` (the same text
``json.dumps`` gives, at half the cost). When the process logs as ``sidecar serve`` sets it
up (one batched JSON-lines handler on the root logger, nothing else in the way) the line
goes straight to that handler, with no ``LogRecord``
(:func:`~sidecar.telemetry.audit.direct_sink`); otherwise it is handed to the logger as a
ready record.
"""

from __future__ import annotations

import logging
import os
import random
import re
import secrets
import time
from json.encoder import encode_basestring_ascii as _json_str
from typing import Final

from sidecar.telemetry import metrics
from sidecar.telemetry.audit import ACCESS, direct_sink
from sidecar.telemetry.context import RequestRecord, rfc3339

REQUEST_ID: Final = "X-Request-Id"
_SANE_ID: Final = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_MAX_PATH: Final = 2048
# nginx's code for "the client closed the connection before the answer was complete".
CLIENT_CLOSED: Final = 499
# Request ids need to be unique, not secret: no system call per request for them.
_IDS: Final = random.Random(secrets.randbits(128))  # noqa: S311
# Ids are drawn _ID_BATCH at a time: one random number of 128 bits each, written in hex
# once and cut into 32-digit pieces (a draw and a hex() per id were a fiftieth of a
# proxied request's instructions).
_ID_BATCH: Final = 64
_BATCH_BITS: Final = 128 * _ID_BATCH
# The hex digits of the batch, zero-padded by a bit above them that hex() writes as the
# "1" after "0x": cheaper than any format spec.
_BATCH_TOP_BIT: Final = 1 << _BATCH_BITS
_DRAWN: Final[list[str]] = []  # ids drawn and not handed out yet, taken from the end


def _reseed_ids() -> None:
    # The ids drawn before the fork are the parent's too: dropped, or both would hand
    # them out.
    _DRAWN.clear()
    _IDS.seed(secrets.randbits(128))


# `sidecar serve --workers` forks its workers from a supervisor that has imported this
# module: without a new seed each worker would give the same ids as every other, in the
# same order (the random module reseeds only its own global generator at a fork).
os.register_at_fork(after_in_child=_reseed_ids)


def request_id_for(header: str | None) -> str:
    """The client's request id when it is sane, else a new random one."""
    if header is not None and _SANE_ID.fullmatch(header):
        return header
    drawn = _DRAWN
    if not drawn:
        digits = hex(_IDS.getrandbits(_BATCH_BITS) | _BATCH_TOP_BIT)
        drawn.extend([digits[i : i + 32] for i in range(3, 3 + 32 * _ID_BATCH, 32)])
    return drawn.pop()


class AccessLine:
    """Counts a finished request of ``listener`` and writes its access line (when the
    ``sidecar.access`` logger is on): the access middleware's end, and the lean front's
    lanes' (:mod:`sidecar.web.lean`)."""

    __slots__ = ("_listener", "_prefix")

    def __init__(self, listener: str) -> None:
        self._listener = listener
        self._prefix = (
            f'"level": "info", "event": "access", "listener": {_json_str(listener)}, "method": '
        )

    def __call__(
        self,
        method: str,
        path: str,
        status: int,
        elapsed: float,
        record: RequestRecord,
        remote: str | None,
    ) -> None:
        """``path``: the raw path without the query."""
        metrics.observe_request(status, elapsed, self._listener, record.route)
        if not _info_enabled(ACCESS):
            return
        line = _line(self._prefix, method, path, status, elapsed, record, remote)
        sink = direct_sink(ACCESS)
        if sink is not None:
            sink.access(line)
        else:
            ACCESS.handle(ACCESS.makeRecord(ACCESS.name, logging.INFO, "", 0, line, (), None))


def _info_enabled(logger: logging.Logger) -> bool:
    """``logger.isEnabledFor(logging.INFO)``, read from the answer ``logging`` keeps per
    logger (``Logger._cache``: filled by isEnabledFor, emptied by every ``setLevel`` and
    ``logging.disable``); compiled, the method itself is an interpreted call per request.
    Without that cache (another Python), the method."""
    if logger.disabled:
        return False
    cache = getattr(logger, "_cache", None)
    if type(cache) is dict:
        enabled = cache.get(logging.INFO)
        if type(enabled) is bool:
            return enabled
    return logger.isEnabledFor(logging.INFO)


def _line(
    prefix: str,
    method: str,
    path: str,
    status: int,
    elapsed: float,
    record: RequestRecord,
    remote: str | None,
) -> str:
    """The JSON object ``json.dumps`` would write for the fields of the access line."""
    if len(path) > _MAX_PATH:
        path = path[:_MAX_PATH] + "…"
    upstream = "null" if record.upstream_s is None else _millis(record.upstream_s)
    user = "null" if record.user_id is None else _quoted(record.user_id)
    error = "" if record.upstream_error is None else _error_field(record.upstream_error)
    client = "null" if remote is None else _quoted(remote)
    shown_method = _METHODS.get(method)
    if shown_method is None:
        shown_method = _json_str(method)
    code = str(status)
    # The duration's two parts written into the line itself (see _millis): no string of
    # its own to concatenate.
    hundredths = int(elapsed * 100000 + 0.5)
    whole = str(hundredths // 100)
    # Every field a str, and no conversion or format spec in the f-string: compiled, it is
    # then one concatenation (with either, mypyc falls back to str.format, three times
    # the cost of the whole line).
    return (
        f'{{"ts": "{rfc3339(time.time())}", {prefix}{shown_method}, '
        f'"path": {_json_str(path)}, "status": {code}, '
        f'"duration_ms": {whole}{_CENTS[hundredths % 100]}, '
        f'"upstream_ms": {upstream}, '
        f'"user_id": {user}, "request_id": {_json_str(record.request_id)}, '
        f'"remote": {client}{error}}}'
    )


def _millis(seconds: float) -> str:
    """``seconds`` in milliseconds to two decimals, written as ``json.dumps(round(seconds *
    1000, 2))`` writes them (``3.1``, ``3.0``, ``0.05``), in integer arithmetic: a float's
    formatting was a tenth of the line's cost. (Rounded half up from the product, it can
    differ from ``round``'s correctly rounded half-even only within a rounding error of a
    half hundredth: none in a million random durations.)"""
    hundredths = int(seconds * 100000 + 0.5)
    return str(hundredths // 100) + _CENTS[hundredths % 100]


# The fraction of a duration in milliseconds, by its hundredths, as json.dumps writes a
# float's: ".0" for none, one digit when the second is 0 (".5"), else two (".05", ".25").
_CENTS: Final = tuple("." + (str(c // 10) if c % 10 == 0 else str(100 + c)[1:]) for c in range(100))

# The methods every client sends, already written as JSON strings; any other is escaped.
_METHODS: Final = {
    m: _json_str(m) for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
}

# Client addresses and user ids repeat from request to request: each written as a JSON
# string once. Bounded: emptied when full, and long texts are not kept.
_SEEN: Final[dict[str, str]] = {}
_MAX_SEEN: Final = 1024
_MAX_SEEN_LENGTH: Final = 128


def _quoted(text: str) -> str:
    """``text`` as a JSON string (``json.dumps(text)``)."""
    known = _SEEN.get(text)
    if known is None:
        known = _json_str(text)
        if len(text) <= _MAX_SEEN_LENGTH:
            if len(_SEEN) >= _MAX_SEEN:
                _SEEN.clear()
            _SEEN[text] = known
    return known


def _error_field(reason: str) -> str:
    return ', "upstream_error": ' + _json_str(reason)
