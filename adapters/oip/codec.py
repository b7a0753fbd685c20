"""Sans-IO OIP v1.05 codec for the TCP form: bytes in, events out; replies out as whole packets.

A packet is ``STX record;record;...;record ETX``; the first record is the header
``CMD,code,tsn,length`` where length counts the whole packet in bytes (STX and ETX included).
One trailing ';' before ETX is allowed. Text is UTF-8.

``Decoder.receive_data(bytes)`` buffers at most ``max_packet_bytes`` (bytes before an STX are
skipped and counted in ``garbage_bytes``; a packet growing past the limit, or whose header
declares more, is refused at once and the rest of it is discarded up to its ETX), and
``Decoder.next_event()`` returns ``Packet`` (header, command, raw bytes), ``Refused`` (the
NAK to answer) or ``NEED_DATA``. An STX inside a packet means the earlier packet was cut
short: it is refused and the new one is read.

Replies (see PROTOCOL.md)::

    ACK,0,<tsn>,<len>                              accepted and committed
    ACK,0,<tsn>,<len>;<count>;<sn1>,<sn2>,...      PRINT accepted: the serial numbers to print
    NAK,<reason>,<tsn>,<len>;<text>                refused; reason from the table below

NAK reason codes (``NAK_CODES``, gateway.model.Refusal -> code)::

     1 malformed          packet or record does not follow the grammar (text names the field)
     2 length mismatch    header length differs from the packet's byte count
     3 too large          packet longer than oip.max_packet_bytes / too many records / a
                          field longer than oip.max_field_bytes
     4 unknown command    cmd not one of LOGIN ORDER DATA PRINT PING INIT
     5 store full         the outbox refuses new work (disk or size limit)
     6 tsn reused         same tsn from the same peer with different content
     7 not logged in      oip.require_login and no LOGIN yet
     8 no order           DATA/PRINT for an Ordnr that is not the current order
     9 unknown step       DATA names a group/gord/iord/step the order does not have
    10 pattern mismatch   DATA value does not match the validate-serial step's c pattern
    11 reserve empty      PRINT: the local serial-number reserve cannot supply the count
    12 busy               too many connections / station shutting down
    13 serial scrapped    DATA OK on a label this gateway printed and reported scrapped
    14 serial conflict    DATA OK on a label already used, printed for another order, or
                          whose number this gateway holds for more than one pool
    99 internal error     a bug or unexpected failure; the text says what
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass
from typing import Final

from adapters.oip.records import (
    COMMANDS,
    FORBIDDEN,
    OipError,
    _is_int,
    encode_records,
    malformed,
    parse_command,
    parse_header_fields,
)
from gateway.errors import LocalProtocolError
from gateway.model import Ack, Command, Header, Nak, Refusal, Reply

STX: Final = 0x02
ETX: Final = 0x03
STX_B: Final = b"\x02"
ETX_B: Final = b"\x03"

NAK_CODES: Final[dict[Refusal, int]] = {
    Refusal.MALFORMED: 1,
    Refusal.LENGTH_MISMATCH: 2,
    Refusal.TOO_LARGE: 3,
    Refusal.UNKNOWN_COMMAND: 4,
    Refusal.STORE_FULL: 5,
    Refusal.TSN_REUSED: 6,
    Refusal.NOT_LOGGED_IN: 7,
    Refusal.NO_ORDER: 8,
    Refusal.UNKNOWN_STEP: 9,
    Refusal.PATTERN_MISMATCH: 10,
    Refusal.RESERVE_EMPTY: 11,
    Refusal.BUSY: 12,
    Refusal.SERIAL_SCRAPPED: 13,
    Refusal.SERIAL_CONFLICT: 14,
    Refusal.INTERNAL: 99,
}
REFUSALS_BY_CODE: Final = {code: refusal for refusal, code in NAK_CODES.items()}
MAX_NAK_TEXT = 200


@dataclass(frozen=True)
class Limits:
    max_packet_bytes: int = 65_536
    max_records: int = 256
    max_field_bytes: int = 256


@dataclass(frozen=True)
class Packet:
    """A decoded command packet; ``raw`` is the packet as received (STX..ETX)."""

    header: Header
    command: Command
    raw: bytes

    @property
    def payload_hash(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()


@dataclass(frozen=True)
class Refused:
    """A packet refused by the codec: answer ``encode_nak(tsn, refusal, detail)``."""

    tsn: int
    refusal: Refusal
    detail: str


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()
Event = Packet | Refused | _NeedData


def _guess_tsn(head: bytes) -> int:
    """The tsn of a (possibly broken) packet's header, or 0: used to address the NAK."""
    fields = head.rstrip(ETX_B).split(b";", 1)[0].split(b",")
    if len(fields) >= 3:
        text = fields[2].decode("ascii", "replace")
        if _is_int(text):
            return int(text)
    return 0


class Framer:
    """Finds packets in a byte stream with a bounded buffer; yields raw packets or refusals."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.garbage_bytes = 0
        self._buf = bytearray()
        self._in_packet = False
        self._skipping = False
        self._header_checked = False
        self._ready: deque[bytes | Refused] = deque()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def receive_data(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self._skipping:
                pos = self._skip(data, pos)
            elif not self._in_packet:
                i = data.find(STX_B, pos)
                if i < 0:
                    self.garbage_bytes += end - pos
                    return
                self.garbage_bytes += i - pos
                self._start()
                pos = i + 1
            else:
                pos = self._collect(data, pos)

    def _start(self) -> None:
        self._buf = bytearray(STX_B)
        self._in_packet = True
        self._header_checked = False

    def _skip(self, data: bytes, pos: int) -> int:
        e, s = data.find(ETX_B, pos), data.find(STX_B, pos)
        if e < 0 and s < 0:
            return len(data)
        self._skipping = False
        if s >= 0 and (e < 0 or s < e):
            self._start()
            return s + 1
        return e + 1

    def _collect(self, data: bytes, pos: int) -> int:
        e, s = data.find(ETX_B, pos), data.find(STX_B, pos)
        stop = min(x for x in (e, s, len(data)) if x >= 0)
        room = self.limits.max_packet_bytes - len(self._buf) - 1  # keep room for ETX
        if stop - pos > room:
            self._buf += data[pos:pos + max(room, 0)]
            self._too_large(f"packet longer than {self.limits.max_packet_bytes} bytes")
            return pos + max(room, 0)
        self._buf += data[pos:stop]
        # the header's length field is complete at its ';' or, for a one-record packet, at ETX
        if not self._header_checked and (stop == e or b";" in self._buf):
            self._check_header()
            if self._skipping:
                return stop
        if stop == len(data):
            return stop
        if stop == s:
            if len(self._buf) == 1:  # STX STX: a lone STX is line noise, not a packet
                self.garbage_bytes += 1
            else:
                self._ready.append(Refused(_guess_tsn(bytes(self._buf[1:])), Refusal.MALFORMED,
                                           "packet cut short: STX before its ETX"))
            self._start()
            return s + 1
        self._buf += ETX_B
        self._ready.append(bytes(self._buf))
        self._buf = bytearray()
        self._in_packet = False
        return e + 1

    def _check_header(self) -> None:
        self._header_checked = True
        head = bytes(self._buf[1:]).split(b";", 1)[0].split(b",")
        if len(head) == 4 and _is_int(head[3].decode("ascii", "replace")):
            declared = int(head[3])
            if declared > self.limits.max_packet_bytes:
                self._too_large(f"header declares {declared} bytes, more than "
                                f"{self.limits.max_packet_bytes}")

    def _too_large(self, detail: str) -> None:
        self._ready.append(Refused(_guess_tsn(bytes(self._buf[1:])), Refusal.TOO_LARGE, detail))
        self._buf = bytearray()
        self._in_packet = False
        self._skipping = True

    def next_packet(self) -> bytes | Refused | None:
        return self._ready.popleft() if self._ready else None


class Decoder(Framer):
    """Framer + command parsing: the server side of an OIP TCP connection."""

    def next_event(self) -> Event:
        item = self.next_packet()
        if item is None:
            return NEED_DATA
        if isinstance(item, Refused):
            return item
        try:
            header, command = parse_packet(item, self.limits)
        except OipError as exc:
            return Refused(exc.tsn, exc.refusal, exc.detail)
        return Packet(header, command, item)


def split_packet(raw: bytes, limits: Limits) -> list[list[str]]:
    """The records of a whole packet (STX..ETX), each split into fields."""
    if len(raw) < 2 or raw[0] != STX or raw[-1] != ETX:
        raise malformed("packet must start with STX and end with ETX")
    if len(raw) > limits.max_packet_bytes:
        raise OipError(Refusal.TOO_LARGE, f"packet of {len(raw)} bytes, more than "
                       f"{limits.max_packet_bytes}")
    try:
        text = raw[1:-1].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise malformed(f"not UTF-8 at byte {exc.start + 1}") from None
    records = text.split(";")
    if len(records) > 1 and records[-1] == "":
        records.pop()  # one ';' may end the last record
    if len(records) > limits.max_records:
        raise OipError(Refusal.TOO_LARGE, f"{len(records)} records, more than "
                       f"{limits.max_records}")
    out = []
    quick = limits.max_field_bytes // 4  # a UTF-8 character is at most 4 bytes
    for no, rec in enumerate(records, 1):
        fields = rec.split(",")
        if len(rec) > quick:
            for fno, f in enumerate(fields, 1):
                if len(f) > quick and len(f.encode()) > limits.max_field_bytes:
                    raise OipError(Refusal.TOO_LARGE, f"record {no} field {fno}: longer than "
                                   f"{limits.max_field_bytes} bytes (oip.max_field_bytes)")
        out.append(fields)
    return out


def parse_packet(raw: bytes, limits: Limits | None = None) -> tuple[Header, Command]:
    """Header and command of one whole packet; OipError (with the tsn if known) otherwise."""
    limits = limits or Limits()
    tsn = _guess_tsn(raw[1:])
    try:
        records = split_packet(raw, limits)
        cmd, code, tsn, length = parse_header_fields(records[0])
        if cmd not in COMMANDS:
            parse_command(cmd, records[1:])  # raises UNKNOWN_COMMAND
        if length != len(raw):
            raise OipError(Refusal.LENGTH_MISMATCH, f"record 1 (header) field 4 (length): "
                           f"says {length} bytes, the packet has {len(raw)}")
        command = parse_command(cmd, records[1:])
    except OipError as exc:
        exc.tsn = tsn
        raise
    return Header(cmd, code, tsn, length), command


# --------------------------------------------------------------------------- encode


def build_packet(cmd: str, code: int, tsn: int, records: list[str]) -> bytes:
    """A whole packet whose header's length field is its own byte count."""
    tail = "".join(";" + r for r in records).encode()
    prefix = f"{cmd},{code},{tsn},".encode()
    base = len(prefix) + len(tail) + 2
    total = base + 1
    for _ in range(4):  # the length field counts its own digits: a fixed point, reached fast
        total = base + len(str(total))
    return STX_B + prefix + str(total).encode() + tail + ETX_B


def encode_command(command: Command, tsn: int, code: int = 0) -> bytes:
    """The TCP packet for ``command`` (what a PAC sends)."""
    cmd, records = encode_records(command)
    return build_packet(cmd, code, tsn, records)


def _clean_text(text: str) -> str:
    cleaned = "".join(" " if ch in FORBIDDEN or ord(ch) < 0x20 else ch for ch in text)
    return cleaned[:MAX_NAK_TEXT]


def encode_nak(tsn: int, refusal: Refusal, text: str) -> bytes:
    return build_packet("NAK", NAK_CODES[refusal], tsn, [_clean_text(text) or refusal.value])


def encode_ack(tsn: int, serials: tuple[str, ...] | list[str] = ()) -> bytes:
    if not serials:
        return build_packet("ACK", 0, tsn, [])
    for sn in serials:
        if not sn or FORBIDDEN.intersection(sn):
            raise LocalProtocolError(f"serial number {sn!r} cannot be sent in OIP")
    return build_packet("ACK", 0, tsn, [str(len(serials)), ",".join(serials)])


def encode_reply(tsn: int, reply: Reply) -> bytes:
    if isinstance(reply, Ack):
        return encode_ack(tsn, reply.serials)
    return encode_nak(tsn, reply.refusal, reply.text)


@dataclass(frozen=True)
class ReplyPacket:
    """A decoded ACK/NAK (the PAC side): ``code`` 0 for ACK, the reason code for NAK."""

    ack: bool
    code: int
    tsn: int
    text: str = ""
    serials: tuple[str, ...] = ()

    def to_reply(self) -> Reply:
        if self.ack:
            return Ack(self.serials)
        return Nak(REFUSALS_BY_CODE.get(self.code, Refusal.INTERNAL), self.text)


def parse_reply(raw: bytes, limits: Limits | None = None) -> ReplyPacket:
    """Decode an ACK or NAK packet (used by the PAC simulator and the tests)."""
    records = split_packet(raw, limits or Limits(max_records=4, max_field_bytes=1 << 20))
    cmd, code, tsn, length = parse_header_fields(records[0])
    if length != len(raw):
        raise OipError(Refusal.LENGTH_MISMATCH, f"reply says {length} bytes, has {len(raw)}")
    rest = [",".join(r) for r in records[1:]]
    if cmd == "NAK" and len(rest) == 1:
        return ReplyPacket(False, code, tsn, rest[0])
    if cmd == "ACK" and not rest:
        return ReplyPacket(True, code, tsn)
    if cmd == "ACK" and len(rest) == 2:
        serials = tuple(records[2])
        if not _is_int(rest[0]) or int(rest[0]) != len(serials):
            raise malformed(f"ACK record 2 (count): {rest[0]!r} but {len(serials)} serials")
        return ReplyPacket(True, code, tsn, serials=serials)
    raise malformed(f"not an ACK/NAK reply: {cmd} with {len(rest)} records")
