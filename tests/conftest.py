"""Shared fixtures: real servers (child processes or real sockets), never mocks."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests import parallel
from tests.harness.links import Env, env_for
from tests.harness.upstream import Upstream, running_upstream
from tests.security import casebook

if TYPE_CHECKING:
    from tests.redis_topologies import Topology

REQUIRE_ALL = os.environ.get("SIDECAR_REQUIRE_ALL") == "1"


# -- the suite split between pytest-xdist workers (tests/parallel.py) ----------------------
@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    return parallel.scheduler(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    parallel.heaviest_first(items)


def pytest_sessionfinish(session: pytest.Session) -> None:
    output = parallel.worker_output(session.config)
    if output is not None:
        output["casebook"] = casebook.counts()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """On the controller: a worker ended; its security cases join the summary."""
    counts = getattr(node, "workeroutput", {}).get("casebook")
    if counts is not None:
        casebook.add(counts)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if any(casebook.TRIED.values()):
        terminalreporter.section("security cases (tried / got through)")
        for line in casebook.summary_lines():
            terminalreporter.write_line(line)


def skip_or_fail(reason: str) -> None:
    """Skip on a laptop without the part; fail loudly in CI (SIDECAR_REQUIRE_ALL=1)."""
    if REQUIRE_ALL:
        pytest.fail(f"{reason} (SIDECAR_REQUIRE_ALL=1 makes this a failure)")
    pytest.skip(reason)


def end_process(proc: subprocess.Popen[Any], *, within: float = 10) -> None:
    """SIGTERM ``proc``, give it ``within`` seconds, then SIGKILL: a child always ends, and
    no wait is unbounded."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=within)
        except subprocess.TimeoutExpired:  # e.g. redis-server stuck finishing an AOF rewrite
            proc.kill()
            proc.wait(timeout=10)


def executable(name: str, missing: str) -> str:
    """The path of the program ``name`` on ``PATH``; else skip (or fail), saying ``missing``."""
    exe = shutil.which(name)
    if exe is None:
        skip_or_fail(missing)
        raise AssertionError("unreachable")
    return exe


class RedisServer:
    """A private redis-server on a unix socket that a test may stop and start again."""

    def __init__(self, directory: Path, *, databases: int = 16, appendonly: bool = False) -> None:
        self.directory = directory
        self.databases = databases
        self.appendonly = appendonly
        self.socket = directory / "redis.sock"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        exe = executable("redis-server", "redis-server is not installed")
        self.socket.unlink(missing_ok=True)  # a stale file would pass the readiness check
        self._proc = proc = subprocess.Popen(
            [exe, "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
             "--save", "", "--appendonly", "yes" if self.appendonly else "no",
             "--dir", str(self.directory), "--databases", str(self.databases)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not self._accepts():
            if proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail("redis-server did not start")
            time.sleep(0.01)

    @property
    def pid(self) -> int:
        """The running server's process id (for SIGSTOP/SIGCONT)."""
        assert self._proc is not None, "redis-server is not running"
        return self._proc.pid

    def _accepts(self) -> bool:
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(self.socket))
            except OSError:
                return False
        return True

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            end_process(proc)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server shared by the session, on a unix socket (no port race)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), databases=64)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private, started redis-server (for tests that stop it); stopped at teardown."""
    server = RedisServer(tmp_path_factory.mktemp("redis-private"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- Redis topologies (tests/redis_topologies.py), each started once and shared ----------
@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    """3 primaries + 3 replicas, made by ``redis-cli --cluster create``."""
    from tests.redis_topologies import start_cluster

    topology = start_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield topology
    finally:
        topology.stop()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    """A primary, one replica and three Sentinels."""
    from tests.redis_topologies import start_sentinel

    topology = start_sentinel(tmp_path_factory.mktemp("sentinel"))
    try:
        yield topology
    finally:
        topology.stop()


@pytest.fixture(scope="session")
def redis_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    """One Redis over TLS only (client certificate required) with an ACL user."""
    from tests.redis_topologies import start_tls

    topology = start_tls(tmp_path_factory.mktemp("tls"))
    try:
        yield topology
    finally:
        topology.stop()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """A recording upstream on a free loopback port (:mod:`tests.harness.upstream`)."""
    async with running_upstream() as up:
        yield up


@pytest.fixture
async def env(tmp_path: Path, upstream: Upstream) -> AsyncIterator[Env]:
    """A served sidecar with auth links (SQLite) in front of ``upstream``
    (:mod:`tests.harness.links`)."""
    async for e in env_for(tmp_path, upstream):
        yield e


if os.environ.get("SIDECAR_TEST_UVLOOP") == "1":
    import uvloop

    def pytest_asyncio_loop_factories(
        config: pytest.Config, item: pytest.Item
    ) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
        """``SIDECAR_TEST_UVLOOP=1``: in-process servers and clients run on uvloop, as
        ``sidecar serve`` does when it is installed (asyncio's loop otherwise)."""
        return {"uvloop": uvloop.new_event_loop}
