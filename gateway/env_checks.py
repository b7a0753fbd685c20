"""What only this machine can tell about valid settings: can the listeners bind, do the files
that the settings name exist.

The settings loader judges the file on its own (types, ranges, keys that contradict each other);
these checks look at the environment the gateway is about to run in, so that ``linegate check``
and ``linegate run`` (before it starts any service) refuse what would otherwise only show up as
a listener that never comes up: a port already in use, a ``listen_address`` that is not an
address of this machine, OIP TLS switched on without its PEM files, an aggregator password file
that is not there.

Each problem is rendered like the loader's, ``SOURCE:LINE:COL: key: text``, with the position of
the key in the settings file when the file can be read again (else ``SOURCE: key: text``).
Binding opens a socket with SO_REUSEADDR on the address and port and closes it at once: it
takes nothing away from anyone, but a port held by a running gateway is reported as in use too.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

from gateway.json5pos import Entry, KeyPath, scan
from gateway.settings import Settings, TlsSettings
from gateway.settings_loader import key_path

Problem = tuple[KeyPath, str]


def listeners(s: Settings) -> list[tuple[str, KeyPath, str, int]]:
    """(service name, settings section, address, port) of every enabled listener."""
    ua = s.opcua_server
    ua_port = "listen_port_lente" if s.station.role == "lente" else "listen_port_prism"
    out: list[tuple[str, KeyPath, str, int]] = []
    if s.oip.tcp.enable:
        out.append(("oip-tcp", ("oip", "tcp"), s.oip.tcp.listen_address, s.oip.tcp.listen_port))
    if s.oip.soap.enable:
        out.append(("oip-soap", ("oip", "soap"), s.oip.soap.listen_address,
                    s.oip.soap.listen_port))
    if ua.enable:
        out.append(("status-server", ("opcua_server",), ua.listen_address, getattr(ua, ua_port)))
    return out


def port_key(s: Settings, section: KeyPath) -> KeyPath:
    if section == ("opcua_server",):
        return (*section, "listen_port_lente" if s.station.role == "lente"
                else "listen_port_prism")
    return (*section, "listen_port")


def bind_problem(s: Settings, section: KeyPath, address: str, port: int, exc: OSError, *,
                 before_start: bool = False, running: bool | None = None) -> Problem:
    """A failure to listen, on the key to change: the port when it is taken or privileged,
    the address otherwise (not on this machine, not resolvable)."""
    code = exc.errno if isinstance(exc.errno, int) else None
    on_port = code in (errno.EADDRINUSE, errno.EACCES, errno.EPERM)
    key = port_key(s, section) if on_port else (*section, "listen_address")
    if isinstance(exc, socket.gaierror):
        reason = f"cannot resolve {address!r}: {exc.strerror}"
    elif code and code > 0:
        reason = os.strerror(code)  # asyncio's own text repeats the address
    else:
        reason = exc.strerror or str(exc) or type(exc).__name__
    text = f"cannot listen on {_hostport(address, port)}: {reason}"
    if code == errno.EADDRINUSE:
        if running is False:
            text += (" (another program holds it: no linegate runs with this store; stop "
                     "that program or choose another port)")
        elif before_start:
            text += " (another process holds it: is linegate already running?)"
        else:
            text += " (another process holds it)"
    elif code == errno.EADDRNOTAVAIL:
        text += " (not an address of this machine)"
    return key, text


def _try_bind(address: str, port: int) -> None:
    """Bind every address ``address`` resolves to, as asyncio.start_server would; raise OSError."""
    infos = socket.getaddrinfo(address or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)


def _bind_checks(s: Settings, *, in_use: bool,
                 running: bool | None = None) -> Iterator[Problem]:
    """Listeners that cannot bind; ``in_use`` picks those whose port is held by another
    process right now (that may pass: a gateway still stopping, or this one running while
    ``check`` looks) instead of those that never can (an address not on this machine, a
    privileged port)."""
    for _, section, address, port in listeners(s):
        try:
            _try_bind(address, port)
        except OSError as exc:
            if (exc.errno == errno.EADDRINUSE) == in_use:
                yield bind_problem(s, section, address, port, exc, before_start=True,
                                   running=running)


def _tls_checks(s: Settings) -> Iterator[Problem]:
    for enabled, section, tls in ((s.oip.tcp.enable, ("oip", "tcp", "tls"), s.oip.tcp.tls),
                                  (s.oip.soap.enable, ("oip", "soap", "tls"), s.oip.soap.tls)):
        if enabled and tls.enable:
            yield from _tls_files(section, tls)


def _tls_files(section: KeyPath, tls: TlsSettings) -> Iterator[Problem]:
    cert, key = tls.path / tls.certificate_file, tls.path / tls.private_key_file
    missing = False
    for name, path in (("certificate_file", cert), ("private_key_file", key)):
        problem = _file_problem(path)
        if problem:
            missing = True
            yield (*section, name), f"{problem} ({key_path((*section, 'enable'))} is true)"
    if missing:
        return
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        yield ((*section, "certificate_file"),
               f"cannot load {cert} with {key}: {getattr(exc, 'reason', None) or exc}")


def _file_checks(s: Settings) -> Iterator[Problem]:
    agg = s.opcua_server.aggregator
    if agg.password_file is not None:
        problem = _file_problem(agg.password_file)
        if problem:
            yield ("opcua_server", "aggregator", "password_file"), problem


def _file_problem(path: Path) -> str | None:
    try:
        if not path.is_file():
            return f"{path} does not exist" if not path.exists() else f"{path} is not a file"
        with open(path, "rb"):
            pass
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    return None


def problems(s: Settings) -> list[Problem]:
    """Every environment problem of these settings that will not pass by itself, as (key
    path, text)."""
    return [*_tls_checks(s), *_file_checks(s), *_bind_checks(s, in_use=False)]


def check(s: Settings) -> list[str]:
    """Every environment problem, rendered ``SOURCE:LINE:COL: key: text`` like the loader's."""
    return _render(s, problems(s))


def ports_in_use(s: Settings, *, running: bool | None = None) -> list[str]:
    """Listener ports another process holds now, rendered like check(). ``running``: whether
    a linegate holds this store (then they are probably its own), False when none does
    (another program: check reports an error; run starts anyway and is not ready until every
    listener is up), None when unknown."""
    return _render(s, list(_bind_checks(s, in_use=True, running=running)))


def _render(s: Settings, found: list[Problem]) -> list[str]:
    if not found:
        return []
    entries = _entries(s.source)
    located = [(_locate(entries, path), key_path(path), text) for path, text in found]
    if entries is None:
        return [f"{s.source}: {key}: {text}" for _, key, text in located]
    located.sort(key=lambda item: item[0])
    return [f"{s.source}:{line}:{col}: {key}: {text}" for (line, col), key, text in located]


def locate(s: Settings, path: KeyPath) -> str:
    """``SOURCE:LINE:COL`` of a key (``SOURCE`` alone when the file cannot be read)."""
    entries = _entries(s.source)
    if entries is None:
        return s.source
    line, col = _locate(entries, path)
    return f"{s.source}:{line}:{col}"


def _entries(source: str) -> dict[KeyPath, Entry] | None:
    try:
        text = Path(source).read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return None
    return scan(text).entries


def _locate(entries: dict[KeyPath, Entry] | None, path: KeyPath) -> tuple[int, int]:
    """Where the key's value is (as the loader reports), else its closest enclosing section
    given in the file."""
    for n in range(len(path), -1, -1):
        entry = (entries or {}).get(path[:n])
        if entry is not None:
            return entry.value.line, entry.value.col
    return 1, 1


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


__all__ = ["bind_problem", "check", "listeners", "locate", "port_key", "ports_in_use",
           "problems"]
