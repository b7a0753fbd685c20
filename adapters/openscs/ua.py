"""Wrap OPEN-SCS domain objects in asyncua ExtensionObjects and back.

Both the client and the reference server own the OPEN-SCS types (adapters.openscs.types)
instead of asyncua's NodeSet-derived classes: an ExtensionObject is built from the
DefaultBinary encoding id and the project's own binary body, and a received one is decoded by
its TypeId. Enumerations travel as plain Int32 Variants.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable
from typing import Any, TypeVar

from asyncua import ua

from adapters.openscs import types as t

log = logging.getLogger(__name__)

T = TypeVar("T")


def to_extension_object(obj: object, ns_index: int) -> ua.ExtensionObject:
    """An ExtensionObject carrying ``obj`` with its DefaultBinary TypeId in ``ns_index``."""
    encoding_id = t.BINARY_ENCODING_IDS.get(type(obj))
    if encoding_id is None:
        raise t.TypeEncodeError(f"{type(obj).__name__} is not an OPEN-SCS structure")
    return ua.ExtensionObject(TypeId=ua.NodeId(encoding_id, ns_index), Body=t.encode(obj))


def to_extension_objects(objs: Iterable[object] | None, ns_index: int) -> list[Any] | None:
    """A list of ExtensionObjects (None stays None: a null array)."""
    if objs is None:
        return None
    return [to_extension_object(o, ns_index) for o in objs]


def variant(obj: object, ns_index: int) -> ua.Variant:
    """A Variant for a method argument: structures, arrays of them, enums, strings, UInt32."""
    if isinstance(obj, enum.IntEnum):
        return ua.Variant(int(obj), ua.VariantType.Int32)
    if isinstance(obj, list | tuple):
        return ua.Variant(to_extension_objects(obj, ns_index), ua.VariantType.ExtensionObject)
    if type(obj) in t.BINARY_ENCODING_IDS:
        return ua.Variant(to_extension_object(obj, ns_index), ua.VariantType.ExtensionObject)
    raise t.TypeEncodeError(f"no OPEN-SCS Variant mapping for {type(obj).__name__}")


def from_extension_object(value: Any, ns_index: int, expected: type[T] | None = None) -> T:
    """Decode a received ExtensionObject by its TypeId (must be in ``ns_index``).

    ``expected`` (optional) is the class the caller needs; a different TypeId is refused.
    """
    if isinstance(value, ua.Variant):
        value = value.Value
    if not isinstance(value, ua.ExtensionObject):
        want = expected.__name__ if expected else "an OPEN-SCS structure"
        got = type(value).__name__
        raise t.TypeDecodeError(f"expected {want} in an ExtensionObject, got {got}")
    type_id = value.TypeId
    cls = None
    if type_id.NamespaceIndex == ns_index:
        cls = t.CLASS_BY_ENCODING_ID.get(type_id.Identifier)
    if cls is None:
        raise t.TypeDecodeError(
            f"ExtensionObject TypeId {type_id.to_string()} is not an OPEN-SCS DefaultBinary "
            f"encoding in namespace {ns_index}"
        )
    if expected is not None and cls is not expected:
        raise t.TypeDecodeError(
            f"expected {t.TYPE_NAMES[expected]}, got {t.TYPE_NAMES[cls]} "
            f"(TypeId {type_id.to_string()})"
        )
    if value.Body is None:
        raise t.TypeDecodeError(f"{t.TYPE_NAMES[cls]}: ExtensionObject without a body")
    return t.decode(cls, value.Body)  # type: ignore[return-value]


def from_extension_objects(
    values: Any, ns_index: int, expected: type[T] | None = None
) -> tuple[T, ...] | None:
    """Decode an array of ExtensionObjects (None = null array)."""
    if isinstance(values, ua.Variant):
        values = values.Value
    if values is None:
        return None
    if not isinstance(values, list | tuple):
        got = type(values).__name__
        raise t.TypeDecodeError(f"expected an array of ExtensionObjects, got {got}")
    return tuple(from_extension_object(v, ns_index, expected) for v in values)


def enum_value(value: Any, kind: type[enum.IntEnum]) -> Any:
    """An OPEN-SCS enumeration from a received Int32 (by value, never by name)."""
    if isinstance(value, ua.Variant):
        value = value.Value
    if isinstance(value, bool) or not isinstance(value, int):
        raise t.TypeDecodeError(f"expected an Int32 {t.TYPE_NAMES[kind]}, got {value!r}")
    try:
        return kind(value)
    except ValueError:
        raise t.TypeDecodeError(f"{value} is not a {t.TYPE_NAMES[kind]} value") from None


def is_null(value: Any) -> bool:
    """True for a null ExtensionObject (TypeId i=0, no body): e.g. SNCollection "returns null"."""
    if isinstance(value, ua.Variant):
        value = value.Value
    if value is None:
        return True
    return (
        isinstance(value, ua.ExtensionObject)
        and value.TypeId.Identifier == 0
        and value.TypeId.NamespaceIndex == 0
        and value.Body is None
    )


def from_optional_extension_object(
    value: Any, ns_index: int, expected: type[T] | None = None
) -> T | None:
    """Like from_extension_object, but a null ExtensionObject gives None."""
    return None if is_null(value) else from_extension_object(value, ns_index, expected)
