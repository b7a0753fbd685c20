"""A tiny *real* idempotent upstream for the outbox tests and benchmark.

Server: an asyncua server on loopback with one object ``Inbox`` and two methods,
``DeliverBatch(stream: String, keys: String[], bodies: String[]) -> String[]`` and
``Deliver(key: String, body: String) -> String``. It records every call and applies each
idempotency key once in its own SQLite file: a replay of an applied key answers ``OK`` again
without applying it twice (as the OPEN-SCS reference upstream does with ``IdempotencyKey``).
A body carrying ``"invalid": "why"`` is refused with ``INVALID: why`` (a permanent refusal).

Client: ``MiniUpstreamClient(url)`` implements gateway.delivery.Upstream over OPC UA.

Run standalone: ``python -m tools.mini_upstream --db up.sqlite [--port 0]``; it prints
``PORT <n>`` once listening and serves until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path

from asyncua import Client, Server, ua
from asyncua.common.methods import uamethod

from gateway.aio import cancel_requested
from gateway.errors import TransportError
from gateway.model import DeliveryResult, Outcome, StoredMessage

log = logging.getLogger(__name__)

NAMESPACE = "urn:linegate:mini-upstream"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS applied (seq INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT,
    key TEXT NOT NULL UNIQUE, body TEXT);
CREATE TABLE IF NOT EXISTS calls (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT, result TEXT);
"""


class MiniUpstream:
    """The server. ``await start()``; ``port`` and ``ready`` are set once listening."""

    name = "mini-upstream"

    def __init__(self, db_path: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.db_path = Path(db_path)
        self.host = host
        self.port = port
        self.ready = asyncio.Event()
        self._db = sqlite3.connect(self.db_path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._server: Server | None = None

    def apply(self, stream: str, keys: Sequence[str], bodies: Sequence[str]) -> list[str]:
        """Apply a batch in one transaction; a replayed key answers OK, applied once."""
        results = []
        self._db.execute("BEGIN IMMEDIATE")
        for key, body in zip(keys, bodies, strict=True):
            why = json.loads(body).get("invalid") if body.startswith("{") else None
            if why:
                result = f"INVALID: {why}"
            else:
                cur = self._db.execute("INSERT OR IGNORE INTO applied (stream, key, body) "
                                       "VALUES (?, ?, ?)", (stream, key, body))
                result = "OK" if cur.rowcount else "OK replay"
            self._db.execute("INSERT INTO calls (key, result) VALUES (?, ?)", (key, result))
            results.append(result)
        self._db.execute("COMMIT")
        return results

    async def start(self) -> None:
        server = Server()
        await server.init()
        server.set_endpoint(f"opc.tcp://{self.host}:{self.port}/")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await server.register_namespace(NAMESPACE)
        inbox = await server.nodes.objects.add_object(idx, "Inbox")

        @uamethod
        async def deliver_batch(parent: object, stream: str, keys: list[str],
                          bodies: list[str]) -> list[str]:
            return self.apply(stream, keys, bodies)

        @uamethod
        async def deliver(parent: object, key: str, body: str) -> str:
            return self.apply("", [key], [body])[0]

        S = ua.VariantType.String
        await inbox.add_method(idx, "DeliverBatch", deliver_batch, [S, S, S], [S])
        await inbox.add_method(idx, "Deliver", deliver, [S, S], [S])
        await server.start()
        self._server = server
        self.port = server.bserver.port
        self.ready.set()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None
        self._db.close()

    async def serve(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()


def applied(db_path: Path) -> list[tuple[str, str, dict[str, object]]]:
    """(stream, key, body) of every applied message, in application order."""
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT stream, key, body FROM applied ORDER BY seq").fetchall()
    return [(s, k, json.loads(b)) for s, k, b in rows]


def call_results(db_path: Path) -> dict[str, int]:
    with sqlite3.connect(db_path) as db:
        return dict(db.execute("SELECT result, COUNT(*) FROM calls GROUP BY result").fetchall())


class MiniUpstreamClient:
    """gateway.delivery.Upstream over OPC UA to a MiniUpstream (one call per batch)."""

    def __init__(self, url: str, *, timeout_s: float = 2.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._client: Client | None = None
        self._inbox: object = None
        self._method: object = None
        self._lock = asyncio.Lock()

    async def _connected(self) -> tuple[object, object]:
        async with self._lock:
            return await self._connect()

    async def _connect(self) -> tuple[object, object]:
        if self._client is None:
            client = Client(self.url, timeout=self.timeout_s, watchdog_intervall=3600)
            async with asyncio.timeout(self.timeout_s * 2):
                await client.connect()
            try:
                idx = await client.get_namespace_index(NAMESPACE)
                inbox = await client.nodes.objects.get_child(f"{idx}:Inbox")
                method = await inbox.get_child(f"{idx}:DeliverBatch")
            except BaseException:
                client.disconnect_socket()
                raise
            self._client, self._inbox, self._method = client, inbox, method
        return self._inbox, self._method

    async def connect(self) -> None:
        """Connect now (otherwise the first deliver() connects)."""
        await self._connected()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                async with asyncio.timeout(1.0):
                    await client.disconnect()
            except (OSError, TimeoutError, ua.UaError):
                client.disconnect_socket()

    async def deliver(self, stream: str,
                      batch: Sequence[StoredMessage]) -> Sequence[DeliveryResult]:
        try:
            inbox, method = await self._connected()
            keys = [m.key for m in batch]
            bodies = [m.body_json for m in batch]  # the stored text, not decoded
            async with asyncio.timeout(self.timeout_s):
                answers = await inbox.call_method(  # type: ignore[attr-defined]
                    method, ua.Variant(stream, ua.VariantType.String),
                    ua.Variant(keys, ua.VariantType.String),
                    ua.Variant(bodies, ua.VariantType.String))
        except asyncio.CancelledError as exc:
            if cancel_requested():
                raise
            await self.close()  # asyncua cancelled the call as the connection went down
            raise TransportError(f"mini upstream {self.url}: call cancelled: {exc!r}") from exc
        except (OSError, TimeoutError, ua.UaError) as exc:
            await self.close()
            raise TransportError(f"mini upstream {self.url}: {type(exc).__name__}: {exc}") from exc
        return [DeliveryResult(Outcome.DONE) if a.startswith("OK")
                else DeliveryResult(Outcome.PERMANENT, a) for a in answers]


async def _main(db: Path, port: int) -> None:
    up = MiniUpstream(db, port=port)
    await up.start()
    print(f"PORT {up.port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await up.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.mini_upstream", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, required=True, help="its SQLite file")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0 = any)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        asyncio.run(_main(args.db, args.port))
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
