"""Build EPCIS 2.0 XML documents for OPEN-SCS EPCISStream transfers (Annex C).

ObjectEvents carry commissioning / decommissioning / shipping / destroying / inspecting with
the CBV business step, action and disposition of ``BIZ_STEPS``; AggregationEvents carry
packing (ADD) and unpacking (DELETE). Identifiers must already be EPC pure-identity URIs
(``urn:epc:id:sgtin:...``, ``urn:epc:id:sscc:...``) or CBV HTTP URLs.

Misuse is refused before anything is built, naming the field: ``EventTypeError`` (a
``TypeError``) for a value of the wrong type (``event_time`` not a datetime, ``epcs`` given as
one bare string), ``EventValueError`` (a ``ValueError``) for a value the XSD would refuse (no
time zone, an offset with seconds or beyond ±14:00, an ILMD name that is not an XML name, text
XML cannot carry). Both are ``LocalProtocolError``s: the caller's bug, not the peer's.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

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

_MAX_OFFSET = timedelta(hours=14)  # the XSD's DateTimeStamp: -14:00 .. +14:00


class EventValueError(LocalProtocolError, ValueError):
    """A field's value cannot go into a valid EPCIS document; the text names the field."""


class EventTypeError(LocalProtocolError, TypeError):
    """A field has the wrong type; the text names the field."""


def _checked_time(when: object, name: str) -> datetime:
    """``when`` if it is an aware datetime whose offset EPCIS can write as ±hh:mm."""
    if not isinstance(when, datetime):
        raise EventTypeError(f"{name}: expected a datetime, got {type(when).__name__} {when!r}")
    offset = when.utcoffset()
    if offset is None:
        raise EventValueError(f"{name}: EPCIS times need a time zone: {when!r}")
    if offset % timedelta(minutes=1):
        raise EventValueError(f"{name}: time zone offset {offset} has seconds; EPCIS offsets "
                              f"are whole minutes (±hh:mm): {when!r}")
    if abs(offset) > _MAX_OFFSET:
        raise EventValueError(f"{name}: time zone offset {offset} is beyond ±14:00: {when!r}")
    return when


def _stamp(when: object, name: str) -> str:
    return _checked_time(when, name).isoformat(timespec="milliseconds")


def _offset(when: datetime, name: str) -> str:
    offset = _checked_time(when, name).utcoffset()
    assert offset is not None
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _identifiers(values: object, name: str) -> tuple[str, ...]:
    """A sequence of identifier strings; a bare string would be cut into characters."""
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise EventTypeError(f"{name}: expected a sequence of EPC URIs, got "
                             f"{type(values).__name__} {values!r}")
    bad = [v for v in values if not isinstance(v, str)]
    if bad:
        raise EventTypeError(f"{name}: EPC URIs must be strings, got {bad!r}")
    return tuple(values)


def _sub(parent: etree._Element, tag: str, text: str | None = None,
         name: str = "") -> etree._Element:
    el = etree.SubElement(parent, tag)
    if text is not None:
        if not isinstance(text, str):
            raise EventTypeError(f"{name or tag}: expected a string, got {text!r}")
        try:
            el.text = text
        except ValueError as exc:  # control characters, NUL: not XML text
            raise EventValueError(f"{name or tag}: {text!r} cannot be XML text: {exc}") from exc
    return el


def _event(parent: etree._Element, ev: Event) -> None:
    kind, action, disposition = BIZ_STEPS.get(ev.bizstep, ("", "", ""))
    if kind != type(ev).__name__:
        raise LocalProtocolError(f"{type(ev).__name__} cannot carry business step {ev.bizstep!r}")
    el = _sub(parent, kind)
    _sub(el, "eventTime", _stamp(ev.event_time, "event_time"))
    _sub(el, "eventTimeZoneOffset", _offset(ev.event_time, "event_time"))
    _sub(el, "eventID", ev.event_id or uuid.uuid4().urn, "event_id")
    if isinstance(ev, ObjectEvent):
        epc_values = _identifiers(ev.epcs, "epcs")
        if not epc_values:
            raise EventValueError("epcs: an ObjectEvent needs at least one EPC")
        epcs = _sub(el, "epcList")
        for epc in epc_values:
            _sub(epcs, "epc", epc, "epcs")
    else:
        _sub(el, "parentID", ev.parent, "parent")
        children = _sub(el, "childEPCs")
        for epc in _identifiers(ev.children, "children"):
            _sub(children, "epc", epc, "children")
    _sub(el, "action", action)
    _sub(el, "bizStep", BIZSTEP + ev.bizstep)
    _sub(el, "disposition", DISP + disposition)
    if ev.read_point:
        _sub(_sub(el, "readPoint"), "id", ev.read_point, "read_point")
    if ev.biz_location:
        _sub(_sub(el, "bizLocation"), "id", ev.biz_location, "biz_location")
    if isinstance(ev, ObjectEvent) and ev.ilmd:
        ilmd = _sub(el, "ilmd")
        for name, value in ev.ilmd.items():
            try:
                tag = etree.QName(CBVMDA_NS, name)
            except (TypeError, ValueError) as exc:
                raise EventValueError(
                    f"ilmd: {name!r} is not an XML name (a cbvmda local name such as "
                    "lotNumber)") from exc
            _sub(ilmd, tag.text, value, f"ilmd[{name!r}]")


def build_document(events: Sequence[Event], created: datetime) -> bytes:
    """A UTF-8 EPCIS 2.0 document with the events in the given (chronological) order."""
    nsmap = {"epcis": EPCIS_NS, "cbvmda": CBVMDA_NS}
    root = etree.Element(
        f"{{{EPCIS_NS}}}EPCISDocument",
        nsmap=nsmap,
        schemaVersion="2.0",
        creationDate=_stamp(created, "created"),
    )
    event_list = _sub(_sub(root, "EPCISBody"), "EventList")
    for ev in events:
        _event(event_list, ev)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
