"""OIP codec: table-driven decode (whole, byte by byte, with junk), round trips, seed facts."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.oip import records, xmlcodec
from adapters.oip.codec import (
    NAK_CODES,
    NEED_DATA,
    Decoder,
    Limits,
    Packet,
    Refused,
    encode_ack,
    encode_command,
    encode_nak,
    parse_packet,
    parse_reply,
)
from adapters.oip.pattern import match_pattern, parse_pattern
from adapters.oip.records import OipError
from gateway.errors import LocalProtocolError
from gateway.model import (
    Ack,
    Init,
    Instruction,
    LoadOrder,
    Login,
    Nak,
    Order,
    Ping,
    PrintRequest,
    Refusal,
    Step,
    StepResult,
)
from tests.conftest import SHARED

SEED = SHARED / "seeds" / "002_ccfddc5a6015d1df.txt"


def seed_text() -> str:
    return SEED.read_text(encoding="utf-8")


def seed_tcp_order() -> bytes:
    """The seed's TCP ORDER without the display line breaks, {stx}/{etx} as bytes."""
    m = re.search(r"\{stx\}(.*?)\{etx\}", seed_text(), re.S)
    assert m is not None
    return b"\x02" + m.group(1).replace("\n", "").encode() + b"\x03"


def seed_soap_order() -> bytes:
    """The seed's OIPHEAD + AORDER exactly as written, as the two parts of a SOAP Body."""
    text = seed_text()
    frag = text[text.index("<OIPHEAD>"):text.index("</AORDER>") + len("</AORDER>")]
    return (f'<soap:Envelope xmlns:soap="{xmlcodec.SOAP_ENV}"><soap:Body>{frag}'
            "</soap:Body></soap:Envelope>").encode()


def pkt(body: str) -> bytes:
    """A packet with the right length filled in for a header written as CMD,code,tsn,{}."""
    for _ in range(3):
        n = len(("\x02" + body.format(0) + "\x03").encode())
        for total in (n, n + 1, n + 2, n + 3):
            raw = ("\x02" + body.format(total) + "\x03").encode()
            if len(raw) == total:
                return raw
    raise AssertionError(body)


# --------------------------------------------------------------------------- seed facts


def test_seed_tcp_order_is_202_bytes_and_matches_its_header():
    raw = seed_tcp_order()
    assert len(raw) == 202
    header, _ = parse_packet(raw)
    assert (header.cmd, header.code, header.tsn, header.length) == ("ORDER", 5701, 12345, 202)


def test_seed_tcp_order_decodes_to_the_expected_order():
    _, cmd = parse_packet(seed_tcp_order())
    assert isinstance(cmd, LoadOrder)
    o = cmd.order
    assert (o.Ordnr, o.Sts, o.min, o.max, o.Seq, o.ext, o.VIN, o.intclr, o.dst, o.drv,
            o.prdline) == ("ZI355937", "31", "30", "31", "567016", "355937",
                           "XXXXA0NDXAN6XXXXX", "G", "FED", "L", "ZW")
    assert o.instructions == (
        Instruction("G5A1", 1, 10, "1045075", "1041075", "wZw Black Pad", 1,
                    (Step(100001, "", 1), Step(0, "11an||00*", 3))),
        Instruction("G5A2", 2, 5, "1035252", "", "AirBag Sft Pnl", 1,
                    (Step(2, "", 4), Step(0, "14an||NPZQ*", 3))),
    )


def test_seed_tcp_and_soap_orders_decode_equal_field_by_field():
    _, tcp = parse_packet(seed_tcp_order())
    head, soap = xmlcodec.decode_envelope(xmlcodec.parse_xml(seed_soap_order()))
    assert (head.cmd, head.code, head.tsn, head.length) == ("ORDER", 5701, 12345, 732)
    assert isinstance(tcp, LoadOrder) and isinstance(soap, LoadOrder)
    for name in ("Ordnr", "Sts", "min", "max", "Seq", "ext", "VIN", "intclr", "dst", "drv",
                 "prdline"):
        assert getattr(soap.order, name) == getattr(tcp.order, name), name
    assert len(soap.order.instructions) == len(tcp.order.instructions) == 2
    for a, b in zip(soap.order.instructions, tcp.order.instructions, strict=True):
        for name in ("group", "gord", "iord", "item", "sitem", "iname", "qty", "steps"):
            assert getattr(a, name) == getattr(b, name), name
    assert soap == tcp


def test_seed_order_encodes_back_to_the_seed_bytes():
    _, cmd = parse_packet(seed_tcp_order())
    assert encode_command(cmd, 12345, 5701) == seed_tcp_order()


# --------------------------------------------------------------------------- table

ORDER = LoadOrder(Order("O1", "31", "30", "31", "5", "6", "VIN1", "G", "FED", "L", "ZW", (
    Instruction("G1", 1, 10, "111", "222", "Pad", 2, (Step(7, "", 1),)),
    Instruction("G2", 2, 5, "333", "", "Bag", 1, (Step(1, "", 4), Step(0, "2-5n", 3))),
)))

GOOD = [
    ("PING,0,1,{}", Ping()),
    ("PING,0,2,{};", Ping()),  # one trailing ';' allowed
    ("INIT,0,3,{}", Init()),
    ("LOGIN,0,4,{};alice", Login("alice")),
    ("LOGIN,0,5,{};bob,shift2,line7", Login("bob", ("shift2", "line7"))),
    ("DATA,0,6,{};ZI355937;G5A1,1,10,2,OK,00123456789",
     StepResult("ZI355937", "G5A1", 1, 10, 2, True, "00123456789")),
    ("DATA,0,7,{};O1;G2,2,5,1,NOK,", StepResult("O1", "G2", 2, 5, 1, False, "")),
    ("PRINT,0,8,{};O1;04012345678901,3", PrintRequest("O1", "04012345678901", 3)),
    ("ORDER,0,9,{};O1,31,30,31,5,6,VIN1,G,FED,L,ZW;G1,1,10,111,222,Pad,2,7,1;"
     "G2,2,5,333,Bag,1,1,0,2-5n,4,3", ORDER),
    ("ORDER,-1,-9,{};O2,,,,,,,,,,", LoadOrder(Order("O2", *[""] * 10))),
]

BAD = [
    ("PING,0,1", Refusal.MALFORMED, "expected 4 fields"),
    ("PING,0,x,{}", Refusal.MALFORMED, "tsn"),
    ("PING,99999,1,{}", Refusal.MALFORMED, "code"),
    ("FOO,0,11,{}", Refusal.UNKNOWN_COMMAND, "FOO"),
    ("PING,0,12,{};extra", Refusal.MALFORMED, "no records"),
    ("LOGIN,0,13,{}", Refusal.MALFORMED, "user"),
    ("DATA,0,14,{};O1;G1,1,10,2,MAYBE,x", Refusal.MALFORMED, "OK or NOK"),
    ("DATA,0,15,{};O1;G1,1,10,9,OK,x", Refusal.MALFORMED, "step"),
    ("PRINT,0,16,{};O1;GTIN,0", Refusal.MALFORMED, "count"),
    ("ORDER,0,17,{};O1,31", Refusal.MALFORMED, "record 2"),
    ("ORDER,0,18,{};O1,a,b,c,d,e,f,g,h,i,j;G1,1,10,111,Pad,x,1,1", Refusal.MALFORMED,
     "record 3"),
    # all-integer tail: 2 steps without c or 3 steps: several readings -> refused
    ("ORDER,0,19,{};O1,a,b,c,d,e,f,g,h,i,j;G1,1,10,111,Pad,1,1,2,3,4,5,6",
     Refusal.MALFORMED, "several readings"),
    ("ORDER,0,20,{};O1,a,b,c,d,e,f,g,h,i,j;G1,1,10,111,Pad,1,1,bad*pat,3",
     Refusal.MALFORMED, "record 3 (instruction) step 1 (c)"),
]


@pytest.mark.parametrize(("body", "expected"), GOOD, ids=[b[:12] for b, _ in GOOD])
@pytest.mark.parametrize("feed", ["whole", "bytewise", "junk"])
def test_good_packets_decode(body, expected, feed):
    raw = pkt(body)
    d = Decoder()
    if feed == "whole":
        d.receive_data(raw)
    elif feed == "bytewise":
        for i in range(len(raw)):
            assert d.next_event() is NEED_DATA
            d.receive_data(raw[i:i + 1])
    else:
        d.receive_data(b"\x00junk\x03\xff" + raw + b"trailing")
    event = d.next_event()
    assert isinstance(event, Packet), event
    assert event.command == expected
    assert event.raw == raw
    assert d.next_event() is NEED_DATA
    assert d.garbage_bytes == (0 if feed != "junk" else 7 + 8)
    # encode -> decode round trip (the encoder may pick another, equivalent form)
    assert parse_packet(encode_command(expected, 1))[1] == expected


@pytest.mark.parametrize(("body", "refusal", "words"), BAD, ids=[b[:14] for b, _, _ in BAD])
def test_bad_packets_are_refused_with_a_reason(body, refusal, words):
    raw = pkt(body) if "{}" in body else ("\x02" + body + "\x03").encode()
    d = Decoder()
    d.receive_data(raw + pkt("PING,0,77,{}"))
    event = d.next_event()
    assert isinstance(event, Refused), event
    assert event.refusal is refusal
    assert words in event.detail
    if "x" not in body.split(";")[0]:
        assert event.tsn == int(body.split(",")[2].split(";")[0])
    follow = d.next_event()  # the stream goes on after a refusal
    assert isinstance(follow, Packet) and follow.header.tsn == 77


def test_length_mismatch():
    raw = b"\x02PING,0,5,99\x03"
    with pytest.raises(OipError) as exc:
        parse_packet(raw)
    assert exc.value.refusal is Refusal.LENGTH_MISMATCH and exc.value.tsn == 5
    assert "says 99 bytes, the packet has 13" in exc.value.detail


def test_oversized_packet_refused_without_buffering_it_whole():
    limits = Limits(max_packet_bytes=128)
    d = Decoder(limits)
    d.receive_data(b"\x02ORDER,0,42,999999;")
    event = d.next_event()  # refused as soon as the header is read
    assert isinstance(event, Refused) and event.refusal is Refusal.TOO_LARGE
    assert event.tsn == 42 and "declares 999999" in event.detail
    for _ in range(100):
        d.receive_data(b"A" * 1000)
        assert d.buffered <= 128
    d.receive_data(b"\x03" + pkt("PING,0,43,{}"))
    assert d.next_event().header.tsn == 43


def test_packet_growing_past_the_limit_is_refused():
    d = Decoder(Limits(max_packet_bytes=64))
    d.receive_data(b"\x02PING,0,9")
    d.receive_data(b"9" * 200)
    assert d.buffered <= 64
    event = d.next_event()
    assert isinstance(event, Refused) and event.refusal is Refusal.TOO_LARGE
    d.receive_data(b"\x03\x02PING,0,1,13\x03")
    assert isinstance(d.next_event(), Packet)


def test_stx_inside_a_packet_refuses_the_cut_one_and_reads_the_next():
    d = Decoder()
    d.receive_data(b"\x02DATA,0,31,50;O1" + pkt("PING,0,32,{}"))
    first, second = d.next_event(), d.next_event()
    assert isinstance(first, Refused) and first.tsn == 31 and "cut short" in first.detail
    assert isinstance(second, Packet) and second.header.tsn == 32


def test_limits_on_records_and_fields():
    with pytest.raises(OipError, match="records") as records:
        parse_packet(pkt("LOGIN,0,1,{}" + ";a" * 10), Limits(max_records=5))
    with pytest.raises(OipError, match="record 2 field 1: longer") as field:
        parse_packet(pkt("LOGIN,0,1,{};" + "u" * 50), Limits(max_field_bytes=20))
    # the same answers as the SOAP form's limits (NAK 3, PROTOCOL.md)
    assert records.value.refusal is field.value.refusal is Refusal.TOO_LARGE
    with pytest.raises(OipError, match="UTF-8"):
        parse_packet(b"\x02LOGIN,0,1,16;\xff\xfe\x03")


def test_an_over_long_field_gets_the_same_answer_over_tcp_and_soap():
    """PROTOCOL.md: both forms get the same answers; an over-long field is NAK 3 in both."""
    command = Login("u" * 300)
    d = Decoder()
    d.receive_data(encode_command(command, 5))
    tcp = d.next_event()
    _, decoded = xmlcodec.decode_envelope(xmlcodec.parse_xml(xmlcodec.encode_request(command,
                                                                                       5)))
    with pytest.raises(OipError) as soap:
        xmlcodec.check_limits(decoded, Limits())
    assert isinstance(tcp, Refused) and tcp.tsn == 5
    assert tcp.refusal is soap.value.refusal is Refusal.TOO_LARGE
    assert NAK_CODES[tcp.refusal] == 3
    assert "record 2 field 1" in tcp.detail and "ALOGIN/user" in soap.value.detail


# --------------------------------------------------------------------------- replies


def test_reply_layouts():
    assert encode_ack(12345) == b"\x02ACK,0,12345,16\x03"
    raw = encode_ack(7, ["0012345678A", "0012345678B"])
    assert raw == b"\x02ACK,0,7,38;2;0012345678A,0012345678B\x03"
    assert len(raw) == 38
    nak = encode_nak(9, Refusal.TSN_REUSED, "tsn 9 reused; other content")
    assert nak == b"\x02NAK,6,9,40;tsn 9 reused  other content\x03"
    assert len(nak) == 40
    assert parse_reply(raw).to_reply() == Ack(("0012345678A", "0012345678B"))
    assert parse_reply(nak).to_reply() == Nak(Refusal.TSN_REUSED, "tsn 9 reused  other content")


def test_every_refusal_has_a_distinct_code():
    assert set(NAK_CODES) == set(Refusal)
    assert len(set(NAK_CODES.values())) == len(NAK_CODES)
    for refusal in Refusal:
        back = parse_reply(encode_nak(1, refusal, "x")).to_reply()
        assert back == Nak(refusal, "x")


def test_length_field_at_digit_boundaries():
    for n in range(1, 120):
        raw = encode_command(Login("u" * n), 1)
        assert parse_packet(raw)[1] == Login("u" * n)


def test_encoder_refuses_what_the_wire_cannot_carry():
    with pytest.raises(LocalProtocolError):
        encode_command(Login("a,b"), 1)
    with pytest.raises(LocalProtocolError):
        encode_ack(1, ["bad;serial"])


def test_encoder_picks_an_unambiguous_form():
    # sitem empty but iname all digits: omitting sitem would read iname as sitem
    ins = Instruction("G", 1, 1, "111", "", "222", 333, (Step(1, "", 1), Step(5, "", 1)))
    order = LoadOrder(Order("O", *[""] * 10, instructions=(ins,)))
    assert parse_packet(encode_command(order, 1))[1] == order


def test_xml_round_trip_of_every_command():
    for cmd in [c for _, c in GOOD]:
        head, back = xmlcodec.decode_envelope(xmlcodec.parse_xml(
            xmlcodec.encode_request(cmd, 5)))
        assert back == cmd and head.tsn == 5


# --------------------------------------------------------------------------- patterns

PATTERNS = [
    ("11an||00*", "00123ABC789", None),
    ("11an||00*", "0012345678", "has 10 characters"),
    ("11an||00*", "01123456789", "does not start with '00'"),
    ("11an||00*", "00123-56789", "character '-' at position 6"),
    ("14an||NPZQ*", "NPZQ1234567890", None),
    ("14an||NPZQ*", "NPZX1234567890", "does not start with 'NPZQ'"),
    ("2-5n", "123", None),
    ("2-5n", "123456", "wants 2 to 5"),
    ("a", "abcXYZ", None),
    ("a", "abc1", "not letters"),
    ("x||AB", "AB", None),
    ("x||AB", "ABC", "is not 'AB'"),
    ("", "anything", None),
    ("11zz", "x", "is not <length><class>"),
    ("11an\n||00*", "00123ABC789", "is not <length><class>"),  # no trailing newline
    ("\u0661\u0661an||00*", "00123ABC789", "is not <length><class>"),  # ASCII digits only
]


@pytest.mark.parametrize(("pattern", "value", "reason"), PATTERNS)
def test_match_pattern(pattern, value, reason):
    got = match_pattern(pattern, value)
    if reason is None:
        assert got is None
    else:
        assert got is not None and reason in got


@pytest.mark.parametrize("size", [64, 65])
def test_packet_of_exactly_the_limit_is_accepted(size):
    one = len(encode_command(Login("u"), 1))  # a one-character user
    raw = encode_command(Login("u" * (size - one + 1)), 1)
    assert len(raw) == size
    for chunks in ([raw], [raw[:10], raw[10:]], [bytes([b]) for b in raw]):
        d = Decoder(Limits(max_packet_bytes=64))
        for c in chunks:
            d.receive_data(c)
        event = d.next_event()
        if size <= 64:
            assert isinstance(event, Packet)
        else:
            assert isinstance(event, Refused) and event.refusal is Refusal.TOO_LARGE


# --------------------------------------------------------------------------- grammar spec

def _spec_readings(rest: list[str]) -> list[tuple[bool, int]]:
    """The instruction grammar written out plainly (the spec the fast parser must match):
    every (sitem?, n) for which qty, the first n and the last n parameters are integers in
    sInt32 and the k = len(params) - 2n c fields number 0..n."""
    def is_int(text: str) -> bool:
        return re.fullmatch(r"[+-]?[0-9]+", text) is not None and \
            -(2**31) <= int(text) <= 2**31 - 1

    found = []
    for with_sitem in (True, False):
        off = 1 if with_sitem else 0
        if len(rest) < off + 2 or not is_int(rest[off + 1]):
            continue
        params = rest[off + 2:]
        for n in range(1, 6):
            k = len(params) - 2 * n
            if 0 <= k <= n and all(is_int(x) for x in (*params[:n], *params[n + k:])):
                found.append((with_sitem, n))
    return found


_FIELD = st.one_of(st.sampled_from(["0", "1", "3", "-7", "+4", "2147483647", "2147483648",
                                    "-2147483648", "-2147483649", "0000000000012", "",
                                    "11an||00*", "Pad", "1e3", " 1", "١"]),
                   st.integers(-3_000_000_000, 3_000_000_000).map(str))


@given(st.lists(_FIELD, min_size=4, max_size=16))
@settings(max_examples=3000, deadline=None)
def test_instruction_reading_matches_the_spec(rest: list[str]) -> None:
    """The parser's reading search (an integer mask and run lengths) accepts exactly the
    records the plain grammar accepts, and reads them the same way."""
    rec = ["G1", "1", "2", "ITEM", *rest]
    spec = _spec_readings(rest)
    if len(spec) > 1:
        digits = rest[0].isascii() and rest[0].isdigit()
        spec = [r for r in spec if r[0] == digits]
    try:
        ins = records.parse_instruction(rec, 3)
    except OipError:
        assert len(spec) != 1 or not _steps_valid(rest, spec[0])
        return
    assert len(spec) == 1
    with_sitem, n = spec[0]
    assert len(ins.steps) == n
    assert ins.sitem == (rest[0] if with_sitem else "")
    params = rest[(1 if with_sitem else 0) + 2:]
    assert [s.i for s in ins.steps] == [int(x) for x in params[:n]]
    assert [s.h for s in ins.steps] == [int(x) for x in params[-n:]]


def _steps_valid(rest: list[str], reading: tuple[bool, int]) -> bool:
    """Whether the one reading also passes the step checks (c length, handler-3 patterns)."""
    with_sitem, n = reading
    params = rest[(1 if with_sitem else 0) + 2:]
    k = len(params) - 2 * n
    cs, hs = params[n:n + k], [int(x) for x in params[-n:]]
    cs = [""] * (n - k) + cs
    for c, h in zip(cs, hs, strict=True):
        if len(c) > 32:
            return False
        if h == 3 and c and not _pattern_ok(c):
            return False
    return True


def _pattern_ok(c: str) -> bool:
    try:
        parse_pattern(c)
    except ValueError:
        return False
    return True


def test_instruction_memo_is_bounded_and_refusals_name_their_record() -> None:
    good = ["G1", "1", "2", "ITEM", "name", "1", "7", "1"]
    first = records.parse_order(["O1", *[""] * 10], [good])
    again = records.parse_order(["O2", *[""] * 10], [good])
    assert again.instructions == first.instructions
    bad = ["G1", "1", "2", "ITEM", "name", "x", "7", "1"]  # qty not an integer
    for position in (3, 4):  # the same bad record, refused each time with its own number
        with pytest.raises(OipError, match=f"record {position} "):
            records.parse_order(["O3", *[""] * 10], [good] * (position - 3) + [bad])
    for n in range(3 * records._MEMO_SIZE):
        records.parse_order(["O4", *[""] * 10], [[*good[:3], f"I{n}", *good[4:]]])
    assert len(records._memo) == records._MEMO_SIZE
