"""The linegate command line as a user runs it (real subprocesses)."""

from __future__ import annotations

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
