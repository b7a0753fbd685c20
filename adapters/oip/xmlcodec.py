"""Sans-IO OIP SOAP/XML codec: safe parsing, SOAP 1.1 envelopes <-> gateway.model commands.

The request Body holds ``OIPHEAD`` then the command element (``AORDER``, ``ALOGIN``, ``ADATA``,
``APRINT``; none for PING and INIT). Elements are matched by local name, so the seed's
unqualified XML and zeep's namespaced form both read; mixed content is read as the seed writes
it (``<Sts>31<min>30</min>...</Sts>``: an element's value is its own text, children aside).

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
BODY_ELEMENTS = {"ORDER": "AORDER", "LOGIN": "ALOGIN", "DATA": "ADATA", "PRINT": "APRINT",
                 "PING": None, "INIT": None}
_DTD = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


class EnvelopeError(OipError):
    """The request is not a readable OIP SOAP envelope: answered with a SOAP Fault."""

    def __init__(self, detail: str) -> None:
        super().__init__(Refusal.MALFORMED, detail)


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           dtd_validation=False, huge_tree=False, remove_comments=True,
                           remove_pis=True)


def parse_xml(body: bytes) -> etree._Element:
    """Parse untrusted XML: DTDs and entity declarations are refused, nothing is fetched."""
    if _DTD.search(body):
        raise EnvelopeError("XML with a DTD or entity declaration is refused")
    try:
        root = etree.fromstring(body, _parser())
    except etree.XMLSyntaxError as exc:
        raise EnvelopeError(f"not well-formed XML: {exc}") from None
    if root.getroottree().docinfo.internalDTD is not None:
        raise EnvelopeError("XML with a DTD is refused")
    return root


def _local(el: etree._Element) -> str:
    return etree.QName(el).localname


def value_of(el: etree._Element) -> str:
    """The element's own text (mixed content: text and children's tails), stripped."""
    parts = [el.text or ""]
    parts += [child.tail or "" for child in el]
    return "".join(parts).strip()


def _find(el: etree._Element, name: str) -> etree._Element | None:
    return next(el.iter("{*}" + name), None)


def _need(el: etree._Element, name: str, where: str) -> str:
    found = _find(el, name)
    if found is None:
        raise malformed(f"{where}: missing <{name}>")
    return value_of(found)


def _values(el: etree._Element, name: str) -> list[str]:
    return [value_of(x) for x in el.iter("{*}" + name)]


# --------------------------------------------------------------------------- decode


def decode_envelope(root: etree._Element) -> tuple[Header, Command]:
    """Header and command of a SOAP 1.1 request; OipError (tsn when known) otherwise."""
    if root.tag != f"{{{SOAP_ENV}}}Envelope":
        raise EnvelopeError(f"root element {root.tag!r} is not a SOAP 1.1 Envelope")
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
    tsn_el = _find(head, "tsn")
    tsn = 0
    if tsn_el is not None:
        tsn = parse_int(value_of(tsn_el), "OIPHEAD/tsn")
    try:
        cmd = _need(head, "cmd", "OIPHEAD")
        code = parse_int(_need(head, "code", "OIPHEAD"), "OIPHEAD/code", INT16)
        if tsn_el is None:
            raise malformed("OIPHEAD: missing <tsn>")
        length_el = _find(head, "length")  # informational
        length = parse_int(value_of(length_el), "OIPHEAD/length") if length_el is not None \
            else 0
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
            raise malformed(f"{cmd} carries no body element, got {', '.join(names)}")
        return Ping() if cmd == "PING" else Init()
    if names != [want]:
        raise malformed(f"{cmd} needs exactly one <{want}> after OIPHEAD, got "
                        f"{', '.join(names) or 'nothing'}")
    el = parts[0]
    if cmd == "ORDER":
        return LoadOrder(decode_order(el))
    if cmd == "LOGIN":
        user = _need(el, "user", "ALOGIN")
        if not user:
            raise malformed("ALOGIN/user: empty")
        return Login(user, tuple(_values(el, "extra")))
    if cmd == "DATA":
        result = _need(el, "result", "ADATA")
        if result not in ("OK", "NOK"):
            raise malformed(f"ADATA/result: {result!r} is not OK or NOK")
        return StepResult(_need(el, "Ordnr", "ADATA"), _need(el, "group", "ADATA"),
                          parse_int(_need(el, "gord", "ADATA"), "ADATA/gord"),
                          parse_int(_need(el, "iord", "ADATA"), "ADATA/iord"),
                          parse_int(_need(el, "step", "ADATA"), "ADATA/step", (1, MAX_STEPS)),
                          result == "OK", _need(el, "value", "ADATA"))
    return PrintRequest(_need(el, "Ordnr", "APRINT"), _need(el, "selection", "APRINT"),
                        parse_int(_need(el, "count", "APRINT"), "APRINT/count",
                                  (1, MAX_PRINT_COUNT)))


def decode_order(el: etree._Element) -> Order:
    head = [_need(el, name, "AORDER") for name in ORDER_FIELDS]
    if not head[0]:
        raise malformed("AORDER/Ordnr: empty")
    ailist = _find(el, "AIList")
    instrs = list(ailist.iter("{*}instr")) if ailist is not None else []
    return Order(*head, instructions=tuple(decode_instr(x, no)
                                           for no, x in enumerate(instrs, 1)))


def decode_instr(el: etree._Element, no: int) -> Instruction:
    where = f"AORDER/AIList/instr[{no}]"
    params = _find(el, "params")
    if params is None:
        raise malformed(f"{where}: missing <params>")
    ints = [parse_int(v, f"{where}/params/i") for v in _values(params, "i")]
    hs = [parse_int(v, f"{where}/params/h") for v in _values(params, "h")]
    cs = _values(params, "c")
    if len(ints) != len(hs) or len(cs) > len(hs):
        raise malformed(f"{where}/params: {len(ints)} i, {len(cs)} c, {len(hs)} h; expected "
                        "as many i as h and at most as many c")
    cs = [""] * (len(hs) - len(cs)) + cs
    sitem = _find(el, "sitem")
    ins = Instruction(
        group=_need(el, "group", where),
        gord=parse_int(_need(el, "gord", where), f"{where}/gord"),
        iord=parse_int(_need(el, "iord", where), f"{where}/iord"),
        item=_need(el, "item", where),
        sitem=value_of(sitem) if sitem is not None else "",
        iname=_need(el, "iname", where),
        qty=parse_int(_need(el, "qty", where), f"{where}/qty"),
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
    """Reply text XML can carry (control characters become spaces)."""
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


def encode_fault(tsn: int, refusal: Refusal, text: str) -> bytes:
    env, body = _envelope()
    fault = etree.SubElement(body, f"{{{SOAP_ENV}}}Fault")
    # the client's request is at fault, except for an internal error (a bug on our side)
    _sub(fault, "faultcode", "soap:Server" if refusal is Refusal.INTERNAL else "soap:Client")
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
    return (_need(el, "cmd", "OIPREPLY") == "ACK", int(_need(el, "code", "OIPREPLY")),
            int(_need(el, "tsn", "OIPREPLY")),
            value_of(_find(el, "text")) if _find(el, "text") is not None else "",
            tuple(_values(el, "sn")))
