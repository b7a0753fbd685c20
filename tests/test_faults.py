"""Network faults between delivery and a real OPC UA upstream, injected by tools.faultproxy:
outages (blackhole, reset, refused), a lost reply, and a slow lossy link."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.board import StatusBoard
from gateway.delivery import Delivery
from gateway.model import NewMessage
from gateway.outbox import Outbox
from gateway.settings import DeliverySettings, StoreSettings
from tests.conftest import ROOT
from tools.faultproxy import FaultProxy
from tools.mini_upstream import MiniUpstream, MiniUpstreamClient, applied, call_results

OUTAGE_S = float(os.environ.get("LINEGATE_OUTAGE_S", "2"))


@dataclass
class Rig:
    outbox: Outbox
    proxy: FaultProxy
    upstream: MiniUpstream
    board: StatusBoard

    def applied(self) -> list[tuple[str, str, dict[str, object]]]:
        return applied(self.upstream.db_path)


async def until(pred: Callable[[], Awaitable[bool]], within_s: float = 60.0) -> None:
    """Wait (bounded) until ``pred()`` is true; fails with the limit if it never is."""
    for _ in range(int(within_s / 0.05)):
        if await pred():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met within {within_s} s")


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    upstream = MiniUpstream(tmp_path / "up.sqlite")
    await upstream.start()
    proxy = FaultProxy(upstream.port, seed=7)
    await proxy.start()
    outbox = await Outbox.open(StoreSettings(path=tmp_path / "o.sqlite"))
    client = MiniUpstreamClient(f"opc.tcp://127.0.0.1:{proxy.port}/", timeout_s=1.0)
    board = StatusBoard()
    delivery = Delivery(outbox, client, DeliverySettings(batch_max=50, retry_initial_s=0.05,
                                                         retry_max_s=0.5), board, seed=1)
    task = asyncio.create_task(delivery.serve())
    yield Rig(outbox, proxy, upstream, board)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await client.close()
    await outbox.close()
    await proxy.stop()
    await upstream.stop()


def batch(lo: int, hi: int, streams: int = 3) -> list[NewMessage]:
    return [NewMessage(f"s{n % streams}", "Event", f"m{n}", {"n": n}) for n in range(lo, hi)]


def assert_exactly_once_in_order(rows: list[tuple[str, str, dict[str, object]]], total: int,
                                 streams: int = 3) -> None:
    keys = [k for _, k, _ in rows]
    assert sorted(keys) == sorted(f"m{n}" for n in range(total)) and len(set(keys)) == total
    for s in range(streams):
        seq = [int(b["n"]) for st, _, b in rows if st == f"s{s}"]  # type: ignore[call-overload]
        assert seq == list(range(s, total, streams)), f"stream s{s} out of order"


async def drained(rig: Rig) -> bool:
    return (await rig.outbox.stats()).pending == 0


@pytest.mark.parametrize("mode", ["blackhole", "reset", "refuse"])
async def test_upstream_unreachable_then_back_drains_in_order(rig: Rig, mode: str) -> None:
    await rig.outbox.submit(batch(0, 30))
    await until(lambda: drained(rig))
    await rig.proxy.set_mode(mode)  # type: ignore[arg-type]
    rig.proxy.cut()
    for lo in range(30, 600, 30):  # the line keeps producing during the outage
        await rig.outbox.submit(batch(lo, lo + 30))
        await asyncio.sleep(OUTAGE_S / 19)
    assert (await rig.outbox.stats()).pending == 570
    assert len(rig.applied()) == 30  # nothing got through
    await rig.proxy.set_mode("pass")
    await until(lambda: drained(rig))
    assert_exactly_once_in_order(rig.applied(), 600)


async def test_lost_reply_is_not_applied_twice(rig: Rig) -> None:
    await rig.outbox.submit(batch(0, 3))
    await until(lambda: drained(rig))  # connected through the proxy
    await rig.proxy.set_mode("drop_replies")
    await rig.outbox.submit(batch(3, 60))

    async def applied_upstream() -> bool:
        return len(rig.applied()) == 60

    await until(applied_upstream)  # the upstream applied them, but no reply came back
    assert (await rig.outbox.stats()).pending == 57
    await rig.proxy.set_mode("pass")
    await until(lambda: drained(rig))
    results = call_results(rig.upstream.db_path)
    assert results["OK"] == 60 and results["OK replay"] >= 57  # the retry was a replay
    assert_exactly_once_in_order(rig.applied(), 60)


async def test_slow_lossy_link(rig: Rig) -> None:
    rig.proxy.delay_s = 0.003
    rig.proxy.bandwidth_bps = 400_000
    rig.proxy.drop_rate = 0.1
    for lo in range(0, 1200, 100):
        await rig.outbox.submit(batch(lo, lo + 100))
    await until(lambda: drained(rig), within_s=120)
    assert_exactly_once_in_order(rig.applied(), 1200)
    assert rig.proxy.stats["resets"] > 0  # the link really dropped connections


async def test_faultproxy_program_is_controlled_on_stdin() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1024):
                writer.write(data)
        except ConnectionError:
            pass  # the proxy resets it: expected here
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    target = server.sockets[0].getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tools.faultproxy", "--target", f"127.0.0.1:{target}", cwd=ROOT,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdin and proc.stdout
    try:
        port = int((await proc.stdout.readline()).split()[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"hello"
        proc.stdin.write(b"mode reset\n")
        await proc.stdin.drain()
        assert (await proc.stdout.readline()).startswith(b"OK reset")
        writer.write(b"again")
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await reader.readexactly(5)  # reset on the next chunk
        writer.close()
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await reader.readexactly(1)  # new connections are reset at once
        proc.stdin.write(b"mode bogus\n")
        await proc.stdin.drain()
        assert b"mode must be one of" in await proc.stdout.readline()
    finally:
        proc.stdin.close()
        await proc.wait()
        server.close()


@pytest.mark.slow
async def test_long_outage_soak(rig: Rig) -> None:
    """Minutes of blackhole (LINEGATE_OUTAGE_S overrides; default 120 s) while producing."""
    outage_s = float(os.environ.get("LINEGATE_OUTAGE_S", "120"))
    await rig.proxy.set_mode("blackhole")
    rig.proxy.cut()
    steps = 60
    for i in range(steps):
        await rig.outbox.submit(batch(i * 100, i * 100 + 100))
        await asyncio.sleep(outage_s / steps)
    assert len(rig.applied()) == 0
    await rig.proxy.set_mode("pass")
    await until(lambda: drained(rig), within_s=300)
    assert_exactly_once_in_order(rig.applied(), steps * 100)
