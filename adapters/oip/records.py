"""OIP records (the text between STX and ETX, split at ';' and ',') <-> gateway.model commands.

Pure functions, shared by the TCP codec (``codec``) and, for field rules and the ORDER
instruction checks, by the SOAP codec (``xmlcodec``). Every refusal is an ``OipError`` whose
text names the record (counting the header as record 1) and the field.

ORDER instruction grammar (PROTOCOL.md explains it with the seed's two records)::

    group, gord, iord, item, [sitem], iname, qty, i1..in, c(n-k+1)..cn, h1..hn     1 <= n <= 5

A *reading* picks whether ``sitem`` is present and the step count n (then k = the number of c
fields, 0 <= k <= n); it is valid when gord, iord, qty, every i and every h are integers in
range. Exactly one valid reading: taken. Several: the field after ``item`` decides (all
digits -> ``sitem`` present); still several (or none): refused, naming the record and field.
The k c fields belong to the last k steps (leading empty c's may be omitted).
"""

from __future__ import annotations

import functools
import re
from collections import OrderedDict
from collections.abc import Sequence

from adapters.oip.pattern import parse_pattern
from gateway.errors import LocalProtocolError, RemoteProtocolError
from gateway.model import (
    HANDLER_VALIDATE_SERIAL,
    Command,
    Init,
    Instruction,
    LoadOrder,
    Login,
    Order,
    Ping,
    PrintRequest,
    Refusal,
    Step,
    StepResult,
)

INT16 = (-(2**15), 2**15 - 1)
INT32 = (-(2**31), 2**31 - 1)
MAX_STEPS = 5
MAX_C = 32
MAX_PRINT_COUNT = 1000
COMMANDS = ("LOGIN", "ORDER", "DATA", "PRINT", "PING", "INIT")
ORDER_FIELDS = ("Ordnr", "Sts", "min", "max", "Seq", "ext", "VIN", "intclr", "dst", "drv",
                "prdline")
FORBIDDEN = frozenset(",;\x02\x03")


class OipError(RemoteProtocolError):
    """The peer sent something OIP forbids; ``tsn`` is the packet's tsn when it could be read."""

    def __init__(self, refusal: Refusal, detail: str, tsn: int = 0) -> None:
        super().__init__(refusal, detail)
        self.refusal: Refusal = refusal
        self.tsn = tsn


def malformed(detail: str) -> OipError:
    return OipError(Refusal.MALFORMED, detail)


# Python's int() refuses strings of more than 4300 digits (ValueError, not an OipError) and
# costs quadratic time below that: a field is only handed to int() once its significant digits
# are few enough for any bound used here (all within sInt32, 10 digits).
_MAX_SIGNIFICANT_DIGITS = 18


def _digits(body: str) -> bool:
    """``body`` is ASCII digits short enough for int(); leading zeros do not count."""
    if not body.isascii() or not body.isdigit():
        return False
    return len(body) <= _MAX_SIGNIFICANT_DIGITS or \
        len(body.lstrip("0")) <= _MAX_SIGNIFICANT_DIGITS


def show_text(text: str) -> str:
    """``text`` for a refusal: at most 40 characters of it."""
    return repr(text) if len(text) <= 40 else f"{text[:20]!r}... ({len(text)} characters)"


def parse_int(text: str, where: str, bounds: tuple[int, int] = INT32) -> int:
    """A decimal integer (optional sign, no blanks) within ``bounds``."""
    body = text[1:] if text[:1] in "+-" else text
    if not body.isascii() or not body.isdigit():
        raise malformed(f"{where}: {show_text(text)} is not an integer")
    if not _digits(body):
        raise malformed(f"{where}: {show_text(text)} is outside {bounds[0]}..{bounds[1]}")
    value = int(text)
    if not bounds[0] <= value <= bounds[1]:
        raise malformed(f"{where}: {value} is outside {bounds[0]}..{bounds[1]}")
    return value


_SHORT_INT = re.compile(r"[+-]?[0-9]{1,9}")  # at most 9 digits: always within sInt32


def _is_int(text: str, bounds: tuple[int, int] = INT32) -> bool:
    """``text`` is a decimal integer (optional sign) within ``bounds``."""
    if bounds is INT32 and _SHORT_INT.fullmatch(text):  # up to 9 digits: always in sInt32
        return True
    body = text[1:] if text[:1] in "+-" else text
    return _digits(body) and bounds[0] <= int(text) <= bounds[1]


def check_text(value: str, where: str) -> str:
    """A field value the TCP form can carry (no ',', ';', STX or ETX)."""
    if FORBIDDEN.intersection(value):
        raise malformed(f"{where}: contains one of ',' ';' STX ETX")
    return value


def parse_header_fields(fields: Sequence[str]) -> tuple[str, int, int, int]:
    """``CMD,code,tsn,length`` -> (cmd, code, tsn, length); cmd is not checked here."""
    if len(fields) != 4:
        raise malformed(f"record 1 (header): expected 4 fields CMD,code,tsn,length, "
                        f"got {len(fields)}")
    cmd = fields[0]
    if not cmd or len(cmd) > 8:
        raise malformed(f"record 1 (header) field 1 (cmd): {cmd!r} is not 1-8 characters")
    code = parse_int(fields[1], "record 1 (header) field 2 (code)", INT16)
    tsn = parse_int(fields[2], "record 1 (header) field 3 (tsn)", INT32)
    length = parse_int(fields[3], "record 1 (header) field 4 (length)", (0, INT32[1]))
    return cmd, code, tsn, length


# --------------------------------------------------------------------------- decode


def parse_command(cmd: str, records: Sequence[list[str]]) -> Command:
    """The command of ``cmd`` from the records after the header (each split at ',')."""
    n = len(records)
    if cmd in ("PING", "INIT"):
        if n:
            raise malformed(f"record 2: {cmd} carries no records, got {n}")
        return Ping() if cmd == "PING" else Init()
    if cmd == "LOGIN":
        if n != 1 or not records[0][0]:
            raise malformed("record 2 (user): LOGIN needs one record <user>[,...]")
        return Login(records[0][0], tuple(records[0][1:]))
    if cmd == "ORDER":
        if n < 1:
            raise malformed("record 2 (order): ORDER needs the order record")
        return LoadOrder(parse_order(records[0], records[1:]))
    if cmd == "DATA":
        return parse_data(records)
    if cmd == "PRINT":
        return parse_print(records)
    raise OipError(Refusal.UNKNOWN_COMMAND, f"record 1 (header) field 1 (cmd): unknown "
                   f"command {cmd!r} (known: {', '.join(COMMANDS)})")


def _one_field(records: Sequence[list[str]], idx: int, name: str) -> str:
    rec = records[idx]
    if len(rec) != 1 or not rec[0]:
        raise malformed(f"record {idx + 2} ({name}): expected one non-empty field")
    return rec[0]


def parse_data(records: Sequence[list[str]]) -> StepResult:
    if len(records) != 2:
        raise malformed(f"DATA needs 2 records <Ordnr>;<group>,<gord>,<iord>,<step>,<OK|NOK>,"
                        f"<value>, got {len(records)}")
    ordnr = _one_field(records, 0, "Ordnr")
    rec = records[1]
    if len(rec) != 6:
        raise malformed(f"record 3 (result): expected 6 fields group,gord,iord,step,OK|NOK,"
                        f"value, got {len(rec)}")
    if rec[4] not in ("OK", "NOK"):
        raise malformed(f"record 3 field 5 (result): {rec[4]!r} is not OK or NOK")
    step = parse_int(rec[3], "record 3 field 4 (step)", (1, MAX_STEPS))
    return StepResult(ordnr, rec[0], parse_int(rec[1], "record 3 field 2 (gord)"),
                      parse_int(rec[2], "record 3 field 3 (iord)"), step, rec[4] == "OK",
                      rec[5])


def parse_print(records: Sequence[list[str]]) -> PrintRequest:
    if len(records) != 2:
        raise malformed(f"PRINT needs 2 records <Ordnr>;<selection>,<count>, "
                        f"got {len(records)}")
    ordnr = _one_field(records, 0, "Ordnr")
    rec = records[1]
    if len(rec) != 2 or not rec[0]:
        raise malformed("record 3 (request): expected <selection>,<count>")
    count = parse_int(rec[1], "record 3 field 2 (count)", (1, MAX_PRINT_COUNT))
    return PrintRequest(ordnr, rec[0], count)


def parse_order(head: Sequence[str], instr_records: Sequence[Sequence[str]]) -> Order:
    if len(head) != len(ORDER_FIELDS):
        raise malformed(f"record 2 (order): expected {len(ORDER_FIELDS)} fields "
                        f"{','.join(ORDER_FIELDS)}, got {len(head)}")
    if not head[0]:
        raise malformed("record 2 field 1 (Ordnr): empty")
    instructions = tuple(_instruction(rec, i + 3) for i, rec in enumerate(instr_records))
    return Order(*head, instructions=instructions)


# A line builds the same few product variants over and over, so ORDERs repeat the same
# instruction records: a bounded memo of parsed records (a pure function of the fields; only
# records that parsed are kept, so a refusal always names its own record) saves most of the
# parsing. Oldest entries go first.
_MEMO_SIZE = 1024
# OrderedDict: popping the oldest is O(1) (a plain dict's first key is found by skipping the
# holes its deletions left, which grows with the churn)
_memo: OrderedDict[tuple[str, ...], Instruction] = OrderedDict()


def _instruction(rec: Sequence[str], recno: int) -> Instruction:
    key = tuple(rec)
    ins = _memo.get(key)
    if ins is None:
        ins = parse_instruction(rec, recno)
        if len(_memo) >= _MEMO_SIZE:
            _memo.popitem(last=False)
        _memo[key] = ins
    return ins


def _run(mask: Sequence[bool]) -> int:
    """How many leading entries of ``mask`` are true, at most MAX_STEPS."""
    n = 0
    for ok in mask:
        if not ok or n == MAX_STEPS:
            break
        n += 1
    return n


def _readings(mask: Sequence[bool], with_sitem: bool) -> list[tuple[bool, int]]:
    """Valid (with_sitem, n) readings of the fields after ``item``, given which of them are
    integers in range (``mask``): qty is an integer, and for n steps with k = len(params) - 2n
    c fields (0 <= k <= n) the first n and the last n parameters are integers."""
    off = 1 if with_sitem else 0
    if len(mask) < off + 2 or not mask[off + 1]:
        return []
    params = mask[off + 2:]
    lead, trail = _run(params), _run(params[::-1])
    return [(with_sitem, n) for n in range(1, MAX_STEPS + 1)
            if 0 <= len(params) - 2 * n <= n and lead >= n and trail >= n]


def parse_instruction(rec: Sequence[str], recno: int) -> Instruction:
    where = f"record {recno} (instruction)"
    if len(rec) < 8:
        raise malformed(f"{where}: expected group,gord,iord,item,[sitem],iname,qty,i..,c..,h.., "
                        f"got {len(rec)} fields")
    group, item = rec[0], rec[3]
    gord = parse_int(rec[1], f"record {recno} field 2 (gord)")
    iord = parse_int(rec[2], f"record {recno} field 3 (iord)")
    rest = rec[4:]
    mask = [_is_int(x) for x in rest]  # each field tested once, for every reading
    readings = _readings(mask, True) + _readings(mask, False)
    if len(readings) > 1:
        digits = rest[0].isascii() and rest[0].isdigit()
        readings = [r for r in readings if r[0] == digits]
    if len(readings) != 1:
        what = "no reading fits" if not readings else "several readings fit"
        raise malformed(f"{where} fields 5..{len(rec)}: {what} "
                        f"[sitem],iname,qty,i1..in,c..,h1..hn (n 1..{MAX_STEPS}, integer "
                        f"qty/i/h, at most n c fields)")
    with_sitem, n = readings[0]
    off = 1 if with_sitem else 0
    sitem = rest[0] if with_sitem else ""
    iname, qty = rest[off], int(rest[off + 1])
    params = rest[off + 2:]
    k = len(params) - 2 * n
    cs = [""] * (n - k) + list(params[n:n + k])
    steps = tuple(Step(int(params[j]), cs[j], int(params[n + k + j])) for j in range(n))
    return check_instruction(Instruction(group, gord, iord, item, sitem, iname, qty, steps),
                             where)


def check_instruction(ins: Instruction, where: str) -> Instruction:
    """Rules common to the TCP and SOAP forms: step count, c length, handler-3 patterns."""
    if not 1 <= len(ins.steps) <= MAX_STEPS:
        raise malformed(f"{where}: {len(ins.steps)} steps, expected 1..{MAX_STEPS}")
    if not ins.group:
        raise malformed(f"{where} (group): empty")
    for no, step in enumerate(ins.steps, 1):
        if len(step.c) > MAX_C:
            raise malformed(f"{where} step {no} (c): longer than {MAX_C} characters")
        if step.h == HANDLER_VALIDATE_SERIAL and step.c:
            try:
                parse_pattern(step.c)
            except ValueError as exc:
                raise malformed(f"{where} step {no} (c): {exc}") from None
    return ins


# --------------------------------------------------------------------------- encode


def _fields(values: Sequence[object], where: str) -> str:
    out = []
    for v in values:
        s = str(v)
        if FORBIDDEN.intersection(s):
            raise LocalProtocolError(f"{where}: {s!r} contains one of ',' ';' STX ETX")
        out.append(s)
    return ",".join(out)


def instruction_forms(ins: Instruction) -> list[list[str]]:
    """Candidate TCP field lists for ``ins``, canonical (shortest) first."""
    n = len(ins.steps)
    cs = [s.c for s in ins.steps]
    first = next((j for j, c in enumerate(cs) if c), n)
    forms = []
    sitems = [[ins.sitem]] if ins.sitem else [[], [""]]
    for sitem in sitems:
        for start in range(first, -1, -1):  # omit as many leading empty c's as possible
            forms.append([ins.group, str(ins.gord), str(ins.iord), ins.item, *sitem, ins.iname,
                          str(ins.qty), *(str(s.i) for s in ins.steps), *cs[start:],
                          *(str(s.h) for s in ins.steps)])
    return forms


@functools.lru_cache(maxsize=1024)
def _unambiguous_form(ins: Instruction) -> tuple[str, ...] | None:
    for form in instruction_forms(ins):
        try:
            if parse_instruction(form, 0) == ins:
                return tuple(form)
        except OipError:
            continue
    return None


def has_tcp_form(ins: Instruction) -> bool:
    """Whether ``ins`` can be written in the TCP form so that it reads back as ``ins`` (the
    SOAP codec refuses an instruction that cannot)."""
    return _unambiguous_form(ins) is not None


def encode_instruction(ins: Instruction, where: str) -> str:
    """The first form of ``ins`` that decodes back to ``ins``; LocalProtocolError if none."""
    form = _unambiguous_form(ins)
    if form is None:
        raise LocalProtocolError(f"{where}: instruction {ins.group},{ins.gord},{ins.iord} has "
                                 "no unambiguous OIP TCP form")
    return _fields(form, where)


def encode_records(command: Command) -> tuple[str, list[str]]:
    """(cmd, records after the header) for ``command``."""
    if isinstance(command, Ping):
        return "PING", []
    if isinstance(command, Init):
        return "INIT", []
    if isinstance(command, Login):
        return "LOGIN", [_fields([command.user, *command.extra], "LOGIN")]
    if isinstance(command, LoadOrder):
        o = command.order
        head = _fields([getattr(o, f) for f in ORDER_FIELDS], "ORDER record 2")
        return "ORDER", [head, *(encode_instruction(ins, f"ORDER record {j + 3}")
                                 for j, ins in enumerate(o.instructions))]
    if isinstance(command, StepResult):
        c = command
        return "DATA", [_fields([c.Ordnr], "DATA"),
                        _fields([c.group, c.gord, c.iord, c.step, "OK" if c.ok else "NOK",
                                 c.value], "DATA record 3")]
    if isinstance(command, PrintRequest):
        return "PRINT", [_fields([command.Ordnr], "PRINT"),
                         _fields([command.selection, command.count], "PRINT record 3")]
    raise TypeError(f"not an OIP command: {command!r}")
