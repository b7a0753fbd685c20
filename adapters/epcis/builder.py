"""Build EPCIS 2.0 XML documents for OPEN-SCS EPCISStream transfers (Annex C).

ObjectEvents carry commissioning / decommissioning / shipping / destroying / inspecting with
the CBV business step, action and disposition of ``BIZ_STEPS``; AggregationEvents carry
packing (ADD) and unpacking (DELETE). Identifiers must already be EPC pure-identity URIs
(``urn:epc:id:sgtin:...``, ``urn:epc:id:sscc:...``) or CBV HTTP URLs.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from lxml import etree

from gateway.errors import LocalProtocolError

EPCIS_NS = "urn:epcglobal:epcis:xsd:2"
CBVMDA_NS = "urn:epcglobal:cbv:mda"
BIZSTEP = "urn:epcglobal:cbv:bizstep:"
DISP = "urn:epcglobal:cbv:disp:"

# business step -> (event kind, action, disposition)
BIZ_STEPS: dict[str, tuple[str, str, str]] = {
    "commissioning": ("ObjectEvent", "ADD", "active"),
    "decommissioning": ("ObjectEvent", "DELETE", "inactive"),
    "shipping": ("ObjectEvent", "OBSERVE", "in_transit"),
    "destroying": ("ObjectEvent", "DELETE", "destroyed"),
    "inspecting": ("ObjectEvent", "OBSERVE", "active"),
    "packing": ("AggregationEvent", "ADD", "in_progress"),
    "unpacking": ("AggregationEvent", "DELETE", "in_progress"),
}


@dataclass(frozen=True)
class ObjectEvent:
    """One EPCIS ObjectEvent; ``bizstep`` is a key of BIZ_STEPS (without the CBV prefix)."""

    bizstep: str
    epcs: tuple[str, ...]
    event_time: datetime
    read_point: str = ""
    biz_location: str = ""
    ilmd: Mapping[str, str] = field(default_factory=dict)  # cbvmda local name -> value
    event_id: str = ""


@dataclass(frozen=True)
class AggregationEvent:
    """One EPCIS AggregationEvent: ``bizstep`` is "packing" or "unpacking"."""

    bizstep: str
    parent: str
    children: tuple[str, ...]
    event_time: datetime
    read_point: str = ""
    biz_location: str = ""
    event_id: str = ""


Event = ObjectEvent | AggregationEvent


def _stamp(when: datetime) -> str:
    if when.tzinfo is None or when.utcoffset() is None:
        raise LocalProtocolError(f"EPCIS times need a time zone: {when!r}")
    return when.isoformat(timespec="milliseconds")


def _offset(when: datetime) -> str:
    stamp = when.isoformat()
    return "+00:00" if stamp.endswith("Z") else stamp[-6:]


def _sub(parent: etree._Element, tag: str, text: str | None = None) -> etree._Element:
    el = etree.SubElement(parent, tag)
    if text is not None:
        el.text = text
    return el


def _event(parent: etree._Element, ev: Event) -> None:
    kind, action, disposition = BIZ_STEPS.get(ev.bizstep, ("", "", ""))
    if kind != type(ev).__name__:
        raise LocalProtocolError(f"{type(ev).__name__} cannot carry business step {ev.bizstep!r}")
    el = _sub(parent, kind)
    _sub(el, "eventTime", _stamp(ev.event_time))
    _sub(el, "eventTimeZoneOffset", _offset(ev.event_time))
    _sub(el, "eventID", ev.event_id or uuid.uuid4().urn)
    if isinstance(ev, ObjectEvent):
        if not ev.epcs:
            raise LocalProtocolError("an ObjectEvent needs at least one EPC")
        epcs = _sub(el, "epcList")
        for epc in ev.epcs:
            _sub(epcs, "epc", epc)
    else:
        _sub(el, "parentID", ev.parent)
        children = _sub(el, "childEPCs")
        for epc in ev.children:
            _sub(children, "epc", epc)
    _sub(el, "action", action)
    _sub(el, "bizStep", BIZSTEP + ev.bizstep)
    _sub(el, "disposition", DISP + disposition)
    if ev.read_point:
        _sub(_sub(el, "readPoint"), "id", ev.read_point)
    if ev.biz_location:
        _sub(_sub(el, "bizLocation"), "id", ev.biz_location)
    if isinstance(ev, ObjectEvent) and ev.ilmd:
        ilmd = _sub(el, "ilmd")
        for name, value in ev.ilmd.items():
            _sub(ilmd, f"{{{CBVMDA_NS}}}{name}", value)


def build_document(events: Sequence[Event], created: datetime) -> bytes:
    """A UTF-8 EPCIS 2.0 document with the events in the given (chronological) order."""
    nsmap = {"epcis": EPCIS_NS, "cbvmda": CBVMDA_NS}
    root = etree.Element(
        f"{{{EPCIS_NS}}}EPCISDocument",
        nsmap=nsmap,
        schemaVersion="2.0",
        creationDate=_stamp(created),
    )
    event_list = _sub(_sub(root, "EPCISBody"), "EventList")
    for ev in events:
        _event(event_list, ev)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
