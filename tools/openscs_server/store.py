"""SQLite persistence of the reference server: serial states, tokens, events, idempotency keys.

One short transaction per method call (``with store.tx():``); a refused call rolls back so
nothing of it is applied. The file is also the tests' window into the server.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS serials (
    pool TEXT NOT NULL, serial TEXT NOT NULL, state INTEGER NOT NULL,
    issued INTEGER NOT NULL, updated REAL NOT NULL, PRIMARY KEY (pool, serial));
CREATE INDEX IF NOT EXISTS serials_free ON serials (pool, issued, state);
CREATE TABLE IF NOT EXISTS counters (pool TEXT PRIMARY KEY, next INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    token TEXT PRIMARY KEY, pool TEXT NOT NULL, method TEXT NOT NULL, sn_format TEXT NOT NULL,
    collection_id TEXT NOT NULL, remaining INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, method TEXT NOT NULL, idem_key TEXT, sn_format TEXT,
    payload TEXT NOT NULL, received REAL NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY, method TEXT NOT NULL, payload_hash TEXT NOT NULL,
    event_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS aggregation (child TEXT PRIMARY KEY, parent TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS epcis_files (
    id INTEGER PRIMARY KEY, received REAL NOT NULL, accepted INTEGER NOT NULL,
    problems TEXT NOT NULL, options TEXT NOT NULL, document BLOB NOT NULL);
"""


class Store:
    """Thin synchronous wrapper around one SQLite connection (calls are short)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.db = sqlite3.connect(str(self.path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ------------------------------------------------------------------ serials
    def state(self, pool: str, serial: str) -> tuple[int, bool] | None:
        row = self.db.execute(
            "SELECT state, issued FROM serials WHERE pool=? AND serial=?", (pool, serial)
        ).fetchone()
        return None if row is None else (int(row[0]), bool(row[1]))

    def set_state(self, pool: str, serial: str, state: int, issued: bool) -> None:
        self.db.execute(
            "INSERT INTO serials (pool, serial, state, issued, updated) VALUES (?,?,?,?,?) "
            "ON CONFLICT (pool, serial) DO UPDATE SET state=excluded.state, "
            "issued=excluded.issued, updated=excluded.updated",
            (pool, serial, state, int(issued), time.time()),
        )

    def free_serials(self, pool: str, states: tuple[int, ...], limit: int) -> list[str]:
        marks = ",".join("?" * len(states))
        rows = self.db.execute(
            f"SELECT serial FROM serials WHERE pool=? AND issued=0 AND state IN ({marks}) "
            "ORDER BY updated, serial LIMIT ?",
            (pool, *states, limit),
        ).fetchall()
        return [r[0] for r in rows]

    def count_free(self, pool: str, states: tuple[int, ...]) -> int:
        marks = ",".join("?" * len(states))
        row = self.db.execute(
            f"SELECT COUNT(*) FROM serials WHERE pool=? AND issued=0 AND state IN ({marks})",
            (pool, *states),
        ).fetchone()
        return int(row[0])

    def next_counter(self, pool: str) -> int:
        row = self.db.execute("SELECT next FROM counters WHERE pool=?", (pool,)).fetchone()
        return 0 if row is None else int(row[0])

    def set_counter(self, pool: str, value: int) -> None:
        self.db.execute(
            "INSERT INTO counters (pool, next) VALUES (?, ?) "
            "ON CONFLICT (pool) DO UPDATE SET next=excluded.next",
            (pool, value),
        )

    def serial_states(self, pool: str | None = None) -> dict[tuple[str, str], int]:
        sql = "SELECT pool, serial, state FROM serials"
        rows = self.db.execute(sql + (" WHERE pool=?" if pool else ""), (pool,) if pool else ())
        return {(r[0], r[1]): int(r[2]) for r in rows}

    def serials_in_state(self, state: int) -> list[tuple[str, str]]:
        rows = self.db.execute("SELECT pool, serial FROM serials WHERE state=?", (state,))
        return [(r[0], r[1]) for r in rows]

    # ------------------------------------------------------------------ tokens
    def put_token(
        self, token: str, pool: str, method: str, sn_format: str, coll: str, remaining: int
    ) -> None:
        self.db.execute(
            "INSERT INTO tokens VALUES (?,?,?,?,?,?,?)",
            (token, pool, method, sn_format, coll, remaining, time.time()),
        )

    def take_token(self, token: str) -> tuple[str, str, str, str, int] | None:
        row = self.db.execute(
            "SELECT pool, method, sn_format, collection_id, remaining FROM tokens WHERE token=?",
            (token,),
        ).fetchone()
        if row is None:
            return None
        self.db.execute("DELETE FROM tokens WHERE token=?", (token,))
        return row[0], row[1], row[2], row[3], int(row[4])

    # ------------------------------------------------------------------ events
    def add_event(self, method: str, key: str | None, sn_format: str, payload: object) -> int:
        cur = self.db.execute(
            "INSERT INTO events (method, idem_key, sn_format, payload, received) "
            "VALUES (?,?,?,?,?)",
            (method, key, sn_format, json.dumps(payload), time.time()),
        )
        return int(cur.lastrowid or 0)

    def seen_key(self, key: str) -> tuple[str, str] | None:
        row = self.db.execute(
            "SELECT method, payload_hash FROM idempotency WHERE key=?", (key,)
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def remember_key(self, key: str, method: str, payload_hash: str, event_id: int) -> None:
        self.db.execute(
            "INSERT INTO idempotency VALUES (?,?,?,?)", (key, method, payload_hash, event_id)
        )

    def events(self) -> list[dict[str, object]]:
        rows = self.db.execute(
            "SELECT id, method, idem_key, sn_format, payload, received FROM events ORDER BY id"
        )
        return [
            {
                "id": r[0],
                "method": r[1],
                "key": r[2],
                "sn_format": r[3],
                "payload": json.loads(r[4]),
                "received": r[5],
            }
            for r in rows
        ]

    def idempotency_keys(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT key, method FROM idempotency").fetchall())

    # ------------------------------------------------------------------ aggregation
    def parent_of(self, child: str) -> str | None:
        row = self.db.execute("SELECT parent FROM aggregation WHERE child=?", (child,)).fetchone()
        return None if row is None else str(row[0])

    def pack(self, parent: str, child: str) -> None:
        self.db.execute("INSERT INTO aggregation VALUES (?, ?)", (child, parent))

    def unpack(self, child: str) -> None:
        self.db.execute("DELETE FROM aggregation WHERE child=?", (child,))

    def children_of(self, parent: str) -> list[str]:
        rows = self.db.execute(
            "SELECT child FROM aggregation WHERE parent=? ORDER BY child", (parent,)
        )
        return [r[0] for r in rows]

    # ------------------------------------------------------------------ EPCIS files
    def add_file(self, accepted: bool, problems: list[str], options: object, doc: bytes) -> int:
        cur = self.db.execute(
            "INSERT INTO epcis_files (received, accepted, problems, options, document) "
            "VALUES (?,?,?,?,?)",
            (time.time(), int(accepted), json.dumps(problems), json.dumps(options), doc),
        )
        return int(cur.lastrowid or 0)

    def files(self) -> list[dict[str, object]]:
        rows = self.db.execute(
            "SELECT id, accepted, problems, options, document FROM epcis_files ORDER BY id"
        )
        return [
            {
                "id": r[0],
                "accepted": bool(r[1]),
                "problems": json.loads(r[2]),
                "options": json.loads(r[3]),
                "document": bytes(r[4]),
            }
            for r in rows
        ]
