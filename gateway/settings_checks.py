"""Checks that span several settings keys (each key on its own is checked by the loader).

``run_checks`` returns ``(key path, message, level, other keys involved)``; level "error" makes
the settings unusable, "warning" is reported by ``linegate check`` and logged at start. The
loader adds the file position of the key and renders them like every other problem; it drops a
result that involves a key whose own value was invalid (replaced by its default to get here).
"""

from __future__ import annotations

import base64
import ipaddress
import re
import stat
from collections.abc import Iterator
from typing import Literal

from gateway.settings import Settings

Level = Literal["error", "warning"]
KeyPath = tuple[str | int, ...]
Check = tuple[KeyPath, str, Level, tuple[KeyPath, ...]]

_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*"
                       r"[A-Za-z0-9])?)*")
_WILDCARDS = ("0.0.0.0", "::", "")


def run_checks(s: Settings) -> list[Check]:
    return [*_ordering(s), *_addresses(s), *_ports(s), *_upstream(s), *_status_server(s),
            *_store(s)]


def _store(s: Settings) -> Iterator[Check]:
    if s.store.disk_reserve_bytes == 0:
        yield (("store", "disk_reserve_bytes"),
               "0: no disk reserve; a disk filled to the last byte (by the outbox or by anything "
               "else) can stop delivery too until space is freed by hand", "warning", ())


def _ordering(s: Settings) -> Iterator[Check]:
    r = s.reserve
    if r.enable and r.low_water >= r.fill_to:
        yield (("reserve", "low_water"),
               f"expected less than reserve.fill_to ({r.fill_to}), got {r.low_water}", "error",
               (("reserve", "fill_to"),))
    pairs = [(("delivery", "retry_initial_s"), s.delivery.retry_initial_s,
              ("delivery", "retry_max_s"), s.delivery.retry_max_s),
             (("supervisor", "restart_initial_s"), s.supervisor.restart_initial_s,
              ("supervisor", "restart_max_s"), s.supervisor.restart_max_s)]
    for path, low, high_path, high in pairs:
        if low > high:
            yield (path, f"expected at most {'.'.join(map(str, high_path))} ({high:g}), "
                   f"got {low:g}", "error", (high_path,))


def _addresses(s: Settings) -> Iterator[Check]:
    listeners = [(("oip", "tcp", "listen_address"), s.oip.tcp.listen_address),
                 (("oip", "soap", "listen_address"), s.oip.soap.listen_address),
                 (("opcua_server", "listen_address"), s.opcua_server.listen_address)]
    for path, address in listeners:
        if not _is_address(address):
            yield path, f"expected an IP address or host name, got \"{address}\"", "error", ()
    for i, peer in enumerate(s.oip.tcp.allowed_peers):
        try:
            ipaddress.ip_network(peer, strict=False)
        except ValueError:
            yield (("oip", "tcp", "allowed_peers", i),
                   f"expected an IP address or CIDR network, got \"{peer}\"", "error", ())
    tcp = s.oip.tcp
    if tcp.enable and not tcp.allowed_peers and not _is_loopback(tcp.listen_address):
        yield (("oip", "tcp", "allowed_peers"),
               f"empty: any host that reaches {tcp.listen_address} may send OIP", "warning",
               (("oip", "tcp", "listen_address"),))


def _ports(s: Settings) -> Iterator[Check]:
    ua = s.opcua_server
    ua_port_key = "listen_port_lente" if s.station.role == "lente" else "listen_port_prism"
    listeners = [
        (s.oip.tcp.enable, ("oip", "tcp", "listen_port"), s.oip.tcp.listen_address,
         s.oip.tcp.listen_port),
        (s.oip.soap.enable, ("oip", "soap", "listen_port"), s.oip.soap.listen_address,
         s.oip.soap.listen_port),
        (ua.enable, ("opcua_server", ua_port_key), ua.listen_address, getattr(ua, ua_port_key)),
    ]
    active = [entry for entry in listeners if entry[0]]
    for n, (_, path, address, port) in enumerate(active):
        for _, other_path, other_address, other_port in active[:n]:
            if port == other_port and (address == other_address or address in _WILDCARDS
                                       or other_address in _WILDCARDS):
                other = ".".join(str(p) for p in other_path)
                addresses = ((*path[:-1], "listen_address"), (*other_path[:-1], "listen_address"))
                yield (path, f"port {port} is already used by {other}", "error",
                       (other_path, *addresses))


def _upstream(s: Settings) -> Iterator[Check]:
    up = s.upstream.openscs
    base = ("upstream", "openscs")
    urls = [((*base, "endpoint"), up.endpoint)]
    urls += [((*base, "endpoints", name), getattr(up.endpoints, name))
             for name in ("pool_manager", "event_manager", "aggregation_manager")]
    urls.append((("opcua_server", "aggregator", "url"), s.opcua_server.aggregator.url))
    for path, url in urls:
        if url is not None and not re.fullmatch(r"opc\.tcp://[^/\s:]+(:\d+)?(/\S*)?", url):
            yield path, f"expected an opc.tcp://HOST:PORT/ URL, got \"{url}\"", "error", ()
    if not up.enable:
        return
    policy, mode = (*base, "security_policy"), (*base, "security_mode")
    if (up.security_policy == "None") != (up.security_mode == "None"):
        yield (mode, f"expected \"None\" exactly when security_policy is \"None\", got "
               f"\"{up.security_mode}\" with \"{up.security_policy}\"", "error", (policy,))
    if up.security_policy == "None" and not up.allow_insecure:
        yield (policy, "\"None\" needs upstream.openscs.allow_insecure: true", "error",
               ((*base, "allow_insecure"),))
    elif up.security_policy == "None":
        yield policy, "no security: lab use only", "warning", ()
    if (up.user_certificate_file is None) != (up.user_private_key_file is None):
        yield ((*base, "user_certificate_file"),
               "expected user_certificate_file and user_private_key_file together", "error",
               ((*base, "user_private_key_file"),))
    if not re.fullmatch(r"[A-Za-z0-9_]+", up.sn_format):
        yield ((*base, "sn_format"), "expected a serial-number format name such as SERIALONLY "
               f"or EPCURI, got \"{up.sn_format}\"", "error", ())
    elif up.sn_format not in ("SERIALONLY", "LITERAL", "EPCURI"):
        yield ((*base, "sn_format"), f"\"{up.sn_format}\" is none of the formats the "
               "specification names (SERIALONLY, LITERAL, EPCURI): the upstream's SNFormat "
               "property must offer it, or nothing is delivered", "warning", ())
    # the session's identity (adapters/openscs/session.py refuses these at run time, where
    # they would only show as deliveries that never start)
    if up.username and up.password_file is None:
        yield ((*base, "password_file"), "expected a password file with username "
               f"\"{up.username}\" (a file of mode 0600 holding the password), got null",
               "error", ((*base, "username"),))
    elif up.password_file is not None and not up.username:
        yield ((*base, "username"), "expected the user name the password_file belongs to, "
               "got null", "error", ((*base, "password_file"),))
    elif up.password_file is not None:
        try:
            mode = stat.S_IMODE(up.password_file.stat().st_mode)
        except OSError as exc:
            yield ((*base, "password_file"), f"{up.password_file}: {exc.strerror}", "error",
                   ())
        else:
            if mode & 0o077:
                yield ((*base, "password_file"), f"{up.password_file} has mode {mode:04o}: "
                       f"expected 0600 (chmod 600 {up.password_file})", "error", ())
    elif up.user_certificate_file is None and not up.allow_insecure:
        yield ((*base, "username"), "no user identity: OPEN-SCS sessions must be "
               "authenticated (spec 7.4.1), so nothing will be delivered until username + "
               "password_file or user_certificate_file + user_private_key_file are set",
               "warning", ())


def _status_server(s: Settings) -> Iterator[Check]:
    from gateway.status.fields import ALL_FIELDS  # (imports asyncua: only when checking)

    ua = s.opcua_server
    if ua.fields is not None:
        seen: set[str] = set()
        for i, name in enumerate(ua.fields):
            if name not in ALL_FIELDS:
                yield (("opcua_server", "fields", i),
                       f"expected one of {', '.join(ALL_FIELDS)}; got \"{name}\"", "error", ())
            elif name in seen:
                yield ("opcua_server", "fields", i), f"\"{name}\" is listed twice", "error", ()
            seen.add(name)
    if not s.station.name.strip():
        yield ("station", "name"), "expected a station name, got \"\"", "error", ()
    names: set[str] = set()
    for i, user in enumerate(ua.users):
        if not user.name:
            yield (("opcua_server", "users", i, "name"), "expected a user name, got \"\"", "error",
                   ())
        elif user.name in names:
            yield (("opcua_server", "users", i, "name"),
                   f"user \"{user.name}\" is listed twice", "error", ())
        names.add(user.name)
        problem = _hash_problem(user.password_hash)
        if problem:
            yield (("opcua_server", "users", i, "password_hash"),
                   "expected a password hash made by 'linegate passwd' (scrypt$N$r$p$salt$hash)"
                   f": {problem}", "error", ())
    # which security policies can really be offered is the status server's own check
    # (gateway.status.server.check_warnings), printed by `linegate check` next to these


def _hash_problem(stored: str) -> str | None:
    """What is wrong with a password hash (None when it can be verified at all)."""
    if not stored:
        return "got \"\""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return "got something else (6 fields separated by $, the first 'scrypt')"
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except ValueError:
        return "N, r, p must be integers and salt, hash base64"
    if n < 2 or n & (n - 1) or r < 1 or p < 1:
        return f"N must be a power of 2 above 1, r and p at least 1; got {n}, {r}, {p}"
    if len(salt) < 8 or len(digest) != 32:
        return f"salt of 8+ bytes and a 32-byte hash; got {len(salt)} and {len(digest)}"
    return None


def _is_address(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        # a host name, but not a mistyped IPv4 address such as 127.0.0.300
        return bool(_HOSTNAME.fullmatch(address)) and not re.fullmatch(r"[\d.]+", address)
    return True


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False
