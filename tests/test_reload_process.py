"""Reload and key rotation with real ``sidecar serve`` processes and real signals.

* SIGHUP re-reads the YAML: a valid change applies to the next request (new identity
  headers on the same session), a listener change is kept as "needs restart", an invalid
  file changes nothing and its every error is logged; the process never dies of it.
* A rewritten keyset file is picked up with no signal within ``reload.watch_interval``.
* A rolling rotation (stage everywhere → activate → retire) between an "old" and a "new"
  replica: links minted on either open on the other; without the staging step they do not.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import yaml

from sidecar.tokens.keys import generate_keyset, parse_keyset
from tests.harness import Upstream, running_upstream
from tests.serve_process import ROOT, Served, running_serve

POLL_TIMEOUT = 20.0
FAST_WATCH = {"watch_interval": "100ms"}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def messages(served: Served) -> list[tuple[str, str]]:
    """(level, msg) of every JSON log line that has a message."""
    docs = [json.loads(line) for line in served.logs() if line.startswith("{")]
    return [(d.get("level", ""), d["msg"]) for d in docs if "msg" in d]


async def logged(served: Served, start: str) -> tuple[str, str]:
    """Wait for the process (on its own clock) to log a line starting with ``start``."""
    async with asyncio.timeout(POLL_TIMEOUT):
        while True:
            found = [m for m in messages(served) if m[1].startswith(start)]
            if found:
                return found[-1]
            assert served.proc.returncode is None, "\n".join(served.logs())
            await asyncio.sleep(0.02)


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(POLL_TIMEOUT):
        while True:
            if await check():
                return
            await asyncio.sleep(0.02)


def edit_config(served: Served, change: Callable[[dict[str, object]], None]) -> None:
    doc = yaml.safe_load(served.config.read_text())
    change(doc)
    served.config.write_text(yaml.safe_dump(doc))


async def mint(http: aiohttp.ClientSession, served: Served, user: str) -> dict[str, str]:
    async with http.post(
        served.admin + "/referstring", json={"userId": user}, headers=served.admin_headers()
    ) as response:
        assert response.status == 200, await response.text()
        answer: dict[str, str] = await response.json()
        return answer


async def redeem(http: aiohttp.ClientSession, url: str) -> tuple[int, str | None]:
    async with http.get(url, allow_redirects=False) as response:
        morsel = response.cookies.get("sidecar_session")
        return response.status, (f"sidecar_session={morsel.value}" if morsel else None)


def kid_of(refer: str) -> str:
    header = refer.split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"])


async def seen_upstream(
    http: aiohttp.ClientSession, served: Served, upstream: Upstream, cookie: str
) -> list[tuple[str, str]]:
    async with http.get(served.proxy + "/page", headers={"Cookie": cookie}) as response:
        assert response.status == 200
    return [(n, v) for n, v in upstream.last.headers if n.lower().startswith("x-forwarded-")]


async def test_sighup_reloads_keeps_restart_only_values_and_survives_bad_files(
    tmp_path: Path,
) -> None:
    async with (
        running_upstream() as upstream,
        running_serve(tmp_path, upstream.url, reload=FAST_WATCH) as served,
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
    ):
        status, cookie = await redeem(http, (await mint(http, served, "u-1"))["url"])
        assert status == 303
        assert cookie
        before = await seen_upstream(http, served, upstream, cookie)
        assert ("X-Forwarded-Role", "Member") in before
        assert not any(name == "X-Forwarded-Team" for name, _ in before)
        old_listen = yaml.safe_load(served.config.read_text())["proxy"]["listen"]

        def valid(doc: dict[str, object]) -> None:
            roles, proxy = doc["roles"], doc["proxy"]
            assert isinstance(roles, dict)
            assert isinstance(proxy, dict)
            roles["Member"]["headers"] = {"X-Forwarded-User": "{user_id}", "X-Forwarded-Team": "t1"}
            proxy["listen"] = "127.0.0.1:1"  # cannot change live

        edit_config(served, valid)
        served.proc.send_signal(signal.SIGHUP)
        level, line = await logged(served, "reload (SIGHUP)")
        assert (level, line) == (
            "info",
            "reload (SIGHUP): changed roles.Member.headers; "
            "needs restart (running value kept): proxy.listen",
        )
        after = await seen_upstream(http, served, upstream, cookie)  # the same session
        assert ("X-Forwarded-Team", "t1") in after
        assert not any(name == "X-Forwarded-Role" for name, _ in after)
        assert served.proxy.endswith(old_listen.rsplit(":", 1)[1])  # still where it was

        def invalid(doc: dict[str, object]) -> None:
            roles, proxy = doc["roles"], doc["proxy"]
            assert isinstance(roles, dict)
            assert isinstance(proxy, dict)
            roles["Member"]["max_expiry"] = "40d"
            proxy["upstream"] = "ftp://nowhere"

        edit_config(served, invalid)
        served.proc.send_signal(signal.SIGHUP)
        level, line = await logged(served, "reload (SIGHUP) refused")
        assert level == "error"
        assert "2 error(s)" in line
        assert "roles.Member.max_expiry: got '40d', at most 30d" in line
        assert "proxy.upstream: got 'ftp://nowhere'" in line
        assert ("X-Forwarded-Team", "t1") in await seen_upstream(http, served, upstream, cookie)

        served.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(POLL_TIMEOUT):
            assert await served.proc.wait() == 0


async def test_a_rewritten_keyset_file_is_picked_up_without_a_signal(tmp_path: Path) -> None:
    async with (
        running_upstream() as upstream,
        running_serve(tmp_path, upstream.url, reload=FAST_WATCH) as served,
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
    ):
        before = await mint(http, served, "u-1")
        keyset_file = served.state / "keyset.json"
        done = cli("keygen", str(keyset_file), "--kid", "k-rotated")
        assert done.returncode == 0, done.stderr
        _, line = await logged(served, "reload (secret file changed")
        assert f"changed keys (active k-rotated, was {served.keyset.active_kid}" in line
        after = await mint(http, served, "u-2")
        assert kid_of(before["referString"]) == served.keyset.active_kid
        assert kid_of(after["referString"]) == "k-rotated"
        assert (await redeem(http, before["url"]))[0] == 303  # the old key still opens

        # The admin key file is a secret file too: a new key works at once, the old one not.
        new_key = "rotated-admin-key-" + "x" * 32
        staged = served.state / ".admin.key.new"
        staged.write_text(new_key)
        staged.rename(served.state / "admin.key")  # whole, as a Secret update lands
        await eventually(lambda: _admin_status(http, served, served.admin_key, 403))
        expected = (
            "info",
            f"reload (secret file changed: {served.state / 'keyset.json'}, "
            f"{served.state / 'admin.key'}): changed admin.key (replaced)",
        )

        async def reload_logged() -> bool:  # log lines reach the file a moment later
            return expected in messages(served)

        await eventually(reload_logged)
        assert await _admin_status(http, served, new_key, 200)


async def _admin_status(
    http: aiohttp.ClientSession, served: Served, key: str, expected: int
) -> bool:
    async with http.post(
        served.admin + "/referstring",
        json={"userId": "u-key"},
        headers={"Authorization": f"Bearer {key}"},
    ) as response:
        return response.status == expected


async def test_rolling_rotation_between_an_old_and_a_new_replica(tmp_path: Path) -> None:
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    old_dir.mkdir()
    new_dir.mkdir()
    first = generate_keyset("k-one")
    async with (
        running_upstream() as upstream,
        running_serve(old_dir, upstream.url, keyset=first, reload=FAST_WATCH) as old,
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
    ):
        shared = old_dir / "keyset.json"  # the Secret every replica mounts
        # Without staging, a replica that activated a new key breaks links on the old one.
        unstaged = new_dir / "unstaged.json"
        unstaged.write_text(first.with_new_key("k-rogue").to_json())
        # Step 1: stage the new key everywhere (the old replica reloads by itself).
        staged = cli("keygen", str(shared), "--staged", "--kid", "k-two")
        assert staged.returncode == 0, staged.stderr
        assert "added key k-two (staged)" in staged.stdout
        await logged(old, "reload (secret file changed")
        listing = cli("keys", str(shared)).stdout.splitlines()
        assert [row.split()[:2] for row in listing[1:]] == [
            ["k-two", "staged"],
            ["k-one", "active"],
        ]
        # Step 2: activate it; a new replica starts with the activated file while the old
        # one still runs with k-one active (a rolling deploy is half-way).
        activated = parse_keyset(shared.read_text()).activate("k-two")
        async with running_serve(new_dir, upstream.url, keyset=activated) as new:
            from_new = await mint(http, new, "u-new")
            from_old = await mint(http, old, "u-old")
            assert (kid_of(from_new["referString"]), kid_of(from_old["referString"])) == (
                "k-two",
                "k-one",
            )
            assert (await redeem(http, from_new["url"].replace(new.proxy, old.proxy)))[0] == 303
            assert (await redeem(http, from_old["url"].replace(old.proxy, new.proxy)))[0] == 303

            rogue_keys = parse_keyset(unstaged.read_text())
            (new_dir / "keyset.json").write_text(rogue_keys.to_json())
            new_keyset = new_dir / "keyset.json"
            # (the new replica has no fast watch: SIGHUP it)
            new.proc.send_signal(signal.SIGHUP)
            await logged(new, "reload (SIGHUP)")
            rogue = await mint(http, new, "u-rogue")
            assert kid_of(rogue["referString"]) == "k-rogue"
            assert (await redeem(http, rogue["url"].replace(new.proxy, old.proxy)))[0] == 401

            # Step 3: retire the old key once its links have expired. Never the active one.
            new_keyset.write_text(activated.to_json())
            refused = cli("keygen", str(new_keyset), "--retire", "k-two")
            assert refused.returncode == 1
            assert "k-two" in refused.stderr
            assert "is the active key" in refused.stderr
            retired = cli("keygen", str(new_keyset), "--retire", "k-one")
            assert retired.returncode == 0, retired.stderr
            assert "warning: links sealed with k-one" in retired.stderr  # may be unexpired
            new.proc.send_signal(signal.SIGHUP)

            async def old_link_refused() -> bool:
                url = (await mint(http, old, "u-late"))["url"].replace(old.proxy, new.proxy)
                return (await redeem(http, url))[0] == 401

            await eventually(old_link_refused)
