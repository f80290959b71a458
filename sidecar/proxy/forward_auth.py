"""Forward-auth mode: judge a request that an ingress (nginx, Traefik, Envoy, Caddy) forwards.

``GET|HEAD <prefix>/auth`` answers the ingress's sub-request about an *original* request. The
original method, target, host and scheme are read from headers — but only from a peer in
``proxy.trusted_proxies``; from anyone else they are ignored and the sub-request's own path is
judged (so a client cannot ask about a path it is not requesting):

==================  ==============================================================
nginx               ``X-Original-URI``, ``X-Original-Method`` (and ``Host``)
ingress-nginx       ``X-Original-URL`` (absolute), ``X-Original-Method``
Traefik, Caddy      ``X-Forwarded-Uri``, ``-Method``, ``-Host``, ``-Proto``
Envoy ext_authz     the original path after ``forward_auth.envoy_path_prefix``; the
                    method, ``Host`` and ``X-Forwarded-Proto`` as Envoy sends them
==================  ==============================================================

Two spellings of the same fact that disagree, or a header sent twice, are refused (403):
the ingress forwards one request, and the answer must be about that one.

Answers (never a cookie, never a body — Traefik, Caddy and Envoy show a refusal's body to
the user, nginx throws it away):

* **200** with the role's identity headers *in the response*, for the ingress to copy
  upstream (``auth_request_set``, ``authResponseHeaders``, ``copy_headers``,
  ``allowed_upstream_headers``); ``public_paths`` and ``unauthenticated: pass`` answer 200
  with no identity header at all;
* **401** without a live session, and always for a ``refer`` query or a path under the
  prefix: the ingress sends those to the proxy listener, which redeems and serves them. With
  ``unauthenticated: redirect`` the 401 carries ``X-Sidecar-Redirect: <login_url>?rd=…``;
* **403** when the role's path rules refuse the path — normalised by
  :func:`sidecar.proxy.paths.normalise`, whose refusals (dot segments, double encoding…) are
  403s here too: an ingress turns any other status into a 500;
* **503** when the store is down (fail closed).

A session found in this process's cache costs no store I/O and no decryption: the cookie's
SHA-256 and a dictionary look-up (:class:`~sidecar.sessions.SessionManager`).

``GET|HEAD|POST <prefix>/signin?rd=<url>`` is where ingress-nginx's ``auth-signin`` sends a
browser the auth sub-request refused: a ``refer`` link inside ``rd`` is redeemed exactly as on
the proxy listener (303 + cookie to the same URL without ``refer``); otherwise the browser
goes to ``login_url`` (``unauthenticated: redirect``) or sees the "link needed" page.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qsl

from aiohttp import hdrs, web
from yarl import URL

from sidecar.config import Config
from sidecar.proxy.originals import BadOriginal, SubRequest, original_request, websocket_handshake
from sidecar.proxy.origins import PublicOrigin
from sidecar.proxy.paths import GlobSet, NormalPath, PathRules, UnsafePath, normalise
from sidecar.proxy.templates import canonical_header
from sidecar.refer.redeem import Redeemer, has_refer, may_hold_refer
from sidecar.sessions import Session, SessionManager
from sidecar.store.base import StoreUnavailable
from sidecar.web import pages
from sidecar.web.accesslog import set_user

REDIRECT_HINT: Final = "X-Sidecar-Redirect"
ENVOY_REMOVE: Final = "x-envoy-auth-headers-to-remove"
_NO_STORE: Final[dict[str, str]] = {hdrs.CACHE_CONTROL: "no-store"}

Trusts = Callable[[str | None], bool]
LOG = logging.getLogger("sidecar.forward_auth")
_DESCRIBING: Final = frozenset(
    {"X-Original-URI", "X-Original-URL", "X-Forwarded-Uri", "X-Original-Method",
     "X-Forwarded-Method"}
)  # fmt: skip


def _query_has_refer(query: str) -> bool:
    if not may_hold_refer(query):
        return False
    return any(name == "refer" for name, _ in parse_qsl(query, keep_blank_values=True))


@dataclass(frozen=True, slots=True)
class Answer:
    """Forward-auth's answer: a status and its headers, never a cookie, never a body."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)

    def all_headers(self) -> dict[str, str]:
        return _NO_STORE | self.headers if self.headers else _NO_STORE

    def response(self) -> web.Response:
        # No body and no Content-Type: nothing an ingress could show or sniff.
        return web.Response(status=self.status, headers=self.all_headers())


ALLOWED: Final = Answer(200)
UNAUTHORIZED: Final = Answer(401)
FORBIDDEN: Final = Answer(403)
STORE_DOWN: Final = Answer(503)


@dataclass(frozen=True, slots=True)
class Examined:
    """A sub-request whose answer its session decides: the original path, and target."""

    path: NormalPath
    target: str


class ForwardAuth:
    """The ``<prefix>/auth`` and ``<prefix>/signin`` handlers of one proxy app."""

    def __init__(
        self,
        config: Config,
        sessions: SessionManager,
        redeemer: Redeemer,
        trusts: Trusts,
        public: PublicOrigin,
    ) -> None:
        self._sessions = sessions
        self._redeemer = redeemer
        self._trusts = trusts
        self._public_origin = public  # shared with the gateway, which reconfigures it
        self._prefix = config.proxy.prefix  # routes: a restart changes them
        self._envoy_prefix = config.forward_auth.envoy_path_prefix
        self.configure(config)

    def configure(self, config: Config) -> None:
        """(Re)derive the access rules from ``config``: at start and on every reload."""
        px = config.proxy
        self._public = GlobSet(px.public_paths)
        self._rules = {
            name: PathRules.compile(role.allow, role.deny) for name, role in config.roles.items()
        }
        self._unauthenticated = px.unauthenticated
        self._login_url = URL(px.login_url) if px.login_url else None
        self._origin = URL(config.public_url).origin()
        self._envoy_removes = config.identity_header_names | {
            canonical_header(n) for n in px.strip_headers if not n.endswith("*")
        }
        self._warned = False

    def register(self, app: web.Application) -> None:
        """Add the routes (before the prefix's catch-all 404)."""
        router = app.router
        router.add_route("*", self._prefix + "/auth", self.auth)
        router.add_route("*", self._prefix + "/signin", self.signin)
        if self._envoy_prefix is not None:
            router.add_route("*", self._envoy_prefix + "{tail:/.*}", self.envoy)

    # -- the sub-request -------------------------------------------------------------
    async def auth(self, request: web.Request) -> web.StreamResponse:
        """``GET|HEAD <prefix>/auth``: nginx, ingress-nginx, Traefik and Caddy conventions."""
        if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
            return Answer(405, {hdrs.ALLOW: "GET, HEAD"}).response()
        return await self._judge(request, None)

    async def envoy(self, request: web.Request) -> web.StreamResponse:
        """``<envoy_path_prefix>/<original path>``: Envoy's ext_authz HTTP service (any method).

        Envoy's ``allowed_upstream_headers`` only *overrides* headers the answer carries; a
        client's copy of one it does not carry (no tenant, a public path) would pass. So a 200
        names every other identity header in ``x-envoy-auth-headers-to-remove``, and every
        name of ``proxy.strip_headers`` (Envoy removes by exact name: not the ``*`` ones)."""
        response = await self._judge(request, request.raw_path[len(self._envoy_prefix or "") :])
        if response.status == 200:
            unset = sorted(self._envoy_removes - {canonical_header(n) for n in response.headers})
            if unset:
                response.headers[ENVOY_REMOVE] = ", ".join(unset)
        return response

    async def _judge(self, request: web.Request, envoy_target: str | None) -> web.StreamResponse:
        examined = self.examine(request, envoy_target)
        if isinstance(examined, Answer):
            return examined.response()
        try:
            session = await self._sessions.lookup(request)
        except StoreUnavailable:
            return STORE_DOWN.response()
        if session is not None:
            set_user(session.record.user_id)
        return self.decide(examined, session).response()

    def examine(self, sub: SubRequest, envoy_target: str | None) -> Answer | Examined:
        """What can be told of ``sub`` without its session: an answer, or the path whose
        answer the session decides (:meth:`decide`). The one judgement of the handlers
        above and of the lean front (:mod:`sidecar.proxy.auth_lane`)."""
        trusted = self._trusts(sub.remote)
        if not trusted and not self._warned and any(h in sub.headers for h in _DESCRIBING):
            # The usual set-up mistake (the ingress missing from trusted_proxies) shows as
            # every request refused: say why, once.
            self._warned = True
            LOG.warning(
                "forward-auth: ignoring X-Original-*/X-Forwarded-* from %s, which is not in "
                "proxy.trusted_proxies; the sub-request's own path is judged instead",
                sub.remote,
            )
        try:
            original = original_request(sub, trusted=trusted, envoy_target=envoy_target)
        except BadOriginal:
            return FORBIDDEN
        # The proxy's origin rules, applied to the original request: its Host (421 there; a
        # 403 here, the one refusal every ingress passes on) and a WebSocket's Origin.
        if not self._public_origin.host_allowed(original.host):
            return FORBIDDEN
        if (
            original.method == hdrs.METH_GET
            and websocket_handshake(sub)
            and not self._public_origin.websocket_origin_allowed(sub.headers.get(hdrs.ORIGIN))
        ):
            return FORBIDDEN
        raw_path, _, query = original.target.partition("?")
        try:
            path = normalise(raw_path)
        except UnsafePath:
            return FORBIDDEN
        if query and _query_has_refer(query):
            return UNAUTHORIZED  # the ingress sends it to the proxy listener to redeem
        if path.strict == self._prefix or path.strict.startswith(self._prefix + "/"):
            return UNAUTHORIZED  # the sidecar's own pages are served by the proxy listener
        if self._public and path.matched_by(self._public):
            return ALLOWED
        return Examined(path, original.target)

    def decide(self, examined: Examined, session: Session | None) -> Answer:
        r"""The answer for an :meth:`examine`\ d request whose live session is ``session``."""
        if session is not None:
            # .get: a reload may have removed the role while the lookup awaited the store.
            rules = self._rules.get(session.record.role)
            if rules is None or not rules.permits(examined.path):
                return FORBIDDEN
            return Answer(200, dict(session.headers))
        if self._unauthenticated == "pass":
            return ALLOWED
        location = self._login_location(examined.target)
        return Answer(401, {REDIRECT_HINT: location}) if location else UNAUTHORIZED

    def _login_location(self, target: str) -> str | None:
        """Where ``unauthenticated: redirect`` sends a browser, or None in the other modes."""
        if self._unauthenticated != "redirect" or self._login_url is None:
            return None
        # "//evil" or "/\\evil" as rd would send the user off-site after logging in.
        return str(self._login_url.update_query(rd="/" + target.lstrip("/\\")))

    # -- ingress-nginx's auth-signin -------------------------------------------------
    async def signin(self, request: web.Request) -> web.StreamResponse:
        """Redeem the ``refer`` link of ``rd`` (same origin only), or send the user to sign in."""
        if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD, hdrs.METH_POST):
            return pages.method_not_allowed(request, "GET, HEAD, POST")
        if request.method == hdrs.METH_POST and not self._public_origin.same_origin(
            request.headers.get(hdrs.ORIGIN), request.headers.get("Sec-Fetch-Site")
        ):
            # The confirm button's POST burns a link and starts a session: never from a page
            # elsewhere (the logout rule).
            return pages.failure(request, 403, "cross_origin")
        target = self._same_origin_target(request.query.get("rd", "/"))
        if target is None:
            return pages.failure(request, 400, "bad_request")
        raw_path, _, query = target.partition("?")
        try:
            normalise(raw_path)
        except UnsafePath:
            return pages.failure(request, 400, "bad_path")
        original = request.clone(rel_url=URL(target, encoded=True))
        if query and has_refer(original):
            return await self._redeemer.redeem(original)
        try:
            session = await self._sessions.lookup(request)
        except StoreUnavailable:
            return pages.failure(request, 503, "store_unavailable")
        if session is not None:  # signed in meanwhile (another tab): back to the page
            return web.Response(status=303, headers={hdrs.LOCATION: target, **pages.NO_STORE})
        location = self._login_location(target)
        if location is not None:
            return web.Response(status=302, headers={hdrs.LOCATION: location, **pages.NO_STORE})
        return pages.failure(request, 401, "unauthenticated")

    def _same_origin_target(self, rd: str) -> str | None:
        """``rd``'s path and query when it is an absolute path or a URL on ``public_url``'s
        origin; never another host (``//evil``, ``/\\evil``, a control character)."""
        if any(ord(c) < 0x21 or c in "\\\x7f" for c in rd):
            return None
        if rd.startswith("/"):
            return None if rd.startswith("//") else rd.partition("#")[0]
        url = URL(rd, encoded=True)
        if not url.absolute or url.origin() != self._origin:
            return None
        return url.raw_path_qs
