"""Status server security over real loopback sessions: policies, certificates, trust, roles."""

from __future__ import annotations

import asyncio
import json

import pytest
from asyncua import ua

from gateway.board import StatusBoard
from gateway.errors import SettingsError
from gateway.settings import CertificateSettings, OpcuaServerSettings, Settings
from gateway.status import StatusServer, check_warnings
from gateway.status import security as sec
from tests.test_status_support import (
    client_pair,
    connect,
    make_settings,
    running,
    status_node,
    trust,
    user,
)

ALL = ["NoSecurity", "Basic256Sha256_Sign", "Basic256Sha256_SignAndEncrypt"]
MODES = {"NoSecurity": "None", "Basic256Sha256_Sign": "Sign",
         "Basic256Sha256_SignAndEncrypt": "SignAndEncrypt"}


@pytest.mark.parametrize("enabled", [["NoSecurity"], ["Basic256Sha256_Sign"],
                                     ["Basic256Sha256_SignAndEncrypt"],
                                     ["Basic256Sha256_Sign", "Basic256Sha256_SignAndEncrypt"]])
async def test_each_policy_on_and_off(tmp_path, enabled) -> None:
    settings = make_settings(tmp_path, security_policies=enabled)
    pair = client_pair(tmp_path)
    trust(settings, pair[0])
    async with running(settings) as srv:
        assert srv.offered_policies == enabled
        outcomes = {}
        for policy in ALL:
            try:
                client = await connect(settings, mode=MODES[policy], pair=pair)
            except (ua.UaError, OSError, TimeoutError) as e:
                outcomes[policy] = f"refused: {type(e).__name__}"
                continue
            try:
                idx, _ = await status_node(client)
                await client.get_node(ua.NodeId("Status/version", idx)).read_value()
                outcomes[policy] = "ok"
            finally:
                await client.disconnect()
    assert {p for p, o in outcomes.items() if o == "ok"} == set(enabled), outcomes


async def test_seed_defaults_without_certificates_warn_and_offer_nosecurity(tmp_path,
                                                                            caplog) -> None:
    settings = make_settings(tmp_path, certs=False)  # seed: all three listed, certs disabled
    warnings = check_warnings(settings)
    assert any("Basic256Sha256_Sign, Basic256Sha256_SignAndEncrypt are listed but "
               "opcua_server.certificates.enable is false" in w for w in warnings), warnings
    async with running(settings) as srv:
        assert srv.offered_policies == ["NoSecurity"]
    assert "cannot be offered" in caplog.text
    assert any(r.levelname == "WARNING" and "cannot be offered" in r.getMessage()
               for r in caplog.records)


def test_check_is_silent_when_disabled() -> None:
    assert check_warnings(Settings()) == []


def test_check_warns_about_policies_by_default() -> None:
    s = Settings(opcua_server=OpcuaServerSettings(enable=True))
    assert any("cannot be offered" in w for w in check_warnings(s))


async def test_certificates_enabled_but_missing_names_the_path(tmp_path) -> None:
    settings = make_settings(tmp_path)
    opc = settings.opcua_server
    settings = Settings(root=tmp_path, opcua_server=OpcuaServerSettings(
        enable=True, listen_address="127.0.0.1", listen_port_prism=opc.listen_port_prism,
        certificates=CertificateSettings(enable=True)))
    assert any(str(tmp_path / "public" / "cert.pem") in w for w in check_warnings(settings))
    srv = StatusServer(settings, StatusBoard(), lambda: None)
    with pytest.raises(SettingsError) as err:
        await srv.serve()
    text = str(err.value)
    assert f"{tmp_path / 'public' / 'cert.pem'} does not exist" in text
    assert f"{tmp_path / 'public' / 'key.pem'} does not exist" in text
    assert "generate_if_missing" in text


async def test_generate_if_missing_creates_a_usable_pair(tmp_path) -> None:
    settings = make_settings(tmp_path, security_policies=["Basic256Sha256_SignAndEncrypt"])
    pair = client_pair(tmp_path)
    trust(settings, pair[0])
    async with running(settings):
        client = await connect(settings, mode="SignAndEncrypt", pair=pair)
        try:
            idx, _ = await status_node(client)
            expiry = await client.get_node(ua.NodeId("Status/cert_expiry", idx)).read_value()
        finally:
            await client.disconnect()
    assert (tmp_path / "public/cert.pem").is_file()
    assert (tmp_path / "public/key.pem").stat().st_mode & 0o077 == 0
    assert expiry.endswith("Z") and expiry[:4].isdigit()


async def test_untrusted_client_certificate_refused_then_trusted(tmp_path, caplog) -> None:
    settings = make_settings(tmp_path, security_policies=["Basic256Sha256_SignAndEncrypt"])
    pair = client_pair(tmp_path)
    trusted, rejected = sec.trust_dirs(settings)
    async with running(settings):
        with pytest.raises(ua.UaStatusCodeError) as err:
            await connect(settings, mode="SignAndEncrypt", pair=pair)
        assert err.value.code == ua.StatusCodes.BadCertificateUntrusted
        saved = list(rejected.iterdir())
        assert len(saved) == 1 and saved[0].name.startswith("test_client_")
        assert "certificate not trusted" in caplog.text and "linegate trust" in caplog.text
        # what `linegate trust accept NAME` does
        from gateway.status import cli
        assert cli.run_accept(settings, saved[0].name, _Sink()) == 0
        assert not saved[0].exists() and (trusted / saved[0].name).is_file()
        client = await connect(settings, mode="SignAndEncrypt", pair=pair)
        await client.disconnect()


class _Sink:
    def write(self, text: str) -> int:
        return len(text)


def _restart_settings(tmp_path, **kw: object) -> Settings:
    return make_settings(tmp_path, users=[user("olga", "op-secret", "operator"),
                                          user("vic", "view-secret", "viewer")], **kw)


async def test_restart_refused_without_role_performed_with_it(tmp_path, caplog) -> None:
    settings = _restart_settings(tmp_path)
    pair = client_pair(tmp_path)
    trust(settings, pair[0])
    board = StatusBoard(user="line-operator")
    restarted = asyncio.Event()
    async with running(settings, board, restarted.set):
        for who in [{}, {"username": "vic", "password": "view-secret"}]:
            client = await connect(settings, mode="SignAndEncrypt", pair=pair, **who)
            try:
                idx, status = await status_node(client)
                with pytest.raises(ua.UaStatusCodeError) as err:
                    await status.call_method(f"{idx}:restart")
                assert err.value.code == ua.StatusCodes.BadUserAccessDenied
            finally:
                await client.disconnect()
        assert not restarted.is_set() and board.user == "line-operator"
        assert "refused restart by anonymous" in caplog.text
        assert "refused restart by user 'vic' (role viewer)" in caplog.text
        client = await connect(settings, mode="SignAndEncrypt", pair=pair, username="olga",
                               password="op-secret")
        try:
            idx, status = await status_node(client)
            assert await status.call_method(f"{idx}:restart") is None  # Good, no outputs
            await asyncio.wait_for(restarted.wait(), 30)
        finally:
            await client.disconnect()
    assert board.user == "" and board.cmd == "restart"


async def test_async_restart_callback_is_awaited(tmp_path) -> None:
    settings = _restart_settings(tmp_path, certs=False, security_policies=["NoSecurity"])
    done = asyncio.Event()

    async def restart() -> None:
        await asyncio.sleep(0)
        done.set()

    async with running(settings, StatusBoard(), restart):
        client = await connect(settings, username="olga", password="op-secret")
        try:
            idx, status = await status_node(client)
            await status.call_method(f"{idx}:restart")
            await asyncio.wait_for(done.wait(), 30)
        finally:
            await client.disconnect()


async def test_bad_password_and_disabled_anonymous_refused(tmp_path, caplog) -> None:
    settings = _restart_settings(tmp_path, certs=False, security_policies=["NoSecurity"],
                                 allow_anonymous=False)
    async with running(settings):
        with pytest.raises(ua.UaStatusCodeError):
            await connect(settings, username="olga", password="wrong")
        with pytest.raises(ua.UaStatusCodeError):
            await connect(settings)
        client = await connect(settings, username="vic", password="view-secret")
        await client.disconnect()
    assert "refused login of user 'olga'" in caplog.text


def test_password_hash_roundtrip() -> None:
    h = sec.hash_password("s3cret")
    assert h.startswith("scrypt$") and sec.verify_password("s3cret", h)
    assert not sec.verify_password("s3cret!", h)
    assert not sec.verify_password("s3cret", "plain")
    assert sec.hash_password("s3cret") != h  # salted


def test_users_file_is_loaded_and_checked(tmp_path) -> None:
    (tmp_path / "users.json").write_text(json.dumps(
        [{"name": "ada", "password_hash": sec.hash_password("x"), "role": "admin"}]))
    s = make_settings(tmp_path, users_file=tmp_path / "users.json")
    assert sec.load_users(s)["ada"].role == "admin"
    (tmp_path / "users.json").write_text(json.dumps([{"name": "bob", "password_hash": "x"}]))
    with pytest.raises(SettingsError, match="user 'bob': needs a name and a password_hash"):
        sec.load_users(s)
    (tmp_path / "users.json").write_text(json.dumps([{"nam": "bob"}]))
    with pytest.raises(SettingsError, match=r"users\.json: entry 0"):
        sec.load_users(s)


def test_unknown_policy_is_named() -> None:
    opc = OpcuaServerSettings(security_policies=["Basic128Rsa15"])
    with pytest.raises(SettingsError, match="unknown policy 'Basic128Rsa15'"):
        sec.effective_policies(opc, True)


async def test_fields_are_read_only_even_for_admin(tmp_path, caplog) -> None:
    settings = make_settings(tmp_path, certs=False, security_policies=["NoSecurity"],
                             users=[user("ada", "adm-secret", "admin")])
    board = StatusBoard(user="alice")
    async with running(settings, board):
        client = await connect(settings, username="ada", password="adm-secret")
        try:
            idx, _ = await status_node(client)
            node = client.get_node(ua.NodeId("Status/user", idx))
            with pytest.raises(ua.UaStatusCodeError) as err:
                await node.write_value(ua.DataValue(ua.Variant("mallory", ua.VariantType.String)))
            assert err.value.code == ua.StatusCodes.BadUserAccessDenied
            assert await node.read_value() == "alice"
        finally:
            await client.disconnect()
    assert "refused a write/address-space change by user 'ada' (role admin)" in caplog.text
