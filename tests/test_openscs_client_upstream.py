"""OpenScsUpstream: outbox message kinds -> OPEN-SCS calls -> DeliveryResults."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio
from asyncua import ua

from adapters.epcis.builder import ObjectEvent, build_document
from adapters.openscs.client import OpenScsClient
from adapters.openscs.nodeids import NS_URI_SPEC
from adapters.openscs.upstream import EVENT_STATES, POOL_STATES, OpenScsUpstream
from gateway.board import StatusBoard
from gateway.errors import TransportError, UpstreamError
from gateway.model import KeyValue, LabelCollection, Outcome, ReturnStatus, StoredMessage
from gateway.model import SerialNumberState as S
from gateway.settings import ManagerEndpoints, OpenScsSettings
from tests.test_openscs_client_fixture import ScsServer, running_server
from tools.faultproxy import FaultProxy
from tools.openscs_server.engine import Limits
from tools.openscs_server.server import ReferenceServer

pytestmark = pytest.mark.asyncio(loop_scope="module")
_ids = itertools.count(1)


def msg(stream: str, kind: str, body: dict[str, object], key: str = "") -> StoredMessage:
    n = next(_ids)
    return StoredMessage(n, stream, kind, key or f"key-{n}", body, 0.0, 0)


CONTEXT = {"Ordnr": "O-7", "VIN": "WVW123", "prdline": "L2", "station": "st-1"}


@contextlib.asynccontextmanager
async def reference(tmp_path: Path, *, via_proxy: bool = False, **server_kw: object,
                    ) -> AsyncIterator[tuple[ReferenceServer, FaultProxy | None, OpenScsClient]]:
    """A reference server (user line/pw, its certificate trusted), optionally behind a fault
    proxy, and a client that reaches it (through the proxy); all stopped on exit."""
    server = ReferenceServer(port=0, db_path=tmp_path / "scs.sqlite", users={"line": "pw"},
                             cert_dir=tmp_path / "pki", **server_kw)  # type: ignore[arg-type]
    await server.start()
    proxy = FaultProxy(target_port=server.port) if via_proxy else None
    if proxy is not None:
        await proxy.start()
    client = OpenScsClient(client_settings(
        tmp_path, [server],
        f"opc.tcp://127.0.0.1:{proxy.port}/openscs" if proxy else server.endpoint,
        timeout_s=1.0 if proxy else 5.0, reconnect_max_s=0.1))
    try:
        yield server, proxy, client
    finally:
        await client.close()
        if proxy is not None:
            await proxy.stop()
        await server.stop()


def client_settings(tmp_path: Path, servers: Sequence[ReferenceServer], endpoint: str,
                    **kw: object) -> OpenScsSettings:
    """Client settings trusting ``servers``, user line with a 0600 password file."""
    trust = tmp_path / "trusted"
    trust.mkdir(exist_ok=True)
    for n, server in enumerate(servers):
        (trust / f"server{n}.der").write_bytes(server.cert_path.read_bytes())
    pw = tmp_path / "pw"
    pw.write_text("pw")
    pw.chmod(0o600)
    return OpenScsSettings(endpoint=endpoint, username="line", password_file=pw,
                           trust_dir=trust, certificate_file=tmp_path / "c.pem",
                           private_key_file=tmp_path / "k.pem", **kw)  # type: ignore[arg-type]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def scs(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ScsServer]:
    async with running_server(tmp_path_factory.mktemp("srv"), max_events=2) as srv:
        yield srv


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def upstream(scs: ScsServer, tmp_path_factory: pytest.TempPathFactory
                   ) -> AsyncIterator[OpenScsUpstream]:
    c = OpenScsClient(scs.settings(tmp_path_factory.mktemp("c"), sn_format="EPCURI"))
    yield OpenScsUpstream(c)
    await c.close()


async def test_station_kinds_become_the_documented_calls(scs: ScsServer,
                                                         upstream: OpenScsUpstream) -> None:
    body = {"serials": ["S1", "S2", "S3"], "pool": "7", "context": CONTEXT}
    batch = [msg("event", "SIDCommissioningEvent", body),
             msg("event", "LabelsScrappingEvent", {**body, "serials": ["S9"]}),
             msg("pool", "SNReturnAllocated", {"serials": ["R1", "R2"], "pool": GTIN,
                                               "context": CONTEXT})]
    results = await upstream.deliver("event", batch)
    assert [r.outcome for r in results] == [Outcome.DONE] * 3
    com = scs.recorded("SIDCommissioningEvent")[-2:]  # MaxEvents 2: split in two calls
    coll = com[0]["collection"]
    assert (coll.ID, coll.Description, coll.State, coll.AssociatedPoolID) == (
        "7", "", S.Commissioned, "7")
    assert [c["collection"].SerialNumbers for c in com] == [("S1", "S2"), ("S3",)]
    assert [tuple(lb.ID for lb in c["collection"].LabelCollection) for c in com] == [
        ("S1", "S2"), ("S3",)]
    assert com[0]["SNFormat"] == "EPCURI"
    ctx = com[0]["OPENSCSEventContext"]
    assert ctx[:4] == tuple(KeyValue(k, v) for k, v in CONTEXT.items())
    assert ctx[4] == KeyValue("IdempotencyKey", f"{batch[0].key}#1/2")
    scrap = scs.recorded("LabelsScrappingEvent")[-1]["collection"]
    assert scrap.State is S.LabelScrapped and scrap.SerialNumbers == ("S9",)
    ret = scs.recorded("SNReturnAllocated")[-1]
    assert ret["SNCollection"].State is S.Allocated
    assert ret["SNCollection"].SerialNumbers == ("R1", "R2")
    assert ret["PoolSelectionCriteria"] == (KeyValue("GTIN", GTIN),)


GTIN = "04012345000016"


async def test_generic_kinds(scs: ScsServer, upstream: OpenScsUpstream) -> None:
    batch = [msg("event", k, {"serials": ["G1"], "pool": "p"}) for k in EVENT_STATES]
    batch += [msg("pool", k, {"serials": ["G2"], "pool": "p"}) for k in POOL_STATES]
    batch += [msg("aggregation", k, {"elements": [{"parent": "SSCC1", "children": ["G1"]}],
                                     "context": CONTEXT})
              for k in ("AggregationPackingEvent", "AggregationUnpackingEvent")]
    batch.append(msg("event", "EPCISStream", {"document": "<EPCISDocument/>",
                                              "context": CONTEXT}))
    results = await upstream.deliver("mixed", batch)
    assert [r.outcome for r in results] == [Outcome.DONE] * len(batch)
    for kind, state in EVENT_STATES.items():
        assert scs.recorded(kind)[-1]["collection"].State is state
    assert scs.documents[-1] == b"<EPCISDocument/>"


async def test_bad_bodies_are_permanent_and_do_not_stop_the_batch(
        scs: ScsServer, upstream: OpenScsUpstream) -> None:
    batch = [msg("event", "SIDCommissioningEvent", {"serials": [], "pool": ""}),
             msg("event", "SIDCommissioningEvent", {"serials": "S1"}),
             msg("event", "NoSuchEvent", {"serials": ["S1"]}),
             msg("event", "SIDCommissioningEvent", {"serials": ["S1"], "state": 99}),
             msg("event", "SIDCommissioningEvent", {"serials": ["ok"], "pool": ""})]
    results = await upstream.deliver("event", batch)
    assert [r.outcome for r in results] == [Outcome.PERMANENT] * 4 + [Outcome.DONE]
    assert "empty" in results[0].reason and "list of strings" in results[1].reason
    assert "unknown message kind 'NoSuchEvent'" in results[2].reason
    assert "99" in results[3].reason


async def test_retry_stops_the_batch_and_permanent_keeps_the_reason(
        scs: ScsServer, upstream: OpenScsUpstream) -> None:
    scs.script["SIDCommissioningEvent"] = [ReturnStatus.InvalidSerialNumbersFormat,
                                           ReturnStatus.NoError,
                                           ReturnStatus.UnableToAcceptSIDEvents]
    batch = [msg("event", "SIDCommissioningEvent", {"serials": [f"X{i}"], "pool": ""})
             for i in range(5)]
    results = await upstream.deliver("event", batch)
    assert [r.outcome for r in results] == [Outcome.PERMANENT, Outcome.DONE, Outcome.RETRY]
    assert "InvalidSerialNumbersFormat" in results[0].reason
    assert "UnableToAcceptSIDEvents" in results[2].reason


async def test_upstream_down_is_retry(tmp_path: Path) -> None:
    async with running_server(tmp_path / "srv") as srv:
        settings = srv.settings(tmp_path, timeout_s=1.0)
    up = OpenScsUpstream(OpenScsClient(settings))  # the server is gone now
    results = await up.deliver("event", [msg("event", "SIDCommissioningEvent",
                                             {"serials": ["a"], "pool": ""})] * 3)
    assert [r.outcome for r in results] == [Outcome.RETRY]
    assert results[0].reason
    # an EPCIS document too: its split limits cannot be read, which is no fault of its own
    epcis = msg("event", "EPCISStream", {"document": "<EPCISDocument/>"})
    assert [r.outcome for r in await up.deliver("event", [epcis])] == [Outcome.RETRY]


async def test_a_configuration_fault_never_condemns_an_epcis_document(tmp_path: Path) -> None:
    async with running_server(tmp_path / "srv") as srv:
        settings = srv.settings(tmp_path, security_policy="None", security_mode="None",
                                allow_insecure=False)  # refused by the client itself
        up = OpenScsUpstream(OpenScsClient(settings))
        for body, kind in (({"document": "<EPCISDocument/>"}, "EPCISStream"),
                           ({"serials": ["a"], "pool": ""}, "SIDCommissioningEvent")):
            [result] = await up.deliver("event", [msg("event", kind, body)])
            assert result.outcome is Outcome.RETRY, (kind, result)
            assert "None" in result.reason


async def test_an_sn_format_the_server_does_not_offer_is_an_alarm_not_dead_letters(
        tmp_path: Path) -> None:
    """A typo in upstream.openscs.sn_format: every event would be refused
    InvalidSerialNumbersFormat and dead-lettered. The client compares it with the server's
    SNFormat property: the calls wait (RETRY) and the ``alarms`` field says why."""
    async with reference(tmp_path) as (_server, _proxy, client):
        board = StatusBoard()
        typo = OpenScsClient(replace(client.settings, sn_format="SERIAL_ONLY"), board=board)
        try:
            [result] = await OpenScsUpstream(typo).deliver("event", [msg(
                "event", "SIDCommissioningEvent", {"serials": ["S1"], "pool": ""})])
            assert result.outcome is Outcome.RETRY
            alarm = board.health["upstream_error"]["event manager"]  # type: ignore[index]
            assert "'SERIAL_ONLY' is not offered" in alarm and "SERIALONLY" in alarm
        finally:
            await typo.close()


async def test_lost_reply_does_not_double_the_event(tmp_path: Path) -> None:
    """Reference server behind a proxy that swallows the reply: the retry is a replay."""
    async with reference(tmp_path, via_proxy=True) as (server, proxy, client):
        assert proxy is not None
        got = await client.sn_request_allocated(2, selection="09506000134352")
        pool = got.collection.AssociatedPoolID  # type: ignore[union-attr]
        up = OpenScsUpstream(client)
        event = msg("event", "SIDCommissioningEvent",
                    {"serials": list(got.serials), "pool": pool, "context": CONTEXT})
        await proxy.set_mode("drop_replies")
        first = await up.deliver("event", [event])
        assert [r.outcome for r in first] == [Outcome.RETRY]
        await proxy.set_mode("pass")
        proxy.cut()
        for _ in range(50):  # bounded: reconnect backoff is capped at 0.1 s
            again = await up.deliver("event", [event])
            if again[0].outcome is Outcome.DONE:
                break
            await asyncio.sleep(0.1)
        assert again[0].outcome is Outcome.DONE
        applied = [e for e in server.events() if e["key"] == event.key]
        assert len(applied) == 1
        states = server.serial_states(pool)
        assert all(states[(pool, s)] == S.Commissioned for s in got.serials)


async def test_lost_reply_of_a_pool_return_is_not_a_dead_letter(tmp_path: Path) -> None:
    """SNReturnAllocated has no idempotency key: its resend after a lost reply meets serial
    numbers already returned (Bad_InvalidState), which is the earlier attempt's effect. A
    first attempt with that answer stays a permanent refusal."""
    async with reference(tmp_path, via_proxy=True) as (server, proxy, client):
        assert proxy is not None
        got = await client.sn_request_allocated(2, selection="09506000134352")
        pool = got.collection.AssociatedPoolID  # type: ignore[union-attr]
        up = OpenScsUpstream(client)
        body = {"serials": list(got.serials), "pool": "09506000134352", "pool_id": pool}
        ret = msg("pool", "SNReturnAllocated", body)
        await proxy.set_mode("drop_replies")
        first = await up.deliver("pool", [ret])
        assert [r.outcome for r in first] == [Outcome.RETRY]
        await proxy.set_mode("pass")
        proxy.cut()
        resend = StoredMessage(ret.id, ret.stream, ret.kind, ret.key, ret.body, ret.created_at,
                               attempts=1)  # what the outbox hands over after a RETRY
        for _ in range(50):
            again = await up.deliver("pool", [resend])
            if again[0].outcome is not Outcome.RETRY:
                break
            await asyncio.sleep(0.1)
        assert again[0].outcome is Outcome.DONE and "replay" in again[0].reason
        states = server.serial_states(pool)
        assert all(states[(pool, s)] == S.Unallocated for s in got.serials)
        # the same answer to a first attempt is a real refusal
        fresh = await up.deliver("pool", [msg("pool", "SNReturnAllocated", body)])
        assert fresh[0].outcome is Outcome.PERMANENT and "BadInvalidState" in fresh[0].reason


async def test_a_split_pool_push_resent_after_a_failed_part_sends_the_rest(
        tmp_path: Path) -> None:
    """SNReturnAllocated of 4 split at MaxSNReturnable 2: part 1 applied, part 2 times out.
    The resend meets Bad_InvalidState for part 1 (applied before) and must still send part 2."""
    async with running_server(tmp_path / "srv", max_returnable=2) as srv:
        (tmp_path / "c").mkdir()
        client = OpenScsClient(srv.settings(tmp_path / "c"))
        up = OpenScsUpstream(client)
        body = {"serials": ["S1", "S2", "S3", "S4"], "pool": ""}
        srv.script["SNReturnAllocated"] = [None, ua.StatusCode(ua.StatusCodes.BadTimeout),
                                           ua.StatusCode(ua.StatusCodes.BadInvalidState)]
        try:
            first = await up.deliver("pool", [StoredMessage(1, "pool", "SNReturnAllocated",
                                                            "k1", body, 0.0, 0)])
            assert [r.outcome for r in first] == [Outcome.RETRY]
            again = await up.deliver("pool", [StoredMessage(1, "pool", "SNReturnAllocated",
                                                            "k1", body, 0.0, 1)])
            assert [r.outcome for r in again] == [Outcome.DONE]
            applied = [tuple(rec["SNCollection"].SerialNumbers) for name, rec in srv.calls
                       if name == "SNReturnAllocated" and "SNCollection" in rec]
            assert applied == [("S1", "S2"), ("S3", "S4")]  # the part never applied went out
        finally:
            await client.close()


async def test_per_manager_endpoints_and_the_spec_text_namespace(tmp_path: Path) -> None:
    """Pool manager on one server (namespace URI as the specification text writes it), event
    manager on another (the NodeSet's URI): each call goes to its own manager."""
    pools = ReferenceServer(port=0, db_path=tmp_path / "a.sqlite", users={"line": "pw"},
                            cert_dir=tmp_path / "pki-a", namespace_uri=NS_URI_SPEC)
    events = ReferenceServer(port=0, db_path=tmp_path / "b.sqlite", users={"line": "pw"},
                             cert_dir=tmp_path / "pki-b")
    await pools.start()
    await events.start()

    def settings(**kw: object) -> OpenScsSettings:
        return client_settings(tmp_path, [pools, events], events.endpoint, timeout_s=5.0, **kw)

    split = OpenScsClient(settings(endpoints=ManagerEndpoints(pool_manager=pools.endpoint)))
    direct = OpenScsClient(settings())
    try:
        got = await split.sn_request_allocated(2, selection="09506000134352")
        assert got.verdict.decision.name == "DONE" and len(got.serials) == 2
        pool = got.collection.AssociatedPoolID  # type: ignore[union-attr]
        assert {sn for (_, sn) in pools.serial_states()} == set(got.serials)
        assert events.serial_states() == {}
        # a serial number the event server handed out, commissioned through the split client
        own = await direct.sn_request_allocated(1, selection="09506000134352")
        up = OpenScsUpstream(split)
        done = await up.deliver("event", [msg("event", "SIDCommissioningEvent",
                                              {"serials": list(own.serials), "pool": pool,
                                               "context": CONTEXT})])
        assert [r.outcome for r in done] == [Outcome.DONE]
        assert [e["method"] for e in events.events()] == ["SIDCommissioningEvent"]
        assert pools.events() == []
    finally:
        await split.close()
        await direct.close()
        await pools.stop()
        await events.stop()


async def test_epcis_stream_against_the_reference_server(tmp_path: Path) -> None:
    async with reference(tmp_path) as (server, _, client):
        got = await client.sn_request_allocated(3, selection="09506000134352",
                                                sn_format="EPCURI")
        assert got.serials[0].startswith("urn:epc:id:sgtin:")
        doc = build_document([ObjectEvent("commissioning", got.serials,
                                          datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))],
                             datetime(2026, 1, 2, 3, 5, tzinfo=UTC))
        up = OpenScsUpstream(client)
        ok = msg("event", "EPCISStream", {"document": doc.decode(), "sn_format": "EPCURI",
                                          "context": CONTEXT})
        bad = msg("event", "EPCISStream", {"document": "<not-epcis/>", "context": CONTEXT})
        results = await up.deliver("event", [ok, bad])
        assert results[0].outcome is Outcome.DONE, results[0].reason
        assert results[1].outcome is Outcome.PERMANENT and results[1].reason
        assert [f["accepted"] for f in server.files()] == [True, False]
        pool = got.collection.AssociatedPoolID  # type: ignore[union-attr]
        states = server.serial_states(pool)
        assert sorted(states.values()) == [S.Commissioned] * 3


async def test_epcis_document_above_the_limits_is_sent_in_parts(tmp_path: Path) -> None:
    """MaxEPCISObjectEventSIDs 2: a 5-EPC commissioning document goes as 3 files, each with
    its own IdempotencyKey, and every serial number ends up commissioned exactly once."""
    async with reference(tmp_path,
                               limits=Limits(MaxEPCISObjectEventSIDs=2)) as (server, _, client):
        got = await client.sn_request_allocated(5, selection="09506000134352",
                                                sn_format="EPCURI")
        doc = build_document([ObjectEvent("commissioning", got.serials,
                                          datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))],
                             datetime(2026, 1, 2, 3, 5, tzinfo=UTC))
        up = OpenScsUpstream(client)
        big = msg("event", "EPCISStream", {"document": doc.decode(), "sn_format": "EPCURI",
                                           "context": CONTEXT})
        [result] = await up.deliver("event", [big])
        assert result.outcome is Outcome.DONE, result.reason
        files = server.files()
        assert [f["accepted"] for f in files] == [True, True, True]
        pool = got.collection.AssociatedPoolID  # type: ignore[union-attr]
        assert sorted(server.serial_states(pool).values()) == [S.Commissioned] * 5
        # a replay of the whole message is answered per part, nothing applied twice
        [again] = await up.deliver("event", [big])
        assert again.outcome is Outcome.DONE
        assert sorted(server.serial_states(pool).values()) == [S.Commissioned] * 5


async def test_reference_server_client_trust_list_and_x509_users(tmp_path: Path) -> None:
    """The reference server enforces its own side of OPEN-SCS security: an untrusted client
    application certificate is refused until trusted; an X.509 user identity it knows is
    accepted, an unknown one refused."""
    from adapters.openscs import certs

    trusted = tmp_path / "server-trusts"
    trusted.mkdir()
    user_cert, user_key = tmp_path / "robot.pem", tmp_path / "robot_key.pem"
    certs.ensure_application_certificate(user_cert, user_key, "urn:linegate:user:robot")
    other_cert, other_key = tmp_path / "other.pem", tmp_path / "other_key.pem"
    certs.ensure_application_certificate(other_cert, other_key, "urn:linegate:user:other")
    server = ReferenceServer(port=0, db_path=tmp_path / "scs.sqlite", users={"line": "pw"},
                             cert_dir=tmp_path / "pki", trusted_clients=trusted,
                             x509_users={"robot": user_cert})
    await server.start()
    lc = LabelCollection(ID="", Description="", State=S.Commissioned, AssociatedPoolID="",
                         SerialNumbers=("nope",), LabelCollection=())
    try:
        settings = client_settings(tmp_path, [server], server.endpoint, timeout_s=5.0)
        refused = OpenScsClient(settings)
        with pytest.raises((UpstreamError, TransportError), match=r"[Uu]ntrusted"):
            await refused.connect()
        await refused.close()
        (trusted / "gateway.pem").write_bytes(settings.certificate_file.read_bytes())
        for cert, key, ok in ((user_cert, user_key, True), (other_cert, other_key, False)):
            client = OpenScsClient(replace(settings, username=None, password_file=None,
                                           user_certificate_file=cert,
                                           user_private_key_file=key))
            try:
                if ok:
                    await client.connect()
                    # a real call as that user: refused by the state model, not by security
                    result = await client.sid_commissioning_event(lc, context=())
                    assert "BadInvalidState" in result.verdict.reason, result.verdict
                else:
                    with pytest.raises((UpstreamError, TransportError), match="AccessDenied"):
                        await client.connect()
            finally:
                await client.close()
        password_user = OpenScsClient(settings)
        await password_user.connect()  # trusted now: user/password works too
        await password_user.close()
    finally:
        await server.stop()


async def test_no_privilege_stalls_the_stream_with_an_alarm_instead_of_dead_letters(
        tmp_path: Path) -> None:
    """The upstream answers InsufficientPrivilegeToExecute (the gateway's user lost its
    rights): that is about the session, not the data. Dead-lettering every event (as an
    end-to-end review saw) would make them expire after dead_retention_s; the stream waits
    with the upstream_error alarm instead, and drains in order once the rights are back."""
    from gateway.delivery import Delivery
    from gateway.model import NewMessage
    from gateway.outbox import Outbox
    from gateway.settings import DeliverySettings, StoreSettings
    from gateway.status.fields import board_values
    from tests.test_openscs_client_fixture import wait_until

    async with reference(tmp_path) as (server, _proxy, client):
        got = await client.request(S.Allocated, 3, selection="09506000134352")
        assert len(got.serials) == 3, got.verdict
        server.viewers.add("line")  # from now on the user may only look
        outbox = await Outbox.open(StoreSettings(path=tmp_path / "o.sqlite"))
        board = StatusBoard()
        for n, serial in enumerate(got.serials):
            await outbox.submit([NewMessage("event", "SIDCommissioningEvent", f"k{n}",
                                            {"serials": [serial], "pool": "09506000134352",
                                             "pool_id": "GTIN-09506000134352"})])
        delivery = Delivery(outbox, OpenScsUpstream(client), DeliverySettings(
            retry_initial_s=0.05, retry_max_s=0.2), board)
        task = asyncio.create_task(delivery.serve())

        def alarms() -> str:
            return str(board_values(board, None)["alarms"])

        try:
            await wait_until(lambda: "upstream_error" in alarms(), 20)
            assert "InsufficientPrivilegeToExecute" in alarms()
            stats = await outbox.stats()
            assert (stats.dead, stats.pending) == (0, 3)
            server.viewers.discard("line")  # the rights are back
            for _ in range(200):
                if (await outbox.stats()).pending == 0:
                    break
                await asyncio.sleep(0.05)
            stats = await outbox.stats()
            assert (stats.dead, stats.pending) == (0, 0)
            await wait_until(lambda: "upstream_error" not in alarms(), 10)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await outbox.close()
    states = {sn: st for (_, sn), st in server.serial_states("GTIN-09506000134352").items()}
    assert [states[s] for s in got.serials] == [S.Commissioned] * 3
