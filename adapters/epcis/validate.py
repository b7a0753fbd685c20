"""Structural and Annex C checks of an EPCIS 2.0 XML document (project's own rules).

``validate_epcis(xml_bytes) -> list[str]`` returns every problem found (empty = valid). It
parses with a safe parser (no DTD, no entities, no network) and checks what an OPEN-SCS event
manager needs before it accepts an EPCISStream file: document shape and element order, time
stamps with time zones, actions, EPC URI syntax, CBV business steps and dispositions, the
Annex C rules (commissioning before use, chronology per EPC, SSCC for shipping) and the
MaxEPCISObjectEventSIDs / MaxEPCISaggregationEvents limits.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import datetime

from lxml import etree

EPCIS_NS = "urn:epcglobal:epcis:xsd:2"
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024

# The GS1 XSD's DateTimeStamp pattern (EPCglobal-epcis-2_0.xsd), used with fullmatch as XSD
# patterns are anchored: offsets run from -14:00 to +14:00 (hh 00-13 with any minutes, or
# exactly 14:00). eventTimeZoneOffset is an xsd:string in the XSD; the EPCIS 2.0 standard
# gives it the same +hh:mm / -hh:mm form and range, so it is checked with the same pattern.
_TZ = r"[+-]((0[0-9]|1[0-3]):[0-5][0-9]|14:00)"
_STAMP = re.compile(
    r"[0-9]{4}-(1[0-2]|0[1-9])-(3[01]|0[1-9]|[12][0-9])T(2[0-3]|[01][0-9]):[0-5][0-9]:[0-5][0-9]"
    rf"(\.[0-9]+)?(Z|{_TZ})"
)
_OFFSET = re.compile(_TZ)
_EPC = re.compile(
    r"^(urn:epc:id:(sgtin:\d+\.\d+\.[!-~]{1,20}|sscc:\d+\.\d+|sgln:\d+\.\d*\.[!-~]{1,20}"
    r"|pgln:\d+\.\d*|grai:\d+\.\d*\.[!-~]{1,16}|giai:\d+\.[!-~]+|[a-z]+:[!-~]+)"
    r"|https?://[^\s]+)$"
)
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s]+$")
_ACTIONS = {"ADD", "OBSERVE", "DELETE"}
_COMMON = (
    "eventTime",
    "recordTime",
    "eventTimeZoneOffset",
    "eventID",
    "errorDeclaration",
    "certificationInfo",
)
_TAIL = ("action", "bizStep", "disposition", "readPoint", "bizLocation", "bizTransactionList")
_ORDER = {
    "ObjectEvent": (
        *_COMMON,
        "epcList",
        *_TAIL,
        "quantityList",
        "sourceList",
        "destinationList",
        "sensorElementList",
        "persistentDisposition",
        "ilmd",
        "extension",
    ),
    "AggregationEvent": (
        *_COMMON,
        "parentID",
        "childEPCs",
        *_TAIL,
        "childQuantityList",
        "sourceList",
        "destinationList",
        "sensorElementList",
        "persistentDisposition",
        "extension",
    ),
}
_OTHER_EVENTS = {"TransactionEvent", "TransformationEvent", "AssociationEvent", "extension"}
_RANK = {"commissioning": 0, "packing": 1, "shipping": 2}


def _elements(parent: etree._Element) -> list[etree._Element]:
    """The element children of ``parent``: processing instructions (``<?station line2?>``)
    and comments are allowed anywhere by the XSD and carry no EPCIS data, so every walk over
    children skips them (their ``tag`` is a function, not a string)."""
    return [c for c in parent if isinstance(c.tag, str)]


def parse_safely(xml_bytes: bytes) -> etree._ElementTree:
    """Parse without DTDs, entity expansion or network access (raises etree.XMLSyntaxError)."""
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
    )
    return etree.ElementTree(etree.fromstring(xml_bytes, parser))


def _stamp(text: str | None, where: str, problems: list[str]) -> datetime | None:
    if not text or not _STAMP.fullmatch(text.strip()):
        problems.append(
            f"{where}: {text!r} is not a date-time with a time zone between -14:00 and +14:00"
        )
        return None
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        problems.append(f"{where}: {text!r} is not a valid date-time")
        return None


class _Checker:
    def __init__(self, known_commissioned: Collection[str] | None) -> None:
        self.problems: list[str] = []
        self.known = known_commissioned
        self.commissioned: set[str] = set()
        self.history: dict[str, list[tuple[datetime, str]]] = {}
        self.object_epcs = 0
        self.aggregations = 0

    def event(self, ev: etree._Element, where: str) -> None:
        kind = etree.QName(ev).localname
        order = _ORDER[kind]
        names = [
            etree.QName(c).localname for c in _elements(ev) if etree.QName(c).namespace is None
        ]
        unknown = [n for n in names if n not in order]
        if unknown:
            self.problems.append(f"{where}: unexpected element(s) {', '.join(unknown)}")
        known = [order.index(n) for n in names if n in order]
        if known != sorted(known) or len(set(names)) != len(names):
            self.problems.append(f"{where}: elements out of order or repeated: {names}")
        when = _stamp(ev.findtext("eventTime"), f"{where}/eventTime", self.problems)
        offset = ev.findtext("eventTimeZoneOffset") or ""
        if not _OFFSET.fullmatch(offset):
            self.problems.append(
                f"{where}/eventTimeZoneOffset: {offset!r} is not ±hh:mm between -14:00 and +14:00"
            )
        action = ev.findtext("action")
        if action not in _ACTIONS:
            self.problems.append(f"{where}/action: {action!r} is not ADD, OBSERVE or DELETE")
        step = (ev.findtext("bizStep") or "").strip()
        disp = (ev.findtext("disposition") or "").strip()
        for name, value in (("bizStep", step), ("disposition", disp)):
            if value and not _URI.match(value):
                self.problems.append(f"{where}/{name}: {value!r} is not a URI")
        short = step.rsplit(":", 1)[-1].rsplit("/", 1)[-1] if step else ""
        if kind == "ObjectEvent":
            epcs = self._epcs(ev.find("epcList"), f"{where}/epcList")
            self.object_epcs += len(epcs)
            self._annex_c_object(short, action, disp, epcs, where)
        else:
            self.aggregations += 1
            parent = (ev.findtext("parentID") or "").strip()
            children = self._epcs(ev.find("childEPCs"), f"{where}/childEPCs")
            if action in {"ADD", "DELETE"} and not parent:
                self.problems.append(f"{where}: {action} AggregationEvent needs a parentID")
            elif parent and not _EPC.match(parent):
                self.problems.append(f"{where}/parentID: {parent!r} is not an EPC URI")
            epcs = [parent, *children] if parent else children
            if short == "packing" and action != "ADD":
                self.problems.append(f"{where}: packing must use action ADD")
            self._require_commissioned(epcs, where)
        if when is not None:
            for epc in epcs:
                self._chronology(epc, when, short, where)

    def _epcs(self, lst: etree._Element | None, where: str) -> list[str]:
        if lst is None:
            return []
        out = []
        for i, el in enumerate(_elements(lst)):
            value = (el.text or "").strip()
            if etree.QName(el).localname != "epc" or not _EPC.match(value):
                self.problems.append(f"{where}[{i}]: {value!r} is not an EPC URI")
            out.append(value)
        return out

    def _annex_c_object(
        self, short: str, action: str | None, disp: str, epcs: list[str], where: str
    ) -> None:
        if not epcs:
            self.problems.append(f"{where}: ObjectEvent without EPCs")
        if short == "commissioning":
            if action != "ADD" or not disp.endswith(":active"):
                self.problems.append(f"{where}: commissioning needs action ADD, disposition active")
            self.commissioned.update(epcs)
            return
        if short == "shipping":
            if action != "OBSERVE" or not disp.endswith(":in_transit"):
                self.problems.append(
                    f"{where}: shipping needs action OBSERVE, disposition in_transit"
                )
            for epc in epcs:
                if not epc.startswith("urn:epc:id:sscc:"):
                    self.problems.append(f"{where}: shipped unit {epc} is not an SSCC")
        self._require_commissioned(epcs, where)

    def _require_commissioned(self, epcs: list[str], where: str) -> None:
        if self.known is None:
            return
        for epc in epcs:
            if epc not in self.commissioned and epc not in self.known:
                self.problems.append(f"{where}: {epc} was never commissioned")

    def _chronology(self, epc: str, when: datetime, step: str, where: str) -> None:
        seen = self.history.setdefault(epc, [])
        for earlier, earlier_step in seen:
            if earlier == when:
                self.problems.append(f"{where}: {epc} shares its timestamp with another event")
            elif step in _RANK and earlier_step in _RANK:
                later_step = _RANK[step] > _RANK[earlier_step]
                earlier_rank = _RANK[step] < _RANK[earlier_step]
                if (later_step and when < earlier) or (earlier_rank and when > earlier):
                    self.problems.append(
                        f"{where}: {epc} {step} at {when.isoformat()} is out of order with "
                        f"{earlier_step} at {earlier.isoformat()}"
                    )
        seen.append((when, step))


def validate_epcis(
    xml_bytes: bytes,
    *,
    max_object_event_sids: int = 0,
    max_aggregation_events: int = 0,
    known_commissioned: Collection[str] | None = None,
) -> list[str]:
    """Every problem of an EPCIS 2.0 XML document; [] when it is acceptable.

    Limits of 0 mean unlimited. ``known_commissioned`` (EPC URIs commissioned before this
    document) turns on the Annex C rule that every identifier is commissioned before use.
    """
    if len(xml_bytes) > MAX_DOCUMENT_BYTES:
        return [f"document is {len(xml_bytes)} bytes, above {MAX_DOCUMENT_BYTES}"]
    if b"<!DOCTYPE" in xml_bytes[:4096].upper() or b"<!ENTITY" in xml_bytes.upper():
        return ["DOCTYPE/ENTITY declarations are not allowed"]
    try:
        tree = parse_safely(xml_bytes)
    except etree.XMLSyntaxError as exc:
        return [f"not well-formed XML: {exc}"]
    enc = (tree.docinfo.encoding or "UTF-8").upper()
    if enc not in {"UTF-8", "UTF8"}:
        return [f"encoding is {enc}, Annex C requires UTF-8"]
    root = tree.getroot()
    if root.tag != f"{{{EPCIS_NS}}}EPCISDocument":
        return [f"root element is {root.tag}, expected {{{EPCIS_NS}}}EPCISDocument"]
    chk = _Checker(known_commissioned)
    if root.get("schemaVersion") not in {"2.0", "2"}:
        chk.problems.append(f"schemaVersion is {root.get('schemaVersion')!r}, expected 2.0")
    _stamp(root.get("creationDate"), "creationDate", chk.problems)
    body = root.find("EPCISBody")
    children = [
        etree.QName(c).localname for c in _elements(root) if etree.QName(c).namespace is None
    ]
    if body is None or children[:2] not in (
        ["EPCISBody"],
        ["EPCISHeader", "EPCISBody"],
        ["EPCISBody", "extension"],
    ):
        chk.problems.append(f"EPCISDocument children {children}: expected [EPCISHeader] EPCISBody")
        return chk.problems
    event_list = body.find("EventList")
    events = [] if event_list is None else _elements(event_list)
    if not events:
        chk.problems.append("EPCISBody has no EventList with events")
        return chk.problems
    for i, ev in enumerate(events):
        name = etree.QName(ev).localname
        where = f"EventList[{i}] {name}"
        if etree.QName(ev).namespace is not None or name not in {*_ORDER, *_OTHER_EVENTS}:
            chk.problems.append(f"{where}: not an EPCIS event")
        elif name in _ORDER:
            chk.event(ev, where)
    if max_object_event_sids and chk.object_epcs > max_object_event_sids:
        chk.problems.append(
            f"{chk.object_epcs} ObjectEvent EPCs, above MaxEPCISObjectEventSIDs "
            f"{max_object_event_sids}"
        )
    if max_aggregation_events and chk.aggregations > max_aggregation_events:
        chk.problems.append(
            f"{chk.aggregations} AggregationEvents, above MaxEPCISaggregationEvents "
            f"{max_aggregation_events}"
        )
    return chk.problems


def document_events(xml_bytes: bytes) -> list[dict[str, object]]:
    """The ObjectEvents/AggregationEvents of a (validated) document as plain dicts."""
    root = parse_safely(xml_bytes).getroot()
    out: list[dict[str, object]] = []
    for ev in root.iterfind("EPCISBody/EventList/*"):
        kind = etree.QName(ev).localname
        if kind not in _ORDER:
            continue
        out.append(
            {
                "kind": kind,
                "action": ev.findtext("action"),
                "bizStep": (ev.findtext("bizStep") or "").rsplit(":", 1)[-1],
                "eventTime": ev.findtext("eventTime"),
                "parentID": ev.findtext("parentID"),
                "epcs": [e.text for e in ev.iterfind("epcList/epc")]
                + [e.text for e in ev.iterfind("childEPCs/epc")],
            }
        )
    return out
