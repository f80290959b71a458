"""Group commit for SQLite: many concurrent writes, one transaction, one fsync.

With WAL and ``synchronous=FULL`` every commit costs an fsync, which caps
commit-per-write at a few thousand writes a second. :class:`GroupCommitWriter` owns the
only writing connection; a single task drains its queue, runs everything it found in ONE
transaction, commits once and only then answers the callers. A caller is therefore
answered only after its write is durable.

If SQLite fails, the batch is rolled back and each op is retried alone, so one bad op
cannot fail its neighbours and nothing is half-written. Ops may raise
:class:`UserExists` only *before* they write anything: such a refusal answers that
caller and does not abort the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import aiosqlite

from sidecar.store.base import BurnResult, StoreUnavailable, TokenState, UserExists

T = TypeVar("T")
Conn = aiosqlite.Connection
Params = tuple[str | float | int | None, ...]
Answer = Callable[[], None]

SQLITE_ERRORS = (sqlite3.Error, ValueError, OSError)  # ValueError: aiosqlite's "closed"
_MAX_BATCH = 2048
_BURN_CHUNK = 500  # ids per IN (...) query, well under SQLite's variable limit


async def fetchall(conn: Conn, sql: str, params: Params = ()) -> list[sqlite3.Row]:
    return list(await conn.execute_fetchall(sql, params))


async def fetchone(conn: Conn, sql: str, params: Params = ()) -> sqlite3.Row | None:
    rows = await fetchall(conn, sql, params)
    return rows[0] if rows else None


def statement(sql: str, params: Params) -> Callable[[Conn], Awaitable[int]]:
    """A write op of one statement; it answers with the number of rows changed."""

    async def apply(conn: Conn) -> int:
        async with conn.execute(sql, params) as cursor:
            return cursor.rowcount

    return apply


def _settle(future: asyncio.Future[T], result: T) -> None:
    if not future.done():  # the caller may have given up (cancelled); the write stands
        future.set_result(result)


class _Op(Protocol):
    async def run(self, conn: Conn) -> Answer:
        """Do the op inside the open transaction; return what answers the caller."""

    def fail(self, exc: BaseException) -> None: ...


@dataclass(slots=True)
class _Write(Generic[T]):
    apply: Callable[[Conn], Awaitable[T]]
    future: asyncio.Future[T]

    async def run(self, conn: Conn) -> Answer:
        try:
            result = await self.apply(conn)
        except UserExists as exc:
            return functools.partial(self.fail, exc)
        return functools.partial(_settle, self.future, result)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


@dataclass(slots=True)
class _Burn:
    """Burns are batched apart from other ops: two statements per chunk, not two per id."""

    token_id: str
    expires_at: float
    future: asyncio.Future[BurnResult]

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


async def _burn_chunk(conn: Conn, burns: list[_Burn]) -> list[Answer]:
    ids = tuple(dict.fromkeys(b.token_id for b in burns))
    marks = ",".join("?" * len(ids))
    rows = await fetchall(conn, f"SELECT id, state FROM tokens WHERE id IN ({marks})", ids)  # noqa: S608
    states = {str(row[0]): str(row[1]) for row in rows}
    fresh: dict[str, float] = {}
    answers: list[Answer] = []
    for burn in burns:
        state = states.get(burn.token_id)
        if state is None:
            states[burn.token_id] = TokenState.USED.value
            fresh[burn.token_id] = burn.expires_at
            result = BurnResult.BURNED
        elif state == TokenState.REVOKED.value:
            result = BurnResult.REVOKED
        else:
            result = BurnResult.ALREADY_USED
        answers.append(functools.partial(_settle, burn.future, result))
    sql = "INSERT INTO tokens (id, state, expires_at) VALUES (?, 'used', ?)"
    await conn.executemany(sql, fresh.items())
    return answers


class GroupCommitWriter:
    """The single writer of one SQLite connection (opened in autocommit mode)."""

    def __init__(self, conn: Conn) -> None:
        self._conn = conn
        self._queue: asyncio.Queue[_Op | _Burn | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="sqlite-group-commit")

    async def stop(self) -> None:
        """Refuse new writes, finish the queued ones."""
        task, self._task = self._task, None
        if task is not None:
            self._queue.put_nowait(None)
            await task

    async def write(self, apply: Callable[[Conn], Awaitable[T]]) -> T:
        """Run ``apply`` in the next group transaction; return its result once committed."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._enqueue(_Write(apply, future))
        return await future

    async def burn(self, token_id: str, expires_at: float) -> BurnResult:
        future: asyncio.Future[BurnResult] = asyncio.get_running_loop().create_future()
        self._enqueue(_Burn(token_id, expires_at, future))
        return await future

    def _enqueue(self, op: _Op | _Burn) -> None:
        if self._task is None:
            raise StoreUnavailable("SQLite store is not open")
        self._queue.put_nowait(op)

    async def _loop(self) -> None:
        stopping = False
        while not stopping:
            batch: list[_Op | _Burn] = []
            item = await self._queue.get()
            while item is not None:
                batch.append(item)
                if len(batch) >= _MAX_BATCH or self._queue.empty():
                    break
                item = self._queue.get_nowait()
            stopping = item is None
            if batch:
                await self._commit(batch)

    async def _commit(self, batch: list[_Op | _Burn]) -> None:
        try:
            answers = await self._transaction(batch)
        except asyncio.CancelledError:
            for op in batch:
                op.fail(StoreUnavailable("SQLite store closed mid-write"))
            raise
        except Exception as exc:  # every failure, even a bug, must reach the callers
            if len(batch) > 1:
                for op in batch:  # isolate the op that broke the batch
                    await self._commit([op])
                return
            error = StoreUnavailable(f"SQLite write failed: {exc}")
            error.__cause__ = exc
            batch[0].fail(error)
            return
        for answer in answers:
            answer()

    async def _transaction(self, batch: list[_Op | _Burn]) -> list[Answer]:
        conn = self._conn
        answers: list[Answer] = []
        await conn.execute("BEGIN IMMEDIATE")
        try:
            burns: list[_Burn] = []
            for op in batch:
                if isinstance(op, _Burn):
                    burns.append(op)
                    if len(burns) < _BURN_CHUNK:
                        continue
                if burns:  # flushed before the next op: a revoke queued after a burn sees it
                    answers += await _burn_chunk(conn, burns)
                    burns = []
                if not isinstance(op, _Burn):
                    answers.append(await op.run(conn))
            if burns:
                answers += await _burn_chunk(conn, burns)
            await conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(*SQLITE_ERRORS):
                await conn.rollback()
            raise
        return answers
