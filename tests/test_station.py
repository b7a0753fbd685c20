"""Station rules over a real outbox file: what each command commits and how it is refused."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from adapters.oip.codec import NAK_CODES
from adapters.oip.pattern import match_pattern
from gateway.board import StatusBoard
from gateway.model import (
    Ack,
    Init,
    Instruction,
    LoadOrder,
    Login,
    Nak,
    Order,
    Origin,
    Ping,
    PrintRequest,
    Refusal,
    Step,
    StepResult,
    encode_json,
)
from gateway.outbox import Outbox
from gateway.settings import OipSettings, Settings, StoreSettings
from gateway.station import Station, order_from_json, order_to_dict, order_to_json

ORDER = Order("ZI355937", "31", "30", "31", "567016", "355937", "XXXXA0NDXAN6XXXXX", "G",
              "FED", "L", "ZW", (
                  Instruction("G5A1", 1, 10, "1045075", "1041075", "wZw Black Pad", 1,
                              (Step(100001, "", 1), Step(0, "11an||00*", 3))),
                  Instruction("G5A2", 2, 5, "1035252", "", "AirBag Sft Pnl", 1,
                              (Step(2, "", 4), Step(0, "14an||NPZQ*", 3))),
              ))


def origin(tsn: int, payload: str = "", peer: str = "10.0.0.5") -> Origin:
    return Origin("tcp", peer, tsn, payload or f"hash-{tsn}")


@pytest.fixture
async def env(tmp_path: Path):
    settings = Settings(store=StoreSettings(path=tmp_path / "outbox.sqlite"))
    outbox = await Outbox.open(settings.store)
    board = StatusBoard()
    station = Station(settings, outbox, board, pattern_check=match_pattern)
    await station.load()
    yield settings, outbox, board, station
    await outbox.close()


async def _messages(outbox: Outbox) -> list:
    out = []
    for stream in await outbox.pending_streams():
        out += await outbox.pending(stream, 1000)
    return sorted(out, key=lambda m: m.id)


def test_order_json_round_trip():
    assert order_from_json(order_to_json(ORDER)) == ORDER
    # assembled from per-instruction JSON kept per object: the same text as encoding the
    # dict, for the same objects again, for equal but distinct objects, and past the bound
    assert order_to_json(ORDER) == encode_json(order_to_dict(ORDER))
    assert order_to_json(ORDER) == encode_json(order_to_dict(ORDER))
    twin = dataclasses.replace(ORDER, instructions=tuple(
        dataclasses.replace(ins, iname=ins.iname + "é") for ins in ORDER.instructions))
    assert json.loads(order_to_json(twin)) == order_to_dict(twin)
    for n in range(1500):
        other = dataclasses.replace(ORDER, Ordnr=f"O{n}", instructions=tuple(
            dataclasses.replace(ins, gord=n) for ins in ORDER.instructions))
        assert order_from_json(order_to_json(other)) == other
    assert order_to_json(ORDER) == encode_json(order_to_dict(ORDER))
    # the hand-written conversion must follow the dataclasses (a new field would be lost)
    assert order_to_dict(ORDER) == json.loads(json.dumps(dataclasses.asdict(ORDER)))


async def test_thin_slice_commits_events_with_context(env):
    settings, outbox, board, station = env
    assert await station.handle(Login("alice"), origin(1)) == Ack()
    assert await station.handle(LoadOrder(ORDER), origin(2)) == Ack()
    ok = StepResult("ZI355937", "G5A1", 1, 10, 2, True, "00123456789")
    nok = StepResult("ZI355937", "G5A2", 2, 5, 2, False, "NPZQ0000000001")
    assert await station.handle(ok, origin(3)) == Ack()
    assert await station.handle(nok, origin(4)) == Ack()
    events = [m for m in await _messages(outbox) if m.stream == "event"]
    assert [m.kind for m in events] == ["SIDCommissioningEvent", "LabelsScrappingEvent"]
    assert events[0].body["serials"] == ["00123456789"]
    assert events[0].body["context"] == {"Ordnr": "ZI355937", "VIN": "XXXXA0NDXAN6XXXXX",
                                         "prdline": "ZW", "station": settings.station.name}
    assert len({m.key for m in events}) == 2  # distinct idempotency keys
    results = [m for m in await _messages(outbox) if m.stream == "results"]
    assert [m.kind for m in results] == ["Order", "StepResult", "StepResult"]
    # the audit record of the ORDER (its body is spliced from JSON text) reads back whole
    assert results[0].body == {"Ordnr": "ZI355937", "user": "alice", "tsn": 2,
                               "peer": origin(2).peer, "order": order_to_dict(ORDER)}
    assert order_from_json((await outbox.get_state())["order"]) == ORDER
    assert board.user == "alice" and board.script == "ZI355937" and board.cmd == "DATA"
    assert board.counters["events_committed"] == 2


async def test_retransmission_is_acked_once_and_reuse_is_refused(env):
    _, outbox, _, station = env
    await station.handle(LoadOrder(ORDER), origin(7, "a"))
    ok = StepResult("ZI355937", "G5A1", 1, 10, 2, True, "00123456789")
    assert await station.handle(ok, origin(8, "p")) == Ack()
    assert await station.handle(ok, origin(8, "p")) == Ack(duplicate=True)
    reply = await station.handle(ok, origin(8, "other"))
    assert isinstance(reply, Nak) and reply.refusal is Refusal.TSN_REUSED
    assert "tsn 8" in reply.text
    events = [m for m in await _messages(outbox) if m.stream == "event"]
    assert len(events) == 1
    # INIT clears the window: tsn 8 may be used again
    assert await station.handle(Init(), origin(9)) == Ack()
    await station.handle(LoadOrder(ORDER), origin(10))
    assert await station.handle(ok, origin(8, "other")) == Ack()


async def test_init_keeps_the_window_of_what_commits_after_it(env):
    """Two connections of one peer: an INIT and an ORDER share a commit, the ORDER after the
    INIT. The ORDER's window entry must survive the INIT, so that its resend (ACK lost) is
    re-ACKed and not loaded again."""
    _, outbox, _, station = env
    other = dataclasses.replace(ORDER, Ordnr="Y2")
    init, loaded = await asyncio.gather(station.handle(Init(), origin(2, "init")),
                                        station.handle(LoadOrder(ORDER), origin(100, "x1")))
    assert init == Ack() and loaded == Ack()
    assert await station.handle(LoadOrder(other), origin(101, "y2")) == Ack()
    assert await station.handle(LoadOrder(ORDER), origin(100, "x1")) == Ack(duplicate=True)
    orders = [m.body["Ordnr"] for m in await _messages(outbox) if m.kind == "Order"]
    assert orders == [ORDER.Ordnr, "Y2"]
    assert station.order is not None and station.order.Ordnr == "Y2"
    # a new INIT still clears the window: tsn 100 may carry something else afterwards
    assert await station.handle(Init(), origin(3)) == Ack()
    assert await station.handle(LoadOrder(other), origin(100, "y2-again")) == Ack()


async def test_every_init_resets_even_with_a_tsn_seen_before(env):
    """An INIT carries only its tsn: a PAC that starts every session with INIT tsn=1 (or
    reuses the tsn of an earlier packet) must get a reset each time, not a duplicate ACK or
    a NAK 6, and its next packets must be accepted."""
    _, _, _, station = env
    assert await station.handle(Login("alice"), origin(1, "login")) == Ack()
    assert await station.handle(Init(), origin(1)) == Ack()  # tsn 1 was the LOGIN's
    assert station.user == ""
    assert await station.handle(LoadOrder(ORDER), origin(2, "order")) == Ack()
    assert await station.handle(Init(), origin(1)) == Ack()  # the next session, same INIT
    assert station.order is None
    assert await station.handle(Login("bob"), origin(2, "login-bob")) == Ack()  # tsn 2 free
    assert station.user == "bob"


@pytest.mark.parametrize(("data", "refusal", "needle"), [
    (StepResult("ZI355937", "G5A1", 1, 10, 2, True, "X0123456789"), Refusal.PATTERN_MISMATCH,
     "11an||00*"),
    (StepResult("ZI355937", "G5A1", 1, 10, 2, True, "0012345"), Refusal.PATTERN_MISMATCH,
     "11an||00*"),
    (StepResult("ZI355937", "G5A1", 1, 10, 9, True, "x"), Refusal.UNKNOWN_STEP, "step 9"),
    (StepResult("ZI355937", "G9", 1, 10, 1, True, "x"), Refusal.UNKNOWN_STEP, "G9"),
    (StepResult("OTHER", "G5A1", 1, 10, 2, True, "00123456789"), Refusal.NO_ORDER, "OTHER"),
])
async def test_data_refusals_name_the_problem(env, data, refusal, needle):
    _, outbox, _, station = env
    await station.handle(LoadOrder(ORDER), origin(1))
    before = len(await _messages(outbox))
    reply = await station.handle(data, origin(2))
    assert isinstance(reply, Nak) and reply.refusal is refusal
    assert needle in reply.text
    assert len(await _messages(outbox)) == before  # nothing committed for a refusal


async def test_data_without_order_and_print_without_reserve(env):
    _, _, _, station = env
    reply = await station.handle(StepResult("Z", "G", 1, 1, 1, True, "1"), origin(1))
    assert isinstance(reply, Nak) and reply.refusal is Refusal.NO_ORDER
    await station.handle(LoadOrder(ORDER), origin(2))
    reply = await station.handle(PrintRequest("ZI355937", "GTIN", 2), origin(3))
    assert isinstance(reply, Nak) and reply.refusal is Refusal.RESERVE_EMPTY


async def test_require_login(tmp_path):
    settings = Settings(store=StoreSettings(path=tmp_path / "o.sqlite"),
                        oip=OipSettings(require_login=True))
    outbox = await Outbox.open(settings.store)
    try:
        station = Station(settings, outbox, StatusBoard(), pattern_check=match_pattern)
        await station.load()
        reply = await station.handle(LoadOrder(ORDER), origin(1))
        assert isinstance(reply, Nak) and reply.refusal is Refusal.NOT_LOGGED_IN
        assert await station.handle(Login("op1"), origin(2)) == Ack()
        assert await station.handle(LoadOrder(ORDER), origin(3)) == Ack()
    finally:
        await outbox.close()


async def test_session_and_window_survive_a_restart(tmp_path):
    settings = Settings(store=StoreSettings(path=tmp_path / "o.sqlite"))
    outbox = await Outbox.open(settings.store)
    station = Station(settings, outbox, StatusBoard(), pattern_check=match_pattern)
    await station.load()
    await station.handle(Login("alice"), origin(1))
    await station.handle(LoadOrder(ORDER), origin(2))
    await outbox.close()

    outbox = await Outbox.open(settings.store)
    try:
        board = StatusBoard()
        station = Station(settings, outbox, board, pattern_check=match_pattern)
        await station.load()
        assert station.order == ORDER and station.user == "alice"
        assert board.script == "ZI355937" and board.user == "alice"
        # the retransmission window is in the file too
        assert await station.handle(LoadOrder(ORDER), origin(2)) == Ack(duplicate=True)
    finally:
        await outbox.close()


async def test_drain_refuses_new_commands(env):
    _, _, _, station = env
    assert await station.handle(Ping(), origin(1)) == Ack()
    assert await station.drain(1.0) is True
    reply = await station.handle(Ping(), origin(2))
    assert isinstance(reply, Nak) and reply.refusal is Refusal.BUSY


async def test_concurrent_commands_all_commit(env):
    _, outbox, _, station = env
    await station.handle(LoadOrder(ORDER), origin(1))
    datas = [dataclasses.replace(StepResult("ZI355937", "G5A1", 1, 10, 2, True,
                                            f"00{n:09d}")) for n in range(50)]
    replies = await asyncio.gather(*(station.handle(d, origin(100 + n, peer=f"10.0.1.{n}"))
                                     for n, d in enumerate(datas)))
    assert all(r == Ack() for r in replies)
    events = [m for m in await _messages(outbox) if m.stream == "event"]
    assert sorted(m.body["serials"][0] for m in events) == sorted(d.value for d in datas)


async def test_concurrent_orders_share_commits_and_memory_matches_the_store(tmp_path):
    """ORDERs from many connections are committed together; whatever order they land in,
    the station's current order is the one the store holds, and a restart agrees."""
    settings = Settings(store=StoreSettings(path=tmp_path / "outbox.sqlite"))
    outbox = await Outbox.open(settings.store)
    station = Station(settings, outbox, StatusBoard(), pattern_check=match_pattern)
    await station.load()
    orders = [dataclasses.replace(ORDER, Ordnr=f"ZI{n:06d}") for n in range(60)]
    commits_before = outbox.commits
    replies = await asyncio.gather(*(station.handle(LoadOrder(o), origin(n, peer=f"pac{n}"))
                                     for n, o in enumerate(orders)))
    assert all(r == Ack() for r in replies)
    assert outbox.commits - commits_before < len(orders)  # group commit happened
    stored = order_from_json((await outbox.get_state())["order"])
    assert station.order == stored
    await outbox.close()
    outbox = await Outbox.open(settings.store)
    again = Station(settings, outbox, StatusBoard(), pattern_check=match_pattern)
    await again.load()
    assert again.order == stored
    await outbox.close()


async def test_two_pacs_under_one_user_keep_their_own_tsn_windows(env):
    """The retransmission window is per peer: a second PAC reusing the first one's tsn is not
    'tsn reused', and a packet resent across a LOGIN is still recognised."""
    _, outbox, _, station = env
    first = await station.handle(LoadOrder(ORDER), origin(7, "order", peer="10.0.0.5"))
    assert first == Ack()
    assert await station.handle(Login("alice"), origin(8, "login", peer="10.0.0.5")) == Ack()
    # resent after the LOGIN: the same packet, recognised, not applied again
    again = await station.handle(LoadOrder(ORDER), origin(7, "order", peer="10.0.0.5"))
    assert again == Ack(duplicate=True)
    ok_a = StepResult("ZI355937", "G5A1", 1, 10, 2, True, "00123456789")
    ok_b = StepResult("ZI355937", "G5A1", 1, 10, 2, True, "00987654321")
    assert await station.handle(ok_a, origin(9, "a", peer="10.0.0.5")) == Ack()
    assert await station.handle(ok_b, origin(9, "b", peer="10.0.0.6")) == Ack()
    msgs = await _messages(outbox)
    assert [m.kind for m in msgs if m.stream == "results"] == ["Order", "StepResult",
                                                               "StepResult"]
    assert sorted(m.body["serials"][0] for m in msgs if m.stream == "event") == [
        "00123456789", "00987654321"]


async def test_nok_with_a_non_serial_value_is_recorded_without_an_event(env):
    _, outbox, _, station = env
    await station.handle(LoadOrder(ORDER), origin(1))
    unreadable = StepResult("ZI355937", "G5A1", 1, 10, 2, False, "zz")
    assert await station.handle(unreadable, origin(2)) == Ack()
    scrapped = StepResult("ZI355937", "G5A1", 1, 10, 2, False, "00123456789")
    assert await station.handle(scrapped, origin(3)) == Ack()
    empty_ok = StepResult("ZI355937", "G5A1", 1, 10, 2, True, "")
    reply = await station.handle(empty_ok, origin(4))
    assert isinstance(reply, Nak) and "no serial number" in reply.text
    msgs = await _messages(outbox)
    assert [m.body["value"] for m in msgs if m.kind == "StepResult"] == ["zz", "00123456789"]
    events = [m for m in msgs if m.stream == "event"]
    assert [(m.kind, m.body["serials"]) for m in events] == [
        ("LabelsScrappingEvent", ["00123456789"])]


async def reserve_station(tmp_path: Path) -> tuple[
        Outbox, Station, Callable[[], Awaitable[dict[str, tuple[int, str]]]]]:
    """A station with a serial-number reserve holding six serials of GTIN1 (never connected:
    nothing here talks to upstream), and a reader of the reserve's rows."""
    from adapters.openscs.client import OpenScsClient
    from adapters.openscs.reserve import AVAILABLE, Reserve, ensure_schema
    from gateway.settings import OpenScsSettings, ReserveSettings

    settings = Settings(store=StoreSettings(path=tmp_path / "outbox.sqlite"))
    outbox = await Outbox.open(settings.store)

    def fill(conn):
        ensure_schema(conn)
        conn.executemany("INSERT INTO reserve_serials (serial, selection, state, pool_id, "
                         "added_at) VALUES (?, 'GTIN1', ?, 'P1', ?)",
                         [(f"00{n:09d}", AVAILABLE, float(n)) for n in range(6)])

    await outbox.submit(hook=fill)
    reserve = Reserve(outbox, OpenScsClient(OpenScsSettings()), ReserveSettings())
    station = Station(settings, outbox, StatusBoard(), pattern_check=match_pattern,
                      reserve=reserve)
    await station.load()

    async def states() -> dict[str, tuple[int, str]]:
        result = await outbox.submit(hook=lambda c: dict(
            (r[0], (r[1], r[2])) for r in c.execute(
                "SELECT serial, state, ordnr FROM reserve_serials")))
        return result.hook_result

    return outbox, station, states


async def test_unused_printed_serials_return_at_new_order_and_at_explicit_close(tmp_path):
    """Order close = a new ORDER, INIT or the explicit close: serial numbers issued to the
    closed order and never used are marked for return (the reserve's loop sends them)."""
    from adapters.openscs.reserve import RETURNING, USED

    outbox, station, states = await reserve_station(tmp_path)
    first, second = ORDER, dataclasses.replace(ORDER, Ordnr="ZI000002")
    assert await station.handle(LoadOrder(first), origin(1)) == Ack()
    printed = await station.handle(PrintRequest(first.Ordnr, "GTIN1", 3), origin(2))
    used = StepResult(first.Ordnr, "G5A1", 1, 10, 2, True, printed.serials[0])
    assert await station.handle(used, origin(3)) == Ack()
    assert await station.handle(LoadOrder(second), origin(4)) == Ack()  # closes the first
    now = await states()
    assert now[printed.serials[0]] == (USED, first.Ordnr)  # used: remembered, not returned
    assert [now[s] for s in printed.serials[1:]] == [(RETURNING, first.Ordnr)] * 2
    again = await station.handle(PrintRequest(second.Ordnr, "GTIN1", 1), origin(5))
    assert await station.close_order() == second.Ordnr
    assert station.order is None
    assert (await states())[again.serials[0]] == (RETURNING, second.Ordnr)
    assert (await outbox.get_state()).get("order") is None
    await outbox.close()


async def test_reloading_the_current_order_keeps_its_printed_serials(tmp_path):
    """A PAC that restarted sends its current order again (new tsn): the serials printed for
    it stay issued to it (not reported scrapped) and can still be used."""
    from adapters.openscs.reserve import ISSUED

    outbox, station, states = await reserve_station(tmp_path)
    assert await station.handle(LoadOrder(ORDER), origin(1)) == Ack()
    printed = await station.handle(PrintRequest(ORDER.Ordnr, "GTIN1", 2), origin(2))
    assert await station.handle(LoadOrder(ORDER), origin(3)) == Ack()  # the reload
    assert [(await states())[s] for s in printed.serials] == [(ISSUED, ORDER.Ordnr)] * 2
    used = StepResult(ORDER.Ordnr, "G5A1", 1, 10, 2, True, printed.serials[0])
    assert await station.handle(used, origin(4)) == Ack()
    kinds = [m.kind for m in await _messages(outbox) if m.stream == "event"]
    assert kinds == ["SIDCommissioningEvent"]  # and no LabelsScrappingEvent
    await outbox.close()


async def test_a_label_reported_scrapped_is_refused_by_data_ok_on_its_order(tmp_path):
    """Labels this gateway printed and reported scrapped (order closed unused by an INIT and
    loaded again; a DATA NOK then a rescan OK) are refused by DATA OK with NAK 13, also on
    another order, and a label of an order closed just now too (its close reports it). A
    number the reserve holds unprinted is taken out of it and reported from its pool, once."""
    from adapters.openscs.reserve import (
        AVAILABLE,
        CLOSED_UNUSED,
        SCRAPPED,
        SCRAPPED_MEMORY_S,
        USED,
    )

    outbox, station, states = await reserve_station(tmp_path)
    other = dataclasses.replace(ORDER, Ordnr="ZI000002")

    def ok(order: Order, serial: str, tsn: int) -> Awaitable[object]:
        return station.handle(StepResult(order.Ordnr, "G5A1", 1, 10, 2, True, serial),
                              origin(tsn))

    assert await station.handle(LoadOrder(ORDER), origin(1)) == Ack()
    printed = await station.handle(PrintRequest(ORDER.Ordnr, "GTIN1", 3), origin(2))
    assert await station.handle(Init(), origin(3)) == Ack()  # closes the order
    assert await station._reserve.queue_returns() == 3
    assert {(await states())[s][0] for s in printed.serials} == {SCRAPPED}
    assert await station.handle(LoadOrder(ORDER), origin(4)) == Ack()  # loaded again
    reply = await ok(ORDER, printed.serials[0], 5)
    assert isinstance(reply, Nak) and reply.refusal is Refusal.SERIAL_SCRAPPED
    assert f"serial {printed.serials[0]} (printed for order {ORDER.Ordnr}" in reply.text

    fresh = await station.handle(PrintRequest(ORDER.Ordnr, "GTIN1", 1), origin(6))
    label = fresh.serials[0]
    nok = StepResult(ORDER.Ordnr, "G5A1", 1, 10, 2, False, label)
    assert await station.handle(nok, origin(7)) == Ack()  # reported scrapped by the NOK
    rescan = await ok(ORDER, label, 8)
    assert isinstance(rescan, Nak) and rescan.refusal is Refusal.SERIAL_SCRAPPED
    counted = station._board.counters["events_committed"]
    assert await station.handle(dataclasses.replace(nok, value=label), origin(80)) == Ack()
    # (a second NOK: the result is recorded, no second scrapping goes upstream)
    assert station._board.counters["events_committed"] == counted

    assert await station.handle(LoadOrder(other), origin(9)) == Ack()
    # a label printed for ORDER and reported scrapped there is not this order's either
    reply = await ok(other, printed.serials[1], 10)
    assert isinstance(reply, Nak) and reply.refusal is Refusal.SERIAL_SCRAPPED
    assert f"printed for another order (order {ORDER.Ordnr}" in reply.text
    # a number the reserve holds unprinted: taken out (never printed later), its pool named
    unprinted = sorted(s for s, (st, _) in (await states()).items() if st == AVAILABLE)[-1]
    assert await ok(other, unprinted, 11) == Ack()
    assert (await ok(other, unprinted, 15)).refusal is Refusal.SERIAL_CONFLICT  # used once
    # a label printed for an order closed just now (not yet reported scrapped) neither: its
    # order's close reports it scrapped
    third = dataclasses.replace(ORDER, Ordnr="ZI000003")
    left = (await station.handle(PrintRequest(other.Ordnr, "GTIN1", 1), origin(12))).serials[0]
    assert await station.handle(LoadOrder(third), origin(13)) == Ack()
    assert (await ok(third, left, 14)).refusal is Refusal.SERIAL_SCRAPPED
    nok_left = StepResult(third.Ordnr, "G5A1", 1, 10, 2, False, left)
    assert await station.handle(nok_left, origin(16)) == Ack()  # recorded, no event
    now = await states()
    assert now[printed.serials[1]][0] == SCRAPPED and now[unprinted] == (USED, other.Ordnr)
    assert now[left] == (CLOSED_UNUSED, other.Ordnr)
    events = [(m.kind, m.body["serials"], m.body["pool"]) for m in await _messages(outbox)
              if m.stream == "event"]
    assert events == [("LabelsScrappingEvent", list(printed.serials), "GTIN1"),
                      ("LabelsScrappingEvent", [label], "GTIN1"),
                      ("SIDCommissioningEvent", [unprinted], "GTIN1")]
    results = [m for m in await _messages(outbox) if m.kind == "StepResult"]
    assert sum(1 for m in results if m.body["value"] == label and not m.body["ok"]) == 2
    assert sum(1 for m in results if m.body["value"] == left) == 1  # the NOK

    month_ago = time.time() - SCRAPPED_MEMORY_S - 60
    await outbox.submit(hook=lambda c: c.execute(
        "UPDATE reserve_serials SET added_at=? WHERE state IN (?, ?)",
        (month_ago, SCRAPPED, USED)))
    await station._reserve.refresh()  # forgets what was used or scrapped longer ago
    assert not {*printed.serials, label, unprinted} & set(await states())
    await outbox.close()


async def test_a_re_run_data_hook_starts_from_the_planned_body(tmp_path):
    """The writer re-runs hooks (guarded reruns, a full disk); the DATA hook must not keep
    what an earlier run filled in when the reserve answers otherwise the second time."""
    outbox, station, _ = await reserve_station(tmp_path)
    assert await station.handle(LoadOrder(ORDER), origin(1)) == Ack()
    printed = await station.handle(PrintRequest(ORDER.Ordnr, "GTIN1", 1), origin(2))
    nok = StepResult(ORDER.Ordnr, "G5A1", 1, 10, 2, False, printed.serials[0])
    _, messages, hook = station._plan_step_result(nok, origin(3))
    assert hook is not None
    body = messages[-1].body

    def first_then_undo(conn):
        hook(conn)  # finds the printed label: pool, pool_id, encode_first
        filled = dict(body)
        conn.execute("UPDATE reserve_serials SET ordnr='ELSEWHERE'")  # now not this order's
        hook(conn)
        return filled, dict(body)

    result = await outbox.submit(hook=first_then_undo)
    filled, again = result.hook_result
    assert filled["pool"] == "GTIN1" and filled["encode_first"] is True
    assert again["pool"] == "" and "pool_id" not in again and "encode_first" not in again
    await outbox.close()


async def test_a_print_racing_an_order_of_another_pac_is_refused(tmp_path):
    """PAC B's PRINT for the current order X and PAC A's ORDER Y share a commit, the ORDER
    first: X is closed when the PRINT runs, so the PRINT is refused (NAK 8) and no serial is
    issued to the closed order (it would never be used nor reported scrapped)."""
    from adapters.openscs.reserve import AVAILABLE

    outbox, station, states = await reserve_station(tmp_path)
    second = dataclasses.replace(ORDER, Ordnr="ZI000002")
    assert await station.handle(LoadOrder(ORDER), origin(1, peer="10.0.0.1")) == Ack()
    loaded, printed = await asyncio.gather(
        station.handle(LoadOrder(second), origin(2, peer="10.0.0.1")),
        station.handle(PrintRequest(ORDER.Ordnr, "GTIN1", 2), origin(7, peer="10.0.0.2")))
    assert loaded == Ack()
    assert isinstance(printed, Nak) and printed.refusal is Refusal.NO_ORDER
    assert "closed just before this PRINT (order ZI000002 was loaded)" in printed.text
    assert {state for state, _ in (await states()).values()} == {AVAILABLE}
    # refused, so not recorded: the same tsn for the new order is a new packet
    again = await station.handle(PrintRequest(second.Ordnr, "GTIN1", 1), origin(7, peer="10.0.0.2"))
    assert isinstance(again, Ack) and len(again.serials) == 1
    await outbox.close()


async def test_init_clears_order_and_user_and_data_then_has_no_order(env):
    _, outbox, board, station = env
    assert await station.handle(Login("alice"), origin(1)) == Ack()
    assert await station.handle(LoadOrder(ORDER), origin(2)) == Ack()
    assert await station.handle(Init(), origin(3)) == Ack()
    assert (station.user, station.order, board.user, board.script) == ("", None, "", "")
    assert await outbox.get_state() == {}
    data = StepResult("ZI355937", "G5A1", 1, 10, 2, True, "00123456789")
    reply = await station.handle(data, origin(4))
    assert isinstance(reply, Nak) and reply.refusal is Refusal.NO_ORDER


async def reload(settings: Settings, outbox: Outbox) -> tuple[Outbox, Station]:
    """Close the outbox and start a station afresh on the same file (a restart)."""
    await outbox.close()
    outbox = await Outbox.open(settings.store)
    station = Station(settings, outbox, StatusBoard(), pattern_check=match_pattern)
    await station.load()
    return outbox, station


async def test_committed_data_resent_after_the_order_changed_is_acked_not_refused(env):
    """DATA committed, ACK lost, another PAC loads another ORDER, the DATA is resent: the
    stored reply (ACK), nothing committed twice. A new DATA for the old order is still NAK 8
    and records nothing (its tsn stays free); the committed tsn with other content is NAK 6."""
    _, outbox, _, station = env
    assert await station.handle(LoadOrder(ORDER), origin(1, "A")) == Ack()
    data = StepResult("ZI355937", "G5A1", 1, 10, 2, True, "00123ABC789")
    assert await station.handle(data, origin(2, "D")) == Ack()
    before = await _messages(outbox)
    other = dataclasses.replace(ORDER, Ordnr="B1")
    assert await station.handle(LoadOrder(other), origin(1, "B", peer="10.0.0.6")) == Ack()
    assert await station.handle(data, origin(2, "D")) == Ack(duplicate=True)
    assert len(await _messages(outbox)) == len(before) + 1  # only the second ORDER

    reused = await station.handle(dataclasses.replace(data, value="00123ABC780"),
                                  origin(2, "D2"))
    assert isinstance(reused, Nak) and reused.refusal is Refusal.TSN_REUSED
    new = await station.handle(dataclasses.replace(data, value="00123ABC781"), origin(3, "E"))
    assert isinstance(new, Nak) and new.refusal is Refusal.NO_ORDER
    assert len(await _messages(outbox)) == len(before) + 1
    # the refused tsn 3 was not recorded: it may carry other content now
    fresh = StepResult("B1", "G5A1", 1, 10, 2, True, "00123ABC782")
    assert await station.handle(fresh, origin(3, "F")) == Ack()
    assert station.order is not None and station.order.Ordnr == "B1"


async def test_committed_order_resent_after_logout_is_acked(tmp_path):
    settings = Settings(store=StoreSettings(path=tmp_path / "o.sqlite"),
                        oip=OipSettings(require_login=True))
    outbox = await Outbox.open(settings.store)
    try:
        station = Station(settings, outbox, StatusBoard(), pattern_check=match_pattern)
        await station.load()
        assert await station.handle(Login("op1"), origin(1)) == Ack()
        assert await station.handle(LoadOrder(ORDER), origin(2)) == Ack()
        await station.logout()
        assert await station.handle(LoadOrder(ORDER), origin(2)) == Ack(duplicate=True)
        other = await station.handle(LoadOrder(ORDER), origin(3))
        assert isinstance(other, Nak) and other.refusal is Refusal.NOT_LOGGED_IN
    finally:
        await outbox.close()


async def test_order_resent_after_close_changes_neither_memory_nor_store(tmp_path):
    """A duplicate never changes memory: after close_order (or an ORDER of another PAC), a
    resent ORDER is re-ACKed and the station keeps what the store holds, across a restart."""
    settings = Settings(store=StoreSettings(path=tmp_path / "o.sqlite"))
    outbox = await Outbox.open(settings.store)
    station = Station(settings, outbox, StatusBoard(), pattern_check=match_pattern)
    await station.load()
    assert await station.handle(LoadOrder(ORDER), origin(1, "A")) == Ack()
    assert await station.close_order() == ORDER.Ordnr
    assert await station.handle(LoadOrder(ORDER), origin(1, "A")) == Ack(duplicate=True)
    assert station.order is None and (await outbox.get_state()).get("order") is None
    other = dataclasses.replace(ORDER, Ordnr="B1")
    assert await station.handle(LoadOrder(other), origin(5, "B", peer="10.0.0.6")) == Ack()
    assert await station.handle(LoadOrder(ORDER), origin(1, "A")) == Ack(duplicate=True)
    assert station.order == other
    outbox, station = await reload(settings, outbox)
    try:
        assert station.order == other
        data = StepResult("ZI355937", "G5A1", 1, 10, 2, True, "00123ABC789")
        reply = await station.handle(data, origin(2, "D"))
        assert isinstance(reply, Nak) and reply.refusal is Refusal.NO_ORDER
    finally:
        await outbox.close()


async def test_print_resent_after_close_order_gets_the_same_serials(tmp_path):
    """A PRINT committed before close_order and resent after it (ACK lost) is answered with
    the serial numbers it was given, without taking new ones — also after a restart."""
    from adapters.openscs.client import OpenScsClient
    from adapters.openscs.reserve import AVAILABLE, Reserve, ensure_schema
    from gateway.settings import OpenScsSettings, ReserveSettings

    settings = Settings(store=StoreSettings(path=tmp_path / "outbox.sqlite"))

    def fill(conn):
        ensure_schema(conn)
        conn.executemany("INSERT INTO reserve_serials (serial, selection, state, pool_id, "
                         "added_at) VALUES (?, 'GTIN1', ?, 'P1', ?)",
                         [(f"00{n:09d}", AVAILABLE, float(n)) for n in range(6)])

    async def start() -> tuple[Outbox, Station]:
        outbox = await Outbox.open(settings.store)
        reserve = Reserve(outbox, OpenScsClient(OpenScsSettings()), ReserveSettings())
        station = Station(settings, outbox, StatusBoard(), pattern_check=match_pattern,
                          reserve=reserve)
        await station.load()
        return outbox, station

    outbox, station = await start()
    await outbox.submit(hook=fill)
    request = PrintRequest(ORDER.Ordnr, "GTIN1", 2)
    assert await station.handle(LoadOrder(ORDER), origin(1)) == Ack()
    printed = await station.handle(request, origin(2))
    assert isinstance(printed, Ack) and len(printed.serials) == 2
    await station.close_order()
    again = await station.handle(request, origin(2))
    assert again == Ack(serials=printed.serials, duplicate=True)
    new = await station.handle(request, origin(3))
    assert isinstance(new, Nak) and new.refusal is Refusal.NO_ORDER
    await outbox.close()
    outbox, station = await start()
    try:
        assert await station.handle(request, origin(2)) == Ack(serials=printed.serials,
                                                                duplicate=True)
        left = await outbox.submit(hook=lambda c: c.execute(
            "SELECT COUNT(*) FROM reserve_serials WHERE state=?", (AVAILABLE,)).fetchone()[0])
        assert left.hook_result == 4  # nothing new was taken
    finally:
        await outbox.close()


async def test_a_label_is_reported_once_and_only_where_it_is_unambiguous(tmp_path):
    """A review found DATA that the upstream refuses later (dead letters, or a whole scrap
    report refused): a label scanned for a second product, a NOK after an OK, and a number
    two selections printed for one order. Each is refused on the wire or recorded without an
    event instead."""
    outbox, station, states = await reserve_station(tmp_path)

    def data(serial: str, ok: bool, tsn: int) -> Awaitable[object]:
        return station.handle(StepResult(ORDER.Ordnr, "G5A1", 1, 10, 2, ok, serial),
                              origin(tsn))

    assert await station.handle(LoadOrder(ORDER), origin(1)) == Ack()
    label = (await station.handle(PrintRequest(ORDER.Ordnr, "GTIN1", 1), origin(2))).serials[0]
    assert await data(label, True, 3) == Ack()
    again = await data(label, True, 4)  # the same label on a second product
    assert isinstance(again, Nak) and again.refusal is Refusal.SERIAL_CONFLICT
    assert NAK_CODES[again.refusal] == 14 and "already used" in again.text
    assert await data(label, False, 5) == Ack()  # recorded; it stays commissioned upstream

    # the same number printed for this order from a second selection (SERIALONLY pools)
    await outbox.submit(hook=lambda c: c.execute(
        "INSERT INTO reserve_serials (serial, selection, state, ordnr, pool_id, added_at) "
        "VALUES ('00000000005', 'GTIN2', 1, ?, 'P2', 0), ('00000000004', 'GTIN2', 1, ?, "
        "'P2', 0)", (ORDER.Ordnr, ORDER.Ordnr)))
    await outbox.submit(hook=lambda c: c.execute(
        "UPDATE reserve_serials SET state=1, ordnr=? WHERE selection='GTIN1' AND serial IN "
        "('00000000005', '00000000004')", (ORDER.Ordnr,)))
    twice = await data("00000000005", True, 6)
    assert isinstance(twice, Nak) and twice.refusal is Refusal.SERIAL_CONFLICT
    assert "GTIN1, GTIN2" in twice.text
    assert await data("00000000004", False, 7) == Ack()
    events = [(m.kind, m.body["serials"]) for m in await _messages(outbox)
              if m.stream == "event"]
    assert events == [("SIDCommissioningEvent", [label])]  # nothing else went upstream
    now = await states()
    assert now[label] == (2, ORDER.Ordnr)
    await outbox.close()
