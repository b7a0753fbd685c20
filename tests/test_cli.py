"""The linegate command line as a user runs it (real subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import __version__

ROOT = Path(__file__).resolve().parent.parent


def linegate(*args: str, cwd: Path | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=cwd or ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout, check=False)


def test_version():
    out = linegate("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"linegate {__version__}"


@pytest.mark.parametrize("command", [[], ["run"], ["check"], ["demo"], ["outbox"],
                                     ["outbox", "stats"], ["outbox", "dead", "list"],
                                     ["outbox", "dead", "show"], ["outbox", "dead", "retry"],
                                     ["trust"], ["passwd"]])
def test_help_on_every_command(command):
    out = linegate(*command, "--help")
    assert out.returncode == 0, out.stderr
    assert "usage: linegate" in out.stdout


def test_check_shipped_settings_passes():
    out = linegate("check", "--settings", str(ROOT / "settings.json"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{ROOT / 'settings.json'}: OK")


def test_check_reports_every_problem_with_position(tmp_path: Path):
    bad = tmp_path / "settings.json"
    bad.write_text(
        "{\n"
        "  // a comment\n"
        "  station: {name: 42},\n"
        "  oip: {tcp: {listen_prot: 7701, listen_port: 70000}},\n"
        "}\n")
    out = linegate("check", "--settings", str(bad))
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert f"{bad}:3:19: station.name: expected a string, got 42" in lines
    assert any(line.startswith(f"{bad}:4:15: oip.tcp.listen_prot: unknown key") and
               "did you mean 'listen_port'?" in line for line in lines)
    assert any(line.startswith(f"{bad}:4:47: oip.tcp.listen_port: expected an integer from 1 "
                               "to 65535, got 70000") for line in lines)
    assert lines[-1] == f"{bad}: 3 problem(s)"


def test_check_syntax_error_has_line_and_column(tmp_path: Path):
    bad = tmp_path / "settings.json"
    bad.write_text("{\n  station: {name: 'a',,},\n}\n")
    out = linegate("check", "--settings", str(bad))
    assert out.returncode == 2
    assert out.stderr.startswith(f"{bad}:2:")
    assert "syntax error" in out.stderr


def test_check_missing_file(tmp_path: Path):
    out = linegate("check", "--settings", str(tmp_path / "nope.json"))
    assert out.returncode == 2
    assert "nope.json" in out.stderr


def test_a_status_server_that_cannot_start_fails_check_and_run(tmp_path: Path):
    """What would only crash-loop under systemd is refused before start, exit 2."""
    bad = tmp_path / "settings.json"
    bad.write_text("{opcua_server: {enable: true, fields: ['user', 'usr'],\n"
                   "  certificates: {enable: true}}}\n")
    out = linegate("check", "--settings", str(bad))
    assert out.returncode == 2, out.stderr
    assert f'{bad}:1:48: opcua_server.fields[1]: expected one of cmd' in out.stderr
    assert 'got "usr"' in out.stderr
    run = linegate("run", "--settings", str(bad), timeout=60)
    assert run.returncode == 2 and 'got "usr"' in run.stderr
    bad.write_text("{opcua_server: {enable: true, certificates: {enable: true}}}\n")
    out = linegate("check", "--settings", str(bad))
    assert out.returncode == 2 and str(tmp_path / "public" / "cert.pem") in out.stderr


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_check_and_run_refuse_listeners_that_cannot_bind_naming_the_key(tmp_path: Path):
    """An address that is not on this machine: check exits 2 with the key and its position,
    and run refuses before starting anything (one line, no traceback). A port another program
    holds (no linegate runs with this store) is a problem for check too; run warns and would
    start, not ready until it is free (a running gateway's own ports: test_instance_lock)."""
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    try:
        settings = _write(tmp_path / "settings.json",
                          "{\n"
                          f"  oip: {{tcp: {{listen_port: {taken}}},\n"
                          "        soap: {listen_address: '192.0.2.1'}},\n"  # TEST-NET-1
                          "  upstream: {openscs: {enable: false}},\n"
                          "}\n")
        out = linegate("check", "--settings", str(settings))
        assert out.returncode == 2, out.stdout + out.stderr
        lines = out.stderr.splitlines()
        assert any(line.startswith(f"{settings}:2:28: oip.tcp.listen_port: cannot "
                                   f"listen on 127.0.0.1:{taken}: Address already in use "
                                   "(another program holds it: no linegate runs with this "
                                   "store") for line in lines), out.stderr
        assert any(line.startswith(f"{settings}:3:32: oip.soap.listen_address: cannot listen "
                                   "on 192.0.2.1:7780: Cannot assign requested address")
                   for line in lines), out.stderr
        assert lines[-1] == f"{settings}: 2 problem(s)"

        run = linegate("run", "--settings", str(settings), timeout=30)
        assert run.returncode == 2, run.stderr
        assert "Traceback" not in run.stderr and "linegate ready" not in run.stderr
        assert f"oip.tcp.listen_port: cannot listen on 127.0.0.1:{taken}" in run.stderr
        assert "outbox" not in run.stderr  # refused before anything was opened
    finally:
        holder.close()


def test_check_refuses_missing_tls_and_aggregator_password_files(tmp_path: Path):
    from tests.tooling import free_port

    settings = _write(tmp_path / "settings.json",
                      "{\n"
                      f"  oip: {{tcp: {{listen_port: {free_port()}, tls: {{enable: true,\n"
                      "          certificate_file: 'oip.pem'}}, soap: {enable: false}},\n"
                      "  upstream: {openscs: {enable: false}},\n"
                      "  opcua_server: {aggregator: {url: 'opc.tcp://127.0.0.1:4841/',\n"
                      "                              password_file: 'secrets/lente.pw'}},\n"
                      "}\n")
    out = linegate("check", "--settings", str(settings))
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.splitlines()
    cert, key = tmp_path / "public" / "oip.pem", tmp_path / "public" / "key.pem"
    assert (f"{settings}:3:29: oip.tcp.tls.certificate_file: {cert} does not exist "
            "(oip.tcp.tls.enable is true)") in lines
    assert any(line.startswith(f"{settings}:2:") and
               f"oip.tcp.tls.private_key_file: {key} does not exist" in line for line in lines)
    assert (f"{settings}:6:46: opcua_server.aggregator.password_file: "
            f"{tmp_path / 'secrets' / 'lente.pw'} does not exist") in lines
    assert lines[-1] == f"{settings}: 3 problem(s)"
    # with the files in place the same settings pass
    (tmp_path / "public").mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=linegate-test", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "lente.pw").write_text("x\n")
    out = linegate("check", "--settings", str(settings))
    assert out.returncode == 0, out.stderr


def _outbox_with_messages(store: Path, count: int) -> None:
    import asyncio

    from gateway.model import NewMessage
    from gateway.outbox import Outbox
    from gateway.settings import StoreSettings

    async def fill() -> None:
        ob = await Outbox.open(StoreSettings(path=store))
        await ob.submit([NewMessage("event", "K", f"k{i}", {"b": "x" * 500})
                         for i in range(count)])
        await ob.close()

    asyncio.run(fill())


def test_outbox_commands_need_only_a_valid_store_section(tmp_path: Path):
    """The outbox is inspected exactly when something else is wrong: the other problems are
    warnings, only store.* must be valid."""
    _outbox_with_messages(tmp_path / "data" / "o.sqlite", 3)
    secret = tmp_path / "up.password"
    secret.write_text("pw\n")
    secret.chmod(0o644)  # refused by check and run (must be 0600)
    settings = _write(tmp_path / "settings.json",
                      "{\n"
                      "  store: {path: 'data/o.sqlite'},\n"
                      "  upstream: {openscs: {username: 'gw', password_file: 'up.password'}},\n"
                      "  reserve: {low_water: 50, fill_to: 10},\n"
                      "}\n")
    assert linegate("check", "--settings", str(settings)).returncode == 2
    out = linegate("outbox", "stats", "--json", "--settings", str(settings))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["pending"] == 3
    warnings = out.stderr.splitlines()
    assert any(w.startswith(f"WARNING: {settings}:3:") and
               "upstream.openscs.password_file" in w and "0644" in w for w in warnings), warnings
    assert any(w.startswith(f"WARNING: {settings}:4:") and "reserve.low_water" in w
               for w in warnings), warnings
    out = linegate("outbox", "dead", "list", "--settings", str(settings))
    assert out.returncode == 0 and "no dead letters" in out.stdout, out.stderr

    # store.* itself must be valid: that is still an error, with its position
    settings.write_text("{\n  store: {path: 'data/o.sqlite', max_bytes: 10},\n"
                        "  reserve: {low_water: 50, fill_to: 10},\n}\n")
    out = linegate("outbox", "stats", "--settings", str(settings))
    assert out.returncode == 2
    assert f"{settings}:2:45: store.max_bytes: expected an integer >= 65536" in out.stderr
    assert "reserve.low_water" not in out.stderr and out.stdout == ""


def test_outbox_stats_on_a_corrupt_store_names_the_file_and_the_next_step(tmp_path: Path):
    """A store whose header is fine but whose pages are not: the reader names the file and
    says what to do, and what it says is what the gateway then does at its start."""
    from tests.tooling import free_port

    store = tmp_path / "data" / "o.sqlite"
    _outbox_with_messages(store, 300)
    image = bytearray(store.read_bytes())
    page = int.from_bytes(image[16:18], "big")
    image[page:] = b"\xff" * (len(image) - page)  # every page after the first
    store.write_bytes(bytes(image))
    settings = _write(tmp_path / "settings.json",
                      "{store: {path: 'data/o.sqlite'}, upstream: {openscs: {enable: false}},\n"
                      f" oip: {{tcp: {{listen_port: {free_port()}}}, soap: {{enable: false}}}}}}\n")
    out = linegate("outbox", "stats", "--settings", str(settings))
    assert out.returncode == 3, out.stderr
    assert "Traceback" not in out.stderr
    assert f"outbox {store} (store.path) is corrupt: " in out.stderr
    assert "restart the gateway" in out.stderr and "gateway/OUTBOX.md" in out.stderr
    assert f"move it out of {store.parent}" in out.stderr
    assert store.read_bytes() == bytes(image)  # nothing changed

    run = linegate("run", "--settings", str(settings), timeout=60)
    assert run.returncode == 3, run.stderr
    moved = [p.name for p in store.parent.iterdir() if p.name.startswith("o.sqlite.corrupt-")]
    assert len(moved) == 1 and not store.exists()
