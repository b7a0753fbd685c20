"""Load settings.json (JSON5) into the frozen dataclasses of gateway.settings.

The schema is walked generically (dataclasses.fields + typing.get_type_hints), so a key added to
gateway.settings is accepted, validated, defaulted and documented with no change here. Every
problem is collected and reported together, in file order, as
``SOURCE:LINE:COL: path.to.key: expected ..., got ...`` (the position of the offending value,
or of the key for unknown and duplicate keys; list items as ``oip.tcp.allowed_peers[2]``).

Values come back typed: lists as tuples (immutable, like the dataclasses holding them), ints as
int (a bool is not an int), numbers as float, paths resolved against the directory holding the
file (the installation root; absolute paths stay as given).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import os
import re
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import pyjson5

from gateway.errors import SettingsError
from gateway.json5pos import Entry, KeyPath, LineIndex, Pos, ScanResult, scan
from gateway.settings import Settings
from gateway.settings_checks import run_checks

log = logging.getLogger(__name__)

__all__ = [
    "cross_checks",
    "default_settings",
    "describe_type",
    "jsonable",
    "key_path",
    "load_settings",
    "load_settings_text",
    "summary",
    "user_fields",
]

_INVALID = object()  # marks a value that failed validation (its problem is already recorded)


# --------------------------------------------------------------------------- public API


def load_settings(path: Path) -> Settings:
    """Read, parse and validate a settings file; raise SettingsError listing every problem."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise SettingsError([f"{source}: cannot read: {exc.strerror or exc}"]) from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = raw[:exc.start].decode("utf-8-sig", errors="replace")
        raise SettingsError([f"{source}:{LineIndex(before).pos(len(before))}: syntax error: "
                             f"not UTF-8 (byte 0x{raw[exc.start]:02x})"]) from None
    log.debug("loading settings from %s", source)
    return load_settings_text(text, source=source, root=Path(os.path.abspath(path)).parent)


def load_settings_text(text: str, *, source: str = "settings.json", root: Path) -> Settings:
    """Parse and validate settings text; relative paths resolve against ``root``."""
    root = Path(os.path.abspath(root))
    scanned = scan(text)
    try:
        data = pyjson5.decode(text)
    except pyjson5.Json5Exception as exc:
        raise SettingsError([_syntax_problem(exc, text, scanned, source)]) from None
    builder = _Builder(root, scanned.entries)
    for dup in scanned.duplicates:
        builder.problem(dup.path, f"duplicate key (first given at line {dup.first.line}, "
                        f"column {dup.first.col})", at=dup.second)
    if not isinstance(data, dict):
        builder.problem((), f"expected an object, got {_show(data)}")
        data = {}
    # invalid values are replaced by their defaults (and remembered) so that the checks that
    # span keys can still run and report their problems in the same pass
    settings = builder.build(Settings, data, ())
    for path, message, level, also in run_checks(settings):
        if any(_overlaps(p, bad) for p in (path, *also) for bad in builder.invalid):
            continue
        if level == "error":
            builder.problem(path, message)
        else:
            builder.warning(path, message)
    if builder.problems:
        raise SettingsError(builder.render(builder.problems, source))
    return dataclasses.replace(settings, root=root, source=source,
                               warnings=tuple(builder.render(builder.warnings, source)))


def default_settings() -> Settings:
    """Pure defaults (lists as tuples, paths resolved) with root = the current directory."""
    return load_settings_text("{}", source="<defaults>", root=Path.cwd())


def cross_checks(settings: Settings, *, entries: Mapping[KeyPath, Entry] | None = None
                 ) -> list[str]:
    """Problems that span keys, as ``SOURCE:LINE:COL: key: text`` (no line:col without entries).

    load_settings runs these itself (with positions); warnings go to ``settings.warnings``.
    """
    out: list[str] = []
    for path, message, level, _ in run_checks(settings):
        if level != "error":
            continue
        where = f"{settings.source}:{_locate(entries, path)}" if entries else settings.source
        out.append(f"{where}: {key_path(path)}: {message}")
    return out


def summary(settings: Settings) -> str:
    """One line for ``linegate check``."""
    st, oip, ua = settings.station, settings.oip, settings.opcua_server
    parts = [f"station {st.name!r} ({st.role})"]
    for name, sect in (("OIP/TCP", oip.tcp), ("OIP/SOAP", oip.soap)):
        parts.append(f"{name} {_hostport(sect.listen_address, sect.listen_port)}"
                     if sect.enable else f"{name} off")
    port = ua.listen_port_lente if st.role == "lente" else ua.listen_port_prism
    parts.append(f"status server {_hostport(ua.listen_address, port)}" if ua.enable
                 else "status server off")
    parts.append(f"store {settings.store.path}")
    up = settings.upstream.openscs
    parts.append(f"upstream {up.endpoint} ({up.security_policy}/{up.security_mode})"
                 if up.enable else "upstream off")
    if settings.warnings:
        parts.append(f"{len(settings.warnings)} warning(s)")
    return "; ".join(parts)


def key_path(path: KeyPath) -> str:
    """("oip", "tcp", "allowed_peers", 2) -> "oip.tcp.allowed_peers[2]"."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(top level)"


def user_fields(cls: type) -> list[tuple[dataclasses.Field[Any], Any]]:
    """The user-visible fields of a schema dataclass with their resolved types."""
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


def jsonable(value: object) -> object:
    """A schema default as it would be written in settings.json."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f, _ in user_fields(type(value))}
    return value


def field_default(f: dataclasses.Field[Any]) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"settings field {f.name!r} has no default")


# --------------------------------------------------------------------------- type descriptions

_NOUNS = {str: ("a string", "strings"), bool: ("true or false", "booleans"),
          int: ("an integer", "integers"), float: ("a number", "numbers"),
          Path: ("a path (non-empty string)", "paths")}


def describe_type(tp: Any, meta: Mapping[str, Any] | None = None, *, plural: bool = False) -> str:
    """What a value of this schema type looks like: "an integer from 1 to 65535", ..."""
    meta = meta or {}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        rest = [a for a in args if a is not type(None)]
        inner = " or ".join(describe_type(a, meta, plural=plural) for a in rest)
        return f"{inner} or null"
    if origin in (list, tuple) and meta.get("choices"):  # a list whose items are choices
        return "a list, each " + describe_type(args[0], meta)
    if origin is Literal or meta.get("choices"):
        options = list(args) if origin is Literal else list(meta["choices"])
        shown = [_show(o) for o in options]
        if len(shown) == 2:
            return f"{shown[0]} or {shown[1]}"
        return "one of " + ", ".join(shown)
    if origin in (list, tuple):
        return f"a list of {describe_type(args[0], meta, plural=True)}"
    if origin is dict:
        return f"an object of {describe_type(args[1], meta, plural=True)}"
    if dataclasses.is_dataclass(tp):
        return "objects" if plural else "an object"
    noun = _NOUNS.get(tp)
    if noun is None:
        raise TypeError(f"unsupported settings type {tp!r}")
    text = noun[1] if plural else noun[0]
    if tp in (int, float):
        lo, hi = meta.get("min"), meta.get("max")
        if lo is not None and hi is not None:
            text += f" from {_num(lo)} to {_num(hi)}"
        elif lo is not None:
            text += f" >= {_num(lo)}"
        elif hi is not None:
            text += f" <= {_num(hi)}"
    return text


# --------------------------------------------------------------------------- validation


class _Builder:
    def __init__(self, root: Path, entries: Mapping[KeyPath, Entry]) -> None:
        self.root = root
        self.entries = entries
        self.problems: list[tuple[Pos, str]] = []
        self.warnings: list[tuple[Pos, str]] = []
        self.invalid: list[KeyPath] = []  # values replaced by their defaults

    def problem(self, path: KeyPath, message: str, *, at: Pos | None = None,
                key: bool = False) -> None:
        pos = at or _locate(self.entries, path, key=key)
        self.problems.append((pos, f"{key_path(path)}: {message}"))

    def warning(self, path: KeyPath, message: str) -> None:
        self.warnings.append((_locate(self.entries, path), f"{key_path(path)}: {message}"))

    @staticmethod
    def render(items: list[tuple[Pos, str]], source: str) -> list[str]:
        ordered = sorted(enumerate(items), key=lambda it: (it[1][0], it[0]))  # file order, stable
        return [f"{source}:{pos}: {text}" for _, (pos, text) in ordered]

    def build(self, cls: type, data: Mapping[str, Any], path: KeyPath) -> Any:
        """An instance of cls from data; invalid values are recorded and defaulted."""
        known = user_fields(cls)
        names = [f.name for f, _ in known]
        for key in data:
            if key not in names:
                hint = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
                text = f"unknown key (expected one of: {', '.join(names)})"
                if hint:
                    text += f"; did you mean '{hint[0]}'?"
                self.problem((*path, key), text, key=True)
        kwargs: dict[str, Any] = {}
        for f, tp in known:
            child = (*path, f.name)
            if f.name in data:
                value = self.convert(tp, f.metadata, data[f.name], child)
            else:
                value = self.default(f, tp, child)
            if value is _INVALID:
                self.invalid.append(child)
                value = self.default(f, tp, child)
            kwargs[f.name] = value
        return cls(**kwargs)

    def default(self, f: dataclasses.Field[Any], tp: Any, path: KeyPath) -> Any:
        """A missing key: its schema default, normalised like a given value."""
        before = len(self.problems)
        value = self.convert(tp, f.metadata, jsonable(field_default(f)), path)
        if len(self.problems) != before:
            raise TypeError(f"schema default of {key_path(path)} is invalid: "
                            f"{self.problems[before:]}")
        return value

    def convert(self, tp: Any, meta: Mapping[str, Any], value: Any, path: KeyPath,
                nullable: bool = False) -> Any:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin in (types.UnionType, typing.Union):
            if value is None and type(None) in args:
                return None
            rest = [a for a in args if a is not type(None)]
            if len(rest) != 1:
                raise TypeError(f"unsupported settings type {tp!r}")
            return self.convert(rest[0], meta, value, path, nullable=type(None) in args)
        ok = _check(tp, origin, meta, value)
        if ok is True:
            if origin in (list, tuple):
                items = [self.convert(args[0], meta, v, (*path, i)) for i, v in enumerate(value)]
                return _INVALID if any(v is _INVALID for v in items) else tuple(items)
            if origin is dict:
                members = {k: self.convert(args[1], meta, v, (*path, k)) for k, v in value.items()}
                return _INVALID if any(v is _INVALID for v in members.values()) else members
            if dataclasses.is_dataclass(tp):
                return self.build(tp, value, path)
            if tp is Path:
                return Path(value) if Path(value).is_absolute() else self.root / value
            if tp is float:
                return float(value)
            return value
        list_meta = {} if origin in (list, tuple, dict) else meta  # range/choices: the items
        expected = describe_type(tp, list_meta) + (" or null" if nullable else "")
        text = f"expected {expected}, got {_show(value)}"
        if isinstance(ok, str):
            text += ok
        self.problem(path, text)
        return _INVALID


def _check(tp: Any, origin: Any, meta: Mapping[str, Any], value: Any) -> bool | str:
    """True if value fits tp (containers: the container only); else False or a hint suffix."""
    if origin is Literal or (meta.get("choices") and origin not in (list, tuple)):
        options = list(typing.get_args(tp)) if origin is Literal else list(meta["choices"])
        if any(type(value) is type(o) and value == o for o in options):
            return True
        if isinstance(value, str):
            close = [o for o in options if isinstance(o, str) and o.lower() == value.lower()]
            close = close or difflib.get_close_matches(
                value, [o for o in options if isinstance(o, str)], n=1, cutoff=0.6)
            if close:
                return f"; did you mean {_show(close[0])}?"
        return False
    if origin in (list, tuple):
        return isinstance(value, list)
    if origin is dict:
        return isinstance(value, dict)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, dict)
    if tp is str:
        return isinstance(value, str)
    if tp is Path:
        return isinstance(value, str) and value != ""
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return type(value) is int and _in_range(value, meta)
    if tp is float:
        return type(value) in (int, float) and _finite(value) and _in_range(value, meta)
    raise TypeError(f"unsupported settings type {tp!r}")


def _finite(value: float) -> bool:
    """NaN and Infinity are not settings; neither are ints too large for a float."""
    return math.isfinite(value) if isinstance(value, float) else abs(value) <= sys.float_info.max


def _in_range(value: float, meta: Mapping[str, Any]) -> bool:
    lo, hi = meta.get("min"), meta.get("max")
    return (lo is None or value >= lo) and (hi is None or value <= hi)


# --------------------------------------------------------------------------- helpers


def _locate(entries: Mapping[KeyPath, Entry] | None, path: KeyPath, *, key: bool = False) -> Pos:
    """Where path is in the file: its value (or key), else the closest enclosing thing given."""
    if entries:
        for n in range(len(path), -1, -1):
            entry = entries.get(path[:n])
            if entry is not None:
                return (entry.key or entry.value) if key and n == len(path) else entry.value
    return Pos(1, 1)


def _overlaps(a: KeyPath, b: KeyPath) -> bool:
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def _show(value: object, limit: int = 60) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_NEAR = re.compile(r" (?:starting )?near (\d+)")
_BYTES = re.compile(r"b'([^']*)'")
_CODEPOINT = re.compile(r"U\+([0-9A-Fa-f]{4,6})")


def _syntax_problem(exc: pyjson5.Json5Exception, text: str, scanned: ScanResult,
                    source: str) -> str:
    """pyjson5's message with its offset (1-based code points) turned into line:col."""
    message = str(exc.args[0]) if exc.args else str(exc)
    near = _NEAR.search(message)
    offset = int(near.group(1)) - 1 if near else 0
    if isinstance(exc, pyjson5.Json5ExtraData) and scanned.error is None:
        offset = scanned.end  # pyjson5 points at the end of the value, not at the extra data
    elif scanned.error and (message.startswith("No JSON data")
                            or (message.startswith("Unclosed") and "unclosed" in scanned.error[1])):
        offset = scanned.error[0]  # the opening quote or "/*" (pyjson5 may be one off)
    message = _NEAR.sub(lambda m: " starting here" if "starting" in m.group(0) else "", message)
    message = _BYTES.sub(lambda m: m.group(1), message)
    message = _CODEPOINT.sub(lambda m: _char(int(m.group(1), 16)), message)
    message = message[:1].lower() + message[1:]
    return f"{source}:{LineIndex(text).pos(offset)}: syntax error: {message}"


def _char(code: int) -> str:
    ch = chr(code)
    return f"'{ch}'" if ch.isprintable() and not ch.isspace() else f"U+{code:04X}"
