"""Interop with an independent stack: a node-opcua client (tests/node/status/client.js)
browses, reads every field, subscribes to a change and calls restart over Basic256Sha256
SignAndEncrypt with a user name. Needs node + npm (fails under CI=true when missing)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.board import StatusBoard
from gateway.status import fields
from gateway.status import security as sec
from gateway.status.server import application_uri
from tests.conftest import ROOT
from tests.test_status_support import client_pair, make_settings, running, trust, url, user
from tests.tooling import require_tool

NODE_DIR = ROOT / "tests" / "node" / "status"
NODE_URI = "urn:linegate:test:node"


@pytest.fixture(scope="module")
def node_client() -> str:
    node = require_tool("node")
    npm = require_tool("npm")
    if not (NODE_DIR / "node_modules" / "node-opcua").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True,
                       timeout=600, capture_output=True)
    return node


async def test_node_opcua_browse_read_subscribe_restart(tmp_path, node_client) -> None:
    settings = make_settings(tmp_path, security_policies=["Basic256Sha256_SignAndEncrypt"],
                             users=[user("olga", "op-secret", "operator")])
    server_cert = sec.load_or_generate_certificate(settings, application_uri(settings))
    cert, key = client_pair(tmp_path, NODE_URI)
    trust(settings, cert)
    pki = tmp_path / "pki"
    (pki / "trusted" / "certs").mkdir(parents=True)
    (pki / "trusted" / "certs" / "linegate.der").write_bytes(
        server_cert.certificate.public_bytes(Encoding.DER))
    board = StatusBoard(user="before")
    restarted = asyncio.Event()
    env = {**os.environ, "URL": url(settings), "CERT": str(cert), "KEY": str(key),
           "PKI": str(pki), "APP_URI": NODE_URI, "USER": "olga", "PASSWORD": "op-secret",
           "EXPECT": "nodeuser"}
    lines: list[dict] = []
    chatter: list[str] = []
    async with running(settings, board, restarted.set):
        proc = await asyncio.create_subprocess_exec(
            node_client, str(NODE_DIR / "client.js"), env=env, cwd=NODE_DIR,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            async with asyncio.timeout(120):
                assert proc.stdout is not None
                while raw := await proc.stdout.readline():
                    if not raw.startswith(b"@@ "):
                        chatter.append(raw.decode(errors="replace"))
                        continue
                    line = json.loads(raw[3:])
                    lines.append(line)
                    if line["step"] == "subscribed":
                        board.user = "nodeuser"  # what an OIP LOGIN does
                rc = await proc.wait()
                await restarted.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        stderr = (await proc.stderr.read()).decode() if proc.stderr else ""
    assert rc == 0, (lines, "".join(chatter)[-3000:], stderr[-3000:])
    done = lines[-1]
    assert done["step"] == "done"
    expected = {f.name for f in fields.fields_for(settings)}
    assert set(done["fields"]) == expected
    assert all(v["status"] == "Good" for v in done["fields"].values())
    assert done["fields"]["disk_usage"]["type"] == "Double"
    assert done["fields"]["num_files"]["type"] == "UInt32"
    assert done["fields"]["version"]["type"] == "String"
    assert done["seen"][0] == "before" and done["seen"][-1] == "nodeuser"
    assert "restart" in done["methods"]
    assert done["restart"] == "Good"
    assert board.user == "" and board.cmd == "restart"


async def test_node_opcua_untrusted_certificate_refused(tmp_path, node_client) -> None:
    settings = make_settings(tmp_path, security_policies=["Basic256Sha256_SignAndEncrypt"],
                             users=[user("olga", "op-secret", "operator")])
    server_cert = sec.load_or_generate_certificate(settings, application_uri(settings))
    cert, key = client_pair(tmp_path, NODE_URI)  # not put into trust_dir
    pki = tmp_path / "pki"
    (pki / "trusted" / "certs").mkdir(parents=True)
    (pki / "trusted" / "certs" / "linegate.der").write_bytes(
        server_cert.certificate.public_bytes(Encoding.DER))
    env = {**os.environ, "URL": url(settings), "CERT": str(cert), "KEY": str(key),
           "PKI": str(pki), "APP_URI": NODE_URI, "USER": "olga", "PASSWORD": "op-secret",
           "EXPECT": "never"}
    restarted = asyncio.Event()
    async with running(settings, StatusBoard(), restarted.set):
        proc = await asyncio.create_subprocess_exec(
            node_client, str(NODE_DIR / "client.js"), env=env, cwd=NODE_DIR,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            async with asyncio.timeout(120):
                out, _ = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    ours = [json.loads(x[3:]) for x in out.splitlines() if x.startswith(b"@@ ")]
    assert proc.returncode == 1 and ours[-1]["step"] == "error"
    assert "BadCertificateUntrusted" in ours[-1]["message"], ours[-1]["message"][:2000]
    _, rejected = sec.trust_dirs(settings)
    assert len(list(rejected.glob("test_client_*.der"))) == 1
    assert not restarted.is_set()
