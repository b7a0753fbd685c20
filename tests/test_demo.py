"""The thin slice end to end: `linegate demo` as a user runs it, and the same run read back
field by field from the reference upstream's own records and the gateway's own files.

Real parts throughout: the reference OPEN-SCS server (Basic256Sha256 SignAndEncrypt, user and
password, its certificate in the gateway's trust list), the gateway runtime with its SQLite
outbox, and a simulated PAC speaking OIP over TCP."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from gateway.demo import DEMO_ORDER, GTIN, run_demo
from tools.openscs_server.store import Store

ROOT = Path(__file__).resolve().parent.parent


def test_linegate_demo_command_exits_0_and_reports_the_upstream_records():
    linegate = Path(sys.executable).parent / "linegate"
    assert linegate.exists(), "the console script is installed by tools/bootstrap.sh"
    proc = subprocess.run([str(linegate), "demo", "--duration", "60"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for needle in ("← ACK serials=", "SIDCommissioningEvent", "LabelsScrappingEvent",
                   "upstream state Commissioned", "upstream state LabelScrapped",
                   "0 pending, 0 dead letters", "OK: 5 event(s) recorded upstream",
                   # the status server, read over OPC UA: health keys reach their fields
                   "upstream_state  connected", f'reserve_level   {{"{GTIN}":',
                   "outbox_backlog  0", '"serials_printed":3'):
        assert needle in out, f"{needle!r} missing from:\n{out}"
    assert "NAK" not in out
    assert "SNReturnAllocated" not in out and "Unallocated" not in out  # printed: never back


async def test_thin_slice_fields_arrive_upstream_exactly_once(tmp_path: Path):
    root = tmp_path / "demo"
    root.mkdir()
    assert await run_demo(duration_s=60, root=root) == 0

    store = Store(root / "upstream" / "openscs.sqlite")
    try:
        events = store.events()
        states = store.serial_states()
    finally:
        store.close()
    methods = [e["method"] for e in events]
    assert methods == ["SIDCommissioningEvent", "LabelsEncodingEvent", "LabelsScrappingEvent",
                       "LabelsEncodingEvent", "LabelsScrappingEvent"]
    commissioning = events[0]
    payload = commissioning["payload"]
    assert isinstance(payload, dict)
    coll = payload["args"]
    pool = f"GTIN-{GTIN}"
    # LabelCollection with the inherited Collection fields first, as the dictionary says
    assert coll["State"] == 7  # Commissioned
    assert coll["ID"] == pool and coll["AssociatedPoolID"] == pool
    serial = coll["SerialNumbers"][0]
    assert coll["SerialNumbers"] == [serial]
    assert [label["ID"] for label in coll["LabelCollection"]] == [serial]
    assert payload["SNFormat"] == "SERIALONLY" and commissioning["sn_format"] == "SERIALONLY"
    context = {kv["Key"]: kv["Value"] for kv in payload["context"]}
    assert context == {"Ordnr": DEMO_ORDER.Ordnr, "VIN": DEMO_ORDER.VIN,
                       "prdline": DEMO_ORDER.prdline, "station": "demo-station",
                       "IdempotencyKey": commissioning["key"]}
    assert str(commissioning["key"]).startswith("demo-station:")

    scrap_encode, scrap = events[1], events[2]
    assert scrap_encode["key"] == f"{scrap['key']}#encode"
    scrapped = scrap["payload"]["args"]["SerialNumbers"]  # type: ignore[index]
    # INIT closed the order: the printed, never scanned third number is reported encoded,
    # then scrapped (never returned to the pool, where it could be handed out again)
    close_encode, closed = events[3], events[4]
    assert close_encode["key"] == f"{closed['key']}#encode"
    unused = closed["payload"]["args"]["SerialNumbers"]  # type: ignore[index]
    assert close_encode["payload"]["args"]["SerialNumbers"] == unused  # type: ignore[index]
    assert len({serial, *scrapped, *unused}) == 3  # three distinct printed numbers
    assert states[(pool, serial)] == 7
    assert states[(pool, scrapped[0])] == 6  # LabelScrapped
    assert states[(pool, unused[0])] == 6  # LabelScrapped, not Unallocated

    # the gateway's side: nothing left pending, nothing dead, the result backup written
    conn = sqlite3.connect(root / "data" / "outbox.sqlite")
    try:
        left = conn.execute("SELECT stream, kind, state FROM messages "
                            "WHERE state != 1").fetchall()
        issued = conn.execute("SELECT COUNT(*) FROM reserve_serials WHERE state IN (1, 3)"
                              ).fetchone()  # issued or closed unused: none left behind
        remembered = [r[0] for r in conn.execute(  # reported scrapped: kept for NAK 13
            "SELECT serial FROM reserve_serials WHERE state=4")]
    finally:
        conn.close()
    assert left == [] and issued == (0,) and sorted(remembered) == sorted([*scrapped, *unused])
    backup = root / "public" / "result" / "bkup" / f"{DEMO_ORDER.Ordnr}.jsonl"
    lines = [json.loads(line) for line in backup.read_text().splitlines()]
    assert [line["kind"] for line in lines] == ["Order", "StepResult", "StepResult"]


def test_demo_reports_failure_when_nothing_arrived_upstream(tmp_path: Path, capsys):
    from gateway.demo import _report_upstream
    from tools.openscs_server.server import ReferenceServer

    empty = ReferenceServer(db_path=tmp_path / "never-started.sqlite")  # no event recorded
    assert _report_upstream(empty, tmp_path, ["100000"]) == 1
    out = capsys.readouterr().out
    assert "no event arrived upstream" in out and "FAILED" in out


def test_demo_refuses_a_duration_too_short_to_run_the_order():
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "demo", "--duration", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and proc.stdout == ""
    assert ("argument --duration: expected at least 5 seconds (starting the upstream, filling "
            "the reserve and running the order take that long), got 0") in proc.stderr


async def test_demo_says_why_the_pac_session_failed(tmp_path: Path, capsys):
    """Below the CLI's minimum (as a caller of run_demo may go) the timeout is named."""
    assert await run_demo(duration_s=0.001, root=tmp_path) == 1
    out = capsys.readouterr().out
    assert ("the PAC session failed: not finished within --duration 0.001 s (the simulated "
            "PAC had not finished its shift)") in out
    assert "the PAC session failed: \n" not in out
