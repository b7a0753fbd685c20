"""OIP over SOAP 1.1 (document/literal): ``POST /oip``; WSDL at ``GET /oip?wsdl``, XSD at
``GET /oip?xsd``. A thin aiohttp layer around ``xmlcodec``; the station is called exactly as
the TCP server calls it, so ACK (HTTP 200 OIPREPLY) means committed.

Refusals: a readable request gets an OIPREPLY NAK (HTTP 200); an unreadable one (not XML,
DTD/entities, no OIPHEAD) a SOAP Fault soap:Client (HTTP 500), an oversized body a Fault with
HTTP 413, and an unexpected failure (a bug) a Fault soap:Server carrying NAK 99 (HTTP 500).
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging

from aiohttp import web

from adapters.oip import xmlcodec
from adapters.oip.common import (
    StationLike,
    call_station,
    internal_text,
    limits_of,
    server_ssl_context,
)
from adapters.oip.records import OipError
from gateway.board import StatusBoard
from gateway.model import Nak, Origin, Refusal, Reply
from gateway.settings import OipSettings

log = logging.getLogger(__name__)
XML = "text/xml"


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

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.soap.max_body_bytes)
        app.router.add_get("/oip", self._get)
        app.router.add_post("/oip", self._post)
        return app

    async def serve(self) -> None:
        ssl_ctx = server_ssl_context(self.soap.tls)
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                               shutdown_timeout=1.0)
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
            base = f"{request.scheme}://{request.host}/oip"
            text = self._wsdl.replace("__LOCATION__", base).replace("__XSD__", base + "?xsd")
            return web.Response(text=text, content_type=XML)
        if "xsd" in request.query:
            return web.Response(text=self._xsd, content_type=XML)
        raise web.HTTPNotFound(text="GET /oip?wsdl or /oip?xsd; POST /oip for OIP requests")

    def _fault(self, tsn: int, refusal: Refusal, text: str, status: int = 500) -> web.Response:
        self.board.incr("oip_naks")
        return web.Response(body=xmlcodec.encode_fault(tsn, refusal, text), status=status,
                            content_type=XML, charset="utf-8")

    async def _read(self, request: web.Request) -> bytes | None:
        limit = self.soap.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return None
        chunks, size = [], 0
        while True:
            chunk = await request.content.read(65_536)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)

    async def _post(self, request: web.Request) -> web.Response:
        peer = request.remote or "?"
        body = await self._read(request)
        if body is None:
            log.warning("OIP SOAP: %s body larger than %d bytes", peer, self.soap.max_body_bytes)
            return self._fault(0, Refusal.TOO_LARGE, f"body larger than "
                               f"{self.soap.max_body_bytes} bytes", status=413)
        try:
            return await self._request(body, peer)
        except Exception as exc:  # a bug on this request: a soap:Server Fault carrying NAK 99
            log.exception("OIP SOAP: %s request failed", peer)
            return self._fault(0, Refusal.INTERNAL, internal_text(exc))

    async def _request(self, body: bytes, peer: str) -> web.Response:
        try:
            header, command = xmlcodec.decode_envelope(xmlcodec.parse_xml(body))
            try:
                xmlcodec.check_limits(command, self._limits)
            except OipError as exc:
                exc.tsn = header.tsn
                raise
        except xmlcodec.EnvelopeError as exc:
            log.warning("OIP SOAP: %s unreadable request: %s", peer, exc.detail)
            return self._fault(exc.tsn, Refusal.MALFORMED, exc.detail)
        except OipError as exc:
            log.warning("OIP SOAP: %s tsn %d refused: %s", peer, exc.tsn, exc.detail)
            self.board.incr("oip_naks")
            return self._reply(exc.tsn, Nak(exc.refusal, exc.detail))
        self.board.incr("oip_frames_in")
        origin = Origin("soap", peer, header.tsn, xmlcodec.payload_hash(header, command))
        reply = await call_station(self.station, command, origin)
        if isinstance(reply, Nak):
            self.board.incr("oip_naks")
            log.info("OIP SOAP: %s tsn %d %s NAK: %s", peer, header.tsn, header.cmd, reply.text)
        return self._reply(header.tsn, reply)

    def _reply(self, tsn: int, reply: Reply) -> web.Response:
        return web.Response(body=xmlcodec.encode_reply(tsn, reply),
                            content_type=XML, charset="utf-8")
