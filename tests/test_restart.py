"""A used link stays used when the process dies and a new one starts on the same state.

The Kubernetes SQLite variant keeps the database on a PersistentVolumeClaim for exactly this
reason (deploy/kubernetes/sqlite): on an ``emptyDir`` a restarted pod would re-open every link
already used and forget every revocation. Here the "volume" is the test's state directory.
"""

from __future__ import annotations

import signal
from pathlib import Path

import aiohttp

from tests.serve_process import Served, restarted, running_serve

UNREACHABLE_UPSTREAM = "http://127.0.0.1:9"  # redemptions never reach the upstream


async def _mint(http: aiohttp.ClientSession, served: Served, user: str) -> tuple[str, str]:
    async with http.post(
        served.admin + "/referstring", json={"userId": user}, headers=served.admin_headers()
    ) as response:
        assert response.status == 200
        body = await response.json()
        return str(body["url"]), str(body["id"])


async def _status(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url, allow_redirects=False) as response:
        return response.status


async def test_used_and_revoked_links_stay_dead_after_sigkill_and_restart(tmp_path: Path) -> None:
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
        running_serve(tmp_path, UNREACHABLE_UPSTREAM) as first,
    ):
        used, _ = await _mint(http, first, "u-used")
        revoked, revoked_id = await _mint(http, first, "u-revoked")
        fresh, _ = await _mint(http, first, "u-fresh")
        assert await _status(http, used) == 303
        async with http.post(
            f"{first.admin}/tokens/{revoked_id}/revoke", headers=first.admin_headers()
        ) as response:
            assert response.status == 200
        first.proc.send_signal(signal.SIGKILL)  # no shutdown, no checkpoint
        await first.proc.wait()

        async with restarted(first) as second:
            assert await _status(http, used) == 410, "a used link re-opened after a restart"
            assert await _status(http, revoked) == 410, "a revocation was lost"
            assert await _status(http, fresh) == 303, "an unused link must still work"
            assert await _status(http, fresh) == 410
            assert second.db == first.db
