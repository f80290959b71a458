"""Read-only admin routes for a support desk: a link by id, a user's links, a user's sessions.

``GET /tokens/{id}``, ``GET /tokens?user_id=&limit=&cursor=`` and
``GET /sessions?user_id=`` answer what :mod:`sidecar.tokens.records` describes: what a
link is for and its state, when a session started and was last seen and from where —
never a token's text, a cookie value or a session's store key.
"""

from __future__ import annotations

from aiohttp import web

from sidecar.admin.guards import TOKEN_ID, RequestError
from sidecar.tokens.records import (
    MAX_PAGE,
    decode_cursor,
    describe_session,
    describe_token,
    encode_cursor,
)
from sidecar.web.appkeys import SERVICES

MAX_USER_ID = 256
DEFAULT_PAGE = 20


def register(app: web.Application) -> None:
    app.router.add_get("/tokens/{id}", get_token, allow_head=False)
    app.router.add_get("/tokens", list_tokens, allow_head=False)
    app.router.add_get("/sessions", list_sessions, allow_head=False)


async def get_token(request: web.Request) -> web.Response:
    token_id = request.match_info["id"]
    if not TOKEN_ID.fullmatch(token_id):
        raise RequestError(400, "token id: expected 1-128 of A-Z a-z 0-9 _ -", field="id")
    services = request.app[SERVICES]
    record = await services.store.get_token(token_id)
    if record is None:
        raise RequestError(404, "no link with this id was minted here, or its record is gone")
    return _no_store(await describe_token(services.store, record, services.clock()))


async def list_tokens(request: web.Request) -> web.Response:
    user_id = _user_id(request)
    limit = _limit(request)
    after = None
    cursor = _single(request, "cursor")
    if cursor is not None:
        after = decode_cursor(cursor)
        if after is None:
            message = "cursor: use the next_cursor of a previous page"
            raise RequestError(400, message, field="cursor")
    services = request.app[SERVICES]
    records = await services.store.list_user_tokens(user_id, limit + 1, after)
    now = services.clock()
    page = records[:limit]
    tokens = [await describe_token(services.store, record, now) for record in page]
    more = len(records) > limit
    return _no_store(
        {
            "user_id": user_id,
            "tokens": tokens,
            "next_cursor": encode_cursor(page[-1]) if more else None,
        }
    )


async def list_sessions(request: web.Request) -> web.Response:
    user_id = _user_id(request)
    services = request.app[SERVICES]
    now = services.clock()
    sessions = await services.store.list_user_sessions(user_id)
    live = [describe_session(s) for s in sessions if s.is_live(now)]
    return _no_store({"user_id": user_id, "sessions": live})


def _single(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise RequestError(400, f"{name}: give the query parameter once", field=name)
    return values[0] if values else None


def _user_id(request: web.Request) -> str:
    user_id = _single(request, "user_id")
    if not user_id:
        raise RequestError(400, "user_id: the query parameter is required", field="user_id")
    if len(user_id) > MAX_USER_ID or not user_id.isprintable():
        raise RequestError(
            400, f"user_id: at most {MAX_USER_ID} printable characters", field="user_id"
        )
    return user_id


def _limit(request: web.Request) -> int:
    given = _single(request, "limit")
    if given is None:
        return DEFAULT_PAGE
    if not given.isascii() or not given.isdigit() or not 1 <= int(given) <= MAX_PAGE:
        raise RequestError(400, f"limit: an integer from 1 to {MAX_PAGE}", field="limit")
    return int(given)


def _no_store(doc: dict[str, object]) -> web.Response:
    return web.json_response(doc, headers={"Cache-Control": "no-store"})
