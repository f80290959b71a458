"""Header policy: what reaches the upstream of a request's headers, and the client of an answer's.

Request headers sent upstream:

* every client-supplied copy of an identity header is dropped, in any spelling
  (:func:`~sidecar.proxy.templates.canonical_header`: case and ``_``/``-``), then the session's
  rendered identity headers are added;
* well-known identity, override and client-address headers the config does not inject
  (:mod:`sidecar.proxy.strip`, plus ``proxy.strip_headers``) are dropped, in any spelling;
* the sidecar's own cookie is cut out of ``Cookie`` (from the request's
  :class:`~sidecar.session_cookies.RequestCookies`, read once); other cookies pass unchanged;
* hop-by-hop headers (RFC 9110 §7.6.1: ``Connection`` and every header it names,
  ``Keep-Alive``, ``Proxy-Connection``, ``TE``, ``Trailer``, ``Transfer-Encoding``,
  ``Upgrade``) and ``Expect`` (the sidecar already answered ``100 Continue``) are dropped;
* ``X-Forwarded-For/Proto/Host``: appended to when the peer is a trusted proxy
  (:class:`~sidecar.proxy.clientaddr.ClientAddresses`), otherwise replaced (and
  ``Forwarded``/``X-Real-IP`` and the prefix/port/scheme hints from an
  untrusted peer are dropped);
* the path overrides ``X-Original-URL``, ``X-Rewrite-URL``, ``X-Original-URI`` and
  ``X-Forwarded-Uri`` are dropped from every peer, trusted or not;
* ``X-Request-Id`` is the sidecar's own request id, never the client's.

Response headers sent back: all but hop-by-hop ones, and never a ``Set-Cookie`` for the
sidecar's own cookie.

What to do with a header name is decided once per name as received (a bounded cache), so
per request there is one pass over the headers.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Final

from aiohttp import web
from yarl import URL

from sidecar.config import Config
from sidecar.proxy.clientaddr import ClientAddresses
from sidecar.proxy.strip import StripList
from sidecar.proxy.templates import canonical_header
from sidecar.session_cookies import RequestCookies
from sidecar.telemetry.access import REQUEST_ID
from sidecar.telemetry.context import current_request_id

HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
     "upgrade"}
)  # fmt: skip
# Path overrides (IIS, Symfony, Zend, nginx auth_request): an upstream that honours them
# would serve a path the role rules never judged. Dropped from every peer: the sidecar judges
# its own request line, even behind a trusted proxy (which passes on what its client sent).
_PATH_OVERRIDES: Final = frozenset(
    {"x-original-url", "x-rewrite-url", "x-original-uri", "x-forwarded-uri"}
)
_FORWARDING: Final = frozenset(
    {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip",
     # Prefix, port and scheme hints (Spring, Symfony, Rails, Werkzeug's ProxyFix): an
     # upstream that honours them builds absolute URLs and redirects from them.
     "x-forwarded-prefix", "x-forwarded-port", "x-forwarded-server", "x-forwarded-scheme",
     "x-forwarded-ssl", "x-url-scheme", "front-end-https"}
)  # fmt: skip
_NAME_CACHE_SIZE: Final = 2048
_FRAMING: Final = frozenset({b"host", b"content-length", b"transfer-encoding"})
_QUIET_TOKENS: Final = frozenset({b"keep-alive", b"close", b"upgrade", b""})

Header = tuple[bytes, bytes]


class Action(enum.IntEnum):
    """What happens to a header, decided once per header name as received."""

    KEEP = enum.auto()
    DROP = enum.auto()
    COOKIE = enum.auto()  # Cookie / Set-Cookie: the sidecar's own cookie is cut out
    CONNECTION = enum.auto()  # dropped, and so is every header it names
    FORWARDED = enum.auto()  # kept from a trusted proxy only
    HOST = enum.auto()
    LENGTH = enum.auto()


class HeaderPolicy:
    """The request and response header rules of one proxy, compiled from its config."""

    def __init__(self, config: Config, clients: ClientAddresses) -> None:
        self._own_cookie = config.session.cookie_name.lower()
        self._identity = config.identity_header_names
        self._strip = StripList(config.proxy.strip_headers)
        self._clients = clients
        # Host when the client sent none (HTTP/1.0): the upstream's own authority.
        self._default_host = (URL(config.proxy.upstream).raw_authority or "").encode("idna")
        self._actions: dict[bytes, Action] = {}
        self._response_actions: dict[str, Action] = {}

    def _classify(self, name: bytes) -> Action:
        canonical = canonical_header(name.decode("latin-1"))
        if canonical == "connection":
            action = Action.CONNECTION
        elif (
            canonical in self._identity
            or canonical in self._strip
            or canonical in HOP_BY_HOP
            or canonical in _PATH_OVERRIDES
            or canonical in ("expect", REQUEST_ID.lower())
            or canonical.startswith("sec-websocket-")
        ):
            action = Action.DROP
        elif canonical == "cookie":
            action = Action.COOKIE
        elif canonical in _FORWARDING:
            action = Action.FORWARDED
        elif canonical == "host":
            action = Action.HOST
        elif canonical == "content-length":
            action = Action.LENGTH
        else:
            action = Action.KEEP
        if len(self._actions) < _NAME_CACHE_SIZE:
            self._actions[name] = action
        return action

    def request_headers(
        self,
        request: web.BaseRequest,
        cookies: RequestCookies,
        identity: Iterable[tuple[str, str]],
    ) -> tuple[list[Header], bool]:
        """The headers to send upstream, and whether the client gave a Content-Length."""
        return self.raw_request_headers(
            request.raw_headers, request.remote, request.scheme, cookies, identity
        )

    def raw_request_headers(
        self,
        raw_headers: Iterable[Header],
        remote: str | None,
        scheme: str,
        cookies: RequestCookies,
        identity: Iterable[tuple[str, str]],
        request_id: str | None = None,
    ) -> tuple[list[Header], bool]:
        """:meth:`request_headers` for a request head's raw ``(name, value)`` pairs, from
        the peer ``remote`` over ``scheme``; ``request_id`` is the current request's when
        not given."""
        actions = self._actions
        out: list[Header] = []
        named: set[bytes] | None = None
        trusted = self._clients.trusts(remote)
        cookie_rest = iter(cookies.others)
        xff: list[bytes] = []
        proto = forwarded_host = host = None
        has_length = False
        for name, value in raw_headers:
            action = actions.get(name)
            if action is None:
                action = self._classify(name)
            if action == Action.KEEP:
                out.append((name, value))
            elif action == Action.HOST:
                host = value
                out.append((name, value))
            elif action == Action.LENGTH:
                has_length = True
                out.append((name, value))
            elif action == Action.COOKIE:
                # A Cookie header the request's cookies did not read has nothing to send.
                rest = next(cookie_rest, b"")
                if rest:
                    out.append((name, rest))
            elif action == Action.CONNECTION:
                tokens = {t.strip().lower() for t in value.split(b",")} - _QUIET_TOKENS
                if tokens:
                    named = (named or set()) | tokens
            elif action == Action.FORWARDED and trusted:
                lower = name.lower()
                if lower == b"x-forwarded-for":
                    xff.append(value)
                elif lower == b"x-forwarded-proto":
                    proto = proto or value
                elif lower == b"x-forwarded-host":
                    forwarded_host = forwarded_host or value
                elif b"_" not in lower and b"." not in lower:
                    # Only the canonical spelling: a CGI/WSGI upstream would merge
                    # "X_Forwarded_For" with what the sidecar sets into one variable.
                    out.append((name, value))
        if named:
            # Headers the client's Connection names are hop-by-hop too — but never Host
            # or the body's framing ("Connection: Content-Length" would send the body
            # unframed: a second, smuggled request), nor what the sidecar adds below.
            named -= _FRAMING
            out = [(n, v) for n, v in out if n.lower() not in named]
        if host is None:
            host = self._default_host
            out.append((b"Host", host))
        xff.append((remote or "").encode())
        out.append((b"X-Forwarded-For", b", ".join(xff)))
        out.append((b"X-Forwarded-Proto", proto or scheme.encode()))
        out.append((b"X-Forwarded-Host", forwarded_host or host))
        if request_id is None:
            request_id = current_request_id()
        if request_id is not None:
            out.append((b"X-Request-Id", request_id.encode()))
        for label, text in identity:
            out.append((label.encode(), text.encode()))
        return out, has_length

    def response_headers(self, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """Upstream response headers minus hop-by-hop ones (and any attempt by the upstream
        to set the sidecar's own session cookie)."""
        actions = self._response_actions
        out: list[tuple[str, str]] = []
        named: set[str] | None = None
        for name, value in headers:
            action = actions.get(name)
            if action is None:
                action = _response_action(name.lower())
                if len(actions) < _NAME_CACHE_SIZE:
                    actions[name] = action
            if action == Action.KEEP:
                out.append((name, value))
            elif action == Action.COOKIE:
                # Browsers trim the name: "sidecar_session =x" would still set ours.
                if value.partition("=")[0].strip().lower() != self._own_cookie:
                    out.append((name, value))
            elif action == Action.CONNECTION:
                named = (named or set()) | {t.strip().lower() for t in value.split(",")}
        if named:
            out = [(n, v) for n, v in out if n.lower() not in named]
        return out


def request_head(method: str, base_path: bytes, target: bytes, headers: list[Header]) -> bytes:
    """The request head sent upstream: the request line (``target`` below ``base_path``)
    and ``headers`` as given, through the blank line (:meth:`Forwarder.upstream_head
    <sidecar.proxy.forward.Forwarder.upstream_head>`; compiled here with the hot path)."""
    parts = [method.encode(), b" ", base_path, target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        # parts.append itself, not a bound method in a variable: compiled, that is a
        # generic call each time.
        parts.append(name)
        parts.append(b": ")
        parts.append(value)
        parts.append(b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def _response_action(lower: str) -> Action:
    if lower == "connection":
        return Action.CONNECTION
    if lower in HOP_BY_HOP:
        return Action.DROP
    return Action.COOKIE if lower == "set-cookie" else Action.KEEP
