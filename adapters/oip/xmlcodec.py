"""Sans-IO OIP SOAP/XML codec: safe parsing, SOAP 1.1 envelopes <-> gateway.model commands.

The request Body holds ``OIPHEAD`` then the command element (``AORDER``, ``ALOGIN``, ``ADATA``,
``APRINT``; none for PING and INIT). Elements are matched by local name, so the seed's
unqualified XML and zeep's namespaced form both read; mixed content is read as the seed writes
it (``<Sts>31<min>30</min>...</Sts>``: an element's value is its text before its children).
Each element is read only where the seed's shape puts it (``SHAPES``): a missing, repeated,
misplaced or unknown element, a child element inside a text field, or text after the children
of a mixed element is refused (NAK 1 naming the element's path), never guessed around.

A readable request always gets an ``OIPREPLY`` body (HTTP 200) carrying ACK or NAK with the TCP
reason codes. Only a request that is not a readable OIP SOAP envelope (not XML, a DTD or entity
declaration, no OIPHEAD, body too large) gets a SOAP 1.1 Fault (soap:Client), whose detail
carries the same OIPREPLY NAK. See PROTOCOL.md.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from lxml import etree

from adapters.oip.codec import NAK_CODES, Limits
from adapters.oip.records import (
    COMMANDS,
    INT16,
    MAX_PRINT_COUNT,
    MAX_STEPS,
    ORDER_FIELDS,
    OipError,
    check_instruction,
    check_text,
    has_tcp_form,
    malformed,
    parse_int,
    show_text,
)
from gateway.model import (
    Ack,
    Command,
    Header,
    Init,
    Instruction,
    LoadOrder,
    Login,
    Nak,
    Order,
    Ping,
    PrintRequest,
    Refusal,
    Reply,
    Step,
    StepResult,
)

NS = "urn:linegate:oip:1.05"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP_NEXT_ACTOR = "http://schemas.xmlsoap.org/soap/actor/next"
BODY_ELEMENTS = {"ORDER": "AORDER", "LOGIN": "ALOGIN", "DATA": "ADATA", "PRINT": "APRINT",
                 "PING": None, "INIT": None}
MAX_TEXT = 200  # characters of a NAK or Fault text (PROTOCOL.md §4)
_INT32_TEXT = re.compile(r"[+-]?[0-9]{1,10}")
_BOMS = (b"\xef\xbb\xbf", b"\xfe\xff", b"\xff\xfe")


class EnvelopeError(OipError):
    """The request is not a readable OIP SOAP envelope: answered with a SOAP Fault whose
    faultcode is ``soap:<faultcode>`` (SOAP 1.1 §4.4.1: Client, VersionMismatch,
    MustUnderstand)."""

    def __init__(self, detail: str, faultcode: str = "Client") -> None:
        super().__init__(Refusal.MALFORMED, detail)
        self.faultcode = faultcode


def _parser(encoding: str | None = None) -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           dtd_validation=False, huge_tree=False, remove_comments=True,
                           remove_pis=True, encoding=encoding)


def parse_xml(body: bytes, encoding: str | None = None) -> etree._Element:
    """Parse untrusted XML: a document with a DTD (and so any entity declaration) is refused,
    nothing is loaded, fetched or expanded. ``encoding`` (the HTTP charset, which is
    authoritative for text/xml) overrides what the document says."""
    if encoding is not None:
        if body.startswith(_BOMS):
            encoding = None  # a byte order mark takes precedence (RFC 7303 §3.2)
        elif encoding.lower().replace("-", "") in ("usascii", "ascii"):
            encoding = "utf-8"  # ASCII labels on UTF-8 bodies are common; UTF-8 is a superset
    try:
        root = etree.fromstring(body, _parser(encoding))
    except etree.XMLSyntaxError as exc:
        raise EnvelopeError(f"not well-formed XML: {exc}") from None
    except LookupError:
        raise EnvelopeError(f"unknown charset {show_text(str(encoding))}") from None
    docinfo = root.getroottree().docinfo
    if docinfo.internalDTD is not None or docinfo.doctype or docinfo.system_url:
        raise EnvelopeError("XML with a DTD (<!DOCTYPE>) is refused")
    return root


def _name(name: str) -> str:
    """An element name for a refusal text (a hostile one may be very long)."""
    return name if len(name) <= 40 else name[:37] + "..."


def _local(el: etree._Element) -> str:
    return etree.QName(el).localname


# The structure of each body part: child element -> (min, max) occurrences. Children are read
# only where they belong (a field is never taken from inside another one), each single-valued
# field exactly once, and an element no rule expects is refused: an AORDER that breaks this
# shape would otherwise be committed with values from the wrong place.
_MANY = 1 << 30
SHAPES: dict[str, dict[str, tuple[int, int]]] = {
    "OIPHEAD": {"cmd": (1, 1), "code": (1, 1), "tsn": (1, 1), "length": (0, _MANY)},
    "AORDER": {**{name: (1, 1) for name in ("Ordnr", "Sts", "Seq", "VIN", "intclr", "dst",
                                            "drv", "prdline", "AIList")}},
    "Sts": {"min": (1, 1), "max": (1, 1)},
    "Seq": {"ext": (1, 1)},
    "AIList": {"instr": (0, _MANY)},
    "instr": {"group": (1, 1)},
    "group": {"gord": (1, 1)},
    "gord": {"iord": (1, 1)},
    "iord": {"item": (1, 1), "sitem": (0, 1), "iname": (1, 1), "qty": (1, 1),
             "params": (1, 1)},
    "params": {"i": (0, MAX_STEPS), "c": (0, MAX_STEPS), "h": (0, MAX_STEPS)},
    "ALOGIN": {"user": (1, 1), "extra": (0, _MANY)},
    "ADATA": {name: (1, 1) for name in ("Ordnr", "group", "gord", "iord", "step", "result",
                                        "value")},
    "APRINT": {"Ordnr": (1, 1), "selection": (1, 1), "count": (1, 1)},
    "OIPREPLY": {"cmd": (1, 1), "code": (1, 1), "tsn": (1, 1), "text": (0, 1),
                 "sn": (0, _MANY)},
}


class _Part:
    """An element checked against its shape: its children by local name."""

    def __init__(self, el: etree._Element, where: str, shape: str | None = None) -> None:
        self.el, self.where = el, where
        allowed = SHAPES[shape or _local(el)]
        self.children: dict[str, list[etree._Element]] = {}
        for child in el:
            if not isinstance(child.tag, str):
                continue
            name = _local(child)
            if name not in allowed:
                raise malformed(f"{where}: unexpected element <{_name(name)}> (expected "
                                f"{', '.join('<' + n + '>' for n in allowed)})")
            self.children.setdefault(name, []).append(child)
        for name, (lo, hi) in allowed.items():
            n = len(self.children.get(name, ()))
            if n < lo:
                raise malformed(f"{where}: missing <{name}>")
            if n > hi:
                raise malformed(f"{where}: {n} <{name}> elements; at most {hi} expected"
                                if hi > 1 else f"{where}: <{name}> appears {n} times; "
                                "expected once")

    def one(self, name: str) -> etree._Element | None:
        found = self.children.get(name)
        return found[0] if found else None

    def part(self, name: str) -> _Part:
        el = self.one(name)
        assert el is not None  # the shape made it mandatory
        return _Part(el, f"{self.where}/{name}")

    def text(self, name: str) -> str:
        """A leaf field's text ("" for an optional field that is absent)."""
        el = self.one(name)
        return "" if el is None else _leaf(el, f"{self.where}/{name}")

    def texts(self, name: str) -> list[str]:
        return [_leaf(el, f"{self.where}/{name}[{n}]")
                for n, el in enumerate(self.children.get(name, ()), 1)]

    def mixed(self, name: str) -> tuple[str, _Part]:
        """A mixed-content field (``<Sts>31<min>..</min></Sts>``): its own text and parts."""
        el = self.one(name)
        assert el is not None
        where = f"{self.where}/{name}"
        for child in el:
            if (child.tail or "").strip():
                raise malformed(f"{where}: text {show_text(child.tail.strip())} after "
                                f"<{_local(child) if isinstance(child.tag, str) else child.tag}>"
                                "; the value goes before the child elements")
        return (el.text or "").strip(), _Part(el, where)


def _leaf(el: etree._Element, where: str) -> str:
    for child in el:
        if isinstance(child.tag, str):
            raise malformed(f"{where}: holds the element <{_name(_local(child))}>; a text "
                            "value is expected")
    return (el.text or "").strip()


# --------------------------------------------------------------------------- decode


def decode_envelope(root: etree._Element) -> tuple[Header, Command]:
    """Header and command of a SOAP 1.1 request; OipError (tsn when known) otherwise."""
    if root.tag != f"{{{SOAP_ENV}}}Envelope":
        if _local(root) == "Envelope":  # another SOAP version (1.2: .../2003/05/...)
            raise EnvelopeError(f"Envelope namespace {show_text(etree.QName(root).namespace or '')}"
                                f" is not SOAP 1.1's {SOAP_ENV}", "VersionMismatch")
        raise EnvelopeError(f"root element {show_text(str(root.tag))} is not a SOAP 1.1 "
                            "Envelope")
    soap_header = root.find(f"{{{SOAP_ENV}}}Header")
    for entry in soap_header if soap_header is not None else ():
        actor = entry.get(f"{{{SOAP_ENV}}}actor") if isinstance(entry.tag, str) else None
        if actor not in (None, "", SOAP_NEXT_ACTOR):
            continue  # addressed to another SOAP node (SOAP 1.1 §4.2.2), not to this one
        if isinstance(entry.tag, str) and entry.get(f"{{{SOAP_ENV}}}mustUnderstand") == "1":
            raise EnvelopeError(f"SOAP Header entry {show_text(str(entry.tag))} has "
                                "mustUnderstand=\"1\"; this endpoint understands no header "
                                "entries", "MustUnderstand")
    body = root.find(f"{{{SOAP_ENV}}}Body")
    if body is None:
        raise EnvelopeError("SOAP Envelope without Body")
    parts = [el for el in body if isinstance(el.tag, str)]
    if not parts or _local(parts[0]) != "OIPHEAD":
        raise EnvelopeError("SOAP Body must start with OIPHEAD")
    header = decode_head(parts[0])
    try:
        command = decode_body(header.cmd, parts[1:])
    except OipError as exc:
        exc.tsn = header.tsn
        raise
    return header, command


def decode_head(head: etree._Element) -> Header:
    # the tsn first, so that a refusal of the rest still echoes it
    tsns = [el for el in head if isinstance(el.tag, str) and _local(el) == "tsn"]
    tsn = parse_int(_leaf(tsns[0], "OIPHEAD/tsn"), "OIPHEAD/tsn") if len(tsns) == 1 else 0
    try:
        part = _Part(head, "OIPHEAD")
        cmd = part.text("cmd")
        code = parse_int(part.text("code"), "OIPHEAD/code", INT16)
        # informational (PROTOCOL.md): read when it is one integer, never a reason to refuse
        found = part.children.get("length", [])
        text = (found[0].text or "").strip() if len(found) == 1 and not len(found[0]) else ""
        length = int(text) if _INT32_TEXT.fullmatch(text) else 0
        if not 1 <= len(cmd) <= 8:
            raise malformed(f"OIPHEAD/cmd: {len(cmd)} characters; 1..8 expected")
        if cmd not in COMMANDS:
            raise OipError(Refusal.UNKNOWN_COMMAND, f"OIPHEAD/cmd: unknown command {cmd!r} "
                           f"(known: {', '.join(COMMANDS)})")
    except OipError as exc:
        exc.tsn = tsn
        raise
    return Header(cmd, code, tsn, length)


def decode_body(cmd: str, parts: Sequence[etree._Element]) -> Command:
    want = BODY_ELEMENTS[cmd]
    names = [_local(p) for p in parts]
    if want is None:
        if parts:
            raise malformed(f"{cmd} carries no body element, got "
                            f"{show_text(', '.join(names))}")
        return Ping() if cmd == "PING" else Init()
    if names != [want]:
        raise malformed(f"{cmd} needs exactly one <{want}> after OIPHEAD, got "
                        f"{show_text(', '.join(names)) or 'nothing'}")
    el = parts[0]
    if cmd == "ORDER":
        return LoadOrder(decode_order(el))
    part = _Part(el, want)
    if cmd == "LOGIN":
        user = part.text("user")
        if not user:
            raise malformed("ALOGIN/user: empty")
        return Login(user, tuple(part.texts("extra")))
    if cmd == "DATA":
        result = part.text("result")
        if result not in ("OK", "NOK"):
            raise malformed(f"ADATA/result: {show_text(result)} is not OK or NOK")
        return StepResult(part.text("Ordnr"), part.text("group"),
                          parse_int(part.text("gord"), "ADATA/gord"),
                          parse_int(part.text("iord"), "ADATA/iord"),
                          parse_int(part.text("step"), "ADATA/step", (1, MAX_STEPS)),
                          result == "OK", part.text("value"))
    return PrintRequest(part.text("Ordnr"), part.text("selection"),
                        parse_int(part.text("count"), "APRINT/count", (1, MAX_PRINT_COUNT)))


def decode_order(el: etree._Element) -> Order:
    """AORDER in the seed's shape: Sts and Seq are mixed content around min/max and ext."""
    part = _Part(el, "AORDER")
    sts, sts_part = part.mixed("Sts")
    seq, seq_part = part.mixed("Seq")
    fields = {"Ordnr": part.text("Ordnr"), "Sts": sts, "min": sts_part.text("min"),
              "max": sts_part.text("max"), "Seq": seq, "ext": seq_part.text("ext"),
              **{name: part.text(name) for name in ("VIN", "intclr", "dst", "drv", "prdline")}}
    if not fields["Ordnr"]:
        raise malformed("AORDER/Ordnr: empty")
    instrs = part.part("AIList").children.get("instr", [])
    return Order(*(fields[name] for name in ORDER_FIELDS),
                 instructions=tuple(decode_instr(x, no) for no, x in enumerate(instrs, 1)))


def decode_instr(el: etree._Element, no: int) -> Instruction:
    """``<instr><group>G<gord>1<iord>10<item>..</item>..<params>..</params></iord></gord>
    </group></instr>``, nested exactly as the seed writes it."""
    where = f"AORDER/AIList/instr[{no}]"
    group, group_part = _Part(el, where).mixed("group")
    gord, gord_part = group_part.mixed("gord")
    iord, iord_part = gord_part.mixed("iord")
    params = iord_part.part("params")
    pw = params.where
    ints = [parse_int(v, f"{pw}/i") for v in params.texts("i")]
    hs = [parse_int(v, f"{pw}/h") for v in params.texts("h")]
    cs = params.texts("c")
    if len(ints) != len(hs) or len(cs) > len(hs):
        raise malformed(f"{pw}: {len(ints)} i, {len(cs)} c, {len(hs)} h; expected "
                        "as many i as h and at most as many c")
    cs = [""] * (len(hs) - len(cs)) + cs
    ins = Instruction(
        group=group,
        gord=parse_int(gord, f"{group_part.where}/gord"),
        iord=parse_int(iord, f"{gord_part.where}/iord"),
        item=iord_part.text("item"),
        sitem=iord_part.text("sitem"),
        iname=iord_part.text("iname"),
        qty=parse_int(iord_part.text("qty"), f"{iord_part.where}/qty"),
        steps=tuple(Step(i, c, h) for i, c, h in zip(ints, cs, hs, strict=True)))
    return check_instruction(ins, where)


def check_limits(command: Command, limits: Limits) -> Command:
    """The TCP form's rules for a command decoded from XML: every field fits
    ``max_field_bytes`` and carries none of ``, ; STX ETX``, an ORDER has at most
    ``max_records`` records (header + order record + instructions), and each instruction can
    be written in the TCP form so that it reads back the same (the grammar reads it without
    guessing). So each SOAP command has a TCP form, and results and events stay within the
    same bounds. Raises OipError (NAK 1 or 3) naming the element."""
    fields: list[tuple[str, str]] = []
    match command:
        case Login():
            fields = [("ALOGIN/user", command.user),
                      *((f"ALOGIN/extra[{n}]", x) for n, x in enumerate(command.extra, 1))]
        case StepResult():
            fields = [("ADATA/Ordnr", command.Ordnr), ("ADATA/group", command.group),
                      ("ADATA/value", command.value)]
        case PrintRequest():
            fields = [("APRINT/Ordnr", command.Ordnr), ("APRINT/selection", command.selection)]
        case LoadOrder():
            order = command.order
            records = 2 + len(order.instructions)
            if records > limits.max_records:
                raise OipError(Refusal.TOO_LARGE, f"AORDER: {records} records (header, order, "
                               f"{len(order.instructions)} instr) > oip.max_records "
                               f"{limits.max_records}")
            fields = [(f"AORDER/{name}", getattr(order, name)) for name in ORDER_FIELDS]
            for no, ins in enumerate(order.instructions, 1):
                where = f"AORDER/AIList/instr[{no}]"
                fields += [(f"{where}/{name}", getattr(ins, name))
                           for name in ("group", "item", "sitem", "iname")]
                fields += [(f"{where}/params/c[{k}]", st.c) for k, st in enumerate(ins.steps, 1)]
    for where, value in fields:
        check_text(value, where)
        if len(value.encode()) > limits.max_field_bytes:
            raise OipError(Refusal.TOO_LARGE, f"{where}: {len(value.encode())} bytes > "
                           f"oip.max_field_bytes {limits.max_field_bytes}")
    if isinstance(command, LoadOrder):
        for no, ins in enumerate(command.order.instructions, 1):
            if not has_tcp_form(ins):
                raise malformed(
                    f"AORDER/AIList/instr[{no}] ({ins.group},{ins.gord},{ins.iord}): no "
                    "unambiguous OIP TCP form (its sitem/iname/c would read as integers)")
    return command


def payload_hash(header: Header, command: Command) -> str:
    """Canonical hash of a SOAP request: whitespace and namespace prefixes do not count."""
    return hashlib.sha256(f"{header.cmd}|{header.code}|{command!r}".encode()).hexdigest()


# --------------------------------------------------------------------------- encode


_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _sub(parent: etree._Element, name: str, text: object = None) -> etree._Element:
    el = etree.SubElement(parent, name)
    if text is not None:
        el.text = str(text)
    return el


def _safe(text: str) -> str:
    """Reply text XML can carry (control characters become spaces), at most MAX_TEXT
    characters."""
    if len(text) > MAX_TEXT:
        text = text[:MAX_TEXT - 3] + "..."
    return _XML_ILLEGAL.sub(" ", text)


def _envelope() -> tuple[etree._Element, etree._Element]:
    env = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"soap": SOAP_ENV, "oip": NS})
    return env, etree.SubElement(env, f"{{{SOAP_ENV}}}Body")


def _tostring(env: etree._Element) -> bytes:
    return etree.tostring(env, xml_declaration=True, encoding="utf-8")


def reply_element(tsn: int, reply: Reply) -> etree._Element:
    el = etree.Element(f"{{{NS}}}OIPREPLY", nsmap={"oip": NS})
    if isinstance(reply, Ack):
        _sub(el, "cmd", "ACK")
        _sub(el, "code", 0)
        _sub(el, "tsn", tsn)
        for sn in reply.serials:
            _sub(el, "sn", sn)
    else:
        _sub(el, "cmd", "NAK")
        _sub(el, "code", NAK_CODES[reply.refusal])
        _sub(el, "tsn", tsn)
        _sub(el, "text", _safe(reply.text))
    return el


def encode_reply(tsn: int, reply: Reply) -> bytes:
    env, body = _envelope()
    body.append(reply_element(tsn, reply))
    return _tostring(env)


def encode_fault(tsn: int, refusal: Refusal, text: str, faultcode: str | None = None) -> bytes:
    env, body = _envelope()
    fault = etree.SubElement(body, f"{{{SOAP_ENV}}}Fault")
    # the client's request is at fault, except for an internal error (a bug on our side)
    code = faultcode or ("Server" if refusal is Refusal.INTERNAL else "Client")
    _sub(fault, "faultcode", f"soap:{code}")
    _sub(fault, "faultstring", _safe(text))
    _sub(fault, "detail").append(reply_element(tsn, Nak(refusal, _safe(text))))
    return _tostring(env)


def _mixed(parent: etree._Element, name: str, text: object) -> etree._Element:
    el = _sub(parent, name)
    el.text = str(text)
    return el


def order_element(order: Order) -> etree._Element:
    """AORDER exactly in the seed's shape (mixed content for Sts, Seq, group, gord, iord)."""
    el = etree.Element(f"{{{NS}}}AORDER", nsmap={"oip": NS})
    _sub(el, "Ordnr", order.Ordnr)
    sts = _mixed(el, "Sts", order.Sts)
    _sub(sts, "min", order.min)
    _sub(sts, "max", order.max)
    seq = _mixed(el, "Seq", order.Seq)
    _sub(seq, "ext", order.ext)
    for name in ("VIN", "intclr", "dst", "drv", "prdline"):
        _sub(el, name, getattr(order, name))
    ailist = _sub(el, "AIList")
    for ins in order.instructions:
        iord = _mixed(_mixed(_mixed(_sub(ailist, "instr"), "group", ins.group), "gord",
                             ins.gord), "iord", ins.iord)
        _sub(iord, "item", ins.item)
        _sub(iord, "sitem", ins.sitem or None)
        _sub(iord, "iname", ins.iname)
        _sub(iord, "qty", ins.qty)
        params = _sub(iord, "params")
        for tag in ("i", "c", "h"):
            for step in ins.steps:
                _sub(params, tag, getattr(step, tag) or (None if tag == "c" else 0))
    return el


def _body_element(command: Command) -> etree._Element | None:
    if isinstance(command, LoadOrder):
        return order_element(command.order)
    if isinstance(command, Login):
        el = etree.Element(f"{{{NS}}}ALOGIN", nsmap={"oip": NS})
        _sub(el, "user", command.user)
        for x in command.extra:
            _sub(el, "extra", x)
        return el
    if isinstance(command, StepResult):
        el = etree.Element(f"{{{NS}}}ADATA", nsmap={"oip": NS})
        for name, v in (("Ordnr", command.Ordnr), ("group", command.group),
                        ("gord", command.gord), ("iord", command.iord), ("step", command.step),
                        ("result", "OK" if command.ok else "NOK"), ("value", command.value)):
            _sub(el, name, v)
        return el
    if isinstance(command, PrintRequest):
        el = etree.Element(f"{{{NS}}}APRINT", nsmap={"oip": NS})
        _sub(el, "Ordnr", command.Ordnr)
        _sub(el, "selection", command.selection)
        _sub(el, "count", command.count)
        return el
    return None


CMD_OF = {LoadOrder: "ORDER", Login: "LOGIN", StepResult: "DATA", PrintRequest: "PRINT",
          Ping: "PING", Init: "INIT"}


def encode_request(command: Command, tsn: int, code: int = 0) -> bytes:
    """A SOAP request as a PAC sends it (the simulator and tests use this)."""
    env, body = _envelope()
    head = etree.SubElement(body, f"{{{NS}}}OIPHEAD")
    _sub(head, "cmd", CMD_OF[type(command)])
    _sub(head, "code", code)
    _sub(head, "tsn", tsn)
    length = _sub(head, "length", 0)
    part = _body_element(command)
    if part is not None:
        body.append(part)
    length.text = str(len(_tostring(env)))  # informational
    return _tostring(env)


def decode_reply(root: etree._Element) -> tuple[bool, int, int, str, tuple[str, ...]]:
    """(ack, code, tsn, text, serials) of an OIPREPLY response or Fault."""
    el = next(root.iter(f"{{{NS}}}OIPREPLY"), None)
    if el is None:
        raise malformed("response without OIPREPLY")
    part = _Part(el, "OIPREPLY")
    return (part.text("cmd") == "ACK", parse_int(part.text("code"), "OIPREPLY/code"),
            parse_int(part.text("tsn"), "OIPREPLY/tsn"), part.text("text"),
            tuple(part.texts("sn")))
