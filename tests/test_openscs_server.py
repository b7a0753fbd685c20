"""The reference OPEN-SCS server: address space against the official NodeSet, and behaviour
through a plain asyncua client on loopback carrying the project's own ExtensionObjects."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.ua.uaerrors import UaError
from cryptography.x509.oid import ExtendedKeyUsageOID
from lxml import etree

from adapters.epcis import AggregationEvent, ObjectEvent, build_document
from adapters.openscs import nodeids as N
from adapters.openscs import types as t
from adapters.openscs.ua import from_extension_object, variant
from tests.conftest import ROOT, SHARED
from tests.tooling import free_port
from tools.openscs_server import Limits, PoolConfig, ReferenceServer
from tools.openscs_server.server import INSTANCE_NS

S = t.SerialNumberState
R = t.ReturnStatus
NODESET = SHARED / "reference" / "openscs" / "Opc.Ua.OPENSCS.NodeSet2.xml"
UANS = {
    "u": "http://opcfoundation.org/UA/2011/03/UANodeSet.xsd",
    "x": "http://opcfoundation.org/UA/2008/02/Types.xsd",
}
POOLS = (
    PoolConfig("GTIN-A", "GS1:SGTIN", "9506000", "013435", gtin="09506000134352", capacity=12),
    PoolConfig("SSCC", "GS1:SSCC", "9506000", "1", start=1, capacity=100),
)
GTIN_A = [t.KeyValue("GTIN", "09506000134352")]


def sv(text: str) -> ua.Variant:
    return ua.Variant(text, ua.VariantType.String)


def u32(n: int) -> ua.Variant:
    return ua.Variant(n, ua.VariantType.UInt32)


@dataclass
class Peer:
    client: Client
    ns: int
    ins: int

    def v(self, obj: Any) -> ua.Variant:
        return variant(obj, self.ns)

    async def call(self, manager: str, method: str, *args: ua.Variant) -> list[Any]:
        node = self.client.get_node(ua.NodeId(manager, self.ins))
        out = await node.call_method(ua.QualifiedName(method, self.ns), *args)
        return out if isinstance(out, list) else [out]

    async def request(
        self,
        method: str,
        count: int,
        fmt: str = "EPCURI",
        token: str = "",
        criteria: list[t.KeyValue] | None = None,
        coll: str = "",
    ) -> tuple:
        status, sn, tok = await self.call(
            "PoolManager",
            method,
            sv(coll),
            u32(count),
            sv(fmt),
            self.v(GTIN_A if criteria is None else criteria),
            sv(token),
        )
        body = None if sn is None or sn.Body is None else from_extension_object(sn, self.ns)
        return R(status), body, tok

    async def event(
        self,
        method: str,
        serials: tuple[str, ...],
        fmt: str = "EPCURI",
        key: str = "",
        pool: str = "",
    ) -> R:
        ctx = [t.KeyValue("IdempotencyKey", key)] if key else []
        if method == "SNInvalidatingEvent":
            arg: Any = t.SNCollection("c1", "", S.SNInvalid, pool, serials)
        else:
            arg = t.LabelCollection(
                "c1",
                "",
                S.Commissioned,
                pool,
                serials,
                (t.Label(serials[0], (t.KeyValue("LOT", "L1"),)),),
            )
        (status,) = await self.call("EventManager", method, self.v(arg), sv(fmt), self.v(ctx))
        return R(status)

    async def pack(self, method: str, parent: str, children: tuple[str, ...], key: str = "") -> R:
        el = t.Aggregation(t.Label(parent), t.LabelCollection("", "", S.Commissioned, "", children))
        ctx = [t.KeyValue("IdempotencyKey", key)] if key else []
        (status,) = await self.call(
            "AggregationManager", method, self.v([el]), sv("EPCURI"), sv("EPCURI"), self.v(ctx)
        )
        return R(status)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ReferenceServer]:
    srv = ReferenceServer(
        port=free_port(),
        db_path=tmp_path / "scs.sqlite",
        allow_none=True,
        users={"line": "pw", "guest": "pw"},
        viewers=["guest"],
        pools=POOLS,
        limits=Limits(MaxSNRequestable=5, MaxEvents=4, MaxAggregationEvents=2, MaxSNPushable=3),
    )
    await srv.start()
    yield srv
    await srv.stop()


async def connect(srv: ReferenceServer, user: str = "line") -> tuple[Client, Peer]:
    client = Client(srv.endpoint)
    client.set_user(user)
    client.set_password("pw")
    await client.connect()
    ns = await client.get_namespace_index(N.NS_URI_NODESET)
    ins = await client.get_namespace_index(INSTANCE_NS)
    return client, Peer(client, ns, ins)


@pytest.fixture
async def peer(server: ReferenceServer) -> AsyncIterator[Peer]:
    client, p = await connect(server)
    yield p
    await client.disconnect()


# --------------------------------------------------------------------------- NodeSet comparison


def _official() -> dict[str, etree._Element]:
    root = etree.parse(str(NODESET)).getroot()
    return {n.get("NodeId"): n for n in root if isinstance(n.tag, str) and n.get("NodeId")}


def _ident(nodeid_text: str) -> tuple[bool, int]:
    """(in the OPEN-SCS namespace, numeric id) of a NodeSet NodeId or alias."""
    aliases = {
        "String": 12,
        "UInt32": 7,
        "Duration": 290,
        "EnumValueType": 7594,
        "Argument": 296,
        "NodeId": 17,
    }
    if nodeid_text in aliases:
        return False, aliases[nodeid_text]
    if nodeid_text.startswith("ns=1;i="):
        return True, int(nodeid_text[7:])
    if nodeid_text.startswith("i="):
        return False, int(nodeid_text[2:])
    names = {
        "OPENSCSKeyValueDataType": N.KeyValueDataType,
        "OPENSCSSIDClassPropertyDataType": N.SIDClassPropertyDataType,
    }
    return True, names[nodeid_text]


def _mine(p: Peer, nodeid_text: str) -> ua.NodeId:
    openscs, ident = _ident(nodeid_text)
    return ua.NodeId(ident, p.ns if openscs else 0)


def _qname(p: Peer, text: str) -> ua.QualifiedName:
    if text.startswith("1:"):
        return ua.QualifiedName(text[2:], p.ns)
    return ua.QualifiedName(text, 0)


async def _children(node: Any) -> dict[str, Any]:
    refs = await node.get_references(
        refs=ua.ObjectIds.HierarchicalReferences, direction=ua.BrowseDirection.Forward
    )
    return {r.NodeId.to_string(): r for r in refs}


async def test_types_objects_and_signatures_match_official_nodeset(peer: Peer) -> None:
    official = _official()
    checked_methods = 0
    relevant = {n for n, el in official.items() if etree.QName(el).localname == "UAObjectType"}
    for _ in range(3):  # the ObjectTypes, their members and the members' members
        relevant |= {n for n, el in official.items() if el.get("ParentNodeId") in relevant}
    relevant |= {
        n
        for n, el in official.items()
        if etree.QName(el).localname == "UADataType"
        and el.get("BrowseName").startswith("1:OPENSCS")
    }
    for nid, el in official.items():
        kind = etree.QName(el).localname
        bname = el.get("BrowseName")
        if nid in relevant:
            node = peer.client.get_node(_mine(peer, nid))
            assert await node.read_browse_name() == _qname(peer, bname), nid
            if kind == "UAVariable" and bname in {"InputArguments", "OutputArguments"}:
                mine = await node.read_value()
                theirs = list(el.iter(f"{{{UANS['x']}}}Argument"))
                assert [a.Name for a in mine] == [
                    a.findtext("x:Name", namespaces=UANS) for a in theirs
                ], nid
                for a, o in zip(mine, theirs, strict=True):
                    dt = o.findtext("x:DataType/x:Identifier", namespaces=UANS)
                    assert a.DataType == _mine(peer, dt), (nid, a.Name)
                    assert a.ValueRank == int(o.findtext("x:ValueRank", namespaces=UANS)), a.Name
                checked_methods += 1
            elif kind == "UAVariable":
                assert await node.read_data_type() == _mine(peer, el.get("DataType")), bname
                assert await node.read_value_rank() == int(el.get("ValueRank", "-1")), bname
            if kind in {"UAObjectType", "UAMethod", "UAObject"}:
                mine_children = await _children(node)
                for ref in el.find("u:References", UANS):
                    if (
                        ref.get("ReferenceType") in {"HasComponent", "HasProperty"}
                        and ref.get("IsForward") != "false"
                    ):
                        assert _mine(peer, ref.text).to_string() in mine_children, (nid, ref.text)
            rules = [
                r.text
                for r in el.find("u:References", UANS)
                if r.get("ReferenceType") == "HasModellingRule"
            ]
            if rules:
                mine_rules = await node.get_referenced_nodes(ua.ObjectIds.HasModellingRule)
                assert [r.nodeid for r in mine_rules] == [_mine(peer, rules[0])], nid
    assert checked_methods == 2 * 20 + 6  # 20 methods and the 3 EPCISStream methods, in+out


async def test_data_type_definitions_and_encodings(peer: Peer) -> None:
    official = _official()
    for nid, el in official.items():
        if etree.QName(el).localname != "UADataType" or "JobOrder" in el.get("BrowseName"):
            continue
        node = peer.client.get_node(_mine(peer, nid))
        abstract = (await node.read_attribute(ua.AttributeIds.IsAbstract)).Value.Value
        assert abstract == (el.get("IsAbstract") == "true"), nid
        refs = {
            r.get("ReferenceType"): r.text
            for r in el.find("u:References", UANS)
            if r.get("ReferenceType") == "HasSubtype"
        }
        parent = await node.get_parent()
        assert parent.nodeid == _mine(peer, refs["HasSubtype"]), nid
        definition = el.find("u:Definition", UANS)
        mine = (await node.read_attribute(ua.AttributeIds.DataTypeDefinition)).Value.Value
        if definition is None:
            assert isinstance(mine, ua.StructureDefinition)  # SNCollection: Collection fields
            assert [f.Name for f in mine.Fields][-1] == "SerialNumbers"
            continue
        theirs = [(f.get("Name"), f.get("IsOptional") == "true") for f in definition]
        if isinstance(mine, ua.EnumDefinition):
            assert [(f.Name, f.Value) for f in mine.Fields] == [
                (f.get("Name"), int(f.get("Value"))) for f in definition
            ]
            continue
        ours = [(f.Name, f.IsOptional) for f in mine.Fields]
        assert ours[-len(theirs) :] == theirs, nid  # own fields follow the inherited ones
        encodings = [
            r.text for r in el.find("u:References", UANS) if r.get("ReferenceType") == "HasEncoding"
        ]
        binary = [e for e in encodings if official[e].get("BrowseName") == "Default Binary"]
        enc = await node.get_referenced_nodes(ua.ObjectIds.HasEncoding)
        assert [e.nodeid for e in enc] == [_mine(peer, binary[0])], nid


async def test_instances_under_openscs_objects(peer: Peer) -> None:
    objects = peer.client.nodes.objects
    folder = await objects.get_child(f"{peer.ns}:OPENSCSObjects")
    types = {}
    for child in await folder.get_children():
        types[(await child.read_browse_name()).Name] = await child.read_type_definition()
    assert types["PoolManager"] == ua.NodeId(N.PoolManagerObjectType, peer.ns)
    assert types["EventManager"] == ua.NodeId(N.EventManagerObjectType, peer.ns)
    assert types["AggregationManager"] == ua.NodeId(N.AggregationManagerObjectType, peer.ns)
    assert types["GS1 SGTIN"] == types["GS1 SSCC"] == ua.NodeId(N.SIDClassObjectType, peer.ns)
    pm = await folder.get_child(f"{peer.ns}:PoolManager")
    assert await (await pm.get_child(f"{peer.ns}:SNFormat")).read_value() == [
        "SERIALONLY",
        "EPCURI",
    ]
    assert await (await pm.get_child(f"{peer.ns}:MaxSNRequestable")).read_value() == 5
    crit = await (await pm.get_child(f"{peer.ns}:PoolSelectionCriteria")).read_value()
    kvs = [from_extension_object(c, peer.ns, t.KeyValue) for c in crit]
    assert t.KeyValue("GTIN", "09506000134352") in kvs
    sscc = await folder.get_child(f"{peer.ns}:GS1 SSCC")
    assert await (await sscc.get_child(f"{peer.ns}:SIDClassID")).read_value() == "GS1:SSCC"
    em = await folder.get_child(f"{peer.ns}:EventManager")
    stream = await em.get_child(f"{peer.ns}:EPCISStream")
    assert await stream.read_type_definition() == ua.NodeId(15744)


# --------------------------------------------------------------------------- behaviour


async def test_request_tokens_partial_and_follow_on(server: ReferenceServer, peer: Peer) -> None:
    status, coll, token = await peer.request("SNRequestAllocated", 8)
    assert status == R.NoError and len(coll.SerialNumbers) == 5 and token
    assert coll.State == S.Allocated and coll.AssociatedPoolID == "GTIN-A"
    assert coll.SerialNumbers[0] == "urn:epc:id:sgtin:9506000.013435.100000"
    status, coll2, token2 = await peer.request("SNRequestAllocated", 0, token=token)
    assert (status, len(coll2.SerialNumbers), token2) == (R.NoError, 3, "")
    assert (await peer.request("SNRequestAllocated", 1, token=token))[0] == R.InvalidRequestToken
    # 12 in the pool, 8 handed out: 4 left of 10 wanted -> partial, token for the rest
    status, coll3, token3 = await peer.request("SNRequestAllocated", 10, fmt="SERIALONLY")
    assert status == R.InsufficientSerialNumbers and coll3.SerialNumbers[0] == "100008"
    assert len(coll3.SerialNumbers) == 4 and token3
    status, empty, token4 = await peer.request("SNRequestAllocated", 0, token=token3)
    assert (status, empty, bool(token4)) == (R.InsufficientSerialNumbers, None, True)
    # return two allocated numbers: they are free again and serve the follow-on request
    back = t.SNCollection("GTIN-A", "", S.Allocated, "GTIN-A", coll3.SerialNumbers[:2])
    (st,) = await peer.call(
        "PoolManager", "SNReturnAllocated", peer.v(back), peer.v(GTIN_A), sv("SERIALONLY")
    )
    assert st == R.NoError
    status, coll5, _ = await peer.request("SNRequestAllocated", 0, token=token4)
    assert status == R.InsufficientSerialNumbers
    assert set(coll5.SerialNumbers) == set(coll3.SerialNumbers[:2])  # token keeps the format
    states = server.serial_states("GTIN-A")
    assert len(states) == 12 and set(states.values()) == {int(S.Allocated)}


async def test_selection_formats_limits_and_argument_checks(
    server: ReferenceServer, peer: Peer
) -> None:
    assert (await peer.request("SNRequestUnassigned", 1, criteria=[t.KeyValue("X", "1")]))[0] == (
        R.InvalidSelectionCriteria
    )
    assert (await peer.request("SNRequestUnassigned", 1, coll="nope"))[0] == (
        R.InvalidSerialNumberCollection
    )
    assert (await peer.request("SNRequestUnassigned", 1, fmt="LITERAL"))[0] == (
        R.InvalidSerialNumbersFormat
    )
    status, coll, _ = await peer.request("SNRequestUnallocated", 2, criteria=[], fmt="SERIALONLY")
    assert status == R.NoError and coll.State == S.Unallocated
    status, sscc, _ = await peer.request(
        "SNRequestUnassigned", 1, fmt="EPCURI", criteria=[t.KeyValue("SIDClass", "GS1:SSCC")]
    )
    assert sscc.SerialNumbers == ("urn:epc:id:sscc:9506000.1000000001",)
    with pytest.raises(ua.uaerrors.BadOutOfRange):
        await peer.request("SNRequestAllocated", 0)
    with pytest.raises(ua.uaerrors.BadOutOfRange):  # MaxEvents = 4
        await peer.event("SIDCommissioningEvent", tuple(f"s{i}" for i in range(5)), "SERIALONLY")
    push = t.SNCollection("GTIN-A", "", S.Unallocated, "GTIN-A", ("a", "b", "c", "d"))
    with pytest.raises(ua.uaerrors.BadOutOfRange):  # MaxSNPushable = 3
        await peer.call(
            "PoolManager", "SNtoUnallocated", peer.v(push), peer.v([]), sv("SERIALONLY")
        )
    with pytest.raises(ua.uaerrors.BadTypeMismatch):
        await peer.call(
            "EventManager", "SIDCommissioningEvent", peer.v(push), sv("SERIALONLY"), peer.v([])
        )
    with pytest.raises(ua.uaerrors.BadArgumentsMissing):
        await peer.call("EventManager", "SIDCommissioningEvent", sv("x"))
    with pytest.raises(ua.uaerrors.BadTooManyArguments):
        await peer.call("PoolManager", "SNtoEncoded", sv(""), sv(""), sv(""), sv(""))
    server.set_accepting(False)
    assert await peer.event("SIDShippingEvent", ("x",), "SERIALONLY") == (R.UnableToAcceptSIDEvents)
    assert await peer.event("LabelsEncodingEvent", ("x",), "SERIALONLY") == (
        R.UnableToAcceptLabelEvents
    )
    assert await peer.event("SNInvalidatingEvent", ("x",), "SERIALONLY") == (
        R.UnableToAcceptSerialNumberEvents
    )
    server.set_accepting(True)
    guest, gpeer = await connect(server, "guest")
    try:
        assert (await gpeer.request("SNRequestAllocated", 1))[0] == (
            R.InsufficientPrivilegeToExecute
        )
        assert await gpeer.event("SIDShippingEvent", ("x",), "SERIALONLY") == (
            R.InsufficientPrivilegeToExecute
        )
    finally:
        await guest.disconnect()
    assert server.events() == []  # nothing refused was recorded


async def test_state_model_is_enforced(server: ReferenceServer, peer: Peer) -> None:
    never = "urn:epc:id:sgtin:9506000.013435.100011"
    with pytest.raises(ua.uaerrors.BadInvalidState):
        await peer.event("SIDCommissioningEvent", (never,))
    _, coll, _ = await peer.request("SNRequestAllocated", 4)
    a, b, c, d = coll.SerialNumbers
    with pytest.raises(ua.uaerrors.BadInvalidState):  # labels need Encoded first
        await peer.event("LabelsScrappingEvent", (a,))
    assert await peer.event("LabelsEncodingEvent", (a, b)) == R.NoError
    assert await peer.event("LabelsInspectingEvent", (a,)) == R.NoError
    assert await peer.event("LabelsScrappingEvent", (b,)) == R.NoError
    with pytest.raises(ua.uaerrors.BadInvalidState):  # sampling needs an Encoded label
        await peer.event("LabelsSamplingEvent", (d,))
    assert await peer.event("LabelsEncodingEvent", (d,)) == R.NoError
    assert await peer.event("LabelsSamplingEvent", (d,)) == R.NoError
    assert await peer.event("SIDCommissioningEvent", (a, c)) == R.NoError
    _, sscc, _ = await peer.request(
        "SNRequestAllocated", 1, criteria=[t.KeyValue("SIDClass", "GS1:SSCC")]
    )
    parent = sscc.SerialNumbers[0]
    with pytest.raises(ua.uaerrors.BadInvalidState):  # parent not commissioned yet
        await peer.pack("AggregationPackingEvent", parent, (a,))
    assert await peer.event("SIDCommissioningEvent", (parent,)) == R.NoError
    with pytest.raises(ua.uaerrors.BadInvalidState):  # b was scrapped, never commissioned
        await peer.pack("AggregationPackingEvent", parent, (a, b))
    assert await peer.pack("AggregationPackingEvent", parent, (a, c)) == R.NoError
    with pytest.raises(ua.uaerrors.BadInvalidState):  # already packed
        await peer.pack("AggregationPackingEvent", parent, (a,))
    unknown_parent = "urn:epc:id:sscc:9506000.1000000099"
    assert await peer.pack("AggregationPackingEvent", unknown_parent, (a,)) == (
        R.UnknownAggregationSID
    )
    assert await peer.pack("AggregationUnpackingEvent", parent, (c,)) == R.NoError
    assert await peer.event("SIDShippingEvent", (parent,)) == R.NoError
    assert await peer.event("SIDInspectingEvent", (c,)) == R.NoError
    assert await peer.event("SIDDecommissioningEvent", (c,)) == R.NoError
    assert await peer.event("SIDDestroyingEvent", (c,)) == R.NoError
    with pytest.raises(ua.uaerrors.BadInvalidState):
        await peer.event("SIDShippingEvent", (c,))
    back = t.SNCollection("", "", S.Allocated, "GTIN-A", (a.rsplit(".", 1)[1],))
    with pytest.raises(ua.uaerrors.BadInvalidState):  # a is commissioned, not allocated
        await peer.call(
            "PoolManager", "SNReturnAllocated", peer.v(back), peer.v([]), sv("SERIALONLY")
        )
    states = server.serial_states()
    bare = {k[1]: S(v) for k, v in states.items()}
    assert bare[a.rsplit(".", 1)[1]] == S.Commissioned
    assert bare[b.rsplit(".", 1)[1]] == S.LabelScrapped
    assert bare[c.rsplit(".", 1)[1]] == S.Destroyed
    assert bare[d.rsplit(".", 1)[1]] == S.LabelSampled
    assert bare[parent.rsplit(".", 1)[1]] == S.Released
    recorded = [e["method"] for e in server.events()]
    assert recorded.count("SIDCommissioningEvent") == 2
    first = next(e for e in server.events() if e["method"] == "LabelsEncodingEvent")
    assert first["payload"]["args"]["SerialNumbers"] == [a, b]
    assert first["payload"]["args"]["State"] == int(S.Commissioned)


async def test_pushes_and_invalidation(server: ReferenceServer, peer: Peer) -> None:
    def coll(*sns: str) -> ua.Variant:
        return peer.v(t.SNCollection("GTIN-A", "", S.Unallocated, "GTIN-A", sns))

    for method, sns in (
        ("SNtoUnallocated", ("X1", "X2")),
        ("SNtoAllocated", ("X1",)),
        ("SNtoEncoded", ("X1", "X3")),
    ):
        (st,) = await peer.call("PoolManager", method, coll(*sns), peer.v(GTIN_A), sv("SERIALONLY"))
        assert st == R.NoError, method
    (st,) = await peer.call(
        "PoolManager", "SNtoAllocated", coll("bad serial!"), peer.v(GTIN_A), sv("SERIALONLY")
    )
    assert st == R.InvalidSerialNumbersFormat
    (st,) = await peer.call(
        "PoolManager", "SNReturnUnallocated", coll("X2"), peer.v([]), sv("SERIALONLY")
    )
    assert st == R.NoError
    assert await peer.event("SNInvalidatingEvent", ("X2",), "SERIALONLY", pool="GTIN-A") == (
        R.NoError
    )
    states = server.serial_states("GTIN-A")
    assert states == {
        ("GTIN-A", "X1"): int(S.Encoded),
        ("GTIN-A", "X2"): int(S.SNInvalid),
        ("GTIN-A", "X3"): int(S.Encoded),
    }


async def test_idempotency_key_applies_once(server: ReferenceServer, peer: Peer) -> None:
    _, coll, _ = await peer.request("SNRequestAllocated", 2)
    sns = coll.SerialNumbers
    assert await peer.event("SIDCommissioningEvent", sns, key="order-1#0") == R.NoError
    assert await peer.event("SIDCommissioningEvent", sns, key="order-1#0") == R.NoError
    with pytest.raises(ua.uaerrors.BadInvalidState):  # without the key it is a second apply
        await peer.event("SIDCommissioningEvent", sns)
    with pytest.raises(ua.uaerrors.BadInvalidArgument):  # same key, other content
        await peer.event("SIDCommissioningEvent", sns[:1], key="order-1#0")
    assert [e["key"] for e in server.events()] == ["order-1#0"]
    assert server.idempotency_keys() == {"order-1#0": "SIDCommissioningEvent"}


async def _send_file(peer: Peer, doc: bytes, key: str = "") -> None:
    stream = peer.client.get_node(ua.NodeId("EventManager.EPCISStream", peer.ins))
    options = t.EventStreamArgument(
        "EPCURI", "EPCURI", "EPCURI", (t.KeyValue("IdempotencyKey", key),) if key else ()
    )
    file_id, handle = await stream.call_method("0:GenerateFileForWrite", peer.v(options))
    file_node = peer.client.get_node(file_id)
    for i in range(0, len(doc), 1000):  # Write in blocks
        await file_node.call_method(
            "0:Write", u32(handle), ua.Variant(doc[i : i + 1000], ua.VariantType.ByteString)
        )
    await stream.call_method("0:CloseAndCommit", u32(handle))


async def test_epcis_stream_file_accepted_and_rejected(server: ReferenceServer, peer: Peer) -> None:
    _, coll, _ = await peer.request("SNRequestAllocated", 2)
    _, sscc, _ = await peer.request(
        "SNRequestAllocated", 1, criteria=[t.KeyValue("SIDClass", "GS1:SSCC")]
    )
    t0 = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)
    sec = timedelta(seconds=1)
    good = build_document(
        [
            ObjectEvent("commissioning", coll.SerialNumbers, t0),
            ObjectEvent("commissioning", sscc.SerialNumbers, t0 + sec),
            AggregationEvent("packing", sscc.SerialNumbers[0], coll.SerialNumbers, t0 + 2 * sec),
            ObjectEvent("shipping", sscc.SerialNumbers, t0 + 3 * sec),
        ],
        created=t0 + 4 * sec,
    )
    broken = good.replace(b"<action>OBSERVE</action>", b"<action>SHIP</action>")
    with pytest.raises(ua.uaerrors.BadInvalidArgument):
        await _send_file(peer, broken)
    assert set(server.serial_states("GTIN-A").values()) == {int(S.Allocated)}  # nothing applied
    await _send_file(peer, good, key="file-1")
    await _send_file(peer, good, key="file-1")  # replay: NoError, not applied twice
    states = server.serial_states()
    assert states[("SSCC", sscc.SerialNumbers[0].rsplit(".", 1)[1])] == int(S.Released)
    assert {states[("GTIN-A", s.rsplit(".", 1)[1])] for s in coll.SerialNumbers} == {
        int(S.Commissioned)
    }
    files = server.files()
    assert [f["accepted"] for f in files] == [False, True]
    assert any("'SHIP' is not ADD" in p for p in files[0]["problems"])
    assert files[1]["options"]["EventContext"] == [["IdempotencyKey", "file-1"]]
    stream = peer.client.get_node(ua.NodeId("EventManager.EPCISStream", peer.ins))
    with pytest.raises(ua.uaerrors.BadNotImplemented):
        await stream.call_method("0:GenerateFileForRead", peer.v(t.EventStreamArgument("", "", "")))
    with pytest.raises(ua.uaerrors.BadInvalidArgument):
        await stream.call_method("0:CloseAndCommit", u32(999))


async def test_state_and_tokens_survive_restart(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = dict(
        db_path=tmp_path / "scs.sqlite",
        allow_none=True,
        users={"line": "pw"},
        pools=POOLS,
        limits=Limits(MaxSNRequestable=5),
    )
    first = ReferenceServer(port=free_port(), **kwargs)
    await first.start()
    client, p = await connect(first)
    _, coll, token = await p.request("SNRequestAllocated", 7)
    await client.disconnect()
    await first.stop()
    second = ReferenceServer(port=free_port(), **kwargs)
    await second.start()
    try:
        client, p = await connect(second)
        status, rest, _ = await p.request("SNRequestAllocated", 0, token=token)
        assert status == R.NoError and len(rest.SerialNumbers) == 2
        assert not set(rest.SerialNumbers) & set(coll.SerialNumbers)
        assert await p.event("SIDCommissioningEvent", coll.SerialNumbers[:1]) == R.NoError
        await client.disconnect()
    finally:
        await second.stop()


# --------------------------------------------------------------------------- security


async def _client_cert(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "client_cert.der", tmp_path / "client_key.pem"
    await setup_self_signed_certificate(
        key,
        cert,
        "urn:linegate:test-client",
        "localhost",
        [ExtendedKeyUsageOID.CLIENT_AUTH],
        {"commonName": "t"},
    )
    return cert, key


@pytest.fixture
async def secure_server(tmp_path: Path) -> AsyncIterator[ReferenceServer]:
    srv = ReferenceServer(
        port=free_port(),
        db_path=tmp_path / "sec.sqlite",
        users={"line": "pw"},
        cert_dir=tmp_path / "pki",
    )
    await srv.start()
    yield srv
    await srv.stop()


@pytest.mark.parametrize(
    "policy",
    ["Basic256Sha256,SignAndEncrypt", "Basic256Sha256,Sign", "Aes128Sha256RsaOaep,SignAndEncrypt"],
)
async def test_secure_sessions(secure_server: ReferenceServer, tmp_path: Path, policy: str) -> None:
    assert secure_server.cert_path.exists()  # generated into the given dir
    cert, key = await _client_cert(tmp_path)
    client = Client(secure_server.endpoint)
    client.application_uri = "urn:linegate:test-client"
    await client.set_security_string(f"{policy},{cert},{key},{secure_server.cert_path}")
    client.set_user("line")
    client.set_password("pw")
    async with client:
        ns = await client.get_namespace_index(N.NS_URI_NODESET)
        ins = await client.get_namespace_index(INSTANCE_NS)
        status, coll, _ = await Peer(client, ns, ins).request("SNRequestAllocated", 2)
        assert status == R.NoError and len(coll.SerialNumbers) == 2


async def test_none_anonymous_and_bad_password_refused(
    secure_server: ReferenceServer, tmp_path: Path
) -> None:
    client = Client(secure_server.endpoint, timeout=5)
    client.set_user("line")
    client.set_password("pw")
    with pytest.raises(UaError, match=r"No matching endpoints.*SecurityPolicy#None"):
        await client.connect()  # SecurityPolicy None is not offered (7.4.1)
    client.disconnect_socket()
    cert, key = await _client_cert(tmp_path)
    for user, refused in (
        ("line", ua.uaerrors.BadUserAccessDenied),
        (None, ua.uaerrors.BadIdentityTokenRejected),
    ):
        client = Client(secure_server.endpoint, timeout=5)
        client.application_uri = "urn:linegate:test-client"
        await client.set_security_string(
            f"Basic256Sha256,SignAndEncrypt,{cert},{key},{secure_server.cert_path}"
        )
        if user:
            client.set_user(user)
            client.set_password("wrong")
        with pytest.raises(refused):
            await client.connect()
        client.disconnect_socket()


# --------------------------------------------------------------------------- command line


async def test_command_line_server_runs_and_dies_by_sigkill(tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "server.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.openscs_server",
        "--port",
        str(port),
        "--db",
        str(tmp_path / "cli.sqlite"),
        "--demo",
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=log,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        for _ in range(200):  # bounded: wait for the listening socket
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        client = Client(f"opc.tcp://127.0.0.1:{port}/openscs")
        async with client:
            ns = await client.get_namespace_index(N.NS_URI_NODESET)
            ins = await client.get_namespace_index(INSTANCE_NS)
            status, coll, _ = await Peer(client, ns, ins).request(
                "SNRequestAllocated", 1, criteria=[]
            )
            assert status == R.NoError and coll.SerialNumbers
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    assert b"OPEN-SCS reference server on" in (tmp_path / "server.log").read_bytes()
