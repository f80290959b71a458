"""The measurements: each runs the load generator against running parts and returns medians.

A :class:`Sample` is one bounded load run; a :class:`Measure` is the median of several.
Proxied throughput is measured pair by pair (direct, then via the sidecar and via nginx,
back to back) and each ratio is taken within its pair before the median.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from bench.loadgen import LoadSpec, run_load
from bench.procs import busy_between, core_ticks, cpu_seconds, rss_bytes
from bench.sched import runqueue_seconds
from bench.target import COOKIE, Sidecar, mint_body_json, mint_tokens

MIB = 1024 * 1024
PROXIED_PATH = "/api/items"


@dataclass(frozen=True)
class Sample:
    per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    socket_errors: int = 0
    cpu_us: float | None = None  # CPU per answered request of the measured process
    upstream_cpu_us: float | None = None  # the upstream's, in proxied runs
    ratio: float | None = None  # to direct-to-upstream, within the same pair
    # Each core's busy share during the run (whatever ran there: load, upstream, proxy),
    # so a throughput ratio can be read against the core that bounded it.
    cores_busy: tuple[float, ...] = ()
    # How long the measured process tree waited for a core during the run (ms; its
    # threads' summed runqueue wait): a p99 with hundreds of these measures the neighbours.
    waited_ms: float | None = None


@dataclass(frozen=True)
class Measure:
    """Medians over ``samples``."""

    per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us: float | None
    upstream_cpu_us: float | None
    ratio: float | None
    samples: list[Sample] = field(repr=False)
    cores_busy: tuple[float, ...] = ()
    waited_ms: float | None = None


def median_of(samples: Sequence[Sample]) -> Measure:
    def med(values: Sequence[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    return Measure(
        per_s=statistics.median(s.per_s for s in samples),
        p50_ms=statistics.median(s.p50_ms for s in samples),
        p99_ms=statistics.median(s.p99_ms for s in samples),
        cpu_us=med([s.cpu_us for s in samples]),
        upstream_cpu_us=med([s.upstream_cpu_us for s in samples]),
        ratio=med([s.ratio for s in samples]),
        waited_ms=med([s.waited_ms for s in samples]),
        samples=list(samples),
        cores_busy=tuple(
            statistics.median(busy) for busy in zip(*(s.cores_busy for s in samples), strict=True)
        )
        if all(s.cores_busy for s in samples)
        else (),
    )


def sample(
    spec: LoadSpec,
    load_cores: Sequence[int],
    pid: int | None = None,
    upstream_pid: int | None = None,
) -> Sample:
    """One load run; with ``pid`` (and ``upstream_pid``), also the CPU that process tree
    (and the upstream's) spent per answered request, and how long ``pid``'s tree waited for
    a core."""
    pids = [p for p in (pid, upstream_pid) if p is not None]
    before = [cpu_seconds(p) for p in pids]
    waited = runqueue_seconds(pid) if pid is not None else 0.0
    ticks = core_ticks()
    result = run_load(spec, load_cores)
    busy = busy_between(ticks, core_ticks())
    if pid is not None:
        waited = runqueue_seconds(pid) - waited
    per_request = [
        (cpu_seconds(p) - b) / result.ok * 1e6 if result.ok else None
        for p, b in zip(pids, before, strict=True)
    ]
    return Sample(
        per_s=result.ok_per_s,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        requests=result.ok,
        socket_errors=result.socket_errors,
        cpu_us=per_request[0] if pid is not None else None,
        upstream_cpu_us=per_request[-1] if upstream_pid is not None else None,
        cores_busy=tuple(busy),
        waited_ms=waited * 1e3 if pid is not None else None,
    )


@dataclass(frozen=True)
class ProxyTarget:
    name: str  # direct | sidecar | nginx
    port: int
    pid: int


def proxied(
    targets: Sequence[ProxyTarget],
    cookie: str,
    *,
    load_cores: Sequence[int],
    trials: int,
    duration: int,
    warmup: bool = True,
    connections: int = 64,
) -> dict[str, Measure]:
    """Authenticated GETs through each target; ``targets[0]`` must be the direct upstream."""
    headers = {"Cookie": f"{COOKIE}={cookie}"}

    def spec(port: int, seconds: int) -> LoadSpec:
        return LoadSpec(
            port=port,
            path=PROXIED_PATH,
            headers=headers,
            connections=connections,
            duration=seconds,
            ok_status=200,
        )

    for t in targets if warmup else ():  # connection pools, caches, first code paths
        run_load(spec(t.port, 1), load_cores)
    runs: dict[str, list[Sample]] = {t.name: [] for t in targets}
    for _ in range(trials):
        direct: Sample | None = None
        for t in targets:
            upstream_pid = targets[0].pid if t is not targets[0] else None
            s = sample(spec(t.port, duration), load_cores, t.pid, upstream_pid)
            if direct is None:
                direct = s
            elif direct.per_s > 0:
                s = replace(s, ratio=s.per_s / direct.per_s)
            runs[t.name].append(s)
    return {name: median_of(samples) for name, samples in runs.items()}


def redemptions(
    sc: Sidecar,
    *,
    load_cores: Sequence[int],
    trials: int,
    tokens: int,
    duration: int,
    connections: int = 64,
) -> Measure:
    """One-time links minted ahead, then redeemed concurrently; only 303s count."""
    samples = []
    for _ in range(trials):
        paths = [f"/?refer={t}" for t in mint_tokens(sc, tokens)]
        spec = LoadSpec(
            port=sc.proxy_port,
            paths=paths,
            connections=connections,
            duration=duration,
            ok_status=303,
            ok_header="Set-Cookie",
        )
        samples.append(sample(spec, load_cores, sc.pid))
    return median_of(samples)


def mints(
    sc: Sidecar,
    *,
    load_cores: Sequence[int],
    trials: int,
    duration: int,
    warmup: bool = True,
    connections: int = 64,
) -> Measure:
    """``POST /referstring`` through the admin port; only 200s count."""
    spec = LoadSpec(
        port=sc.admin_port,
        path="/referstring",
        method="POST",
        headers=sc.admin_headers,
        body=mint_body_json(),
        connections=connections,
        duration=duration,
        ok_status=200,
    )
    if warmup:
        run_load(replace(spec, duration=1), load_cores)
    return median_of([sample(spec, load_cores, sc.pid) for _ in range(trials)])


@dataclass(frozen=True)
class Memory:
    idle_mib: float
    connections: int
    connections_open: int
    after_mib: float
    peak_mib: float
    upstream_idle_mib: float  # the bare aiohttp upstream, for reference
    upstream_after_mib: float


async def _hold_connections(port: int, cookie: str, count: int, measure: Callable[[], None]) -> int:
    """Open ``count`` connections, send one authenticated GET on each at once, read the
    answers, and call ``measure`` while every connection is still open (idle keep-alive)."""
    request = (
        f"GET {PROXIED_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Cookie: {COOKIE}={cookie}\r\n\r\n"
    ).encode()

    async def one() -> asyncio.StreamWriter | None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return None
        return writer

    writers = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), 60)
    opened = [w for w in writers if w is not None]
    try:
        measure()
    finally:
        for w in opened:
            w.close()
        await asyncio.gather(*(w.wait_closed() for w in opened), return_exceptions=True)
    return len(opened)


def _rss_with_connections(pid: int, port: int, cookie: str, count: int) -> tuple[int, int, int]:
    """(RSS before, RSS with ``count`` connections open, how many opened) of ``pid``."""
    before = rss_bytes(pid)
    seen: list[int] = []
    opened = asyncio.run(
        _hold_connections(port, cookie, count, lambda: seen.append(rss_bytes(pid)))
    )
    return before, seen[0], opened


def memory(sc: Sidecar, upstream: ProxyTarget, cookie: str, connections: int) -> Memory:
    """RSS idle, then with ``connections`` concurrent connections open (and the peak); the
    same for the bare upstream, which shows what aiohttp itself spends per connection."""
    up_idle, up_after, _ = _rss_with_connections(upstream.pid, upstream.port, cookie, connections)
    idle, after, opened = _rss_with_connections(sc.pid, sc.proxy_port, cookie, connections)
    return Memory(
        idle_mib=idle / MIB,
        connections=connections,
        connections_open=opened,
        after_mib=after / MIB,
        peak_mib=rss_bytes(sc.pid, "VmHWM") / MIB,
        upstream_idle_mib=up_idle / MIB,
        upstream_after_mib=up_after / MIB,
    )


def redemption_latency(
    stores: Mapping[str, Sidecar],
    *,
    load_cores: Sequence[int],
    trials: int,
    tokens: int,
    duration: int,
) -> dict[str, Measure]:
    """Redemptions at light load (4 connections) against sidecars that differ only in their
    store; each trial measures them back to back, and ``ratio`` is each one's p50 over the
    first one's within the trial."""
    runs: dict[str, list[Sample]] = {name: [] for name in stores}
    for _ in range(trials):
        base: Sample | None = None
        for name, sc in stores.items():
            paths = [f"/?refer={t}" for t in mint_tokens(sc, tokens)]
            spec = LoadSpec(
                port=sc.proxy_port,
                paths=paths,
                connections=4,
                duration=duration,
                ok_status=303,
                ok_header="Set-Cookie",
            )
            s = sample(spec, load_cores, sc.pid)
            if base is None:
                base = s
            elif base.p50_ms > 0:
                s = replace(s, ratio=s.p50_ms / base.p50_ms)
            runs[name].append(s)
    return {name: median_of(samples) for name, samples in runs.items()}
