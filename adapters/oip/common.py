"""What both OIP transports share: the station interface, peer filter, TLS context, limits."""

from __future__ import annotations

import ipaddress
import logging
import ssl
from collections.abc import Sequence
from typing import Protocol

from adapters.oip.codec import Limits
from gateway.errors import LinegateError, SettingsError, StoreFull
from gateway.model import Command, Nak, Origin, Refusal, Reply
from gateway.settings import OipSettings, TlsSettings

log = logging.getLogger(__name__)


class StationLike(Protocol):
    """The station as the transports see it: returns only after the outbox commit."""

    async def handle(self, command: Command, origin: Origin) -> Reply: ...


def limits_of(settings: OipSettings) -> Limits:
    return Limits(settings.max_packet_bytes, settings.max_records, settings.max_field_bytes)


async def call_station(station: StationLike, command: Command, origin: Origin) -> Reply:
    """station.handle, with the errors the core may raise on purpose turned into a NAK, and any
    other exception into NAK 99 (logged with its traceback)."""
    try:
        return await station.handle(command, origin)
    except StoreFull as exc:
        return Nak(Refusal.STORE_FULL, f"store full: {exc.reason}")
    except LinegateError as exc:
        log.error("station failed on %s from %s tsn %s: %s", type(command).__name__,
                  origin.peer, origin.tsn, exc)
        return Nak(Refusal.INTERNAL, f"internal error: {exc}")
    except Exception as exc:  # a bug: this packet is refused, the transport goes on
        log.exception("station failed on %s from %s tsn %s", type(command).__name__,
                      origin.peer, origin.tsn)
        return Nak(Refusal.INTERNAL, internal_text(exc))


def internal_text(exc: BaseException) -> str:
    """The NAK 99 text for an unexpected failure (the traceback goes to the log)."""
    return f"internal error: {type(exc).__name__}: {exc}; see the gateway log"


def peer_host(address: str) -> str:
    """The peer's address as the gateway names it: an IPv4 client on a dual-stack socket
    (``::ffff:10.0.0.7``) is ``10.0.0.7``, the same identity as over IPv4."""
    try:
        addr = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return address


class PeerFilter:
    """``allowed_peers``: addresses or CIDR networks; empty = everyone."""

    def __init__(self, allowed: Sequence[str], where: str) -> None:
        problems, nets = [], []
        mapped = ipaddress.ip_network("::ffff:0:0/96")
        for entry in allowed:
            try:
                net = ipaddress.ip_network(entry, strict=False)
            except ValueError as exc:
                problems.append(f"{where}.allowed_peers: {entry!r}: {exc}")
                continue
            if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(mapped):
                # ::ffff:a.b.c.d[/n]: the IPv4 peers it names (peers are compared as IPv4)
                net = ipaddress.ip_network((int(net.network_address) & 0xFFFF_FFFF,
                                            net.prefixlen - 96))
            nets.append(net)
        if problems:
            raise SettingsError(problems)
        self.networks = nets
        if not nets:
            log.warning("%s.allowed_peers is empty: any peer may connect", where)

    def allows(self, host: str) -> bool:
        if not self.networks:
            return True
        try:
            addr = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.networks)


def server_ssl_context(tls: TlsSettings) -> ssl.SSLContext | None:
    if not tls.enable:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    cert, key = tls.path / tls.certificate_file, tls.path / tls.private_key_file
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError([f"tls: cannot load {cert} / {key}: {exc}"]) from exc
    return ctx
