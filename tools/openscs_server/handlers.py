"""Method callbacks: decode the Variants, check them (Annex B), run the engine, encode outputs.

asyncua calls a callback with the ObjectId and the input Variants; it returns the output
Variants or a ua.StatusCode (the method result). The same callback is linked to the instance
method and to the ObjectType's method declaration, so a client may call either NodeId.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from asyncua import ua

from adapters.openscs import types as t
from adapters.openscs.ua import (
    from_extension_object,
    from_extension_objects,
    to_extension_object,
)
from tools.openscs_server.addrspace import SIGNATURES
from tools.openscs_server.engine import Engine
from tools.openscs_server.pools import POOL_REQUESTS, MethodFault

log = logging.getLogger(__name__)

current_user: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "openscs_current_user", default=None
)
MAX_FILE_BYTES = 16 * 1024 * 1024
Callback = Callable[..., Awaitable[Any]]


def _fault(code: str, detail: str) -> MethodFault:
    return MethodFault(code, detail)


def _string(v: ua.Variant, name: str) -> str:
    if v.VariantType == ua.VariantType.Null or v.Value is None:
        return ""
    if v.VariantType != ua.VariantType.String or not isinstance(v.Value, str):
        raise _fault("BadTypeMismatch", f"{name} must be a String, got {v.VariantType.name}")
    return v.Value


def _uint32(v: ua.Variant, name: str) -> int:
    ints = {
        ua.VariantType.UInt32,
        ua.VariantType.Int32,
        ua.VariantType.UInt16,
        ua.VariantType.Int64,
        ua.VariantType.UInt64,
    }
    if v.VariantType not in ints or isinstance(v.Value, bool) or not isinstance(v.Value, int):
        raise _fault("BadTypeMismatch", f"{name} must be a UInt32, got {v.VariantType.name}")
    if not 0 <= v.Value <= 0xFFFFFFFF:
        raise _fault("BadOutOfRange", f"{name} {v.Value} is not a UInt32")
    return int(v.Value)


def _struct(v: ua.Variant, cls: type, ns: int, name: str) -> Any:
    try:
        return from_extension_object(v, ns, cls)
    except t.TypeDecodeError as exc:
        code = (
            "BadInvalidArgument"
            if "truncated" in exc.detail or "offset" in exc.detail
            else ("BadTypeMismatch")
        )
        raise _fault(code, f"{name}: {exc.detail}") from None


def _structs(v: ua.Variant, cls: type, ns: int, name: str) -> tuple[Any, ...]:
    if v.VariantType == ua.VariantType.Null or v.Value is None:
        return ()
    if not isinstance(v.Value, list):
        raise _fault("BadTypeMismatch", f"{name} must be an array of {t.TYPE_NAMES[cls]}")
    try:
        return from_extension_objects(v, ns, cls) or ()
    except t.TypeDecodeError as exc:
        raise _fault("BadTypeMismatch", f"{name}: {exc.detail}") from None


def _ret(status: t.ReturnStatus) -> ua.Variant:
    return ua.Variant(int(status), ua.VariantType.Int32)


@dataclass
class _File:
    node: ua.NodeId
    options: t.EventStreamArgument
    data: bytearray = field(default_factory=bytearray)


class Handlers:
    def __init__(self, engine: Engine, ns: int, ins: int) -> None:
        self.engine = engine
        self.ns = ns
        self.ins = ins
        self.files: dict[int, _File] = {}
        self._next_handle = 1
        self.on_file_node: Callable[[int, _File | None], Awaitable[None]] | None = None

    # ------------------------------------------------------------------ dispatch
    def for_method(self, name: str) -> Callback:
        n_in = len(SIGNATURES[name][0])
        n_out = len(SIGNATURES[name][1])

        async def callback(parent: ua.NodeId, *args: ua.Variant) -> Any:
            if len(args) < n_in:
                return ua.StatusCode(ua.StatusCodes.BadArgumentsMissing)
            if len(args) > n_in:
                return ua.StatusCode(ua.StatusCodes.BadTooManyArguments)
            if current_user.get() in self.engine.switches.viewers:
                nulls = [
                    ua.Variant(None, ua.VariantType.ExtensionObject),
                    ua.Variant("", ua.VariantType.String),
                ]
                return [_ret(t.ReturnStatus.InsufficientPrivilegeToExecute), *nulls[: n_out - 1]]
            try:
                return self._run(name, args)
            except MethodFault as fault:
                log.info("%s -> %s: %s", name, fault.code, fault.detail)
                return ua.StatusCode(getattr(ua.StatusCodes, fault.code))

        return callback

    def _run(self, name: str, a: tuple[ua.Variant, ...]) -> list[ua.Variant]:
        ns, e = self.ns, self.engine
        if name in POOL_REQUESTS:
            status, coll, token = e.request(
                name,
                _string(a[0], "SNCollectionID"),
                _uint32(a[1], "Count"),
                _string(a[2], "SNFormat"),
                _structs(a[3], t.KeyValue, ns, "PoolSelectionCriteria"),
                _string(a[4], "RequestToken"),
            )
            coll_v = (
                ua.Variant(None, ua.VariantType.ExtensionObject)
                if coll is None
                else ua.Variant(to_extension_object(coll, ns), ua.VariantType.ExtensionObject)
            )
            return [_ret(status), coll_v, ua.Variant(token, ua.VariantType.String)]
        if name.startswith("SN") and name != "SNInvalidatingEvent":
            status = e.push(
                name,
                _struct(a[0], t.SNCollection, ns, "SNCollection"),
                _structs(a[1], t.KeyValue, ns, "PoolSelectionCriteria"),
                _string(a[2], "SNFormat"),
            )
            return [_ret(status)]
        if name.startswith("Aggregation"):
            status = e.aggregate(
                name,
                _structs(a[0], t.Aggregation, ns, "AggregationElement"),
                _string(a[1], "ParentSNFormat"),
                _string(a[2], "PackedElementSNFormat"),
                _structs(a[3], t.KeyValue, ns, "AggregationContext"),
            )
            return [_ret(status)]
        cls = t.SNCollection if name == "SNInvalidatingEvent" else t.LabelCollection
        arg = "SNCollection" if cls is t.SNCollection else "LabelCollection"
        status = e.event(
            name,
            _struct(a[0], cls, ns, arg),
            _string(a[1], "SNFormat"),
            _structs(a[2], t.KeyValue, ns, "OPENSCSEventContext"),
        )
        return [_ret(status)]

    # ------------------------------------------------------------------ EPCISStream
    async def generate_for_write(self, parent: ua.NodeId, *args: ua.Variant) -> Any:
        if len(args) != 1:
            return ua.StatusCode(
                ua.StatusCodes.BadArgumentsMissing
                if not args
                else ua.StatusCodes.BadTooManyArguments
            )
        if current_user.get() in self.engine.switches.viewers:
            return ua.StatusCode(ua.StatusCodes.BadUserAccessDenied)
        try:
            options = _struct(args[0], t.EventStreamArgument, self.ns, "GenerateOptions")
        except MethodFault as fault:
            log.info("GenerateFileForWrite -> %s: %s", fault.code, fault.detail)
            return ua.StatusCode(getattr(ua.StatusCodes, fault.code))
        handle = self._next_handle
        self._next_handle += 1
        node = ua.NodeId(f"EPCISStream.File.{handle}", self.ins)
        self.files[handle] = _File(node, options)
        if self.on_file_node is not None:
            await self.on_file_node(handle, self.files[handle])
        return [ua.Variant(node, ua.VariantType.NodeId), ua.Variant(handle, ua.VariantType.UInt32)]

    async def generate_for_read(self, parent: ua.NodeId, *args: ua.Variant) -> Any:
        return ua.StatusCode(ua.StatusCodes.BadNotImplemented)  # 6.3.2.1: always an error

    def _file(self, parent: ua.NodeId, v: ua.Variant) -> tuple[int, _File]:
        handle = _uint32(v, "FileHandle")
        f = self.files.get(handle)
        if f is None or (
            parent.NamespaceIndex == self.ins
            and isinstance(parent.Identifier, str)
            and parent.Identifier.startswith("EPCISStream.File.")
            and parent != f.node
        ):
            raise _fault("BadInvalidArgument", f"unknown FileHandle {handle}")
        return handle, f

    async def write(self, parent: ua.NodeId, *args: ua.Variant) -> Any:
        try:
            if len(args) != 2:
                raise _fault("BadArgumentsMissing", "Write(FileHandle, Data)")
            _, f = self._file(parent, args[0])
            data = args[1].Value or b""
            if not isinstance(data, bytes):
                raise _fault("BadTypeMismatch", "Data must be a ByteString")
            if len(f.data) + len(data) > MAX_FILE_BYTES:
                raise _fault("BadOutOfRange", f"EPCIS file above {MAX_FILE_BYTES} bytes")
            f.data += data
            return []
        except MethodFault as fault:
            return ua.StatusCode(getattr(ua.StatusCodes, fault.code))

    async def close(self, parent: ua.NodeId, *args: ua.Variant) -> Any:
        """FileType.Close on the temporary file: abandons the transfer."""
        try:
            handle, _ = self._file(parent, args[0] if args else ua.Variant())
        except MethodFault as fault:
            return ua.StatusCode(getattr(ua.StatusCodes, fault.code))
        await self._drop(handle)
        return []

    async def close_and_commit(self, parent: ua.NodeId, *args: ua.Variant) -> Any:
        try:
            handle, f = self._file(parent, args[0] if args else ua.Variant())
        except MethodFault as fault:
            return ua.StatusCode(getattr(ua.StatusCodes, fault.code))
        await self._drop(handle)
        try:
            self.engine.epcis(bytes(f.data), _options_json(f.options), f.options.EventContext)
        except MethodFault as fault:
            log.info("CloseAndCommit -> %s: %s", fault.code, fault.detail)
            return ua.StatusCode(getattr(ua.StatusCodes, fault.code))
        return [ua.Variant(ua.NodeId(), ua.VariantType.NodeId)]

    async def _drop(self, handle: int) -> None:
        self.files.pop(handle, None)
        if self.on_file_node is not None:
            await self.on_file_node(handle, None)


def _options_json(o: t.EventStreamArgument) -> dict[str, object]:
    return {
        "SNFormat": o.SNFormat,
        "ParentSNFormat": o.ParentSNFormat,
        "PackedElementSNFormat": o.PackedElementSNFormat,
        "EventContext": [[kv.Key, kv.Value] for kv in o.EventContext or ()],
    }
