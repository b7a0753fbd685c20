"""The runtime: wires the components from settings and runs them under supervision.

Start-up order: open the outbox (integrity check, migration, recovery), restore the station's
session, then start the background services (delivery, serial-number reserve, status server)
and last the ingress listeners (OIP TCP and SOAP), so that nothing is acknowledged before the
store is ready. Shutdown runs the other way: the station stops taking commands and in-flight
ones get ``supervisor.shutdown_grace_s`` to commit, the listeners close, background services
stop, and the outbox is closed (committed). ``restart()`` does the same and starts again in
the same process (the status server's ``restart`` method uses it).

Readiness: READY=1 goes to systemd (and "linegate ready" to the log) only once every listener
(OIP TCP, OIP SOAP, the status server) is listening. A listener that cannot start (port in use,
address not on this machine, TLS files missing) is logged as one line naming the settings key;
while one is down the runtime says "not ready" with the reason (log and STATUS=) and keeps
waiting while the supervisor retries it. A stop (SIGTERM) or restart ends the wait at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from adapters.oip.pattern import match_pattern
from adapters.oip.soap import OipSoapServer
from adapters.oip.tcp import OipTcpServer
from adapters.openscs.client import OpenScsClient
from adapters.openscs.reserve import Reserve
from adapters.openscs.upstream import OpenScsUpstream
from gateway import sdnotify
from gateway.board import StatusBoard
from gateway.delivery import Delivery
from gateway.env_checks import bind_problem
from gateway.errors import SettingsError
from gateway.json5pos import KeyPath
from gateway.model import DeliveryResult, Outcome, StoredMessage
from gateway.outbox import Outbox
from gateway.results import ResultBackup
from gateway.settings import Settings
from gateway.settings_loader import key_path
from gateway.station import STREAM_RESULTS, Station
from gateway.status import StatusServer, Uploader
from gateway.supervisor import Service, StartFailed, supervise

log = logging.getLogger(__name__)


class _Disabled:
    """Upstream for streams whose upstream is switched off: messages wait in the outbox."""

    def __init__(self, why: str) -> None:
        self.why = why

    async def deliver(self, stream: str, batch: Sequence[StoredMessage]) -> list[DeliveryResult]:
        return [DeliveryResult(Outcome.RETRY, self.why)] if batch else []


class Router:
    """Sends each outbox stream to its upstream: results to the backup files, the rest to
    OPEN-SCS."""

    def __init__(self, results: ResultBackup, openscs: object) -> None:
        self._results = results
        self._openscs = openscs

    async def deliver(self, stream: str,
                      batch: Sequence[StoredMessage]) -> Sequence[DeliveryResult]:
        if stream == STREAM_RESULTS:
            return await self._results.deliver(stream, batch)
        return await self._openscs.deliver(stream, batch)  # type: ignore[attr-defined]


class Listener:
    """A service that listens (OIP TCP or SOAP, the status server), as the runtime runs it:
    ``ready`` while it listens; a failure to start (bind, TLS files) becomes ``StartFailed``
    naming the settings key, and is kept in ``failure`` until it listens again."""

    def __init__(self, inner: Any, settings: Settings, section: KeyPath, address: str,
                 port: int) -> None:
        self.inner = inner
        self.name: str = inner.name
        self.ready: asyncio.Event = inner.ready
        self.failure: str | None = None
        self._settings = settings
        self._section = section
        self._address = address
        self._port = port

    async def serve(self) -> None:
        listening = asyncio.ensure_future(self.ready.wait())
        listening.add_done_callback(self._listening)
        try:
            await self.inner.serve()
        except OSError as exc:
            if listening.done():
                raise  # it had been listening: not a start failure
            key, text = bind_problem(self._settings, self._section, self._address, self._port,
                                     exc)
            self.failure = f"{key_path(key)}: {text}"
            raise StartFailed(self.failure) from None
        except SettingsError as exc:  # the TLS or certificate files
            if listening.done():
                raise
            self.failure = f"{key_path(self._section)}: {'; '.join(exc.problems)}"
            raise StartFailed(self.failure) from None
        finally:
            listening.cancel()

    def _listening(self, fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled():
            self.failure = None


@dataclass
class Components:
    """What one start of the runtime built (tests and the demo look inside)."""

    outbox: Outbox
    station: Station
    ingress: list[Service] = field(default_factory=list)
    background: list[Service] = field(default_factory=list)
    listeners: list[Listener] = field(default_factory=list)  # in ingress or background
    client: OpenScsClient | None = None
    reserve: Reserve | None = None


class Runtime:
    def __init__(self, settings: Settings, board: StatusBoard | None = None) -> None:
        self.settings = settings
        self.board = board or StatusBoard()
        self.components: Components | None = None
        self.ready = asyncio.Event()
        self._restart = asyncio.Event()
        self.starts = 0

    async def restart(self) -> None:
        """Stop and start the whole runtime in this process."""
        log.warning("restart requested")
        self._restart.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; restarts in-process whenever ``restart()`` is called."""
        while not stop.is_set():
            self._restart.clear()
            restarting = await self._run_once(stop)
            if stop.is_set() or not restarting:
                break
            log.warning("restarting the runtime")

    async def _build(self) -> Components:
        s = self.settings
        outbox = await Outbox.open(s.store, dedup_window=s.oip.dedup_window)
        client: OpenScsClient | None = None
        reserve: Reserve | None = None
        if s.upstream.openscs.enable:
            client = OpenScsClient(s.upstream.openscs, board=self.board)
            openscs: object = OpenScsUpstream(client)
            if s.reserve.enable:
                reserve = Reserve(outbox, client, s.reserve, board=self.board)
        else:
            openscs = _Disabled("upstream.openscs.enable is false; messages wait in the outbox")
        station = Station(s, outbox, self.board, pattern_check=match_pattern, reserve=reserve)
        await station.load()
        router = Router(ResultBackup(s.result_bkup_dir), openscs)
        comps = Components(outbox=outbox, station=station, client=client, reserve=reserve)
        comps.background.append(Delivery(outbox, router, s.delivery, self.board))
        if client is not None:
            comps.background.append(client)
        if reserve is not None:
            comps.background.append(reserve)
        ua = s.opcua_server
        status: StatusServer | None = None
        if ua.enable:
            status = StatusServer(s, self.board, self.restart, close_order=station.close_order)
            port = ua.listen_port_lente if s.station.role == "lente" else ua.listen_port_prism
            comps.listeners.append(Listener(status, s, ("opcua_server",), ua.listen_address,
                                            port))
            comps.background.append(comps.listeners[-1])
        if ua.aggregator.url:
            comps.background.append(Uploader(s, self.board, source=status))
        if s.oip.tcp.enable:
            tcp = s.oip.tcp
            comps.listeners.append(Listener(OipTcpServer(s.oip, station, self.board), s,
                                            ("oip", "tcp"), tcp.listen_address,
                                            tcp.listen_port))
            comps.ingress.append(comps.listeners[-1])
        if s.oip.soap.enable:
            soap = s.oip.soap
            comps.listeners.append(Listener(OipSoapServer(s.oip, station, self.board), s,
                                            ("oip", "soap"), soap.listen_address,
                                            soap.listen_port))
            comps.ingress.append(comps.listeners[-1])
        return comps

    async def _run_once(self, stop: asyncio.Event) -> bool:
        """One start of the runtime; True when it stopped for a restart."""
        comps = await self._build()
        self.components = comps
        self.starts += 1
        sup = self.settings.supervisor
        try:
            async with asyncio.TaskGroup() as tg:
                background = [tg.create_task(supervise(svc, sup, self.board), name=svc.name)
                              for svc in comps.background]
                ingress = [tg.create_task(supervise(svc, sup, self.board), name=svc.name)
                           for svc in comps.ingress]
                watchdog = tg.create_task(self._watchdog(), name="watchdog")
                # READY once every listener (and the status server) is up: background
                # services without a listener (delivery, upstream client) need no wait
                if await self._wait_ready(comps.listeners, stop):
                    self.ready.set()
                    sdnotify.notify("READY=1\nSTATUS=running")
                    log.info("linegate ready: station %s (%s), %d ingress, %d background "
                             "services", self.settings.station.name,
                             self.settings.station.role, len(ingress), len(background))
                    await self._until_stop_or_restart(stop)
                self.ready.clear()
                sdnotify.notify("STOPPING=1")
                restarting = self._restart.is_set() and not stop.is_set()
                drained = await comps.station.drain(sup.shutdown_grace_s)
                if restarting:
                    await comps.station.logout()  # restart logs active users out (seed 000)
                log.info("shutdown: in-flight commands %s", "committed" if drained else
                         "cut off after the grace period (not acknowledged, the PAC resends)")
                for task in ingress:
                    task.cancel()
                await asyncio.gather(*ingress, return_exceptions=True)
                for task in [*background, watchdog]:
                    task.cancel()
        finally:
            await comps.outbox.close()
            log.info("outbox closed")
        return restarting

    async def _until_stop_or_restart(self, stop: asyncio.Event, poll_s: float | None = None
                                     ) -> None:
        waiters = [asyncio.ensure_future(stop.wait()),
                   asyncio.ensure_future(self._restart.wait())]
        try:
            await asyncio.wait(waiters, timeout=poll_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def _wait_ready(self, listeners: Sequence[Listener], stop: asyncio.Event) -> bool:
        """True once every listener listens; False when a stop or restart comes first.

        No timeout: a listener that cannot start is retried by its supervisor, and until it
        listens the gateway is not ready (systemd's start timeout decides what then), which is
        said once per change of reason in the log and in systemd's STATUS=."""
        said: list[str] = []
        while not (stop.is_set() or self._restart.is_set()):
            waiting = [lst for lst in listeners if not lst.ready.is_set()]
            if not waiting:
                return True
            failing = [lst.failure for lst in waiting if lst.failure]
            if failing and failing != said:
                reason = "; ".join(failing)
                log.error("linegate not ready: %s", reason)
                sdnotify.notify(f"STATUS=not ready: {reason}")
                said = failing
            await self._until_stop_or_restart(stop, poll_s=0.1)
        return False

    @staticmethod
    async def _watchdog() -> None:
        interval = sdnotify.watchdog_interval_s()
        if interval is None:
            return
        while True:
            sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(interval)
