"""settings.json schema: frozen dataclasses, one per section, with documented defaults.

This module is the single source of truth for every key: its type, default and meaning (the
``doc`` metadata, which the README's settings reference mirrors). The loader in
``gateway.settings_loader`` walks these dataclasses generically, so adding a key here is all it
takes to accept, validate and document it. Rules the loader applies:

- unknown keys are errors; every problem is collected and reported together as
  ``settings.json:LINE:COL: path.to.key: expected ..., got ...``;
- ``Path`` fields are resolved against the directory holding settings.json (the installation
  root); ``min``/``max``/``choices`` metadata are checked;
- nothing outside the settings modules reads raw JSON or uses ``.get(key, default)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


def _f(default: object, doc: str, **meta: object):
    """A field with a default and its documentation (and optional min/max/choices)."""
    if isinstance(default, (list, dict, set)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"doc": doc, **meta})
    return field(default=default, metadata={"doc": doc, **meta})


def _sub(cls: type, doc: str):
    return field(default_factory=cls, metadata={"doc": doc})


PORT = {"min": 1, "max": 65535}

# --------------------------------------------------------------------------- station / logging


@dataclass(frozen=True)
class StationSettings:
    name: str = _f("station-1", "Station name: used in events (OPENSCSEventContext 'station'), "
                   "logs and the status server.")
    role: Literal["prism", "lente"] = _f("prism", "prism = line station; lente = aggregator "
                                         "that collects the status of downstream stations.")


@dataclass(frozen=True)
class LoggingSettings:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = _f("INFO", "Log level (stderr, "
                                                              "journald-friendly).")


# --------------------------------------------------------------------------- OIP


@dataclass(frozen=True)
class TlsSettings:
    enable: bool = _f(False, "Serve over TLS with the PEM files below.")
    path: Path = _f(Path("public"), "Directory of the PEM files, relative to the root.")
    certificate_file: str = _f("cert.pem", "Certificate (PEM) inside path.")
    private_key_file: str = _f("key.pem", "Private key (PEM) inside path.")


@dataclass(frozen=True)
class OipTcpSettings:
    enable: bool = _f(True, "Accept OIP over TCP.")
    listen_address: str = _f("127.0.0.1", "Address to listen on (0.0.0.0 = every IPv4 "
                             "interface; :: = every IPv6 interface, IPv6 only).")
    listen_port: int = _f(7701, "TCP port for OIP frames.", **PORT)
    allowed_peers: list[str] = _f([], "Addresses or networks (CIDR) allowed to connect; "
                                  "empty = any (logged as a WARNING at start).")
    idle_timeout_s: float = _f(300.0, "Close a connection silent for this long.", min=0.1)
    max_connections: int = _f(64, "Simultaneous PAC connections; more are refused.", min=1)
    tls_handshake_timeout_s: float = _f(10.0, "With TLS: a peer must complete its handshake "
                                        "within this long.", min=0.1)
    tls: TlsSettings = _sub(TlsSettings, "Optional TLS for OIP over TCP.")


@dataclass(frozen=True)
class OipSoapSettings:
    enable: bool = _f(True, "Accept OIP as SOAP/XML on POST /oip (WSDL at /oip?wsdl).")
    listen_address: str = _f("127.0.0.1", "Address to listen on.")
    listen_port: int = _f(7780, "HTTP port for OIP SOAP.", **PORT)
    max_body_bytes: int = _f(1_048_576, "Largest accepted request body.", min=1024)
    request_timeout_s: float = _f(30.0, "A request body must arrive whole within this long; "
                                  "otherwise HTTP 408 with a Fault, and the connection is "
                                  "closed.", min=0.1)
    idle_timeout_s: float = _f(75.0, "Close a keep-alive connection idle for this long.",
                               min=0.1)
    max_requests: int = _f(64, "Requests handled at once; more get HTTP 503 with a Fault "
                           "carrying NAK 12 (busy).", min=1)
    tls: TlsSettings = _sub(TlsSettings, "Optional HTTPS.")


@dataclass(frozen=True)
class OipSettings:
    tcp: OipTcpSettings = _sub(OipTcpSettings, "OIP over TCP.")
    soap: OipSoapSettings = _sub(OipSoapSettings, "OIP over SOAP/XML.")
    max_packet_bytes: int = _f(65_536, "Largest OIP packet (STX..ETX) accepted.", min=64)
    max_records: int = _f(256, "Most records (';'-separated) in one packet.", min=2)
    max_field_bytes: int = _f(256, "Longest single field.", min=8)
    require_login: bool = _f(False, "Refuse ORDER/DATA/PRINT until a LOGIN (NAK 'not "
                             "logged in').")
    dedup_window: int = _f(4096, "Transactions remembered per peer for retransmission "
                           "detection (kept in the outbox, survives restarts).", min=1)


# --------------------------------------------------------------------------- outbox


@dataclass(frozen=True)
class StoreSettings:
    path: Path = _f(Path("data/outbox.sqlite"), "The SQLite outbox file.")
    synchronous: Literal["FULL", "NORMAL"] = _f(
        "FULL", "FULL: an acknowledged message survives power loss. NORMAL: survives a process "
        "crash, may lose the last commits on power loss.")
    max_bytes: int = _f(1_073_741_824, "Outbox size at which new work is refused.", min=65536)
    min_free_disk_mb: int = _f(100, "Free disk below which new work is refused.", min=0)
    disk_reserve_bytes: int = _f(
        8_388_608, "Space kept in <store.path>.reserve and given back when the disk is full so "
        "that delivery can still commit results and free space; new work is refused until it "
        "can be made again (0 = none: a full disk may then stop delivery too).", min=0)
    high_water_percent: int = _f(80, "Warn (log + status) at this percentage of either limit "
                                 "(of the disk: of its size less min_free_disk_mb).",
                                 min=1, max=99)
    group_commit_window_ms: float = _f(2.0, "How long a commit waits for other writers to "
                                       "join it.", min=0.0, max=1000.0)
    delivered_retention_s: float = _f(0.0, "Keep delivered messages this long (audit), then "
                                      "delete them; 0 = delete at once.", min=0.0)
    dead_retention_s: float = _f(30 * 86400.0, "Keep dead letters this long.", min=0.0)


@dataclass(frozen=True)
class DeliverySettings:
    batch_max: int = _f(100, "Messages read per delivery batch.", min=1)
    retry_initial_s: float = _f(0.5, "First retry delay after a transient failure.", min=0.01)
    retry_max_s: float = _f(60.0, "Retry delay cap (exponential backoff with jitter).",
                            min=0.01)


# --------------------------------------------------------------------------- upstream


@dataclass(frozen=True)
class ManagerEndpoints:
    pool_manager: str | None = _f(None, "opc.tcp URL of the pool manager (null = endpoint).")
    event_manager: str | None = _f(None, "opc.tcp URL of the event manager (null = endpoint).")
    aggregation_manager: str | None = _f(None, "opc.tcp URL of the aggregation manager "
                                         "(null = endpoint).")


@dataclass(frozen=True)
class OpenScsSettings:
    enable: bool = _f(True, "Forward events to an OPEN-SCS server.")
    endpoint: str = _f("opc.tcp://127.0.0.1:4855/", "opc.tcp URL for all managers.")
    endpoints: ManagerEndpoints = _sub(ManagerEndpoints, "Per-manager endpoints.")
    security_policy: Literal["Basic256Sha256", "Aes128_Sha256_RsaOaep", "None"] = _f(
        "Basic256Sha256", "OPC UA security policy (None only with allow_insecure).")
    security_mode: Literal["SignAndEncrypt", "Sign", "None"] = _f("SignAndEncrypt",
                                                                "Message security mode.")
    username: str | None = _f(None, "User name for the session (OPEN-SCS requires "
                              "authenticated sessions).")
    password_file: Path | None = _f(None, "File holding the password (mode 0600).")
    user_certificate_file: Path | None = _f(None, "X.509 user identity certificate (instead "
                                            "of a user name).")
    user_private_key_file: Path | None = _f(None, "Private key of the user certificate.")
    certificate_file: Path = _f(Path("public/client_cert.pem"), "Application instance "
                                "certificate (generated on first start if absent).")
    private_key_file: Path = _f(Path("public/client_key.pem"), "Its private key.")
    application_uri: str = _f("urn:linegate:client", "ApplicationUri written into the "
                              "generated certificate.")
    trust_dir: Path = _f(Path("public/trusted_servers"), "Trusted server certificates; an "
                         "untrusted server is refused.")
    namespace_uri: str = _f("http://opcfoundation.org/UA/OPENSCS-SER/",
                            "OPEN-SCS namespace URI (the spec text's "
                            "http://opcfoundation.org/OPENSCS-SER/ is accepted too).")
    allow_insecure: bool = _f(False, "Permit SecurityPolicy None (lab use only, logged "
                              "loudly).")
    timeout_s: float = _f(10.0, "Request timeout.", min=0.1)
    reconnect_max_s: float = _f(30.0, "Reconnect backoff cap.", min=0.1)
    sn_format: str = _f("SERIALONLY", "SNFormat sent with events.")


@dataclass(frozen=True)
class ReserveSettings:
    enable: bool = _f(True, "Keep a local reserve of Allocated serial numbers for printing "
                      "through outages.")
    selections: list[str] = _f([], "Pool selections (e.g. GTINs) to keep filled before any "
                               "PRINT asks for them.")
    low_water: int = _f(100, "Refill a selection's reserve below this many.", min=0)
    fill_to: int = _f(500, "Refill up to this many.", min=1)
    check_interval_s: float = _f(5.0, "How often the reserve checks its levels and queues "
                                 "returns (it also wakes when a PRINT takes or an order "
                                 "closes).", min=0.01)


@dataclass(frozen=True)
class UpstreamSettings:
    openscs: OpenScsSettings = _sub(OpenScsSettings, "OPEN-SCS OPC UA upstream.")


# --------------------------------------------------------------------------- status server


@dataclass(frozen=True)
class CertificateSettings:
    enable: bool = _f(False, "If true, use certificates.")
    path: Path = _f(Path("public"), "Directory of the certificate and key, relative to the "
                    "root.")
    certificate_file: str = _f("cert.pem", "File containing the certificate.")
    private_key_file: str = _f("key.pem", "File containing the private key.")
    generate_if_missing: bool = _f(False, "Generate a self-signed pair when the files are "
                                   "missing (else a missing file is an error).")


@dataclass(frozen=True)
class StatusUser:
    name: str = _f("", "User name.")
    password_hash: str = _f("", "Password hash (scrypt$..., made by 'linegate passwd').")
    role: Literal["viewer", "operator", "admin"] = _f("viewer", "viewer, operator or admin.")


@dataclass(frozen=True)
class AggregatorSettings:
    url: str | None = _f(None, "opc.tcp URL of the upstream Lente aggregator (null = none).")
    upload_interval_s: float = _f(10.0, "How often this station uploads its status.", min=0.1)
    username: str | None = _f(None, "User for the aggregator session.")
    password_file: Path | None = _f(None, "File holding that password.")


SEED_POLICIES = ["NoSecurity", "Basic256Sha256_Sign", "Basic256Sha256_SignAndEncrypt"]


@dataclass(frozen=True)
class OpcuaServerSettings:
    enable: bool = _f(False, "If true, start the OPC UA status server.")
    listen_address: str = _f("0.0.0.0", "IP address to listen on.")
    listen_port_prism: int = _f(4840, "Port when station.role is prism.", **PORT)
    listen_port_lente: int = _f(4841, "Port when station.role is lente.", **PORT)
    security_policies: list[str] = _f(list(SEED_POLICIES), "Policies clients may use.",
                                      choices=SEED_POLICIES)
    fields: list[str] | None = _f(None, "Fields to publish (null: publish all).")
    certificates: CertificateSettings = _sub(CertificateSettings, "Server certificate.")
    update_interval_s: float = _f(10.0, "How often the published values are refreshed.",
                                  min=0.1)
    allow_anonymous: bool = _f(True, "Allow anonymous sessions (read only).")
    users: list[StatusUser] = _f([], "Users with a role each (restart and close_order need "
                                 "an operator or admin; hash passwords with 'linegate "
                                 "passwd').")
    users_file: Path | None = _f(None, "JSON file with more users (same shape as users).")
    trust_dir: Path = _f(Path("public/trusted"), "Trusted client certificates; untrusted ones "
                         "are refused and kept in public/rejected for 'linegate trust'.")
    aggregator: AggregatorSettings = _sub(AggregatorSettings, "Upload status to a Lente.")
    stale_after_s: float = _f(60.0, "An aggregator marks a silent station stale after this.",
                              min=0.1)


# --------------------------------------------------------------------------- supervisor


@dataclass(frozen=True)
class SupervisorSettings:
    restart_initial_s: float = _f(1.0, "First restart delay of a failed adapter.", min=0.01)
    restart_max_s: float = _f(60.0, "Restart delay cap (exponential backoff with jitter).",
                              min=0.01)
    shutdown_grace_s: float = _f(5.0, "Time in-flight work gets on SIGTERM.", min=0.0)


# --------------------------------------------------------------------------- root


@dataclass(frozen=True)
class Settings:
    station: StationSettings = _sub(StationSettings, "This station.")
    logging: LoggingSettings = _sub(LoggingSettings, "Logging.")
    oip: OipSettings = _sub(OipSettings, "OIP ingress from PACs/PLCs.")
    store: StoreSettings = _sub(StoreSettings, "The durable SQLite outbox.")
    delivery: DeliverySettings = _sub(DeliverySettings, "Forwarding from the outbox.")
    upstream: UpstreamSettings = _sub(UpstreamSettings, "Upstream servers.")
    reserve: ReserveSettings = _sub(ReserveSettings, "Local serial-number reserve.")
    opcua_server: OpcuaServerSettings = _sub(OpcuaServerSettings, "OPC UA status server "
                                             "(seed 000/001).")
    supervisor: SupervisorSettings = _sub(SupervisorSettings, "Task supervision.")
    result_bkup_dir: Path = _f(Path("public/result/bkup"), "Result backup files (counted in "
                               "status num_files).")
    root: Path = field(default=Path("."), metadata={"doc": "", "internal": True})
    source: str = field(default="<defaults>", metadata={"doc": "", "internal": True})
    warnings: tuple[str, ...] = field(default=(), metadata={"doc": "", "internal": True})
