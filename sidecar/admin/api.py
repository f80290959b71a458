"""The admin listener: minting and management, for the backend only.

Every request passes, in order: the access log, the error mapper, the peer check (loopback
or ``admin.allowed_peers``), the ``Host`` check (DNS rebinding), the browser check (``Origin``
/ ``Sec-Fetch-Site``: CSRF), the bearer admin key, the body size limit and, for mints
(``/referstring`` and ``/admin/generate_link``), a rate limit counted in the store.
Errors are JSON ``{"code": <status>, "message": "..."[, "field"]}`` (:func:`admin_error`);
on the GoTrue-style routes under ``/admin/`` every answer, refusals included, is GoTrue's
``{code, msg, details}`` (:func:`sidecar.links.http.gotrue_error`). Nothing here answers 500
with details, and no token text, admin key or traceback reaches a response or a log line.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus

from aiohttp import hdrs, web

from sidecar.admin import openapi
from sidecar.config import MAX_EXPIRY
from sidecar.config.values import HostPort
from sidecar.links import http as links_http
from sidecar.refer.minting import MintError, iso_utc, mint_refer, parse_refer_request
from sidecar.services import Services
from sidecar.sessions import SESSIONS
from sidecar.store.base import StoreUnavailable
from sidecar.store.ratelimit import RateLimited, enforce
from sidecar.telemetry import metrics
from sidecar.telemetry.audit import audit
from sidecar.tokens.codec import TokenTooLong
from sidecar.tokens.records import remember_mint
from sidecar.web import jsonbody
from sidecar.web.accesslog import access_middleware
from sidecar.web.appkeys import SERVICES
from sidecar.web.listener import own_answer_headers

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MINT_PATHS = frozenset({"/referstring", "/admin/generate_link"})
# GoTrue-style routes answer errors as {code, msg, details}, like GoTrue itself.
GOTRUE_PREFIX = "/admin/"
_TOKEN_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_LOG = logging.getLogger("sidecar.admin")


class RequestError(Exception):
    """A request the admin API refuses; turned into a JSON error at the edge."""

    def __init__(self, status: int, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


def admin_error(
    status: int,
    message: str,
    *,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """The admin API's error ``{code, message[, field]}`` — the one place that shape is built."""
    body: dict[str, object] = {"code": status, "message": message}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status, headers=headers)


def json_error(
    request: web.BaseRequest,
    status: int,
    message: str,
    *,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A refusal in the shape of the route's family: GoTrue's ``{code, msg, details}`` on the
    GoTrue-style routes under ``/admin/`` (so their clients read every error alike),
    :func:`admin_error` elsewhere."""
    if request.path.startswith(GOTRUE_PREFIX):
        phrase = HTTPStatus(status).phrase
        return links_http.gotrue_error(status, phrase, message, headers=headers)
    return admin_error(status, message, field=field, headers=headers)


def peer_allowed(remote: str | None, allowed: tuple[Network, ...]) -> bool:
    """Loopback peers always; others only inside ``admin.allowed_peers``; non-IP peers never."""
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or any(address in net for net in allowed)


def own_hosts(listen: HostPort, sockname: object) -> frozenset[str]:
    """The ``Host`` values that name this listener: its configured and bound address and
    the loopback names, each with the bound port. A page on an attacker's domain that
    resolves to 127.0.0.1 (DNS rebinding) sends its own name and is refused."""
    port = listen.port
    names = {"localhost", "127.0.0.1", "[::1]", _host_name(listen.host)}
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        names.add(_host_name(str(sockname[0])))
        port = int(sockname[1])
    hosts = {f"{name}:{port}" for name in names}
    return frozenset(hosts | names if port == 80 else hosts)


def _host_name(host: str) -> str:
    return f"[{host}]" if ":" in host else host.lower()


# -- middlewares (outermost first) -------------------------------------------------------


_ACCESS_LOG = access_middleware("admin", route=lambda _: "admin")


@web.middleware
async def access_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One JSON access line per request (``sidecar.web.accesslog``), never the query string."""
    return await _ACCESS_LOG(request, handler)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RequestError as exc:
        return json_error(request, exc.status, exc.message, field=exc.field)
    except web.HTTPRequestEntityTooLarge:
        return _too_large(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        headers = {k: v for k, v in exc.headers.items() if k in (hdrs.ALLOW, hdrs.RETRY_AFTER)}
        return json_error(request, exc.status, exc.reason, headers=headers)
    except StoreUnavailable:
        _LOG.warning("store unavailable during %s %s", request.method, request.path)
        return json_error(request, 503, "the store is unavailable; try again shortly")
    except Exception:
        _LOG.exception("unhandled error during %s %s", request.method, request.path)
        return json_error(request, 500, "internal error")


@web.middleware
async def peer_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not peer_allowed(request.remote, request.app[SERVICES].config.admin.allowed_peers):
        _LOG.warning("refused admin request from a peer outside admin.allowed_peers")
        return json_error(request, 403, "this peer may not use the admin API")
    return await handler(request)


@web.middleware
async def host_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    host = request.headers.get(hdrs.HOST, "").strip().lower()
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if host not in own_hosts(request.app[SERVICES].config.admin.listen, sockname):
        return json_error(request, 421, "the Host header does not name the admin listener")
    return await handler(request)


@web.middleware
async def browser_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    # Backends never send Origin; browsers do on every cross-origin request, and
    # Sec-Fetch-Site tells a page on another port of localhost ("same-site") from a backend.
    fetch_site = request.headers.get("Sec-Fetch-Site", "none").lower()
    if hdrs.ORIGIN in request.headers or fetch_site not in ("none", "same-origin"):
        return json_error(request, 403, "browser requests are refused by the admin API")
    return await handler(request)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    given_headers = request.headers.getall(hdrs.AUTHORIZATION, ())
    if len(given_headers) > 1:
        # Which copy counts differs between proxies and servers: refuse, never pick one.
        return json_error(request, 400, "more than one Authorization header")
    header = given_headers[0] if given_headers else None
    if header is None:
        return json_error(
            request,
            401,
            "missing admin key: send Authorization: Bearer <key>",
            headers={hdrs.WWW_AUTHENTICATE: "Bearer"},
        )
    scheme, _, given = header.partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        return json_error(
            request,
            401,
            "malformed Authorization header: expected Bearer <key>",
            headers={hdrs.WWW_AUTHENTICATE: 'Bearer error="invalid_request"'},
        )
    expected = request.app[SERVICES].config.admin.key.reveal()
    # surrogateescape: aiohttp hands undecodable header bytes over as lone surrogates.
    given_bytes = given.encode("utf-8", "surrogateescape")
    if not expected or not hmac.compare_digest(given_bytes, expected.encode()):
        return json_error(request, 403, "wrong admin key")
    return await handler(request)


@web.middleware
async def size_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    length = request.content_length
    if length is not None and length > request.app[SERVICES].config.admin.max_body:
        return _too_large(request)
    return await handler(request)


@web.middleware
async def mint_rate_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method == hdrs.METH_POST and request.path in MINT_PATHS:
        services = request.app[SERVICES]
        admin = services.config.admin
        # One admin key today; keyed by a hash so a rotated key starts a fresh window.
        bucket = "admin-mint:" + hashlib.sha256(admin.key.reveal().encode()).hexdigest()[:16]
        try:
            await enforce(services.store, bucket, admin.mint_rate, services.clock())
        except RateLimited as exc:
            return json_error(
                request,
                429,
                f"too many mints; retry after {exc.retry_after}s",
                headers={hdrs.RETRY_AFTER: str(exc.retry_after)},
            )
    return await handler(request)


def _too_large(request: web.Request) -> web.Response:
    limit = request.app[SERVICES].config.admin.max_body
    return json_error(request, 413, f"request body is larger than admin.max_body ({limit} bytes)")


# -- request bodies ----------------------------------------------------------------------


async def read_json_object(request: web.Request) -> dict[str, object]:
    """The body as a JSON object; :class:`RequestError` 400 for anything else."""
    try:
        return await jsonbody.read_json_object(request)
    except jsonbody.BadBody as exc:
        raise RequestError(400, str(exc)) from None


# -- handlers ----------------------------------------------------------------------------


async def referstring(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    body = await read_json_object(request)
    try:
        mint = parse_refer_request(body, services.config)
        link = mint_refer(
            mint, services.codec, public_url=services.config.public_url, now=services.clock()
        )
    except MintError as exc:
        raise RequestError(400, str(exc), field=exc.field) from None
    except TokenTooLong as exc:
        raise RequestError(400, str(exc), field="additionalParams") from None
    claims = link.claims
    await remember_mint(services.store, claims)
    metrics.mint(claims.kind)
    audit(
        "mint",
        token_id=claims.token_id,
        user_id=claims.subject,
        role=claims.role,
        kind=claims.kind,
        one_time=claims.one_time,
        expires_at=link.expires_at_iso,
        module=claims.module,
    )
    return web.json_response(link.to_json(), headers={hdrs.CACHE_CONTROL: "no-store"})


async def revoke_token(request: web.Request) -> web.Response:
    """Revoke a token id and end every session it created (``sessions_ended`` counts them).

    Mints are not stored, so any well-formed id is revocable; the revocation is kept as
    long as the longest-lived token could be. The revocation is written first, so no new
    session can start from the link once the sessions are being ended."""
    token_id = request.match_info["id"]
    if not _TOKEN_ID.fullmatch(token_id):
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


def build_admin_app(services: Services) -> web.Application:
    """The admin application: middlewares, the refer-string routes and the auth-link routes."""
    app = web.Application(
        client_max_size=services.config.admin.max_body,
        middlewares=[
            access_log_middleware,
            errors_middleware,
            peer_middleware,
            host_middleware,
            browser_middleware,
            auth_middleware,
            size_middleware,
            mint_rate_middleware,
        ],
    )
    app.on_response_prepare.append(own_answer_headers)
    app[SERVICES] = services
    app.router.add_post("/referstring", referstring)
    app.router.add_post("/tokens/{id}/revoke", revoke_token)
    app.router.add_delete("/sessions", end_sessions)
    app.router.add_get("/healthz", healthz, allow_head=True)
    links_http.register_admin(app)
    from sidecar.admin import reads  # imported here: reads uses this module's RequestError

    reads.register(app)
    openapi.register(app)
    return app
