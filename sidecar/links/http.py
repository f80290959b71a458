"""The HTTP edge of auth links: ``POST /admin/generate_link`` and ``<prefix>/verify``.

Routed by :mod:`sidecar.links.edge`, which imports this module at the first request to
either (a process that serves no auth link never loads it).

Admin side (:func:`generate_link`, behind the admin app's peer/Host/Origin/bearer checks):
every answer this handler gives itself is ``{"code", "msg", "details"}`` as in the seed —
400 invalid type/field/email/redirect_to/data, 404 user not found, 422 already registered
or weak password, 413 too large, 503 store down.

Proxy side (:func:`verify`):

* ``GET <prefix>/verify?token=&type=&redirect_to=`` redeems the link once, starts the
  session (role ``links.role``), sets the cookie and 303s to the ``redirect_to`` bound in
  the token. If ``links.role`` has ``redeem: confirm``, ``GET`` only checks and shows the
  button page, whose ``POST`` (to the same URL) redeems. ``HEAD`` never consumes anything.
* ``POST <prefix>/verify`` with JSON ``{type, email, token}`` (the OTP) or
  ``{type, token_hash}`` (plus ``password`` for recovery/invite) answers the identity as
  JSON and sets the cookie. ``gotrue_meta_security`` (sent by supabase-js) is accepted and
  ignored.

Redemption failures take the proxy's one failure path (:mod:`sidecar.proxy.redemptions`:
metrics, audit line, status table, ``proxy.failed_redeem_rate``) and answer the shared
failure pages (for the JSON API, ``{"code", "error", "message", "error_code"}`` with GoTrue's
``error_code``: ``otp_expired`` for any bad, expired or used token or code, as GoTrue says
it, ``validation_failed``, ``bad_json``, ``email_exists``, ``weak_password``,
``over_request_rate_limit``, ``request_too_large``, ``service_unavailable``): 400 bad request, 401
malformed/tampered/unknown key/wrong code, 409 address taken, 410 expired/used/revoked/
superseded, 422 weak password, 429 too many attempts, 503 store down (``store_unavailable``
before the burn; ``burn_unconfirmed`` once it is sent, as for refer links).
"""

from __future__ import annotations

from aiohttp import hdrs, web
from multidict import MultiMapping

from sidecar.config import RoleConfig
from sidecar.links import errorcodes as codes
from sidecar.links.edge import gotrue_error
from sidecar.links.generate import generate, user_json
from sidecar.links.request import (
    LinkRequestError,
    UnprocessableLink,
    UserNotFound,
    parse_link_request,
)
from sidecar.links.verify import (
    Verified,
    VerifyFailed,
    check_token,
    redeem_token,
    verify_otp,
    verify_token_hash,
)
from sidecar.proxy.clientaddr import CLIENT_ADDRESSES
from sidecar.proxy.redemptions import FAILED_REDEMPTIONS
from sidecar.refer.minting import iso_utc
from sidecar.sessions import SESSIONS
from sidecar.store.base import StoreUnavailable
from sidecar.store.ratelimit import RateLimited
from sidecar.telemetry import metrics
from sidecar.telemetry.context import set_route
from sidecar.web import pages
from sidecar.web.accesslog import set_user
from sidecar.web.appkeys import PUBLIC_ORIGIN, SERVICES
from sidecar.web.jsonbody import BadBody, read_json_object

VERIFY_FIELDS = ("type", "email", "token", "token_hash", "password", "gotrue_meta_security")


# -- admin: POST /admin/generate_link ----------------------------------------------------


async def generate_link(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    try:
        body = await read_json_object(request)
        query_redirect = request.query.getall("redirect_to", [])
        if len(query_redirect) > 1:
            return gotrue_error(400, "Invalid redirect_to", "redirect_to is in the query twice")
        parsed = parse_link_request(
            body, services.config, query_redirect=query_redirect[0] if query_redirect else None
        )
        link = await generate(services, parsed)
    except BadBody as exc:
        return gotrue_error(400, "Invalid request", str(exc), error_code=codes.BAD_JSON)
    except LinkRequestError as exc:
        # GoTrue says why a password is weak; auth-js turns it into AuthWeakPasswordError.
        weak = {"weak_password": {"reasons": ["length"]}}
        extra = weak if exc.error_code == codes.WEAK_PASSWORD else None
        return gotrue_error(
            _status(exc), exc.msg, exc.details, error_code=exc.error_code, extra=extra
        )
    except web.HTTPRequestEntityTooLarge:
        limit = services.config.admin.max_body
        return gotrue_error(413, "Payload too large", f"the body is larger than {limit} bytes")
    except StoreUnavailable:
        return gotrue_error(503, "Service unavailable", "the store is unavailable; try again")
    return web.json_response(link.to_json(), headers={hdrs.CACHE_CONTROL: "no-store"})


def _status(exc: LinkRequestError) -> int:
    if isinstance(exc, UserNotFound):
        return 404
    if isinstance(exc, UnprocessableLink):
        return 422
    return 400  # InvalidLinkRequest


# -- proxy: <prefix>/verify --------------------------------------------------------------


async def verify(request: web.Request) -> web.StreamResponse:
    set_route("verify")
    if request.method == hdrs.METH_HEAD:
        # Link scanners and previews: answered without looking at the token.
        return _no_store(pages.confirm_page(request))
    if request.method == hdrs.METH_GET:
        return await _verify_link(request)
    if request.method == hdrs.METH_POST:
        if not request.app[PUBLIC_ORIGIN].same_origin_request(request.headers):
            # Login CSRF: another site must not sign the visitor in with its own code/link.
            api = "token" not in request.query  # the JSON API, not the confirm button
            return await _failed(request, "cross_origin", count=False, gotrue_json=api)
        if "token" in request.query:  # the confirm page's button posts to the link itself
            return await _verify_link(request)
        return await _verify_api(request)
    return pages.method_not_allowed(request, "GET, HEAD, POST")


async def _verify_link(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    role = _links_role(request)
    query = request.query
    token, link_type = _single(query, "token"), _single(query, "type")
    redirect_to = _single(query, "redirect_to") if "redirect_to" in query else None
    try:
        if not token or not link_type or (redirect_to is None and "redirect_to" in query):
            raise VerifyFailed("malformed")
        if role.redeem == "confirm" and request.method == hdrs.METH_GET:
            await check_token(services, token, link_type, redirect_to)
            return _no_store(pages.confirm_page(request))
        verified = await redeem_token(services, token, link_type, redirect_to)
        cookie = await _session_after_burn(request, verified, role)
    except VerifyFailed as failed:
        return await _failed(request, failed.reason, failed.token_id)
    except StoreUnavailable:
        return await _failed(request, "store_unavailable")
    response = web.Response(
        status=303, headers={hdrs.LOCATION: verified.redirect_to or "/", **pages.NO_STORE}
    )
    request.app[SESSIONS].set_cookie(response, cookie, role)
    return response


async def _verify_api(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    role = _links_role(request)
    try:
        body = await read_json_object(request)
    except BadBody:
        return _bad_verify(400, codes.BAD_JSON)
    except web.HTTPRequestEntityTooLarge:
        return _bad_verify(413, codes.REQUEST_TOO_LARGE)
    fields = {k: v for k, v in body.items() if k != "gotrue_meta_security"}
    password = fields.get("password")
    if (
        set(fields) - set(VERIFY_FIELDS)
        or not all(isinstance(v, str) for v in fields.values())
        or not isinstance(link_type := fields.get("type"), str)
        or (password is not None and not isinstance(password, str))
    ):
        return _bad_verify(400, codes.VALIDATION_FAILED)
    token_hash, email, otp = fields.get("token_hash"), fields.get("email"), fields.get("token")
    try:
        if isinstance(token_hash, str) and email is None and otp is None:
            verified = await verify_token_hash(
                services, link_type, token_hash, password=_str(password)
            )
        elif isinstance(email, str) and isinstance(otp, str) and token_hash is None:
            client = request.app[CLIENT_ADDRESSES].of(request)
            verified = await verify_otp(
                services, link_type, email, otp, client=client, password=_str(password)
            )
        else:
            return _bad_verify(400, codes.VALIDATION_FAILED)
        cookie = await _session_after_burn(request, verified, role)
    except RateLimited as limited:  # OTP guesses: their own budget, not counted again
        return await _failed(
            request, "rate_limited", count=False, gotrue_json=True, retry_after=limited.retry_after
        )
    except VerifyFailed as failed:
        # A wrong OTP counts against the OTP's own budget (verify_otp), not this one.
        count = token_hash is not None
        return await _failed(request, failed.reason, failed.token_id, count=count, gotrue_json=True)
    except StoreUnavailable:
        return await _failed(request, "store_unavailable", gotrue_json=True)
    now = services.clock()
    doc = {
        "user": user_json(verified.user),
        "verification_type": verified.link_type,
        "session": {
            "role": role.name,
            "expires_at": iso_utc(now + role.session_lifetime),
            "expires_in": int(role.session_lifetime),
        },
    }
    response = web.json_response(doc, headers=pages.NO_STORE)
    request.app[SESSIONS].set_cookie(response, cookie, role)
    return response


async def _session_after_burn(request: web.Request, verified: Verified, role: RoleConfig) -> str:
    """The session of a redeemed link. The link is burned by now, so a store failure here
    is ``burn_unconfirmed`` (retrying may say "used"), not a plain ``store_unavailable``."""
    try:
        return await _start_session(request, verified, role)
    except StoreUnavailable:
        raise VerifyFailed("burn_unconfirmed", verified.token_id) from None


async def _start_session(request: web.Request, verified: Verified, role: RoleConfig) -> str:
    sessions = request.app[SESSIONS]
    if verified.link_type == "email_change" or verified.password_changed:
        # Other devices must not keep the old address or outlive the old password.
        await sessions.end_user(verified.user.id)
    else:
        await sessions.end(request)  # a browser holding another session starts afresh
    cookie = await sessions.start(
        user_id=verified.user.id,
        role=role,
        token_id=verified.token_id,
        email=verified.user.email,
        client=request.app[CLIENT_ADDRESSES].of(request),
    )
    metrics.redemption("success")
    set_user(verified.user.id)
    return cookie


async def _failed(
    request: web.Request,
    reason: str,
    token_id: str | None = None,
    *,
    count: bool = True,
    gotrue_json: bool = False,
    retry_after: int | None = None,
) -> web.Response:
    return await request.app[FAILED_REDEMPTIONS].answer(
        request,
        reason,
        token_id=token_id,
        count=count,
        gotrue_json=gotrue_json,
        retry_after=retry_after,
    )


def _bad_verify(status: int, error_code: str) -> web.Response:
    """A verify API body refused before any token is looked at (not a failed redemption)."""
    return pages.failure_json(status, "bad_request", error_code=error_code)


def _links_role(request: web.Request) -> RoleConfig:
    config = request.app[SERVICES].config
    return config.roles[config.links.role]


def _single(query: MultiMapping[str], name: str) -> str | None:
    values = query.getall(name, [])
    return values[0] if len(values) == 1 else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _no_store(response: web.Response) -> web.Response:
    response.headers.update(pages.NO_STORE)
    return response
