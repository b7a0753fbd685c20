"""EPCIS 2.0 builder against the official GS1 XSDs; the project's validator on good/bad docs."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from lxml import etree

from adapters.epcis import AggregationEvent, ObjectEvent, build_document, validate_epcis
from adapters.epcis.validate import document_events
from gateway.errors import LocalProtocolError
from tests.conftest import SHARED

EPCIS = SHARED / "reference" / "epcis"
T0 = datetime(2026, 5, 4, 8, 0, tzinfo=timezone(timedelta(hours=2)))
SGTIN = [f"urn:epc:id:sgtin:95060001343.05.S{i}" for i in range(3)]
SSCC = "urn:epc:id:sscc:95060001343.100001"


@pytest.fixture(scope="module")
def schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(EPCIS / "epcis-2.0" / "EPCglobal-epcis-2_0.xsd")))


def line_document() -> bytes:
    s = timedelta(seconds=1)
    return build_document(
        [
            ObjectEvent(
                "commissioning",
                tuple(SGTIN),
                T0,
                ilmd={"lotNumber": "LOT1"},
                read_point="urn:epc:id:sgln:95060001343.5.1",
            ),
            ObjectEvent("commissioning", (SSCC,), T0 + s),
            ObjectEvent("inspecting", (SGTIN[0],), T0 + 2 * s),
            AggregationEvent(
                "packing",
                SSCC,
                tuple(SGTIN[:2]),
                T0 + 3 * s,
                biz_location="urn:epc:id:sgln:95060001343.5.0",
            ),
            AggregationEvent("unpacking", SSCC, (SGTIN[1],), T0 + 4 * s),
            ObjectEvent("decommissioning", (SGTIN[1],), T0 + 5 * s),
            ObjectEvent("destroying", (SGTIN[2],), T0 + 6 * s),
            ObjectEvent("shipping", (SSCC,), T0 + 7 * s),
        ],
        created=T0 + 8 * s,
    )


def test_built_document_is_valid_against_official_xsd(schema: etree.XMLSchema) -> None:
    doc = etree.fromstring(line_document())
    assert schema.validate(doc), schema.error_log
    assert validate_epcis(line_document(), known_commissioned=()) == []


def test_built_events_carry_cbv_values() -> None:
    events = document_events(line_document())
    assert [(e["kind"], e["action"], e["bizStep"]) for e in events] == [
        ("ObjectEvent", "ADD", "commissioning"),
        ("ObjectEvent", "ADD", "commissioning"),
        ("ObjectEvent", "OBSERVE", "inspecting"),
        ("AggregationEvent", "ADD", "packing"),
        ("AggregationEvent", "DELETE", "unpacking"),
        ("ObjectEvent", "DELETE", "decommissioning"),
        ("ObjectEvent", "DELETE", "destroying"),
        ("ObjectEvent", "OBSERVE", "shipping"),
    ]
    root = etree.fromstring(line_document())
    disps = [d.text for d in root.iter("disposition")]
    assert disps[0] == "urn:epcglobal:cbv:disp:active"
    assert disps[-1] == "urn:epcglobal:cbv:disp:in_transit"


def test_official_samples(schema: etree.XMLSchema) -> None:
    good = (EPCIS / "samples" / "epcis-2.0-packaging-line.xml").read_bytes()
    bad = (EPCIS / "samples" / "invalid-epcis-2.0.xml").read_bytes()
    assert schema.validate(etree.fromstring(good))
    assert validate_epcis(good) == []
    # the sample never commissions its SSCC (see the reference README): Annex C catches it
    problems = validate_epcis(good, known_commissioned=())
    assert any("sscc:95060001343.100001 was never commissioned" in p for p in problems)
    problems = validate_epcis(bad)
    assert not schema.validate(etree.fromstring(bad))
    assert any("eventTime" in p and "time zone" in p for p in problems)
    assert any("'COMMISSION' is not ADD" in p for p in problems)


def _mutate(old: bytes, new: bytes, count: int = 1) -> bytes:
    doc = line_document()
    assert old in doc
    return doc.replace(old, new, count)


BROKEN = [
    ("not xml", b"<epcis:EPCISDocument", "not well-formed"),
    (
        "doctype",
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "boom">]><x>&e;</x>',
        "DOCTYPE",
    ),
    ("wrong root", b"<a xmlns='urn:epcglobal:epcis:xsd:1'/>", "expected {urn:epcglobal:epcis"),
]


@pytest.mark.parametrize(("name", "doc", "match"), BROKEN, ids=[b[0] for b in BROKEN])
def test_validator_rejects_garbage(name: str, doc: bytes, match: str) -> None:
    problems = validate_epcis(doc)
    assert problems and match in problems[0]


MUTATIONS = [
    ("no time zone", b"08:00:00.000+02:00</eventTime>", b"08:00:00.000</eventTime>", "time zone"),
    ("bad action", b"<action>OBSERVE</action>", b"<action>LOOK</action>", "'LOOK' is not ADD"),
    ("bad epc", SGTIN[2].encode() + b"</epc>", b"sgtin 1 2</epc>", "is not an EPC URI"),
    ("order", b"<action>ADD</action>", b"<action>ADD</action><eventID>x</eventID>", "order"),
    ("unknown", b"</bizStep>", b"</bizStep><colour>red</colour>", "unexpected element"),
    ("schema version", b'schemaVersion="2.0"', b'schemaVersion="1.2"', "schemaVersion"),
]


@pytest.mark.parametrize(("name", "old", "new", "match"), MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_validator_rejects_broken_documents(
    schema: etree.XMLSchema, name: str, old: bytes, new: bytes, match: str
) -> None:
    doc = _mutate(old, new)
    problems = validate_epcis(doc, known_commissioned=())
    assert any(match in p for p in problems), problems


def test_annex_c_chronology_and_duplicate_timestamps() -> None:
    late = build_document(
        [
            ObjectEvent("commissioning", (SSCC,), T0 + timedelta(seconds=5)),
            ObjectEvent("shipping", (SSCC,), T0),
        ],
        created=T0,
    )
    assert any("out of order" in p for p in validate_epcis(late))
    same = build_document(
        [ObjectEvent("commissioning", (SSCC,), T0), ObjectEvent("inspecting", (SSCC,), T0)],
        created=T0,
    )
    assert any("shares its timestamp" in p for p in validate_epcis(same))


def test_shipping_needs_an_sscc() -> None:
    doc = build_document(
        [
            ObjectEvent("commissioning", (SGTIN[0],), T0),
            ObjectEvent("shipping", (SGTIN[0],), T0 + timedelta(seconds=1)),
        ],
        created=T0,
    )
    assert any("is not an SSCC" in p for p in validate_epcis(doc))


def test_limits() -> None:
    doc = line_document()
    assert any(
        "MaxEPCISObjectEventSIDs 3" in p for p in validate_epcis(doc, max_object_event_sids=3)
    )
    assert any(
        "MaxEPCISaggregationEvents 1" in p for p in validate_epcis(doc, max_aggregation_events=1)
    )
    assert validate_epcis(doc, max_object_event_sids=9, max_aggregation_events=2) == []


def test_builder_refuses_misuse() -> None:
    with pytest.raises(LocalProtocolError, match="time zone"):
        build_document([ObjectEvent("commissioning", (SSCC,), datetime(2026, 1, 1))], created=T0)
    with pytest.raises(LocalProtocolError, match="cannot carry business step 'packing'"):
        build_document([ObjectEvent("packing", (SSCC,), T0)], created=T0)
    doc = build_document([ObjectEvent("commissioning", (SSCC,), T0.astimezone(UTC))], created=T0)
    assert b"<eventTimeZoneOffset>+00:00</eventTimeZoneOffset>" in doc


def _with_processing_instructions() -> bytes:
    """line_document() with PIs and a comment where the XSD allows them: in the root, the
    body, the EventList, inside an event and inside its epcList."""
    doc = line_document()
    for old, new in [
        (b"<EPCISBody>", b"<?station line2?><EPCISBody><?body x?>"),
        (b"<EventList>", b"<EventList><?station line2?><!-- shift A -->"),
        (b"<epcList>", b"<epcList><?scanner 7?>"),
        (b"<action>ADD</action>", b"<?note?><action>ADD</action>"),
    ]:
        assert old in doc
        doc = doc.replace(old, new, 1)
    return doc


def test_processing_instructions_and_comments_are_not_events(schema: etree.XMLSchema) -> None:
    doc = _with_processing_instructions()
    assert schema.validate(etree.fromstring(doc)), schema.error_log
    assert validate_epcis(doc, known_commissioned=()) == []
    assert [e["bizStep"] for e in document_events(doc)][:2] == ["commissioning"] * 2
    # an EventList holding only a processing instruction still has no events
    only_pi = re.sub(
        rb"<EventList>.*</EventList>", b"<EventList><?station line2?></EventList>", doc, flags=re.S
    )
    assert validate_epcis(only_pi) == ["EPCISBody has no EventList with events"]


@pytest.mark.parametrize(
    ("offset", "valid"),
    [
        ("+14:00", True),
        ("-14:00", True),
        ("+13:59", True),
        ("-00:00", True),
        ("+14:01", False),
        ("+15:00", False),
        ("+23:30", False),
        ("-14:30", False),
        ("+05:60", False),
    ],
)
def test_time_zone_offsets_follow_the_xsd(
    schema: etree.XMLSchema, offset: str, valid: bool
) -> None:
    one = build_document([ObjectEvent("commissioning", (SSCC,), T0)], created=T0)

    def with_(old: bytes, new: bytes) -> bytes:
        assert one.count(old) == 1
        return one.replace(old, new)

    stamp = f"2026-05-04T08:00:00.000{offset}"
    doc = with_(b">2026-05-04T08:00:00.000+02:00<", f">{stamp}<".encode())
    assert schema.validate(etree.fromstring(doc)) is valid  # the XSD's own verdict
    problems = validate_epcis(doc)
    assert (problems == []) is valid, problems
    if not valid:
        assert any("eventTime" in p and "between -14:00 and +14:00" in p for p in problems)
    # eventTimeZoneOffset is a plain string in the XSD; EPCIS gives it the same range
    doc = with_(b">+02:00</eventTimeZoneOffset>", f">{offset}</eventTimeZoneOffset>".encode())
    assert (validate_epcis(doc) == []) is valid
    # the document's creationDate (xsd:dateTime: the same range)
    doc = with_(b'creationDate="2026-05-04T08:00:00.000+02:00"', f'creationDate="{stamp}"'.encode())
    assert schema.validate(etree.fromstring(doc)) is valid
    assert (validate_epcis(doc) == []) is valid


BUILD_MISUSE = [
    (
        "offset with seconds",
        {"event_time": datetime(2026, 1, 1, 8, tzinfo=timezone(timedelta(hours=1, seconds=30)))},
        ValueError,
        r"event_time: time zone offset 1:00:30 has seconds",
    ),
    (
        "offset beyond 14:00",
        {"event_time": datetime(2026, 1, 1, 8, tzinfo=timezone(timedelta(hours=15)))},
        ValueError,
        r"event_time: .*beyond ±14:00",
    ),
    ("ilmd name", {"ilmd": {"lot number": "x"}}, ValueError, r"ilmd: 'lot number' is not an XML"),
    ("ilmd text", {"ilmd": {"lotNumber": "a\x01b"}}, ValueError, r"ilmd\['lotNumber'\]"),
    ("time as text", {"event_time": "2026-01-01T00:00Z"}, TypeError, r"event_time: expected a"),
    ("bare epc string", {"epcs": SSCC}, TypeError, r"epcs: expected a sequence"),
    ("epc not a string", {"epcs": (None,)}, TypeError, r"epcs: EPC URIs must be strings"),
]


@pytest.mark.parametrize(
    ("name", "change", "error", "match"), BUILD_MISUSE, ids=[b[0] for b in BUILD_MISUSE]
)
def test_builder_refuses_bad_fields_naming_them(
    name: str, change: dict, error: type[Exception], match: str
) -> None:
    fields: dict = {"bizstep": "commissioning", "epcs": (SSCC,), "event_time": T0, **change}
    with pytest.raises(error, match=match) as caught:
        build_document([ObjectEvent(**fields)], created=T0)
    assert isinstance(caught.value, LocalProtocolError)  # our bug, as the other misuses


def test_builder_writes_whole_minute_offsets_up_to_14_hours(schema: etree.XMLSchema) -> None:
    for hours, minutes, text in [(14, 0, "+14:00"), (-14, 0, "-14:00"), (-9, -30, "-09:30"),
                                 (5, 45, "+05:45")]:
        when = datetime(2026, 1, 1, 8, tzinfo=timezone(timedelta(hours=hours, minutes=minutes)))
        doc = build_document([ObjectEvent("commissioning", (SSCC,), when)], created=when)
        assert f"<eventTimeZoneOffset>{text}</eventTimeZoneOffset>".encode() in doc
        assert schema.validate(etree.fromstring(doc)), schema.error_log
        assert validate_epcis(doc) == []
    with pytest.raises(TypeError, match="created: expected a datetime"):
        build_document([], created="2026-01-01T00:00:00Z")  # type: ignore[arg-type]
