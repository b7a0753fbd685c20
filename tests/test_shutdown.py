"""SIGTERM during traffic: the gateway exits 0 and every acknowledged message is in the outbox.

A real ``linegate run`` process, real PAC connections over loopback, a real SQLite file read
back after the process has gone.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
from pathlib import Path

from gateway.errors import TransportError
from gateway.model import LoadOrder, StepResult
from tests.tooling import free_port
from tools.pacsim import SEED_ORDER, TcpPac

ROOT = Path(__file__).resolve().parent.parent


def write_settings(root: Path, tcp_port: int) -> Path:
    path = root / "settings.json"
    path.write_text(json.dumps({
        "station": {"name": "term-test"},
        "oip": {"tcp": {"listen_port": tcp_port}, "soap": {"enable": False}},
        "store": {"path": "data/outbox.sqlite", "synchronous": "FULL"},
        "upstream": {"openscs": {"enable": False}},
        "reserve": {"enable": False},
        "supervisor": {"shutdown_grace_s": 5},
    }))
    return path


async def start_gateway(settings: Path) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "run", "--settings", str(settings),
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    return proc


async def wait_listening(port: int, proc: asyncio.subprocess.Process) -> None:
    for _ in range(300):
        if proc.returncode is not None:
            err = await proc.stderr.read() if proc.stderr else b""
            raise AssertionError(f"gateway exited early: {err.decode()}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise AssertionError("gateway did not listen")


async def test_sigterm_during_traffic_loses_nothing_acknowledged(tmp_path: Path):
    port = free_port()
    settings = write_settings(tmp_path, port)
    proc = await start_gateway(settings)
    try:
        await wait_listening(port, proc)
        setup = await TcpPac.connect("127.0.0.1", port)
        assert (await setup.request(LoadOrder(SEED_ORDER), 1)).ack
        await setup.close()

        acked: set[str] = set()
        refused: list[str] = []
        enough = asyncio.Event()

        async def pac(n: int) -> None:
            try:
                client = await TcpPac.connect("127.0.0.1", port)
            except TransportError:  # the gateway may already be gone
                return
            try:
                for i in range(100_000):
                    serial = f"00{n:02d}{i:07d}"
                    data = StepResult(SEED_ORDER.Ordnr, "G5A1", 1, 10, 2, True, serial)
                    reply = await client.request(data, 1000 + n * 1_000_000 + i, timeout_s=10)
                    if reply.ack:
                        acked.add(serial)
                        if len(acked) >= 300:
                            enough.set()
                    else:
                        refused.append(reply.text)
            except (TransportError, OSError):  # connection closed by the shutdown
                pass
            finally:
                await client.close()

        tasks = [asyncio.create_task(pac(n)) for n in range(8)]
        await asyncio.wait_for(enough.wait(), 60)
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 30)
        await asyncio.gather(*tasks)
        stderr = (await proc.stderr.read()).decode() if proc.stderr else ""
        assert rc == 0, stderr
        assert "outbox closed" in stderr
        assert "Traceback" not in stderr  # a normal stop logs no errors
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    db = sqlite3.connect(tmp_path / "data" / "outbox.sqlite")
    try:
        bodies = [json.loads(b) for (b,) in db.execute(
            "SELECT body FROM messages WHERE stream='event' AND kind='SIDCommissioningEvent'")]
    finally:
        db.close()
    stored = [b["serials"][0] for b in bodies]
    assert len(acked) >= 300
    missing = acked - set(stored)
    assert not missing, f"{len(missing)} acknowledged serials are not in the outbox"
    assert len(stored) == len(set(stored)), "a message was stored twice"
    # whatever was refused during the shutdown was refused with a reason
    assert all(text for text in refused)


async def test_a_second_gateway_on_the_same_store_is_refused_until_the_first_is_gone(
        tmp_path: Path):
    """Two gateways on one outbox would serve the line from different sessions: the second
    exits 2 naming the first; once the first is SIGKILLed, a new one starts."""
    port = free_port()
    settings = write_settings(tmp_path, port)
    first = await start_gateway(settings)
    try:
        await wait_listening(port, first)
        check = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "check", "--settings", str(settings),
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, check_err = await asyncio.wait_for(check.communicate(), 60)
        assert f"a linegate (pid {first.pid}) is running with this store" in check_err.decode()
        second = await start_gateway(settings)
        _, err = await asyncio.wait_for(second.communicate(), 60)
        assert second.returncode == 2
        assert f"another linegate (pid {first.pid}) is already running" in err.decode()
        pac = await TcpPac.connect("127.0.0.1", port)  # the first one is untouched
        assert (await pac.request(LoadOrder(SEED_ORDER), 1)).ack
        await pac.close()
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()
    third = await start_gateway(settings)  # the kernel dropped the lock with the process
    try:
        await wait_listening(port, third)
        pac = await TcpPac.connect("127.0.0.1", port)
        assert (await pac.request(LoadOrder(SEED_ORDER), 1)).ack  # a resend: re-ACKed
        await pac.close()
    finally:
        third.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(third.wait(), 60) == 0
