"""`linegate trust` and `linegate passwd` (wired by gateway/cli.py through add_parsers/run).

- ``linegate trust``                 list client certificates refused by the status server
- ``linegate trust accept NAME``     move one from the rejected folder into opcua_server.trust_dir
- ``linegate trust list``            the same listing, plus the trusted certificates
- ``linegate passwd [--stdin]``      print an scrypt hash for opcua_server.users[].password_hash
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from pathlib import Path
from typing import TextIO

from cryptography.hazmat.primitives.serialization import Encoding

from gateway.settings import Settings
from gateway.status import security as sec

log = logging.getLogger(__name__)


def add_parsers(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    trust = subparsers.add_parser(
        "trust", help="list client certificates the status server refused, accept one")
    trust.set_defaults(status_command="trust")
    trust.add_argument("action", nargs="?", choices=["list", "accept"], default="list")
    trust.add_argument("name", nargs="?", help="file name in the rejected folder (accept)")
    pw = subparsers.add_parser("passwd", help="print a password hash for opcua_server.users")
    pw.set_defaults(status_command="passwd")
    pw.add_argument("--stdin", action="store_true", help="read the password from stdin "
                    "instead of prompting")
    for p in (trust, pw):
        p.add_argument("--settings", type=Path, default=None,
                       help="path to settings.json (default: ./settings.json)")


def run(args: argparse.Namespace, settings: Settings, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    if args.status_command == "passwd":
        return run_passwd(args.stdin, out)
    if args.action == "accept":
        return run_accept(settings, args.name, out)
    return run_list(settings, out)


def run_passwd(from_stdin: bool, out: TextIO) -> int:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("passwd: the passwords differ", file=sys.stderr)
            return 2
    if not password:
        print("passwd: empty password refused", file=sys.stderr)
        return 2
    print(sec.hash_password(password), file=out)
    return 0


def _describe(path: Path) -> str:
    try:
        cert = sec.load_cert(path.read_bytes())
    except ValueError as e:
        return f"{path.name}: unreadable ({e})"
    uri = sec.uri_of(cert) or "-"
    return (f"{path.name}  CN={sec.common_name(cert)}  uri={uri}  "
            f"valid until {cert.not_valid_after_utc:%Y-%m-%d}  sha256={sec.fingerprint(cert)}")


def run_list(settings: Settings, out: TextIO) -> int:
    trusted, rejected = sec.trust_dirs(settings)
    files = sorted(rejected.glob("*")) if rejected.is_dir() else []
    print(f"rejected client certificates ({rejected}):", file=out)
    for p in files:
        print("  " + _describe(p), file=out)
    if not files:
        print("  none", file=out)
    tfiles = sorted(trusted.glob("*")) if trusted.is_dir() else []
    print(f"trusted ({trusted}): {len(tfiles)} file(s)", file=out)
    for p in tfiles:
        print("  " + _describe(p), file=out)
    return 0


def run_accept(settings: Settings, name: str | None, out: TextIO) -> int:
    trusted, rejected = sec.trust_dirs(settings)
    if not name:
        print("trust accept: name a file from 'linegate trust' (rejected folder "
              f"{rejected})", file=sys.stderr)
        return 2
    src = rejected / Path(name).name
    if not src.is_file():
        print(f"trust accept: {src} does not exist", file=sys.stderr)
        return 2
    try:
        cert = sec.load_cert(src.read_bytes())
    except ValueError as e:
        print(f"trust accept: {src} is not a certificate: {e}", file=sys.stderr)
        return 2
    trusted.mkdir(parents=True, exist_ok=True)
    dst = trusted / src.name
    dst.write_bytes(cert.public_bytes(Encoding.DER))
    src.unlink()
    log.info("trusted client certificate %s", dst)
    print(f"trusted {dst} ({_describe(dst)})", file=out)
    return 0

