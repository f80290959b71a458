"""The configuration's types: frozen dataclasses, one per YAML section.

They hold values already parsed (:mod:`sidecar.config.model` reads the YAML into them) and
check the invariants that tie their fields together in ``__post_init__``, raising
:class:`~sidecar.config.values.InvalidField`: no instance, however it was built, holds a
combination the sidecar must refuse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from sidecar.config.store import StoreConfig
from sidecar.config.values import HostPort, InvalidField, Network, RateLimit, Secret
from sidecar.proxy.templates import HeaderTemplate
from sidecar.tokens.keys import KeySet

MAX_EXPIRY = 30 * 86400.0
DEFAULT_EXPIRY = 3600.0
MODULE_NAME = r"[A-Za-z0-9_-]{1,128}"  # what a mint's "module" may be
LINK_TYPES = ("signup", "magiclink", "recovery", "invite", "email_change")


@dataclass(frozen=True, slots=True)
class RoleConfig:
    name: str
    max_expiry: float
    one_time: bool
    redeem: Literal["direct", "confirm"]
    session_lifetime: float
    idle_timeout: float
    params: frozenset[str]
    modules: tuple[str, ...]
    allow: tuple[str, ...]
    deny: tuple[str, ...]
    headers: tuple[HeaderTemplate, ...]


@dataclass(frozen=True, slots=True)
class AdminConfig:
    listen: HostPort
    key: Secret
    allow_non_loopback: bool
    allowed_peers: tuple[Network, ...]
    max_body: int
    mint_rate: RateLimit
    lean_front: bool = True  # successful mints skip aiohttp's server (admin.lane)

    def __post_init__(self) -> None:
        if not self.listen.is_loopback and not self.allow_non_loopback:
            raise InvalidField(
                "listen",
                f"got {self.listen}, which is not a loopback address; "
                "set admin.allow_non_loopback: true to expose the admin port deliberately",
            )


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    listen: HostPort
    upstream: str
    prefix: str
    connect_timeout: float
    upstream_timeout: float
    max_connections: int
    trusted_proxies: tuple[Network, ...]
    unauthenticated: Literal["deny", "redirect", "pass"]
    login_url: str | None
    public_paths: tuple[str, ...]
    max_header_size: int
    failed_redeem_rate: RateLimit
    stream_idle_timeout: float
    send_timeout: float
    request_head_timeout: float
    keepalive_timeout: float
    max_client_connections: int
    allowed_hosts: tuple[str, ...]
    allowed_origins: tuple[str, ...]
    strip_headers: tuple[str, ...]
    lean_front: bool = True  # plain forwarded requests skip aiohttp's server (web.lean)
    max_idle_connections: int = 256  # idle upstream connections kept (nginx's keepalive)
    # An idle upstream connection is closed after this (nginx's upstream keepalive_timeout).
    upstream_keepalive_timeout: float = 15.0


@dataclass(frozen=True, slots=True)
class ForwardAuthConfig:
    """Forward-auth mode (:mod:`sidecar.proxy.forward_auth`): ``envoy_path_prefix`` is where
    Envoy's ext_authz HTTP service puts the original path (None: no Envoy route)."""

    envoy_path_prefix: str | None


@dataclass(frozen=True, slots=True)
class SessionConfig:
    cookie_name: str
    cookie_secure: bool
    cookie_domain: str | None
    cache_ttl: float
    cache_size: int


@dataclass(frozen=True, slots=True)
class LinksConfig:
    role: str
    default_redirect: str
    redirect_allow: tuple[str, ...]
    expiry: float
    otp_length: int
    max_otp_attempts: int
    otp_rate: RateLimit
    create_user_on_magiclink: bool


@dataclass(frozen=True, slots=True)
class Config:
    public_url: str
    keyset: KeySet
    admin: AdminConfig
    proxy: ProxyConfig
    session: SessionConfig
    store: StoreConfig
    forward_auth: ForwardAuthConfig
    default_expiry: float
    max_expiry: float
    default_role: str
    roles: Mapping[str, RoleConfig]
    links: LinksConfig
    metrics_listen: HostPort | None
    log_level: str
    access_log: bool  # logging.access: one JSON line per request
    access_buffer: int  # logging.buffer: bytes of access lines held at most (0: none)
    access_flush: float  # logging.flush: seconds an access line is held at most
    log_backlog: int  # logging.backlog: bytes waiting for a slow log stream at most (0: no thread)
    grace_period: float
    # pages.dir: page name -> the operator's template (sidecar.config.pages); empty: built-in.
    pages: Mapping[str, str]
    watch_interval: float

    @property
    def identity_header_names(self) -> frozenset[str]:
        """Canonical (lower-case, ``-``) names of every header any role injects."""
        return frozenset(h.canonical for role in self.roles.values() for h in role.headers)
