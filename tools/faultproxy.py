"""A fault-injecting TCP proxy (this machine's kernel has no netem).

Put it between a client and a server on loopback and change its behaviour at any time:

- ``mode``: ``pass`` (forward), ``blackhole`` (accept, forward nothing, answer nothing),
  ``reset`` (accept, then reset the connection at once), ``refuse`` (close the listener: the
  client gets connection refused), ``drop_replies`` (forward client -> server, swallow the
  server's answers: the request is applied but the reply is lost).
- ``delay_s``: added one-way latency per chunk, both directions.
- ``bandwidth_bps``: a cap in bytes/s per direction and connection (0 = none).
- ``drop_rate``: probability, per chunk forwarded, that the connection is reset right there.
- ``cut()``: reset every open connection now.

In-process: ``proxy = FaultProxy(target_port=...); await proxy.start(); proxy.mode = ...``.
As a program: ``python -m tools.faultproxy --target 127.0.0.1:4840 [--listen-port 0]``; it
prints ``PORT <n>`` and reads commands on stdin, one per line: ``mode blackhole``,
``delay 0.2``, ``bandwidth 10000``, ``drop 0.05``, ``cut``, ``stats``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import socket
import struct
import sys
from collections.abc import Sequence
from typing import Literal

log = logging.getLogger(__name__)

Mode = Literal["pass", "blackhole", "reset", "refuse", "drop_replies"]
MODES: tuple[str, ...] = ("pass", "blackhole", "reset", "refuse", "drop_replies")
CHUNK = 16384


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0) instead of FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1",
                 listen_host: str = "127.0.0.1", listen_port: int = 0,
                 seed: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.listen_host = listen_host
        self.port = listen_port
        self.ready = asyncio.Event()
        self.delay_s = 0.0
        self.bandwidth_bps = 0
        self.drop_rate = 0.0
        self._mode: Mode = "pass"
        self._rng = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.stats = {"connections": 0, "bytes_up": 0, "bytes_down": 0, "resets": 0,
                      "swallowed": 0}

    @property
    def mode(self) -> Mode:
        return self._mode

    @mode.setter
    def mode(self, mode: Mode) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        log.info("faultproxy :%d mode %s -> %s", self.port, self._mode, mode)
        self._mode = mode

    async def set_mode(self, mode: Mode) -> None:
        """Change the mode; ``refuse`` closes the listener, leaving it reopens it."""
        self.mode = mode
        if mode == "refuse" and self._server is not None:
            self._server.close()
            self._server = None
            self.cut()
        elif mode != "refuse" and self._server is None and self.ready.is_set():
            await self._listen()

    async def start(self) -> None:
        await self._listen()
        self.ready.set()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.listen_host, self.port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.cut()  # aborting the transports ends the handlers (cancelling them trips 3.11's
        if self._conns:  # start_server callback), so wait for them rather than cancel
            await asyncio.wait(list(self._conns), timeout=2.0)

    async def serve(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    def cut(self) -> None:
        """Reset every open connection."""
        for writer in list(self._writers):
            _reset(writer)
            self.stats["resets"] += 1
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        self.stats["connections"] += 1
        self._writers.add(writer)
        try:
            if self._mode == "reset":
                self.stats["resets"] += 1
                _reset(writer)
                return
            if self._mode == "blackhole":
                while await reader.read(CHUNK):  # swallow until the client gives up
                    pass
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                _reset(writer)
                return
            self._writers.add(up_writer)
            try:
                await asyncio.gather(self._pump(reader, up_writer, up=True),
                                     self._pump(up_reader, writer, up=False))
            finally:
                self._writers.discard(up_writer)
                up_writer.transport.abort()
        finally:
            self._writers.discard(writer)
            writer.transport.abort()
            self._conns.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                    up: bool) -> None:
        try:
            while data := await reader.read(CHUNK):
                if self._mode == "blackhole" or (self._mode == "drop_replies" and not up):
                    self.stats["swallowed"] += len(data)
                    continue
                if self._mode in ("reset", "refuse") or (
                        self.drop_rate and self._rng.random() < self.drop_rate):
                    self.stats["resets"] += 1
                    self.cut()
                    return
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                if self.bandwidth_bps:
                    await asyncio.sleep(len(data) / self.bandwidth_bps)
                writer.write(data)
                await writer.drain()
                self.stats["bytes_up" if up else "bytes_down"] += len(data)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()


async def _control(proxy: FaultProxy) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().strip():
        cmd, _, arg = line.partition(" ")
        try:
            if cmd == "mode":
                await proxy.set_mode(arg)  # type: ignore[arg-type]
            elif cmd == "delay":
                proxy.delay_s = float(arg)
            elif cmd == "bandwidth":
                proxy.bandwidth_bps = int(arg)
            elif cmd == "drop":
                proxy.drop_rate = float(arg)
            elif cmd == "cut":
                proxy.cut()
            elif cmd != "stats":
                raise ValueError(f"unknown command {cmd!r} (mode, delay, bandwidth, drop, "
                                 "cut, stats)")
            print(f"OK {proxy.mode} delay={proxy.delay_s} bandwidth={proxy.bandwidth_bps} "
                  f"drop={proxy.drop_rate} {proxy.stats}", flush=True)
        except ValueError as exc:
            print(f"ERROR {exc}", flush=True)


async def _main(args: argparse.Namespace) -> None:
    host, _, port = args.target.rpartition(":")
    proxy = FaultProxy(int(port), target_host=host or "127.0.0.1", listen_port=args.listen_port)
    proxy.delay_s, proxy.bandwidth_bps, proxy.drop_rate = args.delay, args.bandwidth, args.drop
    await proxy.start()
    await proxy.set_mode(args.mode)
    print(f"PORT {proxy.port}", flush=True)
    try:
        await _control(proxy)  # until stdin closes
    finally:
        await proxy.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.faultproxy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--listen-port", type=int, default=0, help="port on 127.0.0.1 (0=any)")
    parser.add_argument("--mode", choices=MODES, default="pass")
    parser.add_argument("--delay", type=float, default=0.0, help="added delay per chunk, s")
    parser.add_argument("--bandwidth", type=int, default=0, help="bytes/s cap (0 = none)")
    parser.add_argument("--drop", type=float, default=0.0, help="reset probability per chunk")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    asyncio.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
