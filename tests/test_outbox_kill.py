"""SIGKILL of a real producer + delivery process at random moments while it streams messages.

The worker (``python -m tests.test_outbox_kill worker ...``, below) opens the outbox, runs the
delivery loop to a real MiniUpstream process over OPC UA, and produces messages ``m0..mN-1``
round-robin over three streams with concurrent submitters. After each submit returns it appends
the highest acknowledged number to an ack file (a plain write: it survives SIGKILL). How far it
got is kept in the outbox's state table in the same transaction as the messages, so a restarted
worker continues where the committed data ends. The test kills it K times at random moments,
then lets it finish and drain, and checks at the upstream's own database: every message
applied exactly once, each stream in order, every acknowledged message present.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

STREAMS = 3


def _start(args: list[str], **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, **kw)  # type: ignore[call-overload]


def _read_port(proc: subprocess.Popen[str]) -> int:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("PORT "), f"unexpected first line {line!r}"
    return int(line.split()[1])


def _acked(acks: Path) -> int:
    """The highest message number acknowledged so far (-1: none)."""
    return max((int(x) for x in acks.read_text().split()), default=-1) if acks.exists() else -1


def _produced(store: Path) -> int:
    """The number the worker resumes at, as committed in the outbox (0: nothing yet)."""
    if not store.exists():
        return 0
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT value FROM state WHERE key='produced'").fetchone()
    finally:
        conn.close()
    return int(row[0]) if row else 0


def run_kill_cycles(tmp_path: Path, *, kills: int, total: int, rate: int,
                    seed: int) -> dict[str, object]:
    from tools.mini_upstream import applied, call_results

    rng = random.Random(seed)
    acked: list[int] = []
    up_db, store, acks = tmp_path / "upstream.sqlite", tmp_path / "outbox.sqlite", tmp_path / "acks"
    upstream = _start(["tools.mini_upstream", "--db", str(up_db)])
    try:
        port = _read_port(upstream)
        worker = ["tests.test_outbox_kill", "worker", "--store", str(store), "--acks", str(acks),
                  "--url", f"opc.tcp://127.0.0.1:{port}/", "--total", str(total),
                  "--rate", str(rate)]
        for _ in range(kills):
            proc = _start(worker)
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "READY"
            time.sleep(rng.uniform(0.05, 1.2))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            assert proc.returncode == -signal.SIGKILL
            acked.append(_acked(acks))
            # What was acknowledged is in the file: the restart resumes after it and never
            # produces an acknowledged number again (which would hide its loss).
            produced = _produced(store)
            assert produced > acked[-1], (
                f"message {acked[-1]} was acknowledged but the store resumes at {produced}")
        final = _start(worker)
        out, _ = final.communicate(timeout=240)
        assert final.returncode == 0, out
        assert out.strip().endswith("DONE")
        rows = applied(up_db)
        results = call_results(up_db)
    finally:
        upstream.kill()
        upstream.wait(timeout=10)
    numbers = [int(body["n"]) for _, _, body in rows]
    keys = [key for _, key, _ in rows]
    assert len(keys) == len(set(keys)) == total, "a message was lost or applied twice"
    assert sorted(numbers) == list(range(total))
    assert results.get("OK") == total  # each key applied once; the rest were replays
    for s in range(STREAMS):
        seq = [n for stream, _, body in rows if stream == f"s{s}" for n in [int(body["n"])]]
        assert seq == sorted(seq), f"stream s{s} was delivered out of order"
        assert seq == list(range(s, total, STREAMS))
    assert 0 <= acked[-1] < total - 1, f"no kill landed while producing: {acked}"
    return {"acked_at_each_kill": acked, "replays": results.get("OK replay", 0)}


def test_sigkill_during_streaming_loses_and_doubles_nothing(tmp_path: Path) -> None:
    stats = run_kill_cycles(tmp_path, kills=3, total=10_000, rate=2500, seed=4)
    print("kill cycles:", stats)


@pytest.mark.slow
def test_sigkill_soak(tmp_path: Path) -> None:
    stats = run_kill_cycles(tmp_path, kills=20, total=20_000, rate=1000,
                            seed=int(time.time()))
    print("kill soak:", stats)


# --------------------------------------------------------------------------- the worker


async def _worker(args: argparse.Namespace) -> int:
    from gateway.board import StatusBoard
    from gateway.delivery import Delivery
    from gateway.model import NewMessage
    from gateway.outbox import Outbox
    from gateway.settings import DeliverySettings, StoreSettings
    from tools.mini_upstream import MiniUpstreamClient

    outbox = await Outbox.open(StoreSettings(path=args.store))
    client = MiniUpstreamClient(args.url, timeout_s=5.0)
    delivery = Delivery(outbox, client, DeliverySettings(batch_max=200, retry_initial_s=0.05,
                                                         retry_max_s=0.5), StatusBoard())
    fd = os.open(args.acks, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    nxt = int((await outbox.get_state()).get("produced", "0"))
    print("READY", flush=True)

    async def producer() -> None:
        nonlocal nxt
        while nxt < args.total:
            lo, hi = nxt, min(nxt + random.randint(1, 8), args.total)
            nxt = hi  # allocated and enqueued in this same step: commit order = number order
            msgs = [NewMessage(f"s{n % STREAMS}", "Event", f"m{n}", {"n": n})
                    for n in range(lo, hi)]
            await outbox.submit(msgs, state={"produced": str(hi)})
            os.write(fd, f"{hi - 1}\n".encode())
            # four producers at about args.rate messages/s together
            await asyncio.sleep(random.uniform(0.5, 1.5) * 4 * (hi - lo) / args.rate)

    serving = asyncio.create_task(delivery.serve())
    async with asyncio.TaskGroup() as tg:
        for _ in range(4):
            tg.create_task(producer())
    while (await outbox.stats()).pending:
        if serving.done():
            serving.result()
        await asyncio.sleep(0.05)
    serving.cancel()
    await asyncio.gather(serving, return_exceptions=True)
    await client.close()
    await outbox.close()
    print("DONE", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["worker"])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--acks", type=Path, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--total", type=int, required=True)
    parser.add_argument("--rate", type=int, default=2500, help="messages/s (about)")
    args = parser.parse_args()
    return asyncio.run(_worker(args))


if __name__ == "__main__":
    sys.exit(main())
