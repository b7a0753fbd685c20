"""Shared helpers for the status server tests (no tests here)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

from gateway.board import StatusBoard
from gateway.settings import (
    AggregatorSettings,
    CertificateSettings,
    OpcuaServerSettings,
    Settings,
    StationSettings,
    StatusUser,
)
from gateway.status import StatusServer
from gateway.status import security as sec
from tests.tooling import free_port

WAIT_S = 30.0  # generous bound for "eventually" waits; not a timing assertion
CLIENT_URI = "urn:linegate:test:client"


def make_settings(root: Path, *, role: str = "prism", name: str = "station-1",
                  certs: bool = True, aggregator_url: str | None = None,
                  **opc: object) -> Settings:
    port = free_port()
    base = OpcuaServerSettings(
        enable=True, listen_address="127.0.0.1", listen_port_prism=port,
        listen_port_lente=port, update_interval_s=0.2,
        certificates=CertificateSettings(enable=certs, generate_if_missing=True),
        aggregator=AggregatorSettings(url=aggregator_url, upload_interval_s=0.2))
    return Settings(root=root, station=StationSettings(name=name, role=role),  # type: ignore[arg-type]
                    opcua_server=replace(base, **opc))  # type: ignore[arg-type]


def url(settings: Settings) -> str:
    return f"opc.tcp://127.0.0.1:{settings.opcua_server.listen_port_prism}/"


def user(name: str, password: str, role: str) -> StatusUser:
    return StatusUser(name=name, password_hash=sec.hash_password(password), role=role)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(settings: Settings, board: StatusBoard | None = None,
                  restart: Callable[[], object] | None = None) -> AsyncIterator[StatusServer]:
    srv = StatusServer(settings, board or StatusBoard(), restart or (lambda: None))  # type: ignore[arg-type]
    task = asyncio.create_task(srv.serve())
    ready = asyncio.create_task(srv.ready.wait())
    try:
        done, _ = await asyncio.wait({task, ready}, timeout=WAIT_S,
                                     return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # raises the start error
        assert ready in done, "status server did not become ready"
        yield srv
    finally:
        ready.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def client_pair(directory: Path, uri: str = CLIENT_URI) -> tuple[Path, Path]:
    cert, key = directory / "client_cert.pem", directory / "client_key.pem"
    if not cert.exists():
        sec.generate_pair(cert, key, uri, "test client", client=True)
    return cert, key


def trust(settings: Settings, cert: Path) -> None:
    trusted, _ = sec.trust_dirs(settings)
    trusted.mkdir(parents=True, exist_ok=True)
    shutil.copy(cert, trusted / cert.name)


async def connect(settings: Settings, *, mode: str = "None", pair: tuple[Path, Path] | None = None,
                  username: str | None = None, password: str | None = None) -> Client:
    """A connected asyncua client (caller disconnects). mode: None, Sign, SignAndEncrypt."""
    client = Client(url(settings), timeout=10)
    client.application_uri = CLIENT_URI
    if username:
        client.set_user(username)
        client.set_password(password or "")
    if mode != "None":
        assert pair is not None
        await client.set_security(SecurityPolicyBasic256Sha256, str(pair[0]), str(pair[1]),
                                  mode=getattr(ua.MessageSecurityMode, mode))
    await client.connect()
    return client


async def status_node(client: Client):
    idx = await client.get_namespace_index("urn:linegate:status")
    return idx, await client.nodes.objects.get_child(f"{idx}:Status")


async def eventually(probe: Callable[[], object], what: str) -> object:
    """Poll an async probe until it returns a truthy value (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    last: object = None
    while loop.time() < deadline:
        last = await probe()  # type: ignore[misc]
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what} (last: {last!r})")
