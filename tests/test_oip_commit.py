"""ACK-after-commit with the real Station and Outbox: a gateway process is SIGKILLed right after
an ACK and the SQLite file must hold what was acknowledged; retransmissions after the restart
are recognised from the file; PRINT is answered from the local reserve with upstream down."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

from adapters.oip.codec import encode_command
from gateway.model import LoadOrder, PrintRequest, StepResult
from tests.conftest import ROOT
from tests.test_oip_codec import seed_tcp_order
from tests.tooling import free_port
from tools.pacsim import SEED_ORDER, TcpPac

GATEWAY = r"""
import asyncio, sys, time
from pathlib import Path
from adapters.oip.pattern import match_pattern
from adapters.oip.tcp import OipTcpServer
from adapters.openscs.client import OpenScsClient
from adapters.openscs.reserve import AVAILABLE, Reserve, ensure_schema
from gateway.board import StatusBoard
from gateway.outbox import Outbox
from gateway.settings import (OipSettings, OipTcpSettings, OpenScsSettings, Settings,
                              StoreSettings, UpstreamSettings)
from gateway.station import Station

async def main(db, upstream_port, prefill):
    s = Settings(store=StoreSettings(path=Path(db)),
                 oip=OipSettings(tcp=OipTcpSettings(listen_port=0)),
                 upstream=UpstreamSettings(openscs=OpenScsSettings(
                     endpoint=f"opc.tcp://127.0.0.1:{upstream_port}/")))  # nobody listens
    outbox = await Outbox.open(s.store, dedup_window=s.oip.dedup_window)
    if prefill:  # serial numbers allocated earlier, while upstream was still up
        def fill(conn):
            ensure_schema(conn)
            conn.executemany("INSERT INTO reserve_serials (serial, selection, state, pool_id, "
                             "added_at) VALUES (?, 'GTIN1', ?, 'POOL-GTIN1', ?)",
                             [(f"00{n:09d}", AVAILABLE, time.time() + n) for n in range(5)])
        await outbox.submit(hook=fill)
    reserve = Reserve(outbox, OpenScsClient(s.upstream.openscs), s.reserve)
    board = StatusBoard()
    station = Station(s, outbox, board, pattern_check=match_pattern, reserve=reserve)
    await station.load()
    server = OipTcpServer(s.oip, station, board)
    task = asyncio.create_task(server.serve())
    await server.ready.wait()
    print(server.port, flush=True)
    await task

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"))
"""


@contextlib.asynccontextmanager
async def gateway(db: Path, prefill: bool = False) -> AsyncIterator[int]:
    """A gateway process serving OIP TCP on the yielded port; SIGKILLed on exit."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", GATEWAY, str(db), str(free_port()), "1" if prefill else "0",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line.strip().isdigit(), f"gateway did not start: {line!r}"
        yield int(line)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await proc.wait()


def rows(db: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


async def test_ack_after_commit_survives_sigkill_and_retransmission_after_restart(tmp_path):
    db = tmp_path / "outbox.sqlite"
    async with gateway(db) as port:
        pac = await TcpPac.connect("127.0.0.1", port)
        await pac.send_raw(seed_tcp_order())
        reply = await pac.reply()
        # SIGKILL right after the ACK (the context manager's exit), nothing graceful
    assert reply.ack and reply.tsn == 12345
    orders = rows(db, "SELECT body FROM messages WHERE stream='results' AND kind='Order'")
    assert len(orders) == 1
    body = json.loads(str(orders[0][0]))
    assert body["Ordnr"] == "ZI355937" and body["tsn"] == 12345
    assert rows(db, "SELECT COUNT(*) FROM dedup WHERE tsn=12345") == [(1,)]

    async with gateway(db) as port:  # restarted: the PAC resends on a new connection
        pac = await TcpPac.connect("127.0.0.1", port)
        await pac.send_raw(seed_tcp_order())
        again = await pac.reply()
        other = await pac.request(LoadOrder(replace(SEED_ORDER, VIN="OTHERVIN000000000")),
                                  12345, 5701)
        data = await pac.request(StepResult("ZI355937", "G5A1", 1, 10, 2, True, "00123ABC789"),
                                 12346)
        bad = await pac.request(StepResult("ZI355937", "G5A1", 1, 10, 2, True, "99123ABC789"),
                                12347)
        await pac.close()
    assert again.ack  # re-ACKed, not processed twice
    assert (other.ack, other.code) == (False, 6)
    assert data.ack
    assert (bad.ack, bad.code) == (False, 10) and "does not start with '00'" in bad.text
    assert rows(db, "SELECT COUNT(*) FROM messages WHERE kind='Order'") == [(1,)]
    assert rows(db, "SELECT COUNT(*) FROM messages WHERE kind='SIDCommissioningEvent'") == [(1,)]


async def test_print_is_answered_from_the_reserve_while_upstream_is_down(tmp_path):
    db = tmp_path / "outbox.sqlite"
    request = PrintRequest("ZI355937", "GTIN1", 2)
    async with gateway(db, prefill=True) as port:
        pac = await TcpPac.connect("127.0.0.1", port)
        assert (await pac.request(LoadOrder(SEED_ORDER), 1)).ack
        printed = await pac.request(request, 2)
        empty = await pac.request(PrintRequest("ZI355937", "GTIN1", 4), 3)
    assert printed.ack and printed.serials == ("00000000000", "00000000001")
    assert (empty.ack, empty.code) == (False, 11)
    issued = rows(db, "SELECT serial, ordnr FROM reserve_serials WHERE state=1 ORDER BY serial")
    assert issued == [("00000000000", "ZI355937"), ("00000000001", "ZI355937")]

    async with gateway(db) as port:  # the PAC lost that reply: the same numbers come back
        pac = await TcpPac.connect("127.0.0.1", port)
        await pac.send_raw(encode_command(request, 2))
        again = await pac.reply()
        used = await pac.request(StepResult("ZI355937", "G5A1", 1, 10, 2, True, "00000000001"),
                                 4)
        await pac.close()
    assert again.ack and again.serials == printed.serials
    # the event of a printed serial number names the pool it came from; it is no longer issued
    assert used.ack
    (body,) = rows(db, "SELECT body FROM messages WHERE kind='SIDCommissioningEvent'")[0]
    event = json.loads(str(body))
    assert (event["serials"], event["pool"], event["pool_id"]) == (
        ["00000000001"], "GTIN1", "POOL-GTIN1")
    assert rows(db, "SELECT serial FROM reserve_serials WHERE state=1") == [("00000000000",)]


async def test_soap_order_is_committed_before_its_ack(tmp_path):
    from adapters.oip.pattern import match_pattern
    from adapters.oip.soap import OipSoapServer
    from gateway.board import StatusBoard
    from gateway.outbox import Outbox
    from gateway.settings import OipSettings, OipSoapSettings, Settings, StoreSettings
    from gateway.station import Station
    from tests.test_oip_soap import post, reply_of, seed_soap_order

    db = tmp_path / "outbox.sqlite"
    settings = Settings(store=StoreSettings(path=db),
                        oip=OipSettings(soap=OipSoapSettings(listen_port=0)))
    outbox = await Outbox.open(settings.store)
    board = StatusBoard()
    station = Station(settings, outbox, board, pattern_check=match_pattern)
    server = OipSoapServer(settings.oip, station, board)
    task = asyncio.create_task(server.serve())
    try:
        await asyncio.wait_for(server.ready.wait(), 10)
        status, body = await post(server, seed_soap_order())
        # read the file from another connection while the gateway is still running
        committed = rows(db, "SELECT body FROM messages WHERE kind='Order'")
        status2, body2 = await post(server, seed_soap_order())  # retransmission
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await outbox.close()
    assert status == 200 and reply_of(body)[:3] == (True, 0, 12345)
    assert len(committed) == 1 and json.loads(str(committed[0][0]))["Ordnr"] == "ZI355937"
    assert status2 == 200 and reply_of(body2)[0]
    assert rows(db, "SELECT COUNT(*) FROM messages WHERE kind='Order'") == [(1,)]
    assert board.script == "ZI355937"
    assert board.counters["orders_loaded"] == 1  # the retransmission loaded nothing


async def test_a_full_store_is_a_nak_on_the_wire_and_keeps_what_it_had(tmp_path):
    """A real outbox at store.max_bytes, over a real OIP TCP connection: new work gets NAK 5
    with the reason, a retransmission of accepted work is still ACKed, nothing is lost."""
    from adapters.oip.pattern import match_pattern
    from adapters.oip.tcp import OipTcpServer
    from gateway.board import StatusBoard
    from gateway.outbox import Outbox
    from gateway.settings import OipSettings, OipTcpSettings, Settings, StoreSettings
    from gateway.station import Station

    db = tmp_path / "outbox.sqlite"
    settings = Settings(store=StoreSettings(path=db, max_bytes=65536),
                        oip=OipSettings(tcp=OipTcpSettings(listen_port=0)))
    outbox = await Outbox.open(settings.store)
    board = StatusBoard()
    station = Station(settings, outbox, board, pattern_check=match_pattern)
    await station.load()
    server = OipTcpServer(settings.oip, station, board)
    task = asyncio.create_task(server.serve())
    await server.ready.wait()
    try:
        pac = await TcpPac.connect("127.0.0.1", server.port)
        acked, refused, tsn = [], None, 0
        while refused is None and tsn < 2000:
            tsn += 1
            order = replace(SEED_ORDER, Ordnr=f"Z{tsn:07d}", VIN="V" * 17)
            reply = await pac.request(LoadOrder(order), tsn)
            if reply.ack:
                acked.append(tsn)
            else:
                refused = reply
        assert refused is not None and refused.code == 5, refused
        assert "store.max_bytes" in refused.text
        first = replace(SEED_ORDER, Ordnr=f"Z{1:07d}", VIN="V" * 17)
        again = await pac.request(LoadOrder(first), 1)  # accepted before: still answered
        assert again.ack
        await pac.close()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await outbox.close()
    orders = rows(db, "SELECT json_extract(body, '$.tsn') FROM messages WHERE kind='Order' "
                      "ORDER BY id")
    assert [r[0] for r in orders] == acked and len(acked) > 10
