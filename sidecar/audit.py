"""Structured JSON logs: one line per request and per audit event.

Only token *ids* are ever logged — never token text, OTPs, cookie values or keys. Callers
pass plain fields; this module adds the timestamp and event name and writes one JSON line.
"""

from __future__ import annotations

import json
import logging
import sys
import time

AUDIT = logging.getLogger("sidecar.audit")
ACCESS = logging.getLogger("sidecar.access")

Field = str | int | float | bool | None


def audit(event: str, **fields: Field) -> None:
    """Record an audit event: mint, redeem, redeem_failed, replay, revoke, logout, …"""
    if AUDIT.isEnabledFor(logging.INFO):
        AUDIT.info(json.dumps({"ts": round(time.time(), 3), "event": event, **fields}))


class JsonLineFormatter(logging.Formatter):
    """Audit/access records are already JSON; anything else is wrapped into one line."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name in (AUDIT.name, ACCESS.name):
            return message
        doc: dict[str, Field] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": message,
        }
        if record.exc_info and record.exc_info[0] is not None:
            doc["error"] = record.exc_info[0].__name__
        return json.dumps(doc)


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
