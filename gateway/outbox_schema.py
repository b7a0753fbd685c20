"""The outbox's SQLite schema, its version, and the forward migrations.

The version lives in ``PRAGMA user_version``. ``migrate(conn)`` brings any older file forward in
one transaction, keeping its backlog; a file from a *newer* gateway is refused (downgrades are
not supported, the data would be misread). Version 1 is the layout of the first prototype and is
kept here (``SCHEMA_V1``) so that the migration stays tested.
"""

from __future__ import annotations

import logging
import sqlite3

from gateway.errors import StoreCorrupt

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3

# message states
PENDING = 0
DELIVERED = 1
DEAD = 2
STATE_NAMES = {PENDING: "pending", DELIVERED: "delivered", DEAD: "dead"}

# Version 1 (prototype): messages with a 'delivered' flag only, no dead letters, no dedup window.
SCHEMA_V1 = """
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    created_at REAL NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_V2_TABLES = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: the per-stream sequence
    stream TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL UNIQUE,              -- idempotency key carried upstream
    body TEXT NOT NULL,                    -- JSON
    created_at REAL NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,      -- 0 pending, 1 delivered, 2 dead
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    finished_at REAL                       -- delivered or dead-lettered at
);
-- partial indexes: a row sits in exactly one of them, so each write touches few b-trees
CREATE INDEX IF NOT EXISTS messages_pending ON messages (stream, id) WHERE state = 0;
CREATE INDEX IF NOT EXISTS messages_finished ON messages (state, finished_at) WHERE state != 0;
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dedup (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    peer TEXT NOT NULL,
    tsn INTEGER NOT NULL,
    payload_hash TEXT NOT NULL,
    reply TEXT,
    UNIQUE (peer, tsn)
);
CREATE INDEX IF NOT EXISTS dedup_window ON dedup (peer, seq);
"""


def _v1_to_v2(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE messages RENAME TO messages_v1")
    conn.execute("DROP INDEX IF EXISTS messages_pending")
    _run_script(conn, _V2_TABLES)
    conn.execute(
        "INSERT INTO messages (id, stream, kind, key, body, created_at, state, finished_at) "
        "SELECT id, stream, kind, key, body, created_at, "
        "CASE delivered WHEN 0 THEN 0 ELSE 1 END, "
        "CASE delivered WHEN 0 THEN NULL ELSE created_at END FROM messages_v1 ORDER BY id")
    conn.execute("INSERT INTO state (key, value) SELECT key, value FROM kv")
    conn.execute("DROP TABLE messages_v1")
    conn.execute("DROP TABLE kv")


def _v2_to_v3(conn: sqlite3.Connection) -> None:
    """The serial-number reserve's table is keyed by (selection, serial) instead of the serial
    alone (SERIALONLY pools hand out equal numbers). The reserve owns its tables and rebuilds
    them (``ensure_schema``); the version step is what makes an older gateway, which would
    misread the new key, refuse the file instead of damaging it."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "reserve_serials" in tables:
        from adapters.openscs.reserve import ensure_schema  # the reserve's own layout

        ensure_schema(conn)


MIGRATIONS = {1: _v1_to_v2, 2: _v2_to_v3}


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run statements one by one: executescript() would COMMIT the open transaction."""
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def migrate(conn: sqlite3.Connection, path: object) -> int:
    """Create or upgrade the schema in one transaction. Returns the version found on disk."""
    found = conn.execute("PRAGMA user_version").fetchone()[0]
    if found > SCHEMA_VERSION:
        raise StoreCorrupt(f"{path}: schema version {found} is newer than this gateway's "
                           f"{SCHEMA_VERSION}; install the newer gateway or move the file aside")
    if found == SCHEMA_VERSION:
        return found
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.execute("BEGIN IMMEDIATE")
    try:
        if found == 0 and "messages" not in tables:
            _run_script(conn, _V2_TABLES)
        else:
            version = found or 1  # an unversioned file with tables is the prototype layout
            while version < SCHEMA_VERSION:
                log.warning("%s: migrating outbox schema v%d -> v%d", path, version, version + 1)
                MIGRATIONS[version](conn)
                version += 1
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        # SQLite may already have rolled back by itself (SQLITE_FULL, SQLITE_IOERR): a second
        # ROLLBACK would raise "no transaction is active" and hide the real cause
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found
