"""Group commit: the outbox's one writer.

Every change to the outbox is a *job*: a plain function run on the writer's own SQLite
connection in the writer's own thread (sqlite3 is blocking; one thread owns the connection).
Jobs that arrive while a commit is in progress, or while other ready writers are still
enqueuing (at most ``group_commit_window_ms``, and only when the last group had company: a
lone writer commits at once), are run in ONE transaction with ONE commit (one fsync at
synchronous=FULL). A job that raises is rolled back alone and its exception goes to its
caller only, while the others commit: the group is first run without savepoints and, when a
job raises, rolled back and run again with each job inside its own SAVEPOINT. Jobs must
therefore be re-runnable (plain functions of the connection).

SQLITE_FULL (the disk filled up) may roll back the whole transaction by itself (SQLite
documents that it "might or might not" do so): the writer then re-runs the other jobs of the
batch in a fresh transaction and fails only the job that hit the wall, with DiskFull (a
StoreFull). A failed COMMIT is rolled back; jobs that added messages get DiskFull and the rest
are retried once. Nothing half-written is ever committed, so the file stays consistent.
After SQLITE_FULL the writer calls ``disk_full`` (the outbox gives back its disk reserve and
checkpoints the WAL) and, when that freed space, runs the failed jobs that add no messages
(delivery results: they are what frees space) once more. After each committed group it calls
``tidy`` (the outbox reclaims space while its reserve is given back).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from gateway.errors import LinegateError, StoreFull

log = logging.getLogger(__name__)

SQLITE_FULL = 13
SQLITE_IOERR = 10

Job = Callable[[sqlite3.Connection], object]


def is_disk_full(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return (code is not None and code & 0xFF == SQLITE_FULL) or "disk is full" in str(exc)


class DiskFull(StoreFull):
    """A real SQLITE_FULL (not a capacity limit of the settings)."""


def map_error(exc: BaseException, where: str) -> BaseException:
    """SQLITE_FULL becomes DiskFull with a reason a technician can act on."""
    if isinstance(exc, StoreFull):
        return exc
    if isinstance(exc, sqlite3.Error) and is_disk_full(exc):
        return DiskFull(f"store full: the disk holding {where} is full (SQLITE_FULL); free "
                         "space there (or lower the backlog) and new work is accepted again")
    return exc


@dataclass
class _Pending:
    fn: Job
    adds_messages: bool
    future: asyncio.Future[object]
    streams: frozenset[str] = field(default_factory=frozenset)
    durable: bool = True


class GroupCommitWriter:
    """Runs jobs in grouped transactions on one connection owned by one thread."""

    def __init__(self, conn: sqlite3.Connection, executor: ThreadPoolExecutor, *,
                 window_s: float, where: str, synchronous: str,
                 capacity: Callable[[], str | None],
                 committed: Callable[[frozenset[str]], None],
                 disk_full: Callable[[sqlite3.Connection], bool] = lambda conn: False,
                 tidy: Callable[[sqlite3.Connection], None] = lambda conn: None,
                 rolled_back: Callable[[], None] = lambda: None) -> None:
        self._conn = conn
        self._executor = executor
        self._window_s = window_s
        self._synchronous = synchronous
        self._current_sync = synchronous
        self._where = where
        self._capacity = capacity  # called in the writer thread: a StoreFull reason or None
        self._committed = committed  # called in the loop with the streams that got messages
        self._disk_full = disk_full  # writer thread, no transaction open: True = space freed
        self._tidy = tidy  # writer thread, no transaction open, after a committed group
        # writer thread, after anything was rolled back: Python state that jobs keep next to
        # the database (the outbox's dedup prune counters) must be dropped, not trusted
        self._rolled_back = rolled_back
        self._queue: list[_Pending] = []
        self._kick = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.full_reason: str | None = None  # valid inside a job (writer thread)
        self.commits = 0
        self.batches = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="outbox-writer")

    async def run(self, fn: Job, *, adds_messages: bool = False,
                  streams: frozenset[str] = frozenset(), durable: bool = True) -> object:
        """Run ``fn(conn)`` in the next group transaction; returns after its COMMIT.

        ``durable=False`` marks work that may be lost on power loss without harm (delivery
        results: the message is then sent again and the upstream answers the replay). A
        group made only of such jobs commits at synchronous=NORMAL (no fsync); any other job
        in the group makes it commit at the configured level, and since the WAL is written
        in order, that fsync also covers the earlier relaxed commits.
        """
        if self._closing or self._task is None or self._task.done():
            raise LinegateError("the outbox is closed")
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(fn, adds_messages, future, streams, durable))
        self._kick.set()
        return await future

    async def call(self, fn: Callable[[sqlite3.Connection], object]) -> object:
        """Run ``fn(conn)`` in the writer thread outside any transaction (checkpoints)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, self._conn)

    async def close(self) -> None:
        """Commit everything queued, then stop."""
        self._closing = True
        self._kick.set()
        if self._task is not None:
            await self._task

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        last_size = 0
        while True:
            woke_idle = False
            while not self._queue:
                if self._closing:
                    return
                await self._kick.wait()
                self._kick.clear()
                woke_idle = True
            # Wait for companions only when there is concurrency to wait for: a lone writer
            # commits at once, and jobs that queued up during the last commit waited already.
            # Then let the ready writers enqueue: yield to the loop until the queue stops
            # growing, at most the window.
            if self._window_s and woke_idle and last_size > 1 and not self._closing:
                deadline = loop.time() + self._window_s
                size = 0
                while len(self._queue) != size and loop.time() < deadline:
                    size = len(self._queue)
                    await asyncio.sleep(0)
            batch = [p for p in self._queue if not p.future.cancelled()]
            self._queue = []
            last_size = len(batch)
            if not batch:
                continue
            try:
                outcomes = await loop.run_in_executor(self._executor, self._commit, batch)
            except Exception as exc:  # BEGIN failed, or a bug or an OSError around
                # the jobs: that batch fails with the error (nothing of it was committed: the
                # transaction is rolled back) and the writer goes on serving later batches
                if not isinstance(exc, sqlite3.Error):
                    log.error("outbox writer: batch of %d failed: %r", len(batch), exc)
                mapped = map_error(exc, self._where)
                outcomes = [(False, mapped)] * len(batch)
            streams: set[str] = set()
            for pending, (ok, value) in zip(batch, outcomes, strict=True):
                if ok:
                    streams |= pending.streams
                if pending.future.done():
                    continue
                if ok:
                    pending.future.set_result(value)
                else:
                    assert isinstance(value, BaseException)
                    pending.future.set_exception(value)
            if streams:
                self._committed(frozenset(streams))

    # ------------------------------------------------------------------ writer thread

    def _commit(self, batch: list[_Pending]) -> list[tuple[bool, object]]:
        outcomes = self._commit_once(batch)
        if any(not ok and isinstance(v, DiskFull) for ok, v in outcomes):
            # Give back what can be given back, then let the jobs that add nothing (delivery
            # results, which free space) try once more; submits stay refused.
            again = [i for i, (ok, v) in enumerate(outcomes)
                     if not ok and isinstance(v, DiskFull) and not batch[i].adds_messages]
            if self._disk_full(self._conn) and again:
                for i, outcome in zip(again, self._commit_once([batch[i] for i in again]),
                                      strict=True):
                    outcomes[i] = outcome
        if any(ok for ok, _ in outcomes):
            self._tidy(self._conn)
        return outcomes

    def _commit_once(self, batch: list[_Pending]) -> list[tuple[bool, object]]:
        try:
            return self._commit_batch(batch)
        except Exception as exc:
            if self._conn.in_transaction:  # never leave the connection inside a transaction
                self._conn.execute("ROLLBACK")
            self._rolled_back()
            if isinstance(exc, sqlite3.Error):  # BEGIN (or a capacity query) failed
                return [(False, map_error(exc, self._where))] * len(batch)
            raise

    def _commit_batch(self, batch: list[_Pending]) -> list[tuple[bool, object]]:
        conn = self._conn
        self.batches += 1
        outcomes: dict[int, tuple[bool, object]] = {}
        remaining = list(range(len(batch)))
        # Optimistic first round: jobs run without savepoints (two statements fewer each). A
        # job that raises rolls the whole transaction back and the round is run again with a
        # savepoint around each job, so only that job fails. Jobs are re-runnable by contract
        # (the SQLITE_FULL and failed-COMMIT paths below re-run them too).
        guarded = refused = False
        for _attempt in range(len(batch) + 2):  # each retry removes a job or sets guarded
            if any(batch[i].adds_messages for i in remaining):
                self.full_reason = self._capacity()
            results: dict[int, tuple[bool, object]] = {}
            level = self._synchronous
            if not any(batch[i].durable for i in remaining):
                level = "NORMAL" if level == "FULL" else level
            if level != self._current_sync:
                conn.execute(f"PRAGMA synchronous = {level}")
                self._current_sync = level
            conn.execute("BEGIN IMMEDIATE")
            lost_tx = again = False
            for i in remaining:
                ok, value = self._run_one(batch[i].fn, savepoint=guarded)
                if not conn.in_transaction:  # SQLite rolled the whole transaction back
                    self._rolled_back()
                    outcomes[i] = (False, value)
                    remaining.remove(i)
                    lost_tx = True
                    break
                if not ok and not guarded:
                    conn.execute("ROLLBACK")  # its partial writes go with the others'
                    self._rolled_back()
                    if len(remaining) == 1:
                        outcomes[i] = (False, value)
                        remaining = []
                    guarded = again = True
                    break
                results[i] = (ok, value)
            if lost_tx or again:
                if not remaining:
                    break
                continue
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                self._rolled_back()
                mapped = map_error(exc, self._where)
                adders = [i for i in remaining if batch[i].adds_messages and results[i][0]]
                if isinstance(mapped, StoreFull) and adders and not refused:
                    refused = True
                    log.warning("outbox commit failed (%s); refusing %d message submit(s), "
                                "retrying the rest", exc, len(adders))
                    for i in adders:
                        outcomes[i] = (False, mapped)
                        remaining.remove(i)
                    continue
                for i in remaining:
                    outcomes[i] = (False, mapped)
                break
            self.commits += 1
            outcomes.update(results)
            break
        return [outcomes[i] for i in range(len(batch))]

    def _run_one(self, fn: Job, *, savepoint: bool) -> tuple[bool, object]:
        conn = self._conn
        if savepoint:
            conn.execute("SAVEPOINT job")
        try:
            value = fn(conn)
        except Exception as exc:  # not swallowed: handed to that job's caller
            if savepoint and conn.in_transaction:
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
            self._rolled_back()
            return False, map_error(exc, self._where)
        if savepoint:
            conn.execute("RELEASE job")
        return True, value
