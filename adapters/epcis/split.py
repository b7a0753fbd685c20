"""Split an EPCIS 2.0 XML document to fit an event manager's limits (sans-IO).

OPEN-SCS event managers publish ``MaxEPCISObjectEventSIDs`` (EPCs in the ObjectEvents of one
document) and ``MaxEPCISaggregationEvents`` (AggregationEvents in one document). A document
above either is cut into several documents with the same root and header, events kept in
their order; an ObjectEvent with more EPCs than the limit becomes several ObjectEvents with
the same fields and consecutive parts of its ``epcList``. Sent one after another, the parts
apply in order (what is commissioned in part i is known to part i+1).

EPCIS requires every event to have its own ``eventID``, and a repository deduplicating on it
would drop every part after the first, so when an ObjectEvent with an ``eventID`` is cut into
n parts, every part (the first included: none of them is the original event) gets
``urn:uuid:`` + uuid5(NAMESPACE_URL, "<original eventID>#<i>/<n>"), i counting from 1. The IDs
are deterministic: the same document cut to the same limit gives the same IDs, so a resent
part is still recognised as a duplicate. An event without an ``eventID`` gets none.

Processing instructions and comments between events carry no EPCIS data; they stay where
they were, in the part that holds the events around them.
"""

from __future__ import annotations

import copy
import uuid

from lxml import etree

from adapters.epcis.validate import parse_safely


def _epcs(event: etree._Element) -> list[etree._Element]:
    return list(event.iterfind("epcList/epc"))


def _cut_object_event(event: etree._Element, limit: int) -> list[etree._Element]:
    epcs = _epcs(event)
    if not limit or len(epcs) <= limit:
        return [event]
    parts = []
    original_id = (event.findtext("eventID") or "").strip()
    count = -(-len(epcs) // limit)
    for start in range(0, len(epcs), limit):
        part = copy.deepcopy(event)
        event_id = part.find("eventID")
        if event_id is not None and original_id:
            name = f"{original_id}#{start // limit + 1}/{count}"
            event_id.text = uuid.uuid5(uuid.NAMESPACE_URL, name).urn
        epc_list = part.find("epcList")
        assert epc_list is not None
        for el in list(epc_list):
            epc_list.remove(el)
        for el in epcs[start:start + limit]:
            epc_list.append(copy.deepcopy(el))
        parts.append(part)
    return parts


def split_document(xml_bytes: bytes, max_object_event_sids: int = 0,
                   max_aggregation_events: int = 0) -> list[bytes]:
    """The document itself when it fits (limits of 0 = unlimited), else its parts.

    Raises ``etree.XMLSyntaxError`` or ``ValueError`` for a document without
    EPCISBody/EventList (it cannot be split; the server's own check will name the problem).
    """
    if not max_object_event_sids and not max_aggregation_events:
        return [xml_bytes]
    tree = parse_safely(xml_bytes)
    root = tree.getroot()
    events = root.find("EPCISBody/EventList")
    if events is None:
        raise ValueError("no EPCISBody/EventList to split")
    pieces: list[etree._Element] = []
    for event in events:
        if not isinstance(event.tag, str):  # processing instruction or comment
            pieces.append(event)
        elif etree.QName(event).localname == "ObjectEvent":
            pieces += _cut_object_event(event, max_object_event_sids)
        else:
            pieces.append(event)
    chunks: list[list[etree._Element]] = [[]]
    sids = aggregations = 0
    for piece in pieces:
        kind = etree.QName(piece).localname if isinstance(piece.tag, str) else ""
        n_sids = len(_epcs(piece)) if kind == "ObjectEvent" else 0
        n_agg = 1 if kind == "AggregationEvent" else 0
        over = ((max_object_event_sids and sids + n_sids > max_object_event_sids)
                or (max_aggregation_events and aggregations + n_agg > max_aggregation_events))
        if over and chunks[-1]:
            chunks.append([])
            sids = aggregations = 0
        chunks[-1].append(piece)
        sids += n_sids
        aggregations += n_agg
    if len(chunks) == 1:
        return [xml_bytes]
    out = []
    for chunk in chunks:
        for el in list(events):
            events.remove(el)
        for el in chunk:
            events.append(copy.deepcopy(el))
        out.append(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
    return out
