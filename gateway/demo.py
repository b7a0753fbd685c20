"""``linegate demo``: one order end to end on loopback, with nothing configured by hand.

It creates a temporary installation root, starts the reference OPEN-SCS server from ``tools/``
(Basic256Sha256 SignAndEncrypt, a user with a password file, its certificate put into the
gateway's trust list the way an integrator would), starts the gateway on embedded settings,
and lets a simulated PAC run a shift in miniature over OIP/TCP:

    LOGIN → ORDER → PRINT 3 serial numbers (from the local reserve)
          → DATA OK (first serial: commissioned) → DATA NOK (second: label scrapped)
          → INIT (order closed: the third serial, printed but never scanned, is reported
            encoded then scrapped: a printed number never goes back to the pool)

Then it waits until the outbox has drained and prints what flowed. The upstream counts are read
back from the reference server's own records (its SQLite file), not from the gateway's counters.
The exit code is 0 only when the commissioning event arrived upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

from gateway.board import StatusBoard
from gateway.model import Init, Instruction, LoadOrder, Login, Order, PrintRequest, Step, StepResult
from gateway.runtime import Runtime
from gateway.settings_loader import load_settings_text

GTIN = "09506000134352"
DEMO_ORDER = Order(
    "DEMO0001", "31", "30", "31", "567016", "355937", "XXXXA0NDXAN6XXXXX", "G", "FED", "L", "ZW",
    (
        Instruction("G5A1", 1, 10, "1045075", "1041075", "wZw Black Pad", 1,
                    (Step(100001, "", 1), Step(0, "6n||1*", 3))),
        Instruction("G5A2", 2, 5, "1035252", "", "AirBag Sft Pnl", 1,
                    (Step(2, "", 4), Step(0, "6n||1*", 3))),
    ),
)

SETTINGS = """{
  // linegate demo: embedded settings (a temporary installation root)
  station: {name: "demo-station", role: "prism"},
  logging: {level: "WARNING"},
  oip: {tcp: {listen_address: "127.0.0.1", listen_port: %(tcp)d},
        soap: {listen_address: "127.0.0.1", listen_port: %(soap)d}},
  store: {path: "data/outbox.sqlite"},
  delivery: {retry_initial_s: 0.2, retry_max_s: 2.0},
  upstream: {openscs: {
    endpoint: "%(endpoint)s",
    security_policy: "Basic256Sha256", security_mode: "SignAndEncrypt",
    username: "linegate", password_file: "secrets/upstream.password",
    trust_dir: "public/trusted_servers",
  }},
  reserve: {selections: ["%(gtin)s"], low_water: 5, fill_to: 20},
  // the status server on loopback, read back at the end with an OPC UA client
  opcua_server: {enable: true, listen_address: "127.0.0.1", listen_port_prism: %(status)d,
                 security_policies: ["NoSecurity"], update_interval_s: 0.2},
}
"""

MIN_DURATION_S = 5.0  # below this the order cannot reach upstream even on a fast machine

STATUS_SHOWN = ("cmd", "user", "script", "num_files", "outbox_backlog", "dead_letters",
                "upstream_state", "reserve_level", "counters")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _say(text: str) -> None:
    print(text, flush=True)


async def _pac_session(port: int, printed: list[str]) -> list[str]:
    """The simulated PAC's shift; returns the transcript lines (``printed`` gets the serials)."""
    from tools.pacsim import TcpPac

    lines: list[str] = []
    pac = await TcpPac.connect("127.0.0.1", port)
    tsn = 100

    async def send(command: object, label: str) -> tuple[str, ...]:
        nonlocal tsn
        tsn += 1
        reply = await pac.request(command, tsn)  # type: ignore[arg-type]
        verdict = "ACK" if reply.ack else f"NAK {reply.code} {reply.text}"
        extra = f" serials={','.join(reply.serials)}" if reply.serials else ""
        lines.append(f"  PAC → {label:<34} tsn={tsn}  ← {verdict}{extra}")
        if not reply.ack:
            raise RuntimeError(f"{label} refused: {reply.text}")
        return reply.serials

    try:
        await send(Login("operator1"), "LOGIN operator1")
        await send(LoadOrder(DEMO_ORDER), f"ORDER {DEMO_ORDER.Ordnr} (2 instructions)")
        serials = await send(PrintRequest(DEMO_ORDER.Ordnr, GTIN, 3), f"PRINT {GTIN} x3")
        if len(serials) != 3:
            raise RuntimeError(f"PRINT x3 answered {len(serials)} serial number(s)")
        printed.extend(serials)
        await send(StepResult(DEMO_ORDER.Ordnr, "G5A1", 1, 10, 2, True, serials[0]),
                   f"DATA G5A1 step 2 OK {serials[0]}")
        await send(StepResult(DEMO_ORDER.Ordnr, "G5A2", 2, 5, 2, False, serials[1]),
                   f"DATA G5A2 step 2 NOK {serials[1]}")
        await send(Init(), "INIT (closes the order)")
    finally:
        await pac.close()
    return lines


def _why(exc: BaseException, duration_s: float) -> str:
    """A failure's reason even when the exception has no text (a timeout has none)."""
    if isinstance(exc, TimeoutError):
        return (f"not finished within --duration {duration_s:g} s (the simulated PAC had not "
                "finished its shift)")
    return str(exc) or type(exc).__name__


async def _wait_reserve(runtime: Runtime, deadline: float) -> int:
    """The reserve fills from upstream right after start; the PAC prints once it holds 3."""
    level = 0
    while time.monotonic() < deadline:
        comps = runtime.components
        if comps is not None and comps.reserve is not None:
            level = comps.reserve.level(GTIN)
            if level >= 3:
                break
        await asyncio.sleep(0.1)
    return level


async def _wait_drained(runtime: Runtime, deadline: float) -> dict[str, object]:
    stats: object = None
    while time.monotonic() < deadline:
        comps = runtime.components
        if comps is not None:
            stats = await comps.outbox.stats()
            if getattr(stats, "pending", 1) == 0 and comps.reserve is not None:
                returning = await comps.outbox.submit(hook=lambda c: c.execute(
                    "SELECT COUNT(*) FROM reserve_serials WHERE state=3").fetchone()[0])
                if returning.hook_result == 0:
                    break
        await asyncio.sleep(0.2)
    return {"stats": stats}


async def run_demo(duration_s: float = 20.0, keep: bool = False,
                   root: Path | None = None) -> int:
    """Run the demo; ``root`` (an empty directory) is used and kept instead of a temporary one
    (the end-to-end test reads the records there afterwards)."""
    from tools.openscs_server.server import ReferenceServer

    if root is not None:
        keep = True
    root = root or Path(tempfile.mkdtemp(prefix="linegate-demo-"))
    (root / "upstream").mkdir()
    _say(f"linegate demo — temporary installation root {root}")
    upstream = ReferenceServer(port=_free_port(), db_path=root / "upstream" / "openscs.sqlite",
                               cert_dir=root / "upstream" / "pki",
                               security=("Basic256Sha256_SignAndEncrypt",),
                               users={"linegate": "demo-password"})
    stop = asyncio.Event()
    runtime: Runtime | None = None
    task: asyncio.Task[None] | None = None
    try:
        await upstream.start()
        (root / "public" / "trusted_servers").mkdir(parents=True)
        shutil.copy(upstream.cert_path, root / "public" / "trusted_servers" / "upstream.der")
        secret = root / "secrets" / "upstream.password"
        secret.parent.mkdir()
        secret.write_text("demo-password\n")
        os.chmod(secret, 0o600)
        text = SETTINGS % {"tcp": _free_port(), "soap": _free_port(), "gtin": GTIN,
                           "endpoint": upstream.endpoint, "status": _free_port()}
        (root / "settings.json").write_text(text)
        settings = load_settings_text(text, source=str(root / "settings.json"), root=root)
        _say(f"  upstream: reference OPEN-SCS server at {upstream.endpoint} "
             "(Basic256Sha256 SignAndEncrypt, user 'linegate')")
        _say(f"  gateway:  OIP/TCP on 127.0.0.1:{settings.oip.tcp.listen_port}, outbox "
             f"{settings.store.path}")
        board = StatusBoard()
        runtime = Runtime(settings, board)
        task = asyncio.create_task(runtime.run(stop))
        ready = asyncio.ensure_future(runtime.ready.wait())
        await asyncio.wait([ready, task], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if not runtime.ready.is_set():
            ready.cancel()
            if task.done():
                task.result()  # raises what stopped the gateway
            raise TimeoutError("the gateway did not become ready within 30 s")
        deadline = time.monotonic() + duration_s
        level = await _wait_reserve(runtime, deadline)
        _say(f"  reserve:  {level} serial number(s) of GTIN {GTIN} allocated from upstream "
             "and kept locally for printing")
        _say("\nOIP frames (simulated PAC over TCP):")
        printed: list[str] = []
        try:
            for line in await asyncio.wait_for(
                    _pac_session(settings.oip.tcp.listen_port, printed), duration_s):
                _say(line)
        except (RuntimeError, TimeoutError, OSError) as exc:
            _say(f"  the PAC session failed: {_why(exc, duration_s)}")
        drained = await _wait_drained(runtime, deadline)
        stats = drained["stats"]
        _say("\nGateway (its own view):")
        _say(f"  frames in: {board.counters.get('oip_frames_in', 0)}, events committed: "
             f"{board.counters.get('events_committed', 0)}, results committed: "
             f"{board.counters.get('results_committed', 0)}, "
             f"serials printed: {board.counters.get('serials_printed', 0)}")
        if stats is not None:
            _say(f"  outbox: {board.counters.get('outbox_delivered', 0)} delivered, "
                 f"{stats.pending} pending, {stats.dead} dead letters")  # type: ignore[attr-defined]
        await asyncio.sleep(1.2)  # the status board refreshes every second
        await _report_status(settings.opcua_server.listen_port_prism)
        return _report_upstream(upstream, root, printed)
    finally:
        stop.set()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 15)
        await upstream.stop()
        if keep:
            _say(f"\n(kept {root})")
        else:
            shutil.rmtree(root, ignore_errors=True)


async def _report_status(port: int) -> None:
    """Read the station's status the way UaExpert or a SCADA would (anonymous, read only)."""
    from asyncua import Client, ua

    _say(f"\nStatus (read over OPC UA from opc.tcp://127.0.0.1:{port}/, Objects/Status):")
    client = Client(f"opc.tcp://127.0.0.1:{port}/", timeout=10)
    try:
        await client.connect()
        idx = await client.get_namespace_index("urn:linegate:status")
        for name in STATUS_SHOWN:
            value = await client.get_node(ua.NodeId(f"Status/{name}", idx)).read_value()
            _say(f"  {name:<15} {value}")
    except (OSError, TimeoutError, ua.UaError) as exc:
        _say(f"  status server not readable: {exc!r}")
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()


def _serials_in(value: object) -> list[str]:
    """Every serial number inside a recorded payload (its SerialNumbers lists)."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "SerialNumbers" and isinstance(item, list):
                found += [str(x) for x in item]
            else:
                found += _serials_in(item)
    elif isinstance(value, list):
        for item in value:
            found += _serials_in(item)
    return found


def _report_upstream(upstream: object, root: Path, printed: list[str]) -> int:
    """Print what the reference server recorded; 0 when the commissioning arrived."""
    events = upstream.events()  # type: ignore[attr-defined]
    _say("\nUpstream (read back from the reference server's own records):")
    by_method: dict[str, int] = {}
    for event in events:
        method = str(event.get("method", "?"))
        by_method[method] = by_method.get(method, 0) + 1
        _say(f"  {method:<24} serials={','.join(_serials_in(event.get('payload')))} "
             f"IdempotencyKey={event.get('key') or '-'}")
    if not events:
        _say("  no event arrived upstream")
    states = upstream.serial_states()  # type: ignore[attr-defined]
    names = {1: "Unallocated", 2: "Allocated", 4: "Encoded", 6: "LabelScrapped",
             7: "Commissioned"}
    for serial in printed:
        state = next((v for (_pool, sn), v in states.items() if sn == serial), None)
        _say(f"  serial {serial}: upstream state {names.get(state, state)}")
    backups = sorted((root / "public" / "result" / "bkup").glob("*.jsonl"))
    for path in backups:
        _say(f"  result backup {path.name}: {len(path.read_text().splitlines())} line(s)")
    ok = by_method.get("SIDCommissioningEvent", 0) >= 1
    _say(f"\n{'OK' if ok else 'FAILED'}: {len(events)} event(s) recorded upstream "
         f"({', '.join(f'{k} {v}' for k, v in sorted(by_method.items())) or 'none'})")
    return 0 if ok else 1
