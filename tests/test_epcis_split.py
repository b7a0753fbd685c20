"""Cutting an EPCIS document to an event manager's limits (sans-IO)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from lxml import etree

from adapters.epcis.builder import AggregationEvent, ObjectEvent, build_document
from adapters.epcis.split import split_document
from adapters.epcis.validate import document_events, validate_epcis
from tests.conftest import SHARED

XSD = SHARED / "reference" / "epcis" / "epcis-2.0" / "EPCglobal-epcis-2_0.xsd"

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(XSD)))


def sgtin(n: int) -> str:
    return f"urn:epc:id:sgtin:9506000.013435.{100000 + n}"


def sscc(n: int) -> str:
    return f"urn:epc:id:sscc:9506000.{1000000000 + n}"


def document() -> bytes:
    items = tuple(sgtin(n) for n in range(7))
    return build_document([
        ObjectEvent("commissioning", items, T0),
        ObjectEvent("commissioning", (sscc(1), sscc(2)), T0 + timedelta(seconds=1)),
        AggregationEvent("packing", sscc(1), items[:4], T0 + timedelta(seconds=2)),
        AggregationEvent("packing", sscc(2), items[4:], T0 + timedelta(seconds=3)),
    ], T0 + timedelta(minutes=1))


def test_a_document_within_the_limits_is_sent_as_it_is():
    doc = document()
    assert split_document(doc) == [doc]
    assert split_document(doc, 100, 100) == [doc]


def test_parts_respect_the_limits_keep_the_order_and_lose_nothing():
    doc = document()
    parts = split_document(doc, max_object_event_sids=3, max_aggregation_events=1)
    assert len(parts) > 1
    for part in parts:  # every part is a valid document within both limits
        assert validate_epcis(part, max_object_event_sids=3, max_aggregation_events=1) == []
    whole = [(e["kind"], e["bizStep"], e["parentID"], tuple(e["epcs"]))  # type: ignore[arg-type]
             for e in document_events(doc)]
    joined = [(e["kind"], e["bizStep"], e["parentID"], e["epcs"])
              for part in parts for e in document_events(part)]
    # the same events in the same order; the 7-EPC commissioning is cut into 3+3+1
    commissioning = [tuple(epcs) for kind, step, _, epcs in joined
                     if kind == "ObjectEvent" and epcs and str(epcs[0]).startswith(
                         "urn:epc:id:sgtin")]
    assert commissioning == [tuple(sgtin(n) for n in range(3)),
                             tuple(sgtin(n) for n in range(3, 6)), (sgtin(6),)]
    flat = [epc for c in commissioning for epc in c]
    assert flat == list(whole[0][3])
    assert [j for j in joined if j[0] == "AggregationEvent"] == [
        (k, s, p, list(e)) for k, s, p, e in whole if k == "AggregationEvent"]
    # the limits alone would refuse the original
    assert validate_epcis(doc, max_object_event_sids=3, max_aggregation_events=1)


def test_processing_instructions_between_events_stay_in_place(schema: etree.XMLSchema) -> None:
    doc = document()
    for old, new in [(b"<EventList>", b"<EventList><?station line2?>"),
                     (b"<epcList>", b"<epcList><?scanner 7?>"),
                     (b"</EventList>", b"<?end?></EventList>")]:
        doc = doc.replace(old, new, 1)
    assert schema.validate(etree.fromstring(doc)), schema.error_log
    parts = split_document(doc, max_object_event_sids=3, max_aggregation_events=1)
    assert len(parts) > 1
    for part in parts:
        assert schema.validate(etree.fromstring(part)), schema.error_log
        assert validate_epcis(part, max_object_event_sids=3, max_aggregation_events=1) == []
    assert b"<?station line2?>" in parts[0] and b"<?end?>" in parts[-1]
    plain = split_document(document(), max_object_event_sids=3, max_aggregation_events=1)
    assert [e["epcs"] for p in parts for e in document_events(p)] == [
        e["epcs"] for p in plain for e in document_events(p)]


def _event_ids(part: bytes) -> list[str | None]:
    return [e.findtext("eventID") for e in etree.fromstring(part).iter("ObjectEvent")]


def test_every_part_of_a_cut_event_has_its_own_stable_event_id(schema: etree.XMLSchema) -> None:
    items = tuple(sgtin(n) for n in range(7))
    original = "urn:uuid:7206088d-dea7-4a8c-8546-224602c440e7"
    doc = build_document([ObjectEvent("commissioning", items, T0, ilmd={"lotNumber": "L1"},
                                      event_id=original)], T0)
    parts = split_document(doc, max_object_event_sids=3)
    assert len(parts) == 3
    ids = [i for part in parts for i in _event_ids(part)]
    assert len(ids) == 3 and len(set(ids)) == 3 and original not in ids
    assert all(str(i).startswith("urn:uuid:") for i in ids)
    assert ids == [i for part in split_document(doc, max_object_event_sids=3)
                   for i in _event_ids(part)]  # the same on a second split
    for part in parts:
        assert schema.validate(etree.fromstring(part)), schema.error_log
        assert validate_epcis(part, max_object_event_sids=3) == []
    # an event without an eventID is cut into parts without one
    no_id = re.sub(rb"<eventID>[^<]*</eventID>\s*", b"", doc)
    assert b"eventID" not in no_id
    parts = split_document(no_id, max_object_event_sids=3)
    assert len(parts) == 3 and b"eventID" not in b"".join(parts)
    # an event that fits is not touched
    whole = document()
    small = split_document(whole, max_object_event_sids=7, max_aggregation_events=1)
    assert len(small) > 1 and _event_ids(small[0])[0] == _event_ids(whole)[0]
