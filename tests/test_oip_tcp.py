"""OIP over TCP: real sockets on loopback against the server, a PAC simulator as the peer.

The station here is a small in-test recorder with Station.handle's signature (it is an internal
collaborator, not a protocol peer); tests/test_oip_commit.py runs the real Station + Outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import logging
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from adapters.oip.codec import build_packet, encode_command
from adapters.oip.pattern import match_pattern
from adapters.oip.records import MAX_PRINT_COUNT
from adapters.oip.tcp import OipTcpServer
from gateway.board import StatusBoard
from gateway.errors import StoreFull
from gateway.model import (
    Ack,
    Command,
    Init,
    LoadOrder,
    Login,
    Nak,
    Origin,
    Ping,
    PrintRequest,
    Refusal,
    Reply,
)
from gateway.outbox import Outbox
from gateway.settings import OipSettings, OipTcpSettings, Settings, StoreSettings, TlsSettings
from gateway.station import Station
from tests.conftest import ROOT
from tests.test_oip_codec import seed_tcp_order, seed_text
from tools.pacsim import SEED_ORDER, TcpPac, run_stream, seed_commands

HOST = "127.0.0.1"


class RecordingStation:
    """Records what it got; answers like the real one (dedup, PRINT serials, store full)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Command, Origin]] = []
        self.seen: dict[tuple[str, int], tuple[str, Reply]] = {}
        self.full = False
        self.gate: asyncio.Event | None = None
        self.next_serial = 0

    async def handle(self, command: Command, origin: Origin) -> Reply:
        self.calls.append((command, origin))
        if self.gate is not None:
            await self.gate.wait()
        if self.full:
            raise StoreFull("disk below min_free_disk_mb")
        key = (origin.peer, origin.tsn)
        if key in self.seen and not isinstance(command, Ping | Init):
            digest, reply = self.seen[key]
            if digest != origin.payload_hash:
                return Nak(Refusal.TSN_REUSED, f"tsn {origin.tsn} reused with other content")
            return replace(reply, duplicate=True) if isinstance(reply, Ack) else reply
        reply: Reply = Ack()
        if isinstance(command, PrintRequest):
            serials = tuple(f"SN{self.next_serial + k:06d}" for k in range(command.count))
            self.next_serial += command.count
            reply = Ack(serials)
        if not isinstance(command, Ping | Init):
            self.seen[key] = (origin.payload_hash, reply)
        return reply

    def commands(self) -> list[Command]:
        return [c for c, _ in self.calls]


def oip_settings(**tcp: object) -> OipSettings:
    limits = {k: tcp.pop(k) for k in ("max_packet_bytes", "max_field_bytes") if k in tcp}
    return OipSettings(tcp=OipTcpSettings(listen_port=0, **tcp), **limits)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(server: OipTcpServer) -> AsyncIterator[OipTcpServer]:
    task = asyncio.create_task(server.serve())
    await asyncio.wait_for(server.ready.wait(), 10)
    try:
        yield server
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def tcp_server(station: object = None, board: StatusBoard | None = None,
                     **tcp: object) -> AsyncIterator[OipTcpServer]:
    server = OipTcpServer(oip_settings(**tcp), station or RecordingStation(),
                          board or StatusBoard())
    async with running(server):
        yield server


async def pac(server: OipTcpServer, ssl_ctx: ssl.SSLContext | None = None) -> TcpPac:
    return await TcpPac.connect(HOST, server.port, ssl_ctx)


async def assert_closed(p: TcpPac) -> None:
    """The server closes the connection (bounded wait, not a timing assertion)."""
    try:
        data = await asyncio.wait_for(p.reader.read(), 20)
    except ConnectionResetError:
        data = b""
    assert data == b""


# --------------------------------------------------------------------------- tests


async def test_seed_order_is_acked_and_reaches_the_station():
    station, board = RecordingStation(), StatusBoard()
    async with tcp_server(station, board) as server:
        p = await pac(server)
        await p.send_raw(seed_tcp_order())
        reply = await p.reply()
        await p.close()
    assert reply.ack and reply.tsn == 12345 and reply.code == 0
    [(command, origin)] = station.calls
    assert command == LoadOrder(SEED_ORDER)
    assert origin == Origin("tcp", HOST, 12345, hashlib.sha256(seed_tcp_order()).hexdigest())
    assert board.counters["oip_frames_in"] == 1
    assert board.adapters["oip-tcp"] == "stopped"


async def test_nak_and_the_connection_survives():
    station, board = RecordingStation(), StatusBoard()
    async with tcp_server(station, board) as server:
        p = await pac(server)
        await p.send_raw(b"\x02ORDER,0,77,30;not,an,order\x03")
        bad = await p.reply()
        await p.send_raw(b"\x02FROB,0,78,15\x03")
        unknown = await p.reply()
        good = await p.request(Ping(), 79)
        await p.close()
    assert (bad.ack, bad.code, bad.tsn) == (False, 2, 77)  # length mismatch (30 != 31)
    assert "says 30 bytes" in bad.text
    assert (unknown.ack, unknown.code, unknown.tsn) == (False, 4, 78)
    assert good.ack and good.tsn == 79
    assert station.commands() == [Ping()]  # refused packets never reach the station
    assert board.counters["oip_naks"] == 2


@pytest.mark.parametrize("max_field_bytes", [256, 8192])
async def test_numbers_too_long_for_int_are_a_nak_and_the_connection_goes_on(max_field_bytes):
    """5000-digit tsn/length/gord (past Python's int() digit limit): each packet is NAKed
    naming the record and field, the packets after it in the same read are still answered."""
    station = RecordingStation()
    async with tcp_server(station, max_field_bytes=max_field_bytes) as server:
        p = await pac(server)
        huge = b"1" * 5000
        await p.send_raw(b"\x02PING,0," + huge + b",10\x03"
                         + b"\x02LOGIN,0,1," + huge + b";bob\x03"
                         + build_packet("DATA", 0, 3, ["O1", f"G1,{huge.decode()},10,2,OK,x"])
                         + encode_command(Ping(), 4))
        replies = [await p.reply() for _ in range(4)]
        await p.close()
    tsn_nak, length_nak, gord_nak, ping = replies
    assert not tsn_nak.ack and not length_nak.ack and not gord_nak.ack
    # over max_field_bytes: NAK 3 (too large); within it: NAK 1 (out of range)
    assert tsn_nak.code == length_nak.code == gord_nak.code == (3 if max_field_bytes < 5000
                                                                else 1)
    assert "record 1" in tsn_nak.text and "field 3" in tsn_nak.text
    assert "record 1" in length_nak.text and "field 4" in length_nak.text
    assert gord_nak.tsn == 3 and "record 3" in gord_nak.text and "field 2" in gord_nak.text
    assert ping.ack and ping.tsn == 4
    assert station.commands() == [Ping()]


class FailingStation(RecordingStation):
    """A station with a bug: LOGIN "boom" raises something nobody expects."""

    async def handle(self, command: Command, origin: Origin) -> Reply:
        if isinstance(command, Login) and command.user == "boom":
            raise KeyError("a bug")
        return await super().handle(command, origin)


async def test_an_unexpected_failure_is_nak_99_and_the_connection_goes_on():
    station, board = FailingStation(), StatusBoard()
    async with tcp_server(station, board) as server:
        p = await pac(server)
        await p.send_raw(encode_command(Login("boom"), 1) + encode_command(Ping(), 2))
        failed, ping = await p.reply(), await p.reply()
        await p.close()
    assert (failed.ack, failed.code, failed.tsn) == (False, 99, 1)
    assert "KeyError" in failed.text
    assert ping.ack and ping.tsn == 2
    assert board.counters["oip_naks"] == 1


async def test_garbage_is_skipped_and_counted():
    board = StatusBoard()
    async with tcp_server(board=board) as server:
        p = await pac(server)
        await p.send_raw(b"\r\nhello" + encode_command(Ping(), 5) + b"\n")
        reply = await p.reply()
        await p.send_raw(encode_command(Ping(), 6))
        assert (await p.reply()).tsn == 6
        await p.close()
    assert reply.ack and reply.tsn == 5
    assert board.counters["oip_garbage_bytes"] == 8


async def test_pipelined_packets_are_answered_in_order():
    station = RecordingStation()
    async with tcp_server(station) as server:
        p = await pac(server)
        await p.send_raw(b"".join(encode_command(Login(f"u{n}"), n) for n in range(1, 51)))
        replies = [await p.reply() for _ in range(50)]
        await p.close()
    assert [r.tsn for r in replies] == list(range(1, 51))
    assert all(r.ack for r in replies)
    assert station.commands() == [Login(f"u{n}") for n in range(1, 51)]


async def test_retransmission_on_a_new_connection_and_tsn_reuse():
    station = RecordingStation()
    async with tcp_server(station) as server:
        first = await pac(server)
        r1 = await first.request(PrintRequest("ZI355937", "GTIN1", 2), 500)
        await first.close()  # the PAC lost the ACK and reconnects
        second = await pac(server)
        r2 = await second.request(PrintRequest("ZI355937", "GTIN1", 2), 500)
        r3 = await second.request(PrintRequest("ZI355937", "GTIN1", 3), 500)
        await second.close()
    assert r1.ack and r2.ack and r1.serials == r2.serials == ("SN000000", "SN000001")
    assert (r3.ack, r3.code, r3.tsn) == (False, 6, 500)
    hashes_seen = [o.payload_hash for _, o in station.calls]
    assert hashes_seen[0] == hashes_seen[1] != hashes_seen[2]


async def test_store_full_is_a_nak_not_a_crash():
    station = RecordingStation()
    station.full = True
    async with tcp_server(station) as server:
        p = await pac(server)
        r = await p.request(LoadOrder(SEED_ORDER), 9)
        station.full = False
        r2 = await p.request(LoadOrder(SEED_ORDER), 10)
        await p.close()
    assert (r.ack, r.code) == (False, 5) and "min_free_disk_mb" in r.text
    assert r2.ack


async def test_idle_connection_is_closed():
    async with tcp_server(idle_timeout_s=0.3) as server:
        p = await pac(server)
        await assert_closed(p)
        p2 = await pac(server)  # the server itself goes on
        assert (await p2.request(Ping(), 1)).ack
        await p2.close()


class SlowStation(RecordingStation):
    """Commits take longer than the idle timeout (a slow store)."""

    async def handle(self, command: Command, origin: Origin) -> Reply:
        await asyncio.sleep(0.8)
        return await super().handle(command, origin)


async def test_idle_timeout_counts_only_silence():
    """Traffic keeps a connection open well past the idle timeout; a slow commit is not
    silence; once the peer goes quiet the connection is closed."""
    async with tcp_server(idle_timeout_s=0.4) as server:
        p = await pac(server)
        for tsn in range(1, 9):  # 8 x 0.15 s = 1.2 s, three times the idle timeout
            await asyncio.sleep(0.15)
            assert (await p.request(Ping(), tsn)).ack
        loop = asyncio.get_running_loop()
        quiet_from = loop.time()  # the server waits for data since just before this
        await assert_closed(p)
        assert loop.time() - quiet_from >= 0.35  # not before the timeout (less timer slack)
    async with tcp_server(SlowStation(), idle_timeout_s=0.3) as server:
        p = await pac(server)
        assert (await p.request(Ping(), 1)).ack  # answered after 0.8 s > idle timeout
        await p.close()


async def test_max_connections():
    board = StatusBoard()
    async with tcp_server(board=board, max_connections=2) as server:
        a, b = await pac(server), await pac(server)
        assert (await a.request(Ping(), 1)).ack and (await b.request(Ping(), 1)).ack
        c = await pac(server)
        busy = await c.reply()
        await assert_closed(c)
        assert (await a.request(Ping(), 2)).ack  # the others are untouched
        await a.close()
        for _ in range(200):  # bounded wait for the server to notice the close
            if server.connections < 2:
                break
            await asyncio.sleep(0.05)
        d = await pac(server)
        assert (await d.request(Ping(), 1)).ack
        await b.close()
        await d.close()
    assert (busy.ack, busy.code, busy.tsn) == (False, 12, 0)


async def test_disallowed_peer_is_closed_without_reaching_the_station():
    station, board = RecordingStation(), StatusBoard()
    async with tcp_server(station, board, allowed_peers=["10.0.0.0/8", "192.168.1.7"]) as s:
        p = await pac(s)
        await p.send_raw(encode_command(Ping(), 1))
        await assert_closed(p)
    assert station.calls == []
    assert board.counters["oip_peers_refused"] == 1
    async with tcp_server(station, allowed_peers=["127.0.0.0/8"]) as s:
        p = await pac(s)
        assert (await p.request(Ping(), 1)).ack
        await p.close()


async def test_slow_sender_does_not_hold_up_another_peer():
    station = RecordingStation()
    async with tcp_server(station) as server:
        slow, fast = await pac(server), await pac(server)
        raw = seed_tcp_order()
        for i, byte in enumerate(raw[:-1]):
            await slow.send_raw(bytes([byte]))
            if i % 40 == 0:
                await asyncio.sleep(0.01)
                assert (await fast.request(Ping(), i + 1)).ack
        await slow.send_raw(raw[-1:])
        reply = await slow.reply()
        await slow.close()
        await fast.close()
    assert reply.ack and reply.tsn == 12345
    assert station.commands()[-1] == LoadOrder(SEED_ORDER)


async def test_peer_that_never_reads_its_replies_is_dropped():
    """A peer floods PRINTs and never reads the replies: once the server's send buffer stays full
    for oip.tcp.idle_timeout_s it drops that peer; another peer is served all along."""
    async with tcp_server(idle_timeout_s=0.5) as server:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (HOST, server.port))
        _, writer = await asyncio.open_connection(sock=sock)
        other = await pac(server)
        # PRINT replies are ~100x the request: the server's buffers fill after a few MB
        burst = b"".join(encode_command(PrintRequest("A1", "GTIN", MAX_PRINT_COUNT), tsn)
                         for tsn in range(1, 201))

        async def flood() -> BaseException | None:
            try:
                for _ in range(2000):  # at most 400,000 PRINTs; the server gives up far sooner
                    writer.write(burst)
                    await writer.drain()
            except (ConnectionError, OSError) as exc:
                return exc
            return None

        task = asyncio.create_task(flood())
        assert (await other.request(Ping(), 1)).ack
        ended = await asyncio.wait_for(task, 60)
        assert isinstance(ended, ConnectionError | OSError), "the flooding peer was never dropped"
        await other.close()
        after = await pac(server)  # (the other one idled out meanwhile: idle_timeout_s 0.5)
        assert (await after.request(Ping(), 2)).ack
        assert server.connections == 1
        writer.close()
        await after.close()


@pytest.mark.parametrize("n", [315, 318, 400, 537])
async def test_a_peer_that_half_closes_gets_every_reply(n: int):
    """A PAC sends its packets, shuts down its sending side and reads slowly: every reply that
    was committed (here PRINT serials, a few MB) still reaches it before the close."""
    async with tcp_server(idle_timeout_s=10) as server:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (HOST, server.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 24)
        writer.write(b"".join(encode_command(PrintRequest("A1", "GTIN", MAX_PRINT_COUNT), tsn)
                              for tsn in range(1, n + 1)))
        await writer.drain()
        writer.write_eof()
        await asyncio.sleep(0.3)  # the server sees EOF while most replies are still queued
        data = await asyncio.wait_for(reader.read(), 60)
        writer.close()
    assert data.count(b"\x03") == n and data.startswith(b"\x02ACK,0,1,")


async def test_oversized_packet_refused_and_the_peer_goes_on():
    board = StatusBoard()
    async with tcp_server(board=board, max_packet_bytes=1024) as server:
        p = await pac(server)
        other = await pac(server)
        await p.send_raw(b"\x02LOGIN,0,66,200000;")
        for _ in range(100):  # 200 kB that the server must not buffer
            await p.send_raw(b"x" * 2000)
        refused = await p.reply()
        await p.send_raw(b"\x03")
        after = await p.request(Ping(), 67)
        assert (await other.request(Ping(), 1)).ack
        await p.close()
        await other.close()
    assert (refused.ack, refused.code, refused.tsn) == (False, 3, 66)
    assert after.ack


async def test_a_peer_vanishing_mid_packet_affects_no_one():
    station = RecordingStation()
    async with tcp_server(station) as server:
        good = await pac(server)
        for n in range(5):
            bad = await pac(server)
            await bad.send_raw(seed_tcp_order()[: 50 + n])
            bad.writer.transport.abort()
            assert (await good.request(Ping(), n)).ack
        await good.close()
    assert station.commands() == [Ping()] * 5


async def test_cancel_closes_listener_and_connections():
    station = RecordingStation()
    server = OipTcpServer(oip_settings(), station, StatusBoard())
    task = asyncio.create_task(server.serve())
    await server.ready.wait()
    p = await pac(server)
    assert (await p.request(Ping(), 1)).ack
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await assert_closed(p)
    with pytest.raises(OSError):
        await asyncio.open_connection(HOST, server.port)


def make_cert(tmp_path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return tmp_path / "cert.pem"


def client_ctx(cert: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.check_hostname = False
    return ctx


async def test_tls(tmp_path):
    cert = make_cert(tmp_path)
    station = RecordingStation()
    async with tcp_server(station, tls=TlsSettings(enable=True, path=tmp_path)) as server:
        p = await pac(server, client_ctx(cert))
        await p.send_raw(seed_tcp_order())
        reply = await p.reply()
        await p.close()
        plain = await pac(server)  # a plain-TCP peer cannot talk to a TLS listener
        await plain.send_raw(seed_tcp_order())
        await assert_closed(plain)
    assert reply.ack and station.commands() == [LoadOrder(SEED_ORDER)]


async def test_station_call_in_flight_is_cancelled_with_the_server():
    station = RecordingStation()
    station.gate = asyncio.Event()  # the station never answers
    server = OipTcpServer(oip_settings(), station, StatusBoard())
    task = asyncio.create_task(server.serve())
    await server.ready.wait()
    p = await pac(server)
    await p.send_raw(encode_command(Ping(), 1))
    for _ in range(200):
        if station.calls:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await assert_closed(p)  # no ACK was sent for what was never committed


# --------------------------------------------------------------------------- PAC simulator


async def run_pacsim(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tools.pacsim", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_pacsim_sends_the_seed_examples():
    station = RecordingStation()
    async with tcp_server(station) as server:
        code, out = await run_pacsim("--port", str(server.port), "--login", "alice", "seed")
    assert code == 0, out
    assert station.commands() == [Login("alice"), *seed_commands()]
    assert [o.tsn for _, o in station.calls[1:3]] == [12345, 12346]
    assert "tsn 12345: ACK" in out and "serials SN000000,SN000001" in out


async def test_pacsim_sends_a_file_of_frames(tmp_path):
    text = seed_text()
    frames = tmp_path / "frames.txt"  # the seed's display form, line breaks and all
    frames.write_text(text[text.index("{stx}"):text.index("{etx}") + 5] + "\n"
                      + "{stx}PING,0,7,13{etx}\n")
    station = RecordingStation()
    async with tcp_server(station) as server:
        code, out = await run_pacsim("--port", str(server.port), "file", str(frames))
    assert code == 0, out
    assert station.commands() == [LoadOrder(SEED_ORDER), Ping()]


@contextlib.asynccontextmanager
async def real_station(path: Path) -> AsyncIterator[tuple[Station, Outbox]]:
    """The real Station on a real Outbox file (no reserve)."""
    settings = Settings(store=StoreSettings(path=path))
    outbox = await Outbox.open(settings.store, dedup_window=settings.oip.dedup_window)
    try:
        station = Station(settings, outbox, StatusBoard(), pattern_check=match_pattern)
        await station.load()
        yield station, outbox
    finally:
        await outbox.close()


async def committed(outbox: Outbox) -> dict[str, int]:
    """How many messages of each kind the outbox holds."""
    kinds: dict[str, int] = {}
    for stream in await outbox.pending_streams():
        for m in await outbox.pending(stream, 100_000):
            kinds[m.kind] = kinds.get(m.kind, 0) + 1
    return kinds


async def test_pacsim_stream_over_several_connections(tmp_path):
    """A multi-connection ORDER + DATA stream is valid against the real station (one current
    order): every packet is ACKed and committed; --orders-only streams too."""
    async with real_station(tmp_path / "o.sqlite") as (station, outbox), \
            tcp_server(station) as server:
        code, out = await run_pacsim("--port", str(server.port), "stream", "--count", "12",
                                     "--connections", "2")
        stats = await run_stream("tcp", HOST, server.port, connections=3, count=30,
                                 pipeline=4, tsn_base=100_000_000)
        many = await run_stream("tcp", HOST, server.port, connections=8, count=50,
                                tsn_base=200_000_000)
        orders = await run_stream("tcp", HOST, server.port, connections=4, count=20,
                                  orders_only=True, tsn_base=300_000_000)
        kinds = await committed(outbox)
    assert code == 0 and "ACK 12, NAK 0" in out, out
    assert (stats.sent, stats.acks, stats.naks) == (30, 30, 0)
    assert (many.sent, many.acks, many.naks) == (50, 50, 0)
    assert (orders.sent, orders.acks, orders.naks) == (20, 20, 0)
    # 1 ORDER + 4 DATA (the 2nd and 4th on validate-serial steps) per seed order: 12 -> 3
    # orders (the last with 1 DATA, no serial), 30 -> 6, 50 -> 10; then 20 orders alone
    assert kinds == {"Order": 3 + 6 + 10 + 20, "StepResult": 9 + 24 + 40,
                     "SIDCommissioningEvent": 4 + 12 + 20}


# --------------------------------------------------------------------------- floods and edges


async def test_a_flooding_peer_does_not_stall_another_and_is_not_logged_packet_by_packet(
        caplog):
    """One peer pours malformed packets (and lone STX bytes) in as fast as it can while reading
    its NAKs; another peer's PING is answered while the flood is still being worked through
    (the server gives the loop back every YIELD_EVERY packets), every flood packet gets its NAK
    in order, lone STX bytes are counted as garbage, and the log holds a bounded number of
    lines, not one per refused packet."""
    from adapters.oip import tcp

    board = StatusBoard()
    n = 40_000
    flood = b"".join(b"\x02\x02X,0,%d,1\x03" % k for k in range(1, n + 1))
    async with tcp_server(board=board) as server:
        flooder = await pac(server)
        other = await pac(server)
        got: list[int] = []

        async def read_naks() -> None:
            while len(got) < n:
                got.append((await flooder.reply(timeout_s=60)).tsn)

        reader = asyncio.create_task(read_naks())
        writing = asyncio.create_task(flooder.send_raw(flood))
        while not got:  # noqa: ASYNC110 - waiting for the flood to be under way
            await asyncio.sleep(0.001)
        ping = await other.request(Ping(), 7)
        naks_when_pinged = len(got)
        await writing
        await reader
        await flooder.close()
        await other.close()
    assert ping.ack and ping.tsn == 7
    assert naks_when_pinged < n, "the PING waited for the whole flood"
    assert got == list(range(1, n + 1))  # each refused packet answered once, in order
    assert board.counters["oip_naks"] == n
    assert board.counters["oip_garbage_bytes"] == n  # the lone STX before each packet
    refusal_lines = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusal_lines) <= tcp.LOGGED_REFUSALS + 2, len(refusal_lines)
    assert any("more packets refused" in r.getMessage() for r in refusal_lines)


async def test_tls_peers_are_checked_before_the_handshake(tmp_path):
    """A peer outside allowed_peers is closed at once, TLS or not; an allowed peer that never
    starts its handshake is closed after idle_timeout_s instead of holding a socket."""
    cert = make_cert(tmp_path)
    tls = TlsSettings(enable=True, path=tmp_path)
    board = StatusBoard()
    async with tcp_server(board=board, tls=tls, allowed_peers=["10.0.0.0/8"]) as server:
        silent = await pac(server)  # plain TCP, says nothing
        await assert_closed(silent)
    assert board.counters["oip_peers_refused"] == 1
    async with tcp_server(tls=tls, idle_timeout_s=0.3) as server:
        silent = await pac(server)
        await assert_closed(silent)
        good = await pac(server, client_ctx(cert))
        assert (await good.request(Ping(), 1)).ack
        await good.close()


def test_ipv4_mapped_addresses_are_ipv4_peers():
    from adapters.oip.common import PeerFilter, peer_host

    for entry in ("::ffff:127.0.0.1", "::ffff:127.0.0.0/104", "127.0.0.1"):
        peers = PeerFilter([entry], "oip.tcp")
        assert peers.allows("127.0.0.1") and peers.allows("::ffff:127.0.0.1"), entry
        assert not peers.allows("10.0.0.1") and not peers.allows("::1"), entry
    assert peer_host("::ffff:10.0.0.7") == "10.0.0.7"
    assert peer_host("10.0.0.7") == "10.0.0.7" and peer_host("fe80::1%eth0") == "fe80::1%eth0"


async def test_a_one_record_packet_declaring_too_many_bytes_is_too_large():
    async with tcp_server(max_packet_bytes=1024) as server:
        p = await pac(server)
        await p.send_raw(b"\x02PING,0,13,2147483647\x03")
        too_large = await p.reply()
        assert (await p.request(Ping(), 14)).ack
        await p.close()
    assert (too_large.ack, too_large.code, too_large.tsn) == (False, 3, 13)
    assert "header declares 2147483647 bytes" in too_large.text


async def test_tls_handshakes_neither_hold_a_slot_nor_a_stop(tmp_path):
    """A peer that never handshakes does not count against max_connections (a real PAC still
    gets in), a busy TLS peer reads its NAK 12 over TLS, and stopping the server while a peer
    is mid-handshake does not wait for the handshake timeout."""
    cert = make_cert(tmp_path)
    tls = TlsSettings(enable=True, path=tmp_path)
    server = OipTcpServer(oip_settings(tls=tls, max_connections=1, idle_timeout_s=300,
                                       tls_handshake_timeout_s=300),
                          RecordingStation(), StatusBoard())
    task = asyncio.create_task(server.serve())
    await asyncio.wait_for(server.ready.wait(), 10)
    silent = await pac(server)  # plain TCP: never starts a handshake
    first = await pac(server, client_ctx(cert))
    assert (await first.request(Ping(), 1)).ack
    second = await pac(server, client_ctx(cert))
    busy = await second.reply()
    assert (busy.ack, busy.code, busy.tsn) == (False, 12, 0)
    # at most max(16, max_connections) handshakes at once: then a silent socket is closed
    from adapters.oip.tcp import MIN_HANDSHAKES

    extra = [await pac(server) for _ in range(MIN_HANDSHAKES - 1)]  # with `silent`: 16
    one_too_many = await pac(server)
    await assert_closed(one_too_many)
    assert server.board.counters["oip_peers_refused"] == 1
    for p in extra:
        await p.close()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=20)  # a bound, far below the 300 s timeout
    assert done, "the stop waited for a peer's TLS handshake"
    await silent.close()
    await first.close()


async def test_station_naks_are_logged_within_the_same_limit(tmp_path, caplog):
    """The real Station refusing 200 pipelined DATA (no order loaded, NAK 8): the log holds
    the transport's first LOGGED_REFUSALS lines and a summary, not one line per packet (the
    Station leaves logging each refusal to the transport)."""
    from adapters.oip import tcp
    from gateway.model import StepResult

    caplog.set_level(logging.INFO)
    settings = Settings(store=StoreSettings(path=tmp_path / "o.sqlite"))
    outbox = await Outbox.open(settings.store)
    station = Station(settings, outbox, StatusBoard(), pattern_check=match_pattern)
    await station.load()
    try:
        async with tcp_server(station) as server:
            p = await pac(server)
            await p.send_raw(b"".join(encode_command(StepResult("NOPE", "G", 1, 1, 1, True,
                                                                "x"), n)
                                      for n in range(1, 201)))
            replies = [await p.reply() for _ in range(200)]
            await p.close()
    finally:
        await outbox.close()
    assert [(r.code, r.tsn) for r in replies] == [(8, n) for n in range(1, 201)]
    lines = [r for r in caplog.records if "NOPE" in r.getMessage() or "more packets refused"
             in r.getMessage()]
    assert len(lines) <= tcp.LOGGED_REFUSALS + 2, len(lines)
    assert any("more packets refused" in r.getMessage() for r in lines)
