"""Aggregator (Lente) side and station-side uploader.

Stations push: every ``aggregator.upload_interval_s`` the ``Uploader`` calls
``Objects/Status/upload_status(station, fields_json)`` on the upstream aggregator. The
aggregator's ``ClientRegistry`` keeps one object per station (``Objects/Clients/<station>/
<field>`` plus ``stale`` and ``last_seen``), builds the ``clients`` JSON listing, and marks a
station stale after ``stale_after_s`` of silence. Handling an upload is in-memory work, so a
slow station cannot block others. Aggregators chain: a Lente with ``aggregator.url`` uploads
its own fields (including its ``clients``) further up.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from asyncua import Client, Server, ua
from asyncua.common.node import Node
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256, SecurityPolicyNone

from gateway.board import StatusBoard
from gateway.settings import OpcuaServerSettings, Settings
from gateway.status import fields as F
from gateway.status import security as sec

log = logging.getLogger(__name__)

NAMESPACE = "urn:linegate:status"
MAX_STATIONS = 256
MAX_FIELDS = 64
# What one station may cost in the ``clients`` listing as it travels further up a chain: its
# listing entry (its fields, ``stale`` and ``last_seen``; a chained aggregator's own
# ``clients`` not counted) JSON-encoded, then JSON-escaped as the string value of ``clients``.
# A station's ~22 published fields take ~600 bytes there; 8 KiB leaves room for long alarm,
# counter and reserve JSON.
MAX_STATION_BYTES = 8_192
# Per station beside its entry: its name as a key ('\"' + 64 characters + '\":'), the comma;
# for the uploader's own fields the ", " and ": " separators (2 x 64 fields). 256 covers both.
_PER_STATION_OVERHEAD = 256
# An upload is one set of fields plus a listing of up to MAX_STATIONS stations, so an
# aggregator's full listing always fits its own upload to the next aggregator (~2.1 MB;
# OPC UA messages may reach asyncua's 100 MiB).
MAX_JSON_BYTES = (MAX_STATIONS + 1) * (MAX_STATION_BYTES + _PER_STATION_OVERHEAD)
_LAST_SEEN_SHAPE = "2000-01-01T00:00:00Z"  # same length as every last_seen value
_STATION_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class UploadRejected(ValueError):
    """An upload_status call carried bad arguments (the text says which)."""


def parse_upload(station: object, fields_json: object) -> tuple[str, dict[str, object]]:
    """Validate upload_status arguments; raises UploadRejected naming what is wrong."""
    if not isinstance(station, str) or not _STATION_RE.match(station):
        raise UploadRejected(f"station {station!r}: expected 1-64 characters of A-Z a-z 0-9 _ . -")
    if not isinstance(fields_json, str) or len(fields_json.encode()) > MAX_JSON_BYTES:
        raise UploadRejected(f"station {station}: fields_json must be a string of at most "
                             f"{MAX_JSON_BYTES} bytes")
    try:
        fields = json.loads(fields_json)
    except ValueError as e:
        raise UploadRejected(f"station {station}: fields_json is not JSON: {e}") from e
    if not isinstance(fields, dict) or len(fields) > MAX_FIELDS:
        raise UploadRejected(f"station {station}: fields_json must be an object with at most "
                             f"{MAX_FIELDS} fields")
    bad = [k for k in fields if not _STATION_RE.match(k) or k in {"stale", "last_seen"}]
    if bad:
        raise UploadRejected(f"station {station}: bad field names {bad!r}")
    cost = listing_cost(fields)
    if cost > MAX_STATION_BYTES:
        raise UploadRejected(f"station {station}: its fields take {cost} bytes in the clients "
                             f"listing, above {MAX_STATION_BYTES}")
    return station, fields


def _entry(values: dict[str, object], stale: bool, last_seen: str) -> dict[str, object]:
    return {**values, "stale": stale, "last_seen": last_seen}


def _dumps(value: object) -> str:
    return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))


def listing_cost(fields: dict[str, object]) -> int:
    """Bytes a station with these fields takes in an upload's ``clients`` string (its name
    aside): its listing entry, JSON-encoded and then escaped as a JSON string. A chained
    aggregator's own ``clients`` is not counted."""
    own = {k: v for k, v in fields.items() if k != "clients"}
    return len(json.dumps(_dumps(_entry(own, False, _LAST_SEEN_SHAPE))))


@dataclass
class _Station:
    folder: Node
    nodes: dict[str, tuple[Node, ua.VariantType]] = field(default_factory=dict)
    values: dict[str, object] = field(default_factory=dict)
    last_seen: float = 0.0  # monotonic
    last_seen_utc: str = ""
    stale: bool = False


class ClientRegistry:
    """The aggregator's view of its downstream stations, mirrored into the address space."""

    def __init__(self, server: Server, folder: Node, idx: int, opc: OpcuaServerSettings) -> None:
        self._server = server
        self._folder = folder
        self._idx = idx
        self._stale_after_s = opc.stale_after_s
        self.stations: dict[str, _Station] = {}

    async def add_method(self, status: Node, authorized: Callable[[str], bool]) -> None:
        self._authorized = authorized
        args = [_argument("station", "Station name."),
                _argument("fields_json", "JSON object: field name -> value.")]
        await status.add_method(ua.NodeId("Status/upload_status", self._idx),
                                ua.QualifiedName("upload_status", self._idx), self._on_upload,
                                args, [])

    async def _on_upload(self, parent: ua.NodeId, station: ua.Variant,
                         fields_json: ua.Variant) -> ua.StatusCode | list[ua.Variant]:
        if not self._authorized("upload_status"):
            return ua.StatusCode(ua.StatusCodes.BadUserAccessDenied)
        try:
            name, values = parse_upload(station.Value, fields_json.Value)
            if name not in self.stations and len(self.stations) >= MAX_STATIONS:
                raise UploadRejected(f"station {name}: more than {MAX_STATIONS} stations")
        except UploadRejected as e:
            log.warning("aggregator: refused upload_status from %s: %s",
                        sec.describe(sec.current_caller.get()), e)
            return ua.StatusCode(ua.StatusCodes.BadInvalidArgument)
        await self.record(name, values)
        return []

    async def record(self, name: str, values: dict[str, object]) -> None:
        st = self.stations.get(name)
        if st is None:
            folder = await self._folder.add_object(ua.NodeId(f"Clients/{name}", self._idx),
                                                   ua.QualifiedName(name, self._idx))
            st = self.stations[name] = _Station(folder)
            log.info("aggregator: new station %s", name)
        elif st.stale:
            log.info("aggregator: station %s is back", name)
        st.last_seen = time.monotonic()
        st.last_seen_utc = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        st.stale = False
        st.values = dict(values)
        updates: dict[str, tuple[object, ua.VariantType]] = {
            "stale": (False, ua.VariantType.Boolean),
            "last_seen": (st.last_seen_utc, ua.VariantType.String)}
        for key, value in values.items():
            spec = F.ALL_FIELDS.get(key) or F.FieldSpec(key, ua.VariantType.String, "")
            updates[key] = (F.coerce(spec, value), spec.vtype)
        # a field the station no longer sends leaves the listing, so its node goes too
        for key in [k for k in st.nodes if k not in updates]:
            node, _ = st.nodes.pop(key)
            await node.delete()
        for key, (value, vtype) in updates.items():
            await self._write(st, key, value, vtype)

    async def _write(self, st: _Station, key: str, value: object, vtype: ua.VariantType) -> None:
        entry = st.nodes.get(key)
        if entry is None:
            station = st.folder.nodeid.Identifier.split("/", 1)[1]
            node = await st.folder.add_variable(
                ua.NodeId(f"Clients/{station}/{key}", self._idx),
                ua.QualifiedName(key, self._idx), ua.Variant(value, vtype))
            st.nodes[key] = (node, vtype)
            return
        node, vtype = entry
        await node.write_value(ua.DataValue(ua.Variant(F.coerce(F.FieldSpec(key, vtype, ""),
                                                                value), vtype)))

    async def mark_stale(self) -> None:
        now = time.monotonic()
        for name, st in self.stations.items():
            if not st.stale and now - st.last_seen > self._stale_after_s:
                st.stale = True
                log.warning("aggregator: station %s silent for more than %.1f s: stale", name,
                            self._stale_after_s)
                await self._write(st, "stale", True, ua.VariantType.Boolean)

    def listing(self) -> dict[str, dict[str, object]]:
        return {name: _entry(st.values, st.stale, st.last_seen_utc)
                for name, st in sorted(self.stations.items())}

    def listing_json(self) -> str:
        return _dumps(self.listing())


def _argument(name: str, doc: str) -> ua.Argument:
    arg = ua.Argument()
    arg.Name = name
    arg.DataType = ua.NodeId(ua.ObjectIds.String)
    arg.ValueRank = -1
    arg.Description = ua.LocalizedText(doc)
    return arg


# --------------------------------------------------------------------------- station side


class ValueSource(Protocol):
    def values(self) -> Awaitable[dict[str, object]]: ...


class Uploader:
    """Service: pushes this station's status to ``opcua_server.aggregator.url``.

    ``source`` is the local StatusServer when one runs (so a chained Lente uploads its own
    ``clients`` too); without it the values are computed here from the board.
    """

    def __init__(self, settings: Settings, board: StatusBoard,
                 source: ValueSource | None = None) -> None:
        self.name = "status-uploader"
        self.settings = settings
        self.board = board
        self.source = source
        self.uploads = 0
        self.connected = asyncio.Event()
        agg = settings.opcua_server.aggregator
        if not agg.url:
            raise ValueError("Uploader needs opcua_server.aggregator.url")
        self.url: str = agg.url

    async def values(self) -> dict[str, object]:
        if self.source is not None:
            return await self.source.values()
        specs = F.fields_for(self.settings)
        raw = {**await asyncio.to_thread(F.host_values, self.settings),
               **F.board_values(self.board, None)}
        return {s.name: F.coerce(s, raw.get(s.name)) for s in specs if s.name != "clients"}

    async def _client(self) -> Client:
        s, agg = self.settings, self.settings.opcua_server.aggregator
        timeout = max(2.0, min(10.0, agg.upload_interval_s))
        client = Client(self.url, timeout=timeout)
        if agg.username:
            client.set_user(agg.username)
            if agg.password_file is not None:
                path = sec.resolve(s, agg.password_file)
                client.set_password(path.read_text().rstrip("\r\n"))
        mode = await self._best_mode(client, s.opcua_server.certificates.enable)
        if mode != ua.MessageSecurityMode.None_:
            cert_path, key_path = sec.cert_paths(s)
            cert = await asyncio.to_thread(sec.load_or_generate_certificate, s,
                                           f"urn:linegate:status:{s.station.name}")
            client.application_uri = cert.application_uri or client.application_uri
            await client.set_security(SecurityPolicyBasic256Sha256, str(cert_path),
                                      str(key_path), mode=mode)
        return client

    async def _best_mode(self, client: Client, have_cert: bool) -> ua.MessageSecurityMode:
        """The most secure mode the aggregator offers that we can use."""
        endpoints = await client.connect_and_get_server_endpoints()
        offered = {e.SecurityMode for e in endpoints
                   if e.SecurityPolicyUri in (SecurityPolicyBasic256Sha256.URI,
                                              SecurityPolicyNone.URI)}
        order = [ua.MessageSecurityMode.SignAndEncrypt, ua.MessageSecurityMode.Sign]
        usable = [m for m in order if have_cert and m in offered]
        if usable:
            return usable[0]
        if ua.MessageSecurityMode.None_ in offered:
            return ua.MessageSecurityMode.None_
        raise ua.UaError("aggregator offers only signed endpoints but this station has no "
                         "certificate (enable opcua_server.certificates)")

    async def serve(self) -> None:
        agg = self.settings.opcua_server.aggregator
        delay = 1.0
        while True:
            try:
                client = await self._client()
                async with client:
                    idx = await client.get_namespace_index(NAMESPACE)
                    status = client.get_node(ua.NodeId("Status", idx))
                    method = ua.NodeId("Status/upload_status", idx)
                    self.connected.set()
                    log.info("uploader: connected to aggregator %s", self.url)
                    delay = 1.0
                    while True:
                        payload = json.dumps(await self.values(), sort_keys=True)
                        await status.call_method(method, self.settings.station.name, payload)
                        self.uploads += 1
                        await asyncio.sleep(agg.upload_interval_s)
            except (OSError, TimeoutError, ua.UaError) as e:
                self.connected.clear()
                log.warning("uploader: aggregator %s: %s: %s; retrying in %.1f s", self.url,
                            type(e).__name__, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max(agg.upload_interval_s, 30.0))
