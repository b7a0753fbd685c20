"""The OPC UA status server (seeds 000/001): Objects/Status/<field> and Objects/Status/restart.

Contract (gateway/STATUS.md): endpoint ``opc.tcp://HOST:PORT/``, namespace
``urn:linegate:status``, variables ``Objects/Status/<field>`` (NodeId ``s=Status/<field>``),
method ``Objects/Status/restart``; on an aggregator (station.role lente) also
``Objects/Status/upload_status`` and ``Objects/Clients/<station>/<field>``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import logging
from collections.abc import Awaitable, Callable

from asyncua import Server, ua
from asyncua.common.node import Node

from gateway.board import StatusBoard
from gateway.errors import SettingsError
from gateway.settings import Settings
from gateway.status import fields as F
from gateway.status import security as sec
from gateway.status.aggregator import ClientRegistry

log = logging.getLogger(__name__)

NAMESPACE = "urn:linegate:status"
RestartCallback = Callable[[], Awaitable[None]] | Callable[[], None]
RESTART_DELAY_S = 0.2  # lets the Good reply leave before the restart begins


def check_warnings(settings: Settings) -> list[str]:
    """Warnings `linegate check` prints and the server logs at start (empty when disabled).

    Never raises: problems that stop the server (unknown policy or field names, bad users,
    missing certificate files) are returned too, saying that the server will not start.
    """
    opc = settings.opcua_server
    if not opc.enable:
        return []
    out: list[str] = []
    for check in (F.fields_for, sec.load_users,
                  lambda s: sec.effective_policies(s.opcua_server, True)):
        try:
            check(settings)
        except SettingsError as e:
            out.extend(f"{p} (the status server will not start)" for p in e.problems)
    have_cert = opc.certificates.enable
    try:
        out.extend(sec.effective_policies(opc, have_cert)[1])
    except SettingsError:
        pass  # reported above
    if have_cert and not opc.certificates.generate_if_missing:
        out.extend(f"opcua_server.certificates: {p} does not exist (the status server will "
                   "not start)" for p in sec.cert_paths(settings) if not p.is_file())
    if (opc.users or opc.users_file is not None) and not have_cert:
        out.append("opcua_server: users are configured but certificates are disabled, so "
                   "their passwords cross the network in plain text")
    if not opc.users and opc.users_file is None and sec.restart_needs_role(opc):
        out.append("opcua_server: no users are configured, so nobody can call restart "
                   "(add users with 'linegate passwd')")
    return out


def application_uri(settings: Settings) -> str:
    return f"urn:linegate:status:{settings.station.name}"


class StatusServer:
    """Service: serves the status variables until cancelled."""

    def __init__(self, settings: Settings, board: StatusBoard, restart: RestartCallback,
                 close_order: Callable[[], Awaitable[str]] | None = None) -> None:
        self.name = "status-server"
        self.settings = settings
        self.board = board
        self.ready = asyncio.Event()
        opc = settings.opcua_server
        self.port: int = (opc.listen_port_lente if settings.station.role == "lente"
                          else opc.listen_port_prism)
        self.fields = F.fields_for(settings)  # raises SettingsError on unknown names
        self._restart_cb = restart
        self._close_order_cb = close_order
        self._restart_task: asyncio.Task[None] | None = None
        self._nodes: dict[str, Node] = {}
        self._published: dict[str, object] = {}
        self._cert: sec.ServerCertificate | None = None
        self._server: Server | None = None
        self.clients: ClientRegistry | None = None
        self.offered_policies: list[str] = []

    # ------------------------------------------------------------------ lifecycle

    async def _build(self) -> Server:
        s, opc = self.settings, self.settings.opcua_server
        uri = application_uri(s)
        if opc.certificates.enable:
            self._cert = await asyncio.to_thread(sec.load_or_generate_certificate, s, uri)
            uri = self._cert.application_uri or uri
            left = self._cert.not_after - dt.datetime.now(dt.UTC)
            if left < dt.timedelta(days=30):
                log.warning("status server: certificate %s expires %s (%d days)",
                            self._cert.cert_path, self._cert.not_after, left.days)
        for w in check_warnings(s):
            log.warning("%s", w)
        offered, warnings = sec.effective_policies(opc, self._cert is not None)
        if not offered:
            raise SettingsError(warnings[-1:])
        self.offered_policies = offered
        users = sec.load_users(s)
        trusted, rejected = sec.trust_dirs(s)
        trusted.mkdir(parents=True, exist_ok=True)
        trust = sec.TrustValidator(trusted, rejected)
        server = Server(user_manager=sec.StatusUserManager(users, opc.allow_anonymous, trust))
        await server.init()
        server.set_endpoint(f"opc.tcp://{opc.listen_address}:{self.port}/")
        server.set_server_name(f"linegate status {s.station.name}")
        await server.set_application_uri(uri)
        server.product_uri = "urn:linegate"
        server.manufacturer_name = "linegate"
        server.set_security_policy([sec.POLICY_TYPES[p] for p in offered],
                                   permission_ruleset=sec.CallerRuleset())
        tokens: list[type] = [ua.UserNameIdentityToken]
        if opc.allow_anonymous:
            tokens.insert(0, ua.AnonymousIdentityToken)
        server.set_identity_tokens(tokens)
        if self._cert is not None:
            await server.load_certificate(self._cert.cert_path)
            await server.load_private_key(self._cert.key_path)
        await self._build_address_space(server)
        log.info("status server: %s on opc.tcp://%s:%d/ policies %s, anonymous %s, %d users, "
                 "%d fields", s.station.role, opc.listen_address, self.port, ", ".join(offered),
                 "allowed" if opc.allow_anonymous else "refused", len(users), len(self.fields))
        return server

    async def _build_address_space(self, server: Server) -> None:
        idx = await server.register_namespace(NAMESPACE)
        objects = server.nodes.objects
        status = await objects.add_object(ua.NodeId("Status", idx), ua.QualifiedName("Status", idx))
        for spec in self.fields:
            node = await status.add_variable(
                ua.NodeId(f"Status/{spec.name}", idx), ua.QualifiedName(spec.name, idx),
                ua.Variant(F.DEFAULTS[spec.vtype], spec.vtype), datatype=_datatype(spec.vtype))
            await node.write_attribute(ua.AttributeIds.Description, ua.DataValue(
                ua.Variant(ua.LocalizedText(spec.doc), ua.VariantType.LocalizedText)))
            self._nodes[spec.name] = node
        await status.add_method(ua.NodeId("Status/restart", idx),
                                ua.QualifiedName("restart", idx), self._on_restart, [], [])
        if self._close_order_cb is not None:
            await status.add_method(ua.NodeId("Status/close_order", idx),
                                    ua.QualifiedName("close_order", idx), self._on_close_order,
                                    [], [ua.VariantType.String])
        if self.settings.station.role == "lente":
            clients = await objects.add_folder(ua.NodeId("Clients", idx),
                                               ua.QualifiedName("Clients", idx))
            self.clients = ClientRegistry(server, clients, idx, self.settings.opcua_server)
            await self.clients.add_method(status, self._authorized)

    async def serve(self) -> None:
        server = await self._build()
        self._server = server
        await server.start()
        try:
            await self.refresh()
            self.ready.set()
            interval = self.settings.opcua_server.update_interval_s
            while True:
                await asyncio.sleep(interval)
                await self.refresh()
        finally:
            self.ready.clear()
            await asyncio.shield(server.stop())

    # ------------------------------------------------------------------ values

    async def values(self) -> dict[str, object]:
        """Every published field's current value, coerced to its type."""
        host = await asyncio.to_thread(F.host_values, self.settings)
        not_after = self._cert.not_after if self._cert else None
        raw = {**host, **F.board_values(self.board, not_after)}
        if self.clients is not None:
            await self.clients.mark_stale()
            raw["clients"] = self.clients.listing_json()
        return {spec.name: F.coerce(spec, raw.get(spec.name)) for spec in self.fields}

    async def refresh(self) -> None:
        await self._publish(await self.values())

    async def _publish(self, values: dict[str, object]) -> None:
        for spec in self.fields:
            if spec.name not in values:
                continue
            value = values[spec.name]
            if self._published.get(spec.name, object()) == value:
                continue
            await self._nodes[spec.name].write_value(ua.DataValue(ua.Variant(value, spec.vtype)))
            self._published[spec.name] = value

    # ------------------------------------------------------------------ methods

    def _authorized(self, action: str) -> bool:
        """Is the caller of the request being served allowed to ``action``? Logs refusals."""
        caller = sec.current_caller.get()
        if not sec.restart_needs_role(self.settings.opcua_server):
            return True
        if sec.caller_role(caller) in sec.CONTROL_ROLES:
            return True
        log.warning("status server: refused %s by %s: needs an authenticated user with role "
                    "operator or admin", action, sec.describe(caller))
        return False

    async def _on_restart(self, parent: ua.NodeId) -> ua.StatusCode | list[ua.Variant]:
        if not self._authorized("restart"):
            return ua.StatusCode(ua.StatusCodes.BadUserAccessDenied)
        log.warning("status server: restart requested by %s; logging out user %r",
                    sec.describe(sec.current_caller.get()), self.board.user)
        self.board.cmd = "restart"
        self.board.user = ""
        await self._publish({"cmd": "restart", "user": ""})
        asyncio.get_running_loop().call_later(RESTART_DELAY_S, self._start_restart)
        return []

    async def _on_close_order(self, parent: ua.NodeId) -> ua.StatusCode | list[ua.Variant]:
        if not self._authorized("close_order") or self._close_order_cb is None:
            return ua.StatusCode(ua.StatusCodes.BadUserAccessDenied)
        log.warning("status server: close_order requested by %s (order %r)",
                    sec.describe(sec.current_caller.get()), self.board.script)
        closed = await self._close_order_cb()  # a failure is logged and answered by asyncua
        await self._publish({"cmd": self.board.cmd, "script": self.board.script})
        return [ua.Variant(closed, ua.VariantType.String)]

    def _start_restart(self) -> None:
        if self._restart_task is not None and not self._restart_task.done():
            return
        self._restart_task = asyncio.create_task(self._run_restart())
        self._restart_task.add_done_callback(_log_restart_failure)

    async def _run_restart(self) -> None:
        result = self._restart_cb()
        if inspect.isawaitable(result):
            await result


def _log_restart_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("status server: the restart callback failed", exc_info=task.exception())


def _datatype(vtype: ua.VariantType) -> ua.NodeId:
    return ua.NodeId({ua.VariantType.String: ua.ObjectIds.String,
                      ua.VariantType.Double: ua.ObjectIds.Double,
                      ua.VariantType.UInt32: ua.ObjectIds.UInt32,
                      ua.VariantType.Boolean: ua.ObjectIds.Boolean}[vtype])
