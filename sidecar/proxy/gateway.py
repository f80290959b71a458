"""The proxy listener: redeem refer links, serve ``<prefix>/…``, forward everything else.

Order of decisions for a request outside the prefix:

1. the path is normalised (:mod:`sidecar.proxy.paths`); an ambiguous path is a 400;
2. a ``refer`` query parameter makes it a redemption (:mod:`sidecar.refer.redeem`), answered here
   and never forwarded;
3. ``public_paths`` are forwarded without identity, session or not;
4. with a live session the role's path rules apply (403) and the request is forwarded with
   the session's identity headers;
5. without one, ``proxy.unauthenticated`` decides: ``deny`` (401 page), ``redirect`` (to
   ``login_url`` with ``rd=<path>``; API clients asking for JSON get the 401) or ``pass``
   (forwarded with no identity; spoofed identity headers are still stripped).

WebSocket upgrades follow the same rules, except that ``redirect`` refuses them with 401.
"""

from __future__ import annotations

import json
import re

from aiohttp import hdrs, web
from yarl import URL

from sidecar.config import Config
from sidecar.links import edge as links_edge
from sidecar.proxy.auth_lane import AuthLane
from sidecar.proxy.clientaddr import CLIENT_ADDRESSES, ClientAddresses
from sidecar.proxy.express import ExpressLane
from sidecar.proxy.forward import Failure, Forwarder
from sidecar.proxy.forward_auth import ForwardAuth
from sidecar.proxy.guards import header_limits, host_check
from sidecar.proxy.headers import HeaderPolicy
from sidecar.proxy.origins import PublicOrigin
from sidecar.proxy.paths import GlobSet, NormalPath, PathRules, UnsafePath, normalise
from sidecar.proxy.redeem_lane import RedeemLane
from sidecar.proxy.redemptions import FAILED_REDEMPTIONS, FailedRedemptions
from sidecar.proxy.router import proxy_application
from sidecar.proxy.verdicts import ANONYMOUS, PUBLIC, STORE_DOWN, Redirect, Verdict
from sidecar.proxy.websocket import Alive
from sidecar.refer.redeem import Redeemer, has_refer
from sidecar.services import Services
from sidecar.session_cookies import RequestCookies
from sidecar.sessions import NOT_CACHED, SESSIONS, Session, SessionManager
from sidecar.store.base import StoreUnavailable
from sidecar.store.persistence import PersistenceWatch
from sidecar.telemetry.audit import audit
from sidecar.web import pages
from sidecar.web.accesslog import access_middleware, set_user
from sidecar.web.appkeys import PUBLIC_ORIGIN, SERVICES
from sidecar.web.listener import LANE, own_answer_headers

FORWARDER = web.AppKey("forwarder", Forwarder)
PERSISTENCE = web.AppKey("persistence", PersistenceWatch)
UNAUTHENTICATED = Failure(401, "unauthenticated")
_SAFE_RETURN = re.compile(r"/(?![/\\])[^\\\x00-\x1f\x7f]*")


def build_proxy_app(services: Services) -> web.Application:
    """The public-side application: sidecar routes under the prefix, the proxy elsewhere."""
    limit = services.config.proxy.max_header_size
    clients = ClientAddresses(services.config.proxy.trusted_proxies)
    # The access line's remote is the real client, also behind a trusted ingress.
    prefix = services.config.proxy.prefix

    own = prefix + "/"

    def route(request: web.BaseRequest) -> str:
        # The prefix holds the sidecar's own pages and endpoints (judged on the raw path, as
        # the router and the Host check read it; "/_sidecarx" is the app's); redemptions and
        # /verify name themselves (set_route).
        path = request.raw_path
        return "page" if path.startswith(own) or path == prefix else "proxied"

    access = access_middleware("proxy", route=route, client=clients.of)
    public = PublicOrigin(
        services.config.public_url,
        services.config.proxy.allowed_hosts,
        services.config.proxy.allowed_origins,
    )
    # Probes (kubelet sends the pod IP as Host) and the ingress's forward-auth sub-requests
    # (answered to the ingress, never forwarded) may name any host.
    any_host = {prefix + "/healthz", prefix + "/readyz", prefix + "/auth"}
    envoy_prefix = services.config.forward_auth.envoy_path_prefix
    checked = host_check(public, clients, frozenset(any_host), envoy_prefix)
    app, router = proxy_application(middlewares=[access, checked, header_limits(limit)])
    app.on_response_prepare.append(own_answer_headers)
    app[SERVICES] = services
    sessions = SessionManager(services)
    app[SESSIONS] = sessions
    app[CLIENT_ADDRESSES] = clients
    app[PUBLIC_ORIGIN] = public
    forwarder = Forwarder(services.config, HeaderPolicy(services.config, clients))
    app[FORWARDER] = forwarder
    app.cleanup_ctx.append(forwarder.cleanup_ctx)
    failures = FailedRedemptions(services, clients)
    app[FAILED_REDEMPTIONS] = failures
    redeemer = Redeemer(services, sessions, clients, failures, public)
    gateway = Gateway(services, sessions, forwarder, redeemer, public)
    app[PERSISTENCE] = gateway.persistence
    prefix = services.config.proxy.prefix
    router.add_route("*", prefix + "/logout", gateway.logout)
    router.add_route("*", prefix + "/signed-out", gateway.signed_out)
    router.add_route("*", prefix + "/session", gateway.session)
    router.add_route("*", prefix + "/healthz", gateway.healthz)
    router.add_route("*", prefix + "/readyz", gateway.readyz)
    links_edge.register_verify(app)
    forward_auth = ForwardAuth(services.config, sessions, redeemer, clients.trusts, public)
    forward_auth.register(app)

    def reconfigure(cfg: Config) -> None:
        """A reload: everything derived from the config, rebuilt; the pool and routes stay."""
        clients.configure(cfg.proxy.trusted_proxies)
        public.configure(cfg.public_url, cfg.proxy.allowed_hosts, cfg.proxy.allowed_origins)
        forwarder.configure(cfg, HeaderPolicy(cfg, clients))
        gateway.configure(cfg)
        forward_auth.configure(cfg)

    services.on_reconfigure.append(reconfigure)
    router.add_route("*", prefix + "{tail:(/.*)?}", gateway.not_found)
    router.add_catch_all(gateway.proxy)
    if services.config.proxy.lean_front:
        # The hot path, served before aiohttp's server sees it (sidecar.web.lean).
        redemptions = RedeemLane(redeemer, failures)
        auth = AuthLane(forward_auth, sessions, prefix)
        lane = ExpressLane(
            services, gateway, forwarder, public, clients, sessions, redemptions, auth
        )
        lane.own_routes(router.own_literals())
        app[LANE] = lane
    return app


class Gateway:
    """The proxy's request handlers, with everything they need decided at start-up."""

    def __init__(
        self,
        services: Services,
        sessions: SessionManager,
        forwarder: Forwarder,
        redeemer: Redeemer,
        public: PublicOrigin,
    ) -> None:
        cfg = services.config
        self._public_origin = public
        self._services = services
        self._sessions = sessions
        self._forwarder = forwarder
        self.persistence = PersistenceWatch(services.store)
        self._require_persistence = cfg.store.require_persistence
        self._signed_out = cfg.proxy.prefix + "/signed-out"
        self._redeemer = redeemer
        self.configure(cfg)

    def configure(self, cfg: Config) -> None:
        """(Re)derive the access rules from ``cfg``: at start and on every reload."""
        self._unauthenticated = cfg.proxy.unauthenticated
        self._login_url = URL(cfg.proxy.login_url) if cfg.proxy.login_url else None
        self._public = GlobSet(cfg.proxy.public_paths)
        self._rules = {
            name: PathRules.compile(role.allow, role.deny) for name, role in cfg.roles.items()
        }

    # -- the proxy -------------------------------------------------------------------
    async def proxy(self, request: web.Request) -> web.StreamResponse:
        if hdrs.TRANSFER_ENCODING in request.headers and not _plain_chunked(request):
            # "identity, chunked" and friends: aiohttp reads them as chunked, a proxy in
            # front may not. Refuse, and close: what follows on this connection is suspect.
            refused = pages.failure(request, 400, "bad_request")
            refused.force_close()
            return refused
        raw_path = request.raw_path
        cut = raw_path.find("?")
        try:
            path = normalise(raw_path if cut < 0 else raw_path[:cut])
        except UnsafePath:
            return pages.failure(request, 400, "bad_path")
        if cut >= 0 and has_refer(request):
            return await self._redeemer.redeem(request)
        websocket = _is_websocket(request)
        if websocket and not self._public_origin.websocket_origin_allowed(
            request.headers.get(hdrs.ORIGIN)
        ):
            # Cross-site WebSocket hijacking: a page elsewhere opening a socket that the
            # browser authenticates with our cookie. Browsers always send Origin here.
            return pages.failure(request, 403, "cross_origin")
        cookies = self._sessions.cookies(request)  # read once: the session and the upstream
        verdict = await self.judge(path, cookies)
        if verdict is STORE_DOWN:
            return pages.failure(request, 503, "store_unavailable")
        if verdict.session is not None:
            set_user(verdict.session.record.user_id)
            if not verdict.forward:  # the role's rules refuse the path
                return pages.failure(request, 403, "forbidden")
        if verdict.forward:
            if websocket and verdict.session is not None:
                return await self._forwarder.forward_websocket(
                    request, cookies, verdict.identity, alive=self._still_signed_in(cookies)
                )
            return await self._send(request, cookies, verdict.identity, websocket)
        accept = request.headers.get(hdrs.ACCEPT, "")
        anonymous = self.anonymous(request.method, request.raw_path, accept, websocket)
        if anonymous is None:
            return await self._send(request, cookies, (), websocket)
        if isinstance(anonymous, Redirect):
            headers = {hdrs.LOCATION: anonymous.location, **pages.NO_STORE}
            return web.Response(status=anonymous.status, headers=headers)
        return pages.failure(request, anonymous.status, anonymous.reason)

    def anonymous(
        self, method: str, target: str, accept: str, websocket: bool = False
    ) -> Redirect | Failure | None:
        """What ``proxy.unauthenticated`` does with a request without a live session: None
        (``pass``: forwarded without identity), a :class:`Redirect` to ``login_url``, or the
        401 page. The handler's and the lean front's (:mod:`sidecar.proxy.exchange`) one
        rule; ``target`` is the raw path and query, ``accept`` the ``Accept`` header."""
        if self._unauthenticated == "pass":
            return None
        if (
            self._unauthenticated == "redirect"
            and self._login_url is not None
            and not websocket
            and not pages.prefers_json(accept)
        ):
            # "//evil" or "/\\evil" as rd would send the user off-site after logging in.
            location = self._login_url.update_query(rd="/" + target.lstrip("/\\"))
            status = 302 if method in (hdrs.METH_GET, hdrs.METH_HEAD) else 303
            return Redirect(status, str(location))
        return UNAUTHENTICATED

    async def judge(self, path: NormalPath, cookies: RequestCookies) -> Verdict:
        """Whether a request for ``path`` with ``cookies`` is forwarded, and with which
        identity: the one judgement of both the handler above and the lean front's lane
        (:mod:`sidecar.proxy.express`). ``public_paths`` go without identity, session or
        not; with a live session the role's rules decide."""
        if self._public and path.matched_by(self._public):
            return PUBLIC
        try:
            session = await self._sessions.lookup_cookies(cookies)
        except StoreUnavailable:
            return STORE_DOWN
        return self._session_verdict(path, session)

    def judge_now(self, path: NormalPath, cookies: RequestCookies) -> Verdict | None:
        """:meth:`judge` when it needs no store (the session cache answers); else None."""
        if self._public and path.matched_by(self._public):
            return PUBLIC
        session = self._sessions.cached(cookies)
        if session is NOT_CACHED:
            return None
        return self._session_verdict(path, session)

    def same_session(self, verdict: Verdict, path: NormalPath) -> Verdict | None:
        """:meth:`judge` for ``path`` with the lookup another request's ``verdict`` made."""
        if verdict is PUBLIC:  # a path public since a reload: nothing was looked up
            return None
        if self._public and path.matched_by(self._public):
            return PUBLIC
        return verdict if verdict is STORE_DOWN else self._session_verdict(path, verdict.session)

    def _session_verdict(self, path: NormalPath, session: Session | None) -> Verdict:
        if session is None:
            return ANONYMOUS
        # .get: a reload may have removed the role while the lookup awaited the store.
        rules = self._rules.get(session.record.role)
        if rules is None or not rules.permits(path):
            return Verdict(False, session=session)
        return Verdict(True, session.headers, session)

    def _still_signed_in(self, cookies: RequestCookies) -> Alive:
        async def alive() -> bool:
            try:
                return await self._sessions.lookup_cookies(cookies) is not None
            except StoreUnavailable:
                return False  # fail closed, as every other session check does

        return alive

    async def _send(
        self,
        request: web.Request,
        cookies: RequestCookies,
        identity: tuple[tuple[str, str], ...],
        websocket: bool,
    ) -> web.StreamResponse:
        if websocket:
            return await self._forwarder.forward_websocket(request, cookies, identity)
        return await self._forwarder.forward(request, cookies, identity)

    # -- <prefix>/… ------------------------------------------------------------------
    async def logout(self, request: web.Request) -> web.StreamResponse:
        """``POST`` ends the session, clears the cookie and 303s to a same-origin ``rd``/
        ``next`` path (``/`` otherwise); ``GET`` shows the button (links must not log out)."""
        if request.method in (hdrs.METH_GET, hdrs.METH_HEAD):
            return pages.logout_page(request)
        if request.method != hdrs.METH_POST:
            return pages.method_not_allowed(request, "GET, HEAD, POST")
        if not self._public_origin.same_origin(
            request.headers.get(hdrs.ORIGIN), request.headers.get("Sec-Fetch-Site")
        ):
            # A page elsewhere (a sibling subdomain is "same-site": SameSite=Lax still sends
            # the cookie) must not sign the user out.
            return pages.failure(request, 403, "cross_origin")
        try:
            record = await self._sessions.end(request)
        except StoreUnavailable:
            return pages.failure(request, 503, "store_unavailable")
        if record is not None:
            audit("logout", user_id=record.user_id, role=record.role, token_id=record.token_id)
        target = safe_return_path(request, default=self._signed_out)
        response = web.Response(status=303, headers={hdrs.LOCATION: target, **pages.NO_STORE})
        self._sessions.clear_cookie(response)
        return response

    async def signed_out(self, request: web.Request) -> web.StreamResponse:
        """Where a logout without ``rd`` lands: "You are signed out" (the app's ``/`` may
        well answer 401 to someone who just signed out)."""
        if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
            return pages.method_not_allowed(request, "GET, HEAD")
        return pages.signed_out_page(request)

    async def session(self, request: web.Request) -> web.StreamResponse:
        """The current identity as JSON, or a 401."""
        if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
            return pages.method_not_allowed(request, "GET, HEAD")
        try:
            session = await self._sessions.lookup(request)
        except StoreUnavailable:
            return pages.failure(request, 503, "store_unavailable")
        if session is None:
            return pages.failure_json(401, "unauthenticated")
        record = session.record
        return _json(
            200,
            {
                "user_id": record.user_id,
                "role": record.role,
                "email": record.email,
                "module": record.module,
                "params": record.params,
                "created_at": record.created_at,
                "expires_at": record.expires_at,
                "idle_timeout": record.idle_timeout,
            },
        )

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        """The process serves (liveness)."""
        return _json(200, {"status": "ok"})

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        """The store answers (readiness): 200, or 503 while it does not — or, with
        ``store.require_persistence``, while it does not say it persists."""
        try:
            await self._services.store.ping()
            persistence = await self.persistence.current()
        except StoreUnavailable:
            return _json(503, {"status": "unavailable", "store": "unreachable"})
        if self._require_persistence and (persistence is None or persistence.durable is not True):
            detail = "not checked yet" if persistence is None else persistence.detail
            return _json(
                503, {"status": "unavailable", "store": "not_persistent", "detail": detail}
            )
        return _json(200, {"status": "ok", "store": "ok"})

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        return pages.failure(request, 404, "not_found")


def safe_return_path(request: web.BaseRequest, default: str = "/") -> str:
    """``rd`` or ``next`` when it is a same-origin absolute path, ``/`` when it is not, and
    ``default`` when neither is given.

    Never a URL with a scheme, a ``//host`` or ``/\\host`` (browsers read both as another
    host), a backslash or a control character."""
    for name in ("rd", "next"):
        value = request.query.get(name)
        if value is not None:
            return value if _SAFE_RETURN.fullmatch(value) else "/"
    return default


def _plain_chunked(request: web.BaseRequest) -> bool:
    codings = request.headers.getall(hdrs.TRANSFER_ENCODING)
    return len(codings) == 1 and codings[0].strip().lower() == "chunked"


def _is_websocket(request: web.BaseRequest) -> bool:
    upgrade = request.headers.get(hdrs.UPGRADE)
    return upgrade is not None and upgrade.lower() == "websocket" and request.method == "GET"


def _json(status: int, doc: object) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(doc),
        content_type="application/json",
        headers=pages.NO_STORE,
    )
