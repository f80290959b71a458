"""Wiring: open the store, start the admin and proxy listeners, shut down gracefully.

On SIGTERM or SIGINT every listener stops accepting at once, requests in flight get up to
``shutdown.grace_period`` to finish, then the store is closed and the process exits 0.
Requests still running after the grace period are cancelled: the whole shutdown takes at most
``grace_period + SHUTDOWN_OVERRUN`` seconds (the figure the manifests' termination grace
periods are sized against).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypedDict

from sidecar import compiled
from sidecar.admin.api import build_admin_app
from sidecar.config import Config, ConfigError, LoadedConfig, read_config
from sidecar.reload import Reloader
from sidecar.services import Services
from sidecar.sessions import SESSIONS
from sidecar.store import StoreUnavailable, durability_warnings, open_store
from sidecar.store.persistence import PersistenceWatch
from sidecar.store.timed import timed
from sidecar.telemetry import metrics
from sidecar.tokens.codec import TokenCodec
from sidecar.web.drain import Drain
from sidecar.web.listener import ConnectionLimits, ListenerRunner, raise_fd_limit
from sidecar.web.logsetup import configure_logging, flush_logs, set_buffering, set_levels
from sidecar.web.loop import run_loop
from sidecar.web.metrics import metrics_app
from sidecar.web.sites import listener_site

_LOG = logging.getLogger("sidecar.app")

# After the drain, aiohttp's runner waits twice (for handlers to finish, then for the
# cancelled ones to unwind) per connection, concurrently. Requests have had their grace
# period by then, so each wait is short; the store's close gets what is left.
_CANCEL_WAIT = 0.25
_STORE_CLOSE_WAIT = 0.5
SHUTDOWN_OVERRUN = 2 * _CANCEL_WAIT + _STORE_CLOSE_WAIT


# Header lines in one request head (aiohttp's default; more is a 431).
MAX_HEADERS = 128


class ListenerOptions(TypedDict):
    access_log: logging.Logger | None
    max_line_size: int
    max_field_size: int
    max_headers: int
    keepalive_timeout: float
    auto_decompress: bool


class ServeError(Exception):
    """The sidecar cannot start (unsafe bind, address in use, store unreachable)."""


def build_services(config: Config) -> Services:
    """Services with a store that is built but not yet opened (:func:`serve` opens it).

    Raises :class:`ServeError` for a store URL that names no backend."""
    for warning in durability_warnings(config.store.url):
        _LOG.warning("%s", warning)
    st = config.store
    redis = None
    if st.is_redis:
        from sidecar.store.redis_client import RedisOptions  # no redis-py on SQLite setups

        redis = RedisOptions(
            password=st.password.reveal() if st.password is not None else None,
            tls_ca_file=st.tls_ca_file,
            tls_cert_file=st.tls_cert_file,
            tls_key_file=st.tls_key_file,
            min_replicas_ack=st.redis_min_replicas_ack,
        )
    try:
        store = open_store(
            st.url, prefix=st.key_prefix, purge_interval=st.purge_interval, redis=redis
        )
    except ValueError as exc:
        raise ServeError(str(exc)) from None
    return Services(config=config, store=timed(store), codec=TokenCodec(config.keyset))


async def serve(
    services: Services,
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    reloader: Reloader | None = None,
    reuse_port: bool = False,
) -> None:
    """Open the store, serve until SIGTERM/SIGINT (or ``stop`` is set), then shut down.

    ``ready`` is set once every listener accepts connections. With a ``reloader``, SIGHUP
    and changed secret files reload the config (:mod:`sidecar.reload`); without one,
    SIGHUP is logged and ignored. ``reuse_port``: every listener binds with ``SO_REUSEPORT``
    (the workers of :mod:`sidecar.workers` share the ports). Raises :class:`ServeError`
    when a listener cannot start; the store is closed on every path."""
    # the proxy side imports the whole gateway
    from sidecar.proxy.gateway import PERSISTENCE, build_proxy_app

    build = compiled.state()
    if build.label == "partial":  # a stale or broken build: say which modules fell back
        _LOG.warning("hot path: %s", build.describe())
    else:
        _LOG.info("hot path: %s", build.describe())
    cfg = services.config
    if stop is None:
        stop = asyncio.Event()
    try:
        await services.store.open()
    except StoreUnavailable as exc:
        raise ServeError(f"cannot open the store: {exc}") from None
    # Client connections, upstream connections and some to spare (store, logs, admin).
    needed = cfg.proxy.max_client_connections + cfg.proxy.max_connections + 64
    if (fds := raise_fd_limit(needed)) < needed:
        _LOG.warning(
            "open-file limit %d is below the %d that proxy.max_client_connections and "
            "proxy.max_connections need: lower them, or raise the limit (ulimit -n)",
            fds,
            needed,
        )
    runners: list[ListenerRunner] = []
    watcher: asyncio.Task[None] | None = None
    drain = Drain()
    loop = asyncio.get_running_loop()
    try:
        proxy_app = build_proxy_app(services)
        admin_app = build_admin_app(services)
        if SESSIONS in proxy_app:
            # DELETE /sessions then drops the proxy's session cache in this process at once.
            admin_app[SESSIONS] = proxy_app[SESSIONS]
        await _check_persistence(proxy_app[PERSISTENCE], cfg.store.require_persistence)
        listeners = [("admin", admin_app, cfg.admin.listen), ("proxy", proxy_app, cfg.proxy.listen)]
        if cfg.metrics_listen is not None:
            listeners.append(("metrics", metrics_app(), cfg.metrics_listen))
        for name, app, listen in listeners:
            drain.attach(app)
            # access_log=None: aiohttp's own access line would carry the query string (tokens);
            # the apps log their own JSON lines (sidecar.web.accesslog) without it.
            limits = ConnectionLimits(
                head_timeout=cfg.proxy.request_head_timeout,
                max_connections=cfg.proxy.max_client_connections if name == "proxy" else None,
                max_head_size=cfg.proxy.max_header_size,
            )
            runner = ListenerRunner(
                app,
                limits=limits,
                **listener_options(cfg),
                # A client that leaves cancels its handler, so an idle stream (SSE,
                # long poll) gives its upstream connection back at once. (aiohttp's test
                # server sets the same, so the suite runs as production does.)
                handler_cancellation=True,
                shutdown_timeout=_CANCEL_WAIT,  # after the drain below
            )
            await runner.setup()
            runners.append(runner)
            try:
                site = listener_site(runner, listen.host, listen.port, reuse_port=reuse_port)
                await site.start()
            except OSError as exc:
                raise ServeError(f"cannot listen on {listen} ({name}): {exc.strerror}") from None
            for address in runner.addresses:
                _LOG.info("listening: %s on %s", name, _show_address(address))
        metrics.track(
            in_flight=lambda: drain.in_flight,
            connections=lambda: sum(r.open_connections for r in runners),
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, _on_sighup, reloader)
        if reloader is not None:
            watcher = asyncio.create_task(reloader.watch(cfg.watch_interval))
        if ready is not None:
            ready.set()
        await stop.wait()
        _LOG.info(
            "shutting down: waiting up to %ss for requests in flight",
            services.config.grace_period,
        )
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if watcher is not None:
            watcher.cancel()
        await drain.stop_accepting_and_wait(runners, services.config.grace_period)
        await asyncio.gather(*(runner.cleanup() for runner in runners))
        try:
            async with asyncio.timeout(_STORE_CLOSE_WAIT):
                await services.store.close()
        except TimeoutError:
            _LOG.warning("the store did not close within %ss", _STORE_CLOSE_WAIT)
    _LOG.info("stopped")


async def _check_persistence(watch: PersistenceWatch, required: bool) -> None:
    """Ask once at start (the watch logs what it finds); with ``store.require_persistence``
    a store that says it does not persist — or will not say — refuses the start."""
    try:
        found = await watch.current()
    except StoreUnavailable:
        _LOG.warning("the store is not reachable yet; readyz will check its persistence")
        return
    if required and found.durable is not True:
        raise ServeError(f"store.require_persistence: {found.detail}")


def listener_options(cfg: Config) -> ListenerOptions:
    """Server options every listener (and every test server) runs with.

    ``access_log=None``: aiohttp's own access line would carry the query string (refer
    tokens); the apps log their own JSON lines (sidecar.web.accesslog) without it.
    The parser's per-line limits sit well above ``proxy.max_header_size`` so that the
    proxy's own check (:func:`sidecar.proxy.guards.header_limits`) sees oversized requests and
    answers 431/414 instead of the parser's bare 400; beyond the ceiling the parser refuses
    (431 for a header line, 414 for the request line: :mod:`sidecar.web.listener`), as it
    does past :data:`MAX_HEADERS` header lines.

    ``auto_decompress=False``: a request body arrives as sent, whatever its
    ``Content-Encoding``. aiohttp's server would inflate it, and the proxy would relay the
    inflated bytes under the client's ``Content-Length``: the upstream would read what lies
    past that length as another request, one that no rule judged.
    """
    ceiling = max(4 * cfg.proxy.max_header_size, 16384)
    return {
        "access_log": None,
        "max_line_size": ceiling,
        "max_field_size": ceiling + 1,  # apart, so that an error tells which line was long
        "max_headers": MAX_HEADERS,
        "keepalive_timeout": cfg.proxy.keepalive_timeout,
        "auto_decompress": False,
    }


def run(config_path: str | Path, workers: int = 1) -> int:
    """Load the config and serve until a signal; returns the process exit code. With
    ``workers`` above 1, that many processes serve on the same ports (:mod:`sidecar.workers`;
    the caller sets up :func:`~sidecar.workers.shared_metrics_dir` before importing this
    module, as ``sidecar serve`` does)."""
    if workers > 1:
        from sidecar.workers import Supervisor

        if not metrics.MULTIPROCESS:
            # Each worker would show only its own figures.
            raise RuntimeError("workers need PROMETHEUS_MULTIPROC_DIR set before start-up")
        shared = _load(config_path)
        if shared is None:
            return 1
        _configure_logging(shared.config)

        def worker(on_ready: Callable[[], None]) -> int:
            # A worker started again after a reload reads the file as it is now.
            try:
                loaded = read_config(config_path)
            except ConfigError as exc:
                _LOG.warning(
                    "%s is invalid now (%s); this worker starts with the config read at start-up",
                    config_path,
                    "; ".join(exc.errors),
                )
                loaded = shared
            return _serve_loaded(config_path, loaded, reuse_port=True, on_ready=on_ready)

        return Supervisor(workers, worker, shared.config.grace_period).run()
    loaded = _load(config_path)
    if loaded is None:
        return 1
    _configure_logging(loaded.config)
    return _serve_loaded(config_path, loaded)


def _configure_logging(config: Config) -> None:
    configure_logging(
        config.log_level,
        access=config.access_log,
        buffer=config.access_buffer,
        flush_after=config.access_flush,
        backlog=config.log_backlog,
    )


def _load(config_path: str | Path) -> LoadedConfig | None:
    try:
        return read_config(config_path)
    except ConfigError as exc:
        print(f"{config_path}: invalid configuration", file=sys.stderr)
        for error in exc.errors:
            print(f"  {error}", file=sys.stderr)
        return None


def _serve_loaded(
    config_path: str | Path,
    loaded: LoadedConfig,
    *,
    reuse_port: bool = False,
    on_ready: Callable[[], None] | None = None,
) -> int:
    try:
        services = build_services(loaded.config)
        reloader = Reloader(config_path, loaded, partial(_apply, services))
        run_loop(_serve_then(services, reloader, reuse_port, on_ready))
    except ServeError as exc:
        _LOG.error("%s", exc)
        return 1
    return 0


async def _serve_then(
    services: Services,
    reloader: Reloader,
    reuse_port: bool,
    on_ready: Callable[[], None] | None,
) -> None:
    ready = asyncio.Event()
    serving = asyncio.create_task(
        serve(services, ready=ready, reloader=reloader, reuse_port=reuse_port)
    )
    listening = asyncio.create_task(ready.wait())
    await asyncio.wait({serving, listening}, return_when=asyncio.FIRST_COMPLETED)
    if ready.is_set():
        # What start-up built lives as long as the process: out of the collector's sight,
        # so that each collection walks only what requests allocate (shorter pauses).
        gc.collect()
        gc.freeze()
        if on_ready is not None:
            on_ready()
    listening.cancel()
    await serving


def _apply(services: Services, config: Config) -> None:
    services.reconfigure(config)
    set_levels(config.log_level, access=config.access_log)
    set_buffering(config.access_buffer, config.access_flush, config.log_backlog)


def _on_sighup(reloader: Reloader | None) -> None:
    flush_logs()
    if reloader is None:
        _LOG.warning("SIGHUP ignored: this server was not started from a config file")
    else:
        reloader.reload("SIGHUP")


def _show_address(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"http://[{host}]:{address[1]}" if ":" in host else f"http://{host}:{address[1]}"
    return str(address)
