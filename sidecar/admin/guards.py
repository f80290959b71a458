"""What stands before every admin handler, and the admin API's error shapes.

The admin app's middlewares (:func:`sidecar.admin.api.guards`) are the access log, then
one middleware (:class:`Guards`, its options bound once and again on a reload) that counts
refused mints, maps errors, and checks the peer (loopback or ``admin.allowed_peers``), the
``Host`` (DNS rebinding), the browser (``Origin`` / ``Sec-Fetch-Site``: CSRF), the bearer
admin key, the body size and, for mints (``/referstring`` and ``/admin/generate_link``), a
rate limit counted in the store. One middleware rather than one per check: each layer is a
coroutine per request.

Errors are JSON ``{"code": <status>, "error_code", "message"[, "field"]}``
(:func:`admin_error`); on the GoTrue-style routes under ``/admin/`` every answer, refusals
included, is GoTrue's ``{code, error_code, msg, details}``
(:func:`sidecar.links.edge.gotrue_error`). ``error_code`` comes from
:mod:`sidecar.links.errorcodes`. Nothing here answers 500 with details, and no token text,
admin key or traceback reaches a response or a log line.

This module is compiled with a mint's path (:mod:`sidecar.compiled`: the lean lane calls
:meth:`Guards.admits` for every mint), so the aiohttp middleware that wraps
:meth:`Guards.middleware` is :mod:`sidecar.admin.api`'s.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import logging
import re
from dataclasses import dataclass, field
from http import HTTPStatus

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from sidecar.config import AdminConfig, Config
from sidecar.config.values import HostPort, Network, RateLimit
from sidecar.links import edge as links_edge
from sidecar.links import errorcodes as codes
from sidecar.services import Services
from sidecar.store.base import StoreUnavailable
from sidecar.store.ratelimit import RateLimited, enforce
from sidecar.telemetry import metrics

# GoTrue-style routes answer errors as {code, msg, details}, like GoTrue itself.
GOTRUE_PREFIX = "/admin/"
_LOG = logging.getLogger("sidecar.admin")
# What a token id in an admin path may be (the ids tokens carry are a subset).
TOKEN_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


class RequestError(Exception):
    """A request the admin API refuses; turned into a JSON error at the edge."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        error_code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.error_code = error_code


def admin_error(
    status: int,
    message: str,
    *,
    field: str | None = None,
    error_code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """The admin API's error ``{code, error_code, message[, field]}`` — the one place that
    shape is built. ``error_code`` defaults to the status's (:mod:`sidecar.links.errorcodes`)."""
    code = error_code or codes.for_status(status)
    body: dict[str, object] = {"code": status, "error_code": code, "message": message}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status, headers=headers)


def json_error(
    request: web.BaseRequest,
    status: int,
    message: str,
    *,
    field: str | None = None,
    error_code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A refusal in the shape of the route's family: GoTrue's ``{code, error_code, msg,
    details}`` on the GoTrue-style routes under ``/admin/`` (so their clients read every
    error alike), :func:`admin_error` elsewhere."""
    if request.path.startswith(GOTRUE_PREFIX):
        phrase = HTTPStatus(status).phrase
        return links_edge.gotrue_error(
            status, phrase, message, error_code=error_code, headers=headers
        )
    return admin_error(status, message, field=field, error_code=error_code, headers=headers)


@functools.lru_cache(maxsize=1024)  # every admin request asks; the answers repeat
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
    # Cached by the address's parts: a HostPort (a frozen dataclass, interpreted) would be
    # hashed by its generated Python __hash__ on every admin request.
    return _own_hosts(listen.host, listen.port, sockname)


@functools.lru_cache(maxsize=64)  # every admin request asks; one answer per listener
def _own_hosts(host: str, port: int, sockname: object) -> frozenset[str]:
    names = {"localhost", "127.0.0.1", "[::1]", _host_name(host)}
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        names.add(_host_name(str(sockname[0])))
        port = int(sockname[1])
    hosts = {f"{name}:{port}" for name in names}
    return frozenset(hosts | names if port == 80 else hosts)


def _host_name(host: str) -> str:
    return f"[{host}]" if ":" in host else host.lower()


# -- the checks ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Options:
    max_body: int
    allowed_peers: tuple[Network, ...]
    listen: HostPort
    key: bytes = field(repr=False)
    mint_bucket: str
    mint_rate: RateLimit

    @classmethod
    def of(cls, admin: AdminConfig) -> _Options:
        key = admin.key.reveal().encode()
        return cls(
            max_body=admin.max_body,
            allowed_peers=admin.allowed_peers,
            listen=admin.listen,
            key=key,
            # One admin key today; keyed by a hash so a rotated key starts a fresh window.
            mint_bucket="admin-mint:" + hashlib.sha256(key).hexdigest()[:16],
            mint_rate=admin.mint_rate,
        )


# The two minting APIs, and what each refusal status means for sidecar_mint_failures_total.
_MINT_APIS = {"/referstring": "referstring", "/admin/generate_link": "generate_link"}
_MINT_FAILURE = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "user_not_found",
    405: "method_not_allowed",
    413: "too_large",
    421: "wrong_host",
    422: "user_exists",
    429: "rate_limited",
    503: "store_unavailable",
}


class Guards:
    """The admin checks, their options bound once (and again on a reload).

    One middleware runs them all, in this order: count each refused mint (by API and
    reason, the guards' own refusals too), map what the handler raises to JSON errors,
    then the peer (loopback or ``admin.allowed_peers``), the ``Host`` (DNS rebinding), the
    browser (``Origin`` / ``Sec-Fetch-Site``: CSRF), the bearer admin key, the body size
    and, for ``/admin/generate_link``, the mint rate. ``POST /referstring`` counts its
    mint itself (:meth:`count_mint`, :meth:`quota`): with the link's record, in one store
    call."""

    def __init__(self, services: Services) -> None:
        self._services = services
        self._options = _Options.of(services.config.admin)
        services.on_reconfigure.append(self.configure)

    def configure(self, config: Config) -> None:
        self._options = _Options.of(config.admin)

    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """What the admin app's middleware (:func:`sidecar.admin.api.guards`) answers."""
        response = await self._answer(request, handler)
        if response.status >= 400:
            count_mint_failure(request.path, response.status)
        return response

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The handler's answer or a guard's refusal; never a traceback in an answer."""
        try:
            refused = self._refusal(request)
            if refused is not None:
                return refused
            if request.method == hdrs.METH_POST and request.path == "/admin/generate_link":
                limited = await self.count_mint(request)
                if limited is not None:
                    return limited
            return await handler(request)
        # One name per handler: compiled (mypyc), a name holds the first handler's type.
        except RequestError as refused:
            return json_error(
                request,
                refused.status,
                refused.message,
                field=refused.field,
                error_code=refused.error_code,
            )
        except web.HTTPRequestEntityTooLarge:
            return _too_large(request, self._options.max_body)
        except web.HTTPException as exc:
            if exc.status < 400 or exc.content_type == "application/json":
                raise
            kept = (hdrs.ALLOW, hdrs.RETRY_AFTER)
            headers = {k: v for k, v in exc.headers.items() if k in kept}
            return json_error(request, exc.status, exc.reason, headers=headers)
        except StoreUnavailable:
            _LOG.warning("store unavailable during %s %s", request.method, request.path)
            return json_error(request, 503, STORE_DOWN_MESSAGE)
        except Exception:
            _LOG.exception("unhandled error during %s %s", request.method, request.path)
            return json_error(request, 500, "internal error", error_code=codes.UNEXPECTED_FAILURE)

    def _refusal(self, request: web.Request) -> web.Response | None:
        """The first guard that refuses ``request`` answers; None when they all pass."""
        options = self._options
        if not peer_allowed(request.remote, options.allowed_peers):
            _LOG.warning("refused admin request from a peer outside admin.allowed_peers")
            message = "this peer may not use the admin API"
            return json_error(request, 403, message, error_code=codes.PEER_NOT_ALLOWED)
        headers = request.headers
        host = headers.get(hdrs.HOST, "").strip().lower()
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        if host not in own_hosts(options.listen, sockname):
            return json_error(request, 421, "the Host header does not name the admin listener")
        # Backends never send Origin; browsers do on every cross-origin request, and
        # Sec-Fetch-Site tells a page on another port of localhost ("same-site") from a backend.
        fetch_site = headers.get("Sec-Fetch-Site", "none").lower()
        if hdrs.ORIGIN in headers or fetch_site not in ("none", "same-origin"):
            message = "browser requests are refused by the admin API"
            return json_error(request, 403, message, error_code=codes.BROWSER_REFUSED)
        refused = self._bearer_refusal(request, headers.getall(hdrs.AUTHORIZATION, []))
        if refused is not None:
            return refused
        length = request.content_length
        if length is not None and length > options.max_body:
            return _too_large(request, options.max_body)
        return None

    def _bearer_refusal(self, request: web.Request, given: list[str]) -> web.Response | None:
        if len(given) > 1:
            # Which copy counts differs between proxies and servers: refuse, never pick one.
            return json_error(request, 400, "more than one Authorization header")
        if not given:
            return json_error(
                request,
                401,
                "missing admin key: send Authorization: Bearer <key>",
                headers={hdrs.WWW_AUTHENTICATE: "Bearer"},
            )
        key = _bearer_key(given[0])
        if key is None:
            return json_error(
                request,
                401,
                "malformed Authorization header: expected Bearer <key>",
                headers={hdrs.WWW_AUTHENTICATE: 'Bearer error="invalid_request"'},
            )
        if not self._key_matches(key):
            return json_error(request, 403, "wrong admin key")
        return None

    def _key_matches(self, key: str) -> bool:
        """Whether ``key`` is the admin key, compared in constant time."""
        expected = self._options.key
        # surrogateescape: aiohttp hands undecodable header bytes over as lone surrogates.
        given = key.encode("utf-8", "surrogateescape")
        return bool(expected) and hmac.compare_digest(given, expected)

    # -- the lean front (sidecar.admin.lane) ---------------------------------------------
    @property
    def max_body(self) -> int:
        return self._options.max_body

    def admits(
        self, peer: str | None, host: str, sockname: object, authorizations: list[str]
    ) -> bool:
        """Whether a request from ``peer`` with this ``Host``, these ``Authorization``
        values and neither ``Origin`` nor ``Sec-Fetch-Site`` passes every check of the
        middleware but the body size (the lane's own): the same checks, with the same
        options, as booleans. The lane hands over what fails, and the middleware refuses it."""
        options = self._options
        if not peer_allowed(peer, options.allowed_peers) or len(authorizations) != 1:
            return False
        if host.strip().lower() not in own_hosts(options.listen, sockname):
            return False
        key = _bearer_key(authorizations[0])
        return key is not None and self._key_matches(key)

    # -- the mint rate -------------------------------------------------------------------
    def quota(self) -> tuple[str, RateLimit]:
        """The mint counter's key and its limit, as configured now."""
        return self._options.mint_bucket, self._options.mint_rate

    async def count_mint(self, request: web.Request) -> web.Response | None:
        """Count one mint (raises ``StoreUnavailable``); the 429 when it is over the rate."""
        options, services = self._options, self._services
        try:
            await enforce(services.store, options.mint_bucket, options.mint_rate, services.clock())
        except RateLimited as exc:
            return too_many_mints(request, exc.retry_after)
        return None


def _bearer_key(value: str) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` value; None when it is not one."""
    scheme, _, key = value.partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


def too_many_mints(request: web.BaseRequest | None, retry_after: int) -> web.Response:
    """The answer to a mint over ``admin.mint_rate`` (``request`` None: ``POST /referstring``,
    as the admin lean front answers it)."""
    message = f"too many mints; retry after {retry_after}s"
    headers: dict[str, str] = {hdrs.RETRY_AFTER: str(retry_after)}
    if request is None:
        return admin_error(429, message, headers=headers)
    return json_error(request, 429, message, headers=headers)


STORE_DOWN_MESSAGE = "the store is unavailable; try again shortly"


def count_mint_failure(path: str, status: int) -> None:
    """``sidecar_mint_failures_total``: a refusal of one of the mint routes."""
    api = _MINT_APIS.get(path)
    if api is not None:
        metrics.mint_failure(api, _MINT_FAILURE.get(status, "other"))


def _too_large(request: web.Request, max_body: int) -> web.Response:
    message = f"request body is larger than admin.max_body ({max_body} bytes)"
    return json_error(request, 413, message)
