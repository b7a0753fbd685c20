"""The OPEN-SCS address space of clause 6, built node by node by the project's own code.

Types (DataTypes with their DefaultBinary encodings, the four ObjectTypes with their method
declarations, InputArguments/OutputArguments and properties) get the numeric NodeIds of
NodeIds.csv in the OPEN-SCS namespace; instances live under Objects/OPENSCSObjects in the
server's own namespace. Nothing is loaded from the official NodeSet.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from asyncua import Server, ua

from adapters.openscs import nodeids as N
from adapters.openscs import types as t
from adapters.openscs.ua import to_extension_objects

STRING, UINT32, BASEDATA, NODEID, BYTESTRING, DURATION = 12, 7, 24, 17, 15, 290
MANDATORY, OPTIONAL = 78, 80


@dataclass(frozen=True)
class Arg:
    name: str
    datatype: int
    openscs: bool = False  # DataType in the OPEN-SCS namespace
    array: bool = False


_KV = Arg("", N.KeyValueDataType, True, True)
_RET = Arg("ReturnStatus", N.ReturnEnum, True)


def _a(name: str, proto: Arg) -> Arg:
    return Arg(name, proto.datatype, proto.openscs, proto.array)


_REQ_IN = [
    Arg("SNCollectionID", STRING),
    Arg("Count", UINT32),
    Arg("SNFormat", STRING),
    _a("PoolSelectionCriteria", _KV),
    Arg("RequestToken", STRING),
]
_REQ_OUT = [
    _RET,
    Arg("SNCollection", N.SNCollectionDataType, True),
    Arg("ReturnedRequestToken", STRING),
]
_PUSH_IN = [
    Arg("SNCollection", N.SNCollectionDataType, True),
    _a("PoolSelectionCriteria", _KV),
    Arg("SNFormat", STRING),
]
_LABEL_IN = [
    Arg("LabelCollection", N.LabelCollectionDataType, True),
    Arg("SNFormat", STRING),
    _a("OPENSCSEventContext", _KV),
]
_AGG_IN = [
    Arg("AggregationElement", N.AggregationDataType, True, True),
    Arg("ParentSNFormat", STRING),
    Arg("PackedElementSNFormat", STRING),
    _a("AggregationContext", _KV),
]

SIGNATURES: dict[str, tuple[list[Arg], list[Arg]]] = {
    **{m: (_REQ_IN, _REQ_OUT) for m in N.POOL_METHODS if m.startswith("SNRequest")},
    **{m: (_PUSH_IN, [_RET]) for m in N.POOL_METHODS if not m.startswith("SNRequest")},
    **{m: (_LABEL_IN, [_RET]) for m in N.EVENT_METHODS},
    "SNInvalidatingEvent": (
        [
            Arg("SNCollection", N.SNCollectionDataType, True),
            Arg("SNFormat", STRING),
            _a("OPENSCSEventContext", _KV),
        ],
        [_RET],
    ),
    **{m: (_AGG_IN, [_RET]) for m in N.AGGREGATION_METHODS},
}
STREAM_SIGNATURES = {
    "GenerateFileForWrite": (
        [Arg("GenerateOptions", BASEDATA)],
        [Arg("FileNodeId", NODEID), Arg("FileHandle", UINT32)],
    ),
    "GenerateFileForRead": (
        [Arg("GenerateOptions", BASEDATA)],
        [
            Arg("FileNodeId", NODEID),
            Arg("FileHandle", UINT32),
            Arg("CompletionStateMachine", NODEID),
        ],
    ),
    "CloseAndCommit": ([Arg("FileHandle", UINT32)], [Arg("CompletionStateMachine", NODEID)]),
}
STREAM_IDS = {
    "GenerateFileForWrite": (
        N.EPCISStream_GenerateFileForWrite,
        N.EPCISStream_GenerateFileForWrite_InputArguments,
        N.EPCISStream_GenerateFileForWrite_OutputArguments,
    ),
    "GenerateFileForRead": (
        N.EPCISStream_GenerateFileForRead,
        N.EPCISStream_GenerateFileForRead_InputArguments,
        N.EPCISStream_GenerateFileForRead_OutputArguments,
    ),
    "CloseAndCommit": (
        N.EPCISStream_CloseAndCommit,
        N.EPCISStream_CloseAndCommit_InputArguments,
        N.EPCISStream_CloseAndCommit_OutputArguments,
    ),
}
# FileType method declarations (ns=0) and their signatures, for the temporary file objects
FILE_METHODS = {
    "Write": (11588, [Arg("FileHandle", UINT32), Arg("Data", BYTESTRING)], []),
    "Close": (11583, [Arg("FileHandle", UINT32)], []),
    "Read": (11585, [Arg("FileHandle", UINT32), Arg("Length", 6)], [Arg("Data", BYTESTRING)]),
    "GetPosition": (11590, [Arg("FileHandle", UINT32)], [Arg("Position", 9)]),
}
_STRUCT_FIELDS = {  # DataType id -> (domain class, base type id, abstract)
    N.KeyValueDataType: (t.KeyValue, 22, False),
    N.LabelDataType: (t.Label, 22, False),
    N.LabelPropertyDataType: (t.LabelProperty, 22, False),
    N.SIDClassPropertyDataType: (t.SIDClassProperty, 22, False),
    N.CollectionDataType: (t.SNCollection, 22, True),
    N.SNCollectionDataType: (t.SNCollection, N.CollectionDataType, False),
    N.LabelCollectionDataType: (t.LabelCollection, N.CollectionDataType, False),
    N.AggregationDataType: (t.Aggregation, 22, False),
    N.EventStreamArgumentDataType: (t.EventStreamArgument, 22, False),
}


class Builder:
    """Adds nodes through the server's admin session."""

    def __init__(self, server: Server, ns: int, ins: int) -> None:
        self.server = server
        self.ns = ns
        self.ins = ins

    def nid(self, ident: int | str, openscs: bool = True) -> ua.NodeId:
        return ua.NodeId(ident, self.ns if openscs else self.ins)

    async def add(
        self,
        nodeid: ua.NodeId,
        name: str,
        cls: ua.NodeClass,
        attrs: Any,
        parent: ua.NodeId,
        ref: int,
        typedef: int | ua.NodeId = 0,
        ns0_name: bool = False,
    ) -> ua.NodeId:
        item = ua.AddNodesItem()
        item.RequestedNewNodeId = nodeid
        item.BrowseName = ua.QualifiedName(name, 0 if ns0_name else self.ns)
        item.NodeClass = cls
        item.ParentNodeId = parent
        item.ReferenceTypeId = ua.NodeId(ref)
        item.TypeDefinition = typedef if isinstance(typedef, ua.NodeId) else ua.NodeId(typedef)
        attrs.DisplayName = ua.LocalizedText(name)
        item.NodeAttributes = attrs
        (res,) = await self.server.iserver.isession.add_nodes([item])
        res.StatusCode.check()
        return res.AddedNodeId

    async def ref(self, source: ua.NodeId, ref: int, target: ua.NodeId) -> None:
        item = ua.AddReferencesItem(
            SourceNodeId=source,
            ReferenceTypeId=ua.NodeId(ref),
            IsForward=True,
            TargetNodeId=target,
            TargetNodeClass=ua.NodeClass.Unspecified,
        )
        (res,) = await self.server.iserver.isession.add_references([item])
        res.check()

    async def prop(
        self,
        parent: ua.NodeId,
        nodeid: ua.NodeId,
        name: str,
        value: Any,
        vtype: ua.VariantType,
        datatype: ua.NodeId,
        array: bool = False,
        rule: int | None = None,
        ns0_name: bool = False,
    ) -> ua.NodeId:
        attrs = ua.VariableAttributes()
        attrs.Value = ua.Variant(value, vtype, is_array=array or None)
        attrs.DataType = datatype
        attrs.ValueRank = 1 if array else -1
        attrs.ArrayDimensions = [0] if array else []
        attrs.AccessLevel = attrs.UserAccessLevel = ua.AccessLevel.CurrentRead.mask
        node = await self.add(
            nodeid, name, ua.NodeClass.Variable, attrs, parent, 46, 68, ns0_name=ns0_name
        )
        if rule:
            await self.ref(node, 37, ua.NodeId(rule))
        return node

    def arguments(self, args: Sequence[Arg]) -> list[ua.Argument]:
        return [
            ua.Argument(
                Name=a.name,
                DataType=ua.NodeId(a.datatype, self.ns if a.openscs else 0),
                ValueRank=1 if a.array else -1,
                ArrayDimensions=[0] if a.array else [],
                Description=ua.LocalizedText(""),
            )
            for a in args
        ]

    async def method(
        self,
        parent: ua.NodeId,
        nodeid: ua.NodeId,
        name: str,
        inputs: Sequence[Arg],
        outputs: Sequence[Arg],
        callback: Callable[..., Any] | None,
        rule: int | None = None,
        arg_ids: tuple[ua.NodeId, ua.NodeId] | None = None,
        ns0_name: bool = False,
    ) -> ua.NodeId:
        attrs = ua.MethodAttributes(Executable=True, UserExecutable=True)
        node = await self.add(
            nodeid, name, ua.NodeClass.Method, attrs, parent, 47, ns0_name=ns0_name
        )
        if rule:
            await self.ref(node, 37, ua.NodeId(rule))
        in_id, out_id = arg_ids or (
            self.nid(f"{nodeid.Identifier}.In", False),
            self.nid(f"{nodeid.Identifier}.Out", False),
        )
        for pid, pname, args in (
            (in_id, "InputArguments", inputs),
            (out_id, "OutputArguments", outputs),
        ):
            if args:
                await self.prop(
                    node,
                    pid,
                    pname,
                    self.arguments(args),
                    ua.VariantType.ExtensionObject,
                    ua.NodeId(296),
                    True,
                    MANDATORY if rule else None,
                    ns0_name=True,
                )
        if callback is not None:
            self.server.link_method(self.server.get_node(node), callback)
        return node

    # ------------------------------------------------------------------ data types
    async def datatypes(self) -> None:
        for dt_id, (cls, base, abstract) in _STRUCT_FIELDS.items():
            name = (
                t.TYPE_NAMES[cls] if dt_id != N.CollectionDataType else "OPENSCSCollectionDataType"
            )
            attrs = ua.DataTypeAttributes(IsAbstract=abstract)
            base_id = ua.NodeId(base, self.ns if base != 22 else 0)
            attrs.DataTypeDefinition = self._definition(cls, dt_id, base_id)
            node = await self.add(self.nid(dt_id), name, ua.NodeClass.DataType, attrs, base_id, 45)
            enc = await self._encoding(N.BINARY_ENCODING[dt_id])
            await self.ref(node, 38, enc)
        for dt_id, kind in (
            (N.ReturnEnum, t.ReturnStatus),
            (N.SerialNumberStateEnum, t.SerialNumberState),
        ):
            attrs = ua.DataTypeAttributes(IsAbstract=False)
            attrs.DataTypeDefinition = ua.EnumDefinition(
                Fields=[
                    ua.EnumField(
                        Name=f"{m.name}{int(m)}",
                        Value=int(m),
                        DisplayName=ua.LocalizedText(f"{m.name}{int(m)}"),
                    )
                    for m in kind
                ]
            )
            node = await self.add(
                self.nid(dt_id), t.TYPE_NAMES[kind], ua.NodeClass.DataType, attrs, ua.NodeId(29), 45
            )
            values = [
                ua.EnumValueType(Value=int(m), DisplayName=ua.LocalizedText(f"{m.name}{int(m)}"))
                for m in kind
            ]
            ev_id = (
                N.ReturnEnum_EnumValues
                if kind is t.ReturnStatus
                else N.SerialNumberStateEnum_EnumValues
            )
            await self.prop(
                node,
                self.nid(ev_id),
                "EnumValues",
                values,
                ua.VariantType.ExtensionObject,
                ua.NodeId(7594),
                True,
                MANDATORY,
                ns0_name=True,
            )

    async def _encoding(self, enc_id: int) -> ua.NodeId:
        item = ua.AddNodesItem()
        item.RequestedNewNodeId = self.nid(enc_id)
        item.BrowseName = ua.QualifiedName("Default Binary", 0)
        item.NodeClass = ua.NodeClass.Object
        item.TypeDefinition = ua.NodeId(76)
        attrs = ua.ObjectAttributes()
        attrs.DisplayName = ua.LocalizedText("Default Binary")
        item.NodeAttributes = attrs
        ok = list(self.server.iserver.node_mgt_service.try_add_nodes([item], check=False))
        if ok:
            raise RuntimeError(f"could not add encoding node {enc_id}")
        return item.RequestedNewNodeId

    def _definition(self, cls: type, dt_id: int, base: ua.NodeId) -> ua.StructureDefinition:
        specs = t.STRUCTURES[cls]
        fields = []
        for s in specs:
            if s.kind is str:
                dt = ua.NodeId(STRING)
            else:
                dt = self.nid(t.DATATYPE_IDS[s.kind])
            fields.append(
                ua.StructureField(
                    Name=s.name,
                    DataType=dt,
                    ValueRank=1 if s.array else -1,
                    ArrayDimensions=[0] if s.array else [],
                    IsOptional=s.optional,
                    MaxStringLength=0,
                    Description=ua.LocalizedText(""),
                )
            )
        optional = any(s.optional for s in specs)
        return ua.StructureDefinition(
            DefaultEncodingId=self.nid(N.BINARY_ENCODING[dt_id]),
            BaseDataType=base,
            StructureType=ua.StructureType.StructureWithOptionalFields
            if optional
            else ua.StructureType.Structure,
            Fields=fields,
        )


async def build_types(b: Builder) -> None:
    """DataTypes and ObjectTypes with their declarations (NodeIds of NodeIds.csv)."""
    await b.datatypes()
    base = ua.NodeId(58)
    otype = ua.ObjectTypeAttributes(IsAbstract=False)
    pool = await b.add(
        b.nid(N.PoolManagerObjectType),
        "OPENSCSPoolManagerObjectType",
        ua.NodeClass.ObjectType,
        otype,
        base,
        45,
    )
    events = await b.add(
        b.nid(N.EventManagerObjectType),
        "OPENSCSEventManagerObjectType",
        ua.NodeClass.ObjectType,
        ua.ObjectTypeAttributes(),
        base,
        45,
    )
    agg = await b.add(
        b.nid(N.AggregationManagerObjectType),
        "OPENSCSAggregationManagerObjectType",
        ua.NodeClass.ObjectType,
        ua.ObjectTypeAttributes(),
        base,
        45,
    )
    sid = await b.add(
        b.nid(N.SIDClassObjectType),
        "OPENSCSSIDClassObjectType",
        ua.NodeClass.ObjectType,
        ua.ObjectTypeAttributes(),
        base,
        45,
    )
    for owner, table, rule in (
        (pool, N.POOL_METHODS, MANDATORY),
        (events, N.EVENT_METHODS, OPTIONAL),
        (agg, N.AGGREGATION_METHODS, MANDATORY),
    ):
        for name, (mid, in_id, out_id) in table.items():
            inputs, outputs = SIGNATURES[name]
            await b.method(
                owner, b.nid(mid), name, inputs, outputs, None, rule, (b.nid(in_id), b.nid(out_id))
            )
    await _type_props(b, pool, events, agg, sid)
    stream = await b.add(
        b.nid(N.EventManager_EPCISStream),
        "EPCISStream",
        ua.NodeClass.Object,
        ua.ObjectAttributes(),
        events,
        47,
        15744,
    )
    await b.ref(stream, 37, ua.NodeId(OPTIONAL))
    await b.prop(
        stream,
        b.nid(N.EPCISStream_ClientProcessingTimeout),
        "ClientProcessingTimeout",
        0.0,
        ua.VariantType.Double,
        ua.NodeId(DURATION),
        rule=MANDATORY,
        ns0_name=True,
    )
    for name, (mid, in_id, out_id) in STREAM_IDS.items():
        inputs, outputs = STREAM_SIGNATURES[name]
        await b.method(
            stream,
            b.nid(mid),
            name,
            inputs,
            outputs,
            None,
            MANDATORY,
            (b.nid(in_id), b.nid(out_id)),
            ns0_name=True,
        )


async def _type_props(
    b: Builder, pool: ua.NodeId, events: ua.NodeId, agg: ua.NodeId, sid: ua.NodeId
) -> None:
    u32, s = ua.VariantType.UInt32, ua.VariantType.String
    kv = b.nid(N.KeyValueDataType)
    await b.prop(
        pool,
        b.nid(N.PoolManager_PoolSelectionCriteria),
        "PoolSelectionCriteria",
        [],
        ua.VariantType.ExtensionObject,
        kv,
        True,
        MANDATORY,
    )
    await b.prop(
        pool, b.nid(N.PoolManager_SNFormat), "SNFormat", [], s, ua.NodeId(STRING), True, MANDATORY
    )
    for name in ("MaxSNRequestable", "MaxSNReturnable", "MaxSNPushable"):
        await b.prop(
            pool,
            b.nid(getattr(N, f"PoolManager_{name}")),
            name,
            0,
            u32,
            ua.NodeId(UINT32),
            rule=MANDATORY,
        )
    for owner, prefix, names in (
        (events, "EventManager",
         ("MaxEvents", "MaxEPCISObjectEventSIDs", "MaxEPCISaggregationEvents")),
        (agg, "AggregationManager", ("MaxAggregationEvents",)),
    ):
        for name in names:
            await b.prop(
                owner,
                b.nid(getattr(N, f"{prefix}_{name}")),
                name,
                0,
                u32,
                ua.NodeId(UINT32),
                rule=MANDATORY,
            )
    for name, rule in SID_PROPS.items():
        await b.prop(
            sid, b.nid(getattr(N, f"SIDClass_{name}")), name, "", s, ua.NodeId(STRING), rule=rule
        )
    await b.prop(
        sid,
        b.nid(N.SIDClass_SIDClassProperty),
        "SIDClassProperty",
        [],
        ua.VariantType.ExtensionObject,
        b.nid(N.SIDClassPropertyDataType),
        True,
        OPTIONAL,
    )


SID_PROPS = {
    "SIDClassID": MANDATORY,
    "SIDClassOwner": MANDATORY,
    "SIDClassDescription": OPTIONAL,
    "SyntaxSpecification": MANDATORY,
    "AllowedCharacterSet": MANDATORY,
    "IntendedUse": OPTIONAL,
}


def kv_values(values: Sequence[t.KeyValue], ns: int) -> list[Any]:
    return to_extension_objects(values, ns) or []
