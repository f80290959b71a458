"""The per-request series, kept as plain numbers and turned into samples when scraped.

prometheus-client's ``Counter.inc`` and ``Histogram.observe`` take a lock, check the metric
and walk the buckets on every call: on the proxy's hot path that was sixteen calls per
request, about a fourteenth of its Python work. :class:`Tally` keeps the same series —
``sidecar_requests_total``, ``sidecar_request_duration_seconds`` and
``sidecar_upstream_seconds`` — as integers and floats that one ``bisect`` and two additions
update, and is a registry collector: a scrape reads them as the families prometheus-client
would have written (same names, help, labels and bucket bounds; no ``_created``).
:class:`StoreTally` does the same for ``sidecar_store_seconds`` (every store call: a mint,
a redemption's burn; the histogram's ``observe`` was 3 % of a mint's instructions), and
:class:`Counts` for ``sidecar_redemptions_total`` and ``sidecar_mints_total``.

They are written by the event loop's thread only (every request is answered there, every
store call awaited there). Under
``sidecar serve --workers N`` figures must reach the shared files at once; then
:mod:`sidecar.telemetry.metrics` uses prometheus-client's own multiprocess series instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

# (name, help) of each family, for these and for prometheus-client's multiprocess twins.
REQUESTS = ("sidecar_requests", "HTTP requests answered, by listener and status code.")
REQUEST_SECONDS = (
    "sidecar_request_duration_seconds",
    "Time from request start to the end of the response body, by route kind: proxied, "
    "redeem, verify, page (the sidecar's own pages and endpoints), admin.",
)
UPSTREAM_SECONDS = (
    "sidecar_upstream_seconds",
    "Time from sending a request upstream to receiving its response headers.",
)
STORE_SECONDS = ("sidecar_store_seconds", "Latency of store operations, by Store method.")
REDEMPTIONS = (
    "sidecar_redemptions",
    "Link redemptions, by outcome: success, or the failure reason (used, expired, tampered, ...).",
)
MINTS = (
    "sidecar_mints",
    "Links minted, by kind: refer, or the auth link type (magiclink, signup, ...).",
)


class Durations:
    """One histogram series: counts per bucket (the last one ``+Inf``) and their sum."""

    __slots__ = ("_bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        # As floats (a bound may be given as an int): compiled, compared as C doubles.
        self._bounds: tuple[float, ...] = tuple([float(b) for b in bounds])
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        # The first bound >= seconds (Prometheus's buckets are "less than or equal"):
        # bisect_left's answer, found by a scan from the smallest bound. Compiled, that is
        # a few double comparisons for a request's durations, which sit in the first
        # buckets; bisect_left was a generic call comparing Python floats (half of this
        # method's cost and a hundredth of a proxied request's).
        bounds = self._bounds
        count = len(bounds)
        i = 0
        while i < count and bounds[i] < seconds:
            i += 1
        self.counts[i] += 1
        self.total += seconds

    def cumulative(self, les: Sequence[str]) -> list[tuple[str, float]]:
        """The buckets as exposed: ``(le, count of observations <= le)``, for the bounds
        spelled ``les`` (with ``+Inf``)."""
        out: list[tuple[str, float]] = []
        running = 0
        for le, count in zip(les, self.counts, strict=True):
            running += count
            out.append((le, running))
        return out


class Tally:
    """The requests counter and the two latency histograms (see the module docstring)."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self._buckets = tuple(sorted(buckets))
        # Each bound as prometheus-client writes it ("1.0", "0.0025", "+Inf").
        self._les = [floatToGoString(b) for b in (*self._buckets, float("inf"))]  # type: ignore[no-untyped-call]
        self.requests: dict[tuple[str, int], int] = {}  # (listener, status) -> answered
        self._durations: dict[str, Durations] = {}  # route -> its series
        self.upstream = Durations(self._buckets)

    def request(self, status: int, seconds: float, listener: str, route: str) -> None:
        """One answered request of ``listener``, of kind ``route``."""
        key = (listener, status)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        series = self._durations.get(route)
        if series is None:
            series = self._durations[route] = Durations(self._buckets)
        series.observe(seconds)

    def collect(self) -> Iterator[Metric]:
        """The registry's collector protocol: the requests and their durations, as of now
        (the upstream's histogram is :attr:`upstream_collector`'s)."""
        answered = CounterMetricFamily(*REQUESTS, labels=("listener", "status"))
        for (listener, status), count in self.requests.items():  # first seen, first
            answered.add_metric((listener, str(status)), count)
        yield answered
        durations = HistogramMetricFamily(*REQUEST_SECONDS, labels=("route",))
        for route, series in self._durations.items():
            durations.add_metric((route,), series.cumulative(self._les), series.total)
        yield durations

    @property
    def upstream_collector(self) -> UpstreamCollector:
        """``sidecar_upstream_seconds`` as a collector of its own, registered where
        prometheus-client's histogram stood: /metrics keeps its families' order."""
        return UpstreamCollector(self.upstream, self._les)


class UpstreamCollector:
    """A registry collector for one unlabelled :class:`Durations`: the upstream's."""

    __slots__ = ("_les", "_series")

    def __init__(self, series: Durations, les: Sequence[str]) -> None:
        self._series = series
        self._les = les

    def collect(self) -> Iterator[Metric]:
        upstream = HistogramMetricFamily(*UPSTREAM_SECONDS)
        upstream.add_metric((), self._series.cumulative(self._les), self._series.total)
        yield upstream


class StoreTally:
    """``sidecar_store_seconds``: one :class:`Durations` per store method, and a registry
    collector of its own (the family keeps its place among /metrics' families)."""

    __slots__ = ("_buckets", "_les", "_series")

    def __init__(self, buckets: Sequence[float]) -> None:
        self._buckets = tuple(sorted(buckets))
        self._les = [floatToGoString(b) for b in (*self._buckets, float("inf"))]  # type: ignore[no-untyped-call]
        self._series: dict[str, Durations] = {}  # op -> its series, first seen first

    def observe(self, op: str, seconds: float) -> None:
        series = self._series.get(op)
        if series is None:
            series = self._series[op] = Durations(self._buckets)
        series.observe(seconds)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(*STORE_SECONDS, labels=("op",))
        for op, series in self._series.items():
            family.add_metric((op,), series.cumulative(self._les), series.total)
        yield family


class Counts:
    """A counter family with one label, as plain integers, and its registry collector."""

    __slots__ = ("_help", "_label", "_name", "counts")

    def __init__(self, name: str, help_text: str, label: str) -> None:
        self._name = name
        self._help = help_text
        self._label = label
        self.counts: dict[str, int] = {}  # label value -> count, first seen first

    def inc(self, value: str) -> None:
        counts = self.counts
        counts[value] = counts.get(value, 0) + 1

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._help, labels=(self._label,))
        for value, count in self.counts.items():
            family.add_metric((value,), count)
        yield family
