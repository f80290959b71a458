"""Group commit for SQLite: many concurrent writes, one transaction, one fsync.

With WAL and ``synchronous=FULL`` every commit costs an fsync, which caps
commit-per-write at a few thousand writes a second. :class:`GroupCommitWriter` owns the
only writing connection; a single task drains its queue, runs everything it found in ONE
transaction, commits once and only then answers the callers. A caller is therefore
answered only after its write is durable.

Burns, and the ops of one *grouped* kind (:meth:`GroupCommitWriter.grouped`: a mint's
rate-limit hit and record), run as runs of consecutive ops: one statement (or one read and
one write of a counter) for the run, not one per op, in the order they were queued.

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
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, Generic, Protocol, TypeVar

from sidecar.store.base import BurnResult, StoreUnavailable, TokenState, UserExists

T = TypeVar("T")
A = TypeVar("A")
Params = tuple[str | float | int | None, ...]
Row = tuple[str, Params]  # a statement that writes one row, and its parameters
Answer = Callable[[], None]

_MAX_BATCH = 2048
_BURN_CHUNK = 500  # ids per IN (...) query, well under SQLite's variable limit


def fetchone(conn: sqlite3.Connection, sql: str, params: Params = ()) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(sql, params).fetchone()
    return row


def statement(sql: str, params: Params) -> Callable[[sqlite3.Connection], int]:
    """A write op of one statement; it answers with the number of rows changed."""
    return lambda conn: conn.execute(sql, params).rowcount


def _settle(future: asyncio.Future[T], result: T) -> None:
    if not future.done():  # the caller may have given up (cancelled); the write stands
        future.set_result(result)


class _Op(Protocol):
    def run(self, conn: sqlite3.Connection) -> Answer:
        """Do the op inside the open transaction (writer thread); return what answers the
        caller (called on the event loop after the commit)."""

    def fail(self, exc: BaseException) -> None: ...


# Plain classes, not dataclasses(slots=True): a slotted dataclass is a new class made after
# the fact, which a compiled (mypyc) class cannot be.
class _Write(Generic[T]):
    __slots__ = ("apply", "future")

    def __init__(self, apply: Callable[[sqlite3.Connection], T], future: asyncio.Future[T]) -> None:
        self.apply = apply
        self.future = future

    def run(self, conn: sqlite3.Connection) -> Answer:
        try:
            result = self.apply(conn)
        except UserExists as exc:
            return functools.partial(self.fail, exc)
        return functools.partial(_settle, self.future, result)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class _Grouped(Generic[A, T]):
    """One op of a grouped kind: ``apply(conn, args)`` runs a run of consecutive ops of the
    same ``apply`` (their ``arg``, in order) and answers one result per op, in order."""

    __slots__ = ("apply", "arg", "future")

    def __init__(
        self,
        apply: Callable[[sqlite3.Connection, list[A]], list[T]],
        arg: A,
        future: asyncio.Future[T],
    ) -> None:
        self.apply = apply
        self.arg = arg
        self.future = future

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


_AnyGrouped = _Grouped[Any, Any]


def _group_run(conn: sqlite3.Connection, ops: list[_AnyGrouped]) -> list[Answer]:
    results = ops[0].apply(conn, [op.arg for op in ops])
    if len(results) != len(ops):  # a broken op: the batch fails, then each op alone
        raise RuntimeError(f"a grouped op answered {len(results)} results for {len(ops)} ops")
    return [
        functools.partial(_settle, op.future, result)
        for op, result in zip(ops, results, strict=True)
    ]


class _Burn:
    """Burns are batched apart from other ops: two statements per chunk, not two per id.

    ``then`` (a row: a redemption's session) is written in the same transaction when, and
    only when, this op burned the token: one commit for both."""

    __slots__ = ("expires_at", "future", "then", "token_id")

    def __init__(
        self,
        token_id: str,
        expires_at: float,
        future: asyncio.Future[BurnResult],
        then: Row | None = None,
    ) -> None:
        self.token_id = token_id
        self.expires_at = expires_at
        self.future = future
        self.then = then

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


# Looked up once: an Enum member is a class attribute found through the enum's metaclass,
# its .value a Python property; the four lookups a burn made cost ~3.5k instructions.
_USED: Final = TokenState.USED.value
_REVOKED: Final = TokenState.REVOKED.value
_BURNED: Final = BurnResult.BURNED
_REVOKED_RESULT: Final = BurnResult.REVOKED
_ALREADY_USED: Final = BurnResult.ALREADY_USED


def _burn_chunk(conn: sqlite3.Connection, burns: list[_Burn]) -> list[Answer]:
    ids = tuple(dict.fromkeys(b.token_id for b in burns))
    marks = ",".join("?" * len(ids))
    rows = conn.execute(f"SELECT id, state FROM tokens WHERE id IN ({marks})", ids)  # noqa: S608
    states = {str(row[0]): str(row[1]) for row in rows}
    fresh: dict[str, float] = {}
    answers: list[Answer] = []
    followers: list[Row] = []
    for burn in burns:
        state = states.get(burn.token_id)
        if state is None:
            states[burn.token_id] = _USED
            fresh[burn.token_id] = burn.expires_at
            result = _BURNED
            if burn.then is not None:
                followers.append(burn.then)
        elif state == _REVOKED:
            result = _REVOKED_RESULT
        else:
            result = _ALREADY_USED
        answers.append(functools.partial(_settle, burn.future, result))
    if fresh:  # one multi-row INSERT: one statement step for the chunk, not one per id
        at = time.time()  # when the store recorded the burn (GET /tokens/{id} "used_at")
        values = ",".join("(?, 'used', ?, ?)" for _ in fresh)
        params = tuple(item for pair in fresh.items() for item in (*pair, at))
        # OR ROLLBACK: a constraint failure ends the whole transaction, which _transaction
        # rolls back anyway, so SQLite keeps no statement journal to undo this statement
        # alone. That journal holds every page the INSERT changes; past 64 KiB (a batch's
        # burns on 16 pages or more) it spilled to a temporary file, created, written and
        # deleted in every such transaction: ~1.2 pwrite64 per burn and an inode made and
        # freed per batch, under the bench's redemptions.
        sql = f"INSERT OR ROLLBACK INTO tokens (id, state, expires_at, at) VALUES {values}"  # noqa: S608
        conn.execute(sql, params)
    if followers:  # after the burns: a session row never precedes its burn
        write_rows(conn, followers)
    return answers


def write_rows(conn: sqlite3.Connection, rows: list[Row]) -> None:
    """Write ``rows`` in order, consecutive rows of one statement by one ``executemany``:
    one cursor and one statement-cache lookup for them all, the statement bound again for
    each row (a redemption's session costs the writer ~4k instructions less than its own
    ``execute``). One statement text, whatever the batch's size: sqlite3's statement cache
    gets no new entries."""
    start, count = 0, len(rows)
    while start < count:
        sql = rows[start][0]
        end = start + 1
        while end < count and rows[end][0] == sql:
            end += 1
        conn.executemany(sql, [params for _, params in rows[start:end]])
        start = end


class WholeBatchFailed(Exception):
    """BEGIN or COMMIT failed (a locked or broken file): no op is to blame, so the batch
    fails as one instead of being replayed op by op, each waiting out the busy timeout."""


def _transaction(conn: sqlite3.Connection, batch: list[_Op | _Burn | _AnyGrouped]) -> list[Answer]:
    """Run in the writer thread: the whole batch in one transaction, one commit."""
    answers: list[Answer] = []
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise WholeBatchFailed(exc) from exc
    try:
        # A run of burns, or of grouped ops of one kind, is flushed before the next op of
        # any other kind: a revoke queued after a burn sees it, a counter read after a
        # grouped hit counts it.
        burns: list[_Burn] = []
        group: list[_AnyGrouped] = []
        for op in batch:
            if isinstance(op, _Burn):
                if group:
                    answers += _group_run(conn, group)
                    group = []
                burns.append(op)
                if len(burns) >= _BURN_CHUNK:
                    answers += _burn_chunk(conn, burns)
                    burns = []
                continue
            if burns:
                answers += _burn_chunk(conn, burns)
                burns = []
            if isinstance(op, _Grouped):
                if group and group[0].apply is not op.apply:
                    answers += _group_run(conn, group)
                    group = []
                group.append(op)
                continue
            if group:
                answers += _group_run(conn, group)
                group = []
            answers.append(op.run(conn))
        if burns:
            answers += _burn_chunk(conn, burns)
        if group:
            answers += _group_run(conn, group)
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise WholeBatchFailed(exc) from exc
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.rollback()
        raise
    return answers


def _connect(path: str, prepare: Callable[[str], None] | None) -> sqlite3.Connection:
    if prepare is not None:
        prepare(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA synchronous = FULL")
    return conn


class GroupCommitWriter:
    """The single writer of one SQLite file.

    Its connection lives in a dedicated thread, and a whole batch runs there in one hop:
    going back to the event loop between statements (as aiosqlite would) leaves the
    transaction waiting behind every other task and halves the throughput.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._conn: sqlite3.Connection | None = None
        # The ops waiting for the next transaction (None: stop), and what wakes the loop
        # when it waits for one. Not an asyncio.Queue: its put and get are pure Python
        # (its counters, its finished event), a few thousand instructions for every write.
        self._pending: deque[_Op | _Burn | _AnyGrouped | None] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        # The loop it writes for (set by start): asyncio.get_running_loop() costs a
        # getpid() system call on Python 3.11, and every burn needs the loop.
        self._event_loop: asyncio.AbstractEventLoop | None = None

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def start(self, prepare: Callable[[str], None] | None = None) -> None:
        """Open the connection (may raise :class:`sqlite3.Error`) and start writing;
        ``prepare(path)`` runs first, in the writer's thread (not a thread of the loop's
        default executor, which would stay for the process's life: ~0.15 MiB)."""
        self._event_loop = asyncio.get_running_loop()
        try:
            self._conn = await self._in_thread(functools.partial(_connect, self._path, prepare))
        except BaseException:
            await asyncio.to_thread(self._executor.shutdown)
            raise
        self._task = asyncio.create_task(self._loop(), name="sqlite-group-commit")

    async def stop(self) -> None:
        """Refuse new writes, finish the queued ones, close the connection."""
        task, self._task = self._task, None
        if task is not None:
            self._put(None)
            await task
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._in_thread(conn.close)
        await asyncio.to_thread(self._executor.shutdown)

    def write(self, apply: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Run ``apply`` (in the writer thread) in the next group transaction; the future
        has its result once committed. A future, not a coroutine: one coroutine level
        fewer on every write (a mint's store call awaits it directly)."""
        future: asyncio.Future[T] = self._new_future()
        self._enqueue(_Write(apply, future))
        return future

    def grouped(
        self, apply: Callable[[sqlite3.Connection, list[A]], list[T]], arg: A
    ) -> asyncio.Future[T]:
        """Run ``arg`` in the next group transaction through ``apply``, which takes the
        args of the consecutive ops queued with the same ``apply`` (``arg`` among them, in
        queue order) and answers one result each: many ops' statements run as one (a
        mint's rate-limit hit: one read and one write of the counter for the run). The
        future has this op's result once committed. ``apply`` fails the run as a whole;
        the ops are then retried one by one, as any op that breaks a batch."""
        future: asyncio.Future[T] = self._new_future()
        self._enqueue(_Grouped(apply, arg, future))
        return future

    def burn(
        self,
        token_id: str,
        expires_at: float,
        then: Row | None = None,
    ) -> asyncio.Future[BurnResult]:
        """Burn ``token_id`` in the next group transaction; if this call burned it, write
        the row ``then`` in that same transaction. A future, as :meth:`write`'s (every
        redemption's store call awaits it directly)."""
        future: asyncio.Future[BurnResult] = self._new_future()
        self._enqueue(_Burn(token_id, expires_at, future, then))
        return future

    def _new_future(self) -> asyncio.Future[T]:
        if self._task is None or self._event_loop is None:
            raise StoreUnavailable("SQLite store is not open")
        return self._event_loop.create_future()

    def _enqueue(self, op: _Op | _Burn | _AnyGrouped) -> None:
        task = self._task
        if task is None or task.done():  # done: stopped, or cancelled with its loop
            raise StoreUnavailable("SQLite store is not open")
        self._put(op)

    def _put(self, item: _Op | _Burn | _AnyGrouped | None) -> None:
        self._pending.append(item)
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def _loop(self) -> None:
        pending, loop = self._pending, asyncio.get_running_loop()
        stopping = False
        try:
            while not stopping:
                while not pending:
                    wakeup = self._wakeup = loop.create_future()
                    await wakeup
                # Everything queued by now (at most _MAX_BATCH), up to a stop.
                batch: list[_Op | _Burn | _AnyGrouped] = []
                while pending and len(batch) < _MAX_BATCH:
                    item = pending.popleft()
                    if item is None:
                        stopping = True
                        break
                    batch.append(item)
                if batch:
                    await self._commit(batch)
        finally:
            # Cancelled (a stop() itself cancelled, the loop shutting down): the ops still
            # queued behind the batch are refused, not left waiting for ever. A stop that
            # ends normally has answered them all.
            while pending:
                item = pending.popleft()
                if item is not None:
                    item.fail(StoreUnavailable("SQLite store closed before this write"))

    async def _commit(self, batch: list[_Op | _Burn | _AnyGrouped]) -> None:
        conn = self._conn
        try:
            if conn is None:
                raise StoreUnavailable("SQLite store is not open")
            answers = await self._in_thread(functools.partial(_transaction, conn, batch))
        except asyncio.CancelledError:
            for op in batch:
                op.fail(StoreUnavailable("SQLite store closed mid-write"))
            raise
        # One name per handler: compiled (mypyc), a name holds the first handler's type.
        except WholeBatchFailed as whole:
            for op in batch:
                error = StoreUnavailable(f"SQLite write failed: {whole.__cause__}")
                error.__cause__ = whole.__cause__
                op.fail(error)
            return
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
