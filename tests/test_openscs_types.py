"""OPEN-SCS binary codec: hand-written vectors, round trips, and the official dictionary.

Every expected byte string below is derived by hand from Opc.Ua.OPENSCS.Types.bsd
(little endian; String = Int32 length + UTF-8, -1 null; arrays Int32 count; enums Int32).
"""

from __future__ import annotations

import csv

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree

from adapters.openscs import nodeids
from adapters.openscs.types import (
    STRUCTURES,
    TYPE_NAMES,
    Aggregation,
    EventStreamArgument,
    KeyValue,
    Label,
    LabelCollection,
    LabelProperty,
    ReturnStatus,
    SerialNumberState,
    SIDClassProperty,
    SNCollection,
    TypeDecodeError,
    TypeEncodeError,
    decode,
    encode,
)
from tests.conftest import SHARED

OPENSCS = SHARED / "reference" / "openscs"


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


A_B = "01000000 41  01000000 42"  # KeyValue("A", "B")
COLL_C = (  # Collection fields: ID "c", Description "", State 2, AssociatedPoolID "p", ["1","2"]
    "01000000 63  00000000  02000000  01000000 70  02000000 01000000 31 01000000 32"
)

VECTORS = [
    ("KeyValue", KeyValue("A", "B"), A_B),
    ("KeyValue utf8", KeyValue("ä", ""), "02000000 c3a4  00000000"),
    ("Label null properties", Label("L"), "01000000 4c  ffffffff"),
    ("Label empty properties", Label("L", ()), "01000000 4c  00000000"),
    ("Label one property", Label("L", (KeyValue("A", "B"),)), f"01000000 4c  01000000 {A_B}"),
    (
        "LabelProperty",
        LabelProperty("a", "b", "c"),
        "01000000 61  01000000 62  01000000 63",
    ),
    (
        "SIDClassProperty null",
        SIDClassProperty("a", "b", "c"),
        "01000000 61  01000000 62  01000000 63  ffffffff",
    ),
    (
        "SIDClassProperty one",
        SIDClassProperty("a", "b", "c", (LabelProperty("x", "y", "z"),)),
        "01000000 61  01000000 62  01000000 63  01000000 01000000 78  01000000 79  01000000 7a",
    ),
    (
        "SNCollection",
        SNCollection("c", "", SerialNumberState.Allocated, "p", ("1", "2")),
        COLL_C,
    ),
    (
        "SNCollection empty",
        SNCollection("", "", SerialNumberState.Unassigned, "", ()),
        "00000000 00000000 00000000 00000000 00000000",
    ),
    (
        # mask 0 first, then the INHERITED Collection fields, then LabelCollection (0 labels)
        "LabelCollection no properties",
        LabelCollection("c", "", SerialNumberState.Allocated, "p", ("1", "2")),
        f"00000000  {COLL_C}  00000000",
    ),
    (
        "LabelCollection with properties",
        LabelCollection(
            "c",
            "",
            SerialNumberState.Allocated,
            "p",
            ("1", "2"),
            (Label("L"),),
            (KeyValue("A", "B"),),
        ),
        f"01000000  {COLL_C}  01000000 01000000 4c ffffffff  01000000 {A_B}",
    ),
    (
        "LabelCollection empty properties still specified",
        LabelCollection("c", "", SerialNumberState.Allocated, "p", ("1", "2"), (), ()),
        f"01000000  {COLL_C}  00000000  00000000",
    ),
    (
        "Aggregation",
        Aggregation(
            Label("P"),
            LabelCollection("c", "", SerialNumberState.Allocated, "p", ("1", "2"), (Label("L"),)),
        ),
        f"01000000 50 ffffffff  00000000 {COLL_C} 01000000 01000000 4c ffffffff",
    ),
    (
        "EventStreamArgument",
        EventStreamArgument("S", "E", "", (KeyValue("A", "B"),)),
        f"01000000 53  01000000 45  00000000  01000000 {A_B}",
    ),
    (
        "EventStreamArgument null context",
        EventStreamArgument("S", "E", ""),
        "01000000 53  01000000 45  00000000  ffffffff",
    ),
    ("SerialNumberState Allocated", SerialNumberState.Allocated, "02000000"),
    ("SerialNumberState Released", SerialNumberState.Released, "0b000000"),
    ("ReturnEnum NoError", ReturnStatus.NoError, "01000000"),
    ("ReturnEnum InsufficientPrivilege", ReturnStatus.InsufficientPrivilegeToExecute, "0b000000"),
]


@pytest.mark.parametrize(("name", "obj", "hexbytes"), VECTORS, ids=[v[0] for v in VECTORS])
def test_vector_encode_and_decode(name: str, obj: object, hexbytes: str) -> None:
    assert encode(obj) == h(hexbytes)
    assert decode(type(obj), h(hexbytes)) == obj


def test_null_strings_encode_as_minus_one_and_decode_as_empty() -> None:
    assert encode(KeyValue(None, "B")) == h("ffffffff 01000000 42")  # type: ignore[arg-type]
    assert decode(KeyValue, h("ffffffff ffffffff")) == KeyValue("", "")


def test_null_serial_number_array_decodes_as_empty_tuple() -> None:
    body = h("00000000 00000000 07000000 00000000 ffffffff")
    expected = SNCollection("", "", SerialNumberState.Commissioned, "", ())
    assert decode(SNCollection, body) == expected
    assert encode(SNCollection("", "", 7, "", None)) == body  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "obj", "hexbytes"), VECTORS, ids=[v[0] for v in VECTORS])
def test_every_truncation_is_a_clear_error(name: str, obj: object, hexbytes: str) -> None:
    data = h(hexbytes)
    for cut in range(len(data)):
        with pytest.raises(TypeDecodeError, match=r"truncated|impossible array length"):
            decode(type(obj), data[:cut])


@pytest.mark.parametrize(
    ("cls", "hexbytes", "match"),
    [
        (KeyValue, f"{A_B} 00", "1 trailing byte"),
        (SNCollection, "00000000 00000000 63000000 00000000 00000000", "99 is not a OPENSCSSerial"),
        (ReturnStatus, "0c000000", "12 is not a OPENSCSReturnEnum"),
        (LabelCollection, f"02000000 {COLL_C} 00000000", "reserved bits"),
        (KeyValue, "02000000 c328 00000000", "not valid UTF-8"),
        (Label, "00000000 fbffffff", "impossible array length -5"),
        (Label, "00000000 ffffff7f", "impossible array length"),
        (KeyValue, "feffffff", "invalid string length -2"),
    ],
)
def test_bad_input_is_named(cls: type, hexbytes: str, match: str) -> None:
    with pytest.raises(TypeDecodeError, match=match) as info:
        decode(cls, h(hexbytes))
    assert info.value.detail


def test_encode_refuses_wrong_types() -> None:
    with pytest.raises(TypeEncodeError, match=r"LabelCollection\.LabelCollection\[0\]"):
        encode(LabelCollection("c", "", 2, "p", (), ("not a label",)))  # type: ignore[arg-type]
    with pytest.raises(TypeEncodeError, match="State"):
        encode(SNCollection("c", "", 42, "p", ()))  # type: ignore[arg-type]
    with pytest.raises(TypeEncodeError, match="expected a sequence"):
        encode(SNCollection("c", "", 2, "p", "12"))  # type: ignore[arg-type]
    with pytest.raises(TypeEncodeError, match="not an OPEN-SCS structure"):
        encode(object())


text = st.text(max_size=8)
kvs = st.lists(st.builds(KeyValue, text, text), max_size=3).map(tuple)
labels = st.builds(Label, text, st.none() | kvs)
states = st.sampled_from(list(SerialNumberState))
label_collections = st.builds(
    LabelCollection,
    text,
    text,
    states,
    text,
    st.lists(text, max_size=4).map(tuple),
    st.lists(labels, max_size=3).map(tuple),
    st.none() | kvs,
)


@given(label_collections)
def test_label_collection_round_trip(obj: LabelCollection) -> None:
    assert decode(LabelCollection, encode(obj)) == obj


@given(st.builds(Aggregation, labels, label_collections))
def test_aggregation_round_trip(obj: Aggregation) -> None:
    assert decode(Aggregation, encode(obj)) == obj


@given(st.builds(EventStreamArgument, text, text, text, st.none() | kvs))
def test_event_stream_argument_round_trip(obj: EventStreamArgument) -> None:
    assert decode(EventStreamArgument, encode(obj)) == obj


# --------------------------------------------------------------------------- official files

BSD_NS = {"opc": "http://opcfoundation.org/BinarySchema/"}


def _bsd_structures() -> dict[str, list[etree._Element]]:
    root = etree.parse(str(OPENSCS / "Opc.Ua.OPENSCS.Types.bsd")).getroot()
    return {
        s.get("Name"): s.findall("opc:Field", BSD_NS)
        for s in root.findall("opc:StructuredType", BSD_NS)
    }


def _wire_kind(type_name: str) -> object:
    if type_name == "opc:CharArray":
        return str
    by_name = {v: k for k, v in TYPE_NAMES.items()}
    return by_name[type_name.removeprefix("tns:")]


@pytest.mark.parametrize("cls", list(STRUCTURES), ids=lambda c: c.__name__)
def test_field_layout_matches_official_dictionary(cls: type) -> None:
    structures = _bsd_structures()
    # SNCollection adds no field and has no entry of its own: it is the Collection layout.
    name = TYPE_NAMES[cls]
    bsd_fields = structures.get(name, structures["OPENSCSCollectionDataType"])
    bits = [f for f in bsd_fields if f.get("TypeName") == "opc:Bit"]
    rest = [f for f in bsd_fields if f.get("TypeName") != "opc:Bit"]
    # the encoding mask (if any) comes first and is 32 bits wide
    assert bsd_fields[: len(bits)] == bits
    if bits:
        assert sum(int(b.get("Length", "1")) for b in bits) == 32
    length_fields = {f.get("LengthField") for f in rest if f.get("LengthField")}
    expected = []
    for f in rest:
        if f.get("Name") in length_fields:
            continue
        switch = f.get("SwitchField")
        expected.append(
            (f.get("Name"), _wire_kind(f.get("TypeName")), bool(f.get("LengthField")), switch)
        )
    mine = [
        (s.name, s.kind, s.array, f"{s.name}Specified" if s.optional else None)
        for s in STRUCTURES[cls]
    ]
    assert mine == expected
    optional_bits = [b.get("Name") for b in bits if not b.get("Name").startswith("Reserved")]
    assert optional_bits == [s.name + "Specified" for s in STRUCTURES[cls] if s.optional]


@pytest.mark.parametrize("cls", [SerialNumberState, ReturnStatus], ids=lambda c: c.__name__)
def test_enum_values_match_official_dictionary(cls: type) -> None:
    root = etree.parse(str(OPENSCS / "Opc.Ua.OPENSCS.Types.bsd")).getroot()
    enums = root.findall("opc:EnumeratedType", BSD_NS)
    (node,) = [e for e in enums if e.get("Name") == TYPE_NAMES[cls]]
    assert node.get("LengthInBits") == "32"
    values = node.findall("opc:EnumeratedValue", BSD_NS)
    official = {int(v.get("Value")): v.get("Name") for v in values}
    assert sorted(official) == sorted(int(m) for m in cls)
    # official names are <Name><Value>; ours are the bare name: match by value only
    for member in cls:
        assert official[int(member)] == f"{member.name}{int(member)}"


def test_node_ids_match_official_csv() -> None:
    with open(OPENSCS / "NodeIds.csv", newline="") as fh:
        official = {row[0]: (int(row[1]), row[2]) for row in csv.reader(fh) if row}
    assert len(nodeids.SYMBOLS) > 80
    for symbol, value in nodeids.SYMBOLS.items():
        assert symbol in official, symbol
        assert official[symbol][0] == value, symbol
    for dt, enc in nodeids.BINARY_ENCODING.items():
        (name,) = [n for n, (v, kind) in official.items() if v == dt and kind == "DataType"]
        assert official[f"{name}_Encoding_DefaultBinary"][0] == enc


def test_namespace_uris() -> None:
    nodeset = etree.parse(str(OPENSCS / "Opc.Ua.OPENSCS.NodeSet2.xml")).getroot()
    uris = [u.text for u in nodeset.iter("{*}Uri")]
    assert uris == [nodeids.NS_URI_NODESET]
    spec = (SHARED / "seeds" / "004_3ba6b32c24c64a14.txt").read_text(encoding="utf-8")
    assert f"The NamespaceUri for all NodeIds defined here is {nodeids.NS_URI_SPEC}" in spec


# --------------------------------------------------------------------------- ExtensionObjects


def test_extension_object_wrapping_through_asyncua_binary() -> None:
    from asyncua import ua
    from asyncua.common.utils import Buffer
    from asyncua.ua.ua_binary import variant_from_binary, variant_to_binary

    from adapters.openscs import ua as oua

    lc = LabelCollection("c", "", SerialNumberState.Allocated, "p", ("1", "2"), (Label("L"),))
    wire = variant_to_binary(oua.variant(lc, 3))
    # Variant ExtensionObject (0x16), TypeId FourByte ns=3 i=15189 (0x3b55), body-follows flag
    assert wire[:6] == h("16 01 03 553b 01")
    assert wire[10:] == encode(lc)
    back = variant_from_binary(Buffer(wire))
    assert oua.from_extension_object(back, 3, LabelCollection) == lc
    with pytest.raises(TypeDecodeError, match="expected OPENSCSSNCollectionDataType"):
        oua.from_extension_object(back, 3, SNCollection)
    with pytest.raises(TypeDecodeError, match="not an OPEN-SCS DefaultBinary encoding"):
        oua.from_extension_object(back, 2)
    null = variant_from_binary(
        Buffer(variant_to_binary(ua.Variant(None, ua.VariantType.ExtensionObject)))
    )
    assert oua.is_null(null)
    assert oua.from_optional_extension_object(null, 3, SNCollection) is None
    kvs = variant_from_binary(Buffer(variant_to_binary(oua.variant([KeyValue("A", "B")], 3))))
    assert oua.from_extension_objects(kvs, 3, KeyValue) == (KeyValue("A", "B"),)
    assert oua.enum_value(ua.Variant(7, ua.VariantType.Int32), SerialNumberState) == (
        SerialNumberState.Commissioned
    )
    with pytest.raises(TypeDecodeError, match="99 is not a OPENSCSReturnEnum"):
        oua.enum_value(99, ReturnStatus)
