"""Interop with an independent stack: node-opcua serving the *official* OPEN-SCS NodeSet.

tests/node/openscs/server.js instantiates the managers from the official ObjectTypes and
records what node-opcua decoded from every call. A Good status proves nothing (node-opcua
hands a method an empty object when it cannot decode an ExtensionObject), so every recorded
field is compared with what the client sent, including a LabelCollection's inherited ID,
State and SerialNumbers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.openscs import certs, nodeids
from adapters.openscs.client import OpenScsClient
from gateway.model import (
    Aggregation,
    KeyValue,
    Label,
    LabelCollection,
    SNCollection,
)
from gateway.model import SerialNumberState as S
from gateway.settings import OpenScsSettings
from tests.conftest import ROOT, SHARED
from tests.tooling import free_port, require_tool

NODE_DIR = ROOT / "tests" / "node" / "openscs"
NODESET = SHARED / "reference" / "openscs" / "Opc.Ua.OPENSCS.NodeSet2.xml"

LC = LabelCollection("LC-ID", "a description", S.Commissioned, "POOL-9", ("A1", "A2", "A3"),
                     (Label("A1", (KeyValue("lot", "L1"), KeyValue("exp", "2027-01"))),
                      Label("A2"), Label("A3", ())),
                     (KeyValue("line", "7"),))
SC = SNCollection("SC-ID", "returned", S.Allocated, "POOL-9", ("B1", "B2"))
CTX = (KeyValue("Ordnr", "O-42"), KeyValue("IdempotencyKey", "interop-1"))


def _npm_install() -> None:
    if (NODE_DIR / "node_modules" / "node-opcua").is_dir():
        return
    npm = require_tool("npm")
    subprocess.run([npm, "install", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True,
                   timeout=600, capture_output=True)


def norm(value: object) -> object:
    """Comparable form of a sent dataclass or a recorded node-opcua JSON value."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k.lower(): norm(v) for k, v in value.items()
                if v is not None and v != [] and v != ()}
    if isinstance(value, (list, tuple)):
        return [norm(v) for v in value]
    if isinstance(value, enum.IntEnum):
        return int(value)
    return value


@pytest.fixture
async def node_server(tmp_path: Path) -> AsyncIterator[tuple[str, Path, Path]]:
    node = require_tool("node")
    await asyncio.to_thread(_npm_install)
    cert, key = tmp_path / "node_cert.pem", tmp_path / "node_key.pem"
    certs.ensure_application_certificate(cert, key, "urn:linegate:node-openscs", server=True)
    record = tmp_path / "record.json"
    out, err = tmp_path / "node.out", tmp_path / "node.err"
    port = free_port()
    # output goes to files, never to pipes nobody drains (a full pipe would block node)
    with out.open("wb") as fo, err.open("wb") as fe:
        proc = await asyncio.create_subprocess_exec(
            node, "server.js", "--port", str(port), "--nodeset", str(NODESET),
            "--record", str(record), "--cert", str(cert), "--key", str(key),
            "--pki", str(tmp_path / "pki"), "--user", "line", "--password", "n0de",
            cwd=NODE_DIR, stdin=asyncio.subprocess.DEVNULL, stdout=fo, stderr=fe)
    try:
        for _ in range(1200):  # bounded: 60 s
            if b"READY" in out.read_bytes() or proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        if b"READY" not in out.read_bytes():
            raise AssertionError(f"node server did not start: {out.read_bytes()[-2000:]!r} "
                                 f"{err.read_bytes()[-2000:]!r}")
        yield f"opc.tcp://127.0.0.1:{port}", cert, record
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, 9)
        await asyncio.wait_for(proc.wait(), 30)


@pytest.mark.parametrize("policy", ["Basic256Sha256", "Aes128_Sha256_RsaOaep"])
async def test_every_method_against_node_opcua(node_server: tuple[str, Path, Path],
                                               tmp_path: Path, policy: str) -> None:
    url, cert, record = node_server
    trust = tmp_path / "trust"
    trust.mkdir()
    (trust / "node.pem").write_bytes(cert.read_bytes())
    pw = tmp_path / "pw"
    pw.write_text("n0de")
    pw.chmod(0o600)
    client = OpenScsClient(OpenScsSettings(
        endpoint=url, security_policy=policy, security_mode="SignAndEncrypt",  # type: ignore[arg-type]
        username="line", password_file=pw, trust_dir=trust,
        certificate_file=tmp_path / "c.pem", private_key_file=tmp_path / "k.pem",
        timeout_s=10.0))
    sent: list[tuple[str, list[object]]] = []
    agg = (Aggregation(Label("SSCC-1", (KeyValue("kind", "case"),)), LC),)
    try:
        await client.connect()
        for method in ("SNRequestUnassigned", "SNRequestUnallocated", "SNRequestAllocated"):
            state = {"SNRequestUnassigned": S.Unassigned, "SNRequestUnallocated": S.Unallocated,
                     "SNRequestAllocated": S.Allocated}[method]
            r = await client.request(state, 3, selection="GTIN=04012345000016",
                                     sn_format="SERIALONLY")
            assert r.verdict.reason == "" and len(r.serials) == 3
            assert r.collection is not None and r.collection.ID == "node-pool"
            assert r.collection.State is S.Allocated and r.serials[0].startswith("N")
            sent.append((method, ["", 3, "SERIALONLY", [KeyValue("GTIN", "04012345000016")],
                                  None]))
        for method in nodeids.POOL_METHODS:
            if not method.startswith("SNRequest"):
                res = await client.pool_push(method, SC, selection="PoolID=POOL-9")
                assert res.ok, res.verdict
                sent.append((method, [SC, [KeyValue("PoolID", "POOL-9")], "SERIALONLY"]))
        for method in nodeids.EVENT_METHODS:
            coll = SC if method == "SNInvalidatingEvent" else LC
            res = await client.event(method, coll, context=CTX, sn_format="EPCURI")
            assert res.ok, res.verdict
            sent.append((method, [coll, "EPCURI", list(CTX)]))
        for method in nodeids.AGGREGATION_METHODS:
            res = await client.aggregation(method, agg, parent_sn_format="EPCURI",
                                           packed_sn_format="SERIALONLY", context=CTX)
            assert res.ok, res.verdict
            sent.append((method, [list(agg), "EPCURI", "SERIALONLY", list(CTX)]))
    finally:
        await client.close()
    recorded = json.loads(record.read_text())
    assert [r["method"] for r in recorded] == [m for m, _ in sent]
    assert len({m for m, _ in sent}) == 20
    for (method, args), rec in zip(sent, recorded, strict=True):
        got = [a["value"] for a in rec["args"]]
        assert norm(got) == norm(args), method
    # the trap the issue names: inherited Collection fields decoded by the independent stack
    commissioning = next(r for r in recorded if r["method"] == "SIDCommissioningEvent")
    lc = commissioning["args"][0]["value"]
    assert lc["ID"] == "LC-ID" and lc["state"] == 7 and lc["serialNumbers"] == ["A1", "A2",
                                                                                 "A3"]
