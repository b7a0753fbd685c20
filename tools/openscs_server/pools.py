"""Pools, serial number formats and the serial number state model (Tables 1 and 2).

No asyncua here: the address space layer decodes arguments, calls these functions and turns
``MethodFault`` into the OPC UA method result of Annex B.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.model import KeyValue, SerialNumberState

S = SerialNumberState

FORMATS = ("SERIALONLY", "EPCURI")
_AI21 = re.compile(r"^[!\"%&'()*+,\-./0-9:;<=>?A-Z_a-z]{1,20}$")


class MethodFault(Exception):
    """A call refused with an OPC UA method result (Annex B): ``code`` is e.g. BadInvalidState."""

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}")


@dataclass(frozen=True)
class PoolConfig:
    """One serial number pool. ``reference``: SGTIN indicator+item reference, SSCC extension."""

    pool_id: str
    sid_class: str  # "GS1:SGTIN" or "GS1:SSCC"
    company_prefix: str
    reference: str
    gtin: str = ""
    start: int = 100000
    capacity: int = 1_000_000

    @property
    def criteria(self) -> tuple[KeyValue, ...]:
        out = [KeyValue("PoolID", self.pool_id), KeyValue("SIDClass", self.sid_class)]
        if self.gtin:
            out.append(KeyValue("GTIN", self.gtin))
        return tuple(out)

    @property
    def is_sscc(self) -> bool:
        return self.sid_class == "GS1:SSCC"

    def fresh(self, n: int) -> str:
        """The n-th generated serial (SSCC: extension digit + serial reference)."""
        if self.is_sscc:
            width = 16 - len(self.company_prefix)
            return self.reference + str(self.start + n).zfill(width)
        return str(self.start + n)

    def to_format(self, serial: str, sn_format: str) -> str:
        if sn_format == "SERIALONLY":
            return serial
        if self.is_sscc:
            return f"urn:epc:id:sscc:{self.company_prefix}.{serial}"
        return f"urn:epc:id:sgtin:{self.company_prefix}.{self.reference}.{serial}"

    def uri_prefix(self) -> str:
        if self.is_sscc:
            return f"urn:epc:id:sscc:{self.company_prefix}."
        return f"urn:epc:id:sgtin:{self.company_prefix}.{self.reference}."

    def from_format(self, value: str, sn_format: str) -> str | None:
        """The serial inside ``value``, or None when it does not belong to / fit this pool."""
        if sn_format == "EPCURI":
            if not value.startswith(self.uri_prefix()):
                return None
            value = value[len(self.uri_prefix()) :]
        if self.is_sscc:
            ok = value.isdigit() and len(value) == 17 - len(self.company_prefix)
        else:
            ok = bool(_AI21.match(value))
        return value if ok else None


DEFAULT_POOLS = (
    PoolConfig("GTIN-09506000134352", "GS1:SGTIN", "9506000", "013435", gtin="09506000134352"),
    PoolConfig("GTIN-09506000134369", "GS1:SGTIN", "9506000", "013436", gtin="09506000134369"),
    PoolConfig("SSCC-9506000", "GS1:SSCC", "9506000", "1", start=1),
)

# ------------------------------------------------------------------ the state model
# method -> (states a serial number may be in, None = unknown to the server; new state;
#            whether the serial is then held by a client (issued) rather than free in the pool)
POOL_PUSHES: dict[str, tuple[frozenset[S | None], S, bool]] = {
    "SNReturnUnallocated": (frozenset({S.Unallocated}), S.Unassigned, False),  # sn_returning
    "SNReturnAllocated": (frozenset({S.Allocated}), S.Unallocated, False),  # sn_deallocating
    "SNtoUnallocated": (frozenset({None, S.Unassigned}), S.Unallocated, False),
    "SNtoAllocated": (frozenset({None, S.Unassigned, S.Unallocated}), S.Allocated, True),
    "SNtoEncoded": (frozenset({None, S.Allocated}), S.Encoded, True),
}
# request method -> (free states it draws from, state handed out)
POOL_REQUESTS: dict[str, tuple[tuple[S, ...], S]] = {
    "SNRequestUnassigned": ((S.Unassigned,), S.Unassigned),  # provisioning
    "SNRequestUnallocated": ((S.Unallocated, S.Unassigned), S.Unallocated),
    "SNRequestAllocated": ((S.Unallocated, S.Unassigned), S.Allocated),  # sn_allocating
}
EVENTS: dict[str, tuple[frozenset[S | None], S]] = {
    "SNInvalidatingEvent": (
        frozenset({S.Unassigned, S.Unallocated, S.Allocated, S.Encoded}),
        S.SNInvalid,
    ),
    "LabelsEncodingEvent": (frozenset({S.Allocated}), S.Encoded),
    "LabelsScrappingEvent": (frozenset({S.Encoded}), S.LabelScrapped),
    "LabelsInspectingEvent": (frozenset({S.Encoded}), S.Encoded),
    "LabelsSamplingEvent": (frozenset({S.Encoded}), S.LabelSampled),
    "SIDCommissioningEvent": (frozenset({S.Allocated, S.Encoded}), S.Commissioned),
    "SIDInspectingEvent": (frozenset({S.Commissioned}), S.Sampled),
    "SIDShippingEvent": (frozenset({S.Commissioned}), S.Released),
    "SIDDecommissioningEvent": (frozenset({S.Commissioned, S.Sampled}), S.Inactive),
    "SIDDestroyingEvent": (frozenset({S.Commissioned, S.Sampled, S.Inactive}), S.Destroyed),
}
# EPCIS business step -> the event method whose transition it applies
EPCIS_STEPS = {
    "commissioning": "SIDCommissioningEvent",
    "decommissioning": "SIDDecommissioningEvent",
    "shipping": "SIDShippingEvent",
    "destroying": "SIDDestroyingEvent",
    "inspecting": "SIDInspectingEvent",
}


def check_transition(
    method: str, allowed: frozenset[S | None], serial: str, current: S | None
) -> None:
    if current not in allowed:
        now = "unknown to the server" if current is None else f"in state {current.name}"
        legal = sorted("unknown" if s is None else s.name for s in allowed)
        raise MethodFault(
            "BadInvalidState",
            f"{method}: serial number {serial} is {now}; allowed from {', '.join(legal)}",
        )
