"""``sidecar serve --workers 2``: real worker processes sharing the ports, and the supervisor.

Shared state is checked over fresh connections (so the kernel's SO_REUSEPORT balancing
spreads them over both workers, which the per-worker metrics files then prove): one-time
links burn once on SQLite and Redis, the mint rate limit counts across workers, ``/metrics``
is one view whichever worker answers. Then the supervisor: a killed worker is replaced,
SIGHUP reaches every worker, SIGTERM stops them all and exits 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import yaml
from prometheus_client.mmap_dict import MmapedDict

from sidecar.tokens.codec import Claims, TokenCodec, new_token_id
from sidecar.tokens.keys import generate_keyset
from tests.harness import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
ADMIN_KEY = "workers-admin-key-" + "x" * 32
WORKERS = 2
CONCURRENT = 500
MINT_LIMIT = 20
STARTUP = 60.0


@dataclass
class Served:
    """A ``sidecar serve --workers`` process tree and its stderr lines."""

    proc: subprocess.Popen[str]
    proxy: str
    admin: str
    metrics: str
    metrics_dir: Path
    config: Path
    codec: TokenCodec
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    log: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def workers(self) -> set[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return {int(p) for p in path.read_text().split()}

    def mint(self, user: str) -> str:
        now = int(time.time())
        claims = Claims(
            token_id=new_token_id(), subject=user, role="Authenticated", issued_at=now,
            expires_at=now + 3600, one_time=True, kind="refer",
        )  # fmt: skip
        return self.codec.seal(claims)

    def wait_for_line(self, text: str, count: int = 1, within: float = STARTUP) -> None:
        deadline = time.monotonic() + within
        while sum(text in line for line in self.log) < count:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                pytest.fail(f"no {count} x {text!r} in the log:\n" + "".join(self.log[-40:]))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            raise
        finally:
            if self.reader is not None:
                self.reader.join(timeout=5)  # to the end of the workers' output too
            if self.proc.stderr is not None:
                self.proc.stderr.close()


def serve_workers(
    directory: Path, store_url: str, tag: str, log_options: dict[str, object] | None = None
) -> Served:
    keyset = generate_keyset()
    (directory / "keyset.json").write_text(keyset.to_json())
    (directory / "admin.key").write_text(ADMIN_KEY)
    ports = {name: free_port() for name in ("proxy", "admin", "metrics")}
    doc = {
        "public_url": "http://app.test",
        "keys": {"file": "keyset.json"},
        "admin": {
            "listen": f"127.0.0.1:{ports['admin']}",
            "key": {"file": "admin.key"},
            "mint_rate": f"{MINT_LIMIT}/1h",
        },
        "proxy": {
            "listen": f"127.0.0.1:{ports['proxy']}",
            "upstream": "http://127.0.0.1:9",
            # All clients are 127.0.0.1 here: the per-client failure limit must not answer 429.
            "failed_redeem_rate": "1000000/1m",
            "allowed_hosts": ["127.0.0.1"],  # the clients' Host (else 421)
        },
        "metrics": {"listen": f"127.0.0.1:{ports['metrics']}"},
        "session": {"cookie_secure": False},
        "store": {"url": store_url, "key_prefix": f"workers-{tag}:"},
        "roles": {"Authenticated": {}},
        "logging": {"level": "info", **(log_options or {})},
        "shutdown": {"grace_period": "1s"},
    }
    config = directory / "sidecar.yaml"
    config.write_text(yaml.safe_dump(doc))
    metrics_dir = directory / "metrics"
    metrics_dir.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "serve", "--config", str(config),
         "--workers", str(WORKERS)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
    )  # fmt: skip
    served = Served(
        proc,
        proxy=f"http://127.0.0.1:{ports['proxy']}",
        admin=f"http://127.0.0.1:{ports['admin']}",
        metrics=f"http://127.0.0.1:{ports['metrics']}/metrics",
        metrics_dir=metrics_dir,
        config=config,
        codec=TokenCodec(keyset),
    )

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            served.log.append(line)
            served.lines.put(line)
        served.lines.put(None)

    served.reader = threading.Thread(target=drain, daemon=True)
    served.reader.start()
    try:
        served.wait_for_line(f"{WORKERS} workers serving")
    except BaseException:
        served.stop()
        raise
    return served


def requests_by_worker(metrics_dir: Path, listener: str | None = None) -> dict[int, float]:
    """``sidecar_requests_total`` (of one listener, or all) as each worker wrote it to its
    own multiprocess file."""
    counts: dict[int, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        d = MmapedDict(str(path), read_mode=True)  # type: ignore[no-untyped-call]
        try:
            for key, value, _ in d.read_all_values():  # type: ignore[no-untyped-call]
                _, name, labels, _ = json.loads(key)
                if name == "sidecar_requests_total" and listener in (None, labels["listener"]):
                    counts[pid] = counts.get(pid, 0.0) + value
        finally:
            d.close()  # type: ignore[no-untyped-call]
    return counts


@pytest.fixture(scope="module")
def sqlite_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("workers-sqlite")
    served = serve_workers(directory, f"sqlite:///{directory / 'store.db'}", "sqlite")
    yield served
    assert served.stop() == 0


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # force_close: every request on a new connection, so the kernel spreads them.
    connector = aiohttp.TCPConnector(limit=CONCURRENT, force_close=True)
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        yield session


async def redeem_many(http: aiohttp.ClientSession, served: Served, token: str) -> list[int]:
    async def one() -> tuple[int, bool]:
        async with http.get(
            f"{served.proxy}/?refer={token}",
            allow_redirects=False,
            headers={"Accept": "application/json"},
            timeout=aiohttp.ClientTimeout(total=60),
        ) as response:
            return response.status, "Set-Cookie" in response.headers

    results = await asyncio.gather(*(one() for _ in range(CONCURRENT)))
    assert sum(cookie for _, cookie in results) == 1
    return sorted(status for status, _ in results)


async def check_one_burn(http: aiohttp.ClientSession, served: Served) -> None:
    before = requests_by_worker(served.metrics_dir)
    statuses = await redeem_many(http, served, served.mint("carol"))
    assert statuses.count(303) == 1, statuses[:3] + statuses[-3:]
    assert statuses.count(410) == CONCURRENT - 1, statuses[:3] + statuses[-3:]
    after = requests_by_worker(served.metrics_dir)
    served_by = {pid for pid, n in after.items() if n > before.get(pid, 0.0)}
    assert served_by == served.workers(), (before, after)  # both workers took redemptions


async def test_500_concurrent_redemptions_over_workers_burn_once_on_sqlite(
    sqlite_workers: Served, http: aiohttp.ClientSession
) -> None:
    await check_one_burn(http, sqlite_workers)


async def test_500_concurrent_redemptions_over_workers_burn_once_on_redis(
    tmp_path: Path, redis_url: str, http: aiohttp.ClientSession
) -> None:
    served = serve_workers(tmp_path, redis_url, f"redis-{os.getpid()}")
    try:
        await check_one_burn(http, served)
    finally:
        assert served.stop() == 0


async def test_the_mint_rate_limit_counts_across_workers(
    sqlite_workers: Served, http: aiohttp.ClientSession
) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    body = {"userId": "erin", "oneTimeUse": True, "expireMeasure": "hours", "expireOffset": 1}

    async def mint() -> int:
        url = f"{sqlite_workers.admin}/referstring"
        async with http.post(url, json=body, headers=headers) as response:
            return response.status

    before = requests_by_worker(sqlite_workers.metrics_dir)
    statuses = [await mint() for _ in range(2 * MINT_LIMIT)]
    after = requests_by_worker(sqlite_workers.metrics_dir)
    assert statuses.count(200) == MINT_LIMIT, statuses
    assert statuses.count(429) == MINT_LIMIT, statuses
    assert len({pid for pid, n in after.items() if n > before.get(pid, 0.0)}) == WORKERS


async def test_metrics_are_one_view_whichever_worker_answers(
    sqlite_workers: Served, http: aiohttp.ClientSession
) -> None:
    async def scraped_proxy_total() -> float:
        async with http.get(sqlite_workers.metrics) as response:
            text = await response.text()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith('sidecar_requests_total{listener="proxy"')
        )

    before = requests_by_worker(sqlite_workers.metrics_dir, "proxy")
    for _ in range(40):
        async with http.get(f"{sqlite_workers.proxy}/_sidecar/healthz") as response:
            assert response.status == 200
    by_worker = requests_by_worker(sqlite_workers.metrics_dir, "proxy")
    assert len([p for p, n in by_worker.items() if n > before.get(p, 0.0)]) == WORKERS
    # Ten scrapes on new connections (both workers answer them): the same total each
    # time, every worker's proxy requests summed.
    scrapes = [await scraped_proxy_total() for _ in range(10)]
    assert scrapes == [sum(by_worker.values())] * 10, (scrapes, by_worker)


def test_a_killed_worker_is_replaced_and_sighup_reaches_every_worker(
    tmp_path: Path,
) -> None:
    served = serve_workers(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", "restart")
    try:
        first = served.workers()
        assert len(first) == WORKERS
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        served.wait_for_line("starting it again", within=10)
        deadline = time.monotonic() + 30
        while (now := served.workers()) == first - {victim} or len(now) < WORKERS:
            assert time.monotonic() < deadline, now
            time.sleep(0.05)
        assert victim not in now
        assert len(now) == WORKERS
        served.wait_for_line("listening (pid", count=WORKERS + 1)

        served.proc.send_signal(signal.SIGHUP)  # each worker reloads and says so
        served.wait_for_line("reload (SIGHUP)", count=WORKERS, within=15)
    finally:
        code = served.stop()
    assert code == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in now)


async def _requests_with_ids(http: aiohttp.ClientSession, proxy: str, ids: list[str]) -> None:
    """One request per id at once, each with that ``X-Request-Id``: every answer a 401."""

    async def one(request_id: str) -> int:
        headers = {"X-Request-Id": request_id}
        async with http.get(f"{proxy}/app", headers=headers) as response:
            return response.status

    assert set(await asyncio.gather(*(one(i) for i in ids))) == {401}


async def test_sigterm_writes_every_workers_held_access_lines_whole(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Each worker holds its access lines (``logging.flush: 1m``: nothing is written by time
    here); SIGTERM to the supervisor reaches every worker, and each writes what it holds as
    it exits. The workers share one pipe (stderr): every line arrives whole, none twice."""
    held: dict[str, object] = {"buffer": "64KiB", "flush": "1m"}
    served = serve_workers(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", "held", held)
    ids = [f"held-{i}" for i in range(200)]
    try:
        await _requests_with_ids(http, served.proxy, ids)
        by_worker = requests_by_worker(served.metrics_dir, "proxy")
        assert len(by_worker) == WORKERS, by_worker  # both workers answered some
    finally:
        code = served.stop()
    assert code == 0
    docs = [json.loads(line) for line in served.log if line.startswith("{")]
    logged = [d["request_id"] for d in docs if d.get("event") == "access"]
    assert sorted(logged) == sorted(ids)


async def test_sighup_writes_every_workers_held_access_lines(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """SIGHUP to the supervisor is passed to every worker, and each writes the access lines
    it holds (``logging.flush: 1m``: nothing is written by time here) without exiting; each
    line once, whole."""
    held: dict[str, object] = {"buffer": "64KiB", "flush": "1m"}
    served = serve_workers(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", "hup", held)
    ids = [f"hupw-{i}" for i in range(200)]
    try:
        await _requests_with_ids(http, served.proxy, ids)
        by_worker = requests_by_worker(served.metrics_dir, "proxy")
        assert len(by_worker) == WORKERS, by_worker  # both workers hold some
        assert not any('"hupw-' in line for line in served.log)
        served.proc.send_signal(signal.SIGHUP)
        served.wait_for_line('"hupw-', count=len(ids), within=20)
        assert served.proc.poll() is None
    finally:
        code = served.stop()
    assert code == 0
    docs = [json.loads(line) for line in served.log if line.startswith("{")]
    logged = [d["request_id"] for d in docs if d.get("event") == "access"]
    assert sorted(logged) == sorted(ids)


def test_a_worker_that_cannot_listen_fails_the_whole_start(tmp_path: Path) -> None:
    """The proxy port is held by a socket without SO_REUSEPORT: no worker can bind it, the
    supervisor stops the others and exits 1, as a single process would."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        port = holder.getsockname()[1]
        keyset = generate_keyset()
        (tmp_path / "keyset.json").write_text(keyset.to_json())
        (tmp_path / "admin.key").write_text(ADMIN_KEY)
        doc = {
            "public_url": "http://app.test",
            "keys": {"file": "keyset.json"},
            "admin": {"listen": f"127.0.0.1:{free_port()}", "key": {"file": "admin.key"}},
            "proxy": {"listen": f"127.0.0.1:{port}", "upstream": "http://127.0.0.1:9"},
            "session": {"cookie_secure": False},
            "store": {"url": f"sqlite:///{tmp_path / 'store.db'}"},
            "roles": {"Authenticated": {}},
            "shutdown": {"grace_period": "1s"},
        }
        config = tmp_path / "sidecar.yaml"
        config.write_text(yaml.safe_dump(doc))
        result = subprocess.run(
            [sys.executable, "-m", "sidecar", "serve", "--config", str(config),
             "--workers", "2"],
            capture_output=True, text=True, cwd=REPO, timeout=60,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
    finally:
        holder.close()
    assert result.returncode == 1, result.stderr[-2000:]
    assert "cannot listen on" in result.stderr
    assert "a worker failed to start: stopping" in result.stderr


@pytest.mark.parametrize("value", ["0", "65", "two", "-1"])
def test_workers_must_be_auto_or_a_number_from_1_to_64(value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "serve", "--config", "unused.yaml",
         "--workers", value],
        capture_output=True, text=True, cwd=REPO, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert result.returncode == 1
    assert "--workers: expected auto or a number from 1 to 64" in result.stderr


def test_the_shared_metrics_dir_is_private_and_removed_or_emptied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sidecar.workers import MULTIPROC_ENV, shared_metrics_dir

    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    with shared_metrics_dir() as made:
        assert os.environ[MULTIPROC_ENV] == str(made)
        assert made.stat().st_mode & 0o777 == 0o700
    assert not made.exists()
    assert MULTIPROC_ENV not in os.environ

    given = tmp_path / "metrics"
    given.mkdir()
    (given / "counter_123.db").write_bytes(b"stale")
    monkeypatch.setenv(MULTIPROC_ENV, str(given))
    with shared_metrics_dir() as used:
        assert used == given
        assert list(given.iterdir()) == []  # a previous run's figures are not this one's
    assert given.is_dir()
