"""Configuration: YAML parsed once, at start-up, into the frozen dataclasses of
:mod:`sidecar.config.options`.

Every problem is collected with its YAML path (``roles.Admin.max_expiry: got '40d', at
most 30d``) and reported together by :class:`ConfigError`. Secrets (the keyset and the
admin key) are never in the YAML: it names a file or an environment variable, and the
value is held in a :class:`Secret` that never shows itself.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import yaml

from sidecar.config.cookies import cookie_prefix_problem, default_cookie_name
from sidecar.config.options import (
    DEFAULT_EXPIRY,
    MAX_EXPIRY,
    MODULE_NAME,
    AdminConfig,
    Config,
    ForwardAuthConfig,
    LinksConfig,
    ProxyConfig,
    RoleConfig,
    SessionConfig,
)
from sidecar.config.pages import load_page_templates
from sidecar.config.reader import Reader
from sidecar.config.store import read_store
from sidecar.config.values import InvalidField, Secret
from sidecar.links.redirects import RedirectPatternError, compile_pattern
from sidecar.proxy.origins import parse_host, parse_origin
from sidecar.proxy.strip import DEFAULT_STRIP_HEADERS, check_strip_name
from sidecar.proxy.templates import HeaderTemplate, TemplateError, compile_header
from sidecar.telemetry.logwriter import DEFAULT_BACKLOG, DEFAULT_BUFFER, DEFAULT_FLUSH
from sidecar.tokens.keys import KeySet, KeysetError, generate_keyset, parse_keyset


class ConfigError(Exception):
    """The configuration is invalid; ``errors`` lists every problem, each with its path."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("invalid configuration:\n  " + "\n  ".join(errors))


# logging.buffer and logging.flush at most: what a hard kill can lose stays bounded.
MAX_LOG_BUFFER = 16 * 1024 * 1024
MAX_LOG_FLUSH = 60.0
# logging.backlog at most: what a stalled log stream can hold in memory (and a hard kill lose).
MAX_LOG_BACKLOG = 64 * 1024 * 1024

# Routes the proxy listener serves under proxy.prefix (sidecar.proxy.gateway).
PREFIX_ROUTES = (
    "/auth",
    "/signin",
    "/logout",
    "/signed-out",
    "/session",
    "/healthz",
    "/readyz",
    "/verify",
)

DEFAULT_HEADERS = {
    "X-Forwarded-User": "{user_id}",
    "X-Forwarded-Role": "{role}",
    "X-Forwarded-Email": "{email}",
}


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A config and where each of its given (not defaulted) values came from: YAML path
    -> ``"file"`` or ``"env SIDECAR_…"``."""

    config: Config
    sources: Mapping[str, str]
    #: The secret files read (keyset, admin key): a running sidecar reloads when they change.
    secret_files: tuple[Path, ...] = ()


def load_config(
    path: str | Path, env: Mapping[str, str] | None = None, *, offline: bool = False
) -> Config:
    """Read, validate and freeze the YAML at ``path``, with ``SIDECAR_…`` overrides from
    ``env`` (default ``os.environ``); raise :class:`ConfigError`.

    Relative paths in the file (secret files, a SQLite store) are relative to the file's
    directory. ``offline`` checks everything but never reads the secrets; such a config
    holds a throw-away keyset and an empty admin key, and must never serve."""
    return read_config(path, env, offline=offline).config


def read_config(
    path: str | Path,
    env: Mapping[str, str] | None = None,
    *,
    offline: bool = False,
    read_secrets: Collection[str] = (),
) -> LoadedConfig:
    """:func:`load_config`, keeping the sources of the values. ``offline`` with
    ``read_secrets`` (YAML paths such as ``"admin.key"``) reads those secrets only."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from exc
    # Absolute (not resolved: a Kubernetes mount's ..data symlinks must keep working).
    base_dir = Path(os.path.abspath(path)).parent
    env = os.environ if env is None else env
    return _parse(text, env=env, base_dir=base_dir, offline=offline, read_secrets=read_secrets)


def parse_config(
    text: str, *, env: Mapping[str, str], base_dir: Path, offline: bool = False
) -> Config:
    return _parse(text, env=env, base_dir=base_dir, offline=offline).config


def _parse(
    text: str,
    *,
    env: Mapping[str, str],
    base_dir: Path,
    offline: bool,
    read_secrets: Collection[str] = (),
) -> LoadedConfig:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"(file): not valid YAML{where}"]) from exc
    r = Reader(
        raw if raw is not None else {},
        env=env,
        base_dir=base_dir,
        offline=offline,
        read_secrets=frozenset(read_secrets),
    )
    cfg = _build(r)
    if r.errors or cfg is None:
        raise ConfigError(r.errors)
    return LoadedConfig(cfg, dict(r.sources), tuple(r.secret_files))


def _build(r: Reader) -> Config | None:
    root = r.root()
    public_url = root.url("public_url", required=True)
    max_expiry = root.duration("tokens.max_expiry", MAX_EXPIRY, at_most=MAX_EXPIRY)
    default_expiry = root.duration("tokens.default_expiry", DEFAULT_EXPIRY, at_most=max_expiry)

    keyset_text = root.secret("keys", what="keyset")
    keyset: KeySet | None = generate_keyset("offline") if r.offline else None
    if keyset_text is not None:
        try:
            keyset = parse_keyset(keyset_text.reveal())
        except KeysetError as exc:
            r.error("keys", str(exc))

    adm = root.section("admin")
    admin_key = adm.secret("key", what="admin key") or Secret("")
    if admin_key.reveal() and len(admin_key.reveal()) < 32:
        r.error("admin.key", "the admin key is too short: use at least 32 random characters")
    admin: AdminConfig | None
    try:
        admin = AdminConfig(
            listen=adm.hostport("listen", "127.0.0.1:9091"),
            key=admin_key,
            allow_non_loopback=adm.boolean("allow_non_loopback", False),
            allowed_peers=adm.networks("allowed_peers"),
            max_body=adm.size("max_body", 65536),
            mint_rate=adm.rate("mint_rate", "6000/1m"),
            lean_front=adm.boolean("lean_front", True),
        )
    except InvalidField as exc:
        adm.error(exc.field, exc.message)
        admin = None

    px = root.section("proxy")
    prefix = px.string("prefix", "/_sidecar")
    if not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", prefix):
        r.error("proxy.prefix", f"got {prefix!r}, expected a path like /_sidecar")
    unauth = px.choice("unauthenticated", ("deny", "redirect", "pass"), "deny")
    login_url = px.url("login_url", required=unauth == "redirect", relative_ok=True)
    max_connections = px.integer("max_connections", 256, low=1, high=100_000)
    proxy = ProxyConfig(
        listen=px.hostport("listen", "0.0.0.0:8080"),  # the public side
        upstream=px.url("upstream", required=True) or "",
        prefix=prefix,
        connect_timeout=px.duration("connect_timeout", 5.0),
        upstream_timeout=px.duration("upstream_timeout", 60.0),
        max_connections=max_connections,
        trusted_proxies=px.networks("trusted_proxies"),
        unauthenticated=unauth,  # type: ignore[arg-type]  # choice() checked the value
        login_url=login_url,
        public_paths=px.path_globs("public_paths"),
        max_header_size=px.size("max_header_size", 16384),
        failed_redeem_rate=px.rate("failed_redeem_rate", "30/5m"),
        stream_idle_timeout=px.duration("stream_idle_timeout", 300.0, at_most=86400.0),
        send_timeout=px.duration("send_timeout", 60.0, at_most=3600.0),
        request_head_timeout=px.duration("request_head_timeout", 10.0, at_most=300.0),
        keepalive_timeout=px.duration("keepalive_timeout", 75.0, at_most=3600.0),
        max_client_connections=px.integer("max_client_connections", 4096, low=1, high=1_000_000),
        allowed_hosts=_checked(px, "allowed_hosts", parse_host),
        allowed_origins=_checked(px, "allowed_origins", parse_origin),
        strip_headers=DEFAULT_STRIP_HEADERS + _checked(px, "strip_headers", check_strip_name),
        lean_front=px.boolean("lean_front", True),
        # As many as may be busy by default: fewer makes a steady load churn connections.
        max_idle_connections=px.integer(
            "max_idle_connections", max_connections, low=0, high=100_000
        ),
        upstream_keepalive_timeout=px.duration("upstream_keepalive_timeout", 15.0, at_most=3600.0),
    )

    se = root.section("session")
    cookie_secure = se.boolean("cookie_secure", True)
    cookie_domain = se.optional_string("cookie_domain")
    cookie_name = se.string(
        "cookie_name",
        default_cookie_name(secure=cookie_secure, domain=cookie_domain),
        pattern=r"[A-Za-z0-9_\-]+",
    )
    prefix_problem = cookie_prefix_problem(cookie_name, cookie_secure, cookie_domain)
    if prefix_problem is not None:
        se.error("cookie_name", prefix_problem)
    session = SessionConfig(
        cookie_name=cookie_name,
        cookie_secure=cookie_secure,
        cookie_domain=cookie_domain,
        cache_ttl=se.duration("cache_ttl", 2.0, at_most=60.0),
        cache_size=se.integer("cache_size", 10_000, low=0, high=10_000_000),
    )

    fa = root.section("forward_auth")
    envoy_prefix = fa.optional_string("envoy_path_prefix")
    if envoy_prefix is not None and not (
        re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", envoy_prefix)
        and envoy_prefix.startswith(prefix + "/")
        and envoy_prefix not in {prefix + p for p in PREFIX_ROUTES}
    ):
        # Under the prefix: the route must never shadow an application path.
        fa.error(
            "envoy_path_prefix",
            f"got {envoy_prefix!r}, expected a path under proxy.prefix such as {prefix}/envoy"
            " (not one of the sidecar's own routes)",
        )
        envoy_prefix = None
    forward_auth = ForwardAuthConfig(envoy_path_prefix=envoy_prefix)

    store = read_store(r)

    roles = _roles(root, max_expiry)
    default_role = root.string("default_role", next(iter(roles), ""))
    if roles and default_role not in roles:
        r.error("default_role", f"got {default_role!r}, expected one of {sorted(roles)}")

    lk = root.section("links")
    site = (public_url or "").rstrip("/")
    links_role = lk.string("role", default_role)
    if roles and links_role not in roles and links_role != default_role:  # reported once
        r.error("links.role", f"got {links_role!r}, expected one of {sorted(roles)}")
    links = LinksConfig(
        role=links_role,
        default_redirect=lk.url("default_redirect", required=False) or f"{site}/",
        redirect_allow=lk.strings("redirect_allow", (f"{site}/**",) if public_url else ()),
        expiry=lk.duration("expiry", DEFAULT_EXPIRY, at_most=max_expiry),
        otp_length=lk.integer("otp_length", 6, low=6, high=10),
        max_otp_attempts=lk.integer("max_otp_attempts", 5, low=1, high=100),
        otp_rate=lk.rate("otp_rate", "5/15m"),
        create_user_on_magiclink=lk.boolean("create_user_on_magiclink", False),
    )
    for i, pattern in enumerate(links.redirect_allow):
        try:
            compile_pattern(pattern)
        except RedirectPatternError as exc:
            lk.error(f"redirect_allow[{i}]", str(exc))

    metrics = root.section("metrics")
    metrics_listen = metrics.optional_hostport("listen")
    log_level = root.choice("logging.level", ("debug", "info", "warning", "error"), "info")
    access_log = root.boolean("logging.access", True)
    access_buffer = root.size(
        "logging.buffer", DEFAULT_BUFFER, zero_ok=True, at_most=MAX_LOG_BUFFER
    )
    access_flush = root.duration("logging.flush", DEFAULT_FLUSH, at_most=MAX_LOG_FLUSH)
    log_backlog = root.size(
        "logging.backlog", DEFAULT_BACKLOG, zero_ok=True, at_most=MAX_LOG_BACKLOG
    )
    grace = root.duration("shutdown.grace_period", 30.0, at_most=3600.0)
    pages: dict[str, str] = {}
    pages_dir = root.optional_string("pages.dir")
    if pages_dir is not None:
        pages, problems = load_page_templates(r.base_dir / pages_dir)
        for problem in problems:
            r.error("pages.dir", problem)
    watch_interval = root.duration("reload.watch_interval", 10.0, at_most=3600.0)
    r.finish()
    if not roles and not any(e.startswith("roles") for e in r.errors):
        r.error("roles", "at least one role is required")
    if r.errors or keyset is None or public_url is None or admin is None:
        return None
    return Config(
        public_url=public_url.rstrip("/"),
        keyset=keyset,
        admin=admin,
        proxy=proxy,
        session=session,
        store=store,
        forward_auth=forward_auth,
        default_expiry=default_expiry,
        max_expiry=max_expiry,
        default_role=default_role,
        roles=roles,
        links=links,
        metrics_listen=metrics_listen,
        log_level=log_level,
        access_log=access_log,
        access_buffer=access_buffer,
        access_flush=access_flush,
        log_backlog=log_backlog,
        grace_period=grace,
        pages=MappingProxyType(pages),
        watch_interval=watch_interval,
    )


def _checked(node: Reader.Node, key: str, parse: Callable[[str], str]) -> tuple[str, ...]:
    """A list of strings, each normalised by ``parse`` (a ValueError names the item)."""
    out: list[str] = []
    for i, item in enumerate(node.strings(key, ())):
        try:
            out.append(parse(item))
        except ValueError as exc:
            node.error(f"{key}[{i}]", str(exc))
    return tuple(out)


def _roles(root: Reader.Node, max_expiry: float) -> dict[str, RoleConfig]:
    roles: dict[str, RoleConfig] = {}
    for name, node in root.mapping_of("roles"):
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            node.fail(f"role names are 1-64 of A-Z a-z 0-9 _ . -, got {name!r}")
            continue
        lifetime = node.duration("session_lifetime", 8 * 3600.0, at_most=MAX_EXPIRY)
        headers: list[HeaderTemplate] = []
        for header, template in node.string_map("headers", DEFAULT_HEADERS).items():
            try:
                headers.append(compile_header(header, template))
            except TemplateError as exc:
                node.error(f"headers.{header}", str(exc))
        roles[name] = RoleConfig(
            name=name,
            max_expiry=node.duration("max_expiry", max_expiry, at_most=max_expiry),
            one_time=node.boolean("one_time", True),
            redeem=node.choice("redeem", ("direct", "confirm"), "direct"),  # type: ignore[arg-type]
            session_lifetime=lifetime,
            idle_timeout=node.duration("idle_timeout", min(lifetime, 3600.0), at_most=lifetime),
            params=frozenset(node.strings("params", ())),
            modules=node.name_globs("modules", ("*",), name=MODULE_NAME),
            allow=node.path_globs("allow", ("/**",)),
            deny=node.path_globs("deny", ()),
            headers=tuple(headers),
        )
    return roles


__all__ = [
    "DEFAULT_HEADERS",
    "ConfigError",
    "LoadedConfig",
    "load_config",
    "parse_config",
    "read_config",
]
