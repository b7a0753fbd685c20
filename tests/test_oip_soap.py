"""OIP over SOAP/XML: zeep (an independent SOAP client) against the running server, the
seed's XML as written, and a hostile XML set."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest
import zeep
from lxml import etree
from zeep import Plugin, xsd

from adapters.oip import xmlcodec
from adapters.oip.codec import encode_command, parse_packet
from adapters.oip.records import OipError
from adapters.oip.soap import OipSoapServer
from gateway.board import StatusBoard
from gateway.errors import LocalProtocolError
from gateway.model import (
    Init,
    Instruction,
    LoadOrder,
    Login,
    Ping,
    PrintRequest,
    Refusal,
    Step,
    StepResult,
)
from gateway.settings import OipSettings, OipSoapSettings, TlsSettings
from tests.test_oip_codec import seed_soap_order, seed_tcp_order, seed_text
from tests.test_oip_tcp import (
    FailingStation,
    RecordingStation,
    client_ctx,
    make_cert,
    running,
)
from tools.pacsim import SEED_ORDER, SoapPac, run_stream, seed_commands

HOST = "127.0.0.1"


@contextlib.asynccontextmanager
async def soap_server(station: RecordingStation | None = None, board: StatusBoard | None = None,
                      **soap: object) -> AsyncIterator[OipSoapServer]:
    settings = OipSettings(soap=OipSoapSettings(listen_port=0, **soap))  # type: ignore[arg-type]
    server = OipSoapServer(settings, station or RecordingStation(), board or StatusBoard())
    async with running(server):  # type: ignore[arg-type]
        yield server


def url(server: OipSoapServer, scheme: str = "http") -> str:
    return f"{scheme}://{HOST}:{server.port}/oip"


class AppendRaw(Plugin):
    """Puts raw lxml elements into the Body: zeep drops mixed-content text otherwise."""

    def __init__(self, *elements: etree._Element) -> None:
        self.elements = elements

    def egress(self, envelope, http_headers, operation, binding_options):
        body = envelope.find(f"{{{xmlcodec.SOAP_ENV}}}Body")
        for el in self.elements:
            body.append(el)
        return envelope, http_headers


def seed_aorder() -> etree._Element:
    text = seed_text()
    return etree.fromstring(text[text.index("<AORDER>"):text.index("</AORDER>") + 9])


async def post(server: OipSoapServer, body: bytes) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s, s.post(url(server), data=body,
                                                    headers={"Content-Type": "text/xml"}) as r:
        return r.status, await r.read()


def reply_of(body: bytes) -> tuple[bool, int, int, str, tuple[str, ...]]:
    return xmlcodec.decode_reply(xmlcodec.parse_xml(body))


# --------------------------------------------------------------------------- zeep


async def test_zeep_sends_the_seed_order_and_it_equals_the_tcp_decode():
    station = RecordingStation()
    async with soap_server(station) as server:
        def call() -> object:
            client = zeep.Client(url(server) + "?wsdl", plugins=[AppendRaw(seed_aorder())])
            return client.service.Order(
                OIPHEAD={"cmd": "ORDER", "code": 5701, "tsn": 12345, "length": 732},
                AORDER=xsd.SkipValue)

        result = await asyncio.to_thread(call)
    assert (result.cmd, result.code, result.tsn) == ("ACK", 0, 12345)
    [(command, origin)] = station.calls
    _, tcp = parse_packet(seed_tcp_order())
    assert isinstance(command, LoadOrder) and isinstance(tcp, LoadOrder)
    for name in ("Ordnr", "Sts", "min", "max", "Seq", "ext", "VIN", "intclr", "dst", "drv",
                 "prdline"):
        assert getattr(command.order, name) == getattr(tcp.order, name), name
    for a, b in zip(command.order.instructions, tcp.order.instructions, strict=True):
        for name in ("group", "gord", "iord", "item", "sitem", "iname", "qty", "steps"):
            assert getattr(a, name) == getattr(b, name), name
    assert command == tcp
    assert (origin.transport, origin.peer, origin.tsn) == ("soap", HOST, 12345)


async def test_zeep_speaks_every_other_command():
    station = RecordingStation()
    async with soap_server(station) as server:
        def calls() -> list[object]:
            svc = zeep.Client(url(server) + "?wsdl").service

            def head(cmd: str, tsn: int) -> dict[str, object]:
                return {"cmd": cmd, "code": 0, "tsn": tsn}

            return [
                svc.Login(OIPHEAD=head("LOGIN", 1), ALOGIN={"user": "alice", "extra": ["x"]}),
                svc.Data(OIPHEAD=head("DATA", 2), ADATA={
                    "Ordnr": "ZI355937", "group": "G5A1", "gord": 1, "iord": 10, "step": 2,
                    "result": "OK", "value": "00123456789"}),
                svc.Print(OIPHEAD=head("PRINT", 3), APRINT={"Ordnr": "ZI355937",
                                                            "selection": "GTIN", "count": 2}),
                svc.Ping(**head("PING", 4)),  # one part: zeep unwraps its fields
                svc.Init(**head("INIT", 5)),
                svc.Print(OIPHEAD=head("PRINT", 3), APRINT={"Ordnr": "ZI355937",
                                                            "selection": "GTIN", "count": 5}),
            ]

        results = await asyncio.to_thread(calls)
    assert [(r.cmd, r.tsn) for r in results[:5]] == [("ACK", n) for n in range(1, 6)]
    assert results[2].sn == ["SN000000", "SN000001"]
    assert (results[5].cmd, results[5].code) == ("NAK", 6)  # tsn 3 reused, other content
    assert station.commands() == [
        Login("alice", ("x",)), StepResult("ZI355937", "G5A1", 1, 10, 2, True, "00123456789"),
        PrintRequest("ZI355937", "GTIN", 2), Ping(), Init(), PrintRequest("ZI355937", "GTIN", 5),
    ]


# --------------------------------------------------------------------------- raw XML


async def test_the_seed_xml_as_written_is_accepted():
    station, board = RecordingStation(), StatusBoard()
    async with soap_server(station, board) as server:
        status, body = await post(server, seed_soap_order())
    assert status == 200
    assert reply_of(body)[:3] == (True, 0, 12345)
    assert station.commands() == [LoadOrder(SEED_ORDER)]
    assert board.counters["oip_frames_in"] == 1


async def test_retransmission_hash_ignores_formatting():
    station = RecordingStation()
    async with soap_server(station) as server:
        pac = SoapPac(url(server))
        first = await pac.request(LoadOrder(SEED_ORDER), 12345, 5701)
        await pac.close()
        status, body = await post(server, seed_soap_order())  # same content, other layout
    assert first.ack and status == 200 and reply_of(body)[0]
    assert station.calls[0][1].payload_hash == station.calls[1][1].payload_hash


async def test_readable_but_wrong_request_gets_a_nak_body():
    station = RecordingStation()
    async with soap_server(station) as server:
        bad = seed_soap_order().replace(b"<qty>1</qty>", b"<qty>one</qty>", 1)
        status, body = await post(server, bad)
        status2, body2 = await post(server, seed_soap_order().replace(b">ORDER<", b">BREW<"))
    assert status == 200
    ack, code, tsn, text, _ = reply_of(body)
    assert (ack, code, tsn) == (False, 1, 12345) and "instr[1]/group/gord/iord/qty" in text
    assert status2 == 200 and reply_of(body2)[:3] == (False, 4, 12345)
    assert station.calls == []


def _seed_with(*subs: tuple[bytes, bytes]) -> bytes:
    body = seed_soap_order()
    for old, new in subs:
        assert old in body, old
        body = body.replace(old, new, 1)
    return body


ITEM = b"<item>1045075</item>"
MISSHAPEN = {  # each would decode to another order if fields were searched for anywhere
    "Ordnr only inside an instr": ([(b"<Ordnr>ZI355937</Ordnr>", b""),
                                    (ITEM, ITEM + b"<Ordnr>HIDDEN</Ordnr>")],
                                   "AORDER: missing <Ordnr>"),
    "min only inside an instr": ([(b"<min>30</min>", b""), (ITEM, ITEM + b"<min>77</min>")],
                                 "AORDER/Sts: missing <min>"),
    "two qty": ([(b"<qty>1</qty>", b"<qty>1</qty><qty>7</qty>")],
                "iord: <qty> appears 2 times"),
    "two Ordnr": ([(b"<Ordnr>ZI355937</Ordnr>", b"<Ordnr>ZI355937</Ordnr><Ordnr>X</Ordnr>")],
                  "AORDER: <Ordnr> appears 2 times"),
    "i and h nested inside c": ([(b"<c>11an||00*</c>", b"<c>11an||00*<i>5</i><h>9</h></c>")],
                                "params/c[2]: holds the element <i>"),
    "child element inside iname": ([(b"<iname>wZw Black Pad</iname>",
                                     b"<iname>wZw <b>Black</b> Pad</iname>")],
                                   "iord/iname: holds the element <b>"),
    "instr outside AIList": ([(b"</AIList>", b"</AIList><instr/>")],
                             "AORDER: unexpected element <instr>"),
    "instr inside instr": ([(b"<instr>", b"<instr><instr>", ), (b"</instr>", b"</instr></instr>")],
                           "instr[1]: unexpected element <instr>"),
    "AIList missing": ([(b"<AIList>", b"<NotAIList>"), (b"</AIList>", b"</NotAIList>")],
                       "AORDER: unexpected element <NotAIList>"),
    "gord beside group (flat)": ([(b"<group>G5A1", b"<gord>9</gord><group>G5A1")],
                                    "instr[1]: unexpected element <gord>"),
    "Sts value split around its children": ([(b"<Sts>31", b"<Sts>3"), (b"</max>", b"</max>1")],
                                            "AORDER/Sts: text '1' after <max>"),
    "item missing": ([(ITEM, b"")], "iord: missing <item>"),
}


@pytest.mark.parametrize("name", MISSHAPEN)
def test_elements_are_read_only_where_the_seed_puts_them(name):
    subs, reason = MISSHAPEN[name]
    with pytest.raises(OipError) as err:
        xmlcodec.decode_envelope(xmlcodec.parse_xml(_seed_with(*subs)))
    assert err.value.refusal is Refusal.MALFORMED and reason in err.value.detail, err.value
    assert err.value.tsn == 12345


async def test_a_misshapen_order_is_naked_and_not_committed():
    station = RecordingStation()
    async with soap_server(station) as server:
        replies = [reply_of((await post(server, _seed_with(*subs)))[1])
                   for subs, _ in MISSHAPEN.values()]
        status, body = await post(server, seed_soap_order())
    assert [r[:3] for r in replies] == [(False, 1, 12345)] * len(MISSHAPEN)
    assert status == 200 and reply_of(body)[0]
    assert station.commands() == [LoadOrder(SEED_ORDER)]  # only the well-formed one


async def test_soap_commands_obey_the_tcp_field_rules_and_limits():
    """Every SOAP command must have a TCP form: no , ; in fields, oip.max_field_bytes and
    oip.max_records hold for XML too (NAK 1 / NAK 3 naming the element)."""
    station = RecordingStation()
    async with soap_server(station) as server:
        separators = seed_soap_order().replace(b"<iname>wZw Black Pad</iname>",
                                               b"<iname>wZw, Black; Pad</iname>", 1)
        long_name = seed_soap_order().replace(b"<iname>wZw Black Pad</iname>",
                                              b"<iname>" + b"x" * 300 + b"</iname>", 1)
        many = seed_soap_order().replace(
            b"</AIList>", b"".join(etree.tostring(x) for x in seed_aorder().iter("{*}instr"))
            * 130 + b"</AIList>", 1)
        replies = [reply_of((await post(server, body))[1])
                   for body in (separators, long_name, many)]
    assert replies[0][:3] == (False, 1, 12345) and "instr[1]/iname" in replies[0][3]
    assert replies[1][:3] == (False, 3, 12345) and "instr[1]/iname: 300 bytes" in replies[1][3]
    assert replies[2][:3] == (False, 3, 12345) and "oip.max_records" in replies[2][3]
    assert station.calls == []


ENV = (f'<s:Envelope xmlns:s="{xmlcodec.SOAP_ENV}"><s:Body>{{}}</s:Body></s:Envelope>')


async def test_numbers_too_long_for_int_are_a_nak_naming_the_element():
    """5000 digits (past Python's int() digit limit) are NAK 1 naming the element, not a 500."""
    station = RecordingStation()
    huge = "1" * 5000
    async with soap_server(station) as server:
        tsn = await post(server, ENV.format(
            f"<OIPHEAD><cmd>PING</cmd><code>0</code><tsn>{huge}</tsn></OIPHEAD>").encode())
        gord = await post(server, ENV.format(
            "<OIPHEAD><cmd>DATA</cmd><code>0</code><tsn>3</tsn></OIPHEAD><ADATA><Ordnr>X</Ordnr>"
            f"<group>G</group><gord>{huge}</gord><iord>1</iord><step>1</step>"
            "<result>OK</result><value>v</value></ADATA>").encode())
    assert tsn[0] == 200 and reply_of(tsn[1])[:3] == (False, 1, 0)
    assert "OIPHEAD/tsn" in reply_of(tsn[1])[3]
    assert gord[0] == 200 and reply_of(gord[1])[:3] == (False, 1, 3)
    assert "ADATA/gord" in reply_of(gord[1])[3]
    assert station.calls == []


async def test_an_unexpected_failure_is_nak_99(monkeypatch):
    """A bug in the station is an OIPREPLY NAK 99; a bug while reading the request (simulated
    by breaking check_limits) a soap:Server Fault carrying NAK 99. The server goes on."""
    station = FailingStation()
    async with soap_server(station) as server:
        in_station = await post(server, xmlcodec.encode_request(Login("boom"), 5))

        def broken(command: object, limits: object) -> object:
            raise ValueError("a bug")

        monkeypatch.setattr(xmlcodec, "check_limits", broken)
        in_decode = await post(server, xmlcodec.encode_request(Login("alice"), 6))
        monkeypatch.undo()
        after = await post(server, xmlcodec.encode_request(Ping(), 7))
    assert in_station[0] == 200 and reply_of(in_station[1])[:3] == (False, 99, 5)
    assert "KeyError" in reply_of(in_station[1])[3]
    assert in_decode[0] == 500 and reply_of(in_decode[1])[:2] == (False, 99)
    fault = etree.fromstring(in_decode[1]).find(f".//{{{xmlcodec.SOAP_ENV}}}Fault")
    assert fault is not None and fault.findtext("faultcode") == "soap:Server"
    assert after[0] == 200 and reply_of(after[1])[:3] == (True, 0, 7)


async def test_an_order_without_an_unambiguous_tcp_form_is_refused():
    """PROTOCOL.md: every SOAP command accepted has a TCP form. An instruction whose iname and
    c are digits reads differently in the TCP grammar: NAK 1 naming the instruction."""
    ambiguous = Instruction("G5A2", 2, 5, "1035252", "", "7", 1, (Step(2, "10", 4),))
    order = replace(SEED_ORDER, instructions=(SEED_ORDER.instructions[0], ambiguous))
    with pytest.raises(LocalProtocolError):
        encode_command(LoadOrder(order), 8)  # the TCP form cannot carry it
    station = RecordingStation()
    async with soap_server(station) as server:
        status, body = await post(server, xmlcodec.encode_request(LoadOrder(order), 8))
        fine = replace(ambiguous, iname="Seven")
        ok = await post(server, xmlcodec.encode_request(
            LoadOrder(replace(order, instructions=(fine,))), 9))
    ack, code, tsn, text, _ = reply_of(body)
    assert (status, ack, code, tsn) == (200, False, 1, 8)
    assert "instr[2]" in text and "TCP form" in text
    assert ok[0] == 200 and reply_of(ok[1])[:3] == (True, 0, 9)
    assert station.commands() == [LoadOrder(replace(order, instructions=(fine,)))]


HOSTILE = {
    "xxe": b"""<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>
<OIPHEAD><cmd>LOGIN</cmd><code>0</code><tsn>1</tsn></OIPHEAD><ALOGIN><user>&x;</user></ALOGIN>
</soap:Body></soap:Envelope>""",
    "billion_laughs": b"""<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">
<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
<!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
<!ENTITY lol9 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">]>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>
<OIPHEAD><cmd>LOGIN</cmd><code>0</code><tsn>1</tsn></OIPHEAD><ALOGIN><user>&lol9;</user>
</ALOGIN></soap:Body></soap:Envelope>""",
    "external_dtd": b"""<?xml version="1.0"?>
<!DOCTYPE soap:Envelope SYSTEM "http://127.0.0.1:9/evil.dtd">
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body/>
</soap:Envelope>""",
    "not_xml": b"ORDER,5701,12345,202;",
    "not_soap": b"<OIPHEAD><cmd>PING</cmd><code>0</code><tsn>1</tsn></OIPHEAD>",
    "no_head": b"""<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
<soap:Body><ALOGIN><user>u</user></ALOGIN></soap:Body></soap:Envelope>""",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_hostile_xml_is_refused_with_a_fault(name):
    station, board = RecordingStation(), StatusBoard()
    async with soap_server(station, board) as server:
        status, body = await post(server, HOSTILE[name])
        ok_status, ok_body = await post(server, xmlcodec.encode_request(Ping(), 9))
    assert status == 500
    root = etree.fromstring(body)
    fault = root.find(f".//{{{xmlcodec.SOAP_ENV}}}Fault")
    assert fault is not None and fault.findtext("faultcode") == "soap:Client"
    ack, code, _, text, _ = reply_of(body)
    assert (ack, code) == (False, 1) and text
    assert b"root:" not in body and b"lollol" not in body
    assert station.commands() == [Ping()]  # only the good request got through
    assert ok_status == 200 and reply_of(ok_body)[0]
    assert board.counters["oip_naks"] == 1


async def test_oversized_body_is_refused_without_reading_it():
    station = RecordingStation()
    async with soap_server(station, max_body_bytes=4096) as server:
        big = seed_soap_order().replace(b"wZw Black Pad", b"x" * 10_000)
        status, body = await post(server, big)

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked upload
            for _ in range(10):
                yield b" " * 1000

        async with aiohttp.ClientSession() as s, s.post(url(server), data=chunks()) as r:
            status2, body2 = r.status, await r.read()
    assert status == 413 and reply_of(body)[:2] == (False, 3)
    assert status2 == 413 and reply_of(body2)[:2] == (False, 3)
    assert station.calls == []


async def test_wsdl_and_xsd_are_served_and_the_seed_validates():
    async with soap_server() as server, aiohttp.ClientSession() as s:
        async with s.get(url(server) + "?wsdl") as r:
            wsdl = await r.read()
        async with s.get(url(server) + "?xsd") as r:
            xsd_text = await r.read()
        async with s.get(url(server)) as r:
            assert r.status == 404
    assert f"http://{HOST}:{server.port}/oip".encode() in wsdl
    schema = etree.XMLSchema(etree.fromstring(xsd_text))
    seed = seed_aorder()
    seed.tag = f"{{{xmlcodec.NS}}}AORDER"  # the seed's root element, in our namespace
    assert schema.validate(seed), schema.error_log
    ours = xmlcodec.order_element(SEED_ORDER)
    assert schema.validate(ours), schema.error_log


async def test_https(tmp_path):
    cert = make_cert(tmp_path)
    station = RecordingStation()
    async with soap_server(station, tls=TlsSettings(enable=True, path=tmp_path)) as server:
        pac = SoapPac(url(server, "https"), client_ctx(cert))
        reply = await pac.request(LoadOrder(SEED_ORDER), 7)
        await pac.close()
        with pytest.raises(aiohttp.ClientError):
            async with aiohttp.ClientSession() as s, s.post(url(server), data=b"x") as r:
                await r.read()
    assert reply.ack and station.commands() == [LoadOrder(SEED_ORDER)]
    assert isinstance(client_ctx(cert), ssl.SSLContext)



async def test_pacsim_over_soap():
    station = RecordingStation()
    async with soap_server(station) as server:
        stats = await run_stream("soap", HOST, server.port, connections=2, count=10)
        pac = SoapPac(url(server))
        replies = [await pac.request(c, 100 + n) for n, c in enumerate(seed_commands())]
        await pac.close()
    assert (stats.acks, stats.naks) == (10, 0)
    assert all(r.ack for r in replies) and replies[-1].serials
    assert station.commands()[-len(replies):] == seed_commands()


# --------------------------------------------------------------------------- HTTP edges


def _faultcode(body: bytes) -> str | None:
    fault = etree.fromstring(body).find(f".//{{{xmlcodec.SOAP_ENV}}}Fault")
    return None if fault is None else fault.findtext("faultcode")


async def _raw(server: OipSoapServer, data: bytes, *, wait_s: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes the connection (or wait_s)."""
    reader, writer = await asyncio.open_connection(HOST, server.port)
    writer.write(data)
    out = b""
    try:
        async with asyncio.timeout(wait_s):
            while chunk := await reader.read(65536):
                out += chunk
    except TimeoutError:
        out += b"<<still open>>"
    writer.close()
    return out


async def test_echoed_input_is_clipped_and_cmd_is_at_most_8_characters(caplog):
    station = RecordingStation()
    long_cmd = ENV.format(f"<OIPHEAD><cmd>{'X' * 200_000}</cmd><code>0</code><tsn>5</tsn>"
                          "</OIPHEAD>").encode()
    long_result = xmlcodec.encode_request(StepResult("A", "G", 1, 1, 1, True, "v"), 6).replace(
        b"<result>OK</result>", b"<result>" + b"Y" * 200_000 + b"</result>")
    async with soap_server(station) as server:
        replies = [await post(server, body) for body in (long_cmd, long_result)]
    for (status, body), tsn in zip(replies, (5, 6), strict=True):
        ack, code, got_tsn, text, _ = reply_of(body)
        assert (status, ack, code, got_tsn) == (200, False, 1, tsn)
        assert len(text) <= xmlcodec.MAX_TEXT and len(body) < 2000, len(body)
    assert "1..8 expected" in reply_of(replies[0][1])[3]
    assert max(len(r.getMessage()) for r in caplog.records) < 1000
    assert station.calls == []


async def test_soap_1_1_fault_codes_for_version_and_must_understand():
    station = RecordingStation()
    head = "<OIPHEAD><cmd>PING</cmd><code>0</code><tsn>3</tsn></OIPHEAD>"
    soap12 = ('<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Body>'
              f'{head}</e:Body></e:Envelope>').encode()

    def with_header(must: str) -> bytes:
        return (f'<s:Envelope xmlns:s="{xmlcodec.SOAP_ENV}"><s:Header><x:Sec xmlns:x="urn:x" '
                f's:mustUnderstand="{must}"/></s:Header><s:Body>{head}</s:Body>'
                '</s:Envelope>').encode()

    async with soap_server(station) as server:
        v12 = await post(server, soap12)
        must = await post(server, with_header("1"))
        may = await post(server, with_header("0"))
    assert v12[0] == 500 and _faultcode(v12[1]) == "soap:VersionMismatch"
    assert must[0] == 500 and _faultcode(must[1]) == "soap:MustUnderstand"
    assert may[0] == 200 and reply_of(may[1])[:3] == (True, 0, 3)
    assert station.commands() == [Ping()]  # only the request without a mandatory header


async def test_the_http_charset_decides_the_encoding():
    station = RecordingStation()
    latin1 = xmlcodec.encode_request(Login("Jürgen"), 4).replace(
        b"<?xml version='1.0' encoding='utf-8'?>", b"").decode().encode("latin-1")
    async with soap_server(station) as server, aiohttp.ClientSession() as s:
        async with s.post(url(server), data=latin1,
                          headers={"Content-Type": "text/xml; charset=iso-8859-1"}) as r:
            status, body = r.status, await r.read()
        async with s.post(url(server), data=latin1,
                          headers={"Content-Type": "text/xml; charset=no-such-charset"}) as r:
            bad_status, bad_body = r.status, await r.read()
    assert status == 200 and reply_of(body)[:3] == (True, 0, 4)
    assert station.commands() == [Login("Jürgen")]
    assert bad_status == 500 and "unknown charset" in reply_of(bad_body)[3]


async def test_dtd_text_inside_data_is_not_a_dtd_and_length_is_informational():
    station = RecordingStation()
    cdata = xmlcodec.encode_request(Login("x"), 8).replace(
        b"<user>x</user>", b"<user><![CDATA[<!DOCTYPE not a dtd>]]></user><!-- <!ENTITY -->")
    bad_length = xmlcodec.encode_request(Ping(), 9).replace(b"<length>", b"<length>abc", 1)
    async with soap_server(station) as server:
        first = await post(server, cdata)
        second = await post(server, bad_length)
    assert first[0] == 200 and reply_of(first[1])[:3] == (True, 0, 8)
    assert second[0] == 200 and reply_of(second[1])[:3] == (True, 0, 9)
    assert station.commands() == [Login("<!DOCTYPE not a dtd>"), Ping()]


async def test_the_wsdl_location_escapes_the_host_header():
    async with soap_server() as server:
        raw = await _raw(server, b'GET /oip?wsdl HTTP/1.1\r\nHost: a&b"<x>\r\n'
                                 b"Connection: close\r\n\r\n")
    wsdl = raw.split(b"\r\n\r\n", 1)[1]
    root = etree.fromstring(wsdl)  # well-formed
    assert 'http://a&b"<x>/oip' in {el.get("location") for el in root.iter()}


async def test_refused_bodies_close_the_connection():
    """413 (announced too large, with or without Expect: 100-continue) and 408 (the body does
    not arrive in time) answer and close: the unread rest of the request cannot be parsed as
    a next request."""
    station = RecordingStation()
    async with soap_server(station, max_body_bytes=4096, request_timeout_s=0.5) as server:
        big = await _raw(server, b"POST /oip HTTP/1.1\r\nHost: h\r\nContent-Type: text/xml\r\n"
                                 b"Content-Length: 100000\r\n\r\nPING")
        expect = await _raw(server, b"POST /oip HTTP/1.1\r\nHost: h\r\nContent-Length: 10000000"
                                    b"\r\nExpect: 100-continue\r\n\r\n")
        t0 = asyncio.get_running_loop().time()
        slow = await _raw(server, b"POST /oip HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n"
                                  b"\r\n<s:Envelope")
        slow_s = asyncio.get_running_loop().time() - t0
    assert big.startswith(b"HTTP/1.1 413") and not big.endswith(b"<<still open>>")
    assert expect.startswith(b"HTTP/1.1 413") and b"100 Continue" not in expect
    assert not expect.endswith(b"<<still open>>")
    assert slow.startswith(b"HTTP/1.1 408") and not slow.endswith(b"<<still open>>")
    assert slow_s < 4.0
    assert station.calls == []


async def test_a_client_gone_mid_body_is_one_warning_not_a_traceback(caplog):
    station = RecordingStation()
    async with soap_server(station) as server:
        _, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(b"POST /oip HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n<s:Env")
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.transport.abort()
        await asyncio.sleep(0.3)
        ok = await post(server, xmlcodec.encode_request(Ping(), 2))
    assert ok[0] == 200 and reply_of(ok[1])[0]
    assert not [r for r in caplog.records if r.levelname == "ERROR" or r.exc_info]
    assert any("broken off" in r.getMessage() for r in caplog.records)


async def test_more_requests_than_max_requests_are_busy():
    station = RecordingStation()
    station.gate = asyncio.Event()  # the station holds the first request
    async with soap_server(station, max_requests=1) as server:
        first = asyncio.create_task(post(server, xmlcodec.encode_request(Ping(), 1)))
        while not station.calls:  # noqa: ASYNC110 - the station has no event for this
            await asyncio.sleep(0.01)
        second = await post(server, xmlcodec.encode_request(Ping(), 2))
        station.gate.set()
        first_reply = await first
        third = await post(server, xmlcodec.encode_request(Ping(), 3))
    assert second[0] == 503 and reply_of(second[1])[:2] == (False, 12)
    assert first_reply[0] == 200 and third[0] == 200 and reply_of(third[1])[0]
    assert [o.tsn for _, o in station.calls] == [1, 3]


async def test_lenient_where_the_protocol_says_so():
    """length is informational (any text, repeated); an Expect of an HTTP/1.0 request is
    ignored; a BOM beats the charset label; us-ascii labels UTF-8; a mustUnderstand header
    entry addressed to another actor is not ours."""
    station = RecordingStation()
    weird_length = xmlcodec.encode_request(Ping(), 1).replace(
        b"<length>", b"<length>--5</length><length>", 1)
    bom = b"\xef\xbb\xbf" + xmlcodec.encode_request(Login("Jürgen"), 2)
    other_actor = (f'<s:Envelope xmlns:s="{xmlcodec.SOAP_ENV}"><s:Header><x:Sec xmlns:x="u" '
                   's:actor="urn:proxy" s:mustUnderstand="1"/></s:Header><s:Body><OIPHEAD>'
                   '<cmd>PING</cmd><code>0</code><tsn>4</tsn></OIPHEAD></s:Body></s:Envelope>'
                   ).encode()
    async with soap_server(station) as server, aiohttp.ClientSession() as s:
        first = await post(server, weird_length)
        async with s.post(url(server), data=bom,
                          headers={"Content-Type": "text/xml; charset=iso-8859-1"}) as r:
            second = r.status, await r.read()
        async with s.post(url(server), data=xmlcodec.encode_request(Login("Jörg"), 3),
                          headers={"Content-Type": "text/xml; charset=US-ASCII"}) as r:
            third = r.status, await r.read()
        fourth = await post(server, other_actor)
        body = xmlcodec.encode_request(Ping(), 5)
        http10 = await _raw(server, b"POST /oip HTTP/1.0\r\nHost: h\r\nExpect: foo\r\n"
                                    b"Content-Length: %d\r\n\r\n" % len(body) + body)
    for (status, reply), tsn in zip((first, second, third, fourth), (1, 2, 3, 4), strict=True):
        assert status == 200 and reply_of(reply)[:3] == (True, 0, tsn), reply
    assert http10.startswith(b"HTTP/1.0 200") and b"100 Continue" not in http10
    assert station.commands() == [Ping(), Login("Jürgen"), Login("Jörg"), Ping(), Ping()]


async def test_slow_bodies_do_not_take_request_slots():
    station = RecordingStation()
    async with soap_server(station, max_requests=2, request_timeout_s=30) as server:
        stalled = []
        for _ in range(3):
            _, writer = await asyncio.open_connection(HOST, server.port)
            writer.write(b"POST /oip HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n<s:")
            await writer.drain()
            stalled.append(writer)
        await asyncio.sleep(0.2)
        ok = await post(server, xmlcodec.encode_request(Ping(), 1))
        for writer in stalled:
            writer.transport.abort()
    assert ok[0] == 200 and reply_of(ok[1])[:3] == (True, 0, 1)
