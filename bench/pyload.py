"""The built-in load generator, used when ``wrk`` is not installed.

``python -m bench.pyload SPEC.json`` runs one task per connection on a single aiohttp
``ClientSession`` (keep-alive, no redirects followed) until the spec's duration ends or its
one-time paths run out, then prints the same JSON summary line as the wrk script. It is
slower than wrk, so it caps the throughput it can measure: the doc says which tool ran.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp

from bench.loadgen import MARK, LoadSpec


async def _worker(
    session: aiohttp.ClientSession,
    spec: LoadSpec,
    paths: Iterator[str] | None,
    deadline: float,
    out: dict[str, float],
    latencies: list[float],
) -> None:
    base = f"http://127.0.0.1:{spec.port}"
    data = spec.body.encode() if spec.body is not None else None
    while time.monotonic() < deadline:
        if paths is None:
            path = spec.path
        else:
            path = next(paths, "")
            if not path:
                out["exhausted"] = 1
                return
        start = time.monotonic()
        try:
            async with session.request(
                spec.method, base + path, headers=spec.headers, data=data, allow_redirects=False
            ) as resp:
                await resp.read()
                status = resp.status
                has_header = spec.ok_header is None or spec.ok_header in resp.headers
        except (aiohttp.ClientError, TimeoutError):
            out["socket_errors"] += 1
            continue
        end = time.monotonic()
        latencies.append(end - start)
        out["requests"] += 1
        good = (status == spec.ok_status if spec.ok_status else status < 400) and has_header
        if good:
            out["ok"] += 1
            out["last"] = max(out["last"], end)


async def run(spec: LoadSpec) -> dict[str, object]:
    out = {"requests": 0.0, "ok": 0.0, "last": 0.0, "exhausted": 0.0, "socket_errors": 0.0}
    latencies: list[float] = []
    paths = iter(spec.paths) if spec.paths else None
    conns = min(spec.connections, len(spec.paths) or spec.connections)
    connector = aiohttp.TCPConnector(limit=conns, force_close=False)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.monotonic()
        deadline = start + spec.duration
        await asyncio.gather(
            *(_worker(session, spec, paths, deadline, out, latencies) for _ in range(conns))
        )
        seconds = time.monotonic() - start
    if out["exhausted"] and out["last"] > start:
        seconds = out["last"] - start
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "requests": int(out["requests"]),
        "ok": int(out["ok"]),
        "seconds": seconds,
        "p50_ms": cuts[49] * 1000,
        "p99_ms": cuts[98] * 1000,
        "exhausted": bool(out["exhausted"]),
        "socket_errors": int(out["socket_errors"]),
    }


def main(argv: list[str]) -> None:
    spec = LoadSpec.from_json(json.loads(Path(argv[0]).read_text()))
    print(MARK + json.dumps(asyncio.run(run(spec))), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
