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
import errno
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
from gateway.errors import LinegateError, StoreCorrupt, StoreFull
from gateway.model import (
    OMIT,
    DeliveryResult,
    NewMessage,
    Origin,
    Outcome,
    StoredMessage,
    encode_json,
)
from gateway.outbox_stats import DeadLetter, OutboxStats, SubmitResult, fmt_bytes
from gateway.outbox_writer import GroupCommitWriter, is_disk_full
from gateway.settings import StoreSettings

log = logging.getLogger(__name__)

__all__ = ["DeadLetter", "Outbox", "OutboxStats", "SubmitResult"]

SQLITE_CORRUPT, SQLITE_NOTADB = 11, 26
_COLUMNS = "id, stream, kind, key, body, created_at, attempts"


def _stored(row: Sequence[Any]) -> StoredMessage:
    return StoredMessage(id=row[0], stream=row[1], kind=row[2], key=row[3],
                         body=row[4], created_at=row[5], attempts=row[6])  # decoded on use


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
        # writer thread only: inserts per peer since its last prune; cleared on any rollback
        # (a peer not in it prunes at its next insert), so a rolled-back prune is redone
        self._since_prune: dict[str, int] = {}
        self._clock = clock
        self._events: dict[str, asyncio.Event] = {}
        self.streams_changed = asyncio.Event()
        self.high_water = False
        self.full_reason: str | None = None
        self.backlog_at_open = 0
        self.read_only = False
        self._reserve = Path(f"{self.path}.reserve")
        # writer thread: True while the disk reserve is given back (or could not be made)
        self._reserve_out: bool | None = None
        self._writer = GroupCommitWriter(
            conn, wexec, window_s=settings.group_commit_window_ms / 1000.0,
            where=str(self.path), synchronous=settings.synchronous, capacity=self._capacity,
            committed=self._on_commit, disk_full=self._on_disk_full, tidy=self._tidy,
            rolled_back=self._since_prune.clear)
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
            conn = await loop.run_in_executor(wexec, cls._open_full_disk, path, settings)
            reader = await loop.run_in_executor(rexec, _connect, path, settings)
        except BaseException:
            wexec.shutdown(wait=False)
            rexec.shutdown(wait=False)
            raise
        self = cls(settings, conn, reader, wexec, rexec, dedup_window, clock)
        await loop.run_in_executor(wexec, self._open_reserve)
        self._writer.start()
        stats = await self.stats()
        self.backlog_at_open = stats.pending
        log.info("outbox %s open (synchronous=%s): %d pending in %d stream(s), %d dead, "
                 "oldest pending %.0f s, %s", path, settings.synchronous, stats.pending,
                 len(stats.streams), stats.dead, stats.oldest_pending_age_s,
                 fmt_bytes(stats.bytes))
        return self

    @classmethod
    async def open_read_only(cls, settings: StoreSettings) -> Outbox:
        """Open only to read (the CLI's stats and dead list/show): no integrity check that
        moves the file aside, no migration, no VACUUM, no disk reserve, no writer; works on a
        full disk. Writing methods raise LinegateError."""
        path = Path(settings.path)
        loop = asyncio.get_running_loop()
        wexec = ThreadPoolExecutor(1, thread_name_prefix="outbox-writer")
        rexec = ThreadPoolExecutor(1, thread_name_prefix="outbox-reader")

        def attempt(query: str) -> tuple[sqlite3.Connection, int]:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?{query}", uri=True,
                                   isolation_level=None, check_same_thread=False, timeout=10.0)
            try:
                return conn, conn.execute("PRAGMA user_version").fetchone()[0]
            except BaseException:
                conn.close()
                raise

        def connect() -> sqlite3.Connection:
            wal = Path(f"{path}-wal")
            in_use = wal.exists() and wal.stat().st_size > 0
            try:
                try:
                    conn, found = attempt("mode=ro")
                except sqlite3.OperationalError:
                    # WAL needs the -shm, which cannot be made on a full disk. Without a -wal
                    # file no gateway has the store open (it keeps one while open), so the
                    # file alone is the whole store: read it as immutable
                    if in_use:
                        raise
                    conn, found = attempt("mode=ro&immutable=1")
            except sqlite3.DatabaseError as exc:
                code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
                if code in (SQLITE_CORRUPT, SQLITE_NOTADB):
                    raise StoreCorrupt(f"outbox {path} failed to read as a database ({exc}); "
                                       "left as it is (read-only); the gateway moves it aside "
                                       "at its next start") from exc
                raise LinegateError(f"outbox {path} cannot be read ({exc})") from exc
            if found != schema.SCHEMA_VERSION:
                conn.close()
                raise StoreCorrupt(f"outbox {path} has schema version {found}, this gateway "
                                   f"reads {schema.SCHEMA_VERSION}; left as it is (read-only): "
                                   "the gateway migrates an older file at its next start")
            return conn

        try:
            conn = await loop.run_in_executor(rexec, connect)
        except BaseException:
            wexec.shutdown(wait=False)
            rexec.shutdown(wait=False)
            raise
        self = cls(settings, conn, conn, wexec, rexec, 4096, time.time)
        self.read_only = True
        self._reserve_out = not await loop.run_in_executor(
            rexec, self._reserve_present, self._reserve, settings.disk_reserve_bytes)
        return self

    def _open_reserve(self) -> None:
        """Writer thread, at open: keep or make the disk reserve; without it, refuse work."""
        size = self.settings.disk_reserve_bytes
        if self._reserve_present(self._reserve, size):
            self._reserve_out = False
            return
        try:
            made = self._make_reserve(self._disk()[0])
        except OSError as exc:
            log.warning("cannot check the free space for the outbox disk reserve: %s", exc)
            made = False
        if not made:
            self._reserve_out = True
            log.error("no room for the outbox disk reserve %s (%s): new work is refused until "
                      "%.1f MB are free under %s", self._reserve, fmt_bytes(size),
                      self._reserve_room() / 1e6, self.path.parent)

    @classmethod
    def _open_full_disk(cls, path: Path, settings: StoreSettings) -> sqlite3.Connection:
        """_open_sync; on a full disk, give back the disk reserve (made for this) and retry."""
        try:
            return cls._open_sync(path, settings)
        except StoreFull:
            reserve = Path(f"{path}.reserve")
            if not reserve.exists():
                raise
            log.error("DISK FULL under %s at open: giving back the outbox disk reserve %s",
                      path, reserve)
            reserve.unlink()
            return cls._open_sync(path, settings)

    @staticmethod
    def _open_sync(path: Path, settings: StoreSettings) -> sqlite3.Connection:
        existed = path.exists() and path.stat().st_size > 0
        if not existed:
            aside = sorted(p.name for p in path.parent.glob(f"{path.name}.corrupt-*")
                           if not p.name.endswith(("-wal", "-shm")))
            if aside:
                # a restart after the move-aside must not quietly carry on with an empty store
                raise StoreCorrupt(
                    f"outbox {path} is missing and {aside[-1]} beside it is a corrupt outbox "
                    f"moved aside earlier; its backlog was never delivered. Save it for "
                    f"recovery, then move it out of {path.parent} to start with an empty "
                    "outbox")
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
        if settings.disk_reserve_bytes:
            # New pages live in the WAL until a checkpoint copies them into the database file,
            # which then grows by as much: keep that under a quarter of the disk reserve, so
            # that on a full disk the given-back reserve always covers the checkpoint plus a
            # delivery batch's deletes (default 1000 pages; 512 for the default 8 MiB reserve)
            page = conn.execute("PRAGMA page_size").fetchone()[0]
            pages = max(16, min(1000, settings.disk_reserve_bytes // page // 4))
            conn.execute(f"PRAGMA wal_autocheckpoint = {pages}")
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
        if self.read_only:
            await asyncio.get_running_loop().run_in_executor(self._rexec, self._reader.close)
            self._wexec.shutdown()
            self._rexec.shutdown()
            return
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

    def _disk(self) -> tuple[int, int]:
        """(bytes free for us, total bytes) of the file system holding the store."""
        vfs = os.statvfs(self.path.parent)
        return vfs.f_bavail * vfs.f_frsize, vfs.f_blocks * vfs.f_frsize

    def _assess(self, live: int, free: int, total: int) -> tuple[str | None, bool]:
        """(the StoreFull reason or None, high water) for these sizes; changes nothing."""
        s = self.settings
        min_free = s.min_free_disk_mb * 1_000_000
        reason = None
        if live >= s.max_bytes:
            reason = (f"store full: outbox {fmt_bytes(live)} reached store.max_bytes "
                      f"({fmt_bytes(s.max_bytes)}); the backlog must drain upstream first")
        elif free <= min_free:
            reason = (f"store full: only {free / 1e6:.1f} MB free on the disk holding "
                      f"{self.path} (store.min_free_disk_mb = {s.min_free_disk_mb}); free "
                      "disk space")
        elif self._reserve_out:
            reason = self._reserve_reason(free)
        pct = s.high_water_percent / 100.0
        # the disk's high water is relative to what may be used before min_free refuses work
        usable = total - min_free
        disk_high = usable <= 0 or total - free >= pct * usable
        high = reason is not None or live >= pct * s.max_bytes or disk_high
        return reason, high

    def _capacity(self) -> str | None:
        """Writer thread: the StoreFull reason when a limit is reached; tracks high water."""
        s = self.settings
        try:
            live, _ = self._sizes(self._conn)
            free, total = self._disk()
            if self._reserve_out and self._make_reserve(free):
                free, total = self._disk()
        except OSError as exc:  # a transient I/O error must not stop the writer: keep the
            log.warning("outbox capacity check failed (%s); keeping the last known state "
                        "(%s)", exc, self.full_reason or "accepting work")
            return self.full_reason
        reason, high = self._assess(live, free, total)
        if high and not self.high_water:
            log.warning("outbox high water: %s of store.max_bytes %s, disk %.0f%% used, %.1f MB "
                        "free (warns at %d%% of either limit; store.min_free_disk_mb = %d); "
                        "new work is refused when a limit is reached", fmt_bytes(live),
                        fmt_bytes(s.max_bytes), 100.0 * (total - free) / total if total else 0,
                        free / 1e6, s.high_water_percent, s.min_free_disk_mb)
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

    # ------------------------------------------------------------------ disk reserve

    def _reserve_reason(self, free: int) -> str:
        return (f"store full: the disk holding {self.path} is full; the outbox has no disk "
                f"reserve ({self._reserve}, {fmt_bytes(self.settings.disk_reserve_bytes)}: "
                "given back so that delivery goes on and frees space), and accepts new work "
                f"when {self._reserve_room() / 1e6:.1f} MB are free ({free / 1e6:.1f} MB now)")

    def _reserve_room(self) -> int:
        """Free bytes needed to (re)make the reserve: min_free + twice the reserve, so that
        at least one reserve's worth stays free afterwards (no flapping at the edge)."""
        s = self.settings
        return s.min_free_disk_mb * 1_000_000 + 2 * s.disk_reserve_bytes

    @staticmethod
    def _reserve_present(reserve: Path, size: int) -> bool:
        try:
            return size == 0 or reserve.stat().st_size >= size
        except FileNotFoundError:
            return False

    def _make_reserve(self, free: int) -> bool:
        """Writer thread: (re)make the reserve file when there is room; True when made."""
        size = self.settings.disk_reserve_bytes
        if free < self._reserve_room():
            return False
        try:
            with open(self._reserve, "wb") as f:  # allocated, not sparse: the blocks are ours
                try:
                    os.posix_fallocate(f.fileno(), 0, size)
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        raise
                    chunk = b"\0" * 65536  # a file system without fallocate: write it
                    for done in range(0, size, len(chunk)):
                        f.write(chunk[: size - done])
                    f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            self._reserve.unlink(missing_ok=True)
            log.warning("cannot make the outbox disk reserve %s: %s", self._reserve, exc)
            return False
        if self._reserve_out is not None:  # None: at open
            log.warning("outbox disk reserve %s (%s) made again: the disk has room",
                        self._reserve, fmt_bytes(size))
        self._reserve_out = False
        return True

    def _on_disk_full(self, conn: sqlite3.Connection) -> bool:
        """Writer thread, after SQLITE_FULL: give back the reserve and checkpoint the WAL.

        True when that freed space (the writer then retries the delivery results)."""
        released = False
        if not self._reserve_out and self.settings.disk_reserve_bytes:
            try:
                self._reserve.unlink()
                released = True
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("cannot give back the outbox disk reserve %s: %s", self._reserve, exc)
            self._reserve_out = True
            self.full_reason = self._reserve_reason(0)  # refuse new work from now on
            log.error("DISK FULL under %s: gave back the %s outbox disk reserve so that delivery "
                      "can record results and free space; new work is refused until %.1f MB "
                      "are free", self.path, fmt_bytes(self.settings.disk_reserve_bytes),
                      self._reserve_room() / 1e6)
        before = self._wal_bytes()
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:
            log.warning("checkpoint after a full disk failed too: %s", exc)
        return released or self._wal_bytes() < before

    def _wal_bytes(self) -> int:
        try:
            return os.stat(f"{self.path}-wal").st_size
        except OSError:
            return 0

    def _tidy(self, conn: sqlite3.Connection) -> None:
        """Writer thread, after a commit: while the reserve is out, give the space of what was
        delivered back to the file system at once and make the reserve again when it fits."""
        if not self._reserve_out:
            return
        try:
            conn.executescript("PRAGMA incremental_vacuum;")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            self._make_reserve(self._disk()[0])
        except (sqlite3.Error, OSError) as exc:
            log.debug("outbox: reclaiming space on a full disk: %s", exc)

    # ------------------------------------------------------------------ submit

    async def submit(self, messages: Sequence[NewMessage] = (), *, dedup: Origin | None = None,
                     dedup_peer: str | None = None, reply: str | None = None,
                     state: Mapping[str, str | None] | None = None,
                     hook: Callable[[sqlite3.Connection], object] | None = None,
                     clear_window: bool = False) -> SubmitResult:
        """Apply one command atomically and durably; see the module docstring.

        ``clear_window`` (INIT) empties the window of ``dedup_peer`` in the same
        transaction: entries of commands committed after it stay (a separate clearing
        transaction would delete those too, and a resend of such an acknowledged command
        would then be processed again). Such a command is itself never looked up nor
        recorded (``dedup`` must be None): an INIT carries nothing but its tsn, so a PAC's
        next session starting with the same tsn must reset again, and a resent INIT resets
        again harmlessly."""
        if clear_window and (dedup is not None or not dedup_peer):
            raise ValueError("clear_window needs dedup_peer and no dedup")
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
            if clear_window:
                conn.execute("DELETE FROM dedup WHERE peer=?", (peer,))
                self._since_prune.pop(peer, None)
            hook_result = hook(conn) if hook is not None else None
            the_reply = reply
            if the_reply is None and isinstance(hook_result, str):
                the_reply = hook_result
            # Bodies are serialized after the hook: a hook may complete a body from what it
            # read in this transaction (the reserve fills in a serial number's pool).
            ids = []
            for m in msgs:
                if m.body_json is None and m.body.get(OMIT):
                    continue  # the hook found it reports nothing new
                body = m.body_json if m.body_json is not None else encode_json(m.body)
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

    async def _dead(self, where: str, args: tuple[object, ...] = ()) -> list[DeadLetter]:
        """Dead letters matching ``where`` (SQL after ``state=2 AND``, may order and limit)."""
        rows = await self._read(lambda c: c.execute(
            f"SELECT {_COLUMNS}, last_error, finished_at FROM messages "
            f"WHERE state != 0 AND state=2 AND {where}", args).fetchall())
        return [DeadLetter(_stored(r), reason=r[7], dead_at=r[8]) for r in rows]

    async def dead_list(self, limit: int = 100) -> list[DeadLetter]:
        return await self._dead("1 ORDER BY id LIMIT ?", (limit,))

    async def dead_newest(self) -> DeadLetter | None:
        """The most recent dead letter (for the status alarm after a restart)."""
        found = await self._dead("1 ORDER BY id DESC LIMIT 1")
        return found[0] if found else None

    async def dead_show(self, message_id: int) -> DeadLetter | None:
        found = await self._dead("id=?", (message_id,))
        return found[0] if found else None

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

        def read(c: sqlite3.Connection) -> tuple[list[Any], tuple[int, int],
                                                 tuple[int, int] | None]:
            rows = c.execute("SELECT stream, state, COUNT(*), MIN(created_at) FROM messages "
                             "GROUP BY stream, state").fetchall()
            try:
                disk: tuple[int, int] | None = self._disk()
            except OSError:
                disk = None
            return rows, self._sizes(c), disk

        rows, (live, on_disk), disk = await self._read(read)
        # the capacity state as of now (changes nothing): it clears as soon as the store
        # drained, and a CLI process (which submits nothing) shows it too
        full_reason, high = ((self.full_reason, self.high_water) if disk is None
                             else self._assess(live, *disk))
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
            high_water=high, full_reason=full_reason,
            commits=None if self.read_only else self.commits)
