"""The published status fields: names, OPC UA types and how each value is computed.

Seed fields (seeds 000/001) keep their names and meaning; the gateway-health fields sit next
to them. ``fields_for(settings)`` applies the role (script: prism only, clients: lente only)
and the ``opcua_server.fields`` filter. Values that touch the file system are computed in a
worker thread (``host_values``); the board is read on the event loop (``board_values``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from asyncua import ua

import gateway
from gateway import board as K
from gateway.board import StatusBoard
from gateway.errors import SettingsError
from gateway.settings import Settings

log = logging.getLogger(__name__)

S, D, U32, B = (ua.VariantType.String, ua.VariantType.Double, ua.VariantType.UInt32,
                ua.VariantType.Boolean)


@dataclass(frozen=True)
class FieldSpec:
    name: str
    vtype: ua.VariantType
    doc: str
    roles: tuple[str, ...] = ("prism", "lente")


SEED_FIELDS = (
    FieldSpec("cmd", S, "Last command remotely executed (OIP command or OPC UA method)."),
    FieldSpec("computer", S, "Host name."),
    FieldSpec("disk_usage", D, "Percent used of the file system holding result_bkup_dir."),
    FieldSpec("ip", S, "IPv4 address of the host (first non-loopback interface)."),
    FieldSpec("num_files", U32, "Files in result_bkup_dir."),
    FieldSpec("result_class", S, "Not used (always empty)."),
    FieldSpec("script", S, "Currently loaded order (Ordnr).", ("prism",)),
    FieldSpec("scripts_version", S, "Fingerprint of settings.json (sha256, 12 hex digits)."),
    FieldSpec("user", S, "Currently logged-in user (OIP LOGIN); empty after restart."),
    FieldSpec("version", S, "linegate version."),
    FieldSpec("clients", S, "JSON: downstream stations and their attributes.", ("lente",)),
)
HEALTH_FIELDS = (
    FieldSpec("outbox_backlog", U32, "Messages waiting in the outbox (board health "
              "'outbox_backlog')."),
    FieldSpec("outbox_oldest_age_s", D, "Age in seconds of the oldest pending message."),
    FieldSpec("dead_letters", U32, "Messages in the dead-letter state."),
    FieldSpec("store_high_water", B, "True when the outbox passed store.high_water_percent."),
    FieldSpec("upstream_state", S, "'connected', or per OPEN-SCS endpoint not connected: "
              "'<url>: <last error>' (joined by '; ')."),
    FieldSpec("alarms", S, "JSON: active alarms by name with their reason (store_full, "
              "outbox_dead_alarm, upstream_error, reserve_error); {} when none."),
    FieldSpec("reserve_level", S, "JSON: serial-number reserve per selection."),
    FieldSpec("adapters", S, "JSON: adapter name -> state."),
    FieldSpec("counters", S, "JSON: frame/event counters by name."),
    FieldSpec("cert_expiry", S, "UTC ISO-8601 expiry of the earliest certificate in use "
              "(server certificate, or board health 'cert_expiry'); empty = none."),
    FieldSpec("clock_synced", B, "True when the kernel reports the clock NTP-synchronised."),
    FieldSpec("uptime_s", D, "Seconds since the runtime started."),
)
ALL_FIELDS = {f.name: f for f in SEED_FIELDS + HEALTH_FIELDS}
DEFAULTS = {S: "", D: 0.0, U32: 0, B: False}


def fields_for(settings: Settings) -> list[FieldSpec]:
    """The fields this server publishes, in documented order."""
    role = settings.station.role
    wanted = settings.opcua_server.fields
    if wanted is not None:
        unknown = [n for n in wanted if n not in ALL_FIELDS]
        if unknown:
            raise SettingsError([f"opcua_server.fields: unknown field {n!r} (known: "
                                 f"{', '.join(ALL_FIELDS)})" for n in unknown])
    return [f for f in ALL_FIELDS.values()
            if role in f.roles and (wanted is None or f.name in wanted)]


# --------------------------------------------------------------------------- host values


def _existing_ancestor(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path("/")


def disk_usage_percent(path: Path) -> float:
    usage = shutil.disk_usage(_existing_ancestor(path))
    return round(100.0 * usage.used / usage.total, 2) if usage.total else 0.0


def count_files(path: Path) -> int:
    try:
        with os.scandir(path) as it:
            return sum(1 for e in it if e.is_file())
    except FileNotFoundError:
        return 0


_SIOCGIFADDR = 0x8915


def host_ip() -> str:
    """First IPv4 address of a non-loopback interface (local ioctl, no traffic)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            if name == "lo":
                continue
            try:
                packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR,
                                     struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # interface without IPv4 address
            return socket.inet_ntoa(packed[20:24])
    return "127.0.0.1"


class _Timex(ctypes.Structure):
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long),
                ("status", ctypes.c_int), ("rest", ctypes.c_long * 32)]


_STA_UNSYNC, _TIME_ERROR = 0x0040, 5


def clock_synced() -> bool:
    """What timedatectl calls 'System clock synchronized' (adjtimex, read-only)."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    tx = _Timex()
    state = ctypes.CDLL(name, use_errno=True).adjtimex(ctypes.byref(tx))
    return state not in (-1, _TIME_ERROR) and not tx.status & _STA_UNSYNC


def settings_fingerprint(source: str) -> str:
    p = Path(source)
    if not p.is_file():
        return ""
    return hashlib.sha256(p.read_bytes()).hexdigest()[:12]


def result_dir(settings: Settings) -> Path:
    p = settings.result_bkup_dir
    return p if p.is_absolute() else settings.root / p


def host_values(settings: Settings) -> dict[str, object]:
    """Blocking values (file system, kernel): run in a worker thread."""
    bkup = result_dir(settings)
    return {
        "computer": socket.gethostname(),
        "ip": host_ip(),
        "disk_usage": disk_usage_percent(bkup),
        "num_files": count_files(bkup),
        "scripts_version": settings_fingerprint(settings.source),
        "clock_synced": clock_synced(),
    }


# --------------------------------------------------------------------------- board values


def _json(value: object) -> str:
    return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))


def _earliest_expiry(server_not_after: dt.datetime | None, board_value: object) -> str:
    candidates = [server_not_after] if server_not_after else []
    if isinstance(board_value, str) and board_value:
        try:
            candidates.append(dt.datetime.fromisoformat(board_value.replace("Z", "+00:00")))
        except ValueError:
            log.debug("board health cert_expiry %r is not ISO-8601", board_value)
    if not candidates:
        return ""
    earliest = min(c if c.tzinfo else c.replace(tzinfo=dt.UTC) for c in candidates)
    return earliest.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def board_values(board: StatusBoard, server_not_after: dt.datetime | None) -> dict[str, object]:
    h: Mapping[str, object] = dict(board.health)
    return {
        "cmd": board.cmd,
        "user": board.user,
        "script": board.script,
        "result_class": "",
        "version": gateway.__version__,
        "outbox_backlog": h.get(K.OUTBOX_BACKLOG, 0),
        "outbox_oldest_age_s": h.get(K.OUTBOX_OLDEST_AGE_S, 0.0),
        "dead_letters": h.get(K.DEAD_LETTERS, 0),
        "store_high_water": h.get(K.STORE_HIGH_WATER, False),
        "upstream_state": h.get(K.UPSTREAM_STATE, ""),
        "alarms": _json({k: h[k] for k in K.ALARM_KEYS if h.get(k)}),
        "reserve_level": _json(h.get(K.RESERVE_LEVEL, {})),
        "adapters": _json(dict(board.adapters)),
        "counters": _json(dict(board.counters)),
        "cert_expiry": _earliest_expiry(server_not_after, h.get(K.CERT_EXPIRY)),
        "uptime_s": round(max(0.0, time.time() - board.started_at), 1),
    }


def coerce(spec: FieldSpec, value: object) -> object:
    """The value in the field's type (a wrong type from a board writer becomes the default,
    logged once per refresh at DEBUG)."""
    try:
        if spec.vtype is S:
            return value if isinstance(value, str) else _json(value)
        if spec.vtype is D:
            return float(value)  # type: ignore[arg-type]
        if spec.vtype is U32:
            return min(max(int(value), 0), 2**32 - 1)  # type: ignore[call-overload]
        if spec.vtype is B:
            return bool(value)
    except (TypeError, ValueError):
        log.debug("status field %s: value %r is not %s", spec.name, value, spec.vtype.name)
    return DEFAULTS[spec.vtype]
