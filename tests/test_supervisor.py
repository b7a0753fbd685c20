"""Supervision: a crashing service is restarted with backoff; cancellation stops it cleanly."""

from __future__ import annotations

import asyncio
import random
import socket

import pytest

from gateway import sdnotify
from gateway.board import StatusBoard
from gateway.settings import SupervisorSettings
from gateway.supervisor import StartFailed, backoff_delay, supervise


class Flaky:
    """Fails its first ``failures`` runs, then serves until cancelled."""

    name = "flaky"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.starts = 0
        self.serving = asyncio.Event()

    async def serve(self) -> None:
        self.starts += 1
        if self.starts <= self.failures:
            raise ConnectionResetError(f"boom {self.starts}")
        self.serving.set()
        await asyncio.Event().wait()


async def test_crashing_service_is_restarted_until_it_serves(caplog: pytest.LogCaptureFixture):
    board = StatusBoard()
    svc = Flaky(failures=3)
    settings = SupervisorSettings(restart_initial_s=0.01, restart_max_s=0.05)
    task = asyncio.create_task(supervise(svc, settings, board))
    await asyncio.wait_for(svc.serving.wait(), 10)
    assert svc.starts == 4
    assert board.counters["restarts_flaky"] == 3
    assert board.adapters["flaky"] == "running"
    assert "service flaky failed" in caplog.text and "boom 1" in caplog.text
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert board.adapters["flaky"] == "stopped"


async def test_a_start_failure_is_one_line_and_is_retried(caplog: pytest.LogCaptureFixture):
    class CannotBind:
        name = "listener"
        runs = 0

        async def serve(self) -> None:
            CannotBind.runs += 1
            raise StartFailed("oip.tcp.listen_port: cannot listen on 127.0.0.1:1: in use")

    board = StatusBoard()
    task = asyncio.create_task(supervise(CannotBind(), SupervisorSettings(
        restart_initial_s=0.01, restart_max_s=0.01), board))
    for _ in range(500):
        if CannotBind.runs >= 3:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    records = [r for r in caplog.records if r.name == "gateway.supervisor"]
    assert len(records) >= 2 and all(r.exc_info is None for r in records)
    assert all(r.getMessage().startswith("service listener cannot start: oip.tcp.listen_port: "
                                         "cannot listen on 127.0.0.1:1: in use; retry ")
               for r in records)
    assert "Traceback" not in caplog.text


async def test_service_that_returns_is_restarted_too():
    class Quitter:
        name = "quitter"
        runs = 0

        async def serve(self) -> None:
            Quitter.runs += 1

    board = StatusBoard()
    task = asyncio.create_task(supervise(Quitter(), SupervisorSettings(
        restart_initial_s=0.01, restart_max_s=0.01), board))
    for _ in range(500):
        if Quitter.runs >= 3:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert Quitter.runs >= 3
    assert board.counters["restarts_quitter"] >= 2


def test_backoff_is_capped_and_jittered():
    rng = random.Random(1)
    delays = [backoff_delay(n, 1.0, 8.0, rng) for n in range(10)]
    assert all(0.5 <= d <= 8.0 for d in delays)
    assert delays[0] <= 1.0 and delays[9] >= 4.0  # grows to the cap, never beyond
    assert len({round(d, 6) for d in delays[5:]}) > 1  # jitter: not all the same


def test_sd_notify_sends_a_datagram(tmp_path, monkeypatch):
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sdnotify.notify("READY=1")
        assert srv.recv(100) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sdnotify.notify("READY=1")


def test_watchdog_interval_is_half_the_timeout(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert sdnotify.watchdog_interval_s() is None
