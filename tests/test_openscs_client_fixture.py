"""A small scriptable OPEN-SCS server (real asyncua, loopback) for the client tests.

Not the reference server (tools/openscs_server): this one exists to force every ReturnStatus
and result-code path on demand (``script``), to record the decoded arguments of every call,
and to be stopped/started for outage tests. It owns no types: it decodes with
adapters.openscs.types like any peer would from the bytes on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager

from adapters.openscs import certs, nodeids
from adapters.openscs import types as t
from adapters.openscs import ua as scs_ua
from gateway.model import KeyValue, LabelCollection, ReturnStatus, SNCollection
from gateway.settings import OpenScsSettings
from tests.tooling import free_port

NS_URI = nodeids.NS_URI_NODESET
USER, PASSWORD = "line", "s3cret"


class _Users(UserManager):
    """USER/PASSWORD, or an X.509 user certificate registered in ``x509_users`` (DER). asyncua
    hands an anonymous token the channel's application certificate too: only a registered user
    certificate makes an X.509 user. Each accepted login is appended to ``logins``."""

    def __init__(self, x509_users: dict[bytes, str], logins: list[str]) -> None:
        self.x509_users, self.logins = x509_users, logins

    def get_user(self, iserver, username=None, password=None, certificate=None):
        name = None
        if username is not None:
            name = username if (username, password) == (USER, PASSWORD) else None
        elif certificate is not None:
            found = self.x509_users.get(bytes(certificate))
            name = f"x509:{found}" if found else None
        if name is None:
            return None
        self.logins.append(name)
        return User(role=UserRole.User, name=name)


@dataclass
class ScsServer:
    """State and script of the fixture server."""

    port: int
    root: Path
    max_requestable: int = 1000
    max_returnable: int = 1000
    max_events: int = 1000
    max_aggregation: int = 1000
    per_call: int = 0  # >0: hand out at most this many per call, with a RequestToken
    script: dict[str, list[object]] = field(default_factory=dict)  # forced answers per method
    calls: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    applied_keys: list[str] = field(default_factory=list)
    next_serial: int = 1
    tokens: dict[str, int] = field(default_factory=dict)
    files: dict[int, bytearray] = field(default_factory=dict)
    documents: list[bytes] = field(default_factory=list)
    x509_users: dict[bytes, str] = field(default_factory=dict)  # user certificate DER -> name
    logins: list[str] = field(default_factory=list)  # accepted identities, in order
    server: Server | None = None
    ns: int = 0

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/openscs/"

    @property
    def cert_file(self) -> Path:
        return self.root / "server_cert.pem"

    def settings(self, tmp: Path, **kw: object) -> OpenScsSettings:
        """Client settings that trust this server and log in with the right password."""
        trust = tmp / "trusted"
        trust.mkdir(exist_ok=True)
        (trust / "server.pem").write_bytes(self.cert_file.read_bytes())
        pw = tmp / "password"
        pw.write_text(PASSWORD + "\n")
        pw.chmod(0o600)
        base: dict[str, object] = dict(
            endpoint=self.url, username=USER, password_file=pw, trust_dir=trust,
            certificate_file=tmp / "client_cert.pem", private_key_file=tmp / "client_key.pem",
            application_uri="urn:linegate:test-client", timeout_s=5.0, reconnect_max_s=0.2)
        base.update(kw)
        return OpenScsSettings(**base)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        certs.ensure_application_certificate(self.cert_file, self.root / "server_key.pem",
                                             "urn:linegate:test-openscs-server", server=True)
        server = Server(user_manager=_Users(self.x509_users, self.logins))
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name("test OPEN-SCS")
        await server.set_application_uri("urn:linegate:test-openscs-server")
        await server.load_certificate(str(self.cert_file))
        await server.load_private_key(str(self.root / "server_key.pem"))
        server.set_security_policy([
            ua.SecurityPolicyType.NoSecurity,
            ua.SecurityPolicyType.Basic256Sha256_Sign,
            ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
            ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
        ])
        server.set_identity_tokens([ua.UserNameIdentityToken, ua.X509IdentityToken,
                                    ua.AnonymousIdentityToken])
        self.ns = await server.register_namespace(NS_URI)
        await self._build(server)
        await server.start()
        self.server = server

    async def stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            await server.stop()

    # ------------------------------------------------------------------ address space

    async def _build(self, server: Server) -> None:
        ns = self.ns
        base = server.nodes.base_object_type
        types_ = {}
        for ident, name in ((nodeids.PoolManagerObjectType, "OPENSCSPoolManagerObjectType"),
                            (nodeids.EventManagerObjectType, "OPENSCSEventManagerObjectType"),
                            (nodeids.AggregationManagerObjectType,
                             "OPENSCSAggregationManagerObjectType")):
            types_[ident] = await base.add_object_type(ua.NodeId(ident, ns), f"{ns}:{name}")
        folder = await server.nodes.objects.add_folder(ua.NodeId("OPENSCSObjects", ns),
                                                       f"{ns}:OPENSCSObjects")
        pool = await folder.add_object(ua.NodeId("PoolManager", ns), f"{ns}:PoolManager",
                                       objecttype=ua.NodeId(nodeids.PoolManagerObjectType, ns))
        event = await folder.add_object(ua.NodeId("EventManager", ns), f"{ns}:EventManager",
                                        objecttype=ua.NodeId(nodeids.EventManagerObjectType, ns))
        agg = await folder.add_object(
            ua.NodeId("AggregationManager", ns), f"{ns}:AggregationManager",
            objecttype=ua.NodeId(nodeids.AggregationManagerObjectType, ns))
        crit = [scs_ua.to_extension_object(KeyValue("GTIN", ""), ns)]
        await pool.add_property(ns, "PoolSelectionCriteria",
                                ua.Variant(crit, ua.VariantType.ExtensionObject),
                                datatype=ua.NodeId(nodeids.KeyValueDataType, ns))
        await pool.add_property(ns, "SNFormat", ["SERIALONLY", "EPCURI"])
        for name, value in (("MaxSNRequestable", self.max_requestable),
                            ("MaxSNReturnable", self.max_returnable),
                            ("MaxSNPushable", self.max_returnable)):
            await pool.add_property(ns, name, ua.Variant(value, ua.VariantType.UInt32))
        await event.add_property(ns, "MaxEvents", ua.Variant(self.max_events,
                                                             ua.VariantType.UInt32))
        await agg.add_property(ns, "MaxAggregationEvents",
                               ua.Variant(self.max_aggregation, ua.VariantType.UInt32))
        for name in nodeids.POOL_METHODS:
            await pool.add_method(ns, name, self._handler(name))
        for name in nodeids.EVENT_METHODS:
            await event.add_method(ns, name, self._handler(name))
        for name in nodeids.AGGREGATION_METHODS:
            await agg.add_method(ns, name, self._handler(name))
        stream = await event.add_object(ns, "EPCISStream")
        await stream.add_method(0, "GenerateFileForWrite", self._generate)
        await stream.add_method(0, "CloseAndCommit", self._close_commit)
        self._stream = stream

    # ------------------------------------------------------------------ behaviour

    def _handler(self, name: str):
        async def call(parent: ua.NodeId, *args: ua.Variant) -> object:
            return self._dispatch(name, [a.Value for a in args])

        return call

    def _forced(self, name: str) -> object | None:
        queue = self.script.get(name)
        return queue.pop(0) if queue else None

    def _dispatch(self, name: str, args: list[object]) -> object:
        ns = self.ns
        forced = self._forced(name)
        if isinstance(forced, ua.StatusCode):
            self.calls.append((name, {"forced": forced.name}))
            return forced
        if name.startswith("SNRequest"):
            collection_id, count, fmt, crit, token = args
            rec = {"SNCollectionID": collection_id, "Count": count, "SNFormat": fmt,
                   "PoolSelectionCriteria": scs_ua.from_extension_objects(crit, ns, KeyValue),
                   "RequestToken": token}
            self.calls.append((name, rec))
            status = ReturnStatus.NoError
            if token:
                if token not in self.tokens:
                    return self._outs(ReturnStatus.InvalidRequestToken, None, "")
                count = self.tokens.pop(token)
            n = count
            new_token = ""
            if self.per_call and count > self.per_call:
                n = self.per_call
                new_token = f"T{len(self.calls)}"
                self.tokens[new_token] = count - n
                status = ReturnStatus.InsufficientSerialNumbers
            if isinstance(forced, ReturnStatus):
                status = forced
                if status is not ReturnStatus.InsufficientSerialNumbers:
                    return self._outs(status, None, "")
            serials = tuple(f"SN{self.next_serial + i:06d}" for i in range(n))
            self.next_serial += n
            coll = SNCollection("pool", "", t.SerialNumberState.Allocated, "pool", serials)
            return self._outs(status, coll, new_token)
        if name in nodeids.AGGREGATION_METHODS:
            elements, parent_fmt, packed_fmt, ctx = args
            rec = {"AggregationElement": scs_ua.from_extension_objects(elements, ns),
                   "ParentSNFormat": parent_fmt, "PackedElementSNFormat": packed_fmt,
                   "AggregationContext": scs_ua.from_extension_objects(ctx, ns, KeyValue)}
            return self._status(name, rec, forced, rec["AggregationContext"])
        if name in nodeids.EVENT_METHODS:
            coll, fmt, ctx = args
            rec = {"collection": scs_ua.from_extension_object(coll, ns), "SNFormat": fmt,
                   "OPENSCSEventContext": scs_ua.from_extension_objects(ctx, ns, KeyValue)}
            return self._status(name, rec, forced, rec["OPENSCSEventContext"])
        coll, crit, fmt = args  # pool pushes and returns
        rec = {"SNCollection": scs_ua.from_extension_object(coll, ns, SNCollection),
               "PoolSelectionCriteria": scs_ua.from_extension_objects(crit, ns, KeyValue),
               "SNFormat": fmt}
        return self._status(name, rec, forced, None)

    def _status(self, name: str, rec: dict[str, object], forced: object,
                ctx: object) -> list[ua.Variant]:
        self.calls.append((name, rec))
        status = forced if isinstance(forced, ReturnStatus) else ReturnStatus.NoError
        if status is ReturnStatus.NoError and ctx:
            key = {kv.Key: kv.Value for kv in ctx}.get("IdempotencyKey")  # type: ignore[attr-defined]
            if key and key not in self.applied_keys:
                self.applied_keys.append(key)
        return [ua.Variant(int(status), ua.VariantType.Int32)]

    def _outs(self, status: ReturnStatus, coll: SNCollection | None,
              token: str) -> list[ua.Variant]:
        ext = scs_ua.to_extension_object(coll, self.ns) if coll else ua.ExtensionObject()
        return [ua.Variant(int(status), ua.VariantType.Int32),
                ua.Variant(ext, ua.VariantType.ExtensionObject),
                ua.Variant(token, ua.VariantType.String)]

    async def _generate(self, parent: ua.NodeId, options: ua.Variant) -> list[ua.Variant]:
        arg = scs_ua.from_extension_object(options.Value, self.ns, t.EventStreamArgument)
        self.calls.append(("GenerateFileForWrite", {"generateOptions": arg}))
        handle = len(self.files) + 1
        self.files[handle] = bytearray()
        file_node = await self._stream.add_object(self.ns, f"File{handle}")
        await file_node.add_method(0, "Write", self._write)
        return [ua.Variant(file_node.nodeid, ua.VariantType.NodeId),
                ua.Variant(handle, ua.VariantType.UInt32),
                ua.Variant(ua.NodeId(0, 0), ua.VariantType.NodeId)]

    async def _write(self, parent: ua.NodeId, handle: ua.Variant,
                     data: ua.Variant) -> list[ua.Variant]:
        self.files[handle.Value] += data.Value
        return []

    async def _close_commit(self, parent: ua.NodeId, handle: ua.Variant) -> list[ua.Variant]:
        doc = bytes(self.files.pop(handle.Value))
        self.documents.append(doc)
        self.calls.append(("CloseAndCommit", {"bytes": len(doc)}))
        return [ua.Variant(ua.NodeId(0, 0), ua.VariantType.NodeId)]

    def recorded(self, name: str) -> list[dict[str, object]]:
        return [rec for n, rec in self.calls if n == name]


@contextlib.asynccontextmanager
async def running_server(root: Path, **kw: object) -> AsyncIterator[ScsServer]:
    srv = ScsServer(port=free_port(), root=root, **kw)  # type: ignore[arg-type]
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


def label_collection(serials: tuple[str, ...], state: t.SerialNumberState,
                     pool: str = "P1") -> LabelCollection:
    from gateway.model import Label
    return LabelCollection(pool, "", state, pool, serials, tuple(Label(s) for s in serials))


async def wait_until(pred, timeout_s: float = 20.0) -> None:
    """Poll ``pred`` (bounded); raise AssertionError when it never holds."""
    for _ in range(int(timeout_s / 0.05)):
        if pred():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")
