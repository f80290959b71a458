"""Crash safety of SQLite burns: an acknowledged burn survives SIGKILL of the process.

A child process burns ids from many concurrent tasks and prints each id only after
``burn()`` returned BURNED. We SIGKILL it mid-load, reopen the file and check that every
acknowledged id is still burned. (SIGKILL leaves the OS page cache intact, so this
proves that answers come after the commit, not that the fsync reached the disk;
``synchronous=FULL`` is what covers power loss.)
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path

from sidecar.store import BurnResult, SQLiteStore, StoreUnavailable, TokenState
from sidecar.store._groupcommit import GroupCommitWriter

REPO = Path(__file__).resolve().parents[1]
WORKERS = 64
READ_BEFORE_KILL = 3000

CHILD = """
import asyncio, sys, time
from sidecar.store import BurnResult, SQLiteStore

async def main(path: str, workers: int) -> None:
    store = SQLiteStore(path)
    await store.open()

    async def burner(w: int) -> None:
        i = 0
        while True:
            token_id = f"{w}-{i}"
            if await store.burn(token_id, time.time() + 3600) is BurnResult.BURNED:
                sys.stdout.write(token_id + "\\n")
                sys.stdout.flush()
            i += 1

    await asyncio.gather(*(burner(w) for w in range(workers)))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def test_acknowledged_burns_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(path), str(WORKERS),
        stdout=asyncio.subprocess.PIPE, cwd=REPO, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    acknowledged: list[str] = []
    deadline = time.monotonic() + 60
    try:
        while len(acknowledged) < READ_BEFORE_KILL:
            line = await asyncio.wait_for(proc.stdout.readline(), deadline - time.monotonic())
            assert line.endswith(b"\n"), f"child exited early with {await proc.wait()}"
            acknowledged.append(line.decode().strip())
    finally:
        proc.kill()  # SIGKILL: no cleanup, no close(), possibly mid-transaction
    # Lines already in the pipe were acknowledged too; a torn last line was not.
    rest = (await proc.stdout.read()).decode()
    acknowledged += rest.split("\n")[:-1]
    assert await proc.wait() == -9

    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT count(*) FROM tokens").fetchone()[0]
    db.close()
    store = SQLiteStore(str(path))
    await store.open()
    try:
        states = await asyncio.gather(*(store.token_state(t) for t in acknowledged))
        burns = await asyncio.gather(*(store.burn(t, time.time() + 3600) for t in acknowledged))
    finally:
        await store.close()
    print(f"\ncrash test: {len(acknowledged)} acknowledged, {rows} rows after SIGKILL")
    assert len(set(acknowledged)) == len(acknowledged) >= READ_BEFORE_KILL
    assert rows >= len(acknowledged)
    assert states == [TokenState.USED] * len(acknowledged)
    assert burns == [BurnResult.ALREADY_USED] * len(acknowledged)


async def test_an_open_waits_for_another_process_preparing_the_same_new_file(
    tmp_path: Path,
) -> None:
    """``serve --workers``: workers open one new database at the same moment. While one
    holds its write lock (schema, WAL switch), SQLite refuses the other's journal-mode
    switch at once, without its busy timeout; the open must wait for it, not fail."""
    db = tmp_path / "new.db"
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another process, half way through preparing it
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, holder.execute, "COMMIT")
    store = SQLiteStore(str(db))
    started = time.monotonic()
    try:
        await store.open()
        assert await store.burn("t-1", 4102444800.0) is BurnResult.BURNED
        await store.close()
    finally:
        holder.close()
    assert 0.3 <= time.monotonic() - started < 5


async def test_an_open_keeps_no_thread_but_its_writer_and_reader(tmp_path: Path) -> None:
    """The schema is prepared in the writer's own thread: a thread of the loop's default
    executor would stay idle for the process's life (its stack and malloc arena, ~0.15 MiB
    of a serving process)."""
    before = set(threading.enumerate())
    store = SQLiteStore(str(tmp_path / "threads.db"))
    await store.open()
    try:
        assert await store.burn("t-1", 4102444800.0) is BurnResult.BURNED
        new = sorted(t.name for t in set(threading.enumerate()) - before)
    finally:
        await store.close()
    assert len(new) == 2, new  # the group-commit writer and aiosqlite's reader
    assert not any(name.startswith("asyncio") for name in new), new


async def test_a_cancelled_stop_refuses_every_queued_write(tmp_path: Path) -> None:
    """stop() cancelled while a batch is in the writer's thread: that batch and every op
    queued behind it get StoreUnavailable, none waits for ever, and no write is taken
    after."""
    writer = GroupCommitWriter(str(tmp_path / "cancelled.db"))
    await writer.start()
    in_thread, release = threading.Event(), threading.Event()

    def slow(conn: sqlite3.Connection) -> int:
        in_thread.set()
        release.wait(10)
        return 1

    try:
        first = asyncio.ensure_future(writer.write(slow))
        assert await asyncio.to_thread(in_thread.wait, 10)
        queued = [asyncio.ensure_future(writer.write(lambda conn: 2)) for _ in range(10)]
        await asyncio.sleep(0)  # each is queued behind the batch in the thread
        stopping = asyncio.ensure_future(writer.stop())
        await asyncio.sleep(0.05)
        stopping.cancel()
        async with asyncio.timeout(10):
            answers = await asyncio.gather(first, *queued, stopping, return_exceptions=True)
    finally:
        release.set()
    assert all(isinstance(a, StoreUnavailable) for a in answers[:-1]), answers
    assert isinstance(answers[-1], asyncio.CancelledError)
    try:
        await writer.write(lambda conn: 3)
    except StoreUnavailable:
        pass
    else:
        raise AssertionError("a write was taken after the writer stopped")
