"""Serial-number reserve: Allocated serial numbers kept locally so printing survives outages.

The reserve lives in the outbox's SQLite file (table ``reserve_serials``), so a serial number
handed to PRINT is recorded in the same transaction as the PRINT's reply, and an order close is
recorded in the same transaction as the command that closes it. The Station calls three sync
functions inside its ``outbox.submit(hook=...)`` hooks:

``take_in(conn, Ordnr, selection, count) -> list[str]``
    PRINT: hands out ``count`` available serial numbers of ``selection`` (oldest first) and
    records them as issued to ``Ordnr``. Raises ``RemoteProtocolError(Refusal.RESERVE_EMPTY)``
    when fewer are available; nothing is taken then. No network round trip.
``mark_used_in(conn, serial, ok, Ordnr) -> (selection, pool_id) | ALREADY_REPORTED | None``
    DATA OK/NOK on a validate-serial step: when the serial number is a label this gateway
    printed for ``Ordnr`` (or a number it holds unprinted) it is marked used (OK) or
    scrapped (NOK) and the selection and pool it came from are returned, so that the event
    names that pool. A label already used or reported scrapped, printed for another order,
    or a number held for several pools is never reported again: a DATA OK is refused (NAK 13
    or 14), a DATA NOK is recorded without an event. A number the reserve never held is a
    foreign label (None: pool "").
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
PRINT has asked for; one the upstream refuses for good is dropped unless configured) above
``low_water`` by requesting up to ``fill_to`` (or a larger PRINT count it refused) with
SNRequestAllocated
(split at MaxSNRequestable, following RequestTokens), queues returns, and refreshes the levels
that ``level(selection)`` / ``levels()`` report to the status board. A refill that fails for a
passing reason (upstream down, timeout, pool short of numbers) is retried on the next round;
printing goes on from what is left. A refill the upstream refuses PERMANENTLY (Decision
PERMANENT, e.g. ReturnStatus InvalidSelectionCriteria for a selection it does not know) is
logged as ERROR once and backed off per selection (``refused_backoff_s`` doubling up to
``refused_backoff_max_s``, default 30 s .. 10 min; a PRINT does not cut the wait short). Every
failing selection is in the ``reserve_error`` alarm (``{selection: reason}``) until a refill of
it succeeds. A PRINT refused for an empty reserve says the refill state: not refilled since
this start, in progress, the last failure or refusal (with the next try), or when the last one
came.

Row states: 0 available, 1 issued to an order (printed), 2 used (a DATA OK reported it
commissioned), 3 closed unused (to be reported scrapped), 4 reported scrapped (queued as a
LabelsScrappingEvent: order closed unused, or a DATA NOK). Used and scrapped rows are
remembered for ``SCRAPPED_MEMORY_S`` (``added_at`` then holds when) so that scanning such a
label again is refused (NAK 13 / 14) instead of reported upstream twice (the upstream would
refuse it: a dead letter). Rows are keyed by (selection, serial): SERIALONLY pools hand out
equal numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from adapters.openscs.client import OpenScsClient
from adapters.openscs.results import Decision
from gateway import board as board_keys
from gateway.board import StatusBoard
from gateway.errors import RemoteProtocolError, StoreFull
from gateway.model import (
    ALREADY_REPORTED,
    NewMessage,
    Refusal,
    SerialNumberState,
    SNCollection,
)
from gateway.settings import ReserveSettings

log = logging.getLogger(__name__)

AVAILABLE, ISSUED, USED, CLOSED_UNUSED, SCRAPPED = 0, 1, 2, 3, 4
# how long a used (DATA OK) or reported-scrapped label is remembered, so that scanning it
# again is refused instead of reported upstream a second time
SCRAPPED_MEMORY_S = 30 * 86400.0
_STATE_TEXT = {ISSUED: "printed", USED: "used", CLOSED_UNUSED: "order closed, to be reported "
               "scrapped", SCRAPPED: "reported scrapped"}
RETURNING = CLOSED_UNUSED  # the state's name before it was reported scrapped, not returned
STREAM_POOL = "pool"
REFILL_MARKER = "reserve_refill_in_flight:"  # + selection, in the outbox's state table
LOSS_MARKER = "reserve_possible_loss:"  # + selection: an interrupted refill, until one works
FAILED_BACKOFF_S, FAILED_BACKOFF_MAX_S = 0.5, 15.0  # after a passing refill failure
STREAM_EVENTS = "event"  # the station's event stream (gateway.station.STREAM_EVENTS)

SCHEMA = """
CREATE TABLE IF NOT EXISTS reserve_serials (
    serial TEXT NOT NULL,
    selection TEXT NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,  -- 0 available, 1 issued, 2 used, 3 closed unused,
                                       -- 4 scrapped
    ordnr TEXT NOT NULL DEFAULT '',
    pool_id TEXT NOT NULL DEFAULT '',  -- AssociatedPoolID the upstream handed them out from
    added_at REAL NOT NULL,
    -- a SERIALONLY number is unique in its pool only: two selections (GTINs) may both hold it
    PRIMARY KEY (selection, serial)
);
CREATE INDEX IF NOT EXISTS reserve_by_state ON reserve_serials (selection, state, added_at);
CREATE INDEX IF NOT EXISTS reserve_by_serial ON reserve_serials (serial);
CREATE INDEX IF NOT EXISTS reserve_by_age ON reserve_serials (state, added_at);
CREATE TABLE IF NOT EXISTS reserve_selections (selection TEXT PRIMARY KEY);
"""
# A DATA names a serial number only; with SERIALONLY pools equal numbers exist in several
# pools, so a number is attributed only where that is unambiguous (see mark_used_in).
_LABELS = (ISSUED, USED, CLOSED_UNUSED, SCRAPPED)  # printed by this gateway


def _describe_marker(value: str) -> tuple[str, str]:
    """('of 20 requested at 2026-12-01 19:58:33Z', 'up to 20 serial numbers') from a refill
    marker; never raises, whatever is stored."""
    what, how_many = "(its record is unreadable)", "serial numbers"
    try:
        info = json.loads(value)
        count = info.get("count") if isinstance(info, dict) else None
        at = info.get("at") if isinstance(info, dict) else None
        if isinstance(count, int | float) and math.isfinite(count):
            what, how_many = f"of {int(count)}", f"up to {int(count)} serial numbers"
        else:
            what = "(of an unknown count)"
        if isinstance(at, int | float) and math.isfinite(at) and 0 < at < 1e11:
            what += time.strftime(" requested at %Y-%m-%d %H:%M:%SZ", time.gmtime(at))
    except Exception:  # whatever is stored, start-up goes on
        pass
    return what, how_many


@dataclass
class RefillState:
    """One selection's refill history (read by ``take_in`` for the NAK text, which may run in
    the outbox's thread: plain attribute reads of values written on the loop)."""

    error: str = ""  # why the last refill failed; "" when it worked
    refused: bool = False  # the upstream refused it permanently: backing off
    refusals: int = 0  # consecutive permanent refusals (the backoff exponent)
    failures: int = 0  # consecutive passing failures (their backoff exponent)
    retry_at: float = 0.0  # time.monotonic() before which no refill is attempted
    last_ok_at: float | None = None  # time.time() of the last refill that stored numbers
    last_added: int = 0
    running: bool = False
    # a refill of an earlier run was interrupted: numbers may be Allocated upstream unknown
    # here (kept, and in the alarm, until a refill of the selection works)
    possible_loss: str = ""


class _NothingLeft(Exception):
    """Raised in a hook to commit nothing (the job is rolled back)."""


class OutboxLike(Protocol):
    async def submit(self, messages: Sequence[NewMessage] = (), *,
                     state: Mapping[str, str | None] | None = None,
                     hook: Callable[[sqlite3.Connection], object] | None = None) -> Any: ...

    async def get_state(self) -> dict[str, str]: ...


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the reserve tables if absent (idempotent; runs inside the caller's transaction).
    A table of the first layout (the serial number alone as its key, which dropped a second
    pool's equal numbers) is rebuilt with its rows."""
    keys = [r[1] for r in conn.execute("PRAGMA table_info(reserve_serials)") if r[5]]
    if keys == ["serial"]:
        conn.execute("ALTER TABLE reserve_serials RENAME TO reserve_serials_v1")
        conn.execute("DROP INDEX IF EXISTS reserve_by_state")
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    if keys == ["serial"]:
        conn.execute("INSERT INTO reserve_serials (serial, selection, state, ordnr, pool_id, "
                     "added_at) SELECT serial, selection, state, ordnr, pool_id, added_at "
                     "FROM reserve_serials_v1")
        conn.execute("DROP TABLE reserve_serials_v1")
        log.info("reserve: table reserve_serials now keyed by (selection, serial)")


class Reserve:
    """Per-selection reserve of Allocated serial numbers (see the module doc)."""

    name = "openscs-reserve"

    def __init__(self, outbox: OutboxLike, client: OpenScsClient,
                 settings: ReserveSettings, *, board: StatusBoard | None = None,
                 refused_backoff_s: float = 30.0, refused_backoff_max_s: float = 600.0) -> None:
        self._board = board
        self._refused_backoff_s = refused_backoff_s
        self._refused_backoff_max_s = max(refused_backoff_max_s, refused_backoff_s)
        self._refills: dict[str, RefillState] = {}
        self._outbox = outbox
        self._client = client
        self._settings = settings
        self._levels: dict[str, int] = {s: 0 for s in settings.selections}
        self._tokens: dict[str, str] = {}
        self._wanted: dict[str, int] = {}  # selection -> the largest PRINT count refused
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._schema_ready = False

    # ------------------------------------------------------------------ status

    def level(self, selection: str) -> int:
        """Available serial numbers of ``selection`` (as of the last check or take)."""
        return self._levels.get(selection, 0)

    def levels(self) -> dict[str, int]:
        return dict(self._levels)

    def errors(self) -> dict[str, str]:
        """The ``reserve_error`` alarm: selection -> why its refill fails ({} when none)."""
        out = {}
        for selection, st in sorted(self._refills.items()):
            parts = []
            if st.error:
                parts.append(f"refill refused by the upstream: {st.error}" if st.refused
                             else f"refill failed: {st.error}")
            if st.possible_loss:
                parts.append(st.possible_loss)
            if parts:
                out[selection] = "; ".join(parts)
        return out

    @property
    def last_error(self) -> str:
        """Every failing selection's reason in one line ("" when all refills work)."""
        return "; ".join(f"{s}: {e}" for s, e in self.errors().items())

    def refill_state(self, selection: str) -> str:
        """What the refill of ``selection`` is doing, for an operator reading a NAK."""
        st = self._refills.get(selection)
        if st is not None and st.running:
            return "upstream refill in progress" + (
                f"; the last one failed: {st.error}" if st.error else "")
        if st is not None and st.refused:
            wait = max(0.0, st.retry_at - time.monotonic())
            return f"upstream refused the refill: {st.error}; next try in {wait:.0f} s"
        if st is not None and st.error:
            wait = max(0.0, st.retry_at - time.monotonic())
            return f"last upstream refill failed: {st.error}; retrying in {wait:.0f} s"
        if st is None or st.last_ok_at is None:
            return "not refilled since this start; refill requested"
        ago = max(0.0, time.time() - st.last_ok_at)
        return (f"last upstream refill {ago:.0f} s ago brought {st.last_added}; a refill to "
                f"at least {max(self._wanted.get(selection, 0), self._settings.fill_to)} is "
                "requested")

    def _publish(self) -> None:
        if self._board is not None:
            self._board.set_health(board_keys.RESERVE_LEVEL, self.levels())
            self._board.set_health(board_keys.RESERVE_ERROR, self.errors() or "")

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
            # refill at least to what was asked, even when the level is above low_water or
            # the count above fill_to (it would otherwise never come)
            self._wanted[selection] = max(self._wanted.get(selection, 0), count)
            self._poke()
            raise RemoteProtocolError(
                Refusal.RESERVE_EMPTY,
                f"serial-number reserve for selection {selection!r} holds {len(rows)}, PRINT "
                f"asked for {count} ({self.refill_state(selection)})")
        serials = [r[0] for r in rows]
        conn.execute("INSERT OR IGNORE INTO reserve_selections (selection) VALUES (?)",
                     (selection,))
        conn.executemany("UPDATE reserve_serials SET state=?, ordnr=? WHERE selection=? AND "
                         "serial=?", [(ISSUED, ordnr, selection, s) for s in serials])
        (left,) = conn.execute("SELECT COUNT(*) FROM reserve_serials WHERE selection=? AND "
                               "state=?", (selection, AVAILABLE)).fetchone()
        self._levels[selection] = int(left)
        self._wanted.pop(selection, None)
        if left < self._settings.low_water:
            self._poke()
        return serials

    def mark_used_in(self, conn: sqlite3.Connection, serial: str, ok: bool = True,
                     ordnr: str = "") -> tuple[str, str] | None:
        """DATA OK/NOK of ``serial`` on order ``ordnr``. Returns the (selection, pool_id) the
        label's event names, ``ALREADY_REPORTED`` (record the result, send no event) or None
        (not a number of this gateway: a foreign label, pool ""). Raises RemoteProtocolError
        for a DATA OK that must not be commissioned: NAK 13 (SERIAL_SCRAPPED) or NAK 14
        (SERIAL_CONFLICT). The rows of the number, in this order:

        - a label printed for ``ordnr`` (one selection): OK marks it used, NOK scrapped (both
          remembered for SCRAPPED_MEMORY_S); already scrapped: OK is NAK 13, NOK reports
          nothing new; already used: OK is NAK 14 (a label is used once), NOK reports nothing
          (it is commissioned); printed for ``ordnr`` from several selections: NAK 14 for OK
          (the number does not tell which label), nothing reported for NOK;
        - a label printed for another order: OK is NAK 13 when it was reported scrapped (the
          close of that order does that), else NAK 14; NOK reports nothing (that order's
          close reports it);
        - a number the reserve holds unprinted, in one selection: taken out of the reserve
          (so it is never printed) and reported from that pool; in several: as ambiguous.
        """
        self._ensure(conn)
        rows = conn.execute(
            "SELECT selection, pool_id, state, ordnr FROM reserve_serials WHERE serial=?",
            (serial,)).fetchall()
        labels = [r for r in rows if r[2] in _LABELS]
        mine = [r for r in labels if r[3] == ordnr]
        others = [r for r in labels if r[3] != ordnr]
        unprinted = [r for r in rows if r[2] == AVAILABLE]
        verb = "OK" if ok else "NOK"
        if len({r[0] for r in mine}) > 1 or (not mine and not others and len(unprinted) > 1):
            pools = ", ".join(sorted({r[0] for r in (mine or unprinted)}))
            if ok:
                raise RemoteProtocolError(
                    Refusal.SERIAL_CONFLICT,
                    f"serial {serial} is held by this gateway in several selections ({pools}): "
                    "the number alone does not tell which label this is; apply a new label")
            log.warning("DATA NOK of serial %s on order %s: the number is in several "
                        "selections (%s); result recorded, no LabelsScrappingEvent", serial,
                        ordnr, pools)
            return ALREADY_REPORTED
        if mine:
            selection, pool_id, state, _ = mine[0]
            if state == SCRAPPED:
                if ok:
                    raise RemoteProtocolError(
                        Refusal.SERIAL_SCRAPPED,
                        f"serial {serial} (printed for order {ordnr}, selection {selection}) "
                        "was reported scrapped upstream: do not use this label")
                return ALREADY_REPORTED
            if state == USED:
                if ok:
                    raise RemoteProtocolError(
                        Refusal.SERIAL_CONFLICT,
                        f"serial {serial} (printed for order {ordnr}, selection {selection}) "
                        "was already used by a DATA OK: a label is used once; apply a new one")
                log.warning("DATA NOK of serial %s on order %s: that label was already used "
                            "(commissioned); result recorded, no LabelsScrappingEvent", serial,
                            ordnr)
                return ALREADY_REPORTED
        elif others:
            where = "; ".join(sorted({f"order {r[3]}, selection {r[0]}: {_STATE_TEXT[r[2]]}"
                                      for r in others}))
            if ok:
                scrapped = any(r[2] in (SCRAPPED, CLOSED_UNUSED) for r in others)
                raise RemoteProtocolError(
                    Refusal.SERIAL_SCRAPPED if scrapped else Refusal.SERIAL_CONFLICT,
                    f"serial {serial} is a label this gateway printed for another order "
                    f"({where}), not for order {ordnr}: apply a new label")
            log.warning("DATA %s of serial %s on order %s: a label printed for another order "
                        "(%s); result recorded, no event (that order reports it)", verb, serial,
                        ordnr, where)
            return ALREADY_REPORTED
        elif unprinted:
            selection, pool_id, _, _ = unprinted[0]
            log.warning("DATA %s of serial %s on order %s: this gateway never printed that "
                        "number but holds it unprinted (selection %s): taken out of the "
                        "reserve so that it is never printed, reported from that pool", verb,
                        serial, ordnr, selection)
        else:
            return None
        conn.execute("UPDATE reserve_serials SET state=?, ordnr=?, added_at=? WHERE "
                     "selection=? AND serial=?",
                     (USED if ok else SCRAPPED, ordnr, time.time(), selection, serial))
        if unprinted and not mine:
            self._poke()  # the level changed: the next round reads it (a hook may roll back)
        return str(selection), str(pool_id)

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
        await self.interrupted_refills()
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
        now = time.monotonic()
        for selection, level in sorted(self._levels.items()):
            st = self._refills.get(selection)
            wanted = self._wanted.get(selection, 0)  # a PRINT asked for more than there is
            low = max(self._settings.low_water, wanted)
            if level < low and (st is None or now >= st.retry_at):
                await self.refill(selection, max(self._settings.fill_to, wanted) - level)
        self._publish()

    async def refresh(self) -> dict[str, int]:
        def read(conn: sqlite3.Connection) -> dict[str, int]:
            counts = {s: 0 for s in self._settings.selections}
            for (s,) in conn.execute("SELECT selection FROM reserve_selections"):
                counts[s] = 0
            for s, n in conn.execute("SELECT selection, COUNT(*) FROM reserve_serials "
                                     "WHERE state=? GROUP BY selection", (AVAILABLE,)):
                counts[s] = int(n)
            for state in (USED, SCRAPPED):  # reserve_by_age: no table scan
                conn.execute("DELETE FROM reserve_serials WHERE state=? AND added_at<?",
                             (state, time.time() - SCRAPPED_MEMORY_S))
            return counts

        self._levels.update(await self._hook(read))
        return dict(self._levels)

    async def refill(self, selection: str, count: int) -> int:
        """Request ``count`` Allocated serial numbers for ``selection``; returns how many came."""
        if count <= 0:
            return 0
        st = self._refills.setdefault(selection, RefillState())
        try:
            return await self._refill(selection, count, st)
        finally:
            self._publish()

    async def _refill(self, selection: str, count: int, st: RefillState) -> int:
        """One refill. Each page is stored as it arrives, and a marker in the outbox's state
        table says a refill is in flight: serial numbers the upstream handed out (Allocated)
        are lost to this gateway only when a reply is lost or the process dies mid-page, and
        then the next start says so (``interrupted_refills``)."""
        marker = REFILL_MARKER + selection
        added = 0
        stored_all = True

        async def on_page(got: tuple[str, ...], coll: SNCollection | None) -> None:
            nonlocal added
            pool_id = (coll.AssociatedPoolID or coll.ID) if coll is not None else ""
            added += await self._store(selection, got, pool_id, st)

        try:
            await self._outbox.submit(state={marker: json.dumps(
                {"count": count, "at": time.time()})})
        except StoreFull as exc:
            st.error = exc.reason
            log.warning("reserve %r: no refill while the store is full: %s", selection,
                        exc.reason)
            return 0
        st.running = True
        try:
            result = await self._client.request(SerialNumberState.Allocated, count,
                                                selection=selection,
                                                token=self._tokens.pop(selection, ""),
                                                on_page=on_page)
        except Exception as exc:  # storing a page failed (_store logged its numbers), or the
            # request itself raised: either way a failed refill
            stored_all = False
            result = None
            if not isinstance(exc, StoreFull):
                st.error, st.refused, st.retry_at = f"{type(exc).__name__}: {exc}", False, 0.0
        finally:
            st.running = False
        try:  # a full store keeps the marker: the next start reports the refill
            await self._outbox.submit(state={marker: None})
        except StoreFull:
            pass
        if result is None:
            return added
        if result.token:
            self._tokens[selection] = result.token
        decision, reason = result.verdict.decision, result.verdict.reason
        arrived = len(result.serials)
        if decision is Decision.PERMANENT:
            self._refused(selection, count, st, reason, arrived)
        elif decision not in (Decision.DONE, Decision.PARTIAL):
            # a passing failure (upstream down): retried after a short backoff (PRINTs do
            # not start a new attempt each, which logged one WARNING per PRINT in an outage);
            # WARNING when it starts or its reason changes, INFO while it lasts
            st.failures += 1
            delay = min(FAILED_BACKOFF_MAX_S, FAILED_BACKOFF_S * 2 ** min(st.failures - 1, 16))
            again = st.error == reason and not st.refused
            st.error, st.refused, st.retry_at = reason, False, time.monotonic() + delay
            log.log(logging.INFO if again else logging.WARNING,
                    "reserve %r: refill of %d failed (%s)%s; %d left; next try in %.1f s",
                    selection, count, reason,
                    f" after {arrived} arrived (kept)" if arrived else "",
                    self.level(selection), delay)
        elif stored_all:
            if st.refused or st.error:
                log.info("reserve %r: refill works again (it failed: %s)", selection, st.error)
            st.error = "" if decision is Decision.DONE else reason
            st.refused, st.refusals, st.failures, st.retry_at = False, 0, 0, 0.0
            if st.possible_loss and decision is Decision.DONE:
                await self._forget_possible_loss(selection, st)
        if added:
            st.last_ok_at, st.last_added = time.time(), added
            log.info("reserve %r: +%d serial number(s) (%s), level %d", selection, added,
                     decision.value, self._levels[selection])
        return added

    async def _store(self, selection: str, serials: Sequence[str], pool_id: str,
                     st: RefillState) -> int:
        """Store one page of Allocated serial numbers; returns how many were new."""
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
            added = int(await self._hook(insert))
        except Exception as exc:
            # handed out upstream (Allocated) but not storable here: say which, so that an
            # operator can return them (SNReturnAllocated) once the store works again
            reason = exc.reason if isinstance(exc, StoreFull) else f"{type(exc).__name__}: {exc}"
            log.error("reserve %r: %d serial number(s) handed out by the upstream could not be "
                      "stored (%s); they stay Allocated upstream: %s", selection, len(serials),
                      reason, ",".join(serials))
            st.error = reason
            raise
        if added != len(serials):
            log.error("reserve %r: upstream handed out %d serial number(s) already in the "
                      "reserve", selection, len(serials) - added)
        self._levels[selection] = self._levels.get(selection, 0) + added
        return added

    async def interrupted_refills(self) -> dict[str, str]:
        """At start: refills a previous run left in flight (it died mid-refill, or the store
        was full when the refill ended), and possible losses reported before and not yet
        cleared. Each is an ERROR in the log and stays in the reserve_error alarm, across
        restarts, until a refill of that selection works: up to that many serial numbers may
        be Allocated upstream without this gateway knowing them (pages that arrived were
        kept). Never raises: an unreadable marker is reported as such."""
        try:
            state = await self._outbox.get_state()
        except Exception as exc:  # the store is unreadable: the outbox says why elsewhere
            log.error("reserve: cannot read interrupted refills: %s", exc)
            return {}
        found = {}
        for key, value in state.items():
            if key.startswith(LOSS_MARKER):
                selection = key[len(LOSS_MARKER):]
                self._refills.setdefault(selection, RefillState()).possible_loss = value
                found[selection] = value
                continue
            if not key.startswith(REFILL_MARKER):
                continue
            selection = key[len(REFILL_MARKER):]
            what, how_many = _describe_marker(value)
            text = (f"a refill {what} was interrupted (the gateway stopped): {how_many} may be "
                    "Allocated upstream without this gateway knowing them")
            log.error("reserve %r: %s; pages that had arrived were kept. Check the upstream "
                      "pool for Allocated numbers this gateway does not hold (return them with "
                      "SNReturnAllocated)", selection, text)
            self._refills.setdefault(selection, RefillState()).possible_loss = text
            found[selection] = text
            with contextlib.suppress(StoreFull):  # one key replaces the other, atomically
                await self._outbox.submit(state={key: None, LOSS_MARKER + selection: text})
        self._publish()
        return found

    async def _forget_possible_loss(self, selection: str, st: RefillState) -> None:
        with contextlib.suppress(StoreFull):
            await self._outbox.submit(state={LOSS_MARKER + selection: None})
            log.info("reserve %r: refill works; the earlier interrupted refill stays in the "
                     "log only (%s)", selection, st.possible_loss)
            st.possible_loss = ""

    def _refused(self, selection: str, count: int, st: RefillState, reason: str,
                 arrived: int) -> None:
        """A permanent refusal: the same request will not succeed by retrying it every round.
        ERROR once (again only if the reason changes), then back off, doubling to the cap."""
        st.refusals += 1
        delay = min(self._refused_backoff_max_s,
                    self._refused_backoff_s * 2 ** min(st.refusals - 1, 32))
        st.retry_at = time.monotonic() + delay
        first = not st.refused or st.error != reason
        st.error, st.refused = reason, True
        if selection not in self._settings.selections:
            # a selection only PRINT asked for (a typo?): not refilled again by itself; the
            # next PRINT for it tries again (after the backoff), the alarm shows the refusal
            self._levels.pop(selection, None)
            self._wanted.pop(selection, None)
        after = f" after {arrived} arrived" if arrived else ""
        if first:
            log.error("reserve %r: the upstream refused the refill of %d permanently (%s)%s; "
                      "%d left; next try in %.0f s, backing off up to %.0f s (check "
                      "reserve.selections and the upstream's pools)", selection, count, reason,
                      after, self.level(selection), delay, self._refused_backoff_max_s)
        else:
            log.info("reserve %r: refill still refused (%s)%s; next try in %.0f s", selection,
                     reason, after, delay)

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
                conn.execute("UPDATE reserve_serials SET state=?, added_at=? WHERE "
                             "selection=? AND pool_id=? AND ordnr=? AND state=?",
                             (SCRAPPED, time.time(), *group, CLOSED_UNUSED))
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
