"""Serial-number reserve: Allocated serial numbers kept locally so printing survives outages.

The reserve lives in the outbox's SQLite file (table ``reserve_serials``), so a serial number
handed to PRINT is recorded in the same transaction as the PRINT's reply, and an order close is
recorded in the same transaction as the command that closes it. The Station calls three sync
functions inside its ``outbox.submit(hook=...)`` hooks:

``take_in(conn, Ordnr, selection, count) -> list[str]``
    PRINT: hands out ``count`` available serial numbers of ``selection`` (oldest first) and
    records them as issued to ``Ordnr``. Raises ``RemoteProtocolError(Refusal.RESERVE_EMPTY)``
    when fewer are available; nothing is taken then. No network round trip.
``mark_used_in(conn, serial) -> (selection, pool_id) | None``
    DATA OK/NOK on a validate-serial step: the serial number is used (its event carries it
    upstream) and leaves the reserve. Returns the selection it was printed for and the pool
    the upstream handed it out from, so that the event names that pool.
``close_order_in(conn, Ordnr)``
    ORDER (closing the previous order), INIT or an explicit close: serial numbers issued to
    ``Ordnr`` and never reported by DATA are marked closed-unused. They were handed to the
    printer, so they may be on labels: they are NEVER given back to the pool (SNReturnAllocated
    would make them Unallocated, and the upstream could hand them out again: the same number
    on two labels). The reserve's ``serve()`` loop turns them into one ``event`` stream
    message per (selection, pool, order): LabelsScrappingEvent, reported encoded first
    (LabelsEncodingEvent, key ``<key>#encode``) as a DATA NOK on a printed serial is, in a
    transaction that also deletes them from the reserve; the delivery loop sends it (exactly
    once in effect, like every outbox message). Available serial numbers are not tied to an
    order and stay in the reserve.

``serve()`` (the supervisor's service) keeps every selection (``reserve.selections`` plus those
PRINT has asked for) above ``low_water`` by requesting up to ``fill_to`` with SNRequestAllocated
(split at MaxSNRequestable, following RequestTokens), queues returns, and refreshes the levels
that ``level(selection)`` / ``levels()`` report to the status board. A refill that fails (upstream
down) is retried on the next round; printing goes on from what is left.

Row states: 0 available, 1 issued to an order (printed), 3 closed unused (to be reported
scrapped). Used and reported serial numbers are deleted.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from adapters.openscs.client import OpenScsClient
from adapters.openscs.results import Decision
from gateway import board as board_keys
from gateway.board import StatusBoard
from gateway.errors import RemoteProtocolError, StoreFull
from gateway.model import NewMessage, Refusal, SerialNumberState
from gateway.settings import ReserveSettings

log = logging.getLogger(__name__)

AVAILABLE, ISSUED, CLOSED_UNUSED = 0, 1, 3
RETURNING = CLOSED_UNUSED  # the state's name before it was reported scrapped, not returned
STREAM_POOL = "pool"
STREAM_EVENTS = "event"  # the station's event stream (gateway.station.STREAM_EVENTS)

SCHEMA = """
CREATE TABLE IF NOT EXISTS reserve_serials (
    serial TEXT PRIMARY KEY,
    selection TEXT NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,  -- 0 available, 1 issued, 3 closed unused
    ordnr TEXT NOT NULL DEFAULT '',
    pool_id TEXT NOT NULL DEFAULT '',  -- AssociatedPoolID the upstream handed them out from
    added_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS reserve_by_state ON reserve_serials (selection, state, added_at);
CREATE TABLE IF NOT EXISTS reserve_selections (selection TEXT PRIMARY KEY);
"""


class _NothingLeft(Exception):
    """Raised in a hook to commit nothing (the job is rolled back)."""


class OutboxLike(Protocol):
    async def submit(self, messages: Sequence[NewMessage] = (), *,
                     state: Mapping[str, str | None] | None = None,
                     hook: Callable[[sqlite3.Connection], object] | None = None) -> Any: ...


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the reserve tables if absent (idempotent; runs inside the caller's transaction)."""
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


class Reserve:
    """Per-selection reserve of Allocated serial numbers (see the module doc)."""

    name = "openscs-reserve"

    def __init__(self, outbox: OutboxLike, client: OpenScsClient,
                 settings: ReserveSettings, *, board: StatusBoard | None = None) -> None:
        self._board = board
        self._outbox = outbox
        self._client = client
        self._settings = settings
        self._levels: dict[str, int] = {s: 0 for s in settings.selections}
        self._tokens: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._schema_ready = False
        self.last_error = ""

    # ------------------------------------------------------------------ status

    def level(self, selection: str) -> int:
        """Available serial numbers of ``selection`` (as of the last check or take)."""
        return self._levels.get(selection, 0)

    def levels(self) -> dict[str, int]:
        return dict(self._levels)

    # ------------------------------------------------------------------ sync, inside hooks

    def _ensure(self, conn: sqlite3.Connection) -> None:
        if not self._schema_ready:
            ensure_schema(conn)

    def take_in(self, conn: sqlite3.Connection, ordnr: str, selection: str,
                count: int) -> list[str]:
        """PRINT: issue ``count`` serial numbers of ``selection`` to ``ordnr`` (or refuse)."""
        self._ensure(conn)
        rows = conn.execute(
            "SELECT serial FROM reserve_serials WHERE selection=? AND state=? "
            "ORDER BY added_at, serial LIMIT ?", (selection, AVAILABLE, count)).fetchall()
        if selection not in self._levels:
            self._levels[selection] = len(rows)
            self._poke()
        if len(rows) < count:
            self._poke()
            raise RemoteProtocolError(
                Refusal.RESERVE_EMPTY,
                f"serial-number reserve for selection {selection!r} holds {len(rows)}, PRINT "
                f"asked for {count} (upstream refill pending: {self.last_error or 'ok'})")
        serials = [r[0] for r in rows]
        conn.execute("INSERT OR IGNORE INTO reserve_selections (selection) VALUES (?)",
                     (selection,))
        conn.executemany("UPDATE reserve_serials SET state=?, ordnr=? WHERE serial=?",
                         [(ISSUED, ordnr, s) for s in serials])
        (left,) = conn.execute("SELECT COUNT(*) FROM reserve_serials WHERE selection=? AND "
                               "state=?", (selection, AVAILABLE)).fetchone()
        self._levels[selection] = int(left)
        if left < self._settings.low_water:
            self._poke()
        return serials

    def mark_used_in(self, conn: sqlite3.Connection,
                     serial: str) -> tuple[str, str] | None:
        """DATA OK/NOK: ``serial`` is used and leaves the reserve; returns its (selection,
        pool_id), or None for a serial number the reserve never held."""
        self._ensure(conn)
        row = conn.execute("SELECT selection, pool_id FROM reserve_serials WHERE serial=?",
                           (serial,)).fetchone()
        if row is not None:
            conn.execute("DELETE FROM reserve_serials WHERE serial=?", (serial,))
        return (str(row[0]), str(row[1])) if row is not None else None

    def close_order_in(self, conn: sqlite3.Connection, ordnr: str) -> None:
        """Order closed: its printed, unused serial numbers will be reported scrapped."""
        self._ensure(conn)
        cur = conn.execute("UPDATE reserve_serials SET state=? WHERE ordnr=? AND state=?",
                           (CLOSED_UNUSED, ordnr, ISSUED))
        if cur.rowcount:
            log.info("order %s closed: %d printed serial number(s) never used, to be reported "
                     "scrapped", ordnr, cur.rowcount)
            self._poke()

    def _poke(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    # ------------------------------------------------------------------ async service

    async def serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._outbox.submit(hook=ensure_schema)
        self._schema_ready = True
        while True:
            self._wake.clear()
            await self.run_once()
            try:
                await asyncio.wait_for(self._wake.wait(), self._settings.check_interval_s)
            except TimeoutError:
                pass

    async def run_once(self) -> None:
        """One round: queue returns, refresh levels, refill what is below low water."""
        if not self._schema_ready:
            await self._outbox.submit(hook=ensure_schema)
            self._schema_ready = True
        await self.queue_returns()
        await self.refresh()
        for selection, level in sorted(self._levels.items()):
            if level < self._settings.low_water:
                await self.refill(selection, self._settings.fill_to - level)
        if self._board is not None:
            self._board.set_health(board_keys.RESERVE_LEVEL, self.levels())
            self._board.set_health(board_keys.RESERVE_ERROR, self.last_error)

    async def refresh(self) -> dict[str, int]:
        def read(conn: sqlite3.Connection) -> dict[str, int]:
            counts = {s: 0 for s in self._settings.selections}
            for (s,) in conn.execute("SELECT selection FROM reserve_selections"):
                counts[s] = 0
            for s, n in conn.execute("SELECT selection, COUNT(*) FROM reserve_serials "
                                     "WHERE state=? GROUP BY selection", (AVAILABLE,)):
                counts[s] = int(n)
            return counts

        self._levels.update(await self._hook(read))
        return dict(self._levels)

    async def refill(self, selection: str, count: int) -> int:
        """Request ``count`` Allocated serial numbers for ``selection``; returns how many came."""
        if count <= 0:
            return 0
        result = await self._client.request(SerialNumberState.Allocated, count,
                                            selection=selection,
                                            token=self._tokens.pop(selection, ""))
        if result.token:
            self._tokens[selection] = result.token
        serials = result.serials
        if result.verdict.decision not in (Decision.DONE, Decision.PARTIAL):
            self.last_error = result.verdict.reason
            log.warning("reserve %r: refill of %d failed (%s)%s; %d left", selection, count,
                        result.verdict.reason, f" after {len(serials)} arrived" if serials
                        else "", self.level(selection))
            if not serials:
                return 0
            # earlier pages were handed out (Allocated upstream): keep them, or they are lost
        else:
            self.last_error = "" if result.verdict.decision is Decision.DONE else \
                result.verdict.reason
        coll = result.collection
        pool_id = (coll.AssociatedPoolID or coll.ID) if coll is not None else ""
        now = time.time()

        def insert(conn: sqlite3.Connection) -> int:
            conn.execute("INSERT OR IGNORE INTO reserve_selections (selection) VALUES (?)",
                         (selection,))
            before = conn.total_changes
            conn.executemany("INSERT OR IGNORE INTO reserve_serials (serial, selection, state, "
                             "pool_id, added_at) VALUES (?, ?, ?, ?, ?)",
                             [(s, selection, AVAILABLE, pool_id, now) for s in serials])
            return conn.total_changes - before

        try:
            added = await self._hook(insert) if serials else 0
        except StoreFull as exc:
            # handed out upstream (Allocated) but not storable here: say which, so that an
            # operator can return them (SNReturnAllocated) once space is back
            log.error("reserve %r: %d serial number(s) handed out by the upstream could not be "
                      "stored (%s); they stay Allocated upstream: %s", selection, len(serials),
                      exc.reason, ",".join(serials))
            self.last_error = exc.reason
            return 0
        if added != len(serials):
            log.error("reserve %r: upstream handed out %d serial number(s) already in the "
                      "reserve", selection, len(serials) - added)
        self._levels[selection] = self._levels.get(selection, 0) + added
        log.info("reserve %r: +%d serial number(s) (%s), level %d", selection, added,
                 result.verdict.decision.value, self._levels[selection])
        return added

    async def queue_returns(self) -> int:
        """Turn the closed orders' printed, unused serial numbers into LabelsScrappingEvent
        outbox messages (reported encoded first); returns how many serial numbers."""
        def read(conn: sqlite3.Connection) -> list[tuple[str, str, str, str]]:
            return conn.execute("SELECT selection, pool_id, ordnr, serial FROM reserve_serials "
                                "WHERE state=? ORDER BY selection, pool_id, ordnr, added_at, "
                                "serial", (CLOSED_UNUSED,)).fetchall()

        rows = await self._hook(read)
        groups: dict[tuple[str, str, str], list[str]] = {}
        for selection, pool_id, ordnr, serial in rows:
            groups.setdefault((selection, pool_id, ordnr), []).append(serial)
        for (selection, pool_id, ordnr), serials in groups.items():
            digest = hashlib.sha256("\n".join(serials).encode()).hexdigest()[:16]
            body: dict[str, object] = {
                "serials": serials, "pool": selection, "encode_first": True,
                "context": {"Ordnr": ordnr, "reason": "order closed: printed, never used"}}
            if pool_id:
                body["pool_id"] = pool_id
            message = NewMessage(STREAM_EVENTS, "LabelsScrappingEvent",
                                 f"reserve-scrap:{ordnr}:{selection}:{digest}", body)

            def take(conn: sqlite3.Connection, body: dict[str, object] = body,
                     group: tuple[str, str, str] = (selection, pool_id, ordnr)) -> None:
                # read again in the commit: a DATA may have used one of them meanwhile
                still = [r[0] for r in conn.execute(
                    "SELECT serial FROM reserve_serials WHERE selection=? AND pool_id=? AND "
                    "ordnr=? AND state=? ORDER BY added_at, serial", (*group, CLOSED_UNUSED))]
                if not still:
                    raise _NothingLeft
                conn.execute("DELETE FROM reserve_serials WHERE selection=? AND pool_id=? AND "
                             "ordnr=? AND state=?", (*group, CLOSED_UNUSED))
                body["serials"] = still

            try:
                await self._outbox.submit([message], hook=take)
            except _NothingLeft:
                continue
            except StoreFull as exc:
                log.warning("reserve: cannot queue the scrapping of %d printed serial number(s) "
                            "of order %s yet: %s", len(serials), ordnr, exc)
                return 0
            log.info("reserve: order %s closed with %d printed serial number(s) never used "
                     "(selection %r): queued LabelsEncodingEvent + LabelsScrappingEvent",
                     ordnr, len(body["serials"]), selection)  # type: ignore[arg-type]
        return len(rows)

    async def _hook(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        box: list[Any] = []

        def run(conn: sqlite3.Connection) -> None:
            box.append(fn(conn))

        await self._outbox.submit(hook=run)
        return box[0]
