"""OIP ingress benchmark: prints figures, asserts nothing.

Runs an OIP TCP server in a child process (so the PAC side does not share its event loop) with
either a null station (ACKs at once: measures the transport and codec) or the real Station +
Outbox on a temporary SQLite file (ACK after the commit, synchronous as configured), and
measures with the PAC simulator:

- ORDER frames/s acknowledged, with 1 and with 50 concurrent PAC connections (each PAC waits
  for its ACK before sending the next frame, as a PAC does), and the server's CPU time per
  frame split by thread (the event loop; the outbox writer), and the PAC simulator's own CPU
  per frame (it shares the machine: on 2 cores, server + simulator CPU per frame bound the
  rate at 2 s / (server + simulator));
- the same with 50 connections when every ORDER's instructions differ (the codec keeps parsed
  instruction records and their JSON: a line repeats its products' instructions, this run
  shows the cost when nothing repeats);
- p50/p99 ACK latency at a fixed 500 frames/s.

    python -m tools.bench_oip                 # both stations
    python -m tools.bench_oip --station real --count 20000 --synchronous NORMAL
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from gateway.model import Ack, Command, Origin, Reply
from tools.pacsim import run_stream

ROOT = Path(__file__).resolve().parent.parent


class NullStation:
    """ACKs everything at once: the transport and codec alone."""

    async def handle(self, command: Command, origin: Origin) -> Reply:
        return Ack()


async def _serve(station_kind: str, db: Path, synchronous: str) -> None:
    from adapters.oip.pattern import match_pattern
    from adapters.oip.tcp import OipTcpServer
    from gateway.board import StatusBoard
    from gateway.outbox import Outbox
    from gateway.settings import OipSettings, OipTcpSettings, Settings, StoreSettings
    from gateway.station import Station

    settings = Settings(store=StoreSettings(path=db, synchronous=synchronous),  # type: ignore[arg-type]
                        oip=OipSettings(tcp=OipTcpSettings(listen_port=0, max_connections=128)))
    board = StatusBoard()
    station: object = NullStation()
    if station_kind == "real":
        outbox = await Outbox.open(settings.store, dedup_window=settings.oip.dedup_window)
        real = Station(settings, outbox, board, pattern_check=match_pattern)
        await real.load()
        station = real
    server = OipTcpServer(settings.oip, station, board)  # type: ignore[arg-type]
    task = asyncio.create_task(server.serve())
    await server.ready.wait()
    print(server.port, flush=True)
    await task


@contextlib.asynccontextmanager
async def server_process(station: str,
                         synchronous: str) -> AsyncIterator[tuple[int, int]]:
    with tempfile.TemporaryDirectory() as tmp:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tools.bench_oip", "--serve", station, "--db",
            str(Path(tmp) / "bench.sqlite"), "--synchronous", synchronous, cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            if not line.strip().isdigit():
                raise RuntimeError(f"bench server did not start: {line!r}")
            yield proc.pid, int(line)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
            await proc.wait()


async def bench(station: str, count: int, rate: float, seconds: float,
                synchronous: str, repeat: int = 1) -> None:
    label = "null station (transport + codec)" if station == "null" else \
        f"real Station + Outbox (ACK after commit, synchronous={synchronous})"
    print(f"== {label}")
    runs = [(1, False), (50, False)] + ([(50, True)] if station == "real" else [])
    for conns, distinct in runs:
        rates, cpus, clients = [], [], []
        for _ in range(repeat):
            async with server_process(station, synchronous) as (pid, port):
                cpu0, mine0 = thread_cpu_s(pid), time.process_time()
                stats = await run_stream("tcp", "127.0.0.1", port, connections=conns,
                                         count=count, orders_only=True,
                                         distinct_instructions=distinct)
                cpu1, mine1 = thread_cpu_s(pid), time.process_time()
            clients.append((mine1 - mine0) / max(stats.acks, 1) * 1e6)
            per_frame = {name: (cpu1[name] - cpu0.get(name, 0.0)) / max(stats.acks, 1) * 1e6
                         for name in cpu1}
            rates.append(stats.acks / stats.elapsed_s)
            cpus.append(sum(per_frame.values()))
        split = ", ".join(f"{name} {us:.0f}" for name, us in per_frame.items() if us >= 0.5)
        label = f"{conns:2d} connection(s)" + (", distinct instructions" if distinct else "")
        spread = f" (median of {repeat}: {min(rates):.0f}..{max(rates):.0f})" if repeat > 1 else ""
        print(f"ORDER frames/s, {label}: {statistics.median(rates):8.0f}{spread}  (server CPU "
              f"{statistics.median(cpus):.0f} us/frame; last run: {split}; PAC simulator CPU "
              f"{statistics.median(clients):.0f} us/frame; {stats.summary()})")
    async with server_process(station, synchronous) as (_, port):
        stats = await run_stream("tcp", "127.0.0.1", port, connections=10,
                                 count=int(rate * seconds), rate=rate, orders_only=True)
    print(f"ACK latency at {rate:.0f} frames/s (10 connections, {seconds:.0f} s): "
          f"p50 {stats.percentile(50) * 1e3:.2f} ms, p99 {stats.percentile(99) * 1e3:.2f} ms"
          f"  ({stats.summary()})")


def thread_cpu_s(pid: int) -> dict[str, float]:
    """User + system CPU seconds of a process by role (Linux /proc): the main thread runs
    the event loop; the other threads are the outbox's writer (almost all) and reader (the
    kernel knows them all as "python")."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:  # the server is gone: no figure rather than a crash
        return {"event loop": float("nan")}
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        role = "event loop" if task.name == str(pid) else "outbox threads"
        fields = stat.rsplit(")", 1)[1].split()
        out[role] = out.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench_oip", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--station", choices=["null", "real", "both"], default="both")
    p.add_argument("--count", type=int, default=5000, help="ORDER frames per throughput run")
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
    p.add_argument("--repeat", type=int, default=1,
                   help="run each throughput figure N times and print the median and range "
                        "(a shared machine varies by tens of percent from run to run)")
    p.add_argument("--serve", choices=["null", "real"], help=argparse.SUPPRESS)
    p.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(args.serve, args.db, args.synchronous))
        return 0
    for station in (["null", "real"] if args.station == "both" else [args.station]):
        asyncio.run(bench(station, args.count, args.rate, args.seconds, args.synchronous,
                          max(args.repeat, 1)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
