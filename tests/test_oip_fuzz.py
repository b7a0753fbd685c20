"""Property-based fuzzing of the OIP codecs: random and mutated input never crashes them,
every input yields packets or protocol refusals, and the buffer stays bounded.

The default run uses a short budget; ``-m slow`` runs the long one (counts in the report).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.oip import xmlcodec
from adapters.oip.codec import (
    NEED_DATA,
    Decoder,
    Limits,
    Packet,
    Refused,
    encode_command,
    encode_nak,
    parse_packet,
    parse_reply,
)
from adapters.oip.pattern import match_pattern
from adapters.oip.records import OipError
from gateway.errors import LocalProtocolError
from gateway.model import (
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
from tests.test_oip_codec import GOOD, pkt, seed_soap_order, seed_tcp_order

SHORT = settings(max_examples=150, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])
LONG = settings(max_examples=20_000, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
LIMITS = Limits(max_packet_bytes=512, max_records=16, max_field_bytes=64)

SAMPLES = [seed_tcp_order(), *(pkt(body) for body, _ in GOOD)]



def command_strategy(text: st.SearchStrategy[str]) -> st.SearchStrategy[object]:
    word = text.filter(bool)
    i32 = st.integers(-(2**31), 2**31 - 1)
    steps = st.lists(st.builds(Step, i32, st.sampled_from(["", "x", "11an||00*", "5", "a b"]),
                               st.sampled_from([1, 2, 4, 7])), min_size=1, max_size=5)
    instructions = st.builds(Instruction, word, i32, i32, text, text, text, i32,
                             steps.map(tuple))
    orders = st.builds(Order, word, *[text] * 10,
                       instructions=st.lists(instructions, max_size=3).map(tuple))
    return st.one_of(
        st.just(Ping()), st.just(Init()),
        st.builds(Login, word, st.lists(text, max_size=3).map(tuple)),
        st.builds(LoadOrder, orders),
        st.builds(StepResult, word, text, i32, i32, st.integers(1, 5), st.booleans(), text),
        st.builds(PrintRequest, word, word, st.integers(1, 1000)),
    )


# TCP fields carry anything but , ; STX ETX; XML values are stripped and XML-legal
tcp_text = st.text(alphabet=st.characters(blacklist_characters=",;\x02\x03",
                                          blacklist_categories=("Cs",)), max_size=12)
xml_text = st.text(alphabet=st.characters(blacklist_characters=",;",
                                          blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp",
                                                                "Co", "Cn")),
                   max_size=12)
tcp_commands = command_strategy(tcp_text)
xml_commands = command_strategy(xml_text)


def _feed(data: bytes, cuts: list[int], limits: Limits = LIMITS) -> list[object]:
    d = Decoder(limits)
    events: list[object] = []
    pos = 0
    for cut in [*sorted(cuts), len(data)]:
        d.receive_data(data[pos:cut])
        pos = max(pos, cut)
        assert d.buffered <= limits.max_packet_bytes
        while (ev := d.next_event()) is not NEED_DATA:
            assert isinstance(ev, Packet | Refused)
            events.append(ev)
    return events


def _mutate(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, pos, byte in ops:
        if not buf:
            break
        pos %= len(buf)
        if kind == 0:
            buf[pos] = byte
        elif kind == 1:
            buf.insert(pos, byte)
        else:
            del buf[pos]
    return bytes(buf)


mutations = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10_000),
                               st.sampled_from([0, 2, 3, 44, 59, 48, 65, 255])), max_size=6)


def _random_bytes(data: bytes, cuts: list[int]) -> None:
    _feed(data, [c % (len(data) + 1) for c in cuts])


def _mutated(sample: int, ops: list[tuple[int, int, int]], junk: bytes) -> None:
    raw = _mutate(SAMPLES[sample % len(SAMPLES)], ops)
    events = _feed(junk + raw + junk, [len(junk), len(junk) + len(raw) // 2],
                   Limits())
    if raw.count(b"\x02") == 1 and raw.count(b"\x03") == 1 and raw[0] == 2 and raw[-1] == 3:
        assert len(events) == 1  # exactly one answer for one packet


def _round_trip(command: object) -> None:
    try:
        raw = encode_command(command, 5)  # type: ignore[arg-type]
    except LocalProtocolError:
        return  # not representable in the TCP form (e.g. only ambiguous readings)
    assert parse_packet(raw)[1] == command


def _xml_round_trip(command: object) -> None:
    _head, back = xmlcodec.decode_envelope(xmlcodec.parse_xml(
        xmlcodec.encode_request(command, 5)))  # type: ignore[arg-type]
    assert back == command


def _xml_mutated(ops: list[tuple[int, int, int]]) -> None:
    data = _mutate(seed_soap_order(), ops)
    try:
        xmlcodec.decode_envelope(xmlcodec.parse_xml(data))
    except OipError:
        pass


@SHORT
@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=8))
def test_random_bytes_never_crash(data, cuts):
    _random_bytes(data, cuts)


@SHORT
@given(st.integers(0, 100), mutations, st.binary(max_size=20).map(
    lambda b: b.replace(b"\x02", b"").replace(b"\x03", b"")))
def test_mutated_packets_yield_a_packet_or_a_refusal(sample, ops, junk):
    _mutated(sample, ops, junk)


@SHORT
@given(tcp_commands)
def test_encode_decode_round_trip(command):
    _round_trip(command)


@SHORT
@given(xml_commands)
def test_xml_encode_decode_round_trip(command):
    _xml_round_trip(command)


@SHORT
@given(mutations)
def test_mutated_xml_is_decoded_or_refused(ops):
    _xml_mutated(ops)


@SHORT
@given(st.text(max_size=20), st.text(max_size=40))
def test_match_pattern_is_total(pattern, value):
    assert match_pattern(pattern, value) is None or isinstance(match_pattern(pattern, value),
                                                               str)


@pytest.mark.slow
@LONG
@given(st.binary(max_size=5000), st.lists(st.integers(0, 5000), max_size=16))
def test_long_random_bytes(data, cuts):
    _random_bytes(data, cuts)


@pytest.mark.slow
@LONG
@given(st.integers(0, 100), mutations, st.binary(max_size=20).map(
    lambda b: b.replace(b"\x02", b"").replace(b"\x03", b"")))
def test_long_mutated_packets(sample, ops, junk):
    _mutated(sample, ops, junk)


@pytest.mark.slow
@LONG
@given(tcp_commands)
def test_long_round_trip(command):
    _round_trip(command)


@pytest.mark.slow
@LONG
@given(xml_commands)
def test_long_xml_round_trip(command):
    _xml_round_trip(command)


@pytest.mark.slow
@LONG
@given(mutations)
def test_long_mutated_xml(ops):
    _xml_mutated(ops)


@SHORT
@given(st.integers(-(2**31), 2**31 - 1), st.sampled_from(list(Refusal)), st.text(max_size=300))
def test_any_nak_text_encodes_to_a_parseable_reply(tsn, refusal, text):
    back = parse_reply(encode_nak(tsn, refusal, text))
    reply = back.to_reply()
    assert isinstance(reply, Nak)
    assert (back.ack, back.tsn, reply.refusal) == (False, tsn, refusal)
    assert len(back.text) <= 200
