"""The station: what one line station does with the commands its PACs send.

Transports (OIP over TCP and SOAP) decode packets into gateway.model commands and call
``Station.handle(command, origin)``; it returns only after everything the command changes is
durably committed to the outbox, so a transport that answers ACK after it returns keeps the
promise "acknowledged = committed".

What each command does:

- LOGIN sets the current user; INIT clears the session (order, user, retransmission window)
  and closes the current order; PING is answered without touching the store.
- ORDER replaces the current order (closing the previous one: its printed, never used serial
  numbers are reported scrapped upstream, never returned to the pool) and is written to the
  result backup stream (audit trail).
- DATA reports a step result. On a validate-serial step (handler 3) an OK value must match the
  step's ``c`` pattern and becomes a SIDCommissioningEvent; a NOK whose value is a serial
  number of that pattern becomes a LabelsScrappingEvent (reported encoded first when it was
  printed from the reserve); a NOK with anything else is recorded without an event. Every
  result is also written to the result backup stream.
- PRINT hands out serial numbers from the local reserve inside the same transaction that records
  the reply, so a retransmitted PRINT gets the same numbers and never consumes new ones.
- ``close_order()`` (the status server's method) closes the order explicitly.

Retransmissions are recognised by (peer address, tsn, payload hash); the outbox keeps that
window durably, per peer. A resent packet gets its stored reply even when the session would
now refuse it (another ORDER loaded, the order closed, the user logged out): a refusal is
checked against the window before it goes out. A retransmission never changes the session in
memory: memory always matches the latest committed state.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import sqlite3
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from gateway.board import StatusBoard
from gateway.errors import RemoteProtocolError, StoreFull
from gateway.model import (
    ALREADY_SCRAPPED,
    HANDLER_VALIDATE_SERIAL,
    OMIT,
    Ack,
    Command,
    Init,
    Instruction,
    LoadOrder,
    Login,
    Nak,
    NewMessage,
    Order,
    Origin,
    Ping,
    PrintRequest,
    Refusal,
    Reply,
    Step,
    StepResult,
    encode_json,
)
from gateway.settings import Settings

log = logging.getLogger(__name__)

STREAM_EVENTS = "event"
STORE_FULL_LOG_S = 60.0  # at most one "store full" refusal WARNING per minute
STREAM_POOL = "pool"
STREAM_RESULTS = "results"

PatternCheck = Callable[[str, str], "str | None"]


class SerialReserve(Protocol):
    """The part of the serial-number reserve the station uses inside its transactions."""

    def take_in(self, conn: sqlite3.Connection, ordnr: str, selection: str,
                count: int) -> list[str]: ...

    def mark_used_in(self, conn: sqlite3.Connection, serial: str, ok: bool = True,
                     ordnr: str = "") -> tuple[str, str] | None: ...

    def close_order_in(self, conn: sqlite3.Connection, ordnr: str) -> None: ...


class OutboxLike(Protocol):
    async def submit(self, messages: Sequence[NewMessage] = (), *, dedup: Origin | None = None,
                     dedup_peer: str | None = None, reply: str | None = None,
                     state: Mapping[str, str | None] | None = None,
                     hook: Callable[[sqlite3.Connection], object] | None = None,
                     clear_window: bool = False) -> Any: ...

    async def get_state(self) -> dict[str, str]: ...


def stored_ordnr(conn: sqlite3.Connection) -> str | None:
    """The Ordnr of the order the store holds as current (inside a transaction), or None."""
    row = conn.execute("SELECT value FROM state WHERE key='order'").fetchone()
    return str(json.loads(row[0])["Ordnr"]) if row is not None else None


def order_to_dict(order: Order) -> dict[str, object]:
    """The order as plain JSON values (hand-written: ``dataclasses.asdict`` deep-copies and
    costs more than the rest of an ORDER's handling)."""
    return {
        "Ordnr": order.Ordnr, "Sts": order.Sts, "min": order.min, "max": order.max,
        "Seq": order.Seq, "ext": order.ext, "VIN": order.VIN, "intclr": order.intclr,
        "dst": order.dst, "drv": order.drv, "prdline": order.prdline,
        "instructions": [_instruction_dict(ins) for ins in order.instructions],
    }


def _instruction_dict(ins: Instruction) -> dict[str, object]:
    return {"group": ins.group, "gord": ins.gord, "iord": ins.iord, "item": ins.item,
            "sitem": ins.sitem, "iname": ins.iname, "qty": ins.qty,
            "steps": [{"i": st.i, "c": st.c, "h": st.h} for st in ins.steps]}


# The OIP codec hands out the same Instruction object for a repeated instruction record, so
# the JSON of an instruction is kept per object (the entry holds the object: its id cannot be
# reused while the entry lives). Bounded; oldest entries go first.
_INSTRUCTION_JSON_SIZE = 1024
_instruction_json: OrderedDict[int, tuple[Instruction, str]] = OrderedDict()  # O(1) pop


def _instruction_to_json(ins: Instruction) -> str:
    entry = _instruction_json.get(id(ins))
    if entry is not None and entry[0] is ins:
        return entry[1]
    text = encode_json(_instruction_dict(ins))
    if len(_instruction_json) >= _INSTRUCTION_JSON_SIZE:
        _instruction_json.popitem(last=False)
    _instruction_json[id(ins)] = (ins, text)
    return text


def order_to_json(order: Order) -> str:
    """``encode_json(order_to_dict(order))``, assembled from per-instruction JSON."""
    o = order
    head = encode_json({"Ordnr": o.Ordnr, "Sts": o.Sts, "min": o.min, "max": o.max,
                        "Seq": o.Seq, "ext": o.ext, "VIN": o.VIN, "intclr": o.intclr,
                        "dst": o.dst, "drv": o.drv, "prdline": o.prdline})
    parts = ",".join(_instruction_to_json(ins) for ins in o.instructions)
    return f'{head[:-1]},"instructions":[{parts}]}}'


def order_from_json(text: str) -> Order:
    raw = json.loads(text)
    instructions = tuple(
        Instruction(**{**ins, "steps": tuple(Step(**s) for s in ins["steps"])})
        for ins in raw.pop("instructions")
    )
    return Order(**raw, instructions=instructions)


class Station:
    """Session state of one line station plus the rules that turn commands into messages."""

    def __init__(self, settings: Settings, outbox: OutboxLike, board: StatusBoard, *,
                 pattern_check: PatternCheck, reserve: SerialReserve | None = None) -> None:
        self._settings = settings
        self._outbox = outbox
        self._board = board
        self._pattern_check = pattern_check
        self._reserve = reserve
        self._order: Order | None = None
        self._user = ""
        self._session_lock = asyncio.Lock()
        # Session changes are committed in the order they were submitted (the outbox's writer
        # runs jobs in FIFO order), but several may be in flight at once so that ORDERs from
        # many connections share one commit. Each change takes a ticket before it is submitted;
        # after its commit it is applied in memory only if no later change of the same field
        # was applied already, so memory always matches the latest committed state.
        self._tickets = 0
        self._applied = {"order": 0, "user": 0}
        self._open = True
        self._in_flight = 0
        self._full_logged_at = -STORE_FULL_LOG_S
        self._full_unlogged = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._key_prefix = f"{settings.station.name}:{uuid.uuid4().hex[:20]}-"
        self._key_counter = itertools.count(1)

    # ------------------------------------------------------------------ lifecycle

    async def load(self) -> None:
        """Restore the session (current order, user) from the outbox after a start."""
        state = await self._outbox.get_state()
        self._user = state.get("user", "")
        order_json = state.get("order")
        self._order = order_from_json(order_json) if order_json else None
        self._board.user = self._user
        self._board.script = self._order.Ordnr if self._order else ""
        log.info("station %s: session restored (user=%r, order=%r)", self._settings.station.name,
                 self._user, self._board.script)

    async def drain(self, grace_s: float) -> bool:
        """Refuse new commands and wait up to ``grace_s`` for in-flight ones; True if drained."""
        self._open = False
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
        except TimeoutError:
            log.warning("shutdown: %d command(s) still in flight after %.1f s grace",
                        self._in_flight, grace_s)
            return False
        return True

    async def logout(self) -> None:
        """Log the active user out (the status server's restart does this)."""
        ticket = self._ticket()
        await self._outbox.submit(state={"user": None})
        self._apply_user(ticket, "")

    async def close_order(self) -> str:
        """Close the current order explicitly (the status server's ``close_order``): its
        serial numbers printed and never used are reported scrapped, as at a new ORDER or INIT.
        Returns the Ordnr closed ("" when none was loaded)."""
        async with self._session_lock:
            previous = self._order.Ordnr if self._order else ""
            ticket = self._ticket()
            await self._outbox.submit(state={"order": None}, hook=self._close_order_hook())
            self._apply_order(ticket, None)
        self._board.cmd = "close_order"
        log.info("order %r closed explicitly", previous)
        return previous

    @property
    def order(self) -> Order | None:
        return self._order

    @property
    def user(self) -> str:
        return self._user

    # ------------------------------------------------------------------ commands

    async def handle(self, command: Command, origin: Origin) -> Reply:
        if not self._open:
            return Nak(Refusal.BUSY, "gateway is shutting down; resend after it is back")
        self._in_flight += 1
        self._idle.clear()
        try:
            return await self._dispatch(command, origin)
        except StoreFull as exc:
            self._board.incr("store_full_refusals")
            self._log_store_full(command, origin, exc.reason)
            return Nak(Refusal.STORE_FULL, exc.reason)
        except RemoteProtocolError as exc:
            # the transport logs each NAK (rate-limited per connection): not twice here
            refusal = exc.refusal if isinstance(exc.refusal, Refusal) else Refusal.MALFORMED
            log.debug("refused %s tsn=%d from %s: %s", type(command).__name__, origin.tsn,
                      origin.peer, exc.detail)
            return Nak(refusal, exc.detail)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    def _log_store_full(self, command: Command, origin: Origin, reason: str) -> None:
        """A full store refuses every command: one WARNING per STORE_FULL_LOG_S with the
        count, not one per packet (store_full_refusals on the board counts them all)."""
        now = time.monotonic()
        if now - self._full_logged_at < STORE_FULL_LOG_S:
            self._full_unlogged += 1
            return
        more = (f" ({self._full_unlogged} more refused since the last such line)"
                if self._full_unlogged else "")
        log.warning("refused %s tsn=%d from %s: %s%s", type(command).__name__, origin.tsn,
                    origin.peer, reason, more)
        self._full_logged_at, self._full_unlogged = now, 0

    def _ticket(self) -> int:
        self._tickets += 1
        return self._tickets

    def _apply_order(self, ticket: int, order: Order | None) -> None:
        if ticket > self._applied["order"]:
            self._applied["order"] = ticket
            self._order = order
            self._board.script = order.Ordnr if order else ""

    def _apply_user(self, ticket: int, user: str) -> None:
        if ticket > self._applied["user"]:
            self._applied["user"] = ticket
            self._user = user
            self._board.user = user

    @staticmethod
    def _identity(origin: Origin) -> str:
        """Whose retransmission window a packet belongs to: its peer address. Not the LOGIN
        user: one user may work at several PACs with their own tsn counters, and a packet
        resent across a LOGIN must still be recognised."""
        return origin.peer

    def _key(self) -> str:
        """A new idempotency key: 80 random bits drawn once per start plus a counter, unique
        across restarts (a uuid4 per message cost a getrandom() system call on every frame)."""
        return f"{self._key_prefix}{next(self._key_counter)}"

    async def _dispatch(self, command: Command, origin: Origin) -> Reply:
        match command:
            case Ping():
                self._board.cmd = "PING"
                return Ack()
            case Login():
                return await self._login(command, origin)
            case Init():
                return await self._init(origin)
            case LoadOrder():
                return await self._load_order(command.order, origin)
            case StepResult():
                return await self._step_result(command, origin)
            case PrintRequest():
                return await self._print(command, origin)
        raise RemoteProtocolError(Refusal.UNKNOWN_COMMAND, f"unknown command {command!r}")

    async def _commit(self, origin: Origin, messages: Sequence[NewMessage] = (), *,
                      state: Mapping[str, str | None] | None = None,
                      hook: Callable[[sqlite3.Connection], object] | None = None,
                      ) -> tuple[str, Any]:
        """Commit one command; returns (status, result) where status is accepted/duplicate."""
        result = await self._outbox.submit(messages, dedup=origin,
                                           dedup_peer=self._identity(origin), state=state,
                                           hook=hook)
        if result.status == "conflict":
            raise self._tsn_reused(origin)
        return result.status, result

    def _tsn_reused(self, origin: Origin) -> RemoteProtocolError:
        return RemoteProtocolError(
            Refusal.TSN_REUSED,
            f"tsn {origin.tsn} was already used by {self._identity(origin)} for a different "
            "packet; use a new tsn (or INIT to reset the window)")

    async def _refused(self, name: str, origin: Origin, exc: RemoteProtocolError) -> Reply:
        """The session refuses a command (not logged in, not the current order, no such step,
        ...) — unless it is the retransmission of one committed before the session changed
        (ACK lost, then another ORDER or a close_order): that one gets its stored reply, a
        PRINT its serial numbers. The outbox looks the packet up first; when it is not there
        the hook raises ``exc`` and the job is rolled back, so nothing is recorded and the
        refusal goes out. Only refusals pay this round trip."""
        def refuse(conn: sqlite3.Connection) -> None:
            raise exc

        result = await self._outbox.submit(dedup=origin, dedup_peer=self._identity(origin),
                                           hook=refuse)
        if result.status == "conflict":
            raise self._tsn_reused(origin)
        stored = getattr(result, "reply", None)
        serials = tuple(json.loads(stored)) if stored else ()
        log.info("%s tsn=%d from %s: retransmission of a committed packet, answered with its "
                 "stored reply (the session would now refuse it: %s)", name, origin.tsn,
                 origin.peer, exc.detail)
        return Ack(serials=serials, duplicate=True)

    async def _login(self, command: Login, origin: Origin) -> Reply:
        self._board.cmd = "LOGIN"
        user = command.user.strip()
        if not user:
            raise RemoteProtocolError(Refusal.MALFORMED, "LOGIN record 2 field 1 (user) is empty")
        ticket = self._ticket()
        status, _ = await self._commit(origin, state={"user": user})
        if status != "duplicate":
            self._apply_user(ticket, user)
        log.info("LOGIN user=%s from %s tsn=%d%s", user, origin.peer, origin.tsn,
                 " (retransmission)" if status == "duplicate" else "")
        return Ack(duplicate=status == "duplicate")

    def _close_order_hook(self, reloading: str = "",
                          ) -> Callable[[sqlite3.Connection], object] | None:
        """Closes the order the store holds as current at commit time (not the one in memory:
        another ORDER may commit just before this one) — unless it is ``reloading``: an ORDER
        with the current order's Ordnr (a PAC that restarted sends its order again) replaces
        the order's content, and the serial numbers printed for it stay issued to it."""
        reserve = self._reserve
        if reserve is None:
            return None

        def hook(conn: sqlite3.Connection) -> None:
            current = stored_ordnr(conn)
            if current is not None and current != reloading:
                reserve.close_order_in(conn, current)

        return hook

    async def _init(self, origin: Origin) -> Reply:
        self._board.cmd = "INIT"
        async with self._session_lock:
            previous = self._order.Ordnr if self._order else ""
            ticket = self._ticket()
            # the window is cleared in the INIT's own transaction: what commits after the
            # INIT (another connection of this peer) keeps its entries. An INIT is never
            # recorded in the window: it carries only its tsn, and a PAC's next session may
            # start with the same tsn; a resent INIT simply resets again.
            await self._outbox.submit(dedup_peer=self._identity(origin),
                                      state={"order": None, "user": None},
                                      hook=self._close_order_hook(), clear_window=True)
            self._apply_order(ticket, None)
            self._apply_user(ticket, "")
        log.info("INIT from %s tsn=%d: session cleared (closed order %r)", origin.peer,
                 origin.tsn, previous)
        return Ack()

    def _require_login(self) -> None:
        if self._settings.oip.require_login and not self._user:
            raise RemoteProtocolError(Refusal.NOT_LOGGED_IN,
                                      "LOGIN first (oip.require_login is true)")

    async def _load_order(self, order: Order, origin: Origin) -> Reply:
        self._board.cmd = "ORDER"
        try:
            self._require_login()
        except RemoteProtocolError as exc:
            return await self._refused("ORDER", origin, exc)
        # the order is encoded once: it is the session state and part of the audit message
        order_json = order_to_json(order)
        head = encode_json({"Ordnr": order.Ordnr, "user": self._user, "tsn": origin.tsn,
                            "peer": origin.peer})
        audit = NewMessage(STREAM_RESULTS, "Order", self._key(),
                           body_json=f'{head[:-1]},"order":{order_json}}}')
        ticket = self._ticket()
        status, _ = await self._commit(origin, [audit], state={"order": order_json},
                                       hook=self._close_order_hook(reloading=order.Ordnr))
        if status != "duplicate":  # a duplicate changed nothing: memory follows the store
            self._apply_order(ticket, order)
            self._board.incr("orders_loaded")
        log.info("ORDER %s loaded from %s tsn=%d (%d instructions)%s", order.Ordnr, origin.peer,
                 origin.tsn, len(order.instructions),
                 " (retransmission)" if status == "duplicate" else "")
        return Ack(duplicate=status == "duplicate")

    def _current_order(self, ordnr: str) -> Order:
        order = self._order
        if order is None:
            raise RemoteProtocolError(Refusal.NO_ORDER, f"no order is loaded (got Ordnr {ordnr})")
        if order.Ordnr != ordnr:
            raise RemoteProtocolError(
                Refusal.NO_ORDER, f"Ordnr {ordnr} is not the loaded order {order.Ordnr}")
        return order

    def _context(self, order: Order) -> dict[str, str]:
        return {"Ordnr": order.Ordnr, "VIN": order.VIN, "prdline": order.prdline,
                "station": self._settings.station.name}

    async def _step_result(self, data: StepResult, origin: Origin) -> Reply:
        self._board.cmd = "DATA"
        try:
            order, messages, hook = self._plan_step_result(data, origin)
        except RemoteProtocolError as exc:
            return await self._refused("DATA", origin, exc)
        status, result = await self._commit(origin, messages, hook=hook)
        if status != "duplicate":  # ids: what was stored (a hook may leave an event out)
            self._board.incr("events_committed", len(result.ids) - 1)
            self._board.incr("results_committed")
        # one line per step result or print job would flood the journal on a busy line (the
        # results stream and the board's counters record them): DEBUG
        log.debug("DATA %s %s,%s,%s step %d %s value=%r from %s tsn=%d%s", order.Ordnr,
                 data.group, data.gord, data.iord, data.step, "OK" if data.ok else "NOK",
                 data.value, origin.peer, origin.tsn,
                 " (retransmission)" if status == "duplicate" else "")
        return Ack(duplicate=status == "duplicate")

    def _plan_step_result(self, data: StepResult, origin: Origin) -> tuple[
            Order, list[NewMessage], Callable[[sqlite3.Connection], None] | None]:
        """What a DATA commits (order, messages, hook); RemoteProtocolError if refused."""
        self._require_login()
        order = self._current_order(data.Ordnr)
        step = order.step(data.group, data.gord, data.iord, data.step)
        if step is None:
            raise RemoteProtocolError(
                Refusal.UNKNOWN_STEP,
                f"order {order.Ordnr} has no step {data.step} in instruction "
                f"{data.group},{data.gord},{data.iord}")
        messages = [NewMessage(STREAM_RESULTS, "StepResult", self._key(),
                               {"Ordnr": data.Ordnr, "group": data.group, "gord": data.gord,
                                "iord": data.iord, "step": data.step, "ok": data.ok,
                                "value": data.value, "h": step.h, "c": step.c,
                                "user": self._user, "tsn": origin.tsn, "peer": origin.peer})]
        hook = None
        serial = data.value
        validate = step.h == HANDLER_VALIDATE_SERIAL
        problem = self._pattern_check(step.c, serial) if validate and step.c else None
        if validate and data.ok and not serial:
            raise RemoteProtocolError(
                Refusal.MALFORMED, f"DATA OK on validate-serial step {data.step} carries no "
                "serial number (record 3 field 6)")
        if validate and data.ok and problem:
            raise RemoteProtocolError(
                Refusal.PATTERN_MISMATCH,
                f"serial {serial!r} does not match step {data.step} pattern "
                f"{step.c!r}: {problem}")
        if validate and not data.ok and (problem or not serial):
            # A failed scan often is not a serial number at all: the result is recorded, but
            # no label can be scrapped upstream for it.
            log.info("DATA %s step %d NOK value %r is no serial number of pattern %r: result "
                     "recorded, no LabelsScrappingEvent", data.Ordnr, data.step, serial, step.c)
        elif validate:
            kind = "SIDCommissioningEvent" if data.ok else "LabelsScrappingEvent"
            # pool "": the upstream finds the serial number's pool; a serial number printed
            # from the reserve names the selection and pool it came from (filled in the
            # transaction, before the body is written).
            body: dict[str, object] = {"serials": [serial], "pool": "",
                                       "context": self._context(order)}
            messages.append(NewMessage(STREAM_EVENTS, kind, self._key(), body))
            reserve = self._reserve
            if reserve is not None:
                def hook(conn: sqlite3.Connection) -> None:
                    came_from = reserve.mark_used_in(conn, serial, data.ok, order.Ordnr)
                    # hooks are re-run on retries, where the reserve may answer otherwise:
                    # start from the body as planned
                    body["pool"] = ""
                    for key in (OMIT, "pool_id", "encode_first"):
                        body.pop(key, None)
                    if came_from == ALREADY_SCRAPPED:  # a second NOK: nothing new upstream
                        body[OMIT] = True
                    elif came_from is not None:
                        body["pool"], body["pool_id"] = came_from
                        if not data.ok:  # printed from the reserve: still Allocated upstream
                            body["encode_first"] = True
        return order, messages, hook

    async def _print(self, request: PrintRequest, origin: Origin) -> Reply:
        self._board.cmd = "PRINT"
        reserve = self._reserve
        try:
            self._require_login()
            order = self._current_order(request.Ordnr)
            if request.count < 1:
                raise RemoteProtocolError(Refusal.MALFORMED,
                                          f"PRINT count must be at least 1, got {request.count}")
            if reserve is None:
                raise RemoteProtocolError(
                    Refusal.RESERVE_EMPTY, "the serial-number reserve is disabled "
                    "(reserve.enable)")
        except RemoteProtocolError as exc:
            return await self._refused("PRINT", origin, exc)

        def hook(conn: sqlite3.Connection) -> str:
            # the order checked above may have been closed by a command of another PAC that
            # commits just before this one: serials issued to a closed order would never be
            # used nor reported scrapped
            current = stored_ordnr(conn)
            if current != order.Ordnr:
                raise RemoteProtocolError(
                    Refusal.NO_ORDER, f"order {order.Ordnr} was closed just before this PRINT "
                    f"({'order ' + current + ' was loaded' if current else 'no order is loaded'}"
                    "); nothing was printed")
            serials = reserve.take_in(conn, order.Ordnr, request.selection, request.count)
            return json.dumps(serials)

        status, result = await self._commit(origin, hook=hook)
        reply = getattr(result, "reply", None) or getattr(result, "hook_result", None) or "[]"
        serials = tuple(json.loads(reply))
        if status != "duplicate":
            self._board.incr("serials_printed", len(serials))
        log.debug("PRINT %s %s x%d -> %d serial(s) from %s tsn=%d%s", order.Ordnr,
                 request.selection, request.count, len(serials), origin.peer, origin.tsn,
                 " (retransmission)" if status == "duplicate" else "")
        return Ack(serials=serials, duplicate=status == "duplicate")
