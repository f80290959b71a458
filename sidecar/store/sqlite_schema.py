"""The SQLite store's file: its tables, the columns later versions added (migrated on
open), and the bounded purges of expired rows. No I/O but :func:`prepare_file`'s
and the statements the ops run on the connection they are given.
"""

from __future__ import annotations

import itertools
import sqlite3

from sidecar.store import _codec
from sidecar.store._groupcommit import Row, write_rows
from sidecar.store.base import SessionRecord, TokenRecord

PURGE_CHUNK = 5000  # rows per purge transaction, so burns are never stalled for long

SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, state TEXT NOT NULL, expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tokens_expires_at ON tokens (expires_at);
CREATE TABLE IF NOT EXISTS sessions (
    key TEXT PRIMARY KEY, user_id TEXT NOT NULL, role TEXT NOT NULL, params TEXT NOT NULL,
    created_at REAL NOT NULL, expires_at REAL NOT NULL, idle_timeout REAL NOT NULL,
    last_seen REAL NOT NULL, token_id TEXT NOT NULL, email TEXT, module TEXT,
    dead_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_user_id ON sessions (user_id);
CREATE INDEX IF NOT EXISTS sessions_token_id ON sessions (token_id);
CREATE INDEX IF NOT EXISTS sessions_dead_at ON sessions (dead_at);
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY, email TEXT NOT NULL, email_key TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL, confirmed_at REAL, invited_at REAL, password_hash TEXT,
    metadata TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS links (
    user_id TEXT NOT NULL, link_type TEXT NOT NULL, token_id TEXT NOT NULL,
    hashed_token TEXT NOT NULL, otp_hash TEXT NOT NULL, expires_at REAL NOT NULL,
    new_email TEXT, failed_attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, link_type)
);
CREATE INDEX IF NOT EXISTS links_hashed_token ON links (hashed_token);
CREATE INDEX IF NOT EXISTS links_expires_at ON links (expires_at);
CREATE TABLE IF NOT EXISTS token_records (
    token_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, kind TEXT NOT NULL, role TEXT NOT NULL,
    created_at REAL NOT NULL, expires_at REAL NOT NULL, one_time INTEGER NOT NULL,
    email TEXT, module TEXT, keep_until REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS token_records_user
    ON token_records (user_id, created_at, token_id);
CREATE INDEX IF NOT EXISTS token_records_keep_until ON token_records (keep_until);
CREATE TABLE IF NOT EXISTS ratelimits (
    key TEXT PRIMARY KEY, count INTEGER NOT NULL, reset_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ratelimits_reset_at ON ratelimits (reset_at);
COMMIT;
"""

# Columns added after version 1, as (table, column, declaration). A file written by an
# older release gets them on open; their rows read back as NULL.
_ADDED_COLUMNS = (
    ("tokens", "at", "REAL"),  # when the token was burned or revoked (store clock)
    ("sessions", "client", "TEXT"),  # the address a session was started from
)
_USER_VERSION = 2

# Bounded deletes (see PURGE_CHUNK); table and column names are constants.
# A burn record outlives its token by 5 minutes (as on Redis): a redemption that opened
# the token just before expiry must still find the record when its burn lands.
PURGES = (
    "DELETE FROM tokens WHERE id IN (SELECT id FROM tokens WHERE expires_at < ? - 300 LIMIT ?)",
    "DELETE FROM sessions WHERE rowid IN (SELECT rowid FROM sessions WHERE dead_at < ? LIMIT ?)",
    "DELETE FROM links WHERE rowid IN (SELECT rowid FROM links WHERE expires_at < ? LIMIT ?)",
    "DELETE FROM token_records WHERE token_id IN"
    " (SELECT token_id FROM token_records WHERE keep_until < ? LIMIT ?)",
    "DELETE FROM ratelimits WHERE rowid IN"
    " (SELECT rowid FROM ratelimits WHERE reset_at < ? LIMIT ?)",
)

# What more than one op writes: a minted link's record, a rate-limit hit.
# A minted link's record: a None email or module is written as the literal NULL, not bound
# as a parameter. sqlite3 binds str, int and float directly, but a None first goes through
# its adapter lookup, which raises and formats an AttributeError inside (measured: two None
# parameters made the statement cost 8.0 instead of 4.6 us). At most four statement texts,
# all kept in sqlite3's statement cache.
_MINT_RECORDS = {  # (email given, module given): the statement
    (True, True): "INSERT OR REPLACE INTO token_records VALUES (?,?,?,?,?,?,?,?,?,?)",
    (True, False): "INSERT OR REPLACE INTO token_records VALUES (?,?,?,?,?,?,?,?,NULL,?)",
    (False, True): "INSERT OR REPLACE INTO token_records VALUES (?,?,?,?,?,?,?,NULL,?,?)",
    (False, False): "INSERT OR REPLACE INTO token_records VALUES (?,?,?,?,?,?,?,NULL,NULL,?)",
}
# A session (every redemption writes one), the same way: its optional columns (email,
# module, client) written as NULL when None, so at most eight statement texts.
_SESSION_COLUMNS = (
    "key, user_id, role, params, created_at, expires_at, idle_timeout, last_seen, token_id,"
    " dead_at, email, module, client"
)
_INSERT_SESSIONS = {  # (email given, module given, client given): the statement
    given: f"INSERT OR REPLACE INTO sessions ({_SESSION_COLUMNS}) VALUES"  # noqa: S608
    f" (?,?,?,?,?,?,?,?,?,?{''.join(',?' if present else ',NULL' for present in given)})"
    for given in itertools.product((True, False), repeat=3)
}
_COUNT_HIT = (
    "INSERT INTO ratelimits (key, count, reset_at) VALUES (?1, 1, ?2)"
    " ON CONFLICT (key) DO UPDATE SET reset_at = ?2,"
    " count = CASE WHEN reset_at = ?2 THEN count + 1 ELSE 1 END RETURNING count"
)
_BUMP = "UPDATE ratelimits SET count = count + 1 WHERE key = ? AND reset_at = ?"
_COUNT = "SELECT count FROM ratelimits WHERE key = ?"
_READ_COUNTER = "SELECT count, reset_at FROM ratelimits WHERE key = ?"
_NEW_COUNTER = "INSERT INTO ratelimits (key, count, reset_at) VALUES (?, ?, ?)"
_SET_COUNT = "UPDATE ratelimits SET count = ? WHERE key = ?"
_SET_COUNTER = "UPDATE ratelimits SET count = ?, reset_at = ? WHERE key = ?"


def mint_record(r: TokenRecord, keep_until: float) -> tuple[str, tuple[str | float | int, ...]]:
    """The statement that records ``r`` (kept until ``keep_until``), and its parameters."""
    email, module = r.email, r.module
    params: tuple[str | float | int, ...] = (
        r.token_id, r.user_id, r.kind, r.role, r.created_at, r.expires_at, int(r.one_time),
    )  # fmt: skip
    if email is not None:
        params += (email,)
    if module is not None:
        params += (module,)
    return _MINT_RECORDS[email is not None, module is not None], (*params, keep_until)


# A mint counted against its rate limit and recorded (SQLiteStore.record_counted): the
# counter's key, the end of its window, the limit, and the record's statement.
CountedMint = tuple[str, float, int, Row]


def count_and_record(conn: sqlite3.Connection, mints: list[CountedMint]) -> list[int]:
    """The grouped op of rate-limited mints (``GroupCommitWriter.grouped``), run in the
    writer's thread for consecutive mints of one transaction: each mint is one hit in its
    key's window (as :func:`count_hit`, in order) and its record is written when its count
    is at most its limit; the counts, in order.

    Each key's counter is read once and written once for the run, its counts taken in
    between as one :func:`count_hit` per mint would take them (the same transaction: no
    other writer), and the records go in by one ``executemany`` per statement text: a
    group commit of 32 mints ran 64 counter statements and 32 inserts before, 2 and 1
    now. Built here because this module is compiled with a mint's path
    (:mod:`sidecar.compiled`)."""
    cursor = conn.cursor()
    cursor.row_factory = None  # plain tuples
    counters: dict[str, tuple[int, float]] = {}  # key: its count and window's end now
    stored: dict[str, tuple[int, float] | None] = {}  # key: its row before the run
    counts: list[int] = []
    rows: list[Row] = []
    for key, reset, limit, row in mints:
        counter = counters.get(key)
        if counter is None:
            found = cursor.execute(_READ_COUNTER, (key,)).fetchone()
            counter = stored[key] = None if found is None else (int(found[0]), float(found[1]))
        # The window's count so far, plus this hit; a new key or a new window counts one.
        count = counter[0] + 1 if counter is not None and counter[1] == reset else 1
        counters[key] = (count, reset)
        counts.append(count)
        if count <= limit:
            rows.append(row)
    for key, (count, reset) in counters.items():
        before = stored[key]
        if before is None:
            cursor.execute(_NEW_COUNTER, (key, count, reset))
        elif before[1] == reset:  # the window's end (an indexed column) left as it is
            cursor.execute(_SET_COUNT, (count, key))
        else:
            cursor.execute(_SET_COUNTER, (count, reset, key))
    if rows:
        write_rows(conn, rows)
    return counts


def session_row(s: SessionRecord) -> tuple[str, tuple[str | float, ...]]:
    """The statement that writes session ``s`` (replacing one of the same key), and its
    parameters."""
    # Each attribute read once: SessionRecord is interpreted (the store's base module is not
    # compiled), so every read is a generic attribute lookup.
    email, module, client = s.email, s.module, s.client
    expires_at, idle_timeout, last_seen = s.expires_at, s.idle_timeout, s.last_seen
    # A session without params (most) is "{}" without the call into _codec (interpreted).
    given = s.params
    params_json = _codec.dump_json(given) if given else "{}"
    params: tuple[str | float, ...] = (
        s.key, s.user_id, s.role, params_json, s.created_at, expires_at, idle_timeout,
        last_seen, s.token_id, _codec.session_dead_at(expires_at, last_seen, idle_timeout),
    )  # fmt: skip
    if email is not None:
        params += (email,)
    if module is not None:
        params += (module,)
    if client is not None:
        params += (client,)
    return _INSERT_SESSIONS[email is not None, module is not None, client is not None], params


def count_hit(conn: sqlite3.Connection | sqlite3.Cursor, key: str, reset: float) -> int:
    """One event in ``key``'s window ending at ``reset`` (in the open transaction); the
    count including it.

    The common case, a window already open, is a plain UPDATE and a read: the upsert's
    RETURNING (an ephemeral table) and its rewrite of ``reset_at`` (an index entry) cost
    SQLite 45k instructions a hit, these two statements 26k (every mint counts one)."""
    if conn.execute(_BUMP, (key, reset)).rowcount == 1:
        row = conn.execute(_COUNT, (key,)).fetchone()
    else:  # a new key, or a new window
        row = conn.execute(_COUNT_HIT, (key, reset)).fetchone()
    return 1 if row is None else int(row[0])


def prepare_file(path: str) -> None:
    """Open ``path`` (created if missing) in WAL mode and bring its schema up to date."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        row = conn.execute("PRAGMA journal_mode = WAL").fetchone()  # persists in the file
        if row is None or str(row[0]).lower() != "wal":
            raise sqlite3.OperationalError("the database refused WAL journal mode")
        conn.executescript(SCHEMA)
        _add_columns(conn)
    finally:
        conn.close()


def _add_columns(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table, column, declaration in _ADDED_COLUMNS:
            have = {str(row[1]) for row in conn.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        conn.execute(f"PRAGMA user_version = {_USER_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.rollback()
        raise
