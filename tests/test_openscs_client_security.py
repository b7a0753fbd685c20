"""OPEN-SCS client security (spec 7.4.1): policies, trust list, authentication, certificates."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from adapters.openscs import certs
from adapters.openscs.client import OpenScsClient
from adapters.openscs.results import Decision
from gateway.board import StatusBoard
from gateway.errors import UpstreamError
from gateway.model import KeyValue, SerialNumberState
from gateway.status.fields import board_values
from tests.test_openscs_client_fixture import ScsServer, label_collection, running_server

pytestmark = pytest.mark.asyncio(loop_scope="module")

LC = label_collection(("X1",), SerialNumberState.Commissioned)
CTX = (KeyValue("IdempotencyKey", "sec-1"),)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def scs(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ScsServer]:
    async with running_server(tmp_path_factory.mktemp("srv")) as srv:
        yield srv


async def _roundtrip(settings: object) -> None:
    c = OpenScsClient(settings)  # type: ignore[arg-type]
    try:
        await c.connect()
        res = await c.sid_commissioning_event(LC, context=CTX)
        assert res.ok, res.verdict
    finally:
        await c.close()


@pytest.mark.parametrize(("policy", "mode"), [("Basic256Sha256", "SignAndEncrypt"),
                                              ("Basic256Sha256", "Sign"),
                                              ("Aes128_Sha256_RsaOaep", "SignAndEncrypt")])
async def test_secure_policies_work(scs: ScsServer, tmp_path: Path, policy: str,
                                   mode: str) -> None:
    before = len(scs.recorded("SIDCommissioningEvent"))
    await _roundtrip(scs.settings(tmp_path, security_policy=policy, security_mode=mode))
    assert len(scs.recorded("SIDCommissioningEvent")) == before + 1


async def test_generated_certificate_carries_the_application_uri(scs: ScsServer,
                                                                  tmp_path: Path) -> None:
    settings = scs.settings(tmp_path, application_uri="urn:acme:line7:gateway")
    assert not settings.certificate_file.exists()
    await _roundtrip(settings)
    cert = certs.load_certificate(settings.certificate_file)
    assert certs.application_uri_of(cert) == ["urn:acme:line7:gateway"]
    assert settings.private_key_file.stat().st_mode & 0o777 == 0o600
    # a second start keeps the same certificate
    der = settings.certificate_file.read_bytes()
    await _roundtrip(settings)
    assert settings.certificate_file.read_bytes() == der
    # a certificate for another ApplicationUri is refused, never overwritten
    other = scs.settings(tmp_path, application_uri="urn:other")
    with pytest.raises(UpstreamError, match="does not match"):
        await OpenScsClient(other).connect()
    assert settings.certificate_file.read_bytes() == der


async def test_security_none_is_refused(scs: ScsServer, tmp_path: Path) -> None:
    settings = scs.settings(tmp_path, security_policy="None", security_mode="None")
    with pytest.raises(UpstreamError, match=r"None is not allowed \(OPEN-SCS 7.4.1.2\)"):
        await OpenScsClient(settings).connect()
    # and it is not attempted again and again: an event is a RETRY with the reason
    res = await OpenScsClient(settings).sid_commissioning_event(LC, context=CTX)
    assert res.verdict.decision is Decision.RETRY and "not allowed" in res.verdict.reason


async def test_allow_insecure_permits_none_loudly(scs: ScsServer, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    settings = scs.settings(tmp_path, security_policy="None", security_mode="None",
                            allow_insecure=True)
    with caplog.at_level(logging.WARNING, logger="adapters.openscs.session"):
        await _roundtrip(settings)
    assert any("WITHOUT SECURITY" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)


async def test_untrusted_server_is_refused_naming_the_file(scs: ScsServer,
                                                           tmp_path: Path) -> None:
    settings = scs.settings(tmp_path)
    for f in settings.trust_dir.iterdir():
        f.unlink()
    with pytest.raises(UpstreamError, match="untrusted certificate") as info:
        await OpenScsClient(settings).connect()
    # its own folder: public/rejected holds the status server's refused CLIENT certificates
    rejected = list((settings.trust_dir.parent / "rejected-upstream").iterdir())
    assert len(rejected) == 1 and str(rejected[0]) in str(info.value)
    assert not (settings.trust_dir.parent / "rejected").exists()
    assert str(settings.trust_dir) in str(info.value)
    assert f"linegate trust accept {rejected[0].name}" in str(info.value)
    rejected[0].rename(settings.trust_dir / rejected[0].name)  # the operator trusts it
    await _roundtrip(settings)


async def test_bad_password_is_refused(scs: ScsServer, tmp_path: Path) -> None:
    settings = scs.settings(tmp_path)
    settings.password_file.write_text("wrong")
    c = OpenScsClient(settings)
    with pytest.raises(UpstreamError,
                       match=r"refused the session for line: Bad(UserAccessDenied|IdentityToken)"):
        await c.connect()
    res = await c.sid_commissioning_event(LC, context=CTX)
    assert res.verdict.decision is Decision.RETRY  # the data is fine; the login is not


async def test_password_file_must_be_0600(scs: ScsServer, tmp_path: Path) -> None:
    settings = scs.settings(tmp_path)
    settings.password_file.chmod(0o644)
    with pytest.raises(UpstreamError, match="mode 0644: it must be 0600"):
        await OpenScsClient(settings).connect()


async def test_a_configuration_fault_is_an_alarm_until_it_is_fixed(scs: ScsServer,
                                                                   tmp_path: Path) -> None:
    """A password file that loses its 0600 mode at run time: calls answer RETRY (the data
    is fine), and the status field ``alarms`` names the fault until a call gets through."""
    settings = scs.settings(tmp_path)
    settings.password_file.chmod(0o644)
    board = StatusBoard()
    c = OpenScsClient(settings, board=board)
    try:
        res = await c.sid_commissioning_event(LC, context=CTX)
        assert res.verdict.decision is Decision.RETRY
        alarms = json.loads(str(board_values(board, None)["alarms"]))
        assert "must be 0600" in alarms["upstream_error"]["event manager"]
        settings.password_file.chmod(0o600)
        for _ in range(100):  # the reconnect backoff (reconnect_max_s 0.2) runs out
            res = await c.sid_commissioning_event(LC, context=CTX)
            if res.ok:
                break
            await asyncio.sleep(0.05)
        assert res.ok, res.verdict
        assert json.loads(str(board_values(board, None)["alarms"])) == {}
    finally:
        await c.close()


async def test_anonymous_session_is_refused(scs: ScsServer, tmp_path: Path) -> None:
    settings = scs.settings(tmp_path, username=None, password_file=None)
    with pytest.raises(UpstreamError, match="must be authenticated"):
        await OpenScsClient(settings).connect()


async def test_x509_user_identity(scs: ScsServer, tmp_path: Path) -> None:
    user_cert, user_key = tmp_path / "user_cert.pem", tmp_path / "user_key.pem"
    certs.ensure_application_certificate(user_cert, user_key, "urn:linegate:user:line")
    settings = scs.settings(tmp_path, username=None, password_file=None,
                            user_certificate_file=user_cert, user_private_key_file=user_key)
    with pytest.raises(UpstreamError, match="refused the session"):  # not registered yet
        await OpenScsClient(settings).connect()
    der = x509.load_pem_x509_certificate(user_cert.read_bytes()).public_bytes(
        serialization.Encoding.DER)
    scs.x509_users[der] = "line"
    before = len(scs.logins)
    await _roundtrip(settings)
    assert scs.logins[before:] == ["x509:line"]  # an X509IdentityToken, not anonymous
