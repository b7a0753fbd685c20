"""The durable store-and-forward outbox (one SQLite file in WAL mode).

Acknowledged means committed: ``submit()`` returns only after COMMIT at the chosen
``store.synchronous`` level. Concurrent submits share one transaction and one commit (see
``gateway.outbox_writer``). Messages belong to ordered streams; the id is the sequence
(AUTOINCREMENT, never reused) and delivery reads ``ORDER BY id`` per stream (gateway.delivery).

Capacity (``store.max_bytes``, ``store.min_free_disk_mb``): when either is reached, submits
that add messages raise StoreFull with a reason; delivery keeps running and frees space.
Submits without messages (state, dedup, hook only) are still run while full: they are small,
and a real SQLITE_FULL refuses them too with StoreFull. A duplicate of an accepted command is
answered as a duplicate even while full (it adds nothing). The high-water mark
(``store.high_water_percent`` of max_bytes, or of the file system's size) logs one WARNING per
crossing and shows in ``stats()`` and on the status board.

See gateway/OUTBOX.md for the delivery rules and what each synchronous level guarantees.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gateway import outbox_schema as schema
from gateway.errors import StoreCorrupt, StoreFull
from gateway.model import DeliveryResult, NewMessage, Origin, Outcome, StoredMessage
from gateway.outbox_stats import DeadLetter, OutboxStats, SubmitResult, fmt_bytes
from gateway.outbox_writer import GroupCommitWriter, is_disk_full
from gateway.settings import StoreSettings

log = logging.getLogger(__name__)

__all__ = ["DeadLetter", "Outbox", "OutboxStats", "SubmitResult"]

SQLITE_CORRUPT, SQLITE_NOTADB = 11, 26
_COLUMNS = "id, stream, kind, key, body, created_at, attempts"


def _stored(row: Sequence[Any]) -> StoredMessage:
    return StoredMessage(id=row[0], stream=row[1], kind=row[2], key=row[3],
                         body=json.loads(row[4]), created_at=row[5], attempts=row[6])


def _connect(path: Path, settings: StoreSettings) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    conn.execute("PRAGMA busy_timeout = 10000")
    return conn


def _move_aside(path: Path, why: str) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            os.replace(src, Path(f"{target}{suffix}"))
    log.critical("OUTBOX %s IS CORRUPT (%s): moved aside to %s; it is kept for recovery and "
                 "was NOT overwritten. Start with an empty outbox only after saving it.",
                 path, why, target)
    return target


class Outbox:
    """Use ``await Outbox.open(settings)``; see the module docstring."""

    def __init__(self, settings: StoreSettings, conn: sqlite3.Connection,
                 reader: sqlite3.Connection, wexec: ThreadPoolExecutor,
                 rexec: ThreadPoolExecutor, dedup_window: int,
                 clock: Callable[[], float]) -> None:
        self.settings = settings
        self.path = Path(settings.path)
        self._reader = reader
        self._rexec = rexec
        self._wexec = wexec
        self._dedup_window = dedup_window
        self._since_prune: dict[str, int] = {}  # writer thread only: inserts since last prune
        self._clock = clock
        self._events: dict[str, asyncio.Event] = {}
        self.streams_changed = asyncio.Event()
        self.high_water = False
        self.full_reason: str | None = None
        self.backlog_at_open = 0
        self._writer = GroupCommitWriter(
            conn, wexec, window_s=settings.group_commit_window_ms / 1000.0,
            where=str(self.path), synchronous=settings.synchronous, capacity=self._capacity,
            committed=self._on_commit)
        self._conn = conn

    # ------------------------------------------------------------------ open / close

    @classmethod
    async def open(cls, settings: StoreSettings, *, dedup_window: int = 4096,
                   clock: Callable[[], float] = time.time) -> Outbox:
        path = Path(settings.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        wexec = ThreadPoolExecutor(1, thread_name_prefix="outbox-writer")
        rexec = ThreadPoolExecutor(1, thread_name_prefix="outbox-reader")
        try:
            conn = await loop.run_in_executor(wexec, cls._open_sync, path, settings)
            reader = await loop.run_in_executor(rexec, _connect, path, settings)
        except BaseException:
            wexec.shutdown(wait=False)
            rexec.shutdown(wait=False)
            raise
        self = cls(settings, conn, reader, wexec, rexec, dedup_window, clock)
        self._writer.start()
        stats = await self.stats()
        self.backlog_at_open = stats.pending
        log.info("outbox %s open (synchronous=%s): %d pending in %d stream(s), %d dead, "
                 "oldest pending %.0f s, %s", path, settings.synchronous, stats.pending,
                 len(stats.streams), stats.dead, stats.oldest_pending_age_s,
                 fmt_bytes(stats.bytes))
        return self

    @staticmethod
    def _open_sync(path: Path, settings: StoreSettings) -> sqlite3.Connection:
        existed = path.exists() and path.stat().st_size > 0
        conn = _connect(path, settings)
        try:
            if existed:
                problems = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
                if problems != ["ok"]:
                    raise sqlite3.DatabaseError("; ".join(problems))
            else:
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # before the first table
            if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch {path} to WAL mode")
            found = schema.migrate(conn, path)
        except sqlite3.DatabaseError as exc:
            conn.close()
            code = getattr(exc, "sqlite_errorcode", None)
            if code is not None and code & 0xFF not in (SQLITE_CORRUPT, SQLITE_NOTADB):
                # not the file's fault (disk full, I/O, permissions, locked): never move aside
                vfs = os.statvfs(path.parent)
                if is_disk_full(exc) or vfs.f_bavail * vfs.f_frsize < 1_000_000:
                    raise StoreFull(f"store full: cannot open {path}, the disk is full "
                                    f"({exc}); free space there") from exc
                raise
            target = _move_aside(path, str(exc))
            raise StoreCorrupt(f"outbox {path} failed its integrity check ({exc}); moved "
                               f"aside to {target}, not overwritten") from exc
        conn.execute(f"PRAGMA synchronous = {settings.synchronous}")
        conn.execute("PRAGMA journal_size_limit = 4194304")  # truncate the WAL after checkpoints
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:  # an old file: convert once
            log.warning("%s: converting to incremental auto-vacuum (one-time VACUUM)", path)
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            try:
                conn.execute("VACUUM")  # needs about the file's size again in free space
            except sqlite3.Error as exc:
                if not is_disk_full(exc):
                    conn.close()
                    raise
                # not needed to work (freed pages are reused, only not returned to the file
                # system): open without it rather than refuse to deliver; retried next start
                log.warning("%s: the one-time VACUUM failed, the disk is full (%s); the "
                            "outbox works without it and it is retried at the next start",
                            path, exc)
        if found and found != schema.SCHEMA_VERSION:
            log.warning("%s: schema migrated from v%d to v%d", path, found,
                        schema.SCHEMA_VERSION)
        return conn

    async def close(self, *, checkpoint: bool = True) -> None:
        """Commit everything pending, checkpoint (unless told not to), and close the file."""
        await self._writer.close()
        loop = asyncio.get_running_loop()
        try:
            if checkpoint:
                await self._writer.call(lambda c: c.execute("PRAGMA wal_checkpoint(TRUNCATE)"))
        except sqlite3.Error as exc:
            log.warning("outbox checkpoint at close failed: %s", exc)
        await loop.run_in_executor(self._wexec, self._conn.close)
        await loop.run_in_executor(self._rexec, self._reader.close)
        self._wexec.shutdown()
        self._rexec.shutdown()

    @property
    def commits(self) -> int:
        """Transactions committed so far (one fsync each at synchronous=FULL)."""
        return self._writer.commits

    # ------------------------------------------------------------------ capacity

    def _sizes(self, conn: sqlite3.Connection) -> tuple[int, int]:
        """(live bytes in the database, file bytes on disk including the WAL)."""
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        on_disk = 0
        for suffix in ("", "-wal"):
            try:
                on_disk += os.stat(f"{self.path}{suffix}").st_size
            except FileNotFoundError:
                pass
        return (pages - free) * page_size, on_disk

    def _capacity(self) -> str | None:
        """Writer thread: the StoreFull reason when a limit is reached; tracks high water."""
        s = self.settings
        try:
            live, _ = self._sizes(self._conn)
            vfs = os.statvfs(self.path.parent)
        except OSError as exc:  # a transient I/O error must not stop the writer: keep the
            log.warning("outbox capacity check failed (%s); keeping the last known state "
                        "(%s)", exc, self.full_reason or "accepting work")
            return self.full_reason
        free_mb = vfs.f_bavail * vfs.f_frsize / 1e6
        total = vfs.f_blocks * vfs.f_frsize
        reason = None
        if live >= s.max_bytes:
            reason = (f"store full: outbox {fmt_bytes(live)} reached store.max_bytes "
                      f"({fmt_bytes(s.max_bytes)}); the backlog must drain upstream first")
        elif free_mb <= s.min_free_disk_mb:
            reason = (f"store full: only {free_mb:.1f} MB free on the disk holding {self.path} "
                      f"(store.min_free_disk_mb = {s.min_free_disk_mb}); free disk space")
        pct = s.high_water_percent / 100.0
        used_fraction = 1.0 - vfs.f_bavail * vfs.f_frsize / total if total else 0.0
        high = reason is not None or live >= pct * s.max_bytes or used_fraction >= pct
        if high and not self.high_water:
            log.warning("outbox high water: %s of store.max_bytes %s, disk %.0f%% used (warns "
                        "at %d%%); new work is refused when a limit is reached",
                        fmt_bytes(live), fmt_bytes(s.max_bytes), used_fraction * 100,
                        s.high_water_percent)
        elif not high and self.high_water:
            log.info("outbox back below high water (%s)", fmt_bytes(live))
        self.high_water = high
        if reason != self.full_reason:
            if reason:
                log.error("%s", reason)
            else:
                log.warning("outbox accepts new work again (%s)", fmt_bytes(live))
        self.full_reason = reason
        return reason

    # ------------------------------------------------------------------ submit

    async def submit(self, messages: Sequence[NewMessage] = (), *, dedup: Origin | None = None,
                     dedup_peer: str | None = None, reply: str | None = None,
                     state: Mapping[str, str | None] | None = None,
                     hook: Callable[[sqlite3.Connection], object] | None = None,
                     ) -> SubmitResult:
        """Apply one command atomically and durably; see the module docstring."""
        msgs = list(messages)
        writer = self._writer
        window = self._dedup_window
        stride = max(1, window // 16)
        now = self._clock()

        def job(conn: sqlite3.Connection) -> SubmitResult:
            peer = dedup_peer or (dedup.peer if dedup else "")
            if dedup is not None:
                row = conn.execute("SELECT payload_hash, reply FROM dedup WHERE peer=? AND tsn=?",
                                   (peer, dedup.tsn)).fetchone()
                if row is not None:
                    status = "duplicate" if row[0] == dedup.payload_hash else "conflict"
                    return SubmitResult(status, reply=row[1])
            if msgs and writer.full_reason:
                raise StoreFull(writer.full_reason)
            hook_result = hook(conn) if hook is not None else None
            the_reply = reply
            if the_reply is None and isinstance(hook_result, str):
                the_reply = hook_result
            # Bodies are serialized after the hook: a hook may complete a body from what it
            # read in this transaction (the reserve fills in a serial number's pool).
            ids = []
            for m in msgs:
                body = json.dumps(m.body, ensure_ascii=False, separators=(",", ":"))
                cur = conn.execute("INSERT INTO messages (stream, kind, key, body, created_at) "
                                   "VALUES (?, ?, ?, ?, ?)", (m.stream, m.kind, m.key, body, now))
                ids.append(int(cur.lastrowid or 0))
            for key, value in (state or {}).items():
                if value is None:
                    conn.execute("DELETE FROM state WHERE key=?", (key,))
                else:
                    conn.execute("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)",
                                 (key, value))
            if dedup is not None:
                conn.execute("INSERT INTO dedup (peer, tsn, payload_hash, reply) "
                             "VALUES (?, ?, ?, ?)", (peer, dedup.tsn, dedup.payload_hash,
                                                     the_reply))
                # Pruning scans the peer's whole window (OFFSET), so it runs once per
                # ``stride`` inserts of that peer, not on every one: a peer's window holds
                # between ``window`` and ``window + stride - 1`` entries.
                since = self._since_prune.get(peer, stride - 1) + 1  # new since open: now
                if since >= stride:
                    conn.execute("DELETE FROM dedup WHERE peer=? AND seq <= (SELECT seq FROM "
                                 "dedup WHERE peer=? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                                 (peer, peer, window))
                    since = 0
                self._since_prune[peer] = since
            return SubmitResult("accepted", reply=the_reply, hook_result=hook_result,
                                ids=tuple(ids))

        streams = frozenset(m.stream for m in msgs)
        result = await writer.run(job, adds_messages=bool(msgs), streams=streams)
        assert isinstance(result, SubmitResult)
        return result

    def _on_commit(self, streams: frozenset[str]) -> None:
        for stream in streams:
            if stream not in self._events:
                self._events[stream] = asyncio.Event()
                self.streams_changed.set()
            self._events[stream].set()

    def event(self, stream: str) -> asyncio.Event:
        """Set whenever messages for ``stream`` were committed (delivery clears and waits)."""
        return self._events.setdefault(stream, asyncio.Event())

    def known_streams(self) -> list[str]:
        """Streams that got messages since open (pending_streams() reads the file)."""
        return list(self._events)

    async def get_state(self) -> dict[str, str]:
        rows = await self._read(lambda c: c.execute("SELECT key, value FROM state").fetchall())
        return dict(rows)

    async def clear_dedup(self, peer: str) -> None:
        def job(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM dedup WHERE peer=?", (peer,))
            self._since_prune.pop(peer, None)

        await self._writer.run(job)

    # ------------------------------------------------------------------ delivery side

    async def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._rexec, fn, self._reader)

    async def pending_streams(self) -> list[str]:
        rows = await self._read(lambda c: c.execute(
            "SELECT DISTINCT stream FROM messages WHERE state=0").fetchall())
        return sorted(r[0] for r in rows)

    async def pending(self, stream: str, limit: int) -> list[StoredMessage]:
        """The next ``limit`` pending messages of ``stream`` in sequence order."""
        rows = await self._read(lambda c: c.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE stream=? AND state=0 ORDER BY id LIMIT ?",
            (stream, limit)).fetchall())
        return [_stored(r) for r in rows]

    async def record(self, batch: Sequence[StoredMessage], results: Sequence[DeliveryResult],
                     error: str = "") -> None:
        """Record upstream results (aligned with the batch prefix) in one transaction.

        DONE -> delivered (deleted at once when store.delivered_retention_s is 0);
        PERMANENT -> dead letter with the reason; RETRY -> attempts+1 and the reason.
        ``error`` (a transport failure) is recorded on the first unanswered message.
        """
        keep = self.settings.delivered_retention_s > 0
        now = self._clock()
        pairs = list(zip(batch, results, strict=False))

        done = [(m.id,) for m, r in pairs if r.outcome is Outcome.DONE]
        dead = [(now, r.reason, m.id) for m, r in pairs if r.outcome is Outcome.PERMANENT]
        retry = [(r.reason, m.id) for m, r in pairs if r.outcome is Outcome.RETRY]

        def job(conn: sqlite3.Connection) -> None:
            if keep:
                conn.executemany("UPDATE messages SET state=1, finished_at=?, "
                                 "attempts=attempts+1 WHERE id=?", [(now, i) for (i,) in done])
            else:  # one statement for the whole batch
                conn.execute("DELETE FROM messages WHERE id IN (SELECT value FROM json_each(?))",
                             (json.dumps([i for (i,) in done]),))
            conn.executemany("UPDATE messages SET state=2, finished_at=?, last_error=?, "
                             "attempts=attempts+1 WHERE id=?", dead)
            conn.executemany("UPDATE messages SET attempts=attempts+1, last_error=? "
                             "WHERE id=?", retry)
            if error and len(pairs) < len(batch):
                conn.execute("UPDATE messages SET attempts=attempts+1, last_error=? WHERE id=?",
                             (error[:500], batch[len(pairs)].id))

        await self._writer.run(job, durable=False)  # lost on power loss = sent again

    # ------------------------------------------------------------------ dead letters

    async def dead_list(self, limit: int = 100) -> list[DeadLetter]:
        rows = await self._read(lambda c: c.execute(
            f"SELECT {_COLUMNS}, last_error, finished_at FROM messages "
            "WHERE state != 0 AND state=2 ORDER BY id LIMIT ?", (limit,)).fetchall())
        return [DeadLetter(_stored(r), reason=r[7], dead_at=r[8]) for r in rows]

    async def dead_show(self, message_id: int) -> DeadLetter | None:
        row = await self._read(lambda c: c.execute(
            f"SELECT {_COLUMNS}, last_error, finished_at FROM messages WHERE state=2 AND id=?",
            (message_id,)).fetchone())
        return DeadLetter(_stored(row), reason=row[7], dead_at=row[8]) if row else None

    async def dead_retry(self, message_id: int) -> bool:
        """Make a dead letter pending again (it keeps its id, so it is the next one sent)."""
        def job(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT stream FROM messages WHERE id=? AND state=2",
                               (message_id,)).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE messages SET state=0, attempts=0, last_error='', "
                         "finished_at=NULL WHERE id=?", (message_id,))
            return str(row[0])

        stream = await self._writer.run(job)
        if isinstance(stream, str):
            log.warning("dead letter %d on stream %s queued for delivery again", message_id,
                        stream)
            self._on_commit(frozenset({stream}))
            return True
        return False

    # ------------------------------------------------------------------ retention, stats

    async def purge(self) -> int:
        """Delete delivered/dead rows past their retention and return the pages to the OS."""
        now = self._clock()
        s = self.settings

        def job(conn: sqlite3.Connection) -> int:
            n = conn.execute("DELETE FROM messages WHERE state != 0 AND state=1 "
                             "AND finished_at <= ?",
                             (now - s.delivered_retention_s,)).rowcount
            n += conn.execute("DELETE FROM messages WHERE state != 0 AND state=2 "
                              "AND finished_at <= ?",
                              (now - s.dead_retention_s,)).rowcount
            return n

        def reclaim(conn: sqlite3.Connection) -> None:
            # executescript steps the pragma to the end (execute() frees one page per step);
            # it runs outside any transaction, in its own
            conn.executescript("PRAGMA incremental_vacuum;")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

        deleted = await self._writer.run(job)
        await self._writer.call(reclaim)
        assert isinstance(deleted, int)
        if deleted:
            log.info("outbox retention: deleted %d delivered/dead message(s)", deleted)
        return deleted

    async def stats(self) -> OutboxStats:
        now = self._clock()

        def read(c: sqlite3.Connection) -> tuple[list[Any], tuple[int, int]]:
            rows = c.execute("SELECT stream, state, COUNT(*), MIN(created_at) FROM messages "
                             "GROUP BY stream, state").fetchall()
            return rows, self._sizes(c)

        rows, (live, on_disk) = await self._read(read)
        streams: dict[str, dict[str, int]] = {}
        oldest: float | None = None
        for stream, st, count, first in rows:
            streams.setdefault(stream, {n: 0 for n in schema.STATE_NAMES.values()})
            streams[stream][schema.STATE_NAMES[st]] = count
            if st == schema.PENDING:
                oldest = first if oldest is None else min(oldest, first)
        total = {n: sum(v[n] for v in streams.values()) for n in schema.STATE_NAMES.values()}
        return OutboxStats(
            streams=streams, pending=total["pending"], delivered=total["delivered"],
            dead=total["dead"], oldest_pending_age_s=max(0.0, now - oldest) if oldest else 0.0,
            bytes=live, file_bytes=on_disk, max_bytes=self.settings.max_bytes,
            high_water=self.high_water, full_reason=self.full_reason, commits=self.commits)
