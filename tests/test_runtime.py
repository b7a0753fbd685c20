"""The runtime as one piece: an OIP LOGIN shows up in the status server's `user`, and the
status server's `restart` method restarts the real runtime (supervisor path), logs the user
out and brings every listener back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from asyncua import Client, ua

from gateway.model import LoadOrder, Login, Ping
from gateway.runtime import Runtime
from gateway.settings_loader import load_settings_text
from tests.test_faults import until
from tests.tooling import free_port
from tools.pacsim import SEED_ORDER, TcpPac

SETTINGS = """{
  station: {name: "rt-station", role: "prism"},
  oip: {tcp: {listen_address: "127.0.0.1", listen_port: %(tcp)d}, soap: {enable: false}},
  store: {path: "data/outbox.sqlite"},
  upstream: {openscs: {enable: false}},
  reserve: {enable: false},
  opcua_server: {enable: true, listen_address: "127.0.0.1", listen_port_prism: %(status)d,
                 security_policies: ["NoSecurity"], update_interval_s: 0.2},
}
"""


async def _read(port: int, name: str) -> object:
    client = Client(f"opc.tcp://127.0.0.1:{port}/", timeout=5)
    await client.connect()
    try:
        idx = await client.get_namespace_index("urn:linegate:status")
        return await client.get_node(ua.NodeId(f"Status/{name}", idx)).read_value()
    finally:
        await client.disconnect()


async def _read_or_none(port: int, name: str) -> object:
    try:
        return await _read(port, name)
    except (OSError, TimeoutError, ua.UaError):
        return None


async def test_login_reaches_status_and_restart_restarts_the_runtime(tmp_path: Path) -> None:
    tcp, status = free_port(), free_port()
    text = SETTINGS % {"tcp": tcp, "status": status}
    settings = load_settings_text(text, source=str(tmp_path / "settings.json"), root=tmp_path)
    runtime = Runtime(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    try:
        await asyncio.wait_for(runtime.ready.wait(), 30)
        pac = await TcpPac.connect("127.0.0.1", tcp)
        assert (await pac.request(Login("op9"), 1)).ack
        assert (await pac.request(LoadOrder(SEED_ORDER), 3)).ack
        await pac.close()

        async def script_is(want: str) -> bool:
            return await _read_or_none(status, "script") == want

        await until(lambda: script_is(SEED_ORDER.Ordnr), within_s=20)
        client = Client(f"opc.tcp://127.0.0.1:{status}/", timeout=5)
        await client.connect()
        try:  # the MES closes the order explicitly
            idx = await client.get_namespace_index("urn:linegate:status")
            closed = await client.get_node(ua.NodeId("Status", idx)).call_method(
                ua.NodeId("Status/close_order", idx))
        finally:
            await client.disconnect()
        assert closed == SEED_ORDER.Ordnr
        await until(lambda: script_is(""), within_s=20)

        async def user_is(want: str) -> bool:
            return await _read_or_none(status, "user") == want

        await until(lambda: user_is("op9"), within_s=20)
        assert await _read(status, "cmd") == "close_order"  # the last command executed

        client = Client(f"opc.tcp://127.0.0.1:{status}/", timeout=5)
        await client.connect()
        try:
            idx = await client.get_namespace_index("urn:linegate:status")
            status_obj = client.get_node(ua.NodeId("Status", idx))
            await status_obj.call_method(ua.NodeId("Status/restart", idx))  # answered Good
        finally:
            with contextlib.suppress(Exception):
                await client.disconnect()

        async def restarted() -> bool:
            return runtime.starts == 2 and runtime.ready.is_set()

        await until(restarted, within_s=30)
        await until(lambda: user_is(""), within_s=20)  # restart logged the user out
        pac = await TcpPac.connect("127.0.0.1", tcp)  # the OIP listener is back
        assert (await pac.request(Ping(), 2)).ack
        await pac.close()
        assert runtime.components is not None and runtime.components.station.user == ""
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def _until(pred: Callable[[], bool], within_s: float) -> None:
    async def check() -> bool:
        return pred()

    await until(check, within_s=within_s)


RUNTIME_ONLY_TCP = """{
  oip: {tcp: {listen_address: "127.0.0.1", listen_port: %(tcp)d}, soap: {enable: false}},
  upstream: {openscs: {enable: false}},
  reserve: {enable: false},
  supervisor: {restart_initial_s: 0.2, restart_max_s: 0.5},
}
"""


async def test_a_listener_that_cannot_bind_is_one_line_and_holds_back_ready(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Port taken at run time: one log line naming the key and the OS error (no traceback),
    no "ready" while it is down, ready as soon as the port is free, and a stop is prompt."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    tcp = holder.getsockname()[1]
    settings = load_settings_text(RUNTIME_ONLY_TCP % {"tcp": tcp},
                                  source=str(tmp_path / "settings.json"), root=tmp_path)
    runtime = Runtime(settings)
    stop = asyncio.Event()
    caplog.set_level(logging.INFO)
    task = asyncio.create_task(runtime.run(stop))
    try:
        def failures() -> list[logging.LogRecord]:
            return [r for r in caplog.records if "cannot start" in r.getMessage()]

        await _until(lambda: len(failures()) >= 3, within_s=20)  # retried, not given up
        assert not runtime.ready.is_set()
        for record in failures():
            assert record.exc_info is None and "\n" not in record.getMessage()
            assert (f"oip.tcp.listen_port: cannot listen on 127.0.0.1:{tcp}: Address already "
                    "in use") in record.getMessage()
        assert not [r for r in caplog.records if "linegate ready" in r.getMessage()]
        not_ready = [r.getMessage() for r in caplog.records
                     if r.getMessage().startswith("linegate not ready: ")]
        assert len(not_ready) == 1 and "oip.tcp.listen_port" in not_ready[0]

        holder.close()  # the port comes free: the retry listens and only then it is ready
        await asyncio.wait_for(runtime.ready.wait(), 10)
        assert [r for r in caplog.records if "linegate ready" in r.getMessage()]
        pac = await TcpPac.connect("127.0.0.1", tcp)
        assert (await pac.request(Ping(), 2)).ack
        await pac.close()
    finally:
        holder.close()
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_stop_is_prompt_while_a_listener_cannot_start(tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    settings = load_settings_text(RUNTIME_ONLY_TCP % {"tcp": holder.getsockname()[1]},
                                  source=str(tmp_path / "settings.json"), root=tmp_path)
    runtime = Runtime(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    try:
        await _until(lambda: runtime.board.counters.get("restarts_oip-tcp", 0) >= 1,
                     within_s=20)
        started = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, 30)
        assert time.monotonic() - started < 2.0
        assert not runtime.ready.is_set()
    finally:
        holder.close()
        stop.set()
        if not task.done():
            await asyncio.wait_for(task, 30)
