"""Benchmark: serial numbers/s through SIDCommissioningEvent, OpenScsClient vs raw asyncua.

Both sides talk to the same reference server (tools.openscs_server) over loopback with
Basic256Sha256 SignAndEncrypt and a user name, send the same LabelCollection payload (fresh
Allocated serial numbers every call, since the server enforces the state model) for
collection sizes 1, 100 and the server's MaxEvents, and encode it per call. Prints
serial numbers/s for each and the ratio (target: ours >= 0.8x raw).

    .venv/bin/python -m tools.bench_openscs [--calls-1 300] [--seconds 0]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from pathlib import Path

from asyncua import Client, ua
from asyncua.crypto import security_policies

from adapters.openscs import ua as scs_ua
from adapters.openscs.client import EVENT, OpenScsClient
from gateway.model import KeyValue, Label, LabelCollection, SerialNumberState
from gateway.settings import OpenScsSettings
from tools.openscs_server.server import ReferenceServer

GTIN = "09506000134352"


def collection(serials: tuple[str, ...], pool: str) -> LabelCollection:
    return LabelCollection(pool, "", SerialNumberState.Commissioned, pool, serials,
                           tuple(Label(s) for s in serials))


async def _serials(client: OpenScsClient, n: int) -> tuple[list[str], str]:
    r = await client.sn_request_allocated(n, selection=GTIN)
    if len(r.serials) != n or r.collection is None:
        raise SystemExit(f"could not get {n} serial numbers: {r.verdict}")
    return list(r.serials), r.collection.AssociatedPoolID


async def _ours(client: OpenScsClient, chunks: list[tuple[str, ...]], pool: str) -> float:
    start = time.perf_counter()
    for i, chunk in enumerate(chunks):
        res = await client.sid_commissioning_event(
            collection(chunk, pool), context=(KeyValue("IdempotencyKey", f"ours-{i}-{chunk[0]}"),))
        if not res.ok:
            raise SystemExit(f"ours: {res.verdict}")
    return time.perf_counter() - start


async def _raw(raw: Client, obj: ua.NodeId, method: ua.NodeId, ns: int,
               chunks: list[tuple[str, ...]], pool: str) -> float:
    node = raw.get_node(obj)
    start = time.perf_counter()
    for i, chunk in enumerate(chunks):
        out = await node.call_method(
            method,
            ua.Variant(scs_ua.to_extension_object(collection(chunk, pool), ns)),
            ua.Variant("SERIALONLY", ua.VariantType.String),
            ua.Variant(scs_ua.to_extension_objects(
                [KeyValue("IdempotencyKey", f"raw-{i}-{chunk[0]}")], ns),
                ua.VariantType.ExtensionObject))
        if out != 1:
            raise SystemExit(f"raw: ReturnStatus {out}")
    return time.perf_counter() - start


async def main(calls_1: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        server = ReferenceServer(port=0, db_path=tmp / "scs.sqlite", users={"line": "pw"},
                                 cert_dir=tmp / "pki")
        await server.start()
        (tmp / "trust").mkdir()
        (tmp / "trust" / "ref.der").write_bytes(server.cert_path.read_bytes())
        (tmp / "pw").write_text("pw")
        (tmp / "pw").chmod(0o600)
        settings = OpenScsSettings(endpoint=server.endpoint, username="line",
                                   password_file=tmp / "pw", trust_dir=tmp / "trust",
                                   certificate_file=tmp / "c.pem",
                                   private_key_file=tmp / "k.pem", timeout_s=30.0)
        client = OpenScsClient(settings)
        await client.connect()
        session = await client.manager(EVENT)
        mgr = session.managers[EVENT]
        max_events = await client.limit(EVENT, "MaxEvents") or 1000
        raw = Client(server.endpoint, timeout=30)
        raw.application_uri = settings.application_uri
        await raw.set_security(security_policies.SecurityPolicyBasic256Sha256,
                               str(settings.certificate_file), str(settings.private_key_file),
                               server_certificate=str(server.cert_path))
        raw.set_user("line")
        raw.set_password("pw")
        await raw.connect()
        print(f"reference server {server.endpoint}, Basic256Sha256 SignAndEncrypt, "
              f"MaxEvents={max_events}")
        print(f"{'size':>6} {'calls':>6} {'ours SN/s':>12} {'raw SN/s':>12} {'ratio':>7}")
        try:
            for size in (1, 100, max_events):
                calls = calls_1 if size == 1 else max(5, 3000 // size)
                results = {}
                # interleaved in ABBA order (the server's database grows), best of three
                for side in ("raw", "ours", "ours", "raw", "raw", "ours"):
                    serials, pool = await _serials(client, size * calls)
                    chunks = [tuple(serials[i:i + size]) for i in range(0, len(serials), size)]
                    if side.startswith("ours"):
                        took = await _ours(client, chunks, pool)
                    else:
                        took = await _raw(raw, mgr.node, mgr.methods["SIDCommissioningEvent"],
                                          session.ns, chunks, pool)
                    rate = size * calls / took
                    results[side] = max(results.get(side, 0.0), rate)
                print(f"{size:>6} {calls:>6} {results['ours']:>12.0f} {results['raw']:>12.0f} "
                      f"{results['ours'] / results['raw']:>7.2f}")
        finally:
            await raw.disconnect()
            await client.close()
            await server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls-1", type=int, default=300,
                        help="calls at collection size 1 (larger sizes send 3000+ serials)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(args.calls_1))
