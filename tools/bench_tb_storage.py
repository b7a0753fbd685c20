"""ThingsBoard IoT Gateway's SQLiteEventStorage doing the outbox benchmark's work.

Runs INSIDE a throwaway venv that has ``thingsboard-gateway`` installed (tools/bench_outbox.py
creates it); it imports nothing from linegate. Usage: ``python bench_tb_storage.py DIR N``.
Prints one JSON line: put rate (returns from RAM), committed rate (a burst of N puts, then
its database's row count polled from a second connection until all are committed, as its
put() does not wait for the commit), read+delete rate (get_event_pack +
event_pack_processing_done until empty), and the committed-before-ack rate with 1 and 50
producer threads that each wait until their row is committed before putting the next.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import sqlite3
import sys
import threading
import time

from thingsboard_gateway.storage.sqlite.sqlite_event_storage import SQLiteEventStorage

BODY = {"serials": ["010761234567890321ABCDEF123456"], "pool": "1",
        "context": {"Ordnr": "A-1", "VIN": "WVW123", "prdline": "L1", "station": "station-1"}}


class _Log(logging.LoggerAdapter):  # TB calls log.trace()
    def trace(self, *args: object, **kw: object) -> None:
        pass


def _rows(folder: str) -> int:
    n = 0
    for db in glob.glob(os.path.join(folder, "*.db")):
        try:
            with sqlite3.connect(db, timeout=5) as conn:
                n += conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        except sqlite3.OperationalError:
            pass
    return n


def durable(folder: str, producers: int, seconds: float, log: _Log) -> float:
    """Committed-before-ack rate: each producer puts one message and waits (polling the
    database from one poller thread) until that row is committed, then puts the next."""
    os.makedirs(folder, exist_ok=True)
    storage = SQLiteEventStorage({"data_file_path": folder, "max_read_records_count": 1000,
                                  "writing_batch_size": 1000}, log, threading.Event())
    [db] = glob.glob(os.path.join(folder, "*.db"))
    lock, cond = threading.Lock(), threading.Condition()
    state = {"next": 1, "committed": 0, "acked": 0}
    stop = time.monotonic() + seconds

    def poller() -> None:
        conn = sqlite3.connect(db, timeout=5)
        while time.monotonic() < stop + 1:
            top = conn.execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()[0]
            with cond:
                state["committed"] = top
                cond.notify_all()
            time.sleep(0.001)
        conn.close()

    def producer() -> None:
        while time.monotonic() < stop:
            with lock:  # queue order = id order (one writer thread, AUTOINCREMENT)
                mine = state["next"]
                state["next"] += 1
                storage.put(json.dumps({"key": f"d-{mine}", **BODY}))
            with cond:
                while state["committed"] < mine and time.monotonic() < stop + 1:
                    cond.wait(0.05)
                if state["committed"] >= mine:
                    state["acked"] += 1

    threads = [threading.Thread(target=poller)] + [threading.Thread(target=producer)
                                                   for _ in range(producers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    elapsed = time.perf_counter() - t0
    threads[0].join()
    storage.stop()
    return state["acked"] / elapsed


def main() -> int:
    folder, total = sys.argv[1].rstrip("/") + "/", int(sys.argv[2])
    os.makedirs(folder, exist_ok=True)
    logging.basicConfig(level=logging.ERROR)
    log = _Log(logging.getLogger("tb"), {})
    storage = SQLiteEventStorage({"data_file_path": folder, "max_read_records_count": 1000,
                                  "writing_batch_size": 1000, "size_limit": 1024,
                                  "max_db_amount": 10}, log, threading.Event())
    msgs = [json.dumps({"key": f"bench-{n}", **BODY}) for n in range(total)]
    t0 = time.perf_counter()
    for m in msgs:
        storage.put(m)
    put_s = time.perf_counter() - t0
    deadline = time.monotonic() + 600
    while _rows(folder) < total and time.monotonic() < deadline:
        time.sleep(0.005)
    commit_s = time.perf_counter() - t0
    committed = _rows(folder)
    t1 = time.perf_counter()
    done = 0
    deadline = time.monotonic() + 600
    while done < committed and time.monotonic() < deadline:
        pack = storage.get_event_pack()
        if not pack:
            time.sleep(0.001)
            continue
        done += len(pack)
        storage.event_pack_processing_done()
    rd_s = time.perf_counter() - t1
    storage.stop()
    d1 = durable(os.path.join(folder, "d1") + "/", 1, 3.0, log)
    d50 = durable(os.path.join(folder, "d50") + "/", 50, 3.0, log)
    print(json.dumps({"durable_1_rate": d1, "durable_50_rate": d50, "msgs": total,
                      "committed": committed, "put_rate": total / put_s,
                      "committed_rate": committed / commit_s, "read_delete_rate": done / rd_s,
                      "read_deleted": done, "synchronous": "NORMAL (its DatabaseConnector)",
                      "write_batch": 1000}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
