"""OPEN-SCS DataTypes and their OPC UA binary encoding (sans-IO, no asyncua).

The layout follows the official type dictionary Opc.Ua.OPENSCS.Types.bsd byte for byte:
little endian; String = Int32 byte length + UTF-8, -1 = null; array = Int32 count, -1 = null;
enumerations = Int32 of the *value* (never the name: official names carry the value as a
suffix, ``Allocated2``). OPENSCSLabelCollectionDataType starts with a UInt32 encoding mask
(bit 0 = LabelCollectionPropertiesSpecified, 31 reserved bits), then the fields it inherits
from OPENSCSCollectionDataType (ID, Description, State, AssociatedPoolID, SerialNumbers),
then LabelCollection and, only when bit 0 is set, LabelCollectionProperties.
OPENSCSSNCollectionDataType adds no field: it is the Collection layout, without a mask.

Null strings decode to "" (the domain fields are ``str``); ``None`` encodes as null. A null
array decodes to None where the domain field allows None, else to ().

    >>> encode(KeyValue("A", "B")).hex()
    '01000000410100000042'
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Final, TypeVar

from adapters.openscs import nodeids
from gateway.errors import LocalProtocolError, RemoteProtocolError
from gateway.model import (
    Aggregation,
    KeyValue,
    Label,
    LabelCollection,
    Refusal,
    ReturnStatus,
    SerialNumberState,
    SNCollection,
)

__all__ = [
    "BINARY_ENCODING_IDS",
    "DATATYPE_IDS",
    "STRUCTURES",
    "Aggregation",
    "EventStreamArgument",
    "FieldSpec",
    "KeyValue",
    "Label",
    "LabelCollection",
    "LabelProperty",
    "ReturnStatus",
    "SIDClassProperty",
    "SNCollection",
    "SerialNumberState",
    "TypeDecodeError",
    "TypeEncodeError",
    "decode",
    "encode",
]

T = TypeVar("T")

MAX_ARRAY_LENGTH: Final = 1_000_000  # far above any Max* limit; stops absurd counts early


class TypeDecodeError(RemoteProtocolError):
    """The peer sent bytes that are not a valid encoding of the expected OPEN-SCS type."""

    def __init__(self, detail: str) -> None:
        super().__init__(Refusal.MALFORMED, detail)


class TypeEncodeError(LocalProtocolError):
    """We asked to encode something that does not fit the OPEN-SCS type (our bug)."""


# --------------------------------------------------------------------------- extra domain types


@dataclass(frozen=True)
class LabelProperty:
    """OPENSCSLabelPropertyDataType (Table 60)."""

    PropertyID: str
    PropertyDescription: str
    PropertyValue: str


@dataclass(frozen=True)
class SIDClassProperty:
    """OPENSCSSIDClassPropertyDataType (Table 64)."""

    PropertyID: str
    PropertyDescription: str
    PropertyValue: str
    LabelProperty: tuple[LabelProperty, ...] | None = None


@dataclass(frozen=True)
class EventStreamArgument:
    """OPENSCSEventStreamArgumentDataType: generateOptions of EPCISStream.GenerateFileForWrite."""

    SNFormat: str
    ParentSNFormat: str
    PackedElementSNFormat: str
    EventContext: tuple[KeyValue, ...] | None = None


# --------------------------------------------------------------------------- layout table


@dataclass(frozen=True)
class FieldSpec:
    """One field on the wire: ``kind`` is str, an IntEnum class or a structure class.

    ``array``: Int32-counted array. ``nullable``: a null array decodes to None (else ()).
    ``optional``: present only when its bit in the leading encoding mask is set.
    """

    name: str
    kind: Any
    array: bool = False
    nullable: bool = False
    optional: bool = False


_COLLECTION: Final = (
    FieldSpec("ID", str),
    FieldSpec("Description", str),
    FieldSpec("State", SerialNumberState),
    FieldSpec("AssociatedPoolID", str),
    FieldSpec("SerialNumbers", str, array=True),
)

STRUCTURES: Final[dict[type, tuple[FieldSpec, ...]]] = {
    KeyValue: (FieldSpec("Key", str), FieldSpec("Value", str)),
    Label: (FieldSpec("ID", str), FieldSpec("LabelProperties", KeyValue, True, True)),
    LabelProperty: (
        FieldSpec("PropertyID", str),
        FieldSpec("PropertyDescription", str),
        FieldSpec("PropertyValue", str),
    ),
    SIDClassProperty: (
        FieldSpec("PropertyID", str),
        FieldSpec("PropertyDescription", str),
        FieldSpec("PropertyValue", str),
        FieldSpec("LabelProperty", LabelProperty, True, True),
    ),
    SNCollection: _COLLECTION,
    LabelCollection: (
        *_COLLECTION,
        FieldSpec("LabelCollection", Label, array=True),
        FieldSpec("LabelCollectionProperties", KeyValue, True, True, optional=True),
    ),
    Aggregation: (
        FieldSpec("ParentElement", Label),
        FieldSpec("ParentElementCollection", LabelCollection),
    ),
    EventStreamArgument: (
        FieldSpec("SNFormat", str),
        FieldSpec("ParentSNFormat", str),
        FieldSpec("PackedElementSNFormat", str),
        FieldSpec("EventContext", KeyValue, True, True),
    ),
}

# Official type names, DataType ids and DefaultBinary encoding ids per domain class.
TYPE_NAMES: Final[dict[type, str]] = {
    KeyValue: "OPENSCSKeyValueDataType",
    Label: "OPENSCSLabelDataType",
    LabelProperty: "OPENSCSLabelPropertyDataType",
    SIDClassProperty: "OPENSCSSIDClassPropertyDataType",
    SNCollection: "OPENSCSSNCollectionDataType",
    LabelCollection: "OPENSCSLabelCollectionDataType",
    Aggregation: "OPENSCSAggregationDataType",
    EventStreamArgument: "OPENSCSEventStreamArgumentDataType",
    SerialNumberState: "OPENSCSSerialNumberStateEnum",
    ReturnStatus: "OPENSCSReturnEnum",
}
DATATYPE_IDS: Final[dict[type, int]] = {
    KeyValue: nodeids.KeyValueDataType,
    Label: nodeids.LabelDataType,
    LabelProperty: nodeids.LabelPropertyDataType,
    SIDClassProperty: nodeids.SIDClassPropertyDataType,
    SNCollection: nodeids.SNCollectionDataType,
    LabelCollection: nodeids.LabelCollectionDataType,
    Aggregation: nodeids.AggregationDataType,
    EventStreamArgument: nodeids.EventStreamArgumentDataType,
    SerialNumberState: nodeids.SerialNumberStateEnum,
    ReturnStatus: nodeids.ReturnEnum,
}
BINARY_ENCODING_IDS: Final[dict[type, int]] = {
    cls: nodeids.BINARY_ENCODING[dt] for cls, dt in DATATYPE_IDS.items() if cls in STRUCTURES
}
CLASS_BY_ENCODING_ID: Final[dict[int, type]] = {v: k for k, v in BINARY_ENCODING_IDS.items()}

_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")


# --------------------------------------------------------------------------- encoding


def encode(obj: object) -> bytes:
    """The OPC UA binary body of an OPEN-SCS structure or enumeration value."""
    out: list[bytes] = []
    if isinstance(obj, enum.IntEnum):
        _enc_enum(out, obj, type(obj), "value")
    else:
        _enc_struct(out, obj, type(obj).__name__)
    return b"".join(out)


def _enc_struct(out: list[bytes], obj: object, where: str) -> None:
    specs = STRUCTURES.get(type(obj))
    if specs is None:
        raise TypeEncodeError(f"{where}: {type(obj).__name__} is not an OPEN-SCS structure")
    optional = [s for s in specs if s.optional]
    if optional:
        mask = 0
        for bit, spec in enumerate(optional):
            if getattr(obj, spec.name) is not None:
                mask |= 1 << bit
        out.append(_U32.pack(mask))
    for spec in specs:
        value = getattr(obj, spec.name)
        if spec.optional and value is None:
            continue
        _enc_field(out, spec, value, f"{where}.{spec.name}")


def _enc_field(out: list[bytes], spec: FieldSpec, value: Any, where: str) -> None:
    if not spec.array:
        _enc_scalar(out, spec.kind, value, where)
        return
    if value is None:
        out.append(_I32.pack(-1))
        return
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise TypeEncodeError(f"{where}: expected a sequence, got {type(value).__name__}")
    out.append(_I32.pack(len(value)))
    for i, item in enumerate(value):
        _enc_scalar(out, spec.kind, item, f"{where}[{i}]")


def _enc_scalar(out: list[bytes], kind: Any, value: Any, where: str) -> None:
    if kind is str:
        _enc_string(out, value, where)
    elif isinstance(kind, type) and issubclass(kind, enum.IntEnum):
        _enc_enum(out, value, kind, where)
    else:
        if not isinstance(value, kind):
            raise TypeEncodeError(f"{where}: expected {kind.__name__}, got {type(value).__name__}")
        _enc_struct(out, value, where)


def _enc_string(out: list[bytes], value: str | None, where: str) -> None:
    if value is None:
        out.append(_I32.pack(-1))
        return
    if not isinstance(value, str):
        raise TypeEncodeError(f"{where}: expected str, got {type(value).__name__}")
    data = value.encode("utf-8")
    out.append(_I32.pack(len(data)))
    out.append(data)


def _enc_enum(out: list[bytes], value: Any, kind: type[enum.IntEnum], where: str) -> None:
    try:
        member = kind(value)
    except ValueError:
        raise TypeEncodeError(f"{where}: {value!r} is not a {kind.__name__} value") from None
    out.append(_I32.pack(int(member)))


# --------------------------------------------------------------------------- decoding


def decode(cls: type[T], data: bytes) -> T:
    """Decode a whole binary body as ``cls``; trailing bytes are an error."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeDecodeError(f"{cls.__name__}: body is {type(data).__name__}, not bytes")
    buf = bytes(data)
    if isinstance(cls, type) and issubclass(cls, enum.IntEnum):
        value, pos = _dec_enum(buf, 0, cls, cls.__name__)
    else:
        value, pos = _dec_struct(buf, 0, cls, cls.__name__)
    if pos != len(buf):
        raise TypeDecodeError(
            f"{cls.__name__}: {len(buf) - pos} trailing byte(s) after offset {pos}"
        )
    return value  # type: ignore[return-value]


def decode_prefix(cls: type[T], data: bytes, pos: int = 0) -> tuple[T, int]:
    """Decode one ``cls`` at ``pos``; return it and the offset just after it."""
    return _dec_struct(bytes(data), pos, cls, cls.__name__)  # type: ignore[return-value]


def _need(buf: bytes, pos: int, n: int, where: str) -> None:
    if pos + n > len(buf):
        raise TypeDecodeError(
            f"{where}: truncated at offset {pos} (need {n} byte(s), {len(buf) - pos} left)"
        )


def _dec_i32(buf: bytes, pos: int, where: str) -> tuple[int, int]:
    _need(buf, pos, 4, where)
    return _I32.unpack_from(buf, pos)[0], pos + 4


def _dec_struct(buf: bytes, pos: int, cls: type, where: str) -> tuple[object, int]:
    specs = STRUCTURES.get(cls)
    if specs is None:
        raise TypeEncodeError(f"{where}: {cls!r} is not an OPEN-SCS structure")
    optional = [s.name for s in specs if s.optional]
    mask = 0
    if optional:
        _need(buf, pos, 4, f"{where} encoding mask")
        mask = _U32.unpack_from(buf, pos)[0]
        pos += 4
        if mask >> len(optional):
            raise TypeDecodeError(
                f"{where}: encoding mask 0x{mask:08x} sets reserved bits (only "
                f"{', '.join(n + 'Specified' for n in optional)} defined)"
            )
    values: dict[str, Any] = {}
    for spec in specs:
        fwhere = f"{where}.{spec.name}"
        if spec.optional and not mask & (1 << optional.index(spec.name)):
            values[spec.name] = None
            continue
        values[spec.name], pos = _dec_field(buf, pos, spec, fwhere)
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names}), pos


def _dec_field(buf: bytes, pos: int, spec: FieldSpec, where: str) -> tuple[Any, int]:
    if not spec.array:
        return _dec_scalar(buf, pos, spec.kind, where)
    count, pos = _dec_i32(buf, pos, f"{where} length")
    if count == -1:
        return (None if spec.nullable else ()), pos
    if count < -1 or count > MAX_ARRAY_LENGTH or count * 4 > len(buf) - pos:
        raise TypeDecodeError(f"{where}: impossible array length {count} at offset {pos - 4}")
    items = []
    for i in range(count):
        item, pos = _dec_scalar(buf, pos, spec.kind, f"{where}[{i}]")
        items.append(item)
    return tuple(items), pos


def _dec_scalar(buf: bytes, pos: int, kind: Any, where: str) -> tuple[Any, int]:
    if kind is str:
        return _dec_string(buf, pos, where)
    if isinstance(kind, type) and issubclass(kind, enum.IntEnum):
        return _dec_enum(buf, pos, kind, where)
    return _dec_struct(buf, pos, kind, where)


def _dec_string(buf: bytes, pos: int, where: str) -> tuple[str, int]:
    length, pos = _dec_i32(buf, pos, f"{where} length")
    if length == -1:
        return "", pos
    if length < -1:
        raise TypeDecodeError(f"{where}: invalid string length {length} at offset {pos - 4}")
    _need(buf, pos, length, where)
    try:
        text = buf[pos : pos + length].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TypeDecodeError(f"{where}: not valid UTF-8 ({exc.reason})") from None
    return text, pos + length


def _dec_enum(buf: bytes, pos: int, kind: type[enum.IntEnum], where: str) -> tuple[Any, int]:
    raw, pos = _dec_i32(buf, pos, where)
    try:
        return kind(raw), pos
    except ValueError:
        raise TypeDecodeError(
            f"{where}: {raw} is not a {TYPE_NAMES.get(kind, kind.__name__)} value"
        ) from None
