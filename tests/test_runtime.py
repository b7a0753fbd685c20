"""The runtime as one piece: an OIP LOGIN shows up in the status server's `user`, and the
status server's `restart` method restarts the real runtime (supervisor path), logs the user
out and brings every listener back."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

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
