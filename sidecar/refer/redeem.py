"""Redeeming a refer link: ``<any path>?refer=<token>`` becomes a session and a 303.

The request is answered here and never forwarded. In order:

* ``HEAD`` is answered without looking at the token: link scanners and previews must not
  burn it (nor count as failures);
* the token is opened (401 malformed/tampered/unknown key, 410 expired), its role must still
  be configured (401), and a ``redeem: confirm`` role answers ``GET`` with a button page;
* one-time tokens are burned (exactly once, across replicas: 410 used/revoked); others are
  checked for revocation; a store that does not answer is a 503 — never a session;
* the session is created, the cookie set, and the browser sent to the same URL without
  ``refer`` (other query parameters kept, ``#/display/<module>`` added when the token names
  a module).

Failures take the proxy's one failure path (:mod:`sidecar.proxy.redemptions`: metrics, audit
line, status table, ``proxy.failed_redeem_rate``). Only failures are limited: past the limit a
client's *failures* answer 429. A token that opens and is usable is always redeemed, whatever
the count — decryption is cheap, and otherwise one person's typos (or, behind an ingress
without ``proxy.trusted_proxies``, anyone's) would lock out every valid link from that
address.

Audit lines carry the token id and the reason, never the token text.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import unquote_plus

from aiohttp import hdrs, web

from sidecar.config import RoleConfig
from sidecar.proxy.clientaddr import ClientAddresses
from sidecar.proxy.origins import PublicOrigin
from sidecar.proxy.redemptions import FailedRedemptions
from sidecar.refer.minting import MODULE
from sidecar.services import Services
from sidecar.session_cookies import RequestCookies
from sidecar.sessions import SessionManager
from sidecar.store.base import BurnResult, StoreUnavailable, TokenState
from sidecar.telemetry import metrics
from sidecar.telemetry.audit import audit_redemption
from sidecar.telemetry.context import set_route, set_user
from sidecar.tokens.codec import Claims, ExpiredToken, TokenError
from sidecar.web import pages


def may_hold_refer(query: str) -> bool:
    """Whether a raw query string can hold a ``refer`` parameter at all: only one that
    names it, or has a percent escape that could spell it (``%72efer``), is parsed."""
    return "refer" in query or "%" in query


def has_refer(request: web.BaseRequest) -> bool:
    """Whether the query has a ``refer`` parameter (in any percent-encoded spelling)."""
    return may_hold_refer(request.query_string) and "refer" in request.query


# A query in these characters reads the same to every parser: nothing to decode (no "%",
# no "+"), nothing that ends the query early ("#"). Token characters (base64url and ".")
# and the trailing "/" of the Unqork form are among them.
_PLAIN_CHARACTERS: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~/=&-"


def plain_refer_values(query: str) -> list[str] | None:
    """The values of every ``refer`` parameter of a raw ``query``, read as aiohttp's
    ``request.query.getall("refer")`` reads them, when ``query`` is plain (only
    :data:`_PLAIN_CHARACTERS`); None for any other query, and for one without ``refer``.

    ``&`` separates parameters (empty ones skipped), the first ``=`` the name from the
    value (none: an empty value); in a plain query nothing is percent- or ``+``-decoded."""
    # What is left once the plain characters are deleted: nothing, for a plain query. (A
    # regular expression's fullmatch cost a redemption 9k instructions over its ~350
    # characters; bytes.translate is one pass of a table lookup.)
    if not query.isascii() or query.encode("ascii").translate(None, _PLAIN_CHARACTERS):
        return None
    if "&" not in query:  # a link's usual query, "refer=<token>": one parameter
        name, _, value = query.partition("=")
        return [value] if name == "refer" else None
    values = [
        value
        for name, _, value in (part.partition("=") for part in query.split("&") if part)
        if name == "refer"
    ]
    return values or None


class RedeemFailed(Exception):
    """The link cannot be redeemed; ``reason`` says why (its status:
    :data:`sidecar.proxy.redemptions.STATUS`)."""

    def __init__(self, reason: str, token_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.token_id = token_id


class Redeemer:
    def __init__(
        self,
        services: Services,
        sessions: SessionManager,
        clients: ClientAddresses,
        failures: FailedRedemptions,
        public: PublicOrigin,
    ) -> None:
        self._services = services
        self._sessions = sessions
        self._clients = clients
        self._failures = failures
        self._public = public

    async def redeem(self, request: web.Request) -> web.StreamResponse:
        set_route("redeem")
        method = request.method
        if method == hdrs.METH_HEAD:
            return pages.confirm_page(request)
        if method not in (hdrs.METH_GET, hdrs.METH_POST):
            return pages.method_not_allowed(request, "GET, HEAD, POST")
        if method == hdrs.METH_POST and not self._public.same_origin_request(request.headers):
            # Login CSRF: another site posting its own link would sign the visitor in as
            # someone else. Our confirm button posts from our own page.
            return pages.failure(request, 403, "cross_origin")
        try:
            claims, role = self.open(request.query.getall("refer"))
            if role.redeem == "confirm" and method == hdrs.METH_GET:
                # Only the POST from the button burns; the GET checks without consuming.
                try:
                    state = await self._services.store.token_state(claims.token_id)
                except StoreUnavailable:
                    raise RedeemFailed("store_unavailable", claims.token_id) from None
                _check_state(state, claims)
                return pages.confirm_page(request)
            headers = await self.complete(
                claims,
                role,
                request.raw_path,
                self._clients.of(request),
                self._sessions.cookies(request),
            )
        except RedeemFailed as failed:
            return await self._failures.answer(request, failed.reason, token_id=failed.token_id)
        return web.Response(status=303, headers=headers)

    def open(self, tokens: list[str]) -> tuple[Claims, RoleConfig]:
        """The claims of the one ``refer`` value in ``tokens`` and their role, still
        configured; :class:`RedeemFailed` otherwise. Nothing is written: the lean front
        (:mod:`sidecar.proxy.redeem_lane`) hands a link that fails here to the handler."""
        token = tokens[0] if len(tokens) == 1 else ""
        # The Unqork form "/?refer=<token>/#/display/<module>" leaves one "/" on the token.
        if token.endswith("/"):
            token = token[:-1]
        try:
            claims = self._services.codec.open(token, self._services.clock())
        # One name per handler: compiled (mypyc), a name holds the first handler's type.
        except ExpiredToken as expired:
            raise RedeemFailed("expired", expired.claims.token_id) from None
        except TokenError as exc:
            raise RedeemFailed(exc.reason) from None
        if claims.kind != "refer":
            raise RedeemFailed("malformed", claims.token_id)
        role = self._services.config.roles.get(claims.role)
        if role is None:
            raise RedeemFailed("unknown_role", claims.token_id)
        return claims, role

    async def complete(
        self,
        claims: Claims,
        role: RoleConfig,
        target: str,
        client: str,
        cookies: RequestCookies,
    ) -> list[tuple[str, str]]:
        """Redeem an opened link (:meth:`open`) of a request for ``target`` (its raw path
        and query) from ``client`` carrying ``cookies``: burn it (one-time) or check it,
        store the new session, end the ones the browser held, and return the 303's headers
        (:func:`redirect_headers`). :class:`RedeemFailed` when it cannot be redeemed.

        Both edges call it, aiohttp's handler and the lean front's."""
        cookie, session = self._sessions.new(
            user_id=claims.subject,
            role=role,
            token_id=claims.token_id,
            params=claims.params,
            email=claims.email,
            module=claims.module,
            client=client,
        )
        store = self._services.store
        # Once a burn is sent, a store failure cannot say whether it landed: a frozen
        # Redis may still run the queued write, a replica may not have acknowledged it.
        # The 503 page says so (retrying may answer "already used") — never a session.
        unavailable = "store_unavailable"
        try:
            if claims.one_time:
                # The burn and the new session in one store call (one SQLite commit).
                unavailable = "burn_unconfirmed"
                result = await store.burn(claims.token_id, claims.expires_at, session)
                if result is BurnResult.ALREADY_USED:
                    raise RedeemFailed("used", claims.token_id)
                if result is BurnResult.REVOKED:
                    raise RedeemFailed("revoked", claims.token_id)
            else:
                _check_state(await store.token_state(claims.token_id), claims)
                await store.create_session(session)
            # A browser that still holds another session starts afresh (its old cookie
            # names another record: ending it cannot touch the one just created).
            if cookies.values:
                await self._sessions.end_cookies(cookies)
        except StoreUnavailable:
            raise RedeemFailed(unavailable, claims.token_id) from None
        metrics.redemption("success")
        set_user(claims.subject)
        audit_redemption(claims.token_id, claims.subject, role.name, claims.one_time)
        return redirect_headers(
            landing_url(target, claims), self._sessions.cookie_header(cookie, role)
        )


def _check_state(state: TokenState, claims: Claims) -> None:
    if state is TokenState.REVOKED:
        raise RedeemFailed("revoked", claims.token_id)
    if state is TokenState.USED:
        raise RedeemFailed("used", claims.token_id)


# The headers' names, and the no-store pair, looked up once (every redemption writes them).
_LOCATION: Final = hdrs.LOCATION
_SET_COOKIE: Final = hdrs.SET_COOKIE
_NO_STORE: Final = tuple(pages.NO_STORE.items())


def redirect_headers(location: str, set_cookie: str) -> list[tuple[str, str]]:
    """The headers of a redemption's 303, in order: the one spelling both edges write
    (aiohttp adds its own framing headers; :func:`sidecar.proxy.answers.bodyless` the same)."""
    return [(_LOCATION, location), *_NO_STORE, (_SET_COOKIE, set_cookie)]


# The lower-cased names of redirect_headers', whatever the values: the lean front's answer
# (sidecar.proxy.answers.bodyless) is then framed without reading them again.
REDIRECT_NAMES: Final = frozenset(name.lower() for name, _ in redirect_headers("", ""))


def landing_url(target: str, claims: Claims) -> str:
    """The same path and query as the raw request ``target`` without ``refer``, plus
    ``#/display/<module>`` if any.

    Other query parameters keep their exact bytes. Leading ``//`` or ``/\\`` collapse to
    one ``/`` so a crafted path cannot turn the redirect into another host."""
    path, _, query = target.partition("?")
    path = "/" + path.lstrip("/\\")
    if "&" not in query and query.startswith("refer="):
        location = path  # a link's usual query, "refer=<token>": nothing else to keep
    else:
        kept = [part for part in query.split("&") if part and _name(part) != "refer"]
        location = path + ("?" + "&".join(kept) if kept else "")
    if claims.module is not None and MODULE.fullmatch(claims.module):
        location += "#/display/" + claims.module
    return location


def _name(part: str) -> str:
    """The decoded name of the query parameter ``part``: ``unquote_plus``'s, which changes
    nothing in a name without ``%`` or ``+`` (a link's ``refer``: its Python calls are then
    skipped)."""
    name = part.partition("=")[0]
    return unquote_plus(name) if "%" in name or "+" in name else name
