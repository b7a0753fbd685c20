"""Benchmark of the OPC UA status server: reads/s of all fields, RSS with subscribed clients.

    .venv/bin/python -m tools.bench_status [--seconds 5] [--clients 10] [--interval 1.0]

Starts the status server in a child process (NoSecurity, loopback, a temporary root), so the
RSS figure is the server's alone; then one asyncua client reads every field in one Read
request as fast as it can, and finally ``--clients`` sessions each subscribe to every field
while the server refreshes them every ``--interval`` seconds. Prints the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import tempfile
import time
from pathlib import Path

from asyncua import Client, ua

from gateway.board import StatusBoard
from gateway.settings import OpcuaServerSettings, Settings, StationSettings
from gateway.status import StatusServer
from gateway.status.fields import fields_for


def _settings(root: Path, port: int, interval: float) -> Settings:
    return Settings(root=root, station=StationSettings(name="bench"),
                    opcua_server=OpcuaServerSettings(
                        enable=True, listen_address="127.0.0.1", listen_port_prism=port,
                        security_policies=["NoSecurity"], update_interval_s=interval))


async def serve(root: Path, port: int, interval: float) -> None:
    board = StatusBoard()
    srv = StatusServer(_settings(root, port, interval), board, lambda: None)
    task = asyncio.create_task(srv.serve())
    await srv.ready.wait()
    print("READY", flush=True)
    n = 0
    while not task.done():  # keep some values moving
        n += 1
        board.incr("frames_in")
        board.set_health("outbox_backlog", n % 50)
        await asyncio.sleep(interval)
    task.result()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


async def _nodes(client: Client, names: list[str]) -> list:
    idx = await client.get_namespace_index("urn:linegate:status")
    return [client.get_node(ua.NodeId(f"Status/{n}", idx)) for n in names]


class _Count:
    def __init__(self) -> None:
        self.n = 0

    def datachange_notification(self, node: object, val: object, data: object) -> None:
        self.n += 1


async def bench(seconds: float, n_clients: int, interval: float) -> None:
    from tests.tooling import free_port

    port = free_port()
    url = f"opc.tcp://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory() as root:
        names = [f.name for f in fields_for(_settings(Path(root), port, interval))]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tools.bench_status", "--serve", root, "--port", str(port),
            "--interval", str(interval), stdout=asyncio.subprocess.PIPE)
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(60):
                while (await proc.stdout.readline()).strip() != b"READY":
                    pass
            idle_rss = rss_kib(proc.pid)
            async with Client(url) as client:
                nodes = await _nodes(client, names)
                reads, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < seconds:
                    await client.read_values(nodes)
                    reads += 1
                elapsed = time.perf_counter() - t0
            print(f"fields: {len(names)}")
            print(f"full reads (all fields, one Read request): {reads / elapsed:,.0f}/s "
                  f"= {reads * len(names) / elapsed:,.0f} values/s")
            print(f"server RSS idle: {idle_rss / 1024:.1f} MiB")
            counters = [_Count() for _ in range(n_clients)]
            clients = [Client(url) for _ in range(n_clients)]
            async with contextlib.AsyncExitStack() as stack:
                for c, counter in zip(clients, counters, strict=True):
                    await stack.enter_async_context(c)
                    sub = await c.create_subscription(100, counter)
                    await sub.subscribe_data_change(await _nodes(c, names))
                await asyncio.sleep(max(3 * interval, 2.0))
                rss = rss_kib(proc.pid)
                notes = sum(c.n for c in counters)
            print(f"server RSS with {n_clients} subscribed clients (all fields each): "
                  f"{rss / 1024:.1f} MiB ({notes} notifications received)")
        finally:
            proc.kill()
            await proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    logging.basicConfig(level=logging.ERROR)  # asyncua's session-timeout chatter
    if a.serve:
        asyncio.run(serve(Path(a.serve), a.port, a.interval))
    else:
        asyncio.run(bench(a.seconds, a.clients, a.interval))


if __name__ == "__main__":
    main()
