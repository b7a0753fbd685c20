"""`linegate passwd` and `linegate trust` (gateway.status.cli)."""

from __future__ import annotations

import argparse
import io
import sys

from gateway.status import cli
from gateway.status import security as sec
from tests.test_status_support import client_pair, make_settings


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
    assert name in out.getvalue() and "CN=test client" in out.getvalue()
    assert "uri=urn:linegate:test:client" in out.getvalue()
    out = io.StringIO()
    assert cli.run(_parse(["trust", "accept", name]), settings, out) == 0
    assert (trusted / name).is_file() and not (rejected / name).exists()
    assert "trusted" in out.getvalue()
    assert sec.fingerprint(sec.load_cert(cert.read_bytes())) in sec.load_trusted(trusted)


def test_trust_accept_unknown_name_fails_clearly(tmp_path, capsys) -> None:
    settings = make_settings(tmp_path)
    assert cli.run(_parse(["trust", "accept", "nope.der"]), settings, io.StringIO()) == 2
    assert "nope.der does not exist" in capsys.readouterr().err
    assert cli.run(_parse(["trust", "accept"]), settings, io.StringIO()) == 2
