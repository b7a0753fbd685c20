"""OpenScsClient over real secured loopback sessions: every method, results, limits, tokens."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from asyncua import ua

from adapters.openscs import nodeids
from adapters.openscs import types as t
from adapters.openscs.client import OpenScsClient
from adapters.openscs.results import Decision
from gateway.board import StatusBoard
from gateway.model import (
    Aggregation,
    KeyValue,
    Label,
    LabelCollection,
    ReturnStatus,
    SNCollection,
)
from gateway.model import SerialNumberState as S
from tests.test_openscs_client_fixture import (
    ScsServer,
    label_collection,
    running_server,
    wait_until,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

LC = LabelCollection("P1", "desc", S.Commissioned, "POOL-A", ("A1", "A2"),
                     (Label("A1", (KeyValue("lot", "L7"),)), Label("A2")),
                     (KeyValue("line", "3"),))
SC = SNCollection("P1", "", S.Allocated, "POOL-A", ("B1", "B2", "B3"))
CTX = (KeyValue("Ordnr", "O-1"), KeyValue("IdempotencyKey", "key-1"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def scs(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ScsServer]:
    """One server for the tests that need no special limits (its start costs ~2 s)."""
    async with running_server(tmp_path_factory.mktemp("srv")) as srv:
        yield srv


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(scs: ScsServer,
                 tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[OpenScsClient]:
    c = OpenScsClient(scs.settings(tmp_path_factory.mktemp("client")))
    await c.connect()
    yield c
    await c.close()


async def test_every_method_arrives_decoded(scs: ScsServer, client: OpenScsClient) -> None:
    for state, method in ((S.Unassigned, "SNRequestUnassigned"),
                          (S.Unallocated, "SNRequestUnallocated"),
                          (S.Allocated, "SNRequestAllocated")):
        r = await client.request(state, 4, selection="04012345678901", sn_format="SERIALONLY")
        assert r.verdict.decision is Decision.DONE and len(r.serials) == 4
        rec = scs.recorded(method)[-1]
        assert rec["Count"] == 4 and rec["SNFormat"] == "SERIALONLY"
        assert rec["PoolSelectionCriteria"] == (KeyValue("GTIN", "04012345678901"),)
    assert len(set(scs.recorded("SNRequestAllocated")[-1])) == 5
    for method in nodeids.POOL_METHODS:
        if method.startswith("SNRequest"):
            continue
        res = await client.pool_push(method, SC, selection="GTIN=1;PoolID=x")
        assert res.ok and res.status is ReturnStatus.NoError
        rec = scs.recorded(method)[-1]
        assert rec["SNCollection"] == SC
        assert rec["PoolSelectionCriteria"] == (KeyValue("GTIN", "1"), KeyValue("PoolID", "x"))
    for method in nodeids.EVENT_METHODS:
        coll = (SNCollection("P1", "", S.SNInvalid, "POOL-A", ("C1",))
                if method == "SNInvalidatingEvent" else LC)
        res = await client.event(method, coll, context=CTX, sn_format="EPCURI")
        assert res.ok, res.verdict
        rec = scs.recorded(method)[-1]
        assert rec["collection"] == coll  # inherited ID/State/SerialNumbers included
        assert rec["SNFormat"] == "EPCURI" and rec["OPENSCSEventContext"] == CTX
    agg = (Aggregation(Label("SSCC-1"), LC),)
    for method in nodeids.AGGREGATION_METHODS:
        res = await client.aggregation(method, agg, parent_sn_format="EPCURI",
                                       packed_sn_format="SERIALONLY", context=CTX)
        assert res.ok
        rec = scs.recorded(method)[-1]
        assert rec["AggregationElement"] == agg
        assert (rec["ParentSNFormat"], rec["PackedElementSNFormat"]) == ("EPCURI", "SERIALONLY")
        assert rec["AggregationContext"] == CTX


async def test_typed_wrappers_name_the_right_methods(scs: ScsServer,
                                                     client: OpenScsClient) -> None:
    sc_inv = SNCollection("P1", "", S.SNInvalid, "P", ("Z",))
    calls = [client.sn_return_unallocated(SC), client.sn_return_allocated(SC),
             client.sn_to_unallocated(SC), client.sn_to_allocated(SC), client.sn_to_encoded(SC),
             client.sn_invalidating_event(sc_inv), client.labels_encoding_event(LC),
             client.labels_scrapping_event(LC), client.labels_inspecting_event(LC),
             client.labels_sampling_event(LC), client.sid_commissioning_event(LC),
             client.sid_destroying_event(LC), client.sid_shipping_event(LC),
             client.sid_inspecting_event(LC), client.sid_decommissioning_event(LC),
             client.aggregation_packing_event([Aggregation(Label("S"), LC)]),
             client.aggregation_unpacking_event([Aggregation(Label("S"), LC)])]
    for call in calls:
        assert (await call).ok
    for req in (client.sn_request_unassigned(1), client.sn_request_unallocated(1),
                client.sn_request_allocated(1)):
        assert (await req).serials
    names = [n for n, _ in scs.calls]
    assert set(nodeids.ALL_METHODS) <= set(names)


async def test_epcis_stream_transfers_in_blocks(scs: ScsServer, client: OpenScsClient) -> None:
    doc = b"<epcis:EPCISDocument>" + b"x" * 70_000 + b"</epcis:EPCISDocument>"
    options = t.EventStreamArgument("SERIALONLY", "EPCURI", "SERIALONLY", CTX)
    res = await client.epcis_stream(doc, options)
    assert res.ok, res.verdict
    assert res.calls == 1 + 3 + 1  # generate, 3 blocks of 32 KiB, close
    assert scs.documents == [doc]
    assert scs.recorded("GenerateFileForWrite")[-1]["generateOptions"] == options


async def test_every_return_status_on_an_event(scs: ScsServer,
                                               client: OpenScsClient) -> None:
    retry = {ReturnStatus.UnableToAcceptSerialNumberEvents, ReturnStatus.UnableToAcceptLabelEvents,
             ReturnStatus.UnableToAcceptSIDEvents}
    for status in ReturnStatus:
        scs.script["SIDCommissioningEvent"] = [status]
        res = await client.sid_commissioning_event(LC, context=CTX)
        assert res.status is status
        expected = (Decision.DONE if status is ReturnStatus.NoError
                    else Decision.RETRY if status in retry else Decision.PERMANENT)
        assert res.verdict.decision is expected, status
        if expected is not Decision.DONE:
            assert status.name in res.verdict.reason


BAD_CODES = [
    (ua.StatusCodes.BadInvalidState, Decision.PERMANENT),
    (ua.StatusCodes.BadTypeMismatch, Decision.PERMANENT),
    (ua.StatusCodes.BadInvalidArgument, Decision.PERMANENT),
    (ua.StatusCodes.BadArgumentsMissing, Decision.PERMANENT),
    (ua.StatusCodes.BadTooManyArguments, Decision.PERMANENT),
    (ua.StatusCodes.BadOutOfRange, Decision.PERMANENT),
    (ua.StatusCodes.BadNotImplemented, Decision.PERMANENT),
    (ua.StatusCodes.BadMethodInvalid, Decision.PERMANENT),
    (ua.StatusCodes.BadNodeIdUnknown, Decision.PERMANENT),
    (ua.StatusCodes.BadUserAccessDenied, Decision.PERMANENT),
    (ua.StatusCodes.BadTimeout, Decision.RETRY),
    (ua.StatusCodes.BadResourceUnavailable, Decision.RETRY),
]


async def test_bad_result_codes(scs: ScsServer, client: OpenScsClient) -> None:
    for code, decision in BAD_CODES:
        scs.script["SIDShippingEvent"] = [ua.StatusCode(code)]
        res = await client.sid_shipping_event(LC, context=CTX)
        assert res.verdict.decision is decision, ua.StatusCode(code).name
        assert ua.StatusCode(code).name in res.verdict.reason


async def test_request_statuses(scs: ScsServer, client: OpenScsClient) -> None:
    for status in (ReturnStatus.InvalidSelectionCriteria, ReturnStatus.InvalidSerialNumbersFormat,
                   ReturnStatus.InvalidSerialNumberCollection):
        scs.script["SNRequestAllocated"] = [status]
        r = await client.sn_request_allocated(5)
        assert r.verdict.decision is Decision.PERMANENT and status.name in r.verdict.reason
    scs.script["SNRequestAllocated"] = [ReturnStatus.InsufficientSerialNumbers]
    r = await client.sn_request_allocated(5)  # 5 came back but "insufficient", no token
    assert r.verdict.decision is Decision.PARTIAL
    r = await client.sn_request_allocated(2, token="no-such-token")
    assert r.verdict.decision is Decision.PERMANENT
    assert "InvalidRequestToken" in r.verdict.reason


async def test_request_tokens_are_followed(tmp_path: Path) -> None:
    async with running_server(tmp_path / "srv", per_call=3) as scs:
        c = OpenScsClient(scs.settings(tmp_path))
        try:
            r = await c.sn_request_allocated(10, selection="G")
            assert r.verdict.decision is Decision.DONE
            assert len(r.serials) == len(set(r.serials)) == 10
            recs = scs.recorded("SNRequestAllocated")
            assert recs[0]["RequestToken"] in (None, "")
            assert all(x["RequestToken"] for x in recs[1:]) and len(recs) == 4
        finally:
            await c.close()


async def test_limits_split_calls(tmp_path: Path) -> None:
    async with running_server(tmp_path / "srv", max_requestable=4, max_returnable=2,
                              max_events=3, max_aggregation=1) as scs:
        c = OpenScsClient(scs.settings(tmp_path))
        try:
            r = await c.sn_request_allocated(10)
            assert len(r.serials) == 10 and r.calls == 3
            assert [x["Count"] for x in scs.recorded("SNRequestAllocated")] == [4, 4, 2]
            res = await c.sn_return_allocated(SC)
            assert res.ok and res.calls == 2
            assert [x["SNCollection"].SerialNumbers  # type: ignore[attr-defined]
                    for x in scs.recorded("SNReturnAllocated")] == [("B1", "B2"), ("B3",)]
            serials = tuple(f"S{i}" for i in range(7))
            res = await c.sid_commissioning_event(label_collection(serials, S.Commissioned),
                                                  context=CTX)
            assert res.ok and res.calls == 3
            recs = scs.recorded("SIDCommissioningEvent")
            got = [r["collection"] for r in recs]
            assert [g.SerialNumbers for g in got] == [serials[:3], serials[3:6], serials[6:]]
            assert [tuple(lb.ID for lb in g.LabelCollection) for g in got] == \
                [g.SerialNumbers for g in got]
            keys = [dict((kv.Key, kv.Value) for kv in r["OPENSCSEventContext"])["IdempotencyKey"]
                    for r in recs]
            assert keys == ["key-1#1/3", "key-1#2/3", "key-1#3/3"]
            agg = [Aggregation(Label(f"P{i}"), LC) for i in range(2)]
            res = await c.aggregation_packing_event(agg)
            assert res.ok and res.calls == 2
        finally:
            await c.close()


async def test_a_split_event_stops_at_the_first_refusal(tmp_path: Path) -> None:
    async with running_server(tmp_path / "srv", max_events=2) as scs:
        c = OpenScsClient(scs.settings(tmp_path))
        try:
            scs.script["SIDCommissioningEvent"] = [ReturnStatus.NoError,
                                                   ReturnStatus.UnableToAcceptSIDEvents]
            res = await c.sid_commissioning_event(
                label_collection(("a", "b", "c", "d", "e"), S.Commissioned), context=CTX)
            assert res.verdict.decision is Decision.RETRY and res.calls == 2
            assert len(scs.recorded("SIDCommissioningEvent")) == 2
        finally:
            await c.close()


async def test_reconnects_after_the_server_comes_back(tmp_path: Path) -> None:
    async with running_server(tmp_path / "srv") as scs:
        c = OpenScsClient(scs.settings(tmp_path, reconnect_max_s=0.1, timeout_s=2.0))
        try:
            assert (await c.sid_commissioning_event(LC, context=CTX)).ok
            await scs.stop()
            res = await c.sid_commissioning_event(LC, context=CTX)
            assert res.verdict.decision is Decision.RETRY
            res = await c.sid_commissioning_event(LC, context=CTX)  # fails fast or refused
            assert res.verdict.decision is Decision.RETRY
            assert "connected" not in c.status()[scs.url]
            await scs.start()
            for _ in range(100):  # bounded: the backoff is capped at 0.1 s
                res = await c.sid_commissioning_event(LC, context=CTX)
                if res.ok:
                    break
                await asyncio.sleep(0.05)
            assert res.ok
            assert c.status()[scs.url] == "connected"
        finally:
            await c.close()


async def test_serve_keeps_the_session_and_publishes_its_state(tmp_path: Path) -> None:
    board = StatusBoard()
    async with running_server(tmp_path / "srv") as scs:
        c = OpenScsClient(scs.settings(tmp_path, reconnect_max_s=0.1, timeout_s=2.0),
                          board=board)
        key = f"openscs {scs.url}"
        task = asyncio.create_task(c.serve())
        try:
            await wait_until(lambda: board.adapters.get(key) == "connected")
            await scs.stop()
            await wait_until(lambda: board.adapters.get(key) not in (None, "connected"))
            await scs.start()
            await wait_until(lambda: board.adapters.get(key) == "connected")
            assert (await c.sid_commissioning_event(LC, context=CTX)).ok
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
