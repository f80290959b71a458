"""One load generator for every target: ``wrk`` when installed, else the built-in fallback.

A :class:`LoadSpec` says what to send; :func:`run_load` runs it in its own process pinned to
the load cores and answers a :class:`LoadResult`. With ``paths`` given, each request consumes
the next path (one-time links) and the load stops when they run out; the rate is then taken
over the time until the last answer, not over the whole window.

``wrk`` is driven by a generated Lua script (headers, body, one-time paths, exact-status
counting, a JSON summary line). Without ``wrk`` (or with ``BENCH_LOADGEN=python``) the same
spec goes to :mod:`bench.pyload`, an aiohttp client with one task per connection.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.procs import PYTHON, BenchError, child_env, pinned, which

MARK = "BENCHJSON "


@dataclass(frozen=True)
class LoadSpec:
    """What the load generator sends, and for how long (whole seconds: wrk's unit)."""

    port: int
    path: str = "/"
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str | None = None
    connections: int = 64
    duration: int = 3
    ok_status: int | None = None  # None: every answer below 400 counts
    ok_header: str | None = None  # an answer counts only if it carries this header too
    paths: Sequence[str] = ()  # one-time paths, each sent once

    def to_json(self) -> dict[str, object]:
        doc = asdict(self)
        doc["headers"] = dict(self.headers)
        doc["paths"] = list(self.paths)
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, object]) -> LoadSpec:
        return cls(**doc)  # type: ignore[arg-type]  # our own file, written by to_json


@dataclass(frozen=True)
class LoadResult:
    requests: int
    ok: int
    seconds: float
    p50_ms: float
    p99_ms: float
    exhausted: bool
    socket_errors: int
    tool: str

    @property
    def ok_per_s(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0


def loadgen_name() -> str:
    if os.environ.get("BENCH_LOADGEN") == "python" or which("wrk") is None:
        return "python"
    return "wrk"


def run_load(spec: LoadSpec, cores: Sequence[int] | None) -> LoadResult:
    """Run ``spec`` in a child process pinned to ``cores``; bounded by ``spec.duration``."""
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        if loadgen_name() == "wrk":
            argv = _wrk_argv(spec, Path(tmp))
        else:
            spec_file = Path(tmp) / "spec.json"
            spec_file.write_text(json.dumps(spec.to_json()))
            argv = [PYTHON, "-m", "bench.pyload", str(spec_file)]
        proc = subprocess.run(
            pinned(argv, cores),
            capture_output=True,
            text=True,
            timeout=spec.duration + 60,
            check=False,
            env=child_env(),
        )
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            doc = json.loads(line[len(MARK) :])
            return LoadResult(
                requests=int(doc["requests"]),
                ok=int(doc["ok"]),
                seconds=float(doc["seconds"]),
                p50_ms=float(doc["p50_ms"]),
                p99_ms=float(doc["p99_ms"]),
                exhausted=bool(doc["exhausted"]),
                socket_errors=int(doc["socket_errors"]),
                tool=loadgen_name(),
            )
    raise BenchError(f"load generator failed ({proc.returncode}): {proc.stderr[-2000:]}")


def _lua_str(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal here


def _wrk_argv(spec: LoadSpec, tmp: Path) -> list[str]:
    lines = [f"wrk.method = {_lua_str(spec.method)}"]
    for name, value in spec.headers.items():
        lines.append(f"wrk.headers[{_lua_str(name)}] = {_lua_str(value)}")
    if spec.body is not None:
        lines.append(f"wrk.body = {_lua_str(spec.body)}")
    paths_file = ""
    if spec.paths:
        paths = tmp / "paths.txt"
        paths.write_text("\n".join(spec.paths) + "\n")
        paths_file = str(paths)
    ok_check = f"status == {spec.ok_status}" if spec.ok_status else "status < 400"
    if spec.ok_header:
        ok_check += f" and has_header(headers, {_lua_str(spec.ok_header.lower())})"
    lines.append(_LUA.replace("@PATHS@", _lua_str(paths_file)).replace("@OK@", ok_check))
    script = tmp / "load.lua"
    script.write_text("\n".join(lines))
    url = f"http://127.0.0.1:{spec.port}{spec.path}"
    conns = max(1, min(spec.connections, len(spec.paths) or spec.connections))
    return [
        "wrk",
        "-t1",
        f"-c{conns}",
        f"-d{spec.duration}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]


# Globals (not locals) in the thread states, so done() can read them with thread:get().
_LUA = r"""
local ffi_ok, ffi = pcall(require, "ffi")
if ffi_ok then
  pcall(ffi.cdef, [[
    typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
    int clock_gettime(int clk, bench_timespec *tp);
  ]])
end
local function now()
  if not ffi_ok then return 0 end
  local ts = ffi.new("bench_timespec")
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9
end

local paths_file = @PATHS@
local threads = {}
ok = 0
first = 0
last = 0
exhausted = 0
local queue = nil
local index = 1

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  if paths_file ~= "" then
    queue = {}
    for line in io.lines(paths_file) do
      if line ~= "" then queue[#queue + 1] = wrk.format(nil, line) end
    end
  end
end

answered = 0
reserved = 0
if paths_file ~= "" then
  -- wrk calls delay() before every request: it reserves a path, or leaves the connection
  -- idle for good once every path is reserved, so no path is ever sent twice.
  function delay()
    if reserved >= #queue then return 600000 end
    reserved = reserved + 1
    return 0
  end

  function request()
    if first == 0 then first = now() end
    local req = queue[index] or queue[#queue]
    index = index + 1
    if index > #queue then exhausted = 1 end
    return req
  end
end

local function has_header(headers, wanted)
  for name, _ in pairs(headers) do
    if string.lower(name) == wanted then return true end
  end
  return false
end

function response(status, headers, body)
  answered = answered + 1
  if @OK@ then
    ok = ok + 1
    last = now()
  end
  if queue ~= nil and answered >= #queue then wrk.thread:stop() end
end

function done(summary, latency, requests)
  local total_ok, t0, t1, ex = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    total_ok = total_ok + t:get("ok")
    local f, l = t:get("first"), t:get("last")
    if f > 0 and (t0 == 0 or f < t0) then t0 = f end
    if l > t1 then t1 = l end
    ex = math.max(ex, t:get("exhausted"))
  end
  local seconds = summary.duration / 1e6
  if ex == 1 and t0 > 0 and t1 > t0 then seconds = t1 - t0 end
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests": %d, "ok": %d, "seconds": %.6f, "p50_ms": %.4f, ' ..
    '"p99_ms": %.4f, "exhausted": %s, "socket_errors": %d}\n',
    summary.requests, total_ok, seconds, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, ex == 1 and "true" or "false",
    e.connect + e.read + e.write + e.timeout))
end
"""
