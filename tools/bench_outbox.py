"""Outbox benchmark: prints figures (it asserts nothing; tests prove behaviour, this measures).

    .venv/bin/python -m tools.bench_outbox [--dir /tmp/bench] [--quick] [--no-thingsboard]

1. Durable ingest (committed before ack): messages/s with 1 and 50 concurrent producers.
2. Commit latency p50/p99 at an offered 100 and 1,000 messages/s.
   Both at store.synchronous FULL and NORMAL.
3. fsync/fdatasync calls during the 50-producer FULL run (strace -f -c), vs messages.
4. Drain rate to a loopback MiniUpstream (OPC UA, separate process) with batching; the
   outbox's local read + delete loop; and that loop's SQL alone (raw sqlite3), the most any
   drain of this schema could reach on this machine.
5. The same put/read/delete work on ThingsBoard IoT Gateway's SQLiteEventStorage, installed
   into a throwaway venv under /tmp (see tools/bench_tb_storage.py), and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway import outbox_schema
from gateway.board import StatusBoard
from gateway.delivery import Delivery
from gateway.model import DeliveryResult, NewMessage, Outcome, encode_json
from gateway.outbox import Outbox
from gateway.settings import DeliverySettings, StoreSettings
from tools.mini_upstream import MiniUpstreamClient

ROOT = Path(__file__).resolve().parent.parent
BODY = {"serials": ["010761234567890321ABCDEF123456"], "pool": "1",
        "context": {"Ordnr": "A-1", "VIN": "WVW123", "prdline": "L1", "station": "station-1"}}
TB_VENV = Path("/tmp/linegate-bench-tb-venv")


def _msg(n: int) -> NewMessage:
    return NewMessage(f"s{n % 3}", "SIDCommissioningEvent", f"bench-{n}", BODY)


async def ingest(path: Path, level: str, producers: int, total: int) -> dict[str, float]:
    """``producers`` tasks submit one message each, back to back, ``total`` messages in all."""
    ob = await Outbox.open(StoreSettings(path=path, synchronous=level))  # type: ignore[arg-type]
    counter = iter(range(total))

    async def producer() -> None:
        for n in counter:
            await ob.submit([_msg(n)])

    c0 = ob.commits
    t0 = time.perf_counter()
    await asyncio.gather(*(producer() for _ in range(producers)))
    elapsed = time.perf_counter() - t0
    commits = ob.commits - c0
    await ob.close()
    return {"msgs": total, "seconds": elapsed, "rate": total / elapsed, "commits": commits}


async def ingest_batched(path: Path, level: str, producers: int, total: int,
                         per_submit: int) -> dict[str, float]:
    """Like ingest() but each submit carries ``per_submit`` messages (one OIP frame -> many)."""
    ob = await Outbox.open(StoreSettings(path=path, synchronous=level))  # type: ignore[arg-type]
    starts = iter(range(0, total, per_submit))

    async def producer() -> None:
        for lo in starts:
            await ob.submit([_msg(n) for n in range(lo, min(lo + per_submit, total))])

    t0 = time.perf_counter()
    await asyncio.gather(*(producer() for _ in range(producers)))
    elapsed = time.perf_counter() - t0
    await ob.close()
    return {"msgs": total, "seconds": elapsed, "rate": total / elapsed}


async def read_delete(path: Path, total: int, batch_max: int) -> dict[str, float]:
    """The outbox's own read + mark-delivered (delete) loop, no network: TB's read+delete."""
    ob = await Outbox.open(StoreSettings(path=path, synchronous="FULL"))
    for lo in range(0, total, 500):
        await ob.submit([_msg(n) for n in range(lo, min(lo + 500, total))])
    done = [DeliveryResult(Outcome.DONE)] * batch_max
    t0 = time.perf_counter()
    n = 0
    for stream in ("s0", "s1", "s2"):
        while batch := await ob.pending(stream, batch_max):
            await ob.record(batch, done[: len(batch)])
            n += len(batch)
    elapsed = time.perf_counter() - t0
    await ob.close()
    return {"msgs": n, "seconds": elapsed, "rate": n / elapsed}


async def sql_floor(path: Path, total: int, batch_max: int) -> dict[str, float]:
    """The SQL of read_delete() alone, on the outbox's own file and schema: raw sqlite3, rows
    left as tuples, the delete committed at NORMAL as delivery marks are. No Python
    objects, no threads, no network: what no drain of this schema can beat."""
    ob = await Outbox.open(StoreSettings(path=path, synchronous="FULL"))
    for lo in range(0, total, 500):
        await ob.submit([_msg(n) for n in range(lo, min(lo + 500, total))])
    await ob.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = NORMAL")
    t0 = time.perf_counter()
    n = 0
    for stream in ("s0", "s1", "s2"):
        while rows := conn.execute("SELECT id, stream, kind, key, body, created_at, attempts "
                                   "FROM messages WHERE stream=? AND state=0 ORDER BY id "
                                   "LIMIT ?", (stream, batch_max)).fetchall():
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM messages WHERE id IN (SELECT value FROM json_each(?))",
                         (json.dumps([r[0] for r in rows]),))
            conn.execute("COMMIT")
            n += len(rows)
    elapsed = time.perf_counter() - t0
    conn.close()
    return {"msgs": n, "seconds": elapsed, "rate": n / elapsed}


def sql_insert_ceiling(workdir: Path, total: int) -> dict[str, float]:
    """Raw sqlite3 executemany, 1,000 rows per commit at NORMAL, no Python objects per
    message: the most any writer can commit on this machine, into ThingsBoard's table (id,
    timestamp, message) and into the outbox's (its unique idempotency key and the pending
    index are two more b-trees per row)."""
    body = encode_json(BODY)
    out = {}
    for shape in ("tb", "ours"):
        path = _fresh(workdir, f"ceiling-{shape}.sqlite")
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        if shape == "ours":
            outbox_schema.migrate(conn, path)
            sql = "INSERT INTO messages (stream, kind, key, body, created_at) VALUES (?,?,?,?,?)"
            rows: list[tuple[object, ...]] = [
                (f"s{n % 3}", "SIDCommissioningEvent", f"bench-{n}", body, 1.0)
                for n in range(total)]
        else:
            conn.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "timestamp INTEGER, message TEXT)")
            sql = "INSERT INTO messages (timestamp, message) VALUES (?, ?)"
            rows = [(1, body)] * total
        t0 = time.perf_counter()
        for lo in range(0, total, 1000):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(sql, rows[lo:lo + 1000])
            conn.execute("COMMIT")
        out[shape] = total / (time.perf_counter() - t0)
        conn.close()
    return out


async def latency(path: Path, level: str, rate: float, seconds: float) -> dict[str, float]:
    """Offer ``rate`` submits/s (open loop) and measure each submit's commit latency."""
    ob = await Outbox.open(StoreSettings(path=path, synchronous=level))  # type: ignore[arg-type]
    samples: list[float] = []

    async def one(n: int) -> None:
        t = time.perf_counter()
        await ob.submit([_msg(n)])
        samples.append(time.perf_counter() - t)

    tasks = []
    t0 = time.perf_counter()
    for n in range(int(rate * seconds)):
        delay = t0 + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(n)))
    await asyncio.gather(*tasks)
    await ob.close()
    q = statistics.quantiles(samples, n=100)
    return {"p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000, "n": len(samples)}


async def drain(path: Path, total: int, batch_max: int) -> dict[str, float]:
    ob = await Outbox.open(StoreSettings(path=path, synchronous="FULL"))
    for lo in range(0, total, 500):
        await ob.submit([_msg(n) for n in range(lo, min(lo + 500, total))])
    up_db = _fresh(path.parent, f"upstream-{batch_max}.sqlite")
    up = await asyncio.create_subprocess_exec(sys.executable, "-m", "tools.mini_upstream",
                                              "--db", str(up_db), cwd=ROOT,
                                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert up.stdout is not None
        port = int((await up.stdout.readline()).split()[1])
        client = MiniUpstreamClient(f"opc.tcp://127.0.0.1:{port}/", timeout_s=10)
        await client.connect()  # before the clock starts
        delivery = Delivery(ob, client, DeliverySettings(batch_max=batch_max), StatusBoard())
        t0 = time.perf_counter()
        task = asyncio.create_task(delivery.serve())
        while (await ob.stats()).pending:  # noqa: ASYNC110 - polling the store is the point
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - t0
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
    finally:
        up.kill()
        await up.wait()
    await ob.close()
    return {"msgs": total, "seconds": elapsed, "rate": total / elapsed}


def fsync_count(workdir: Path, total: int) -> dict[str, object]:
    """Re-run the 50-producer FULL ingest under strace and count fsync + fdatasync."""
    strace = shutil.which("strace")
    if strace is None:
        return {"error": "strace is not installed (apt-get install -y strace)"}
    out = workdir / "strace.txt"
    store = workdir / "strace.sqlite"
    subprocess.run([strace, "-f", "-c", "-o", str(out), "-e", "trace=fsync,fdatasync",
                    sys.executable, "-m", "tools.bench_outbox", "--ingest-only", str(store),
                    "--total", str(total)], cwd=ROOT, check=True, capture_output=True)
    calls = {}
    for line in out.read_text().splitlines():
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(fsync|fdatasync)\s*$", line)
        if m:
            calls[m.group(2)] = int(m.group(1))
    total_calls = sum(calls.values())
    return {"msgs": total, **calls, "total": total_calls,
            "msgs_per_sync": total / total_calls if total_calls else float("inf")}


def thingsboard(workdir: Path, total: int) -> dict[str, object]:
    """Install thingsboard-gateway into a throwaway venv and run tools/bench_tb_storage.py."""
    pip = TB_VENV / "bin" / "pip"
    if not pip.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TB_VENV)], check=True)
    installed = subprocess.run([str(pip), "install", "-q", "thingsboard-gateway"],
                               capture_output=True, text=True, timeout=900)
    if installed.returncode != 0:
        return {"error": "could not install thingsboard-gateway: "
                + (installed.stderr.strip().splitlines() or ["?"])[-1]}
    run = subprocess.run([str(TB_VENV / "bin" / "python"), str(ROOT / "tools" /
                          "bench_tb_storage.py"), str(workdir / "tb"), str(total)],
                         capture_output=True, text=True, timeout=900)
    if run.returncode != 0:
        return {"error": "ThingsBoard storage run failed: " + run.stderr.strip()[-500:]}
    return json.loads(run.stdout.strip().splitlines()[-1])


def _fresh(workdir: Path, name: str) -> Path:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{workdir / name}{suffix}").unlink(missing_ok=True)
    return workdir / name


async def _ours(workdir: Path, quick: bool) -> dict[str, object]:
    n1, n50 = (500, 5000) if quick else (2000, 20000)
    secs = 2.0 if quick else 5.0
    res: dict[str, object] = {}
    for level in ("FULL", "NORMAL"):
        res[f"ingest1_{level}"] = await ingest(_fresh(workdir, "i1.sqlite"), level, 1, n1)
        res[f"ingest50_{level}"] = await ingest(_fresh(workdir, "i50.sqlite"), level, 50, n50)
        for rate in (100, 1000):
            res[f"lat{rate}_{level}"] = await latency(_fresh(workdir, "l.sqlite"), level, rate,
                                                      secs)
        res[f"ingest50x100_{level}"] = await ingest_batched(_fresh(workdir, "ib.sqlite"),
                                                            level, 50, n50 * 5, 100)
    for batch in (100, 500):
        res[f"drain_b{batch}"] = await drain(_fresh(workdir, "d.sqlite"), n50, batch)
    res["read_delete"] = await read_delete(_fresh(workdir, "rd.sqlite"), n50, 1000)
    res["sql_floor"] = await sql_floor(_fresh(workdir, "sf.sqlite"), n50, 1000)
    res["insert_ceiling"] = sql_insert_ceiling(workdir, n50 * 5)
    return res


def _print(ours: dict[str, object], fs: dict[str, object], tb: dict[str, object]) -> None:
    def g(key: str, field: str) -> float:
        return float(ours[key][field])  # type: ignore[index]

    print("\n== linegate outbox (durable: submit returns after COMMIT) ==")
    for level in ("FULL", "NORMAL"):
        print(f"synchronous={level}:")
        for p in (1, 50):
            k = f"ingest{p}_{level}"
            print(f"  ingest, {p:>2} producer(s): {g(k, 'rate'):>9,.0f} msg/s "
                  f"({int(g(k, 'msgs'))} msgs, {int(g(k, 'commits'))} commits)")
        k = f"ingest50x100_{level}"
        print(f"  ingest, 50 producers x 100 msgs per submit: {g(k, 'rate'):>9,.0f} msg/s "
              f"({int(g(k, 'msgs'))} msgs)")
        for rate in (100, 1000):
            k = f"lat{rate}_{level}"
            print(f"  commit latency at {rate:>5} msg/s offered: p50 {g(k, 'p50_ms'):6.2f} ms, "
                  f"p99 {g(k, 'p99_ms'):6.2f} ms")
    print("fsync/fdatasync during the 50-producer FULL run:", json.dumps(fs))
    for batch in (100, 500):
        k = f"drain_b{batch}"
        print(f"drain to loopback OPC UA upstream, batch_max={batch}: {g(k, 'rate'):,.0f} msg/s "
              f"({int(g(k, 'msgs'))} msgs)")
    print(f"local read + mark delivered (delete), batch 1000, no network: "
          f"{g('read_delete', 'rate'):,.0f} msg/s")
    print(f"  its SQL alone (raw sqlite3 on the outbox's schema, no objects): "
          f"{g('sql_floor', 'rate'):,.0f} msg/s")
    ceiling = ours["insert_ceiling"]
    print(f"raw SQLite insert ceiling (executemany, 1,000 rows/commit, NORMAL, no objects): "
          f"ThingsBoard's table {ceiling['tb']:,.0f} rows/s, the outbox's "  # type: ignore[index]
          f"{ceiling['ours']:,.0f} rows/s")  # type: ignore[index]
    print("\n== ThingsBoard IoT Gateway SQLiteEventStorage (same put/read/delete work) ==")
    if "error" in tb:
        print("NOT MEASURED:", tb["error"])
        return
    print(json.dumps(tb, indent=2))
    ours50 = g("ingest50_FULL", "rate")
    ours50n = g("ingest50_NORMAL", "rate")
    ours1 = g("ingest1_FULL", "rate")
    tb_commit = float(tb["committed_rate"])  # type: ignore[arg-type]
    tb_drain = float(tb["read_delete_rate"])  # type: ignore[arg-type]
    best_drain = max(g("drain_b100", "rate"), g("drain_b500", "rate"))
    tb1, tb50 = float(tb["durable_1_rate"]), float(tb["durable_50_rate"])  # type: ignore[arg-type]
    print("\n== ratios (linegate / ThingsBoard) ==")
    print(f"committed-before-ack,  1 producer,  FULL vs TB (waits for its row): "
          f"{ours1 / tb1:,.0f}x")
    print(f"committed-before-ack, 50 producers, FULL vs TB (waits for its row): "
          f"{ours50 / tb50:,.0f}x")
    print(f"durable ingest, 50 producers, FULL   vs TB committed rate: {ours50 / tb_commit:.2f}x")
    print(f"durable ingest, 50 producers, NORMAL vs TB committed rate: {ours50n / tb_commit:.2f}x")
    print(f"durable ingest,  1 producer,  FULL   vs TB committed rate: {ours1 / tb_commit:.2f}x")
    print(f"durable ingest, 50 producers x 100/submit, FULL vs TB:     "
          f"{g('ingest50x100_FULL', 'rate') / tb_commit:.2f}x")
    print(f"local read+delete vs TB local read+delete:                 "
          f"{g('read_delete', 'rate') / tb_drain:.2f}x")
    print(f"drain over OPC UA vs TB local read+delete (no network):    "
          f"{best_drain / tb_drain:.2f}x")
    print(f"outbox SQL alone (no objects) vs TB local read+delete:     "
          f"{g('sql_floor', 'rate') / tb_drain:.2f}x")
    print(f"raw insert ceiling of the outbox's table vs TB committed:  "
          f"{float(ceiling['ours']) / tb_commit:.2f}x")  # type: ignore[index]
    print("target: ingest >= 2x, drain > 1x. TB's bulk 'committed rate' is a burst of puts\n"
          "that return from RAM, inserted 1,000 per transaction at synchronous=NORMAL: no\n"
          "producer knows when its message is safe; the committed-before-ack lines compare\n"
          "the same promise (ack only after commit).")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_outbox", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: tmp)")
    parser.add_argument("--quick", action="store_true", help="smaller runs")
    parser.add_argument("--no-thingsboard", action="store_true", help="skip the TB comparison")
    parser.add_argument("--ingest-only", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--total", type=int, default=20000, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ingest_only:  # the strace child
        print(asyncio.run(ingest(args.ingest_only, "FULL", 50, args.total)))
        return 0
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="linegate-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"work dir {workdir} ({os.cpu_count()} CPUs); this takes a few minutes", flush=True)
    ours = asyncio.run(_ours(workdir, args.quick))
    total = 5000 if args.quick else 20000
    fs = fsync_count(workdir, total)
    tb = ({"error": "skipped (--no-thingsboard)"} if args.no_thingsboard
          else thingsboard(workdir, total))
    _print(ours, fs, tb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
