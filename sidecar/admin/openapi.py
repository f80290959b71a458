"""The admin API as an OpenAPI 3.1 document: served at ``GET /openapi.json`` (behind the
admin key) and committed as ``docs/openapi.json``.

The document is built here, next to the routes it describes; ``tests/test_openapi.py``
checks that the committed file is exactly what :func:`build_spec` returns, that every
route of the admin app is described (and nothing else), that it is a valid OpenAPI 3.1
document, and Schemathesis fuzzes a real ``sidecar serve`` against it. Regenerate the file
with ``python -m sidecar.admin.openapi > docs/openapi.json``.

Schemas say what the server accepts no more strictly than it does, so a request they call
invalid is always refused (400/422); checks that need the configuration (roles, modules,
the redirect allow-list) are left to the server and documented as its 400s.
"""

from __future__ import annotations

import copy
import json
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from aiohttp import web

from sidecar.admin.openapi_schemas import SCHEMAS, TOKEN_ID, Schema, ref
from sidecar.tokens.records import MAX_PAGE

JSON = "application/json"


def _error(description: str, schema: str, headers: Schema | None = None) -> Schema:
    media = {"schema": ref("schemas", schema)}
    response: Schema = {"description": description, "content": {JSON: media}}
    if headers:
        response["headers"] = headers
    return response


_RETRY_AFTER = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds"}}
_AUTHENTICATE = {"WWW-Authenticate": {"schema": {"type": "string"}}}
# Every error the guards in front of every route may answer, per error-body family.
_GUARDS = {
    "401": "missing or malformed Authorization (send Bearer <admin key>)",
    "403": "wrong admin key, a peer outside admin.allowed_peers, or a browser request",
    "405": "a method the route does not have",
    "413": "a body over admin.max_body",
    "421": "a Host header that does not name the admin listener (DNS rebinding)",
    "503": "the store does not answer",
}
RESPONSES: dict[str, Schema] = {}
for _family in ("AdminError", "GoTrueError"):
    for _status, _why in _GUARDS.items():
        _headers = {"401": _AUTHENTICATE, "503": None}.get(_status)
        RESPONSES[f"{_family}{_status}"] = _error(_why, _family, _headers)
    RESPONSES[f"{_family}429"] = _error(
        "too many mints for this admin key (admin.mint_rate)", _family, _RETRY_AFTER
    )


def _responses(
    ok: Schema, family: str = "AdminError", *, mint: bool = False, **errors: str
) -> Schema:
    answers: Schema = {"200": ok}
    for status, why in errors.items():
        answers[status.removeprefix("s")] = _error(why, family)
    for status in _GUARDS:
        answers.setdefault(status, ref("responses", f"{family}{status}"))
    if mint:
        answers["429"] = ref("responses", f"{family}429")
    return dict(sorted(answers.items()))


def _ok(description: str, schema: str, example: Any = None) -> Schema:
    media: Schema = {"schema": ref("schemas", schema)}
    if example is not None:
        media["example"] = example
    return {"description": description, "content": {JSON: media}}


def _query(name: str, description: str, schema: Schema, *, required: bool) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    }


_USER_ID_QUERY = _query("user_id", "the user", {"type": "string", "minLength": 1}, required=True)
_ID_PATH = {"name": "id", "in": "path", "required": True, "schema": TOKEN_ID}
_EXAMPLE_ID = "dKq2bS0c8J6x6m8eQ0Vq4A"
_EXAMPLE_TIME = "2026-11-30T10:00:00Z"
_MINT_EXAMPLE = {
    "userId": "0000000abc",
    "expireMeasure": "days",
    "expireOffset": 7,
    "oneTimeUse": True,
    "module": "5e9f83275349fc020f8db299",
    "additionalParams": {"role": "Authenticated", "tenant": "acme"},
}
_TOKEN_EXAMPLE = {
    "id": _EXAMPLE_ID,
    "kind": "refer",
    "state": "used",
    "user_id": "0000000abc",
    "role": "Authenticated",
    "one_time": True,
    "email": None,
    "module": "5e9f83275349fc020f8db299",
    "created_at": "2026-11-30T09:00:00.000Z",
    "expires_at": "2026-12-07T09:00:00.000Z",
    "used_at": "2026-11-30T09:02:13.512Z",
    "revoked_at": None,
}

_MINTED_EXAMPLE = {
    "referString": "eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIiwia2lkIjoiazEifQ..…",
    "url": "https://app.example.com/?refer=eyJhbGciOiJkaXIi…/#/display/5e9f83275349fc020f8db299",
    "expiresAt": "2026-12-07T09:00:00Z",
    "id": _EXAMPLE_ID,
}
_SESSIONS_EXAMPLE = {
    "user_id": "0000000abc",
    "sessions": [
        {
            "id": "3f0c1e8a9b7d4c2e8f6a5b4c3d2e1f00",
            "user_id": "0000000abc",
            "role": "Authenticated",
            "created_at": "2026-11-30T09:02:13.512Z",
            "last_seen": "2026-11-30T09:40:01.207Z",
            "expires_at": "2026-11-30T10:10:01.207Z",
            "token_id": _EXAMPLE_ID,
            "client": "203.0.113.7",
            "module": "5e9f83275349fc020f8db299",
        }
    ],
}
_GENERATED_EXAMPLE: Schema = {
    "id": "9b1f2c9e-5f0a-4c53-9d1e-2a7c1f0e8b44",
    "email": "user@example.com",
    "created_at": "2026-11-30T09:00:00Z",
    "confirmed_at": None,
    "email_confirmed_at": None,
    "invited_at": None,
    "user_metadata": {},
    "action_link": "https://app.example.com/_sidecar/verify?token=eyJhbGciOiJkaXIi…"
    "&type=magiclink&redirect_to=https%3A%2F%2Fapp.example.com%2Fdashboard",
    "email_otp": "123456",
    "hashed_token": "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8",
    "verification_type": "magiclink",
    "redirect_to": "https://app.example.com/dashboard",
}

PATHS: dict[str, Schema] = {
    "/referstring": {
        "post": {
            "operationId": "mintReferString",
            "summary": "Mint a refer link",
            "requestBody": {
                "required": True,
                "content": {
                    JSON: {"schema": ref("schemas", "MintRequest"), "example": _MINT_EXAMPLE}
                },
            },
            "responses": _responses(
                _ok("the link", "MintResponse", _MINTED_EXAMPLE),
                mint=True,
                s400="a field the config refuses (the field is named), or the token would "
                "reach 4,096 characters",
            ),
        }
    },
    "/tokens/{id}/revoke": {
        "post": {
            "operationId": "revokeToken",
            "summary": "Revoke a token id (an unused link stops working)",
            "parameters": [_ID_PATH],
            "responses": _responses(
                _ok(
                    "the previous and the new state",
                    "Revoked",
                    {"id": _EXAMPLE_ID, "previous": "unused", "state": "revoked"},
                ),
                s400="a malformed id",
            ),
        }
    },
    "/tokens/{id}": {
        "get": {
            "operationId": "getToken",
            "summary": "A minted link: what it is for and its state (never its text)",
            "parameters": [_ID_PATH],
            "responses": _responses(
                _ok("the link", "Token", _TOKEN_EXAMPLE),
                s400="a malformed id",
                s404="no link with this id was minted here, or its record is gone",
            ),
        }
    },
    "/tokens": {
        "get": {
            "operationId": "listTokens",
            "summary": "A user's pending and recent links, newest first",
            "parameters": [
                _USER_ID_QUERY,
                _query(
                    "limit",
                    "page size",
                    {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 20},
                    required=False,
                ),
                _query(
                    "cursor",
                    "the next_cursor of the previous page",
                    {"type": "string"},
                    required=False,
                ),
            ],
            "responses": _responses(
                _ok(
                    "one page",
                    "TokenPage",
                    {"user_id": "0000000abc", "tokens": [_TOKEN_EXAMPLE], "next_cursor": None},
                ),
                s400="a missing user_id, a limit outside 1-100 or a cursor not from a page",
            ),
        }
    },
    "/sessions": {
        "get": {
            "operationId": "listSessions",
            "summary": "A user's live sessions (never a cookie value)",
            "parameters": [_USER_ID_QUERY],
            "responses": _responses(
                _ok("the live sessions", "SessionList", _SESSIONS_EXAMPLE),
                s400="a missing user_id",
            ),
        },
        "delete": {
            "operationId": "endSessions",
            "summary": "End every session of a user",
            "parameters": [_USER_ID_QUERY],
            "responses": _responses(
                _ok("how many ended", "SessionsEnded", {"user_id": "0000000abc", "ended": 2}),
                s400="a missing user_id",
            ),
        },
    },
    "/healthz": {
        "get": {
            "operationId": "health",
            "summary": "The store answers",
            "responses": _responses(
                _ok("healthy", "Health", {"status": "ok", "time": _EXAMPLE_TIME})
            ),
        }
    },
    "/admin/generate_link": {
        "post": {
            "operationId": "generateLink",
            "summary": "Mint an auth link (GoTrue's admin generate_link)",
            "parameters": [
                _query(
                    "redirect_to",
                    "where the link lands (GoTrue and auth-js send it here); must equal the "
                    "body's redirect_to/redirectTo when both are given",
                    {"type": "string"},
                    required=False,
                )
            ],
            "requestBody": {
                "required": True,
                "content": {
                    JSON: {
                        "schema": ref("schemas", "GenerateLinkRequest"),
                        "examples": {
                            "magiclink": {
                                "value": {
                                    "type": "magiclink",
                                    "email": "user@example.com",
                                    "redirect_to": "https://app.example.com/dashboard",
                                }
                            },
                            "signup": {
                                "value": {
                                    "type": "signup",
                                    "email": "new@example.com",
                                    "password": "correct horse battery",
                                    "data": {"plan": "pro"},
                                }
                            },
                        },
                    }
                },
            },
            "responses": _responses(
                _ok("the link and its user", "GeneratedLink", _GENERATED_EXAMPLE),
                "GoTrueError",
                mint=True,
                s400="an invalid type, field, email, redirect_to or data",
                s404="the type needs an existing user",
                s422="already registered, a weak password, an address in use, no email change "
                "pending",
            ),
        }
    },
    "/openapi.json": {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "responses": _responses(
                {"description": "OpenAPI 3.1", "content": {JSON: {"schema": {"type": "object"}}}}
            ),
        }
    },
}


def build_spec() -> Schema:
    """The whole admin API as an OpenAPI 3.1 document (the same on every install); a
    fresh copy each time, so a caller may change it."""
    try:
        release = version("sidecar")
    except PackageNotFoundError:  # running from a source tree that was never installed
        release = "0.0.0"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sidecar admin API",
            "version": release,
            "description": "The admin listener (127.0.0.1:9091 by default): minting refer "
            "links and auth links, revocation, sessions, and what a support desk reads. Every "
            "route needs Authorization: Bearer <admin key>.",
        },
        "servers": [{"url": "http://127.0.0.1:9091"}],
        "security": [{"adminKey": []}],
        "paths": copy.deepcopy(PATHS),
        "components": {
            "securitySchemes": {"adminKey": {"type": "http", "scheme": "bearer"}},
            "schemas": copy.deepcopy(SCHEMAS),
            "responses": copy.deepcopy(RESPONSES),
        },
    }


def render() -> str:
    """The document as committed in ``docs/openapi.json``."""
    return json.dumps(build_spec(), indent=2, ensure_ascii=False) + "\n"


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(text=render(), content_type=JSON)


if __name__ == "__main__":
    sys.stdout.write(render())
