"""Application instance certificate and the trust list for OPEN-SCS servers.

The OPEN-SCS Security Client Facet (spec 7.4.1.2) requires a Default Application Instance
Certificate and secured, authenticated sessions. ``ensure_application_certificate`` creates a
self-signed certificate whose SubjectAltName carries the configured ApplicationUri (and the host
name) on first start, and keeps an existing one. ``check_trusted`` compares a server certificate
with the certificates in the trust directory; an untrusted one is written next to it (into
``<trust_dir>/../rejected-upstream/``, see ``rejected_dir``) and refused with an error that
names the file and how to trust it (``linegate trust accept NAME``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from pathlib import Path

from asyncua.crypto import cert_gen
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.errors import UpstreamError

log = logging.getLogger(__name__)

CERT_SUFFIXES = (".der", ".pem", ".crt", ".cer")
REJECTED_DIR_NAME = "rejected-upstream"


def rejected_dir(trust_dir: Path) -> Path:
    """Where refused OPEN-SCS server certificates are saved: ``<trust_dir>/../rejected-upstream``.

    Never the status server's ``rejected`` folder (client certificates refused by our own
    OPC UA server, gateway.status.security.trust_dirs): with the default layout both trust
    dirs sit in ``public/``, and a server certificate saved among the rejected clients would be
    accepted by ``linegate trust accept`` into the status server's client trust list, granting
    that server access to our status server and leaving the upstream untrusted.
    """
    return trust_dir.parent / REJECTED_DIR_NAME


def load_certificate(path: Path) -> x509.Certificate:
    data = path.read_bytes()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def thumbprint(der: bytes) -> str:
    """SHA-1 thumbprint as OPC UA uses it (hex, lower case)."""
    return hashlib.sha1(der).hexdigest()


def application_uri_of(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(san.value.get_values_for_type(x509.UniformResourceIdentifier))


def ensure_application_certificate(cert_file: Path, key_file: Path, application_uri: str,
                                   *, server: bool = False) -> x509.Certificate:
    """Return the application certificate, generating it (PEM, key mode 0600) if absent.

    An existing certificate whose SubjectAltName lacks ``application_uri`` is an error (the
    server would reject the session with BadCertificateUriInvalid): it is never overwritten.
    """
    if cert_file.exists() and key_file.exists():
        cert = load_certificate(cert_file)
        uris = application_uri_of(cert)
        if application_uri not in uris:
            raise UpstreamError(
                f"{cert_file}: certificate ApplicationUri {uris or 'missing'} does not match "
                f"upstream.openscs.application_uri {application_uri!r}; delete {cert_file} and "
                f"{key_file} to regenerate", permanent=True)
        return cert
    if cert_file.exists() != key_file.exists():
        have, missing = (cert_file, key_file) if cert_file.exists() else (key_file, cert_file)
        raise UpstreamError(f"{have} exists but {missing} does not; restore it or delete "
                            f"{have} to regenerate the pair", permanent=True)
    key = cert_gen.generate_private_key()
    host = socket.gethostname()
    uses = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        uses.append(ExtendedKeyUsageOID.SERVER_AUTH)
    cert = cert_gen.generate_self_signed_app_certificate(
        key, application_uri, {}, [x509.UniformResourceIdentifier(application_uri),
                                   x509.DNSName(host)], extended=uses, days=3650)
    cert_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(cert_gen.dump_private_key_as_pem(key))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    log.warning("generated application instance certificate %s (ApplicationUri %s, thumbprint "
                "%s): add it to the OPEN-SCS server's trusted clients", cert_file,
                application_uri, thumbprint(cert.public_bytes(serialization.Encoding.DER)))
    return cert


def trusted_thumbprints(trust_dir: Path) -> dict[str, Path]:
    """Thumbprint -> file for every certificate in ``trust_dir`` (unreadable files named)."""
    found: dict[str, Path] = {}
    if not trust_dir.is_dir():
        return found
    for path in sorted(trust_dir.iterdir()):
        if path.suffix.lower() not in CERT_SUFFIXES:
            continue
        try:
            cert = load_certificate(path)
        except ValueError as exc:
            log.error("%s: not a certificate, ignored: %s", path, exc)
            continue
        found[thumbprint(cert.public_bytes(serialization.Encoding.DER))] = path
    return found


def check_trusted(server_der: bytes, trust_dir: Path, endpoint: str) -> Path:
    """Return the trust-list file matching the server certificate, or refuse it.

    The refused certificate is saved as ``rejected_dir(trust_dir)/<thumbprint>.der`` and the
    error names it: ``linegate trust accept <thumbprint>.der`` (or moving that file into
    ``trust_dir``) trusts the server.
    """
    tp = thumbprint(server_der)
    trusted = trusted_thumbprints(trust_dir)
    if tp in trusted:
        return trusted[tp]
    rejected = rejected_dir(trust_dir) / f"{tp}.der"
    rejected.parent.mkdir(parents=True, exist_ok=True)
    rejected.write_bytes(server_der)
    raise UpstreamError(
        f"OPEN-SCS server {endpoint} presented an untrusted certificate (thumbprint {tp}); it "
        f"was saved as {rejected}: to trust this server run 'linegate trust accept "
        f"{rejected.name}' (or move that file into {trust_dir})", permanent=True)
