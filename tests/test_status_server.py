"""Status server fields over real loopback asyncua sessions."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest
from asyncua import ua

import gateway
from gateway.board import StatusBoard
from gateway.errors import SettingsError
from gateway.status import StatusServer, fields
from tests.test_status_support import connect, eventually, make_settings, running, status_node

SEED = ["cmd", "computer", "disk_usage", "ip", "num_files", "result_class", "script",
        "scripts_version", "user", "version"]
HEALTH = [f.name for f in fields.HEALTH_FIELDS]


async def _children(status) -> dict[str, object]:
    out = {}
    for child in await status.get_children():
        out[(await child.read_browse_name()).Name] = child
    return out


async def test_every_field_readable_with_documented_type(tmp_path) -> None:
    settings = make_settings(tmp_path, certs=False, security_policies=["NoSecurity"])
    (tmp_path / "settings.json").write_text("{}")
    settings = replace(settings, source=str(tmp_path / "settings.json"))
    bkup = tmp_path / "public/result/bkup"
    bkup.mkdir(parents=True)
    for i in range(3):
        (bkup / f"r{i}.xml").write_text("x")
    board = StatusBoard(cmd="ORDER", user="alice", script="ORD-1")
    async with running(settings, board):
        client = await connect(settings)
        try:
            idx, status = await status_node(client)
            children = await _children(status)
            assert set(children) == {*SEED, *HEALTH, "restart"}
            values = {n: await c.read_value() for n, c in children.items() if n != "restart"}
            vtypes = {n: (await c.read_data_type_as_variant_type()) for n, c in children.items()
                      if n != "restart"}
            # the stable NodeIds of the contract
            node = client.get_node(ua.NodeId("Status/user", idx))
            assert await node.read_value() == "alice"
        finally:
            await client.disconnect()
    assert vtypes["disk_usage"] == ua.VariantType.Double
    assert vtypes["num_files"] == ua.VariantType.UInt32
    assert all(vtypes[n] == ua.VariantType.String for n in SEED
               if n not in {"disk_usage", "num_files"})
    assert values["num_files"] == 3
    assert 0.0 < values["disk_usage"] <= 100.0
    assert values["version"] == gateway.__version__
    assert values["cmd"] == "ORDER" and values["script"] == "ORD-1"
    assert values["result_class"] == ""
    assert values["computer"] and values["ip"].count(".") == 3
    assert len(values["scripts_version"]) == 12
    assert json.loads(values["adapters"]) == {} and json.loads(values["counters"]) == {}
    assert values["cert_expiry"] == ""  # no certificate in use


async def test_fields_change_on_schedule(tmp_path) -> None:
    settings = make_settings(tmp_path, certs=False, security_policies=["NoSecurity"])
    bkup = tmp_path / "public/result/bkup"
    board = StatusBoard()
    async with running(settings, board):
        client = await connect(settings)
        try:
            idx, _ = await status_node(client)

            def node(name: str):
                return client.get_node(ua.NodeId(f"Status/{name}", idx))

            changes: list[tuple[str, object]] = []

            class Handler:
                def datachange_notification(self, n, val, data) -> None:
                    changes.append((n.nodeid.Identifier, val))

            sub = await client.create_subscription(50, Handler())
            await sub.subscribe_data_change([node("user"), node("num_files")])
            first_uptime = await node("uptime_s").read_value()
            # the station sets board.user on an OIP LOGIN
            board.user = "operator7"
            board.cmd = "LOGIN"
            board.set_health("outbox_backlog", 12)
            board.set_health("upstream_state", "connected")
            board.set_adapter("oip-tcp", "running")
            board.incr("frames_in", 5)
            bkup.mkdir(parents=True)
            (bkup / "a.xml").write_text("x")

            async def published() -> bool:
                return (await node("user").read_value() == "operator7"
                        and await node("num_files").read_value() == 1
                        and await node("outbox_backlog").read_value() == 12)

            await eventually(published, "board and file changes published")
            await eventually(lambda: _gt(node("uptime_s"), first_uptime), "uptime advances")
            await eventually(lambda: _true(("Status/user", "operator7") in changes),
                             "subscription sees the user change")
            assert await node("cmd").read_value() == "LOGIN"
            assert await node("upstream_state").read_value() == "connected"
            assert json.loads(await node("adapters").read_value()) == {"oip-tcp": "running"}
            assert json.loads(await node("counters").read_value()) == {"frames_in": 5}
        finally:
            await client.disconnect()


async def _gt(node, value: float) -> bool:
    return await node.read_value() > value


async def _true(value: bool) -> bool:
    return value


async def test_fields_filter_publishes_only_listed(tmp_path) -> None:
    settings = make_settings(tmp_path, certs=False, security_policies=["NoSecurity"],
                             fields=["user", "num_files", "outbox_backlog"])
    async with running(settings):
        client = await connect(settings)
        try:
            _, status = await status_node(client)
            assert set(await _children(status)) == {"user", "num_files", "outbox_backlog",
                                                    "restart"}
        finally:
            await client.disconnect()


def test_unknown_field_name_is_a_settings_error(tmp_path) -> None:
    settings = make_settings(tmp_path, fields=["user", "usr"])
    with pytest.raises(SettingsError, match=r"opcua_server\.fields: unknown field 'usr'"):
        StatusServer(settings, StatusBoard(), lambda: None)


def test_roles_choose_script_or_clients(tmp_path) -> None:
    prism = {f.name for f in fields.fields_for(make_settings(tmp_path))}
    lente = {f.name for f in fields.fields_for(make_settings(tmp_path, role="lente"))}
    assert "script" in prism and "clients" not in prism
    assert "clients" in lente and "script" not in lente


def test_board_values_of_wrong_type_fall_back_to_defaults() -> None:
    spec = fields.ALL_FIELDS["outbox_backlog"]
    assert fields.coerce(spec, "many") == 0
    assert fields.coerce(spec, -3) == 0
    assert fields.coerce(fields.ALL_FIELDS["reserve_level"], {"gtin": 4}) == '{"gtin":4}'


async def test_restart_with_nosecurity_only_and_no_users(tmp_path, caplog) -> None:
    """Seed behaviour: NoSecurity only and no users -> anyone may restart (warned)."""
    settings = make_settings(tmp_path, certs=False, security_policies=["NoSecurity"])
    board = StatusBoard(user="alice")
    restarted = asyncio.Event()
    async with running(settings, board, restarted.set):
        client = await connect(settings)
        try:
            idx, status = await status_node(client)
            assert await status.call_method(f"{idx}:restart") is None
            await asyncio.wait_for(restarted.wait(), 30)
            assert await client.get_node(ua.NodeId("Status/user", idx)).read_value() == ""
            assert await client.get_node(ua.NodeId("Status/cmd", idx)).read_value() == "restart"
        finally:
            await client.disconnect()
    assert board.user == "" and board.cmd == "restart"
    assert "any client may call restart" in caplog.text


async def test_failing_restart_callback_is_logged(tmp_path, caplog) -> None:
    settings = make_settings(tmp_path, certs=False, security_policies=["NoSecurity"])
    called = asyncio.Event()

    def restart() -> None:
        called.set()
        raise RuntimeError("supervisor gone")

    async with running(settings, StatusBoard(), restart):
        client = await connect(settings)
        try:
            idx, status = await status_node(client)
            await status.call_method(f"{idx}:restart")  # still answered Good
            await asyncio.wait_for(called.wait(), 30)
            for _ in range(100):  # let the done-callback run (bounded)
                if "the restart callback failed" in caplog.text:
                    break
                await asyncio.sleep(0.01)
        finally:
            await client.disconnect()
    assert "the restart callback failed" in caplog.text and "supervisor gone" in caplog.text


def test_seed_example_settings_load_and_check(tmp_path) -> None:
    """The seed's settings example (JSON5 with comments) through the real loader."""
    from gateway.settings_loader import load_settings_text
    from gateway.status import check_warnings

    seed_example = """{ "opcua_server": {
        "enable": true,
        "security_policies":[
          "NoSecurity",
          "Basic256Sha256_Sign",
          "Basic256Sha256_SignAndEncrypt"
        ],
        "certificates": {
          "enable": true,
          // "path": "public",
          // "certificate_file": "cert.pem",
          // "private_key_file": "key.pem",
        }
      } }"""
    settings = load_settings_text(seed_example, root=tmp_path)
    warnings = check_warnings(settings)
    assert f"{tmp_path}/public/cert.pem does not exist" in " ".join(warnings)
    defaults = load_settings_text('{"opcua_server": {"enable": true}}', root=tmp_path)
    assert any("cannot be offered" in w for w in check_warnings(defaults))
    with pytest.raises(SettingsError, match=r'settings.json:1:46: opcua_server.fields\[0\]: '
                       r'expected one of cmd, .*; got "usr"'):
        load_settings_text('{"opcua_server": {"enable": true, "fields": ["usr"]}}',
                           root=tmp_path)


def test_the_role_picks_the_seed_port(tmp_path) -> None:
    """prism listens on listen_port_prism (4840), lente on listen_port_lente (4841)."""
    from gateway.settings import OpcuaServerSettings, Settings, StationSettings

    for role, port in (("prism", 4840), ("lente", 4841)):
        settings = Settings(root=tmp_path, station=StationSettings(name="s", role=role),
                            opcua_server=OpcuaServerSettings(enable=True))
        assert StatusServer(settings, StatusBoard(), lambda: None).port == port
