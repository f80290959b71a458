"""The schemas of the admin API's OpenAPI document (:mod:`sidecar.admin.openapi`): request
and answer bodies, and the two error-body families (``{code, error_code, message[, field]}``
on the sidecar's own routes, GoTrue's ``{code, error_code, msg, details}`` under ``/admin/``).
"""

from __future__ import annotations

from typing import Any

from sidecar.config import LINK_TYPES
from sidecar.links import errorcodes as codes
from sidecar.links.request import TYPE_ALIASES
from sidecar.tokens.records import STATES

Schema = dict[str, Any]

_REF = "#/components/{}/{}"


def ref(kind: str, name: str) -> Schema:
    return {"$ref": _REF.format(kind, name)}


def nullable(schema: Schema) -> Schema:
    kind = schema["type"]
    return {**schema, "type": [kind, "null"]}


def obj(properties: Schema, required: list[str], **extra: Any) -> Schema:
    return {"type": "object", "properties": properties, "required": required, **extra}


TIME = {"type": "string", "format": "date-time"}
ERROR_CODE = {
    "type": "string",
    "enum": list(codes.ALL),
    "description": "a stable machine-readable reason, in GoTrue's vocabulary "
    "(auth-js reads it into AuthApiError.code)",
}
# What the server reads as an address (WHATWG's, ASCII, any case, trimmed); it refuses more
# (over 254 characters, dots at the ends of the local part, ".."), which it leaves to it.
EMAIL = {
    "type": "string",
    "pattern": r"^[ \t\r\n]*[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
    r"[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*[ \t\r\n]*$",
}
TOKEN_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"}

SCHEMAS: dict[str, Schema] = {
    "AdminError": obj(
        {
            "code": {"type": "integer", "description": "the HTTP status"},
            "error_code": ERROR_CODE,
            "message": {"type": "string"},
            "field": {"type": "string", "description": "the request field at fault"},
        },
        ["code", "error_code", "message"],
        examples=[
            {
                "code": 400,
                "error_code": "validation_failed",
                "message": "expireOffset: expected a positive integer, got 0",
                "field": "expireOffset",
            }
        ],
    ),
    "GoTrueError": obj(
        {
            "code": {"type": "integer", "description": "the HTTP status"},
            "error_code": ERROR_CODE,
            "msg": {"type": "string"},
            "details": {"type": "string"},
            "weak_password": obj(
                {"reasons": {"type": "array", "items": {"type": "string"}}},
                ["reasons"],
                description="with error_code weak_password, as GoTrue sends it",
            ),
        },
        ["code", "error_code", "msg", "details"],
        examples=[
            {
                "code": 404,
                "error_code": "user_not_found",
                "msg": "User not found",
                "details": "no user has this email; recovery needs one",
            }
        ],
    ),
    "MintRequest": obj(
        {
            "userId": {
                "type": "string",
                "minLength": 1,
                "maxLength": 256,
                "description": "no surrounding whitespace, control, bidi or zero-width "
                "characters, no comma",
            },
            "expireMeasure": {
                "type": "string",
                "description": "seconds, minutes, hours or days (singular or plural, any "
                "case); with expireOffset",
            },
            "expireOffset": {"type": "integer", "minimum": 1},
            "oneTimeUse": {"type": "boolean"},
            "module": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"},
            "additionalParams": {
                "type": "object",
                "description": "role (a configured role) and the role's params; values are "
                "strings, numbers or booleans",
                "additionalProperties": {"type": ["string", "number", "boolean"]},
            },
        },
        ["userId"],
        additionalProperties=False,
    ),
    "MintResponse": obj(
        {
            "referString": {"type": "string", "description": "the token (a compact JWE)"},
            "url": {"type": "string", "format": "uri"},
            "expiresAt": TIME,
            "id": TOKEN_ID,
        },
        ["referString", "url", "expiresAt", "id"],
    ),
    "Revoked": obj(
        {
            "id": TOKEN_ID,
            "previous": {"type": "string", "enum": ["unused", "used", "revoked"]},
            "state": {"type": "string", "enum": ["used", "revoked"]},
        },
        ["id", "previous", "state"],
    ),
    "Token": obj(
        {
            "id": TOKEN_ID,
            "kind": {"type": "string", "enum": ["refer", *LINK_TYPES]},
            "state": {"type": "string", "enum": list(STATES)},
            "user_id": {"type": "string"},
            "role": {"type": "string"},
            "one_time": {"type": "boolean"},
            "email": nullable({"type": "string"}),
            "module": nullable({"type": "string"}),
            "created_at": TIME,
            "expires_at": TIME,
            "used_at": nullable({"type": "string", "format": "date-time"}),
            "revoked_at": nullable({"type": "string", "format": "date-time"}),
        },
        [
            *("id", "kind", "state", "user_id", "role", "one_time", "email", "module"),
            *("created_at", "expires_at", "used_at", "revoked_at"),
        ],
    ),
    "TokenPage": obj(
        {
            "user_id": {"type": "string"},
            "tokens": {"type": "array", "items": ref("schemas", "Token")},
            "next_cursor": nullable({"type": "string"}),
        },
        ["user_id", "tokens", "next_cursor"],
    ),
    "Session": obj(
        {
            "id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
            "user_id": {"type": "string"},
            "role": {"type": "string"},
            "created_at": TIME,
            "last_seen": TIME,
            "expires_at": TIME,
            "token_id": {"type": "string"},
            "client": nullable({"type": "string"}),
            "module": nullable({"type": "string"}),
        },
        [
            *("id", "user_id", "role", "created_at", "last_seen", "expires_at", "token_id"),
            *("client", "module"),
        ],
    ),
    "SessionList": obj(
        {
            "user_id": {"type": "string"},
            "sessions": {"type": "array", "items": ref("schemas", "Session")},
        },
        ["user_id", "sessions"],
    ),
    "SessionsEnded": obj(
        {"user_id": {"type": "string"}, "ended": {"type": "integer", "minimum": 0}},
        ["user_id", "ended"],
    ),
    "Health": obj({"status": {"type": "string", "const": "ok"}, "time": TIME}, ["status", "time"]),
    "GenerateLinkRequest": obj(
        {
            "type": {"type": "string", "enum": [*LINK_TYPES, *TYPE_ALIASES]},
            "email": EMAIL,
            "redirect_to": nullable({"type": "string"}),
            "redirectTo": nullable(
                {"type": "string", "description": "as @supabase/auth-js sends it"}
            ),
            "data": nullable(
                {"type": "object", "description": "user metadata (signup, invite, magiclink)"}
            ),
            "password": nullable({"type": "string", "description": "signup, invite"}),
            "new_email": nullable({**EMAIL, "description": "email_change"}),
        },
        ["type", "email"],
        additionalProperties=False,
    ),
    "User": obj(
        {
            "id": {"type": "string"},
            "email": {"type": "string"},
            "created_at": TIME,
            "confirmed_at": nullable({"type": "string", "format": "date-time"}),
            "email_confirmed_at": nullable({"type": "string", "format": "date-time"}),
            "invited_at": nullable({"type": "string", "format": "date-time"}),
            "user_metadata": {"type": "object"},
        },
        [
            *("id", "email", "created_at", "confirmed_at", "email_confirmed_at"),
            *("invited_at", "user_metadata"),
        ],
    ),
    "GeneratedLink": {
        "description": "GoTrue's answer: the user's fields and the link's properties side "
        "by side at the top level",
        "allOf": [
            ref("schemas", "User"),
            obj(
                {
                    "action_link": {"type": "string", "format": "uri"},
                    "email_otp": {"type": "string", "pattern": "^[0-9]{6,10}$"},
                    "hashed_token": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    "verification_type": {"type": "string", "enum": list(LINK_TYPES)},
                    "redirect_to": {"type": "string", "format": "uri"},
                },
                [
                    *("action_link", "email_otp", "hashed_token", "verification_type"),
                    "redirect_to",
                ],
            ),
        ],
    },
}
