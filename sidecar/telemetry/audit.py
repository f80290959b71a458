"""Structured JSON logs: one line per request and per audit event.

Only token *ids* are ever logged — never token text, OTPs, cookie values or keys. Callers
pass plain fields; this module adds the timestamp and event name and writes one JSON line.
"""

from __future__ import annotations

import json
import logging
import math
import time
from json.encoder import encode_basestring_ascii as _json_str

from sidecar.telemetry.context import current_request_id, rfc3339
from sidecar.telemetry.logwriter import ACCESS_LOGGER
from sidecar.telemetry.logwriter import LoopBatchedHandler as LoopBatchedHandler
from sidecar.telemetry.logwriter import direct_sink as direct_sink

AUDIT = logging.getLogger("sidecar.audit")
ACCESS = logging.getLogger(ACCESS_LOGGER)

Field = str | int | float | bool | None


def audit(event: str, **fields: Field) -> None:
    """Record an audit event: mint, redeem, redeem_failed, replay, revoke, logout, …

    The line carries the ``request_id`` of the request that caused it (when there is one),
    so an audit event and its access line can be joined."""
    if AUDIT.isEnabledFor(logging.INFO):
        request_id = current_request_id()
        if request_id is not None and "request_id" not in fields:
            fields["request_id"] = request_id
        _write(_line(event, fields))


def audit_redemption(token_id: str, user_id: str, role: str, one_time: bool) -> None:
    """``audit("redeem", token_id=…, user_id=…, role=…, one_time=…)``, the same line byte
    for byte, built in one piece: every redemption writes one, and the general builder's
    keyword dictionary and per-field escaping of the names were two thirds of its cost."""
    if AUDIT.isEnabledFor(logging.INFO):
        _write(redemption_line(rfc3339(time.time()), token_id, user_id, role, one_time))


def redemption_line(ts: str, token_id: str, user_id: str, role: str, one_time: bool) -> str:
    """The line of :func:`audit_redemption` at ``ts`` (the request id, when there is one,
    last, as :func:`audit` adds it)."""
    # Every field a str, and no conversion or format spec in the f-string: compiled, it is
    # one concatenation (see sidecar.telemetry.access).
    last = _closing()
    once = "true" if one_time else "false"
    return (
        f'{{"ts": "{ts}", "level": "info", "event": "redeem", "token_id": {_json_str(token_id)}'
        f', "user_id": {_json_str(user_id)}, "role": {_json_str(role)}, "one_time": {once}{last}'
    )


def _closing() -> str:
    """The end of a line built in one piece: the request id, when there is one, last (as
    :func:`audit` adds it), and the closing brace."""
    request_id = current_request_id()
    return "}" if request_id is None else ', "request_id": ' + _json_str(request_id) + "}"


def audit_mint(
    token_id: str,
    user_id: str,
    role: str,
    kind: str,
    one_time: bool,
    expires_at: str,
    module: str | None,
) -> None:
    """``audit("mint", token_id=…, user_id=…, role=…, kind=…, one_time=…, expires_at=…,
    module=…)``, the same line byte for byte, built in one piece as a redemption's is
    (every mint writes one)."""
    if AUDIT.isEnabledFor(logging.INFO):
        ts = rfc3339(time.time())
        _write(mint_line(ts, token_id, user_id, role, kind, one_time, expires_at, module))


def mint_line(
    ts: str,
    token_id: str,
    user_id: str,
    role: str,
    kind: str,
    one_time: bool,
    expires_at: str,
    module: str | None,
) -> str:
    """The line of :func:`audit_mint` at ``ts`` (the request id, when there is one, last)."""
    last = _closing()
    once = "true" if one_time else "false"
    shown_module = "null" if module is None else _json_str(module)
    # Every field a str, no conversion or format spec (see redemption_line).
    return (
        f'{{"ts": "{ts}", "level": "info", "event": "mint", "token_id": {_json_str(token_id)}'
        f', "user_id": {_json_str(user_id)}, "role": {_json_str(role)}'
        f', "kind": {_json_str(kind)}, "one_time": {once}'
        f', "expires_at": {_json_str(expires_at)}, "module": {shown_module}{last}'
    )


def _write(line: str) -> None:
    # As the access log does: no LogRecord (and no caller lookup) when nothing but the
    # batched handler would see the line.
    sink = direct_sink(AUDIT)
    if sink is not None:
        sink.line(line)
    else:
        AUDIT.handle(AUDIT.makeRecord(AUDIT.name, logging.INFO, "", 0, line, (), None))


def _line(event: str, fields: dict[str, Field]) -> str:
    """The line ``json.dumps`` writes for ``{"ts", "level", "event", **fields}``, built
    directly at a fraction of its cost (every mint and redemption writes one)."""
    ts = rfc3339(time.time())
    if "ts" in fields or "level" in fields:  # an override keeps json.dumps' key order
        return json.dumps({"ts": ts, "level": "info", "event": event, **fields})
    parts = [f'{{"ts": "{ts}", "level": "info", "event": {_json_str(event)}']
    keys = _KEYS
    for name, value in fields.items():
        key = keys.get(name)
        if key is None:
            key = ", " + _json_str(name) + ": "
            if len(keys) < _MAX_KEYS:
                keys[name] = key
        parts.append(key)
        parts.append(_value(value))
    parts.append("}")
    return "".join(parts)


# Each field name's text in the line (``, "name": ``), escaped once: the names are the
# callers' keywords, a few dozen in all (bounded all the same: a name is any string).
_KEYS: dict[str, str] = {}
_MAX_KEYS = 256


def _value(value: Field) -> str:
    """``value`` as ``json.dumps`` writes it."""
    if isinstance(value, str):
        return _json_str(value)
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if math.isfinite(value):
        return float.__repr__(value)
    return json.dumps(value)  # NaN, Infinity


class JsonLineFormatter(logging.Formatter):
    """Audit/access records are already JSON; anything else is wrapped into one line."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name in (AUDIT.name, ACCESS.name):
            return message
        doc: dict[str, Field] = {
            "ts": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": message,
        }
        if record.exc_info and record.exc_info[0] is not None:
            doc["error"] = record.exc_info[0].__name__
        return json.dumps(doc)
