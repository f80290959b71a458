"""Prometheus metrics: a real ``sidecar serve`` with ``metrics.listen``, scraped over HTTP.

After a mint, a redemption, a replay, proxied requests and a store-backed readiness probe,
``/metrics`` on the separate listener shows each of them; the proxy port does not serve it.
"""

from __future__ import annotations

import math
import os
from bisect import bisect_left
from collections.abc import Mapping
from pathlib import Path

import aiohttp
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.parser import text_string_to_metric_families

from sidecar import __version__, compiled
from sidecar.telemetry import metrics, tally
from tests.harness import free_port, running_upstream
from tests.serve_process import running_serve

Labels = Mapping[str, str]


def sample(text: str, name: str, labels: Labels | None = None) -> float:
    """The value of sample ``name`` with (at least) ``labels``; 0 when absent."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                return float(s.value)
    return 0.0


async def test_metrics_listener_counts_what_happened(tmp_path: Path) -> None:
    port = free_port()
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    # Two failed redemptions per address per minute: the third is rate limited.
    env = {**os.environ, "SIDECAR_PROXY__FAILED_REDEEM_RATE": "2/1m"}
    async with (
        running_upstream() as upstream,
        running_serve(
            tmp_path, upstream.url, env=env, metrics={"listen": f"127.0.0.1:{port}"}
        ) as served,
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
    ):
        async with http.post(
            served.admin + "/referstring", json={"userId": "m1"}, headers=served.admin_headers()
        ) as response:
            url = (await response.json())["url"]
        async with http.get(url, allow_redirects=False) as response:
            assert response.status == 303
            cookie = f"sidecar_session={response.cookies['sidecar_session'].value}"
        async with http.get(url, allow_redirects=False) as response:
            assert response.status == 410
        for _ in range(3):
            async with http.get(served.proxy + "/page", headers={"Cookie": cookie}) as response:
                assert response.status == 200
        for status in (401, 429):  # malformed, then over the limit
            async with http.get(served.proxy + "/?refer=not-a-token") as response:
                assert response.status == status
        for body, headers in (({}, served.admin_headers()), ({"userId": "x"}, {})):
            async with http.post(
                served.admin + "/referstring", json=body, headers=headers
            ) as response:
                assert response.status in (400, 401)
        async with http.get(served.proxy + "/metrics") as response:
            assert response.status == 401, "the proxy port does not serve metrics"
        async with http.get(served.proxy + "/_sidecarish") as response:
            assert response.status == 401, "the app's path, not one of the sidecar's pages"

        async with http.get(metrics_url) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await response.text()
        async with http.get(
            metrics_url, headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        ) as response:
            assert response.headers["Content-Type"].startswith("application/openmetrics-text")
            assert (await response.text()).rstrip().endswith("# EOF")

    assert sample(text, "sidecar_mints_total", {"kind": "refer"}) == 1
    assert sample(text, "sidecar_redemptions_total", {"outcome": "success"}) == 1
    assert sample(text, "sidecar_redemptions_total", {"outcome": "used"}) == 1
    assert sample(text, "sidecar_redemptions_total", {"outcome": "malformed"}) == 1
    assert sample(text, "sidecar_redemptions_total", {"outcome": "rate_limited"}) == 1
    failures = "sidecar_mint_failures_total"
    assert sample(text, failures, {"api": "referstring", "reason": "invalid_request"}) == 1
    assert sample(text, failures, {"api": "referstring", "reason": "unauthorized"}) == 1
    assert sample(text, "sidecar_store_up") == 1
    proxy_200 = {"listener": "proxy", "status": "200"}
    assert sample(text, "sidecar_requests_total", proxy_200) >= 3  # + the readiness polls
    assert sample(text, "sidecar_requests_total", {"listener": "proxy", "status": "303"}) == 1
    assert sample(text, "sidecar_requests_total", {"listener": "admin", "status": "200"}) == 1
    assert sample(text, "sidecar_upstream_seconds_count") == 3
    assert sample(text, "sidecar_upstream_seconds_bucket", {"le": "+Inf"}) == 3
    assert sample(text, "sidecar_store_seconds_count", {"op": "burn"}) == 2
    assert sample(text, "sidecar_store_seconds_count", {"op": "ping"}) >= 1
    # The duration histogram by route kind: 3 proxied + the 401s for /metrics and
    # /_sidecarish on the proxy port, 4 redemptions, 3 mints, the readiness polls (pages).
    assert sample(text, "sidecar_request_duration_seconds_count", {"route": "proxied"}) == 5
    assert sample(text, "sidecar_request_duration_seconds_count", {"route": "redeem"}) == 4
    assert sample(text, "sidecar_request_duration_seconds_count", {"route": "admin"}) == 3
    assert sample(text, "sidecar_request_duration_seconds_count", {"route": "page"}) >= 1
    assert sample(text, "process_cpu_seconds_total") > 0

    assert "_created" not in text, "no _created twin series"
    build = {"version": __version__, "compiled": compiled.state().label}
    assert sample(text, "sidecar_build_info", build) == 1
    # The scrape itself is in flight, on a connection of its own (and the keep-alive
    # connections of this test's session are open too).
    assert sample(text, "sidecar_requests_in_flight") >= 1
    assert sample(text, "sidecar_client_connections") >= 1


def test_render_in_process() -> None:
    metrics.mint("magiclink")
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    assert sample(body.decode(), "sidecar_mints_total", {"kind": "magiclink"}) >= 1


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
def test_the_tally_is_exposed_exactly_as_prometheus_clients_own_series(openmetrics: bool) -> None:
    """The hot path's plain-number series (sidecar.telemetry.tally) read, when scraped, as
    prometheus-client's Counter and Histograms fed the same observations would: the same
    bytes, in both exposition formats. Values on and between bucket bounds, over the last
    one, of several listeners, statuses and routes."""
    buckets = (0.001, 0.0025, 0.005, 0.01, 1, 2.5, 60)
    observed = [
        (200, 0.0004, "proxy", "proxied"),
        (200, 0.001, "proxy", "proxied"),  # on a bound: "le" is less than or equal
        (200, 0.0011, "proxy", "proxied"),
        (404, 0.3, "proxy", "proxied"),
        (303, 0.0025, "proxy", "redeem"),
        (200, 61.0, "admin", "admin"),  # over the last bound: +Inf only
        (429, 1.0, "admin", "admin"),
    ]
    upstream = [0.0001, 0.005, 2.5, 99.0]

    own = tally.Tally(buckets)
    ours = CollectorRegistry()
    ours.register(own)
    ours.register(own.upstream_collector)
    theirs = CollectorRegistry()
    counter = Counter(*tally.REQUESTS, ("listener", "status"), registry=theirs)
    durations = Histogram(*tally.REQUEST_SECONDS, ("route",), buckets=buckets, registry=theirs)
    latency = Histogram(*tally.UPSTREAM_SECONDS, buckets=buckets, registry=theirs)
    for status, seconds, listener, route in observed:
        own.request(status, seconds, listener, route)
        counter.labels(listener, str(status)).inc()
        durations.labels(route).observe(seconds)
    for seconds in upstream:
        own.upstream.observe(seconds)
        latency.observe(seconds)

    write = openmetrics_latest if openmetrics else generate_latest
    assert write(ours) == write(theirs)


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
def test_the_store_tally_is_exposed_exactly_as_prometheus_clients_histogram(
    openmetrics: bool,
) -> None:
    """sidecar_store_seconds kept as plain numbers (every store call observes it) reads,
    when scraped, as prometheus-client's labelled Histogram fed the same observations."""
    buckets = (0.0001, 0.00025, 0.001, 0.5, 1)
    observed = [
        ("record_counted", 0.00005),
        ("burn", 0.0001),  # on a bound
        ("record_counted", 0.0003),
        ("get_session", 0.7),
        ("burn", 3.0),  # over the last bound: +Inf only
    ]
    own = tally.StoreTally(buckets)
    ours = CollectorRegistry()
    ours.register(own)
    theirs = CollectorRegistry()
    histogram = Histogram(*tally.STORE_SECONDS, ("op",), buckets=buckets, registry=theirs)
    write = openmetrics_latest if openmetrics else generate_latest
    assert write(ours) == write(theirs)  # no series yet: the family alone
    for op, seconds in observed:
        own.observe(op, seconds)
        histogram.labels(op).observe(seconds)
    assert write(ours) == write(theirs)


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
@pytest.mark.parametrize(
    ("family", "label", "values"),
    [
        (tally.MINTS, "kind", ("refer", "magiclink", "refer", "refer", "signup")),
        (tally.REDEMPTIONS, "outcome", ("success", "used", "success", "expired", "success")),
    ],
    ids=["mints", "redemptions"],
)
def test_the_counts_are_exposed_exactly_as_prometheus_clients_counter(
    openmetrics: bool, family: tuple[str, str], label: str, values: tuple[str, ...]
) -> None:
    """sidecar_mints_total and sidecar_redemptions_total kept as plain numbers (every mint
    and redemption counts one) read, when scraped, as prometheus-client's labelled Counter
    fed the same events."""
    own = tally.Counts(*family, label)
    ours = CollectorRegistry()
    ours.register(own)
    theirs = CollectorRegistry()
    counter = Counter(*family, (label,), registry=theirs)
    write = openmetrics_latest if openmetrics else generate_latest
    assert write(ours) == write(theirs)  # no series yet: the family alone
    for value in values:
        own.inc(value)
        counter.labels(value).inc()
    assert write(ours) == write(theirs)


def test_the_served_registry_reads_the_tally() -> None:
    """In one process, /metrics reads the tally the hot path writes (not an idle twin)."""
    assert metrics.TALLY is not None
    before = sample(metrics.render()[0].decode(), "sidecar_upstream_seconds_count")
    metrics.observe_upstream(0.002)
    metrics.observe_request(200, 0.002, "proxy", "proxied")
    stored = sample(metrics.render()[0].decode(), "sidecar_store_seconds_count", {"op": "hit"})
    metrics.observe_store("hit", 0.0002)
    minted = sample(metrics.render()[0].decode(), "sidecar_mints_total", {"kind": "recovery"})
    metrics.mint("recovery")
    used = sample(metrics.render()[0].decode(), "sidecar_redemptions_total", {"outcome": "used"})
    metrics.redemption("used")
    text = metrics.render()[0].decode()
    assert sample(text, "sidecar_mints_total", {"kind": "recovery"}) == minted + 1
    assert sample(text, "sidecar_redemptions_total", {"outcome": "used"}) == used + 1
    assert sample(text, "sidecar_upstream_seconds_count") == before + 1
    assert sample(text, "sidecar_store_seconds_count", {"op": "hit"}) == stored + 1
    assert sample(text, "sidecar_request_duration_seconds_count", {"route": "proxied"}) >= 1


def test_the_served_families_keep_their_order() -> None:
    """/metrics lists the families in the order it always did (the module docstring's
    table): the tally's series stand where prometheus-client's registered ones stood,
    ``sidecar_upstream_seconds`` after ``sidecar_store_up``."""
    names = [f.name for f in metrics.REGISTRY.collect() if f.name.startswith("sidecar_")]
    assert names == [
        "sidecar_requests",
        "sidecar_request_duration_seconds",
        "sidecar_redemptions",
        "sidecar_mints",
        "sidecar_mint_failures",
        "sidecar_store_up",
        "sidecar_upstream_seconds",
        "sidecar_store_seconds",
        "sidecar_requests_in_flight",
        "sidecar_client_connections",
        "sidecar_lean_handovers",
        "sidecar_log_lines_dropped",
        "sidecar_build_info",
    ]


_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 1, 2.5, 60)  # ints among them, as a config may give


@given(st.floats(allow_nan=True, allow_infinity=True))
@example(0.0)
@example(-1.0)
@example(math.nan)
@example(math.inf)
def test_a_duration_lands_in_the_bucket_bisect_left_gives(seconds: float) -> None:
    """Durations.observe scans the bounds instead of calling bisect_left: the same bucket
    for every value (on a bound, between two, past the last, negative, NaN)."""
    for value in (seconds, *_BOUNDS):
        series = tally.Durations(_BOUNDS)
        series.observe(value)
        expected = [0] * (len(_BOUNDS) + 1)
        expected[bisect_left(_BOUNDS, value)] = 1
        assert series.counts == expected
