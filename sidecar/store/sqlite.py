"""SQLite backend: the embedded default, one file, nothing to install.

Writes go through a :class:`GroupCommitWriter` (WAL, ``synchronous=FULL``, group commit,
its own thread; see ``_groupcommit``). Reads use a separate aiosqlite connection, which
WAL lets run while the writer commits. A background task purges expired rows. The tables,
their migration and the purge statements are :mod:`sidecar.store.sqlite_schema`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import aiosqlite

from sidecar.store import _codec
from sidecar.store._groupcommit import GroupCommitWriter, Params, fetchone, statement
from sidecar.store.base import (
    BurnResult,
    PendingLink,
    Persistence,
    SessionRecord,
    Store,
    StoreUnavailable,
    TokenRecord,
    TokenState,
    TokenUse,
    User,
    UserExists,
)
from sidecar.store.sqlite_schema import (
    PURGE_CHUNK,
    PURGES,
    CountedMint,
    count_and_record,
    count_hit,
    mint_record,
    prepare_file,
    session_row,
)

T = TypeVar("T")
log = logging.getLogger(__name__)
Conn = sqlite3.Connection
_SQLITE_ERRORS = (sqlite3.Error, ValueError, OSError)  # ValueError: aiosqlite's "closed"
_OPEN_WAIT = 10.0  # seconds an open may wait for other processes opening the same file


class SQLiteStore(Store):
    """A :class:`~sidecar.store.base.Store` in one SQLite file (created if missing).

    Several processes may share the file: the check-and-write of every op runs in a
    ``BEGIN IMMEDIATE`` transaction, so exactly-once burns hold across them too.
    """

    def __init__(self, path: str, *, purge_interval: float = 60.0) -> None:
        if not purge_interval > 0:
            raise ValueError(f"purge_interval must be > 0 seconds, got {purge_interval!r}")
        self._path = path
        self._purge_interval = purge_interval
        self._writer: GroupCommitWriter | None = None
        self._reader: aiosqlite.Connection | None = None
        self._purge_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"SQLiteStore({self._path!r})"

    # -- lifetime ---------------------------------------------------------------------
    async def open(self) -> None:
        """Create the file and schema if missing, start the writer and the purge task.

        Processes opening one new file at once (``serve --workers``) can meet SQLite's lock
        on the journal-mode switch or the schema, which it reports at once instead of
        waiting: such an open is tried again, for at most :data:`_OPEN_WAIT` seconds."""
        deadline = time.monotonic() + _OPEN_WAIT
        while True:
            try:
                self._reader, self._writer = await self._open_once()
                break
            except StoreUnavailable as exc:
                cause = exc.__cause__
                locked = isinstance(cause, sqlite3.OperationalError) and (
                    "locked" in str(cause) or "busy" in str(cause)
                )
                if not locked or time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.05)
        self._purge_task = asyncio.create_task(self._purge_loop(), name="sqlite-purge")

    async def _open_once(self) -> tuple[aiosqlite.Connection, GroupCommitWriter]:
        writer = GroupCommitWriter(self._path)
        reader: aiosqlite.Connection | None = None
        try:
            # Plain sqlite3 first: a file aiosqlite cannot open leaves its worker thread
            # answering into a loop that may be gone.
            await writer.start(prepare_file)
            reader = await aiosqlite.connect(self._path, isolation_level=None)
            reader.row_factory = sqlite3.Row
            await reader.execute("PRAGMA busy_timeout = 5000")
            await reader.execute("PRAGMA query_only = ON")
        except _SQLITE_ERRORS as exc:
            await writer.stop()
            if reader is not None:
                await reader.close()
            raise StoreUnavailable(f"cannot open SQLite store {self._path!r}: {exc}") from exc
        return reader, writer

    async def close(self) -> None:
        """Finish queued writes, stop the tasks, close both connections."""
        purge_task, self._purge_task = self._purge_task, None
        if purge_task is not None:
            purge_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await purge_task
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.stop()
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(*_SQLITE_ERRORS):
                await reader.close()

    async def ping(self) -> None:
        await self._read("SELECT 1")
        await self._write(statement("SELECT 1", ()))

    async def persistence(self) -> Persistence:
        # Every acknowledged write was committed with synchronous=FULL; whether the file
        # itself outlives the process is the deployment's business (durability_warnings).
        return Persistence(True, "SQLite, WAL, synchronous=FULL")

    async def _write(self, apply: Callable[[Conn], T]) -> T:
        if self._writer is None:
            raise StoreUnavailable("SQLite store is not open")
        return await self._writer.write(apply)

    async def _purge_loop(self) -> None:
        while True:
            await asyncio.sleep(self._purge_interval)
            try:
                removed = await self.purge_expired(time.time())
            except StoreUnavailable as exc:
                log.warning("purging expired records failed: %s", exc)
            else:
                log.debug("purged %d expired records", removed)

    async def _read(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        if self._reader is None:
            raise StoreUnavailable("SQLite store is not open")
        try:
            return list(await self._reader.execute_fetchall(sql, params))
        except _SQLITE_ERRORS as exc:
            raise StoreUnavailable(f"SQLite read failed: {exc}") from exc

    async def _read_one(self, sql: str, params: Params = ()) -> dict[str, object] | None:
        rows = await self._read(sql, params)
        return dict(rows[0]) if rows else None

    # -- one-time tokens --------------------------------------------------------------
    async def burn(
        self, token_id: str, expires_at: float, session: SessionRecord | None = None
    ) -> BurnResult:
        if self._writer is None:
            raise StoreUnavailable("SQLite store is not open")
        then = None if session is None else session_row(session)
        return await self._writer.burn(token_id, expires_at, then)

    async def revoke(self, token_id: str, expires_at: float) -> TokenState:
        def apply(conn: Conn) -> TokenState:
            row = fetchone(conn, "SELECT state FROM tokens WHERE id = ?", (token_id,))
            if row is not None:
                return TokenState(row[0])
            conn.execute(
                "INSERT INTO tokens (id, state, expires_at, at) VALUES (?, 'revoked', ?, ?)",
                (token_id, expires_at, time.time()),
            )
            return TokenState.UNUSED

        return await self._write(apply)

    async def token_state(self, token_id: str) -> TokenState:
        rows = await self._read("SELECT state FROM tokens WHERE id = ?", (token_id,))
        return TokenState(rows[0][0]) if rows else TokenState.UNUSED

    async def token_use(self, token_id: str) -> TokenUse:
        rows = await self._read("SELECT state, at FROM tokens WHERE id = ?", (token_id,))
        if not rows:
            return TokenUse(TokenState.UNUSED)
        at = rows[0][1]
        return TokenUse(TokenState(rows[0][0]), None if at is None else float(at))

    # -- minted-link records ----------------------------------------------------------
    async def record_token(self, record: TokenRecord, keep_until: float) -> None:
        await self._write(statement(*mint_record(record, keep_until)))

    async def record_counted(
        self,
        record: TokenRecord,
        keep_until: float,
        key: str,
        window: float,
        limit: int,
        now: float,
    ) -> tuple[int, float]:
        reset = _codec.window_reset(window, now)
        writer = self._writer  # not through _write: one coroutine fewer on every mint
        if writer is None:
            raise StoreUnavailable("SQLite store is not open")
        # Grouped: the mints of one transaction read and write their counter once.
        mint: CountedMint = (key, reset, limit, mint_record(record, keep_until))
        return await writer.grouped(count_and_record, mint), reset

    async def get_token(self, token_id: str) -> TokenRecord | None:
        sql = "SELECT * FROM token_records WHERE token_id = ?"
        row = await self._read_one(sql, (token_id,))
        return None if row is None else _codec.token_from_fields(row)

    async def list_user_tokens(
        self, user_id: str, limit: int, after: tuple[float, str] | None = None
    ) -> list[TokenRecord]:
        if after is None:
            sql = (
                "SELECT * FROM token_records WHERE user_id = ?"
                " ORDER BY created_at DESC, token_id DESC LIMIT ?"
            )
            rows = await self._read(sql, (user_id, limit))
        else:
            sql = (
                "SELECT * FROM token_records WHERE user_id = ?1"
                " AND (created_at < ?2 OR (created_at = ?2 AND token_id < ?3))"
                " ORDER BY created_at DESC, token_id DESC LIMIT ?4"
            )
            rows = await self._read(sql, (user_id, after[0], after[1], limit))
        return [_codec.token_from_fields(dict(row)) for row in rows]

    # -- sessions ---------------------------------------------------------------------
    async def create_session(self, session: SessionRecord) -> None:
        await self._write(_insert_session(session))

    async def list_user_sessions(self, user_id: str) -> list[SessionRecord]:
        sql = "SELECT * FROM sessions WHERE user_id = ? ORDER BY created_at, key"
        rows = await self._read(sql, (user_id,))
        return [_codec.session_from_fields(dict(row)) for row in rows]

    async def get_session(self, key: str) -> SessionRecord | None:
        row = await self._read_one("SELECT * FROM sessions WHERE key = ?", (key,))
        return None if row is None else _codec.session_from_fields(row)

    async def touch_session(self, key: str, last_seen: float) -> None:
        # SET expressions see the old last_seen, hence MAX twice.
        sql = (
            "UPDATE sessions SET last_seen = MAX(last_seen, ?1),"
            " dead_at = MIN(expires_at, MAX(last_seen, ?1) + idle_timeout) WHERE key = ?2"
        )
        await self._write(statement(sql, (last_seen, key)))

    async def delete_session(self, key: str) -> bool:
        return await self._write(statement("DELETE FROM sessions WHERE key = ?", (key,))) > 0

    async def delete_user_sessions(self, user_id: str) -> int:
        return await self._write(statement("DELETE FROM sessions WHERE user_id = ?", (user_id,)))

    async def delete_token_sessions(self, token_id: str) -> int:
        return await self._write(statement("DELETE FROM sessions WHERE token_id = ?", (token_id,)))

    # -- users ------------------------------------------------------------------------
    async def create_user(self, user: User) -> None:
        key = _codec.email_key(user.email)

        def apply(conn: Conn) -> None:
            sql = "SELECT 1 FROM users WHERE id = ? OR email_key = ?"
            if fetchone(conn, sql, (user.id, key)) is not None:
                raise UserExists("a user with this email already exists")
            conn.execute(
                "INSERT INTO users VALUES (?,?,?,?,?,?,?,?)",
                (user.id, user.email, key, *_user_columns(user)),
            )

        await self._write(apply)

    async def update_user(self, user: User) -> None:
        key = _codec.email_key(user.email)

        def apply(conn: Conn) -> None:
            sql = "SELECT 1 FROM users WHERE email_key = ? AND id != ?"
            if fetchone(conn, sql, (key, user.id)) is not None:
                raise UserExists("a user with this email already exists")
            conn.execute(
                "UPDATE users SET email = ?, email_key = ?, created_at = ?, confirmed_at = ?,"
                " invited_at = ?, password_hash = ?, metadata = ? WHERE id = ?",
                (user.email, key, *_user_columns(user), user.id),
            )

        await self._write(apply)

    async def get_user(self, user_id: str) -> User | None:
        return _user(await self._read_one("SELECT * FROM users WHERE id = ?", (user_id,)))

    async def get_user_by_email(self, email: str) -> User | None:
        sql = "SELECT * FROM users WHERE email_key = ?"
        return _user(await self._read_one(sql, (_codec.email_key(email),)))

    # -- pending auth links -----------------------------------------------------------
    async def put_link(self, link: PendingLink) -> None:
        params = (
            link.user_id, link.link_type, link.token_id, link.hashed_token, link.otp_hash,
            link.expires_at, link.new_email, link.failed_attempts,
        )  # fmt: skip
        await self._write(
            statement("INSERT OR REPLACE INTO links VALUES (?,?,?,?,?,?,?,?)", params)
        )

    async def get_link(self, user_id: str, link_type: str) -> PendingLink | None:
        sql = "SELECT * FROM links WHERE user_id = ? AND link_type = ?"
        row = await self._read_one(sql, (user_id, link_type))
        return None if row is None else _codec.link_from_fields(row)

    async def get_link_by_hash(self, hashed_token: str) -> PendingLink | None:
        sql = "SELECT * FROM links WHERE hashed_token = ? ORDER BY expires_at DESC LIMIT 1"
        row = await self._read_one(sql, (hashed_token,))
        return None if row is None else _codec.link_from_fields(row)

    async def record_failed_attempt(self, user_id: str, link_type: str) -> int:
        def apply(conn: Conn) -> int:
            sql = (
                "UPDATE links SET failed_attempts = failed_attempts + 1"
                " WHERE user_id = ? AND link_type = ? RETURNING failed_attempts"
            )
            row = fetchone(conn, sql, (user_id, link_type))
            return 0 if row is None else int(row[0])

        return await self._write(apply)

    async def delete_link(self, user_id: str, link_type: str) -> None:
        sql = "DELETE FROM links WHERE user_id = ? AND link_type = ?"
        await self._write(statement(sql, (user_id, link_type)))

    # -- rate limits ------------------------------------------------------------------
    async def hit(self, key: str, window: float, now: float) -> tuple[int, float]:
        reset = _codec.window_reset(window, now)
        return await self._write(lambda conn: count_hit(conn, key, reset)), reset

    # -- housekeeping -----------------------------------------------------------------
    async def purge_expired(self, now: float) -> int:
        removed = 0
        for sql in PURGES:
            while True:
                count = await self._write(statement(sql, (now, PURGE_CHUNK)))
                removed += count
                if count < PURGE_CHUNK:
                    break
        return removed


def _insert_session(s: SessionRecord) -> Callable[[Conn], int]:
    return statement(*session_row(s))


def _user_columns(user: User) -> Iterable[str | float | None]:
    metadata = _codec.dump_json(user.metadata)
    return (user.created_at, user.confirmed_at, user.invited_at, user.password_hash, metadata)


def _user(row: dict[str, object] | None) -> User | None:
    if row is None:
        return None
    return User(
        id=_codec.get_str(row, "id"),
        email=_codec.get_str(row, "email"),
        created_at=_codec.get_float(row, "created_at"),
        confirmed_at=_codec.get_opt_float(row, "confirmed_at"),
        invited_at=_codec.get_opt_float(row, "invited_at"),
        password_hash=_codec.get_opt_str(row, "password_hash"),
        metadata=_codec.load_object(_codec.get_str(row, "metadata")),
    )
