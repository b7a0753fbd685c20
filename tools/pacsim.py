"""PAC simulator: speaks OIP over TCP or SOAP to a linegate station.

Modes: ``seed`` sends the OIP seed's examples (the ORDER, then a DATA for each validate-serial
step and a PRINT), ``file`` sends packets from a file (one per line, ``{stx}``/``{etx}`` or raw
0x02/0x03; for SOAP one command per line in the TCP form, re-encoded as XML), ``stream``
sends generated ORDER + DATA traffic at a rate over N connections and prints the figures; it
is valid against one station (one current order): ORDERs go out one at a time, each order's
DATA spread over all connections (``--orders-only``: ORDERs alone, on every connection).

    python -m tools.pacsim --help
    python -m tools.pacsim --transport tcp --port 7701 seed
    python -m tools.pacsim --transport soap --port 7780 stream --rate 200 --connections 4 \
        --seconds 10

Importable: ``TcpPac``, ``SoapPac``, ``seed_commands()``, ``order_stream()``, ``run_stream()``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import logging
import ssl
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from adapters.oip import xmlcodec
from adapters.oip.codec import (
    Framer,
    Refused,
    ReplyPacket,
    encode_command,
    parse_packet,
    parse_reply,
)
from gateway.errors import TransportError
from gateway.model import (
    HANDLER_VALIDATE_SERIAL,
    Command,
    Instruction,
    LoadOrder,
    Login,
    Order,
    PrintRequest,
    Step,
    StepResult,
)

log = logging.getLogger(__name__)

# The seed's ORDER example as data (the tests check it against the seed text).
SEED_ORDER = Order(
    "ZI355937", "31", "30", "31", "567016", "355937", "XXXXA0NDXAN6XXXXX", "G", "FED", "L",
    "ZW", (
        Instruction("G5A1", 1, 10, "1045075", "1041075", "wZw Black Pad", 1,
                    (Step(100001, "", 1), Step(0, "11an||00*", 3))),
        Instruction("G5A2", 2, 5, "1035252", "", "AirBag Sft Pnl", 1,
                    (Step(2, "", 4), Step(0, "14an||NPZQ*", 3))),
    ))
SEED_TSN, SEED_CODE = 12345, 5701


def serial_for(pattern: str, n: int) -> str:
    """A value matching a ``c`` pattern such as ``11an||00*`` (for generated DATA)."""
    spec, _, affix = pattern.partition("||")
    digits = "".join(ch for ch in spec if ch.isdigit() or ch == "-").split("-")[0]
    length = int(digits) if digits else 12
    prefix = affix.rstrip("*")
    body = str(n).rjust(max(length - len(prefix), 0), "0")
    return (prefix + body)[:length] if length else prefix + body


def data_for(order: Order, n: int = 0) -> list[StepResult]:
    """OK results for every step of ``order``: validate-serial steps get matching serials."""
    out = []
    for ins in order.instructions:
        for no, step in enumerate(ins.steps, 1):
            value = serial_for(step.c, n) if step.h == HANDLER_VALIDATE_SERIAL else "OK"
            out.append(StepResult(order.Ordnr, ins.group, ins.gord, ins.iord, no, True, value))
    return out


def seed_commands() -> list[Command]:
    return [LoadOrder(SEED_ORDER), *data_for(SEED_ORDER, 1),
            PrintRequest(SEED_ORDER.Ordnr, "04012345678901", 2)]


def order_stream(prefix: str = "SIM", data_per_order: bool = True,
                 distinct_instructions: bool = False) -> Iterator[Command]:
    """Endless ORDER (+ its DATA) commands with distinct Ordnr. The instructions are the
    seed's for every order (a line building one product), or with ``distinct_instructions``
    differ from order to order (their iname carries the order's number)."""
    for n in itertools.count(1):
        order = dataclasses.replace(SEED_ORDER, Ordnr=f"{prefix}{n:08d}")
        if distinct_instructions:
            order = dataclasses.replace(order, instructions=tuple(
                dataclasses.replace(ins, iname=f"{ins.iname} {n}")
                for ins in order.instructions))
        yield LoadOrder(order)
        if data_per_order:
            yield from data_for(order, n)


# --------------------------------------------------------------------------- clients


class TcpPac:
    """One PAC connection: send packets, read ACK/NAK replies in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.framer = Framer()

    @classmethod
    async def connect(cls, host: str, port: int,
                      ssl_ctx: ssl.SSLContext | None = None) -> TcpPac:
        try:
            reader, writer = await asyncio.open_connection(host, port, ssl=ssl_ctx)
        except OSError as exc:
            raise TransportError(f"cannot connect to {host}:{port}: {exc}") from exc
        return cls(reader, writer)

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self, timeout_s: float = 10.0) -> ReplyPacket:
        """The next reply packet; TransportError if the connection ends first."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            item = self.framer.next_packet()
            if isinstance(item, bytes):
                return parse_reply(item)
            if isinstance(item, Refused):
                raise TransportError(f"bad reply from the server: {item.detail}")
            left = deadline - asyncio.get_running_loop().time()
            try:
                async with asyncio.timeout(max(left, 0.001)):
                    data = await self.reader.read(65_536)
            except TimeoutError as exc:
                raise TransportError(f"no reply within {timeout_s}s") from exc
            if not data:
                raise TransportError("connection closed by the server")
            self.framer.receive_data(data)

    async def request(self, command: Command, tsn: int, code: int = 0,
                      timeout_s: float = 10.0) -> ReplyPacket:
        await self.send_raw(encode_command(command, tsn, code))
        return await self.reply(timeout_s)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


class SoapPac:
    """A PAC speaking OIP SOAP/XML (POST /oip) over one aiohttp session."""

    def __init__(self, url: str, ssl_ctx: ssl.SSLContext | None = None) -> None:
        self.url = url
        self.ssl_ctx = ssl_ctx
        self.session = aiohttp.ClientSession()

    async def post(self, body: bytes) -> tuple[int, bytes]:
        try:
            async with self.session.post(self.url, data=body, ssl=self.ssl_ctx or False,
                                         headers={"Content-Type": "text/xml; charset=utf-8",
                                                  "SOAPAction": '""'}) as resp:
                return resp.status, await resp.read()
        except aiohttp.ClientError as exc:
            raise TransportError(f"POST {self.url}: {exc}") from exc

    async def request(self, command: Command, tsn: int, code: int = 0,
                      timeout_s: float = 10.0) -> ReplyPacket:
        _status, body = await asyncio.wait_for(
            self.post(xmlcodec.encode_request(command, tsn, code)), timeout_s)
        ack, rcode, rtsn, text, serials = xmlcodec.decode_reply(xmlcodec.parse_xml(body))
        return ReplyPacket(ack, rcode, rtsn, text, serials)

    async def close(self) -> None:
        await self.session.close()


Pac = TcpPac | SoapPac


async def connect(transport: str, host: str, port: int,
                  ssl_ctx: ssl.SSLContext | None = None) -> Pac:
    if transport == "tcp":
        return await TcpPac.connect(host, port, ssl_ctx)
    scheme = "https" if ssl_ctx else "http"
    return SoapPac(f"{scheme}://{host}:{port}/oip", ssl_ctx)


# --------------------------------------------------------------------------- stream


@dataclass
class StreamStats:
    sent: int = 0
    acks: int = 0
    naks: int = 0
    latencies: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(p / 100 * len(data)))]

    def summary(self) -> str:
        rate = self.acks / self.elapsed_s if self.elapsed_s else 0.0
        mean = statistics.fmean(self.latencies) if self.latencies else float("nan")
        return (f"sent {self.sent}, ACK {self.acks}, NAK {self.naks}, {rate:.0f} ACK/s, "
                f"latency p50 {self.percentile(50) * 1e3:.2f} ms p99 "
                f"{self.percentile(99) * 1e3:.2f} ms mean {mean * 1e3:.2f} ms")


async def run_stream(transport: str, host: str, port: int, *, connections: int = 1,
                     count: int = 1000, rate: float | None = None, orders_only: bool = False,
                     pipeline: int = 1, ssl_ctx: ssl.SSLContext | None = None,
                     tsn_base: int = 1, distinct_instructions: bool = False) -> StreamStats:
    """Send ``count`` commands over ``connections`` PACs, paced at ``rate``/s overall
    (None = as fast as the ACKs come). TCP connections may keep ``pipeline`` packets in
    flight. Connection ``idx`` numbers its packets from ``tsn_base + idx * 10_000_000`` so
    that PACs sharing one address never reuse each other's tsn.

    A station has one current order, so a stream with DATA is valid against a real station
    only if each order's DATA arrive while it is current: the ORDERs go out one at a time
    (taking turns over the connections), and once an ORDER is ACKed its DATA are spread over
    all connections concurrently; the next ORDER waits for them. ``orders_only`` streams
    have no such constraint: every connection sends ORDERs on its own."""
    stats = StreamStats()
    opened = await asyncio.gather(*(connect(transport, host, port, ssl_ctx)
                                    for _ in range(max(connections, 1))),
                                  return_exceptions=True)
    pacs = [p for p in opened if not isinstance(p, BaseException)]
    failed = [p for p in opened if isinstance(p, BaseException)]
    if failed:
        for pac in pacs:
            await pac.close()
        raise failed[0]
    start = time.perf_counter()
    try:
        tsns = [tsn_base + idx * 10_000_000 for idx in range(len(pacs))]

        async def send(idx: int, items: list[tuple[int, Command]]) -> None:
            """Connection ``idx`` sends ``items`` (global index k, command) in order; the
            k-th command overall is due at ``start + k / rate``."""
            pac, in_flight = pacs[idx], []
            for n, (k, cmd) in enumerate(items):
                if rate:
                    delay = start + k / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                t0 = time.perf_counter()
                stats.sent += 1
                tsn, tsns[idx] = tsns[idx], tsns[idx] + 1
                if isinstance(pac, TcpPac) and pipeline > 1:
                    await pac.send_raw(encode_command(cmd, tsn))
                    in_flight.append(t0)
                    if len(in_flight) >= pipeline or n == len(items) - 1:
                        for sent_at in in_flight:
                            _count(stats, await pac.reply(), sent_at)
                        in_flight.clear()
                    continue
                _count(stats, await pac.request(cmd, tsn), t0)

        if orders_only:
            per_conn: list[list[tuple[int, Command]]] = [[] for _ in pacs]
            orders = order_stream("SIM", data_per_order=False,
                                  distinct_instructions=distinct_instructions)
            for k, cmd in zip(range(count), orders, strict=False):
                per_conn[k % len(pacs)].append((k, cmd))
            await asyncio.gather(*(send(i, items) for i, items in enumerate(per_conn)))
        else:
            k, turn = 0, 0
            for n in itertools.count(1):
                if k >= count:
                    break
                order = dataclasses.replace(SEED_ORDER, Ordnr=f"SIM{n:08d}")
                owner = turn % len(pacs)
                turn += 1
                await send(owner, [(k, LoadOrder(order))])
                k += 1
                data = data_for(order, n)[:count - k]
                shares: list[list[tuple[int, Command]]] = [[] for _ in pacs]
                for j, result in enumerate(data):  # the owner's neighbour first
                    shares[(owner + 1 + j) % len(pacs)].append((k + j, result))
                k += len(data)
                await asyncio.gather(*(send(i, items) for i, items in enumerate(shares)
                                       if items))
    finally:
        for pac in pacs:
            await pac.close()
    stats.elapsed_s = time.perf_counter() - start
    return stats


def _count(stats: StreamStats, reply: ReplyPacket, t0: float) -> None:
    stats.latencies.append(time.perf_counter() - t0)
    if reply.ack:
        stats.acks += 1
    else:
        stats.naks += 1
        if stats.naks <= 5:
            log.warning("NAK %d tsn %d: %s", reply.code, reply.tsn, reply.text)


# --------------------------------------------------------------------------- CLI


def read_frames(path: Path) -> list[bytes]:
    """Packets from a file: one per non-empty line; ``{stx}``/``{etx}`` may stand for the
    control bytes, or raw STX..ETX packets may follow each other."""
    data = path.read_bytes().replace(b"{stx}", b"\x02").replace(b"{etx}", b"\x03")
    if b"\x02" in data:
        framer = Framer()
        framer.receive_data(data.replace(b"\r", b"").replace(b"\n", b""))
        out = []
        while (item := framer.next_packet()) is not None:
            if isinstance(item, bytes):
                out.append(item)
        return out
    return [b"\x02" + line.strip() + b"\x03" for line in data.splitlines() if line.strip()]


async def _send_all(pac: Pac, packets: list[bytes] | list[Command]) -> int:
    naks = 0
    for n, item in enumerate(packets, 1):
        if isinstance(item, bytes):
            if isinstance(pac, TcpPac):
                await pac.send_raw(item)
                reply = await pac.reply()
            else:
                header, cmd = parse_packet(item)
                reply = await pac.request(cmd, header.tsn, header.code)
        else:
            tsn, code = (SEED_TSN, SEED_CODE) if n == 1 else (SEED_TSN + n - 1, 0)
            reply = await pac.request(item, tsn, code)
        naks += not reply.ack
        print(f"tsn {reply.tsn}: {'ACK' if reply.ack else f'NAK {reply.code}'} "
              f"{reply.text}{' serials ' + ','.join(reply.serials) if reply.serials else ''}")
    return naks


def _client_ssl(ca: Path | None) -> ssl.SSLContext | None:
    if ca is None:
        return None
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    return ctx


async def _main(args: argparse.Namespace) -> int:
    ssl_ctx = _client_ssl(args.cafile)
    port = args.port or (7701 if args.transport == "tcp" else 7780)
    if args.mode == "stream":
        stats = await run_stream(args.transport, args.host, port,
                                 connections=args.connections,
                                 count=int(args.rate * args.seconds) if args.rate else
                                 args.count, rate=args.rate or None,
                                 orders_only=args.orders_only, ssl_ctx=ssl_ctx,
                                 distinct_instructions=args.distinct_instructions)
        print(stats.summary())
        return 1 if stats.naks else 0
    pac = await connect(args.transport, args.host, port, ssl_ctx)
    try:
        if args.login:
            await pac.request(Login(args.login), 1)
        items: list[bytes] | list[Command] = seed_commands() if args.mode == "seed" else \
            read_frames(args.path)
        return 1 if await _send_all(pac, items) else 0
    finally:
        await pac.close()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.pacsim", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transport", choices=["tcp", "soap"], default="tcp")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="default 7701 (tcp) / 7780 (soap)")
    p.add_argument("--cafile", type=Path, help="trust this PEM and use TLS/HTTPS")
    p.add_argument("--login", help="send LOGIN <user> first (seed and file modes)")
    sub = p.add_subparsers(dest="mode", required=True)
    sub.add_parser("seed", help="the seed ORDER, DATA for its steps, a PRINT")
    f = sub.add_parser("file", help="packets from a file")
    f.add_argument("path", type=Path)
    s = sub.add_parser("stream", help="generated ORDER + DATA at a rate over N connections",
                       description="Generated ORDER + DATA at a rate over N connections. The "
                       "DATA carry made-up serial numbers (they match the seed's patterns, "
                       "not numbers an upstream handed out): against a real OPEN-SCS "
                       "upstream their commissioning events are refused and become dead "
                       "letters. Use it to load the OIP ingress and the outbox; for a line "
                       "whose events an upstream accepts, PRINT first and scan the numbers "
                       "it returns (as `linegate demo` does).")
    s.add_argument("--rate", type=float, default=0.0, help="commands/s overall (0 = max)")
    s.add_argument("--seconds", type=float, default=10.0, help="duration when --rate is set")
    s.add_argument("--count", type=int, default=1000, help="commands when --rate is 0")
    s.add_argument("--connections", type=int, default=1)
    s.add_argument("--orders-only", action="store_true", help="ORDER frames only, no DATA")
    s.add_argument("--distinct-instructions", action="store_true",
                   help="with --orders-only: every ORDER's instructions differ (by default "
                        "each ORDER repeats the seed's, as a line building one product)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "distinct_instructions", False) and not args.orders_only:
        parser.error("--distinct-instructions needs --orders-only (a stream with DATA sends "
                     "each order's results, which follow the seed's instructions)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(_main(args))
    except TransportError as exc:
        print(f"pacsim: {exc}")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
