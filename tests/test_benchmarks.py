"""The benchmarks under tools/ measure what they say: tiny runs, checked for their counts.

(The figures themselves are printed by the benchmarks, never asserted: this machine is shared.)
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tools import bench_oip, bench_outbox


async def test_outbox_bench_loops_process_every_message(tmp_path: Path) -> None:
    for fn in (bench_outbox.read_delete, bench_outbox.sql_floor):
        path = tmp_path / f"{fn.__name__}.sqlite"
        res = await fn(path, 1234, 100)
        assert res["msgs"] == 1234 and res["rate"] > 0, (fn.__name__, res)
        with sqlite3.connect(path) as conn:  # read AND deleted: nothing left behind
            assert conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0
    ceiling = bench_outbox.sql_insert_ceiling(tmp_path, 2000)
    assert set(ceiling) == {"tb", "ours"} and min(ceiling.values()) > 0
    for shape in ceiling:
        with sqlite3.connect(tmp_path / f"ceiling-{shape}.sqlite") as conn:
            assert conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 2000
    res = await bench_outbox.ingest(tmp_path / "i.sqlite", "FULL", 7, 300)
    assert res["msgs"] == 300 and 1 <= res["commits"] <= 300
    with sqlite3.connect(tmp_path / "i.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 300


async def test_oip_bench_prints_both_cpu_figures(capsys: pytest.CaptureFixture[str]) -> None:
    await bench_oip.bench("null", count=200, rate=200.0, seconds=0.5, synchronous="FULL")
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("ORDER frames/s")]
    assert len(lines) == 2, out  # 1 and 50 connections
    for line in lines:
        assert "ACK 200, NAK 0" in line and "PAC simulator CPU" in line, line
