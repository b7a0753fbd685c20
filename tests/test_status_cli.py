"""`linegate passwd` and `linegate trust` (gateway.status.cli)."""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from adapters.openscs.client import OpenScsClient
from gateway.errors import UpstreamError
from gateway.settings import UpstreamSettings
from gateway.status import cli
from gateway.status import security as sec
from tests.test_openscs_client_fixture import running_server
from tests.test_status_support import client_pair, make_settings

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_HEADING = "rejected upstream server certificates"


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="linegate")
    cli.add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_passwd_prints_a_verifiable_hash(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("hunter2\n"))
    out = io.StringIO()
    assert cli.run(_parse(["passwd", "--stdin"]), make_settings(tmp_path), out) == 0
    line = out.getvalue().strip()
    assert line.startswith("scrypt$") and sec.verify_password("hunter2", line)


def test_passwd_refuses_empty(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    assert cli.run(_parse(["passwd", "--stdin"]), make_settings(tmp_path), io.StringIO()) == 2


def test_trust_lists_and_accepts(tmp_path, capsys) -> None:
    settings = make_settings(tmp_path)
    trusted, rejected = sec.trust_dirs(settings)
    cert, _ = client_pair(tmp_path)
    rejected.mkdir(parents=True)
    name = sec.rejected_name(sec.load_cert(cert.read_bytes()))
    (rejected / name).write_bytes(cert.read_bytes())
    out = io.StringIO()
    assert cli.run(_parse(["trust"]), settings, out) == 0
    clients, upstream = out.getvalue().split(UPSTREAM_HEADING)
    assert name in clients and name not in upstream  # listed as a client, not a server
    assert "CN=test client" in clients and "uri=urn:linegate:test:client" in clients
    out = io.StringIO()
    assert cli.run(_parse(["trust", "accept", name]), settings, out) == 0
    assert (trusted / name).is_file() and not (rejected / name).exists()
    assert "status server client (opcua_server.trust_dir)" in out.getvalue()
    assert sec.fingerprint(sec.load_cert(cert.read_bytes())) in sec.load_trusted(trusted)
    up_trusted, _ = sec.upstream_trust_dirs(settings)
    assert not up_trusted.exists()  # nothing went to the upstream's trust list


def test_trust_accept_unknown_name_fails_clearly(tmp_path, capsys) -> None:
    settings = make_settings(tmp_path)
    assert cli.run(_parse(["trust", "accept", "nope.der"]), settings, io.StringIO()) == 2
    assert "nope.der does not exist" in capsys.readouterr().err
    assert cli.run(_parse(["trust", "accept"]), settings, io.StringIO()) == 2


async def test_upstream_server_rejects_are_listed_and_accepted_apart(tmp_path) -> None:
    """The OPEN-SCS client refuses an untrusted upstream server (real asyncua, loopback): its
    certificate goes to public/rejected-upstream, never among the status server's rejected
    clients (public/rejected); `linegate trust` lists it under its own heading and `trust
    accept` moves it into upstream.openscs.trust_dir, after which the client connects."""
    async with running_server(tmp_path / "srv") as scs:
        (tmp_path / "up").mkdir()
        up_trust = tmp_path / "public" / "trusted_servers"  # the default layout
        openscs = scs.settings(tmp_path / "up", trust_dir=up_trust)
        settings = replace(make_settings(tmp_path), upstream=UpstreamSettings(openscs=openscs))
        client = OpenScsClient(openscs)
        try:
            with pytest.raises(UpstreamError, match="untrusted certificate") as info:
                await client.connect()
        finally:
            await client.close()
        status_trusted, status_rejected = sec.trust_dirs(settings)
        _, up_rejected = sec.upstream_trust_dirs(settings)
        assert up_rejected == tmp_path / "public" / "rejected-upstream"
        assert not status_rejected.exists() or not list(status_rejected.iterdir())
        (saved,) = up_rejected.iterdir()
        assert f"linegate trust accept {saved.name}" in str(info.value)

        out = io.StringIO()
        assert cli.run(_parse(["trust", "list"]), settings, out) == 0
        clients, upstream = out.getvalue().split(UPSTREAM_HEADING)
        assert saved.name not in clients and saved.name in upstream
        assert "uri=urn:linegate:test-openscs-server" in upstream

        out = io.StringIO()
        assert cli.run(_parse(["trust", "accept", saved.name]), settings, out) == 0
        assert "OPEN-SCS upstream server (upstream.openscs.trust_dir)" in out.getvalue()
        assert (up_trust / saved.name).is_file() and not saved.exists()
        assert not status_trusted.exists() or not list(status_trusted.iterdir())
        client = OpenScsClient(openscs)
        try:
            await client.connect()  # the upstream is trusted now
        finally:
            await client.close()


def test_trust_accept_a_name_in_both_folders_needs_from(tmp_path, capsys) -> None:
    settings = make_settings(tmp_path)
    trusted, rejected = sec.trust_dirs(settings)
    up_trusted, up_rejected = sec.upstream_trust_dirs(settings)
    cert, _ = client_pair(tmp_path)
    for folder in (rejected, up_rejected):
        folder.mkdir(parents=True)
        (folder / "same.der").write_bytes(cert.read_bytes())
    assert cli.run(_parse(["trust", "accept", "same.der"]), settings, io.StringIO()) == 2
    assert "--from" in capsys.readouterr().err
    out = io.StringIO()
    assert cli.run(_parse(["trust", "accept", "same.der", "--from", "upstream"]), settings,
                   out) == 0
    assert (up_trusted / "same.der").is_file() and (rejected / "same.der").is_file()
    assert not trusted.exists()


def test_passwd_needs_no_settings(monkeypatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("hunter2\n"))
    out = io.StringIO()
    assert cli.run(_parse(["passwd", "--stdin"]), None, out) == 0
    assert sec.verify_password("hunter2", out.getvalue().strip())


@pytest.mark.parametrize(("argv", "message"), [
    ([], "no terminal to prompt on"), (["--stdin"], "no password on stdin")])
def test_passwd_without_input_is_a_one_line_error(tmp_path, argv, message) -> None:
    """`linegate passwd </dev/null` with no controlling terminal (a service, ssh without a
    tty): exit 2 with one line, no EOFError traceback."""
    code = ("import sys; from gateway.status import cli; "
            f"sys.exit(cli.run_passwd({'--stdin' in argv}, sys.stdout))")
    proc = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert message in proc.stderr and "Traceback" not in proc.stderr and not proc.stdout


def test_linegate_passwd_runs_where_there_is_no_settings_json(tmp_path, monkeypatch,
                                                              capsys) -> None:
    from gateway import cli as main_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("hunter2\n"))
    assert main_cli.main(["passwd", "--stdin"]) == 0
    assert sec.verify_password("hunter2", capsys.readouterr().out.strip())
