"""Domain model: frozen dataclasses named after the standards (OIP v1.05, OPEN-SCS).

Adapters decode their wire formats into these objects and the core (station, outbox,
delivery) only ever sees these. Names follow the seed documents so that code and spec can be
read side by side (Ordnr, tsn, SNFormat, LabelCollection ...).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field

# --------------------------------------------------------------------------- OIP orders


# The compact JSON of outbox bodies and session state; one encoder shared by every call
# (json.dumps with options builds a new encoder each time).
encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


@dataclass(frozen=True)
class Step:
    """One instruction step: parameter integer ``i``, parameter characters ``c``, handler ``h``.

    Handlers from the seed: 1 pick-to-light, 3 validate serial number, 4 torque tool.
    """

    i: int
    c: str
    h: int


HANDLER_PICK_TO_LIGHT = 1
HANDLER_VALIDATE_SERIAL = 3
HANDLER_TORQUE_TOOL = 4


@dataclass(frozen=True)
class Instruction:
    group: str
    gord: int
    iord: int
    item: str
    sitem: str  # "" when absent
    iname: str
    qty: int
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class Order:
    """OIP ORDER record 2 plus its instruction records (AORDER in the SOAP form)."""

    Ordnr: str
    Sts: str
    min: str
    max: str
    Seq: str
    ext: str
    VIN: str
    intclr: str
    dst: str
    drv: str
    prdline: str
    instructions: tuple[Instruction, ...] = ()

    def step(self, group: str, gord: int, iord: int, step: int) -> Step | None:
        """The step addressed by a DATA frame (``step`` counts from 1), or None."""
        for ins in self.instructions:
            if ins.group == group and ins.gord == gord and ins.iord == iord:
                if 1 <= step <= len(ins.steps):
                    return ins.steps[step - 1]
                return None
        return None


# --------------------------------------------------------------------------- OIP commands


@dataclass(frozen=True)
class Header:
    """OIP header record ``CMD,code,tsn,length``."""

    cmd: str
    code: int
    tsn: int
    length: int


@dataclass(frozen=True)
class Login:
    user: str
    extra: tuple[str, ...] = ()


@dataclass(frozen=True)
class Init:
    pass


@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class LoadOrder:
    order: Order


@dataclass(frozen=True)
class StepResult:
    """OIP ``DATA;<Ordnr>;<group>,<gord>,<iord>,<step>,<OK|NOK>,<value>``."""

    Ordnr: str
    group: str
    gord: int
    iord: int
    step: int
    ok: bool
    value: str


@dataclass(frozen=True)
class PrintRequest:
    """OIP ``PRINT;<Ordnr>;<selection>,<count>``: serial numbers to print from the reserve."""

    Ordnr: str
    selection: str
    count: int


Command = Login | Init | Ping | LoadOrder | StepResult | PrintRequest


@dataclass(frozen=True)
class Origin:
    """Where a command came from: used for deduplication and logging.

    ``peer`` is the peer address (its retransmission window is kept per peer);
    ``payload_hash`` is a hash of the packet without its header's length field variations.
    """

    transport: str  # "tcp" or "soap"
    peer: str
    tsn: int
    payload_hash: str


# --------------------------------------------------------------------------- replies


class Refusal(enum.Enum):
    """Why a command was refused. Each transport maps these onto its own codes (OIP NAK)."""

    MALFORMED = "malformed"
    LENGTH_MISMATCH = "length mismatch"
    TOO_LARGE = "too large"
    UNKNOWN_COMMAND = "unknown command"
    STORE_FULL = "store full"
    TSN_REUSED = "tsn reused with different content"
    NOT_LOGGED_IN = "not logged in"
    NO_ORDER = "no order loaded"
    UNKNOWN_STEP = "unknown step"
    PATTERN_MISMATCH = "value does not match the step pattern"
    RESERVE_EMPTY = "serial number reserve empty"
    BUSY = "busy"
    SERIAL_SCRAPPED = "serial number already reported scrapped"
    SERIAL_CONFLICT = "serial number not usable here"
    INTERNAL = "internal error"


@dataclass(frozen=True)
class Ack:
    """Accepted and committed. ``serials`` is filled for PRINT."""

    serials: tuple[str, ...] = ()
    duplicate: bool = False


@dataclass(frozen=True)
class Nak:
    refusal: Refusal
    text: str


Reply = Ack | Nak


# --------------------------------------------------------------------------- OPEN-SCS


class SerialNumberState(enum.IntEnum):
    """OPENSCSSerialNumberStateEnum (Table 63)."""

    Unassigned = 0
    Unallocated = 1
    Allocated = 2
    SNInvalid = 3
    Encoded = 4
    LabelSampled = 5
    LabelScrapped = 6
    Commissioned = 7
    Sampled = 8
    Inactive = 9
    Destroyed = 10
    Released = 11


class ReturnStatus(enum.IntEnum):
    """OPENSCSReturnEnum (Table 62)."""

    Undefined = 0
    NoError = 1
    InvalidSerialNumberCollection = 2
    InsufficientSerialNumbers = 3
    InvalidSerialNumbersFormat = 4
    InvalidRequestToken = 5
    InvalidSelectionCriteria = 6
    UnableToAcceptSerialNumberEvents = 7
    UnableToAcceptLabelEvents = 8
    UnableToAcceptSIDEvents = 9
    UnknownAggregationSID = 10
    InsufficientPrivilegeToExecute = 11


@dataclass(frozen=True)
class KeyValue:
    Key: str
    Value: str


@dataclass(frozen=True)
class Label:
    ID: str
    LabelProperties: tuple[KeyValue, ...] | None = None


@dataclass(frozen=True)
class LabelCollection:
    """OPENSCSLabelCollectionDataType: inherited Collection fields first, then its own."""

    ID: str
    Description: str
    State: SerialNumberState
    AssociatedPoolID: str
    SerialNumbers: tuple[str, ...]
    LabelCollection: tuple[Label, ...] = ()
    LabelCollectionProperties: tuple[KeyValue, ...] | None = None


@dataclass(frozen=True)
class SNCollection:
    ID: str
    Description: str
    State: SerialNumberState
    AssociatedPoolID: str
    SerialNumbers: tuple[str, ...]


@dataclass(frozen=True)
class Aggregation:
    ParentElement: Label
    ParentElementCollection: LabelCollection


# --------------------------------------------------------------------------- outbox messages


OMIT = "_omit"  # see NewMessage
# what a serial-number reserve answers for a DATA NOK on a label whose fate upstream already
# knows or that is not this order's (reported scrapped, already used, printed for another
# order): the result is recorded, no event is sent (gateway.station.SerialReserve.mark_used_in);
# a real answer has a non-empty selection
ALREADY_REPORTED: tuple[str, str] = ("", "")
ALREADY_SCRAPPED = ALREADY_REPORTED


@dataclass(frozen=True)
class NewMessage:
    """A message to append to the outbox.

    ``stream`` names the ordered stream (one per upstream manager object, e.g. "event",
    "pool", "aggregation"); ``kind`` the upstream call (e.g. "SIDCommissioningEvent");
    ``key`` the idempotency key carried upstream; ``body`` JSON-serialisable arguments.
    ``body_json``, when given, is the body already encoded as a JSON object (``body`` is then
    not used): a caller that holds part of the body as JSON text already saves encoding it
    again. A submit's hook may set ``body[OMIT] = True`` to leave the message out of that
    commit (the hook found it would report nothing new); hooks are re-run on retries, so a
    hook that may set it also removes it otherwise.
    """

    stream: str
    kind: str
    key: str
    body: dict[str, object] = field(default_factory=dict)
    body_json: str | None = None


class StoredMessage:
    """A message read back from the outbox, in its stream's sequence.

    ``body`` may be given as a dict or as its stored JSON text; the text is decoded on first
    use of ``body`` only, so an upstream that sends the text as it is (``body_json``) never
    pays for decoding and encoding it again. Compares and prints like a dataclass.
    """

    __slots__ = ("_body", "_json", "attempts", "created_at", "id", "key", "kind", "stream")

    def __init__(self, id: int, stream: str, kind: str, key: str,
                 body: dict[str, object] | str, created_at: float, attempts: int) -> None:
        self.id = id
        self.stream = stream
        self.kind = kind
        self.key = key
        self.created_at = created_at
        self.attempts = attempts
        self._body: dict[str, object] | None = None if isinstance(body, str) else body
        self._json: str | None = body if isinstance(body, str) else None

    @property
    def body(self) -> dict[str, object]:
        if self._body is None:
            self._body = json.loads(self._json or "{}")
        return self._body

    @property
    def body_json(self) -> str:
        """The body as compact JSON (the stored text when read from the outbox)."""
        if self._json is None:
            self._json = encode_json(self._body)
        return self._json

    def to_dict(self) -> dict[str, object]:
        return {"id": self.id, "stream": self.stream, "kind": self.kind, "key": self.key,
                "body": self.body, "created_at": self.created_at, "attempts": self.attempts}

    def _fields(self) -> tuple[object, ...]:
        return (self.id, self.stream, self.kind, self.key, self.body, self.created_at,
                self.attempts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StoredMessage):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment] - mutable cache inside, like an eq dataclass

    def __repr__(self) -> str:
        return (f"StoredMessage(id={self.id!r}, stream={self.stream!r}, kind={self.kind!r}, "
                f"key={self.key!r}, body={self.body!r}, created_at={self.created_at!r}, "
                f"attempts={self.attempts!r})")


class Outcome(enum.Enum):
    """What an upstream delivery attempt decided, as the outbox understands it."""

    DONE = "done"
    RETRY = "retry"  # transient: keep, back off, try again
    PERMANENT = "permanent"  # dead-letter with the reason


@dataclass(frozen=True)
class DeliveryResult:
    outcome: Outcome
    reason: str = ""
