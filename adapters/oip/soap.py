"""OIP over SOAP 1.1 (document/literal): ``POST /oip``; WSDL at ``GET /oip?wsdl``, XSD at
``GET /oip?xsd``. A thin aiohttp layer around ``xmlcodec``; the station is called exactly as
the TCP server calls it, so ACK (HTTP 200 OIPREPLY) means committed.

Refusals: a readable request gets an OIPREPLY NAK (HTTP 200); an unreadable one (not XML,
DTD/entities, no OIPHEAD) a SOAP Fault soap:Client (HTTP 500; soap:VersionMismatch for another
SOAP version's Envelope, soap:MustUnderstand for a header entry marked mustUnderstand), an
oversized body a Fault with HTTP 413, a body not arrived within ``request_timeout_s`` a Fault
with HTTP 408 (both close the connection), more than ``max_requests`` at once a Fault with
HTTP 503 carrying NAK 12, and an unexpected failure (a bug) a Fault soap:Server carrying
NAK 99 (HTTP 500). A client that goes away mid-request is one WARNING line.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
from xml.sax.saxutils import escape

from aiohttp import HttpVersion11, web
from aiohttp.client_exceptions import ClientPayloadError

from adapters.oip import xmlcodec
from adapters.oip.common import (
    StationLike,
    call_station,
    internal_text,
    limits_of,
    peer_host,
    server_ssl_context,
)
from adapters.oip.records import OipError
from gateway.board import StatusBoard
from gateway.model import Nak, Origin, Refusal, Reply
from gateway.settings import OipSettings

log = logging.getLogger(__name__)
XML = "text/xml"


def _clip(text: str) -> str:
    """A refusal's text for the log (it may echo the client's input)."""
    return text if len(text) <= 300 else f"{text[:300]}... ({len(text)} characters)"


def _resource(name: str) -> str:
    return (importlib.resources.files("adapters.oip") / name).read_text(encoding="utf-8")


class OipSoapServer:
    name = "oip-soap"

    def __init__(self, settings: OipSettings, station: StationLike, board: StatusBoard) -> None:
        self.settings = settings
        self.soap = settings.soap
        self._limits = limits_of(settings)
        self.station = station
        self.board = board
        self.ready = asyncio.Event()
        self.port = 0
        self._wsdl = _resource("oip.wsdl")
        self._xsd = _resource("oip.xsd")
        self._busy = 0  # requests being handled (max_requests)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.soap.max_body_bytes)
        app.router.add_get("/oip", self._get)
        app.router.add_post("/oip", self._post, expect_handler=self._expect)
        return app

    async def serve(self) -> None:
        ssl_ctx = server_ssl_context(self.soap.tls)
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                               shutdown_timeout=1.0, keepalive_timeout=self.soap.idle_timeout_s,
                               lingering_time=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.soap.listen_address, self.soap.listen_port,
                               ssl_context=ssl_ctx)
            await site.start()
            self.port = int(runner.addresses[0][1])
            self.board.set_adapter(self.name, "listening")
            log.info("OIP SOAP listening on %s:%d%s", self.soap.listen_address, self.port,
                     " (HTTPS)" if ssl_ctx else "")
            self.ready.set()
            await asyncio.Future()  # until cancelled
        finally:
            self.ready.clear()
            await runner.cleanup()
            self.board.set_adapter(self.name, "stopped")

    async def _get(self, request: web.Request) -> web.Response:
        if "wsdl" in request.query:
            # the Host header is the client's text: escaped for the attributes it goes into
            base = escape(f"{request.scheme}://{request.host}/oip", {'"': "&quot;"})
            text = self._wsdl.replace("__LOCATION__", base).replace("__XSD__", base + "?xsd")
            return web.Response(text=text, content_type=XML)
        if "xsd" in request.query:
            return web.Response(text=self._xsd, content_type=XML)
        raise web.HTTPNotFound(text="GET /oip?wsdl or /oip?xsd; POST /oip for OIP requests")

    def _fault(self, tsn: int, refusal: Refusal, text: str, status: int = 500,
               faultcode: str | None = None, close: bool = False) -> web.Response:
        self.board.incr("oip_naks")
        response = web.Response(body=xmlcodec.encode_fault(tsn, refusal, text, faultcode),
                                status=status, content_type=XML, charset="utf-8")
        if close:  # the rest of the request was not read: the connection cannot go on
            response.force_close()
        return response

    def _too_large(self, peer: str) -> web.Response:
        log.warning("OIP SOAP: %s body larger than %d bytes", peer, self.soap.max_body_bytes)
        return self._fault(0, Refusal.TOO_LARGE, f"body larger than "
                           f"{self.soap.max_body_bytes} bytes", status=413, close=True)

    async def _expect(self, request: web.Request) -> web.Response | None:
        """``Expect: 100-continue``: a body announced too large is refused before it is sent.
        As aiohttp's own handler: HTTP/1.0 requests' Expect is ignored (RFC 7231 §5.1.1)."""
        length = request.content_length
        if length is not None and length > self.soap.max_body_bytes:
            return self._too_large(request.remote or "?")
        if request.version != HttpVersion11:
            return None
        if request.headers.get("Expect", "").lower() != "100-continue":
            return self._fault(0, Refusal.MALFORMED, "unsupported Expect header", status=417,
                               close=True)
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the response proper has not started
        return None

    async def _read(self, request: web.Request) -> bytes | None:
        """The whole body, or None when it is larger than max_body_bytes (not read on)."""
        limit = self.soap.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return None
        chunks, size = [], 0
        async with asyncio.timeout(self.soap.request_timeout_s):
            while True:
                chunk = await request.content.read(65_536)
                if not chunk:
                    return b"".join(chunks)
                size += len(chunk)
                if size > limit:
                    return None
                chunks.append(chunk)

    async def _post(self, request: web.Request) -> web.Response:
        peer = peer_host(request.remote or "?")
        try:
            body = await self._read(request)
        except TimeoutError:
            log.warning("OIP SOAP: %s request body not complete within %.1f s "
                        "(oip.soap.request_timeout_s); connection closed", peer,
                        self.soap.request_timeout_s)
            return self._fault(0, Refusal.MALFORMED, "request body not complete within "
                               f"{self.soap.request_timeout_s:g} s", status=408, close=True)
        except (ConnectionError, ClientPayloadError) as exc:  # the client went away, or
            # sent a broken chunked body: nothing of this request was processed
            log.warning("OIP SOAP: %s request body broken off (nothing processed): %s", peer,
                        exc)
            return self._fault(0, Refusal.MALFORMED, f"request body broken off: {exc}",
                               status=400, close=True)
        if body is None:
            return self._too_large(peer)
        # a request counts once its body is in (a slow sender is bounded by the 408 above)
        if self._busy >= self.soap.max_requests:
            log.warning("OIP SOAP: %s refused: %d requests are being handled "
                        "(oip.soap.max_requests)", peer, self._busy)
            return self._fault(0, Refusal.BUSY, f"busy: {self._busy} requests in progress "
                               "(oip.soap.max_requests); try again", status=503)
        self._busy += 1
        try:
            return await self._request(body, peer, request.charset)
        except Exception as exc:  # a bug on this request: a soap:Server Fault carrying NAK 99
            log.exception("OIP SOAP: %s request failed", peer)
            return self._fault(0, Refusal.INTERNAL, internal_text(exc))
        finally:
            self._busy -= 1

    async def _request(self, body: bytes, peer: str, charset: str | None) -> web.Response:
        try:
            header, command = xmlcodec.decode_envelope(xmlcodec.parse_xml(body, charset))
            try:
                xmlcodec.check_limits(command, self._limits)
            except OipError as exc:
                exc.tsn = header.tsn
                raise
        except xmlcodec.EnvelopeError as exc:
            log.warning("OIP SOAP: %s unreadable request: %s", peer, _clip(exc.detail))
            return self._fault(exc.tsn, Refusal.MALFORMED, exc.detail, faultcode=exc.faultcode)
        except OipError as exc:
            log.warning("OIP SOAP: %s tsn %d refused: %s", peer, exc.tsn, _clip(exc.detail))
            self.board.incr("oip_naks")
            return self._reply(exc.tsn, Nak(exc.refusal, exc.detail))
        self.board.incr("oip_frames_in")
        origin = Origin("soap", peer, header.tsn, xmlcodec.payload_hash(header, command))
        reply = await call_station(self.station, command, origin)
        if isinstance(reply, Nak):
            self.board.incr("oip_naks")
            log.info("OIP SOAP: %s tsn %d %s NAK: %s", peer, header.tsn, header.cmd,
                     _clip(reply.text))
        return self._reply(header.tsn, reply)

    def _reply(self, tsn: int, reply: Reply) -> web.Response:
        return web.Response(body=xmlcodec.encode_reply(tsn, reply),
                            content_type=XML, charset="utf-8")
