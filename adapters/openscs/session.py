"""One secured, authenticated OPC UA session to an OPEN-SCS server, and its discovery.

Used by ``adapters.openscs.client`` (see its module doc for the connect sequence).
"""

from __future__ import annotations

import asyncio
import logging
import stat
from dataclasses import dataclass, field
from pathlib import Path

from asyncua import Client, ua
from asyncua.crypto import security_policies

from adapters.openscs import certs, nodeids, types
from gateway.errors import TransportError, UpstreamError
from gateway.model import KeyValue
from gateway.settings import OpenScsSettings

log = logging.getLogger(__name__)

POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
}
ROLE_TYPES = {
    nodeids.PoolManagerObjectType: "pool",
    nodeids.EventManagerObjectType: "event",
    nodeids.AggregationManagerObjectType: "aggregation",
}
REFUSALS = {
    ua.StatusCodes.BadUserAccessDenied: "wrong user name or password",
    ua.StatusCodes.BadIdentityTokenInvalid: "identity token not accepted",
    ua.StatusCodes.BadIdentityTokenRejected: "identity token rejected",
    ua.StatusCodes.BadCertificateUntrusted: "the server does not trust our certificate",
    ua.StatusCodes.BadSecurityChecksFailed: "security checks failed (is our application "
                                            "certificate trusted by the server?)",
    ua.StatusCodes.BadCertificateUriInvalid: "certificate ApplicationUri mismatch",
}
EPCIS_METHODS = ("GenerateFileForWrite", "CloseAndCommit", "GenerateFileForRead")


@dataclass
class ManagerInfo:
    role: str
    name: str
    node: ua.NodeId
    methods: dict[str, ua.NodeId] = field(default_factory=dict)
    properties: dict[str, object] = field(default_factory=dict)
    epcis_stream: ua.NodeId | None = None
    epcis_methods: dict[str, ua.NodeId] = field(default_factory=dict)


def read_password(path: Path) -> str:
    """The password in ``path``; the file must not be readable by group or others."""
    try:
        st = path.stat()
    except OSError as exc:
        raise UpstreamError(f"upstream.openscs.password_file {path}: {exc.strerror}",
                            permanent=True) from exc
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise UpstreamError(f"upstream.openscs.password_file {path} has mode {mode:04o}: it "
                            f"must be 0600 (chmod 600 {path})", permanent=True)
    return path.read_text(encoding="utf-8").rstrip("\r\n")


def first_certificate(der: bytes) -> bytes:
    """The leading certificate of a DER chain (outer SEQUENCE with a long-form length)."""
    if len(der) < 4 or der[0] != 0x30:
        return der
    if der[1] < 0x80:
        return der[:2 + der[1]]
    n = der[1] & 0x7F
    return der[:2 + n + int.from_bytes(der[2:2 + n], "big")]


class Session:
    """Connect (security, identity), find the namespace and the manager objects."""

    def __init__(self, url: str, settings: OpenScsSettings) -> None:
        self.url = url
        self.settings = settings
        self.client = Client(url, timeout=settings.timeout_s)
        self.client.application_uri = settings.application_uri
        self.client.name = self.client.description = "linegate"
        self.client.product_uri = "urn:linegate"
        self.client.session_timeout = 600_000  # ms; what servers commonly grant anyway
        self.ns = 0
        self.managers: dict[str, ManagerInfo] = {}
        self._connected = False

    async def connect(self) -> None:
        await self._secure()
        self._identity()
        await self._load_user_cert()
        try:
            await self.client.connect()
        except ua.UaStatusCodeError as exc:
            if exc.code in REFUSALS:
                who = self.settings.username or self.settings.user_certificate_file
                raise UpstreamError(
                    f"OPEN-SCS {self.url} refused the session for {who}: "
                    f"{ua.StatusCode(exc.code).name} ({REFUSALS[exc.code]})",
                    permanent=True) from exc
            raise
        self._connected = True
        await self._namespace()
        await self._discover()

    async def close(self) -> None:
        if self._connected:
            self._connected = False
            try:
                async with asyncio.timeout(self.settings.timeout_s):
                    await self.client.disconnect()
            except (ua.UaError, OSError, TimeoutError, ConnectionError) as exc:
                log.debug("OPEN-SCS %s: disconnect: %r", self.url, exc)
                self.client.disconnect_socket()
        else:
            self.client.disconnect_socket()

    # ------------------------------------------------------------------ security

    async def _secure(self) -> None:
        s = self.settings
        if s.security_policy == "None" or s.security_mode == "None":
            if not s.allow_insecure:
                raise UpstreamError(
                    f"OPEN-SCS {self.url}: SecurityPolicy/Mode None is not allowed (OPEN-SCS "
                    "7.4.1.2); set upstream.openscs.security_policy to Basic256Sha256 or "
                    "Aes128_Sha256_RsaOaep (allow_insecure permits None for lab use only)",
                    permanent=True)
            log.warning("OPEN-SCS %s: connecting WITHOUT SECURITY (allow_insecure is true): "
                        "messages and passwords travel in clear; lab use only", self.url)
            return
        policy = POLICIES[s.security_policy]
        mode = getattr(ua.MessageSecurityMode, s.security_mode)
        await asyncio.to_thread(certs.ensure_application_certificate, s.certificate_file,
                                s.private_key_file, s.application_uri)
        probe = Client(self.url, timeout=s.timeout_s)
        try:
            endpoints = await probe.connect_and_get_server_endpoints()
        except (ua.UaError, OSError, TimeoutError, ConnectionError) as exc:
            raise TransportError(f"OPEN-SCS {self.url}: GetEndpoints failed: {exc!r}") from exc
        chosen = [e for e in endpoints
                  if e.SecurityPolicyUri == policy.URI and e.SecurityMode == mode]
        if not chosen:
            offered = sorted({f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name}"
                              for e in endpoints})
            raise UpstreamError(f"OPEN-SCS {self.url} offers no {s.security_policy}/"
                                f"{s.security_mode} endpoint (offered: {', '.join(offered)})",
                                permanent=True)
        server_der = first_certificate(chosen[0].ServerCertificate or b"")
        await asyncio.to_thread(certs.check_trusted, server_der, s.trust_dir, self.url)
        await self.client.set_security(policy, str(s.certificate_file), str(s.private_key_file),
                                       server_certificate=server_der, mode=mode)

    def _identity(self) -> None:
        s = self.settings
        if s.username and s.password_file:
            self.client.set_user(s.username)
            self.client.set_password(read_password(s.password_file))
        elif s.user_certificate_file and s.user_private_key_file:
            self._user_cert = (s.user_certificate_file, s.user_private_key_file)
        elif s.username:
            raise UpstreamError("upstream.openscs.username is set but password_file is not",
                                permanent=True)
        elif not s.allow_insecure:
            raise UpstreamError("OPEN-SCS sessions must be authenticated (spec 7.4.1): set "
                                "upstream.openscs.username + password_file or "
                                "user_certificate_file + user_private_key_file", permanent=True)

    async def _load_user_cert(self) -> None:
        pair = getattr(self, "_user_cert", None)
        if pair:
            await self.client.load_client_certificate(str(pair[0]))
            await self.client.load_private_key(Path(pair[1]))

    # ------------------------------------------------------------------ discovery

    async def _namespace(self) -> None:
        array = await self.client.get_namespace_array()
        for uri in (self.settings.namespace_uri, *nodeids.NAMESPACE_URIS):
            if uri in array:
                self.ns = array.index(uri)
                return
        raise UpstreamError(f"OPEN-SCS {self.url}: namespace {self.settings.namespace_uri} "
                            f"not in the server's NamespaceArray {array}", permanent=True)

    async def _discover(self) -> None:
        objects = self.client.nodes.objects
        folder = None
        for ref in await objects.get_children_descriptions():
            if ref.BrowseName.Name == "OPENSCSObjects":
                folder = self.client.get_node(ref.NodeId)
                break
        if folder is None:
            raise UpstreamError(f"OPEN-SCS {self.url}: no Objects/OPENSCSObjects folder",
                                permanent=True)
        for ref in await folder.get_children_descriptions():
            td = ref.TypeDefinition
            role = ROLE_TYPES.get(td.Identifier) if td.NamespaceIndex == self.ns else None
            if role is None or role in self.managers:
                continue
            info = ManagerInfo(role, ref.BrowseName.Name, ref.NodeId)
            await self._read_manager(info)
            self.managers[role] = info
        log.info("OPEN-SCS %s: namespace %d, managers %s", self.url, self.ns,
                 {r: (m.name, {k: v for k, v in m.properties.items() if k.startswith("Max")})
                  for r, m in self.managers.items()})

    async def _read_manager(self, info: ManagerInfo) -> None:
        node = self.client.get_node(info.node)
        props: list[tuple[str, ua.NodeId]] = []
        for ref in await node.get_children_descriptions():
            name = ref.BrowseName.Name
            if ref.NodeClass == ua.NodeClass.Method:
                info.methods[name] = ref.NodeId
            elif ref.NodeClass == ua.NodeClass.Variable:
                props.append((name, ref.NodeId))
            elif ref.NodeClass == ua.NodeClass.Object and name == "EPCISStream":
                info.epcis_stream = ref.NodeId
                stream = self.client.get_node(ref.NodeId)
                for sub in await stream.get_children_descriptions():
                    if sub.NodeClass == ua.NodeClass.Method:
                        info.epcis_methods[sub.BrowseName.Name] = sub.NodeId
        if props:
            values = await self.client.read_values([self.client.get_node(n) for _, n in props])
            for (name, _), value in zip(props, values, strict=True):
                info.properties[name] = self._property(name, value)

    def _property(self, name: str, value: object) -> object:
        if name == "PoolSelectionCriteria" and isinstance(value, list):
            out: list[KeyValue] = []
            for item in value:
                if isinstance(item, ua.ExtensionObject) and item.Body is not None:
                    out.append(types.decode(KeyValue, item.Body))
                elif isinstance(item, KeyValue):
                    out.append(item)
            return out
        return value
