"""`linegate trust` and `linegate passwd` (wired by gateway/cli.py through add_parsers/run).

Two trust lists, kept apart (gateway/STATUS.md, "Certificates and trust"):

- client certificates refused by the status server: ``<opcua_server.trust_dir>/../rejected``,
  accepted into ``opcua_server.trust_dir``;
- OPEN-SCS server certificates refused by the upstream client:
  ``<upstream.openscs.trust_dir>/../rejected-upstream``, accepted into
  ``upstream.openscs.trust_dir``.

- ``linegate trust``                 list both rejected folders and both trust lists
- ``linegate trust list``            the same
- ``linegate trust accept NAME``     move NAME into the trust dir matching the rejected folder it
                                     was found in (``--from status|upstream`` when in both)
- ``linegate passwd [--stdin]``      print an scrypt hash for opcua_server.users[].password_hash
                                     (needs no settings: ``run_passwd``)
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from cryptography.hazmat.primitives.serialization import Encoding

from gateway.settings import Settings
from gateway.status import security as sec

log = logging.getLogger(__name__)


def add_parsers(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    trust = subparsers.add_parser(
        "trust", help="list refused certificates (status server clients, OPEN-SCS upstream "
        "servers), accept one")
    trust.set_defaults(status_command="trust")
    trust.add_argument("action", nargs="?", choices=["list", "accept"], default="list")
    trust.add_argument("name", nargs="?", help="file name in a rejected folder (accept)")
    trust.add_argument("--from", dest="source", choices=["status", "upstream"], default=None,
                       help="accept: the rejected folder to take NAME from, when both hold it "
                            "(status = clients of the status server, upstream = OPEN-SCS "
                            "servers)")
    pw = subparsers.add_parser("passwd", help="print a password hash for opcua_server.users")
    pw.set_defaults(status_command="passwd")
    pw.add_argument("--stdin", action="store_true", help="read the password from stdin "
                    "instead of prompting")
    trust.add_argument("--settings", type=Path, default=None,
                       help="path to settings.json (default: ./settings.json)")
    pw.add_argument("--settings", type=Path, default=None,
                    help="ignored (a password hash needs no settings)")


def run(args: argparse.Namespace, settings: Settings | None, out: TextIO | None = None) -> int:
    """``settings`` may be None for ``passwd`` (gateway/cli.py need not load them for it)."""
    out = out or sys.stdout
    if args.status_command == "passwd":
        return run_passwd(args.stdin, out)
    assert settings is not None, "linegate trust needs settings"
    if args.action == "accept":
        return run_accept(settings, args.name, out, source=getattr(args, "source", None))
    return run_list(settings, out)


def run_passwd(from_stdin: bool, out: TextIO) -> int:
    """Print a password hash; needs no settings. No password to read (end of input, no
    terminal to prompt on, Ctrl-C) is a one-line error and exit 2, never a traceback."""
    try:
        if from_stdin:
            line = sys.stdin.readline()
            if not line:
                print("passwd: no password on stdin (end of input)", file=sys.stderr)
                return 2
            password = line.rstrip("\r\n")
        else:
            if not sys.stdin.isatty():
                print("passwd: no terminal to prompt on; pipe the password in with "
                      "'linegate passwd --stdin'", file=sys.stderr)
                return 2
            password = getpass.getpass("Password: ")
            if getpass.getpass("Again: ") != password:
                print("passwd: the passwords differ", file=sys.stderr)
                return 2
    except EOFError:
        print("passwd: no password given (end of input)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        print("passwd: interrupted", file=sys.stderr)
        return 2
    if not password:
        print("passwd: empty password refused", file=sys.stderr)
        return 2
    print(sec.hash_password(password), file=out)
    return 0


@dataclass(frozen=True)
class TrustFolders:
    """One trust list and the rejected folder whose files are accepted into it."""

    source: str  # "status" | "upstream" (--from)
    rejected_title: str
    trusted_title: str
    setting: str  # the settings key of ``trusted``
    trusted: Path
    rejected: Path


def trust_folders(settings: Settings) -> list[TrustFolders]:
    trusted, rejected = sec.trust_dirs(settings)
    up_trusted, up_rejected = sec.upstream_trust_dirs(settings)
    return [
        TrustFolders("status", "rejected client certificates (status server)",
                     "trusted clients", "opcua_server.trust_dir", trusted, rejected),
        TrustFolders("upstream", "rejected upstream server certificates (OPEN-SCS client)",
                     "trusted upstream servers", "upstream.openscs.trust_dir", up_trusted,
                     up_rejected),
    ]


def _describe(path: Path) -> str:
    try:
        cert = sec.load_cert(path.read_bytes())
    except ValueError as e:
        return f"{path.name}: unreadable ({e})"
    uri = sec.uri_of(cert) or "-"
    return (f"{path.name}  CN={sec.common_name(cert)}  uri={uri}  "
            f"valid until {cert.not_valid_after_utc:%Y-%m-%d}  sha256={sec.fingerprint(cert)}")


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def run_list(settings: Settings, out: TextIO) -> int:
    for f in trust_folders(settings):
        files = _files(f.rejected)
        print(f"{f.rejected_title} ({f.rejected}):", file=out)
        for p in files:
            print("  " + _describe(p), file=out)
        if not files:
            print("  none", file=out)
        tfiles = _files(f.trusted)
        print(f"{f.trusted_title} ({f.setting} {f.trusted}): {len(tfiles)} file(s)", file=out)
        for p in tfiles:
            print("  " + _describe(p), file=out)
    return 0


def run_accept(settings: Settings, name: str | None, out: TextIO, *,
               source: str | None = None) -> int:
    """Move NAME from the rejected folder it is in into the trust dir belonging to it."""
    folders = [f for f in trust_folders(settings) if source is None or f.source == source]
    where = " or ".join(str(f.rejected) for f in folders)
    if not name:
        print(f"trust accept: name a file from 'linegate trust' (rejected folders {where})",
              file=sys.stderr)
        return 2
    found = [(f, f.rejected / Path(name).name) for f in folders]
    found = [(f, p) for f, p in found if p.is_file()]
    if not found:
        print(f"trust accept: {Path(name).name} does not exist in {where}", file=sys.stderr)
        return 2
    if len(found) > 1:
        print(f"trust accept: {Path(name).name} is in both {where}; say which with --from "
              "status (a client of the status server) or --from upstream (an OPEN-SCS server)",
              file=sys.stderr)
        return 2
    folder, src = found[0]
    try:
        cert = sec.load_cert(src.read_bytes())
    except ValueError as e:
        print(f"trust accept: {src} is not a certificate: {e}", file=sys.stderr)
        return 2
    folder.trusted.mkdir(parents=True, exist_ok=True)
    dst = folder.trusted / src.name
    dst.write_bytes(cert.public_bytes(Encoding.DER))
    src.unlink()
    what = "status server client" if folder.source == "status" else "OPEN-SCS upstream server"
    log.info("trusted %s certificate %s", what, dst)
    print(f"trusted {dst} as {what} ({folder.setting}): {_describe(dst)}", file=out)
    return 0
