"""ReferenceServer: an asyncua OPEN-SCS upstream with security, users and a SQLite record.

    server = ReferenceServer(port=0, db_path=tmp / "scs.sqlite", cert_dir=tmp / "pki",
                             users={"line": "secret"})
    await server.start()          # server.endpoint, server.port
    ...                           # server.events(), server.serial_states(), ...
    await server.stop()

``await ReferenceServer.start_demo(port, db_path)`` is the one-call simple mode for
``linegate demo`` (None security allowed, anonymous allowed, user demo/demo).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.internal_session import InternalSession
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from adapters.openscs import nodeids as N
from adapters.openscs.types import SIDClassProperty
from tools.openscs_server import addrspace as A
from tools.openscs_server.engine import Engine, Limits
from tools.openscs_server.handlers import Handlers, current_user
from tools.openscs_server.pools import DEFAULT_POOLS, FORMATS, PoolConfig
from tools.openscs_server.store import Store

log = logging.getLogger(__name__)

APP_URI = "urn:linegate:openscs-reference-server"
INSTANCE_NS = "urn:linegate:openscs-reference:instances"
POLICIES = {
    "Basic256Sha256_Sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
    "Basic256Sha256_SignAndEncrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    "Aes128Sha256RsaOaep_Sign": ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    "Aes128Sha256RsaOaep_SignAndEncrypt": ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
}
SID_CLASSES = {
    "GS1 SGTIN": (
        "GS1:SGTIN",
        "Serialised Global Trade Item Number (AI 01 + AI 21)",
        "AI 21: 1-20 characters of GS1 AI encodable character set 82",
        "trade items",
    ),
    "GS1 SSCC": (
        "GS1:SSCC",
        "Serial Shipping Container Code (AI 00)",
        "18 digits: extension, GS1 company prefix, serial reference, check digit",
        "logistic units",
    ),
}
CHARSET_82 = "!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"


_ANONYMOUS = User(role=UserRole.Anonymous)


def _fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def _der_of(path: Path) -> bytes:
    data = path.read_bytes()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data).public_bytes(serialization.Encoding.DER)
    return data


class _UserManager:
    """username/password users, X.509 user identities (certificate -> user name), anonymous
    only when explicitly allowed."""

    def __init__(self, users: Mapping[str, str], allow_anonymous: bool,
                 x509_users: Mapping[str, str] | None = None) -> None:
        self.users = dict(users)
        self.allow_anonymous = allow_anonymous
        self.x509_users = dict(x509_users or {})  # certificate fingerprint -> user name

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        # ``certificate``: the X509 identity token's certificate (its signature already
        # verified by asyncua), else the secure channel's peer certificate
        if username is None and isinstance(certificate, bytes) and certificate:
            name = self.x509_users.get(_fingerprint(certificate))
            if name is not None:
                return User(role=UserRole.User, name=name)
        if username is None:
            if self.allow_anonymous:
                return User(role=UserRole.User, name=None)
            log.warning("session refused: anonymous or an unknown X.509 user certificate")
            return None
        if self.users.get(username) == password:
            return User(role=UserRole.User, name=username)
        log.warning("login refused for user %r", username)
        return None


def _client_trust(directory: Path) -> Callable[[x509.Certificate, Any], Awaitable[None]]:
    """A certificate validator: only client application certificates found in ``directory``
    (PEM or DER, re-read on every session) may open a secured session."""

    def trusted() -> set[str]:
        out = set()
        for path in sorted(directory.glob("*")) if directory.is_dir() else []:
            try:
                out.add(_fingerprint(_der_of(path)))
            except (OSError, ValueError) as exc:
                log.warning("trusted client %s is not a certificate: %s", path, exc)
        return out

    async def validate(cert: x509.Certificate, description: Any) -> None:
        der = cert.public_bytes(serialization.Encoding.DER)
        if _fingerprint(der) not in await asyncio.to_thread(trusted):
            uri = getattr(description, "ApplicationUri", "?")
            log.warning("refused client %s: certificate not in %s", uri, directory)
            raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)

    return validate


class _Session(InternalSession):
    async def call(self, params: list[ua.CallMethodRequest]) -> list[ua.CallMethodResult]:
        token = current_user.set(getattr(self.user, "name", None))
        try:
            return await super().call(params)
        finally:
            current_user.reset(token)


class ReferenceServer:
    name = "openscs-reference"

    def __init__(
        self,
        *,
        port: int = 0,
        db_path: Path | str,
        host: str = "127.0.0.1",
        cert_dir: Path | str | None = None,
        security: Sequence[str] = tuple(POLICIES),
        allow_none: bool = False,
        users: Mapping[str, str] | None = None,
        viewers: Sequence[str] = (),
        allow_anonymous: bool = False,
        namespace_uri: str = N.NS_URI_NODESET,
        pools: Sequence[PoolConfig] = DEFAULT_POOLS,
        limits: Limits | None = None,
        trusted_clients: Path | str | None = None,
        x509_users: Mapping[str, Path | str] | None = None,
    ) -> None:
        unknown = [s for s in security if s not in POLICIES]
        if unknown:
            raise ValueError(f"unknown security policies {unknown}; known: {list(POLICIES)}")
        if not security and not allow_none:
            raise ValueError("no security policy and allow_none is False")
        self.host = host
        self.port = port
        self.db_path = Path(db_path)
        self.cert_dir = Path(cert_dir) if cert_dir else self.db_path.parent / "pki"
        self.security = tuple(security)
        self.allow_none = allow_none
        self.users = dict(users if users is not None else {"operator": "operator"})
        self.viewers = set(viewers)
        self.allow_anonymous = allow_anonymous
        self.namespace_uri = namespace_uri
        self.pools = tuple(pools)
        self.limits = limits or Limits()
        # None: any client application certificate is accepted (asyncua's default)
        self.trusted_clients = Path(trusted_clients) if trusted_clients else None
        self.x509_users = {name: Path(p) for name, p in (x509_users or {}).items()}
        self.ready = asyncio.Event()
        self.store: Store | None = None
        self.engine: Engine | None = None
        self._server: Server | None = None
        self.ns = self.ins = 0

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}/openscs"

    @property
    def cert_path(self) -> Path:
        return self.cert_dir / "server_cert.der"

    @property
    def key_path(self) -> Path:
        return self.cert_dir / "server_key.pem"

    @classmethod
    async def start_demo(cls, port: int, db_path: Path | str) -> ReferenceServer:
        """Simple mode for ``linegate demo``: None allowed, anonymous allowed, user demo/demo."""
        server = cls(
            port=port,
            db_path=db_path,
            allow_none=True,
            allow_anonymous=True,
            users={"demo": "demo"},
        )
        await server.start()
        return server

    async def start(self) -> None:
        if self.port == 0:
            with socket.socket() as s:
                s.bind((self.host, 0))
                self.port = int(s.getsockname()[1])
        self.store = Store(self.db_path)
        self.engine = Engine(self.store, self.pools, self.limits)
        self.engine.switches.viewers = self.viewers
        x509_users = {_fingerprint(_der_of(p)): name for name, p in self.x509_users.items()}
        server = Server(user_manager=_UserManager(self.users, self.allow_anonymous, x509_users))
        await server.init()
        server.iserver.create_session = self._create_session(server)  # type: ignore[method-assign]
        server.set_endpoint(self.endpoint)
        server.set_server_name("linegate OPEN-SCS reference server")
        await server.set_application_uri(APP_URI)
        policies = [POLICIES[p] for p in self.security]
        if self.allow_none:
            policies.append(ua.SecurityPolicyType.NoSecurity)
        server.set_security_policy(policies)
        tokens: list[type] = [ua.UserNameIdentityToken]
        if self.allow_anonymous:
            tokens.append(ua.AnonymousIdentityToken)
        if x509_users:
            tokens.append(ua.X509IdentityToken)
        server.set_identity_tokens(tokens)
        if self.trusted_clients is not None:
            server.set_certificate_validator(_client_trust(self.trusted_clients))
        self.cert_dir.mkdir(parents=True, exist_ok=True)
        await setup_self_signed_certificate(
            self.key_path,
            self.cert_path,
            APP_URI,
            "localhost",
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            {"commonName": "linegate OPEN-SCS reference", "organizationName": "linegate"},
        )
        await server.load_certificate(str(self.cert_path))
        await server.load_private_key(str(self.key_path))
        self.ns = await server.register_namespace(self.namespace_uri)
        self.ins = await server.register_namespace(INSTANCE_NS)
        self._server = server
        await self._build(server)
        await server.start()
        self.ready.set()
        log.info("OPEN-SCS reference server on %s (%s)", self.endpoint, ", ".join(self.security))

    def _create_session(self, server: Server) -> Any:
        iserver = server.iserver

        def create(name: str, user: User = _ANONYMOUS, external: bool = False) -> InternalSession:
            return _Session(
                iserver,
                iserver.aspace,
                iserver.subscription_service,
                name,
                user=user,
                external=external,
            )

        return create

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None
        if self.store is not None:
            self.store.close()
            self.store = None
        self.ready.clear()

    async def serve(self) -> None:
        """Service contract: run until cancelled."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    # ------------------------------------------------------------------ records for tests
    def _records(self) -> Store:
        return Store(self.db_path)  # a second connection: readable while running or after

    def events(self) -> list[dict[str, object]]:
        st = self._records()
        try:
            return st.events()
        finally:
            st.close()

    def idempotency_keys(self) -> dict[str, str]:
        st = self._records()
        try:
            return st.idempotency_keys()
        finally:
            st.close()

    def serial_states(self, pool: str | None = None) -> dict[tuple[str, str], int]:
        st = self._records()
        try:
            return st.serial_states(pool)
        finally:
            st.close()

    def files(self) -> list[dict[str, object]]:
        st = self._records()
        try:
            return st.files()
        finally:
            st.close()

    def set_accepting(self, accepting: bool) -> None:
        """False: event methods answer UnableToAccept... (an upstream that is full)."""
        assert self.engine is not None
        self.engine.switches.accepting = accepting

    # ------------------------------------------------------------------ address space
    async def _build(self, server: Server) -> None:
        assert self.engine is not None
        b = A.Builder(server, self.ns, self.ins)
        await A.build_types(b)
        h = Handlers(self.engine, self.ns, self.ins)
        h.on_file_node = lambda handle, f: self._file_node(b, h, handle, f)
        folder = await b.add(
            b.nid("OPENSCSObjects", False),
            "OPENSCSObjects",
            ua.NodeClass.Object,
            ua.ObjectAttributes(),
            ua.NodeId(85),
            35,
            61,
        )
        lim = self.limits
        u32 = ua.VariantType.UInt32
        pool = await self._manager(
            b, h, folder, "PoolManager", N.PoolManagerObjectType, N.POOL_METHODS
        )
        criteria = [kv for p in self.pools for kv in p.criteria]
        await b.prop(
            pool,
            b.nid("PoolManager.PoolSelectionCriteria", False),
            "PoolSelectionCriteria",
            A.kv_values(list(dict.fromkeys(criteria)), self.ns),
            ua.VariantType.ExtensionObject,
            b.nid(N.KeyValueDataType),
            True,
        )
        await b.prop(
            pool,
            b.nid("PoolManager.SNFormat", False),
            "SNFormat",
            list(FORMATS),
            ua.VariantType.String,
            ua.NodeId(A.STRING),
            True,
        )
        for name in ("MaxSNRequestable", "MaxSNReturnable", "MaxSNPushable"):
            await b.prop(
                pool,
                b.nid(f"PoolManager.{name}", False),
                name,
                getattr(lim, name),
                u32,
                ua.NodeId(A.UINT32),
            )
        ev = await self._manager(
            b, h, folder, "EventManager", N.EventManagerObjectType, N.EVENT_METHODS
        )
        for name in ("MaxEvents", "MaxEPCISObjectEventSIDs", "MaxEPCISaggregationEvents"):
            await b.prop(
                ev,
                b.nid(f"EventManager.{name}", False),
                name,
                getattr(lim, name),
                u32,
                ua.NodeId(A.UINT32),
            )
        await self._stream(b, h, ev)
        agg = await self._manager(
            b,
            h,
            folder,
            "AggregationManager",
            N.AggregationManagerObjectType,
            N.AGGREGATION_METHODS,
        )
        await b.prop(
            agg,
            b.nid("AggregationManager.MaxAggregationEvents", False),
            "MaxAggregationEvents",
            lim.MaxAggregationEvents,
            u32,
            ua.NodeId(A.UINT32),
        )
        for label, values in SID_CLASSES.items():
            await self._sid_class(b, folder, label, *values)

    async def _manager(
        self,
        b: A.Builder,
        h: Handlers,
        folder: ua.NodeId,
        name: str,
        type_id: int,
        methods: Mapping[str, tuple[int, int, int]],
    ) -> ua.NodeId:
        node = await b.add(
            b.nid(name, False),
            name,
            ua.NodeClass.Object,
            ua.ObjectAttributes(),
            folder,
            35,
            b.nid(type_id),
        )
        for method, (type_method, _, _) in methods.items():
            callback = h.for_method(method)
            inputs, outputs = A.SIGNATURES[method]
            await b.method(
                node, b.nid(f"{name}.{method}", False), method, inputs, outputs, callback
            )
            b.server.link_method(b.server.get_node(b.nid(type_method)), callback)
        return node

    async def _stream(self, b: A.Builder, h: Handlers, ev: ua.NodeId) -> None:
        stream = await b.add(
            b.nid("EventManager.EPCISStream", False),
            "EPCISStream",
            ua.NodeClass.Object,
            ua.ObjectAttributes(),
            ev,
            47,
            15744,
        )
        await b.prop(
            stream,
            b.nid("EventManager.EPCISStream.ClientProcessingTimeout", False),
            "ClientProcessingTimeout",
            0.0,
            ua.VariantType.Double,
            ua.NodeId(A.DURATION),
            ns0_name=True,
        )
        callbacks = {
            "GenerateFileForWrite": h.generate_for_write,
            "GenerateFileForRead": h.generate_for_read,
            "CloseAndCommit": h.close_and_commit,
        }
        for name, (inputs, outputs) in A.STREAM_SIGNATURES.items():
            await b.method(
                stream,
                b.nid(f"EventManager.EPCISStream.{name}", False),
                name,
                inputs,
                outputs,
                callbacks[name],
                ns0_name=True,
            )
            b.server.link_method(b.server.get_node(b.nid(A.STREAM_IDS[name][0])), callbacks[name])
        # the standard TemporaryFileTransferType / FileType declarations route here as well
        for ns0_id, cb in (
            (15749, h.generate_for_write),
            (15746, h.generate_for_read),
            (15751, h.close_and_commit),
            (11588, h.write),
            (11583, h.close),
        ):
            b.server.link_method(b.server.get_node(ua.NodeId(ns0_id)), cb)

    async def _file_node(self, b: A.Builder, h: Handlers, handle: int, f: Any) -> None:
        node = ua.NodeId(f"EPCISStream.File.{handle}", self.ins)
        if f is None:
            if node in b.server.iserver.aspace:
                await b.server.delete_nodes([b.server.get_node(node)], recursive=True)
            return
        item = ua.AddNodesItem()
        item.RequestedNewNodeId = node
        item.BrowseName = ua.QualifiedName(f"EPCISFile{handle}", self.ins)
        item.NodeClass = ua.NodeClass.Object
        item.TypeDefinition = ua.NodeId(11575)  # FileType; no parent: not browsable (6.3.2.1)
        item.NodeAttributes = ua.ObjectAttributes(
            DisplayName=ua.LocalizedText(f"EPCISFile{handle}")
        )
        list(b.server.iserver.node_mgt_service.try_add_nodes([item], check=False))
        for name, (_, inputs, outputs) in A.FILE_METHODS.items():
            cb = {"Write": h.write, "Close": h.close}.get(name, h.generate_for_read)
            await b.method(
                node,
                ua.NodeId(f"EPCISStream.File.{handle}.{name}", self.ins),
                name,
                inputs,
                outputs,
                cb,
                ns0_name=True,
            )

    async def _sid_class(
        self,
        b: A.Builder,
        folder: ua.NodeId,
        label: str,
        class_id: str,
        description: str,
        syntax: str,
        use: str,
    ) -> None:
        node = await b.add(
            b.nid(label, False),
            label,
            ua.NodeClass.Object,
            ua.ObjectAttributes(),
            folder,
            35,
            b.nid(N.SIDClassObjectType),
        )
        values = {
            "SIDClassID": class_id,
            "SIDClassOwner": "GS1, www.gs1.org",
            "SIDClassDescription": description,
            "SyntaxSpecification": syntax,
            "AllowedCharacterSet": CHARSET_82 if "SGTIN" in class_id else "0123456789",
            "IntendedUse": use,
        }
        for name, value in values.items():
            await b.prop(
                node,
                b.nid(f"{label}.{name}", False),
                name,
                value,
                ua.VariantType.String,
                ua.NodeId(A.STRING),
            )
        prop = SIDClassProperty("SerialNumber", "AI 21 serial number", "", None)
        await b.prop(
            node,
            b.nid(f"{label}.SIDClassProperty", False),
            "SIDClassProperty",
            A.to_extension_objects([prop], self.ns) or [],
            ua.VariantType.ExtensionObject,
            b.nid(N.SIDClassPropertyDataType),
            True,
        )


__all__ = ["ReferenceServer"]
