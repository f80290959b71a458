"""Prometheus metrics, served as text on an optional separate listener (``metrics.listen``).

The metrics live in one registry of their own (plus the process and GC collectors) rather
than prometheus-client's global one, so importing a library that registers metrics does
not leak them onto ``/metrics``. Call sites use the small functions below; every label
value comes from the code (status codes, outcome words, store method names), never from
the request, so the number of series is bounded.

========================================== ============ ===================================
metric                                     labels       observed by
========================================== ============ ===================================
``sidecar_requests_total``                 listener,    :func:`observe_request` (the access
                                           status       log middleware)
``sidecar_request_duration_seconds``       route        :func:`observe_request` (proxied,
                                                        redeem, verify, page, admin)
``sidecar_redemptions_total``              outcome      :func:`redemption` (``success`` or the
                                                        failure reason: ``used``, ``expired``…)
``sidecar_mints_total``                    kind         :func:`mint` (``refer``, ``magiclink``…)
``sidecar_mint_failures_total``            api, reason  :func:`mint_failure` (the admin app)
``sidecar_store_up``                                    :func:`store_up` (every timed store call)
``sidecar_upstream_seconds``                            :func:`observe_upstream` (time to the
                                                        upstream's response headers)
``sidecar_store_seconds``                  op           :func:`observe_store` (per Store method)
``sidecar_requests_in_flight``                          :func:`track` (the drain's count)
``sidecar_client_connections``                          :func:`track` (open client connections,
                                                        every listener)
``sidecar_lean_handovers_total``                        :func:`handover` (the proxy's lean
                                                        front: :mod:`sidecar.web.lean`)
``sidecar_log_lines_dropped_total``                     :func:`log_lines_dropped` (log lines a
                                                        stream too slow for ``logging.backlog``
                                                        lost: :mod:`~sidecar.telemetry.logthread`)
``sidecar_build_info``                     version,     always 1 (``compiled``: ``mypyc``,
                                           compiled     ``no`` or ``partial``: sidecar.compiled)
========================================== ============ ===================================

Counters have no ``_created`` twin series (prometheus-client's default doubles every
counter and histogram with a timestamp nobody graphs).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    multiprocess,
)
from prometheus_client.exposition import choose_encoder

from sidecar import __version__, compiled
from sidecar.telemetry import tally
from sidecar.telemetry.tally import Tally

disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus-client
# Under `sidecar serve --workers N` every worker writes its figures to files in this
# directory (prometheus-client's multiprocess mode) and a scrape of any worker reports them
# all; the process and GC collectors, which would describe the scraped worker alone, are
# left out then.
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
REGISTRY = CollectorRegistry()
if MULTIPROCESS:
    multiprocess.MultiProcessCollector(REGISTRY)  # type: ignore[no-untyped-call]
    _OWN: CollectorRegistry | None = None  # the metrics below are read from the files
else:
    ProcessCollector(registry=REGISTRY)
    PlatformCollector(registry=REGISTRY)
    GCCollector(registry=REGISTRY)
    _OWN = REGISTRY

LIVE_EVERY = 1.0  # seconds between a worker's writes of the live gauges
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1)

# The per-request series: plain numbers read when scraped (sidecar.telemetry.tally), or
# under workers prometheus-client's multiprocess series (never registered: read from files).
TALLY = None if MULTIPROCESS else Tally(_LATENCY_BUCKETS)
if TALLY is not None:
    REGISTRY.register(TALLY)
REQUESTS = Counter(*tally.REQUESTS, ("listener", "status"), registry=None)
REQUEST_SECONDS = Histogram(
    *tally.REQUEST_SECONDS, ("route",), buckets=_LATENCY_BUCKETS, registry=None
)
UPSTREAM_SECONDS = Histogram(*tally.UPSTREAM_SECONDS, buckets=_LATENCY_BUCKETS, registry=None)
# Redemptions and mints likewise (every one counts one): plain numbers in one process.
REDEMPTION_COUNTS = None if MULTIPROCESS else tally.Counts(*tally.REDEMPTIONS, "outcome")
if REDEMPTION_COUNTS is not None:
    REGISTRY.register(REDEMPTION_COUNTS)
REDEMPTIONS = Counter(*tally.REDEMPTIONS, ("outcome",), registry=None)
MINT_COUNTS = None if MULTIPROCESS else tally.Counts(*tally.MINTS, "kind")
if MINT_COUNTS is not None:
    REGISTRY.register(MINT_COUNTS)
MINTS = Counter(*tally.MINTS, ("kind",), registry=None)
MINT_FAILURES = Counter(
    "sidecar_mint_failures",
    "Mints refused, by API (referstring, generate_link) and reason (invalid_request, "
    "rate_limited, user_exists, store_unavailable, ...).",
    ("api", "reason"),
    registry=_OWN,
)
STORE_UP = Gauge(
    "sidecar_store_up",
    "1 while the store answered its last call, 0 after a call it did not answer.",
    registry=_OWN,
    multiprocess_mode="mostrecent",
)
if TALLY is not None:
    REGISTRY.register(TALLY.upstream_collector)  # where the histogram always stood
# Store latency likewise: plain numbers in one process, prometheus-client's under workers.
STORE_TALLY = None if MULTIPROCESS else tally.StoreTally(_STORE_BUCKETS)
if STORE_TALLY is not None:
    REGISTRY.register(STORE_TALLY)  # where the histogram always stood
STORE_SECONDS = Histogram(*tally.STORE_SECONDS, ("op",), buckets=_STORE_BUCKETS, registry=None)

IN_FLIGHT = Gauge(
    "sidecar_requests_in_flight",
    "Requests being handled now, every listener.",
    registry=_OWN,
    multiprocess_mode="livesum",
)
CONNECTIONS = Gauge(
    "sidecar_client_connections",
    "Client connections open now, every listener (idle keep-alive ones included).",
    registry=_OWN,
    multiprocess_mode="livesum",
)
HANDOVERS = Counter(
    "sidecar_lean_handovers_total",
    "Proxy connections the lean front handed to aiohttp's server, at a request it does not "
    "serve itself (sidecar.web.lean).",
    registry=_OWN,
)
LOG_LINES_DROPPED = Counter(
    "sidecar_log_lines_dropped_total",
    "Log lines dropped because the log stream did not take them in time (more than "
    "logging.backlog bytes waiting for it: sidecar.telemetry.logthread).",
    registry=_OWN,
)
BUILD_INFO = Gauge(
    "sidecar_build_info",
    "Always 1; the version and whether the hot path is compiled (mypyc, no, partial) are the "
    "labels.",
    ("version", "compiled"),
    registry=_OWN,
    multiprocess_mode="max",
)
BUILD_INFO.labels(__version__, compiled.state().label).set(1)


# (listener, status, route) -> its two series. ``labels()`` checks, formats and locks on
# every call; the hot path looks each series up once (3 listeners x 900 codes x 6 routes).
_REQUEST_SERIES: dict[tuple[str, int, str], tuple[Counter, Histogram]] = {}


def observe_request(status: int, seconds: float, listener: str, route: str) -> None:
    if TALLY is not None:
        TALLY.request(status, seconds, listener, route)
        return
    key = (listener, status, route)
    series = _REQUEST_SERIES.get(key)
    if series is None:
        series = (REQUESTS.labels(listener, str(status)), REQUEST_SECONDS.labels(route))
        _REQUEST_SERIES[key] = series
    series[0].inc()
    series[1].observe(seconds)


def handover() -> None:
    HANDOVERS.inc()


def log_lines_dropped(lines: int) -> None:
    LOG_LINES_DROPPED.inc(lines)


# The same for the other labelled series on the paths of every redemption, mint and store
# call: label values come from the code (see above), so these maps stay small.
_REDEMPTION_SERIES: dict[str, Counter] = {}
_MINT_SERIES: dict[str, Counter] = {}
_STORE_SERIES: dict[str, Histogram] = {}


def redemption(outcome: str) -> None:
    if REDEMPTION_COUNTS is not None:
        REDEMPTION_COUNTS.inc(outcome)
        return
    series = _REDEMPTION_SERIES.get(outcome)
    if series is None:
        series = _REDEMPTION_SERIES[outcome] = REDEMPTIONS.labels(outcome)
    series.inc()


def mint(kind: str) -> None:
    if MINT_COUNTS is not None:
        MINT_COUNTS.inc(kind)
        return
    series = _MINT_SERIES.get(kind)
    if series is None:
        series = _MINT_SERIES[kind] = MINTS.labels(kind)
    series.inc()


def mint_failure(api: str, reason: str) -> None:
    MINT_FAILURES.labels(api, reason).inc()


def store_up(up: bool) -> None:
    global _store_up
    if up is not _store_up:  # set on a change only: every store call reports
        _store_up = up
        STORE_UP.set(1 if up else 0)


_store_up: bool | None = None


def observe_upstream(seconds: float) -> None:
    if TALLY is not None:
        TALLY.upstream.observe(seconds)
    else:
        UPSTREAM_SECONDS.observe(seconds)


def observe_store(op: str, seconds: float) -> None:
    if STORE_TALLY is not None:
        STORE_TALLY.observe(op, seconds)
        return
    series = _STORE_SERIES.get(op)
    if series is None:
        series = _STORE_SERIES[op] = STORE_SECONDS.labels(op)
    series.observe(seconds)


def track(in_flight: Callable[[], float], connections: Callable[[], float]) -> None:
    """Read the two live gauges from the running server when scraped (nothing per request).

    Under workers a scrape cannot call into the other processes: each worker writes its
    own figures every :data:`LIVE_EVERY` seconds instead (call this inside the loop)."""
    if not MULTIPROCESS:
        IN_FLIGHT.set_function(in_flight)
        CONNECTIONS.set_function(connections)
        return
    loop = asyncio.get_running_loop()

    def write() -> None:
        IN_FLIGHT.set(in_flight())
        CONNECTIONS.set(connections())
        loop.call_later(LIVE_EVERY, write)

    write()


def render(accept: str = "") -> tuple[bytes, str]:
    """The registry as exposition text (OpenMetrics if ``accept`` asks for it) and its
    content type."""
    encoder, content_type = choose_encoder(accept)
    return encoder(REGISTRY), content_type
