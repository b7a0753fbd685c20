"""Serial-number reserve: real outbox, real reference server, a fault proxy for the outage."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from asyncua import ua

from adapters.openscs.client import OpenScsClient
from adapters.openscs.reserve import AVAILABLE, USED, Reserve
from adapters.openscs.upstream import OpenScsUpstream
from gateway.board import StatusBoard
from gateway.delivery import Delivery
from gateway.errors import RemoteProtocolError
from gateway.model import Refusal, ReturnStatus, SerialNumberState
from gateway.outbox import Outbox
from gateway.settings import DeliverySettings, OpenScsSettings, ReserveSettings, StoreSettings
from gateway.status.fields import board_values
from tests.test_openscs_client_fixture import ScsServer, running_server, wait_until
from tools.faultproxy import FaultProxy
from tools.openscs_server.server import ReferenceServer

GTIN = "09506000134352"
POOL_ID = "GTIN-09506000134352"


@dataclass
class Rig:
    server: ReferenceServer
    proxy: FaultProxy
    outbox: Outbox
    client: OpenScsClient
    reserve: Reserve
    board: StatusBoard

    async def submit(self, fn):
        box = []
        await self.outbox.submit(hook=lambda conn: box.append(fn(conn)))
        return box[0]

    async def take(self, ordnr: str, count: int) -> list[str]:
        return await self.submit(lambda c: self.reserve.take_in(c, ordnr, GTIN, count))

    def states(self) -> dict[str, int]:
        return {s: st for (p, s), st in self.server.serial_states(POOL_ID).items()}


def _client_settings(tmp: Path, server: ReferenceServer, port: int) -> OpenScsSettings:
    trust = tmp / "trusted"
    trust.mkdir()
    (trust / "reference.der").write_bytes(server.cert_path.read_bytes())
    pw = tmp / "pw"
    pw.write_text("secret")
    pw.chmod(0o600)
    return OpenScsSettings(endpoint=f"opc.tcp://127.0.0.1:{port}/openscs", username="line",
                           password_file=pw, trust_dir=trust,
                           certificate_file=tmp / "c.pem", private_key_file=tmp / "k.pem",
                           timeout_s=1.0, reconnect_max_s=0.2)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    server = ReferenceServer(port=0, db_path=tmp_path / "scs.sqlite", users={"line": "secret"},
                             cert_dir=tmp_path / "pki")
    await server.start()
    proxy = FaultProxy(target_port=server.port)
    await proxy.start()
    outbox = await Outbox.open(StoreSettings(path=tmp_path / "outbox.sqlite",
                                             synchronous="NORMAL"))
    client = OpenScsClient(_client_settings(tmp_path, server, proxy.port))
    board = StatusBoard()
    reserve = Reserve(outbox, client, ReserveSettings(selections=[GTIN], low_water=10,
                                                      fill_to=30, check_interval_s=0.05),
                      board=board)
    rig = Rig(server, proxy, outbox, client, reserve, board)
    try:
        yield rig
    finally:
        await client.close()
        await rig.outbox.close()
        await proxy.stop()
        await server.stop()


async def test_reserve_prints_through_an_outage_and_scraps_printed_unused(rig: Rig) -> None:
    await rig.reserve.run_once()
    assert rig.reserve.level(GTIN) == 30
    assert rig.board.health["reserve_level"] == {GTIN: 30}
    assert sum(1 for st in rig.states().values() if st == SerialNumberState.Allocated) == 30

    # upstream blackholed: printing goes on from the reserve, without a round trip
    await rig.proxy.set_mode("blackhole")
    rig.proxy.cut()
    printed: list[str] = []
    for _ in range(6):
        printed += await rig.take("ORDER-1", 4)
    assert len(printed) == len(set(printed)) == 24
    assert rig.reserve.level(GTIN) == 6
    refill = asyncio.create_task(rig.reserve.run_once())  # tries upstream: fails, bounded
    more = await rig.take("ORDER-1", 3)
    assert not set(more) & set(printed)
    await asyncio.wait_for(refill, 30)
    assert rig.reserve.level(GTIN) == 3 and rig.reserve.last_error
    assert rig.board.health["reserve_error"]
    for _ in range(5):  # rounds (and PRINTs, which wake them) during the backoff
        await rig.reserve.run_once()
    assert rig.reserve._refills[GTIN].failures == 1  # no new attempt: one WARNING, not six
    assert "retrying in" in rig.reserve.refill_state(GTIN)

    # asking for more than is left is refused and takes nothing
    with pytest.raises(RemoteProtocolError) as info:
        await rig.take("ORDER-1", 4)
    assert info.value.refusal is Refusal.RESERVE_EMPTY
    assert rig.reserve.level(GTIN) == 3

    # 10 of the 27 printed labels are used (DATA OK/NOK); the order closes (new ORDER/INIT)
    used = printed[:10]
    for serial in used:
        await rig.submit(lambda c, s=serial: rig.reserve.mark_used_in(c, s, True, "ORDER-1"))
    await rig.submit(lambda c: rig.reserve.close_order_in(c, "ORDER-1"))
    await rig.reserve.queue_returns()
    stats = await rig.outbox.stats()
    assert stats.pending == 1

    # upstream back: the printed, never used labels are reported encoded then scrapped (they
    # may be on labels: never back in the pool) and the reserve refills with other numbers
    await rig.proxy.set_mode("pass")
    delivery = Delivery(rig.outbox, OpenScsUpstream(rig.client),
                        DeliverySettings(retry_initial_s=0.05, retry_max_s=0.2), rig.board)
    task = asyncio.create_task(delivery.serve())
    try:
        unused = set(printed[10:] + more)
        await wait_until(lambda: all(rig.states().get(s) == SerialNumberState.LabelScrapped
                                     for s in unused), 30)
        assert all(rig.states()[s] == SerialNumberState.Allocated for s in used)
        for _ in range(100):  # the failed refill backs off (0.5 s) before the next try
            await rig.reserve.run_once()
            if rig.reserve.level(GTIN) == 30:
                break
            await asyncio.sleep(0.05)
        assert rig.reserve.level(GTIN) == 30 and not rig.reserve.last_error
        fresh = await rig.take("ORDER-2", 30)
        assert not set(fresh) & set(printed + more)  # no number printed twice
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_reserve_table_survives_a_restart_and_close_is_atomic(rig: Rig,
                                                                    tmp_path: Path) -> None:
    await rig.reserve.run_once()
    taken = await rig.take("A", 5)
    await rig.outbox.close()
    rig.outbox = await Outbox.open(StoreSettings(path=tmp_path / "outbox.sqlite",
                                                 synchronous="NORMAL"))
    reserve = Reserve(rig.outbox, rig.client, ReserveSettings(selections=[GTIN], low_water=1,
                                                              fill_to=30))
    rig.reserve = reserve
    await reserve.refresh()
    assert reserve.level(GTIN) == 25
    again = await rig.take("B", 5)
    assert not set(again) & set(taken)

    # a close whose transaction fails leaves the order open (nothing marked for return)
    def failing(conn: sqlite3.Connection) -> None:
        reserve.close_order_in(conn, "A")
        raise RuntimeError("the rest of the command failed")

    with pytest.raises(RuntimeError):
        await rig.outbox.submit(hook=failing)
    assert await reserve.queue_returns() == 0
    await rig.submit(lambda c: reserve.close_order_in(c, "A"))
    assert await reserve.queue_returns() == 5


async def test_serve_refills_when_a_print_drains_the_reserve(rig: Rig) -> None:
    task = asyncio.create_task(rig.reserve.serve())
    try:
        await wait_until(lambda: rig.reserve.level(GTIN) == 30)
        taken = await rig.take("ORDER-9", 25)  # below low_water (10): the take wakes serve()
        await wait_until(lambda: rig.reserve.level(GTIN) == 30)
        assert len(taken) == 25
        allocated = [s for s, st in rig.states().items() if st == SerialNumberState.Allocated]
        assert len(allocated) == 55  # 25 issued to the order + 30 in the reserve
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_print_larger_than_the_reserve_gets_a_refill_to_its_size(rig: Rig) -> None:
    """A refused PRINT count above what is left (level above low_water) or above fill_to got
    NAK 11 "refill requested" for ever: no refill ran. Now the next round refills to it."""
    await rig.reserve.run_once()
    assert rig.reserve.level(GTIN) == 30  # fill_to 30, low_water 10
    await rig.take("ORDER-1", 15)  # 15 left: above low_water, no refill due
    for count in (20, 45):  # above the level, then above fill_to
        with pytest.raises(RemoteProtocolError) as refused:
            await rig.take(f"ORDER-{count}", count)
        assert refused.value.refusal is Refusal.RESERVE_EMPTY
        assert f"refill to at least {max(count, 30)} is requested" in str(refused.value)
        await rig.reserve.run_once()
        assert len(await rig.take(f"ORDER-{count}", count)) == count
    await rig.reserve.run_once()  # nothing is wanted any more: back to fill_to
    assert rig.reserve.level(GTIN) == 30


async def test_a_refill_that_fails_on_a_later_page_keeps_the_earlier_pages(
        tmp_path: Path) -> None:
    """SNRequestAllocated split at MaxSNRequestable 5: pages 1 and 2 arrive, page 3 times out.
    The 10 serial numbers handed out (Allocated upstream) are kept in the reserve."""
    async with running_server(tmp_path / "srv", max_requestable=5) as srv:
        (tmp_path / "c").mkdir()
        client = OpenScsClient(srv.settings(tmp_path / "c"))
        outbox = await Outbox.open(StoreSettings(path=tmp_path / "o.sqlite"))
        reserve = Reserve(outbox, client, ReserveSettings(selections=["G"], low_water=10,
                                                          fill_to=15))
        srv.script["SNRequestAllocated"] = [None, None, ua.StatusCode(ua.StatusCodes.BadTimeout)]
        try:
            await reserve.run_once()
            assert srv.next_serial - 1 == 10  # what the server handed out
            assert reserve.level("G") == 10 and "BadTimeout" in reserve.last_error
            taken = await outbox.submit(hook=lambda c: reserve.take_in(c, "A", "G", 10))
            assert sorted(taken.hook_result) == [f"SN{n:06d}" for n in range(1, 11)]
        finally:
            await client.close()
            await outbox.close()


@dataclass
class Standalone:
    """A reserve on its own outbox against the scriptable server (tests/..._fixture)."""

    srv: ScsServer
    client: OpenScsClient
    outbox: Outbox
    board: StatusBoard
    reserve: Reserve
    db: Path


@contextlib.asynccontextmanager
async def standalone(tmp_path: Path, *, max_requestable: int | None = None,
                     selections: Sequence[str] = ("G",), fill_to: int = 20,
                     **reserve_kw: float) -> AsyncIterator[Standalone]:
    server_kw = {"max_requestable": max_requestable} if max_requestable else {}
    async with running_server(tmp_path / "srv", **server_kw) as srv:  # type: ignore[arg-type]
        (tmp_path / "c").mkdir()
        client = OpenScsClient(srv.settings(tmp_path / "c"))
        db = tmp_path / "o.sqlite"
        outbox = await Outbox.open(StoreSettings(path=db))
        board = StatusBoard()
        reserve = Reserve(outbox, client, ReserveSettings(selections=list(selections),
                                                          low_water=10, fill_to=fill_to),
                          board=board, **reserve_kw)
        try:
            yield Standalone(srv, client, outbox, board, reserve, db)
        finally:
            await client.close()
            await outbox.close()


async def test_each_page_is_stored_before_the_next_is_requested(tmp_path: Path) -> None:
    """Serial numbers handed out upstream are Allocated there: a page must be in the outbox
    file before the next page is asked for, so that a kill or a lost reply mid-refill loses
    at most the page in flight (not the pages that already arrived)."""
    stored_when_asked: list[int] = []
    async with standalone(tmp_path, max_requestable=5, fill_to=15) as st:
        dispatch = st.srv._dispatch

        def counting(name: str, args: list[object]) -> object:
            if name == "SNRequestAllocated":
                with sqlite3.connect(st.db) as conn:  # what is committed, seen from outside
                    stored_when_asked.append(conn.execute(
                        "SELECT COUNT(*) FROM reserve_serials").fetchone()[0])
            return dispatch(name, args)

        st.srv._dispatch = counting
        await st.reserve.run_once()
    assert stored_when_asked == [0, 5, 10]
    assert st.reserve.level("G") == 15


async def test_a_page_that_cannot_be_stored_is_named_in_the_log(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Any failure storing a page (here an I/O error on the second page's insert) logs the
    numbers handed out that are now Allocated upstream only, and is a failed refill with an
    alarm, not a crash of the reserve's service."""
    async with standalone(tmp_path, max_requestable=5, fill_to=15) as st:
        submit, pages = st.outbox.submit, []

        async def failing_second_page(*args: object, **kw: object) -> object:
            if kw.get("hook") is not None and st.srv.next_serial == 11 and not pages:
                pages.append(1)
                raise sqlite3.OperationalError("disk I/O error")
            return await submit(*args, **kw)

        st.outbox.submit = failing_second_page  # type: ignore[method-assign]
        try:
            await st.reserve.run_once()
        finally:
            st.outbox.submit = submit  # type: ignore[method-assign]
    lost = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("could not be stored" in m and "SN000006,SN000007,SN000008,SN000009,SN000010"
               in m for m in lost), lost
    assert "disk I/O error" in _alarms(st.board)["reserve_error"]["G"]
    assert st.reserve.level("G") == 5


async def test_an_interrupted_refill_is_reported_at_the_next_start(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A refill in flight when the gateway died leaves its marker: the next start logs an
    ERROR naming the possible loss and raises the reserve_error alarm until a refill of that
    selection works again."""
    from adapters.openscs.reserve import REFILL_MARKER

    async with standalone(tmp_path) as st:
        outbox, reserve, board = st.outbox, st.reserve, st.board
        await reserve.run_once()  # a normal refill leaves no marker behind
        assert await reserve.interrupted_refills() == {}
        await outbox.submit(state={REFILL_MARKER + "G": json.dumps(
            {"count": 20, "at": 0.0})})  # as a killed refill leaves it
        for garbage in ('{"count": 1e400, "at": NaN}', "not json", '{"at": 1e300}'):
            await outbox.submit(state={REFILL_MARKER + "X": garbage})
            assert "interrupted" in (await reserve.interrupted_refills())["X"]
        found = await reserve.interrupted_refills()
        assert "up to 20 serial numbers may be Allocated upstream" in found["G"]
        assert "interrupted" in _alarms(board)["reserve_error"]["G"]
        assert any(r.levelname == "ERROR" and "interrupted" in r.getMessage()
                   for r in caplog.records)
        assert REFILL_MARKER + "G" not in await outbox.get_state()
        # a failed refill does not hide it, nor does a second start before one works
        st.srv.script["SNRequestAllocated"] = [ua.StatusCode(ua.StatusCodes.BadTimeout)]
        await outbox.submit(hook=lambda c: c.execute("DELETE FROM reserve_serials"))
        await reserve.run_once()
        assert "BadTimeout" in _alarms(board)["reserve_error"]["G"]
        assert "interrupted" in _alarms(board)["reserve_error"]["G"]
        board = StatusBoard()
        reserve = Reserve(outbox, st.client, ReserveSettings(selections=["G"], low_water=10,
                                                             fill_to=20), board=board)
        assert "up to 20" in (await reserve.interrupted_refills())["G"]
        await reserve.run_once()  # a refill that works clears the alarm
        assert reserve.level("G") == 20
        assert set(_alarms(board).get("reserve_error", {})) == {"X"}


def _alarms(board: StatusBoard) -> dict[str, object]:
    return json.loads(str(board_values(board, None)["alarms"]))


async def test_an_empty_reserve_nak_says_the_refill_state(tmp_path: Path) -> None:
    """Not "(upstream refill pending: ok)" when nothing was ever refilled, nor when the last
    refill failed: the NAK says which."""
    async with running_server(tmp_path / "srv") as srv:
        (tmp_path / "c").mkdir()
        client = OpenScsClient(srv.settings(tmp_path / "c"))
        outbox = await Outbox.open(StoreSettings(path=tmp_path / "o.sqlite"))
        reserve = Reserve(outbox, client, ReserveSettings(selections=["G"], low_water=10,
                                                          fill_to=20))

        async def nak() -> str:
            with pytest.raises(RemoteProtocolError) as info:
                await outbox.submit(hook=lambda c: reserve.take_in(c, "A", "G", 2))
            assert info.value.refusal is Refusal.RESERVE_EMPTY
            return str(info.value)

        try:
            text = await nak()
            assert "holds 0, PRINT asked for 2 (not refilled since this start" in text
            assert ": ok" not in text
            srv.script["SNRequestAllocated"] = [ua.StatusCode(ua.StatusCodes.BadTimeout)]
            await reserve.run_once()
            text = await nak()
            assert "last upstream refill failed: SNRequestAllocated: BadTimeout" in text
        finally:
            await client.close()
            await outbox.close()


async def test_a_permanent_refusal_alarms_logs_once_and_backs_off(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The upstream answers InvalidSelectionCriteria (6) for a selection it does not know: the
    reserve_error alarm names it, ERROR is logged once, the refill is retried with a capped
    exponential backoff (not every check interval, not on every PRINT) and a later success
    clears the alarm."""
    async with running_server(tmp_path / "srv") as srv:
        (tmp_path / "c").mkdir()
        client = OpenScsClient(srv.settings(tmp_path / "c"))
        outbox = await Outbox.open(StoreSettings(path=tmp_path / "o.sqlite"))
        board = StatusBoard()
        reserve = Reserve(outbox, client, ReserveSettings(selections=["G"], low_water=10,
                                                          fill_to=20, check_interval_s=0.05),
                          board=board, refused_backoff_s=0.4, refused_backoff_max_s=0.8)
        srv.script["SNRequestAllocated"] = [ReturnStatus.InvalidSelectionCriteria] * 100
        task = asyncio.create_task(reserve.serve())
        try:
            with caplog.at_level(logging.INFO, logger="adapters.openscs.reserve"):
                await wait_until(lambda: srv.recorded("SNRequestAllocated"))
                await wait_until(lambda: "reserve_error" in _alarms(board))
                alarm = _alarms(board)["reserve_error"]
                assert "InvalidSelectionCriteria (6)" in alarm["G"]  # type: ignore[index]
                for _ in range(5):  # PRINTs wake the loop; they do not cut the backoff short
                    with pytest.raises(RemoteProtocolError) as info:
                        await outbox.submit(hook=lambda c: reserve.take_in(c, "A", "G", 2))
                    assert "upstream refused the refill: SNRequestAllocated: ReturnStatus " \
                        "InvalidSelectionCriteria (6); next try in" in str(info.value)
                await asyncio.sleep(1.5)
                calls = len(srv.recorded("SNRequestAllocated"))
                # at 0, 0.4, 1.2 (0.4 doubled, capped at 0.8): not every 0.05 s round (~30)
                assert 2 <= calls <= 4, calls
            mine = [r for r in caplog.records if r.name == "adapters.openscs.reserve"]
            loud = [r for r in mine if r.levelno >= logging.WARNING]
            assert len(loud) == 1 and loud[0].levelno == logging.ERROR, loud
            assert "refused the refill of 20 permanently" in loud[0].getMessage()

            srv.script["SNRequestAllocated"] = []  # the upstream learns the selection
            await wait_until(lambda: reserve.level("G") == 20, 10)
            await wait_until(lambda: "reserve_error" not in _alarms(board), 5)
            assert not reserve.last_error
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await client.close()
            await outbox.close()


async def test_a_refused_selection_only_print_asked_for_is_not_refilled_every_round(
        tmp_path: Path) -> None:
    """A PRINT for a selection nobody configured (a typo) that the upstream refuses for good
    is not retried by the loop round after round; the alarm names it, and the next PRINT for
    it may try again."""
    async with standalone(tmp_path, selections=(), refused_backoff_s=0.0,
                          refused_backoff_max_s=0.0) as st:
        st.srv.script["SNRequestAllocated"] = [ReturnStatus.InvalidSelectionCriteria] * 100
        with pytest.raises(RemoteProtocolError):
            await st.outbox.submit(hook=lambda c: st.reserve.take_in(c, "A", "TYPO", 2))
        for _ in range(5):
            await st.reserve.run_once()
        assert len(st.srv.recorded("SNRequestAllocated")) == 1
        assert "InvalidSelectionCriteria" in _alarms(st.board)["reserve_error"]["TYPO"]
        assert "TYPO" not in st.reserve.levels()


async def test_two_selections_may_hold_the_same_serial_numbers(rig: Rig) -> None:
    """SERIALONLY pools number from the same start, so two GTINs hand out equal numbers: the
    reserve keeps both (keyed by selection and serial), upstream's Allocated numbers all sit
    in the reserve, and a DATA on a printed label finds the row of its own selection."""
    other, other_pool = "09506000134369", "GTIN-09506000134369"
    both = Reserve(rig.outbox, rig.client, ReserveSettings(
        selections=[GTIN, other], low_water=10, fill_to=30, check_interval_s=0.05),
        board=rig.board)
    await both.run_once()
    assert both.level(GTIN) == 30 and both.level(other) == 30
    rows = await rig.submit(lambda c: c.execute(
        "SELECT selection, serial FROM reserve_serials").fetchall())
    held = {sel: {s for t, s in rows if t == sel} for sel in (GTIN, other)}
    assert held[GTIN] & held[other]  # the equal numbers that used to be dropped
    for sel, pool in ((GTIN, POOL_ID), (other, other_pool)):
        allocated = {s for (_, s), st in rig.server.serial_states(pool).items()
                     if st == SerialNumberState.Allocated}
        assert allocated == held[sel]
    printed = await rig.submit(lambda c: both.take_in(c, "O-1", other, 1))
    serial = printed[0]
    assert serial in held[GTIN]  # also available in the first selection
    came = await rig.submit(lambda c: both.mark_used_in(c, serial, True, "O-1"))
    assert came == (other, other_pool)
    left = await rig.submit(lambda c: c.execute(
        "SELECT selection, state FROM reserve_serials WHERE serial=? ORDER BY selection",
        (serial,)).fetchall())
    # the first selection's equal number is still available; the label is remembered as used
    assert left == [(GTIN, AVAILABLE), (other, USED)]


async def test_a_reserve_table_keyed_by_serial_alone_is_rebuilt_with_its_rows(
        tmp_path: Path) -> None:
    """An outbox of schema 2 holding the first reserve layout: opening it migrates to schema
    3 (which an older gateway refuses instead of misreading) and keeps the rows."""
    from adapters.openscs.reserve import ensure_schema
    from gateway import outbox_schema

    path = tmp_path / "outbox.sqlite"
    await (await Outbox.open(StoreSettings(path=path))).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE reserve_serials (serial TEXT PRIMARY KEY, selection TEXT NOT "
                 "NULL, state INTEGER NOT NULL DEFAULT 0, ordnr TEXT NOT NULL DEFAULT '', "
                 "pool_id TEXT NOT NULL DEFAULT '', added_at REAL NOT NULL)")
    conn.execute("CREATE INDEX reserve_by_state ON reserve_serials (selection, state, added_at)")
    conn.executemany("INSERT INTO reserve_serials VALUES (?, ?, ?, ?, ?, ?)",
                     [("100001", GTIN, 1, "O-1", POOL_ID, 1.0),
                      ("100002", GTIN, 0, "", POOL_ID, 2.0)])
    conn.execute("PRAGMA user_version = 2")
    conn.close()
    outbox = await Outbox.open(StoreSettings(path=path))
    await outbox.close()
    conn = sqlite3.connect(path, isolation_level=None)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == outbox_schema.SCHEMA_VERSION == 3
    keys = {r[1] for r in conn.execute("PRAGMA table_info(reserve_serials)") if r[5]}
    assert keys == {"selection", "serial"}
    assert conn.execute("SELECT serial, selection, state, ordnr, pool_id, added_at FROM "
                        "reserve_serials ORDER BY serial").fetchall() == [
        ("100001", GTIN, 1, "O-1", POOL_ID, 1.0), ("100002", GTIN, 0, "", POOL_ID, 2.0)]
    conn.execute("INSERT INTO reserve_serials (serial, selection, added_at) VALUES "
                 "('100001', 'other', 3.0)")  # the same number in another selection now fits
    conn.execute("BEGIN")
    ensure_schema(conn)  # idempotent
    conn.execute("COMMIT")
    assert conn.execute("SELECT COUNT(*) FROM reserve_serials").fetchone() == (3,)
    conn.close()
