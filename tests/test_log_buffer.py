"""``logging.buffer`` and ``logging.flush`` in a real ``sidecar serve``: access lines are held
(as nginx's ``access_log … buffer= flush=``) and written when the buffer fills or the flush
time passes; SIGTERM and SIGHUP write what is held; a hard kill loses only the held lines.
(The queue itself: tests/test_logwriter.py; with ``--workers``: tests/test_workers.py.)"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp
import yaml

from tests.harness import running_upstream
from tests.serve_process import Served, running_serve

POLL_TIMEOUT = 20.0
HELD = {"level": "info", "buffer": "64KiB", "flush": "1m"}  # nothing written by time here


def access_ids(served: Served, prefix: str) -> list[str]:
    """The request ids starting with ``prefix`` of the access lines in the log so far."""
    ids = []
    for line in served.logs():
        doc = json.loads(line)
        if doc.get("event") == "access" and doc.get("request_id", "").startswith(prefix):
            ids.append(doc["request_id"])
    return ids


async def send(served: Served, prefix: str, count: int) -> list[str]:
    """``count`` requests with request ids ``prefix-0``…; each answered (401: no session)."""
    ids = [f"{prefix}-{i}" for i in range(count)]
    async with aiohttp.ClientSession() as http:
        for request_id in ids:
            async with http.get(
                served.proxy + "/app/page", headers={"X-Request-Id": request_id}
            ) as response:
                assert response.status == 401
    return ids


async def failed_redemption(served: Served) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(served.proxy + "/?refer=not-a-token") as response,
    ):
        assert response.status == 401  # a malformed link: the failure page


async def eventually(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(POLL_TIMEOUT):
        while True:  # polling the process's log, not waiting for a time
            if check():
                return
            await asyncio.sleep(0.05)


async def stopped(served: Served, sig: signal.Signals) -> int:
    served.proc.send_signal(sig)
    async with asyncio.timeout(30):
        return await served.proc.wait()


async def test_sigterm_writes_every_held_access_line(tmp_path: Path) -> None:
    async with (
        running_upstream() as upstream,
        running_serve(tmp_path, upstream.url, logging=HELD) as served,
    ):
        ids = await send(served, "term", 20)
        assert await stopped(served, signal.SIGTERM) == 0
    assert access_ids(served, "term-") == ids


async def test_a_hard_kill_loses_the_held_lines_and_only_those(tmp_path: Path) -> None:
    """With ``logging.flush: 1m`` the access lines of the last minute are held: SIGKILL loses
    them, but not the audit and start-up lines, which are written each loop iteration."""
    async with (
        running_upstream() as upstream,
        running_serve(tmp_path, upstream.url, logging=HELD) as served,
    ):
        await failed_redemption(served)  # an audit line
        await eventually(lambda: any('"redeem_failed"' in x for x in served.logs()))
        await send(served, "killed", 10)
        assert await stopped(served, signal.SIGKILL) == -signal.SIGKILL
    assert access_ids(served, "killed-") == []
    assert any("listening" in line for line in served.logs())


async def test_held_lines_are_written_when_the_flush_time_passes(tmp_path: Path) -> None:
    """``logging.flush: 200ms``: with no other line and no signal, the held lines reach the
    log; a hard kill then loses only what came after them."""
    timed = {"level": "info", "buffer": "64KiB", "flush": "200ms"}
    async with (
        running_upstream() as upstream,
        running_serve(tmp_path, upstream.url, logging=timed) as served,
    ):
        ids = await send(served, "timed", 10)
        await eventually(lambda: access_ids(served, "timed-") == ids)
        assert await stopped(served, signal.SIGKILL) == -signal.SIGKILL
    assert access_ids(served, "timed-") == ids


async def test_a_full_buffer_is_written_without_waiting(tmp_path: Path) -> None:
    small = {"level": "info", "buffer": "2KiB", "flush": "1m"}
    async with (
        running_upstream() as upstream,
        running_serve(tmp_path, upstream.url, logging=small) as served,
    ):
        ids = await send(served, "full", 30)  # about 9 KB of access lines
        await eventually(lambda: len(access_ids(served, "full-")) >= 6)
        written = access_ids(served, "full-")
        assert written == ids[: len(written)]  # the oldest first, in order
        assert await stopped(served, signal.SIGTERM) == 0
    assert access_ids(served, "full-") == ids


async def test_sighup_writes_the_held_lines(tmp_path: Path) -> None:
    async with (
        running_upstream() as upstream,
        running_serve(tmp_path, upstream.url, logging=HELD) as served,
    ):
        ids = await send(served, "hup", 5)
        assert access_ids(served, "hup-") == []
        served.proc.send_signal(signal.SIGHUP)
        await eventually(lambda: access_ids(served, "hup-") == ids)
        assert served.proc.returncode is None
        assert await stopped(served, signal.SIGTERM) == 0


async def test_buffer_zero_writes_each_line_at_the_end_of_its_iteration(tmp_path: Path) -> None:
    unbuffered = {"level": "info", "buffer": 0, "flush": "1m"}
    async with (
        running_upstream() as upstream,
        running_serve(tmp_path, upstream.url, logging=unbuffered) as served,
    ):
        ids = await send(served, "zero", 3)
        await eventually(lambda: access_ids(served, "zero-") == ids)
        assert await stopped(served, signal.SIGKILL) == -signal.SIGKILL
    assert access_ids(served, "zero-") == ids


async def test_sigint_writes_every_held_access_line(tmp_path: Path) -> None:
    """SIGINT stops the server as SIGTERM does (``app.py``), and writes the held lines too."""
    async with (
        running_upstream() as upstream,
        running_serve(tmp_path, upstream.url, logging=HELD) as served,
    ):
        ids = await send(served, "int", 20)
        assert access_ids(served, "int-") == []
        assert await stopped(served, signal.SIGINT) == 0
    assert access_ids(served, "int-") == ids


async def test_an_audit_line_is_written_after_the_access_lines_held_before_it(
    tmp_path: Path,
) -> None:
    """An audit line is never held: it is written at the end of its loop iteration, with the
    access lines held before it, and after them in the file (one queue: the log's order is
    the order of the events)."""
    async with (
        running_upstream() as upstream,
        running_serve(tmp_path, upstream.url, logging=HELD) as served,
    ):
        ids = await send(served, "before", 5)
        assert access_ids(served, "before-") == []
        await failed_redemption(served)
        await eventually(lambda: any('"redeem_failed"' in x for x in served.logs()))
        lines = served.logs()
        audit_at = next(i for i, x in enumerate(lines) if '"redeem_failed"' in x)
        before = [json.loads(x).get("request_id") for x in lines[:audit_at]]
        assert [i for i in before if i is not None and i.startswith("before-")] == ids
        assert await stopped(served, signal.SIGTERM) == 0


async def test_a_reload_applies_new_buffering(tmp_path: Path) -> None:
    """SIGHUP writes what is held and applies the file's new ``logging.buffer`` and
    ``logging.flush``: with ``buffer: 0`` the next access lines are written at the end of
    their iteration (with ``flush: 1m`` still in force they would wait a minute)."""
    async with (
        running_upstream() as upstream,
        running_serve(tmp_path, upstream.url, logging=HELD) as served,
    ):
        held = await send(served, "old", 3)
        doc = yaml.safe_load(served.config.read_text(encoding="utf-8"))
        doc["logging"] = {"level": "info", "buffer": 0, "flush": "1m"}
        served.config.write_text(yaml.safe_dump(doc), encoding="utf-8")
        served.proc.send_signal(signal.SIGHUP)
        await eventually(lambda: any("logging.buffer" in x for x in served.logs()))
        assert access_ids(served, "old-") == held
        ids = await send(served, "new", 3)
        await eventually(lambda: access_ids(served, "new-") == ids)
        assert await stopped(served, signal.SIGKILL) == -signal.SIGKILL
    assert access_ids(served, "new-") == ids


async def test_a_reload_applies_a_new_flush_time(tmp_path: Path) -> None:
    """``logging.flush`` 1m -> 200ms on SIGHUP: the access lines sent after the reload are
    written by the new, shorter timer, with no other line or signal to push them out."""
    async with (
        running_upstream() as upstream,
        running_serve(tmp_path, upstream.url, logging=HELD) as served,
    ):
        doc = yaml.safe_load(served.config.read_text(encoding="utf-8"))
        doc["logging"] = {"level": "info", "buffer": "64KiB", "flush": "200ms"}
        served.config.write_text(yaml.safe_dump(doc), encoding="utf-8")
        served.proc.send_signal(signal.SIGHUP)
        await eventually(lambda: any("logging.flush" in x for x in served.logs()))
        ids = await send(served, "timer", 3)
        await eventually(lambda: access_ids(served, "timer-") == ids)
        assert await stopped(served, signal.SIGKILL) == -signal.SIGKILL
