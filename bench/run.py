"""One benchmark run: start every part, run every scenario, stop everything.

Core layouts (two cores, ``c0`` and ``c1``; on one core everything shares it):

- A: sidecar (or nginx) and the upstream on ``c0``, the load generator on ``c1``;
- C: sidecar (or nginx) alone on ``c0``, the upstream and the load generator on ``c1``.

Redemptions, mints and latency run with the sidecar on ``c0`` and the load (and Redis) on
``c1``. The orchestrating process itself stays on ``c1``.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.loadgen import LoadSpec
from bench.machine import describe
from bench.prefill import prefill_burned
from bench.procs import Child, children, cores_available, pin
from bench.profile import Profile, profile_proxied
from bench.scenarios import (
    PROXIED_PATH,
    Measure,
    Memory,
    ProxyTarget,
    memory,
    mints,
    proxied,
    redemption_latency,
    redemptions,
)
from bench.sched import claimed_cores
from bench.servers import start_nginx, start_redis, start_upstream
from bench.target import COOKIE, Sidecar, session_cookie, sqlite_url, start_sidecar

NO_ACCESS_LOG = "sidecar, logging.access false"
NGINX_LOGGED = "nginx, access_log on"
LAYOUTS = {
    "A": "sidecar/nginx + upstream on core 0, load generator on core 1",
    "C": "sidecar/nginx alone on core 0, upstream + load generator on core 1",
    "W": "nothing pinned: the proxy's workers, the upstream and the load generator share "
    "both cores (sidecar --workers 1 and 2; nginx with its 1 worker)",
}


@dataclass(frozen=True)
class Settings:
    trials: int = 3
    duration: int = 3  # seconds per proxied / mint trial
    redeem_tokens: int = 4000  # one-time links per redemption trial
    redeem_duration: int = 3  # upper bound; the rate is taken until the links run out
    latency_tokens: int = 600
    burned: int = 1_000_000
    connections: int = 1000  # for the RSS measure
    profile: bool = True
    warmup: bool = True  # a 1 s unmeasured run before each proxied / mint series
    claim_cores: bool = True  # the bench's session first in line for the cores (bench.sched)

    @classmethod
    def smoke(cls) -> Settings:
        """About a second per scenario: keeps the harness from rotting, measures nothing."""
        return cls(
            trials=1,
            duration=1,
            redeem_tokens=300,
            redeem_duration=1,
            latency_tokens=100,
            burned=20_000,
            connections=100,
            profile=False,
            warmup=False,
            claim_cores=False,
        )


@dataclass
class Results:
    meta: dict[str, str | int | None]
    settings: Settings
    note: str
    layouts: dict[str, str] = field(default_factory=lambda: dict(LAYOUTS))
    proxied: dict[str, dict[str, Measure]] = field(default_factory=dict)
    memory: Memory | None = None
    mints: Measure | None = None
    redemptions: dict[str, Measure] = field(default_factory=dict)
    latency: dict[str, Measure] = field(default_factory=dict)
    prefill_seconds: float | None = None
    profile: Profile | None = None
    elapsed_s: float = 0.0
    missing: list[str] = field(default_factory=list)


Log = Callable[[str], None]


def run(settings: Settings, note: str, log: Log) -> Results:
    if not settings.claim_cores:
        return _run(settings, note, log, "not claimed (--share-cores or --smoke)")
    with claimed_cores() as claim:
        log(f"cores: {claim}")
        return _run(settings, note, log, claim)


def _run(settings: Settings, note: str, log: Log, claim: str) -> Results:
    started = time.monotonic()
    # Described before this process pins itself, or "cores_usable" would count only c1.
    results = Results(meta={**describe(), "cores_claim": claim}, settings=settings, note=note)
    cores = cores_available()
    c0, c1 = cores[0], cores[1 % len(cores)]
    os.sched_setaffinity(0, {c1})
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, children() as kids:
        work = Path(tmp)
        log(f"workdir {work}; cores c0={c0} c1={c1}; load generator {results.meta['loadgen']}")
        upstream = start_upstream(work, [c0])
        kids.append(upstream.child)
        nginx = start_nginx(work, upstream.port, [c0])
        # The reference nginx logs nothing; a second one writes Debian's default access log
        # (one unbuffered `combined` line per request to a file), so the sidecar, which logs
        # as shipped, is also compared with an nginx that does the same work.
        logged = start_nginx(work, upstream.port, [c0], access_log=True)
        if nginx is None or logged is None:
            results.missing.append("nginx (not installed): no reference row")
        else:
            kids.extend([nginx.child, logged.child])

        def sidecar(name: str, store_url: str) -> Sidecar:
            sc = start_sidecar(
                work, name=name, upstream_port=upstream.port, store_url=store_url, cores=[c0]
            )
            kids.append(sc.child)
            return sc

        sc = sidecar("sidecar-sqlite", sqlite_url(work / "sidecar.db"))
        cookie = session_cookie(sc)
        # nginx runs with access_log off: the same sidecar without its access lines (on the
        # same store, so the cookie works) is the like-for-like row.
        quiet = start_sidecar(
            work,
            name="sidecar-no-access-log",
            upstream_port=upstream.port,
            store_url=sqlite_url(work / "sidecar.db"),
            cores=[c0],
            access_log=False,
        )
        kids.append(quiet.child)
        targets = [
            ProxyTarget("direct", upstream.port, upstream.pid),
            ProxyTarget("sidecar", sc.proxy_port, sc.pid),
            ProxyTarget(NO_ACCESS_LOG, quiet.proxy_port, quiet.pid),
        ]
        if nginx is not None and logged is not None:
            targets.append(ProxyTarget("nginx", nginx.port, nginx.pid))
            targets.append(ProxyTarget(NGINX_LOGGED, logged.port, logged.pid))
        log(f"memory: idle, then {settings.connections} connections")
        results.memory = memory(sc, targets[0], cookie, settings.connections)
        for layout, upstream_core in (("A", c0), ("C", c1)):
            pin([upstream.pid], [upstream_core])
            log(f"proxied, layout {layout}: {settings.trials} x {len(targets)} runs")
            results.proxied[layout] = proxied(
                targets,
                cookie,
                load_cores=[c1],
                trials=settings.trials,
                duration=settings.duration,
                warmup=settings.warmup,
            )
        _stop(quiet.child, kids)
        if logged is not None:
            _stop(logged.child, kids)
        if settings.profile:
            log("profile: py-spy on the sidecar, layout C")
            spec = LoadSpec(
                port=sc.proxy_port,
                path=PROXIED_PATH,
                ok_status=200,
                headers={"Cookie": f"{COOKIE}={cookie}"},
                duration=4,
            )
            results.profile = profile_proxied(sc.pid, spec, [c1], seconds=3)

        log(f"workers: 1 and 2, nothing pinned: {settings.trials} x 4 runs")
        sc2 = start_sidecar(
            work,
            name="sidecar-2-workers",
            upstream_port=upstream.port,
            store_url=sqlite_url(work / "sidecar.db"),  # the same store: the cookie works
            cores=None,
            workers=2,
        )
        kids.append(sc2.child)
        everywhere = [c0, c1] if c0 != c1 else [c0]
        pin([upstream.pid, sc.pid] + ([nginx.pid] if nginx else []), everywhere)
        results.proxied["W"] = proxied(
            [
                ProxyTarget("direct", upstream.port, upstream.pid),
                ProxyTarget("sidecar", sc.proxy_port, sc.pid),
                ProxyTarget("sidecar, 2 workers", sc2.proxy_port, sc2.pid),
                *([ProxyTarget("nginx", nginx.port, nginx.pid)] if nginx else []),
            ],
            cookie,
            load_cores=everywhere,
            trials=settings.trials,
            duration=settings.duration,
            warmup=settings.warmup,
        )
        _stop(sc2.child, kids)
        pin([sc.pid], [c0])

        log("mints through the admin port")
        results.mints = mints(
            sc,
            load_cores=[c1],
            trials=settings.trials,
            duration=settings.duration,
            warmup=settings.warmup,
        )
        log("redemptions on SQLite")
        results.redemptions["sqlite"] = _redeem(sc, settings, c1)
        _stop(sc.child, kids)

        redis = start_redis(work, [c1])
        if redis is None:
            results.missing.append("redis-server (not installed): no Redis redemptions")
        else:
            kids.append(redis.child)
            log("redemptions on Redis")
            sc = sidecar("sidecar-redis", redis.url)
            results.redemptions["redis"] = _redeem(sc, settings, c1)
            _stop(sc.child, kids)
            _stop(redis.child, kids)

        log(f"pre-filling {settings.burned:,} burned tokens")
        full_db = work / "burned-full.db"
        results.prefill_seconds = prefill_burned(full_db, settings.burned)
        log(f"redemption latency: empty store vs {settings.burned:,} burned tokens")
        stores = {
            "0": sidecar("sidecar-burned-0", sqlite_url(work / "burned-0.db")),
            str(settings.burned): sidecar("sidecar-burned-full", sqlite_url(full_db)),
        }
        results.latency = redemption_latency(
            stores,
            load_cores=[c1],
            trials=settings.trials,
            tokens=settings.latency_tokens,
            duration=settings.redeem_duration,
        )
    results.elapsed_s = time.monotonic() - started
    return results


def _redeem(sc: Sidecar, settings: Settings, load_core: int) -> Measure:
    return redemptions(
        sc,
        load_cores=[load_core],
        trials=settings.trials,
        tokens=settings.redeem_tokens,
        duration=settings.redeem_duration,
    )


def _stop(child: Child, kids: list[Child]) -> None:
    child.stop()
    kids.remove(child)
