"""The admin listener: minting and management, for the backend only.

Every request first passes the guards of :mod:`sidecar.admin.guards` (access log, error
mapper, peer, ``Host``, browser, bearer key, body size, mint rate); errors are that
module's JSON shapes. No token text, admin key or traceback reaches a response or a log
line.
"""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from sidecar.admin import reads
from sidecar.admin.guards import TOKEN_ID, Guards, RequestError, too_many_mints
from sidecar.admin.lane import MintLane
from sidecar.admin.mints import announce, keep_link, mint_link
from sidecar.config import MAX_EXPIRY
from sidecar.links import edge as links_edge
from sidecar.links import errorcodes as codes
from sidecar.refer.minting import iso_utc
from sidecar.services import Services
from sidecar.sessions import SESSIONS
from sidecar.store.ratelimit import RateLimited
from sidecar.telemetry.audit import audit
from sidecar.web import jsonbody
from sidecar.web.accesslog import access_middleware
from sidecar.web.appkeys import SERVICES
from sidecar.web.listener import LANE, own_answer_headers

GUARDS = web.AppKey("guards", Guards)

# -- request bodies ----------------------------------------------------------------------


async def read_json_object(request: web.Request) -> dict[str, object]:
    """The body as a JSON object; :class:`RequestError` 400 for anything else."""
    try:
        return await jsonbody.read_json_object(request)
    except jsonbody.BadBody as exc:
        raise RequestError(400, str(exc), error_code=codes.BAD_JSON) from None


# -- handlers ----------------------------------------------------------------------------


async def referstring(request: web.Request) -> web.Response:
    services, guard = request.app[SERVICES], request.app[GUARDS]
    try:
        link = mint_link(services, await read_json_object(request))
    except Exception:
        # A refused mint counts against admin.mint_rate too, and past it the answer is the
        # 429, as it would have been had the count come first.
        limited = await guard.count_mint(request)
        if limited is not None:
            return limited
        raise
    try:
        await keep_link(services, guard, link)
    except RateLimited as exc:
        return too_many_mints(request, exc.retry_after)
    return web.json_response(text=announce(link), headers={hdrs.CACHE_CONTROL: "no-store"})


async def revoke_token(request: web.Request) -> web.Response:
    """Revoke a token id and end every session it created (``sessions_ended`` counts them).

    Mints are not stored, so any well-formed id is revocable; the revocation is kept as
    long as the longest-lived token could be. The revocation is written first, so no new
    session can start from the link once the sessions are being ended."""
    token_id = request.match_info["id"]
    if not TOKEN_ID.fullmatch(token_id):
        raise RequestError(400, "token id: expected 1-128 of A-Z a-z 0-9 _ -", field="id")
    services = request.app[SERVICES]
    now = services.clock()
    # Kept for the hard cap, not tokens.max_expiry: lowering that setting later must not
    # let the record go while a link minted under the old one still lives.
    previous = await services.store.revoke(token_id, now + MAX_EXPIRY)
    state = "used" if previous.value == "used" else "revoked"
    sessions = request.app.get(SESSIONS)
    if sessions is not None:  # also drop this process's session cache at once
        ended = await sessions.end_token(token_id)
    else:
        ended = await services.store.delete_token_sessions(token_id)
    audit("revoke", token_id=token_id, previous=previous.value, state=state, sessions=ended)
    return web.json_response(
        {"id": token_id, "previous": previous.value, "state": state, "sessions_ended": ended}
    )


async def end_sessions(request: web.Request) -> web.Response:
    user_id = request.query.get("user_id", "")
    if not user_id:
        raise RequestError(400, "user_id: the query parameter is required", field="user_id")
    sessions = request.app.get(SESSIONS)
    if sessions is not None:  # also drop this process's session cache at once
        ended = await sessions.end_user(user_id)
    else:
        ended = await request.app[SERVICES].store.delete_user_sessions(user_id)
    audit("sessions_ended", user_id=user_id, count=ended)
    return web.json_response({"user_id": user_id, "ended": ended})


async def healthz(request: web.Request) -> web.Response:
    await request.app[SERVICES].store.ping()
    return web.json_response({"status": "ok", "time": iso_utc(request.app[SERVICES].clock())})


async def openapi_json(request: web.Request) -> web.Response:
    # The document's builder (its schemas, and importlib.metadata for the release: ~1.5 MiB
    # together) is loaded by the first request for it, not held by every serving process.
    from sidecar.admin import openapi

    return await openapi.openapi_json(request)


def guards(services: Services) -> tuple[list[Middleware], Guards]:
    """The admin app's middlewares, outermost first (the access log, then every guard in
    one), and the :class:`Guards` they check with, bound at start and bound again on a
    reload (a new admin key, allowed peers or mint rate apply at once) — never read from
    the config per request."""
    checks = Guards(services)

    # Here, not in sidecar.admin.guards: aiohttp marks a middleware with an attribute,
    # which a compiled (mypyc) function cannot take, and that module is compiled (a mint's
    # Guards.admits).
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await checks.middleware(request, handler)

    return [access_middleware("admin", route=lambda _: "admin"), guard], checks


def build_admin_app(services: Services) -> web.Application:
    """The admin application: middlewares, the refer-string routes and the auth-link routes."""
    middlewares, checks = guards(services)
    app = web.Application(client_max_size=services.config.admin.max_body, middlewares=middlewares)
    app.on_response_prepare.append(own_answer_headers)
    app[SERVICES] = services
    app[GUARDS] = checks
    if services.config.admin.lean_front:
        # Mints, served before aiohttp's server sees them (sidecar.admin.lane).
        app[LANE] = MintLane(services, checks)
    app.router.add_post("/referstring", referstring)
    app.router.add_post("/tokens/{id}/revoke", revoke_token)
    app.router.add_delete("/sessions", end_sessions)
    app.router.add_get("/healthz", healthz, allow_head=True)
    links_edge.register_admin(app)
    reads.register(app)
    app.router.add_get("/openapi.json", openapi_json, allow_head=False)
    return app
