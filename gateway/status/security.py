"""Security of the status server: policies, certificates, client trust, users and roles.

- ``effective_policies`` turns the settings' policy names into what can really be offered
  (signing policies need a certificate) plus the warnings to print — never silently.
- ``load_or_generate_certificate`` loads the server PEM pair, or generates a self-signed one
  when ``certificates.generate_if_missing`` asks for it; a missing file is a clear error.
- ``TrustValidator`` replaces asyncua's accept-everything default: a client certificate proved
  on a signed channel must be in ``trust_dir`` (exact certificate match); an untrusted one is
  refused and saved into the ``rejected`` folder beside it, where ``linegate trust`` finds it.
- Users: scrypt password hashes (``hash_password``/``verify_password``), ``StatusUserManager``
  for asyncua sessions, and ``CallerRuleset`` which records who sent the request being served
  (a context variable read by the method handlers, which decide and log refusals).
"""

from __future__ import annotations

import base64
import contextvars
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import ADMIN_TYPES, PermissionRuleset, User, UserRole
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from adapters.openscs import certs as openscs_certs
from gateway.errors import SettingsError
from gateway.settings import OpcuaServerSettings, Settings, StatusUser

log = logging.getLogger(__name__)

NO_SECURITY = "NoSecurity"
POLICY_TYPES: dict[str, ua.SecurityPolicyType] = {
    "NoSecurity": ua.SecurityPolicyType.NoSecurity,
    "Basic256Sha256_Sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
    "Basic256Sha256_SignAndEncrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
}
CONTROL_ROLES = frozenset({"operator", "admin"})


def resolve(settings: Settings, path: Path) -> Path:
    """A settings path, relative ones resolved against the installation root."""
    return path if path.is_absolute() else settings.root / path


def cert_paths(settings: Settings) -> tuple[Path, Path]:
    c = settings.opcua_server.certificates
    base = resolve(settings, c.path)
    return base / c.certificate_file, base / c.private_key_file


def trust_dirs(settings: Settings) -> tuple[Path, Path]:
    """(trust_dir, rejected_dir) of the status server's CLIENT certificates: rejected sits
    next to trust_dir (public/rejected)."""
    trusted = resolve(settings, settings.opcua_server.trust_dir)
    return trusted, trusted.parent / "rejected"


def upstream_trust_dirs(settings: Settings) -> tuple[Path, Path]:
    """(trust_dir, rejected_dir) of the OPEN-SCS upstream's SERVER certificates
    (upstream.openscs.trust_dir and public/rejected-upstream beside it, where the OPEN-SCS
    client saves a server certificate it refused): never the same folder as trust_dirs'."""
    trusted = resolve(settings, settings.upstream.openscs.trust_dir)
    return trusted, openscs_certs.rejected_dir(trusted)


# --------------------------------------------------------------------------- policies


def effective_policies(opc: OpcuaServerSettings,
                       have_certificate: bool) -> tuple[list[str], list[str]]:
    """(policy names that will be offered, warnings). Unknown names are settings errors."""
    unknown = [p for p in opc.security_policies if p not in POLICY_TYPES]
    if unknown:
        raise SettingsError([f"opcua_server.security_policies: unknown policy {p!r} (expected "
                             f"one of {', '.join(POLICY_TYPES)})" for p in unknown])
    offered: list[str] = []
    warnings: list[str] = []
    dropped = []
    for name in dict.fromkeys(opc.security_policies):
        if name != NO_SECURITY and not have_certificate:
            dropped.append(name)
        else:
            offered.append(name)
    if dropped:
        warnings.append(
            f"opcua_server: security policies {', '.join(dropped)} are listed but "
            "opcua_server.certificates.enable is false, so they cannot be offered; the status "
            f"server offers only {', '.join(offered) or 'nothing'}")
    if not offered:
        warnings.append("opcua_server: no security policy can be offered; the status server "
                        "cannot start (enable certificates or list NoSecurity)")
    if not restart_needs_role(opc):
        warnings.append("opcua_server: only NoSecurity is configured and no users exist: any "
                        "client may call restart")
    return offered, warnings


def restart_needs_role(opc: OpcuaServerSettings) -> bool:
    """restart/upload_status need an operator/admin user when anything besides NoSecurity is
    configured, or when users are configured at all."""
    return (any(p != NO_SECURITY for p in opc.security_policies) or bool(opc.users)
            or opc.users_file is not None)


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class ServerCertificate:
    certificate: x509.Certificate
    private_key: rsa.RSAPrivateKey
    cert_path: Path
    key_path: Path
    application_uri: str | None  # the URI SAN, if the certificate carries one

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc


def uri_of(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def generate_pair(cert_path: Path, key_path: Path, application_uri: str, common_name: str,
                  *, client: bool = False, days: int = 3650) -> None:
    """Write a self-signed OPC UA application certificate and its key (key mode 0600)."""
    key = cert_gen.generate_private_key()
    host = socket.gethostname()
    cert = cert_gen.generate_self_signed_app_certificate(
        key, common_name, {"organizationName": "linegate"},
        [x509.UniformResourceIdentifier(application_uri), x509.DNSName(host)],
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client
        else [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], days=days)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(cert_gen.dump_private_key_as_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def load_or_generate_certificate(settings: Settings, application_uri: str) -> ServerCertificate:
    """Load the server certificate and key; raise SettingsError naming the missing path."""
    certs = settings.opcua_server.certificates
    cert_path, key_path = cert_paths(settings)
    missing = [p for p in (cert_path, key_path) if not p.is_file()]
    if missing and certs.generate_if_missing:
        log.warning("status server: generating a self-signed certificate %s and key %s "
                    "(opcua_server.certificates.generate_if_missing)", cert_path, key_path)
        generate_pair(cert_path, key_path, application_uri, f"linegate {settings.station.name}")
    elif missing:
        raise SettingsError([
            f"opcua_server.certificates: {p} does not exist (certificates.enable is true; put the "
            "PEM file there, or set opcua_server.certificates.generate_if_missing to true)"
            for p in missing])
    try:
        cert = load_cert(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise SettingsError([f"opcua_server.certificates: {cert_path} / {key_path}: not a usable "
                             f"PEM certificate and unencrypted private key: {e}"]) from e
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SettingsError([f"opcua_server.certificates: {key_path}: Basic256Sha256 needs an "
                             "RSA key"])
    return ServerCertificate(cert, key, cert_path, key_path, uri_of(cert))


def load_cert(data: bytes) -> x509.Certificate:
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else "unnamed"


def load_trusted(trust_dir: Path) -> dict[str, x509.Certificate]:
    """fingerprint -> certificate for every readable PEM/DER file in trust_dir."""
    out: dict[str, x509.Certificate] = {}
    if not trust_dir.is_dir():
        return out
    for p in sorted(trust_dir.iterdir()):
        if not p.is_file() or p.suffix.lower() not in {".pem", ".der", ".crt", ".cer"}:
            continue
        try:
            cert = load_cert(p.read_bytes())
        except ValueError as e:
            log.warning("trust_dir: %s is not a certificate, ignored: %s", p, e)
            continue
        out[fingerprint(cert)] = cert
    return out


def rejected_name(cert: x509.Certificate) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", common_name(cert))[:40]
    return f"{safe}_{fingerprint(cert)[:16]}.der"


class TrustValidator:
    """Client certificate trust, replacing asyncua's accept-everything default.

    Checked when a session is activated, against the certificate the client proved on its
    secure channel (Sign or SignAndEncrypt). On a NoSecurity channel nothing is proven, so a
    certificate there means nothing and is not checked. Only certificates in trust_dir are
    accepted (exact match); the directory is re-read on every check so that ``linegate
    trust accept`` takes effect without a restart. A refused certificate is saved into the
    rejected folder and logged with its ApplicationUri and name.
    """

    def __init__(self, trust_dir: Path, rejected_dir: Path) -> None:
        self.trust_dir = trust_dir
        self.rejected_dir = rejected_dir

    def check(self, cert: x509.Certificate) -> None:
        """Raise ServiceError(BadCertificateUntrusted/TimeInvalid) unless cert is trusted."""
        who = f"{uri_of(cert) or '?'} ({common_name(cert)})"
        now = dt.datetime.now(dt.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            log.warning("status server: refused client %s: certificate not valid now "
                        "(valid %s .. %s)", who, cert.not_valid_before_utc,
                        cert.not_valid_after_utc)
            raise ServiceError(ua.StatusCodes.BadCertificateTimeInvalid)
        if fingerprint(cert) in load_trusted(self.trust_dir):
            return
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        target = self.rejected_dir / rejected_name(cert)
        target.write_bytes(cert.public_bytes(serialization.Encoding.DER))
        log.warning("status server: refused client %s: certificate not trusted; saved as %s "
                    "(accept it with 'linegate trust accept %s')", who, target, target.name)
        raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)


# --------------------------------------------------------------------------- users

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """'scrypt$N$r$p$salt_b64$hash_b64' (the format settings' password_hash expects)."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P,
                            dklen=32)
    b64 = base64.b64encode
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return False
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, want = base64.b64decode(parts[4]), base64.b64decode(parts[5])
        got = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(want),
                             maxmem=256 * 1024 * 1024)
    except ValueError:
        return False
    return hmac.compare_digest(got, want)


def load_users(settings: Settings) -> dict[str, StatusUser]:
    """users from settings plus opcua_server.users_file; bad entries are SettingsErrors."""
    opc = settings.opcua_server
    users = list(opc.users)
    if opc.users_file is not None:
        path = resolve(settings, opc.users_file)
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise SettingsError([f"opcua_server.users_file: {path}: {e}"]) from e
        if not isinstance(raw, list):
            raise SettingsError([f"opcua_server.users_file: {path}: expected a JSON list of "
                                 "{name, password_hash, role}"])
        for i, item in enumerate(raw):
            try:
                users.append(StatusUser(**item))
            except TypeError as e:
                raise SettingsError([f"opcua_server.users_file: {path}: entry {i}: {e}"]) from e
    problems = []
    for u in users:
        if not u.name or not u.password_hash.startswith("scrypt$"):
            problems.append(f"opcua_server.users: user {u.name!r}: needs a name and a "
                            "password_hash made by 'linegate passwd'")
        if u.role not in {"viewer", "operator", "admin"}:
            problems.append(f"opcua_server.users: user {u.name!r}: role {u.role!r} is not "
                            "viewer, operator or admin")
    if problems:
        raise SettingsError(problems)
    return {u.name: u for u in users}


@dataclass
class SessionUser(User):
    """asyncua's User plus our role name (viewer/operator/admin/anonymous)."""

    status_role: str = "anonymous"


class StatusUserManager:
    """asyncua user manager: anonymous (if allowed) or a configured user with its password."""

    def __init__(self, users: dict[str, StatusUser], allow_anonymous: bool,
                 trust: TrustValidator) -> None:
        self.users = users
        self.allow_anonymous = allow_anonymous
        self.trust = trust

    def get_user(self, iserver: object, username: str | None = None,
                 password: str | None = None, certificate: object = None) -> User | None:
        # certificate is the secure channel's peer certificate (DER; empty on NoSecurity):
        # X509 identity tokens are not offered, asyncua refuses them before this point.
        if isinstance(certificate, bytes) and certificate:
            self.trust.check(x509.load_der_x509_certificate(certificate))
        if username is None:
            if not self.allow_anonymous:
                log.warning("status server: refused an anonymous session "
                            "(opcua_server.allow_anonymous is false)")
                return None
            return SessionUser(role=UserRole.Anonymous, name=None, status_role="anonymous")
        user = self.users.get(username)
        if user is None or not verify_password(password or "", user.password_hash):
            log.warning("status server: refused login of user %r: bad user name or password",
                        username)
            return None
        # asyncua's Admin role may write any attribute; our admin is an application role only
        return SessionUser(role=UserRole.User, name=user.name, status_role=user.role)


current_caller: contextvars.ContextVar[User | None] = contextvars.ContextVar(
    "status_current_caller", default=None)
# the status address space is read-only for every client: no writes, no node management
_DENIED = {ua.NodeId(t) for t in [*ADMIN_TYPES, ua.ObjectIds.WriteRequest_Encoding_DefaultBinary]}


class CallerRuleset(PermissionRuleset):
    """Records the session user of each request (for the method handlers) and refuses
    writes and address-space changes to everyone. Reads, browses, subscriptions and calls pass; the
    method handlers check roles themselves so that they can log who was refused."""

    def check_validity(self, user: User, action_type_id: ua.NodeId, body: object) -> bool:
        current_caller.set(user)
        if action_type_id in _DENIED:
            log.warning("status server: refused a write/address-space change by %s",
                        describe(user))
            return False
        return True


def describe(user: User | None) -> str:
    if user is None:
        return "unknown session"
    if isinstance(user, SessionUser) and user.name:
        return f"user {user.name!r} (role {user.status_role})"
    return "anonymous"


def caller_role(user: User | None) -> str:
    if isinstance(user, SessionUser):
        return user.status_role
    return "anonymous"
