"""``python -m tools.openscs_server --port N --db FILE [--security ...]``: run until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from adapters.openscs import nodeids
from tools.openscs_server.engine import Limits
from tools.openscs_server.server import POLICIES, ReferenceServer


def _user(text: str) -> tuple[str, str]:
    name, sep, password = text.partition(":")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--user wants NAME:PASSWORD, got {text!r}")
    return name, password


def _x509_user(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--x509-user wants NAME=CERTFILE, got {text!r}")
    return name, Path(path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tools.openscs_server", description=__doc__)
    p.add_argument("--port", type=int, default=4841)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--db", type=Path, required=True, help="SQLite file (created if absent)")
    p.add_argument("--cert-dir", type=Path, help="server certificate dir (default: <db dir>/pki)")
    p.add_argument(
        "--security",
        nargs="*",
        choices=sorted(POLICIES),
        default=sorted(POLICIES),
        help="security policies offered (default: all four)",
    )
    p.add_argument("--allow-none", action="store_true", help="also offer SecurityPolicy None")
    p.add_argument("--allow-anonymous", action="store_true")
    p.add_argument(
        "--user",
        type=_user,
        action="append",
        default=[],
        help="NAME:PASSWORD (repeatable; default operator:operator)",
    )
    p.add_argument(
        "--viewer",
        action="append",
        default=[],
        help="user answered InsufficientPrivilegeToExecute (repeatable)",
    )
    p.add_argument(
        "--namespace-uri", default=nodeids.NS_URI_NODESET, choices=list(nodeids.NAMESPACE_URIS)
    )
    p.add_argument("--trusted-clients", type=Path,
                   help="directory of trusted client certificates (default: accept any)")
    p.add_argument("--x509-user", type=_x509_user, action="append", default=[],
                   help="NAME=CERTFILE: an X.509 user identity (repeatable)")
    p.add_argument("--max-events", type=int, default=Limits.MaxEvents)
    p.add_argument("--max-sn-requestable", type=int, default=Limits.MaxSNRequestable)
    p.add_argument("--demo", action="store_true", help="simple mode: None + anonymous + demo/demo")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("asyncua").setLevel(logging.WARNING)  # its INFO is per node and request
    if args.demo:
        server = ReferenceServer(
            port=args.port,
            db_path=args.db,
            host=args.host,
            allow_none=True,
            allow_anonymous=True,
            users={"demo": "demo"},
        )
    else:
        server = ReferenceServer(
            port=args.port,
            db_path=args.db,
            host=args.host,
            cert_dir=args.cert_dir,
            security=args.security,
            allow_none=args.allow_none,
            allow_anonymous=args.allow_anonymous,
            users=dict(args.user) if args.user else None,
            viewers=args.viewer,
            namespace_uri=args.namespace_uri,
            limits=Limits(MaxEvents=args.max_events, MaxSNRequestable=args.max_sn_requestable),
            trusted_clients=args.trusted_clients,
            x509_users=dict(args.x509_user),
        )
    try:
        asyncio.run(server.serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
