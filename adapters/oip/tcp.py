"""OIP over TCP: a thin asyncio server around the sans-IO ``Decoder``.

Per connection, packets are handled in order: each decoded command goes to
``station.handle`` (which returns after the outbox commit) and its ACK/NAK is written back;
packets the codec refuses are NAKed without reaching the station. The connection survives a
NAK. A connection silent for ``idle_timeout_s`` (or not reading its replies for that long)
is closed. Peers outside ``allowed_peers`` are closed at once; past ``max_connections`` a
peer gets ``NAK 12 busy`` (tsn 0) and is closed. ``allowed_peers`` is checked before a TLS
handshake, which must complete within ``tls_handshake_timeout_s``; ``max_connections`` after
it (so that a busy TLS peer can read its NAK). One connection's failure never touches
another: each has its own task, decoder and buffer, its replies go out in one write per
received chunk, it gives the event loop back at least every ``YIELD_EVERY`` packets, and only
its first ``LOGGED_REFUSALS`` refusals are logged one by one (the rest are counted on the
board and summed up in the log once a minute and at the end), so a peer flooding malformed
packets cannot stall the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time

from adapters.oip.codec import Decoder, Packet, Refused, encode_nak, encode_reply
from adapters.oip.common import (
    PeerFilter,
    StationLike,
    call_station,
    internal_text,
    limits_of,
    peer_host,
    server_ssl_context,
)
from gateway.board import StatusBoard
from gateway.errors import LocalProtocolError
from gateway.model import Nak, Origin, Refusal
from gateway.settings import OipSettings

log = logging.getLogger(__name__)
READ_CHUNK = 16_384
YIELD_EVERY = 64  # packets handled without suspending before the loop gets a turn
LOGGED_REFUSALS = 20  # per connection; later ones are summed up
MIN_HANDSHAKES = 16  # TLS handshakes at once: max(this, max_connections)
REFUSAL_SUMMARY_S = 60.0


class _Refusals:
    """Per-connection refusal logging (the codec's and the station's NAKs): the first
    LOGGED_REFUSALS one by one, then a summary line at most every REFUSAL_SUMMARY_S and at
    the end."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.logged = 0
        self.unlogged = 0
        self.since = 0.0  # time.monotonic() of the first refusal not logged one by one

    def log(self, level: int, text: str, *args: object) -> None:
        if self.logged < LOGGED_REFUSALS:
            self.logged += 1
            if self.logged == LOGGED_REFUSALS:
                text += "; further refusals on this connection are summed up"
            log.log(level, text, *args)
            return
        if not self.unlogged:
            self.since = time.monotonic()
        self.unlogged += 1
        if time.monotonic() - self.since >= REFUSAL_SUMMARY_S:
            self.flush()

    def flush(self) -> None:
        if self.unlogged:
            log.warning("OIP TCP: %s: %d more packets refused in the last %.0f s (not logged "
                        "one by one; counted in oip_naks)", self.host, self.unlogged,
                        time.monotonic() - self.since)
        self.unlogged = 0


class OipTcpServer:
    name = "oip-tcp"

    def __init__(self, settings: OipSettings, station: StationLike, board: StatusBoard) -> None:
        self.settings = settings
        self.tcp = settings.tcp
        self.station = station
        self.board = board
        self.limits = limits_of(settings)
        self.peers = PeerFilter(self.tcp.allowed_peers, "oip.tcp")
        self.ready = asyncio.Event()
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()  # every connection handler
        self._active: set[asyncio.Task[None]] = set()  # admitted sessions (max_connections)
        self._ssl: ssl.SSLContext | None = None
        self._handshakes = 0  # TLS handshakes in progress

    async def serve(self) -> None:
        # TLS starts per connection after the peer and connection checks (a handshake first
        # would let any peer hold a socket open before allowed_peers is even looked at)
        ssl_ctx = self._ssl = server_ssl_context(self.tcp.tls)
        server = await asyncio.start_server(self._connected, self.tcp.listen_address,
                                            self.tcp.listen_port, limit=READ_CHUNK)
        self.port = server.sockets[0].getsockname()[1]
        self.board.set_adapter(self.name, "listening")
        log.info("OIP TCP listening on %s:%d%s", self.tcp.listen_address, self.port,
                 " (TLS)" if ssl_ctx else "")
        self.ready.set()
        try:
            await asyncio.Future()  # until cancelled
        finally:
            # listener first, then the connections (3.12's wait_closed waits for them)
            self.ready.clear()
            server.close()
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            await server.wait_closed()
            self.board.set_adapter(self.name, "stopped")

    @property
    def connections(self) -> int:
        """Admitted connections right now."""
        return len(self._active)

    async def _connected(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        """One connection's handler task. At a stop it is cancelled; it then ends normally:
        Python 3.11's stream callback calls ``task.exception()`` on it, which raises for a
        cancelled task and logs a traceback for every open connection at every stop. The
        handler is a leaf task (nothing below it needs the cancellation), and the server
        awaits it after cancelling it."""
        try:
            await self._connection(reader, writer)
        except asyncio.CancelledError:
            pass

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = writer.get_extra_info("peername") or ("?", 0)
        host = peer_host(str(peer[0]))
        handshaking = False
        try:
            if not self.peers.allows(host):
                log.warning("OIP TCP: refused %s (not in oip.tcp.allowed_peers)", host)
                self.board.incr("oip_peers_refused")
                return
            if self._ssl is not None:
                if self._handshakes >= max(MIN_HANDSHAKES, self.tcp.max_connections):
                    log.warning("OIP TCP: refused %s: %d TLS handshakes in progress already",
                                host, self._handshakes)
                    self.board.incr("oip_peers_refused")
                    writer.transport.abort()
                    return
                handshaking = True  # a stop now must abort, not wait for the socket to close
                self._handshakes += 1
                try:
                    await writer.start_tls(
                        self._ssl, ssl_handshake_timeout=self.tcp.tls_handshake_timeout_s)
                except (OSError, TimeoutError, ssl.SSLError) as exc:
                    log.warning("OIP TCP: %s: TLS handshake failed: %s", host,
                                exc or type(exc).__name__)
                    writer.transport.abort()
                    return
                finally:
                    self._handshakes -= 1
                handshaking = False
            if len(self._active) >= self.tcp.max_connections:  # told over TLS when TLS is on
                log.warning("OIP TCP: refused %s: %d connections already", host,
                            len(self._active))
                self.board.incr("oip_naks")
                writer.write(encode_nak(0, Refusal.BUSY, "too many connections"))
                with contextlib.suppress(OSError, TimeoutError):
                    await asyncio.wait_for(writer.drain(), 1.0)
                return
            self._active.add(task)
            log.info("OIP TCP: %s:%s connected%s", host, peer[1],
                     " (TLS)" if self._ssl is not None else "")
            await self._session(reader, writer, host)
        except (OSError, TimeoutError) as exc:
            log.info("OIP TCP: %s: connection ended: %s", host, exc)
        finally:
            self._active.discard(task)
            self._tasks.discard(task)
            if handshaking:  # cancelled mid-handshake: the stream never learns of the close
                writer.transport.abort()
            else:
                await self._close(writer)

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        """close() sends what is still buffered first (committed replies, e.g. PRINT serials,
        to a peer that half-closed); a peer that does not take them within the idle timeout
        is cut off."""
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), self.tcp.idle_timeout_s)
        except TimeoutError:
            writer.transport.abort()
        except OSError:
            pass

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       host: str) -> None:
        refusals = _Refusals(host)
        try:
            await self._packets(reader, writer, host, refusals)
        finally:
            refusals.flush()

    async def _packets(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       host: str, refusals: _Refusals) -> None:
        decoder = Decoder(self.limits)
        timeout = self.tcp.idle_timeout_s
        garbage = 0
        replies: list[bytes] = []  # written together: one send per chunk, not per packet
        while True:
            try:
                async with asyncio.timeout(timeout):  # cheaper than wait_for per frame
                    data = await reader.read(READ_CHUNK)
            except TimeoutError:
                log.info("OIP TCP: %s idle for %.1fs, closing", host, timeout)
                return
            if not data:
                log.info("OIP TCP: %s closed the connection", host)
                return
            try:
                decoder.receive_data(data)
            except Exception as exc:  # a codec bug: answer it, start framing afresh
                log.exception("OIP TCP: %s: framing failed; %d byte(s) dropped", host,
                              decoder.buffered + len(data))
                replies.append(self._internal(0, exc))
                decoder, garbage = Decoder(self.limits), 0
            if decoder.garbage_bytes != garbage:
                self.board.incr("oip_garbage_bytes", decoder.garbage_bytes - garbage)
                garbage = decoder.garbage_bytes
            handled = 0
            while True:
                try:
                    event = decoder.next_event()
                except Exception as exc:  # a codec bug on one packet: NAK it, go on
                    log.exception("OIP TCP: %s: decoding a packet failed", host)
                    replies.append(self._internal(0, exc))
                    continue
                if isinstance(event, Packet):
                    if replies:  # earlier replies go out before this one's commit is awaited
                        writer.write(b"".join(replies))
                        replies.clear()
                    try:
                        reply = await self._handle(event, host, refusals)
                    except Exception as exc:  # a bug on one packet: NAK it, keep the peer
                        log.exception("OIP TCP: %s tsn %d %s failed", host, event.header.tsn,
                                      event.header.cmd)
                        reply = self._internal(event.header.tsn, exc)
                elif isinstance(event, Refused):
                    refusals.log(logging.WARNING, "OIP TCP: %s tsn %d refused: %s", host,
                                 event.tsn, event.detail)
                    self.board.incr("oip_naks")
                    reply = encode_nak(event.tsn, event.refusal, event.detail)
                else:
                    break
                replies.append(reply)
                handled += 1
                if handled % YIELD_EVERY == 0:  # a chunk of many packets: let others run
                    writer.write(b"".join(replies))
                    replies.clear()
                    await asyncio.sleep(0)
            if replies:
                writer.write(b"".join(replies))
                replies.clear()
            if writer.transport.get_write_buffer_size():  # not all sent yet
                try:
                    async with asyncio.timeout(timeout):
                        await writer.drain()
                except TimeoutError:
                    log.warning("OIP TCP: %s has not read its replies for %.1fs, dropping it",
                                host, timeout)
                    writer.transport.abort()
                    return

    def _internal(self, tsn: int, exc: Exception) -> bytes:
        """NAK 99 for an unexpected failure on one packet (already logged with traceback)."""
        self.board.incr("oip_naks")
        return encode_nak(tsn, Refusal.INTERNAL, internal_text(exc))

    async def _handle(self, packet: Packet, host: str, refusals: _Refusals) -> bytes:
        self.board.incr("oip_frames_in")
        origin = Origin("tcp", host, packet.header.tsn, packet.payload_hash)
        reply = await call_station(self.station, packet.command, origin)
        if isinstance(reply, Nak):
            self.board.incr("oip_naks")
            refusals.log(logging.INFO, "OIP TCP: %s tsn %d %s NAK: %s", host,
                         packet.header.tsn, packet.header.cmd, reply.text)
        try:
            return encode_reply(packet.header.tsn, reply)
        except LocalProtocolError as exc:  # e.g. a serial number OIP cannot carry
            log.error("OIP TCP: %s tsn %d: cannot encode the reply: %s", host,
                      packet.header.tsn, exc)
            self.board.incr("oip_naks")
            return encode_nak(packet.header.tsn, Refusal.INTERNAL, f"reply not encodable: {exc}")
