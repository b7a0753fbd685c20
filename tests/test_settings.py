"""settings.json: the loader's exact error texts, defaults, paths, the shipped file, the generated
reference, and the JSON5 position scanner (table cases and hypothesis properties)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import SettingsError
from gateway.json5pos import LineIndex, Pos, scan
from gateway.settings import OipTcpSettings, Settings, StatusUser
from gateway.settings_loader import (
    cross_checks,
    default_settings,
    key_path,
    load_settings,
    load_settings_text,
    summary,
    user_fields,
)
from tools import gen_settings_doc

ROOT = Path(__file__).resolve().parent.parent


def problems(text: str, source: str = "settings.json") -> list[str]:
    with pytest.raises(SettingsError) as info:
        load_settings_text(text, source=source, root=Path("/opt/linegate"))
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


# The lead's examples, each on the line and column the message names.
EXAMPLE = """\
{
  "station": {
    "role": "prism",
    "name":        42,
  },
  "oip": { "tcp": {
    listen_prot: 7701,
    "enable": true,
    "listen_port":   70000,
  }},
}
"""

TCP_KEYS = ("enable, listen_address, listen_port, allowed_peers, idle_timeout_s, max_connections, "
            "tls_handshake_timeout_s, tls")


def test_unknown_key_names_its_key_position_and_the_closest_key() -> None:
    assert problems('{\n  oip: {\n    tcp: {\n      listen_prot: 1,\n    },\n  },\n}') == [
        f"settings.json:4:7: oip.tcp.listen_prot: unknown key (expected one of: {TCP_KEYS}); "
        "did you mean 'listen_port'?"]


def test_unknown_key_without_a_close_match_lists_the_keys() -> None:
    assert problems('{"station": {"colour": "red"}}') == [
        "settings.json:1:14: station.colour: unknown key (expected one of: name, role)"]


def test_wrong_type() -> None:
    assert problems('{\n  "station": {\n    "role": "prism",\n    "name":        42,\n  },\n}') == [
        "settings.json:4:20: station.name: expected a string, got 42"]


def test_bad_port() -> None:
    text = '{\n "oip": {\n  "tcp": {\n\n\n\n\n\n    "listen_port":   70000,\n  }\n }\n}'
    assert problems(text) == [
        "settings.json:9:22: oip.tcp.listen_port: expected an integer from 1 to 65535, got 70000"]


def test_several_problems_are_reported_together_in_file_order() -> None:
    assert problems(EXAMPLE) == [
        "settings.json:4:20: station.name: expected a string, got 42",
        f"settings.json:7:5: oip.tcp.listen_prot: unknown key (expected one of: {TCP_KEYS}); "
        "did you mean 'listen_port'?",
        "settings.json:9:22: oip.tcp.listen_port: expected an integer from 1 to 65535, got 70000",
    ]


def test_source_is_the_path_as_given(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text(EXAMPLE, encoding="utf-8")
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert info.value.problems[0] == f"{path}:4:20: station.name: expected a string, got 42"


@pytest.mark.parametrize(("text", "expected"), [
    ('{\n  "station": {\n    "name": "x",,\n  },\n}',
     "settings.json:3:17: syntax error: stray comma"),
    ('{\n  "station": {\n    "name": "x"\n    "role": "lente"\n  },\n}',
     "settings.json:4:5: syntax error: expected comma or '}', found '\"'"),
    ("{\n  station: {name: 'x},\n}",
     "settings.json:2:19: syntax error: unclosed string starting here"),
    ("{\n  /* never closed", "settings.json:2:3: syntax error: unclosed comment starting here"),
    ("{\n  a: 1\n}\n]", "settings.json:4:1: syntax error: extra data ']'"),
    ("// only a comment\n", "settings.json:2:1: syntax error: no JSON data found"),
    ('{"é€😀": 1,, }', "settings.json:1:11: syntax error: stray comma"),  # columns count characters
])
def test_json5_syntax_error_with_line_and_column(text: str, expected: str) -> None:
    assert problems(text) == [expected]


def test_duplicate_key_is_an_error_at_the_second_naming_the_first() -> None:
    text = ('{\n  store: {\n    path: "a.sqlite",\n    synchronous: "FULL",\n'
            '    path: "b.sqlite",\n  },\n}')
    assert problems(text) == [
        "settings.json:5:5: store.path: duplicate key (first given at line 3, column 5)"]


def test_duplicate_section_and_its_own_problems_are_all_reported() -> None:
    text = '{station: {name: "a"},\n station: {name: 1}}'
    assert problems(text) == [
        "settings.json:2:2: station: duplicate key (first given at line 1, column 2)",
        "settings.json:2:18: station.name: expected a string, got 1"]


@pytest.mark.parametrize(("text", "expected"), [
    ("{oip: {tcp: {listen_port: true}}}",  # a bool is not an int
     "settings.json:1:27: oip.tcp.listen_port: expected an integer from 1 to 65535, got true"),
    ("{oip: {tcp: {listen_port: 7701.0}}}",
     "settings.json:1:27: oip.tcp.listen_port: expected an integer from 1 to 65535, got 7701.0"),
    ("{oip: {tcp: {idle_timeout_s: 1" + "0" * 400 + "}}}",  # too big for a float
     "settings.json:1:30: oip.tcp.idle_timeout_s: expected a number >= 0.1, got 1"
     + "0" * 58 + "…"),
    ("{oip: {tcp: {idle_timeout_s: NaN}}}",
     "settings.json:1:30: oip.tcp.idle_timeout_s: expected a number >= 0.1, got NaN"),
    ("{oip: {tcp: {allowed_peers: ['::1', 3]}}}",
     "settings.json:1:37: oip.tcp.allowed_peers[1]: expected a string, got 3"),
    ("{oip: {tcp: {allowed_peers: '::1'}}}",
     "settings.json:1:29: oip.tcp.allowed_peers: expected a list of strings, got \"::1\""),
    ("{logging: {level: 'info'}}", 'settings.json:1:19: logging.level: expected one of "DEBUG", '
     '"INFO", "WARNING", "ERROR", got "info"; did you mean "INFO"?'),
    ("{station: {role: 'prizm'}}",
     'settings.json:1:18: station.role: expected "prism" or "lente", got "prizm"; '
     'did you mean "prism"?'),
    ("{opcua_server: {security_policies: ['NoSecurity', 'Basic']}}",
     "settings.json:1:51: opcua_server.security_policies[1]: expected one of \"NoSecurity\", "
     "\"Basic256Sha256_Sign\", \"Basic256Sha256_SignAndEncrypt\", got \"Basic\""),
    ("{upstream: {openscs: {username: 5}}}",
     "settings.json:1:33: upstream.openscs.username: expected a string or null, got 5"),
    ("{store: {path: ''}}",
     "settings.json:1:16: store.path: expected a path (non-empty string), got \"\""),
    ("{store: []}", "settings.json:1:9: store: expected an object, got []"),
    ("[1, 2]", "settings.json:1:1: (top level): expected an object, got [1, 2]"),
])
def test_value_errors(text: str, expected: str) -> None:
    assert problems(text) == [expected]


@pytest.mark.parametrize(("text", "expected"), [
    ("{reserve: {low_water: 600}}",
     "settings.json:1:23: reserve.low_water: expected less than reserve.fill_to (500), got 600"),
    ("{oip: {tcp: {allowed_peers: ['10.0.0.1', '10.0.0.0/8', '10.0.0.300']}}}",
     'settings.json:1:56: oip.tcp.allowed_peers[2]: expected an IP address or CIDR network, '
     'got "10.0.0.300"'),
    ("{oip: {soap: {listen_port: 7701}}}",
     "settings.json:1:28: oip.soap.listen_port: port 7701 is already used by oip.tcp.listen_port"),
    ("{upstream: {openscs: {endpoint: 'http://x:1/'}}}",
     'settings.json:1:33: upstream.openscs.endpoint: expected an opc.tcp://HOST:PORT/ URL, '
     'got "http://x:1/"'),
    ("{upstream: {openscs: {security_policy: 'None', security_mode: 'None'}}}",
     'settings.json:1:40: upstream.openscs.security_policy: "None" needs '
     'upstream.openscs.allow_insecure: true'),
    ("{opcua_server: {fields: ['cmd', 'Disk-Usage']}}",
     'settings.json:1:33: opcua_server.fields[1]: expected one of cmd, computer, disk_usage, '
     'ip, num_files, result_class, script, scripts_version, user, version, clients, '
     'outbox_backlog, outbox_oldest_age_s, dead_letters, store_high_water, upstream_state, '
     'alarms, reserve_level, adapters, counters, cert_expiry, clock_synced, uptime_s; got '
     '"Disk-Usage"'),
    ("{upstream: {openscs: {sn_format: 'SERIAL ONLY'}}}",
     'settings.json:1:34: upstream.openscs.sn_format: expected a serial-number format name such '
     'as SERIALONLY or EPCURI, got "SERIAL ONLY"'),
    ("{station: {name: ''}}",
     'settings.json:1:18: station.name: expected a station name, got ""'),
    ("{opcua_server: {users: [{name: 'a', password_hash: 'scrypt$1$2$3$x$y'}]}}",
     "settings.json:1:52: opcua_server.users[0].password_hash: expected a password hash made by "
     "'linegate passwd' (scrypt$N$r$p$salt$hash): N, r, p must be integers and salt, hash "
     "base64"),
    ("{upstream: {openscs: {username: 'line'}}}",
     'settings.json:1:22: upstream.openscs.password_file: expected a password file with '
     'username "line" (a file of mode 0600 holding the password), got null'),
    ("{upstream: {openscs: {password_file: '/etc/hostname'}}}",
     'settings.json:1:22: upstream.openscs.username: expected the user name the password_file '
     'belongs to, got null'),
])
def test_cross_key_checks(text: str, expected: str) -> None:
    assert problems(text) == [expected]


def test_list_items_are_checked_one_by_one() -> None:
    # user 1 has a bad role and (a cross-key check) no password hash; the missing key is
    # reported at the item that lacks it
    text = ("{opcua_server: {users: [{name: 'a', password_hash: 'x'}, {name: 'b', role: 'root'}]}}")
    assert problems(text) == [
        "settings.json:1:52: opcua_server.users[0].password_hash: expected a password hash made "
        "by 'linegate passwd' (scrypt$N$r$p$salt$hash): got something else (6 fields separated "
        "by $, the first 'scrypt')",
        "settings.json:1:58: opcua_server.users[1].password_hash: expected a password hash made "
        "by 'linegate passwd' (scrypt$N$r$p$salt$hash): got \"\"",
        'settings.json:1:76: opcua_server.users[1].role: expected one of "viewer", "operator", '
        '"admin", got "root"']


def test_cross_checks_skip_keys_whose_value_was_invalid() -> None:
    # the invalid tcp port is replaced by its default 7701 internally; no false port conflict
    assert problems("{oip: {soap: {listen_port: 7701}, tcp: {listen_port: 'x'}}}") == [
        'settings.json:1:54: oip.tcp.listen_port: expected an integer from 1 to 65535, got "x"']


def test_cross_checks_standalone() -> None:
    assert cross_checks(default_settings()) == []
    bad = dataclasses.replace(default_settings(), reserve=dataclasses.replace(
        default_settings().reserve, low_water=9, fill_to=5))
    assert cross_checks(bad) == [
        "<defaults>: reserve.low_water: expected less than reserve.fill_to (5), got 9"]


def test_warnings_are_kept_not_raised() -> None:
    s = load_settings_text("{oip: {tcp: {listen_address: '0.0.0.0'}},\n upstream: {openscs: "
                           "{security_policy: 'None', security_mode: 'None', "
                           "allow_insecure: true}}}", root=Path("/opt/linegate"))
    assert s.warnings == (
        "settings.json:1:13: oip.tcp.allowed_peers: empty: any host that reaches 0.0.0.0 may "
        "send OIP",
        "settings.json:2:40: upstream.openscs.security_policy: no security: lab use only")


HASH = ("scrypt$16384$8$1$MDEyMzQ1Njc4OWFiY2RlZg==$"  # linegate passwd, a fixed salt
        "o6nuri0UB0zAYtUPW1FsUcO86OUVadX+DXiUh65Fhto=")
NO_IDENTITY = ("settings.json:1:1: upstream.openscs.username: no user identity: OPEN-SCS "
               "sessions must be authenticated (spec 7.4.1), so nothing will be delivered until "
               "username + password_file or user_certificate_file + user_private_key_file are "
               "set")


def test_an_sn_format_the_specification_does_not_name_is_a_warning() -> None:
    s = load_settings_text("{upstream: {openscs: {sn_format: 'SERIAL_ONLY'}}}",
                           root=Path("/opt/linegate"))
    assert ('settings.json:1:34: upstream.openscs.sn_format: "SERIAL_ONLY" is none of the '
            "formats the specification names (SERIALONLY, LITERAL, EPCURI): the upstream's "
            "SNFormat property must offer it, or nothing is delivered") in s.warnings


def test_password_file_mode_is_checked(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("secret")
    pw.chmod(0o644)
    text = f"{{upstream: {{openscs: {{username: 'line', password_file: '{pw}'}}}}}}"
    assert problems(text) == [f"settings.json:1:56: upstream.openscs.password_file: {pw} has "
                              f"mode 0644: expected 0600 (chmod 600 {pw})"]
    pw.chmod(0o600)
    assert load_settings_text(text, root=tmp_path).warnings == ()
    pw.unlink()
    assert problems(text) == [f"settings.json:1:56: upstream.openscs.password_file: {pw}: "
                              "No such file or directory"]


def test_defaults_are_applied_and_typed() -> None:
    s = load_settings_text("{station: {name: 'press-3'}, oip: {tcp: {idle_timeout_s: 5}}}",
                           root=Path("/opt/linegate"))
    assert s.station.name == "press-3"
    assert s.station.role == "prism"
    assert s.oip.tcp.idle_timeout_s == 5.0 and type(s.oip.tcp.idle_timeout_s) is float
    assert s.oip.tcp.listen_port == 7701
    assert s.oip.tcp.allowed_peers == ()
    assert s.opcua_server.security_policies == (
        "NoSecurity", "Basic256Sha256_Sign", "Basic256Sha256_SignAndEncrypt")
    assert s.opcua_server.fields is None
    assert s.source == "settings.json" and s.root == Path("/opt/linegate")
    assert s.warnings == (NO_IDENTITY,)  # the upstream is on, no credentials are set yet


def test_list_of_objects_becomes_a_tuple_of_dataclasses() -> None:
    s = load_settings_text("{opcua_server: {users: [{name: 'ann', password_hash: '" + HASH
                           + "', role: 'admin'}]}}", root=Path("/r"))
    assert s.opcua_server.users == (StatusUser("ann", HASH, "admin"),)


def test_paths_resolve_against_the_directory_holding_the_file(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "settings.json"
    path.write_text("{store: {path: 'db/o.sqlite'}, result_bkup_dir: '/var/bkup'}")
    s = load_settings(path)
    assert s.root == tmp_path / "etc"
    assert s.source == str(path)
    assert s.store.path == tmp_path / "etc" / "db" / "o.sqlite"
    assert s.result_bkup_dir == Path("/var/bkup")
    assert s.opcua_server.certificates.path == tmp_path / "etc" / "public"  # a default, resolved
    assert s.upstream.openscs.password_file is None


def test_relative_settings_path_gives_an_absolute_root(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "settings.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    s = load_settings(Path("settings.json"))
    assert s.root == tmp_path and s.source == "settings.json"
    assert s.store.path == tmp_path / "data" / "outbox.sqlite"


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(tmp_path / "missing.json")
    assert info.value.problems == [
        f"{tmp_path / 'missing.json'}: cannot read: No such file or directory"]


def test_file_encoding(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_bytes("\ufeff{station: {name: 'Zürich'}}".encode())  # a BOM is fine
    assert load_settings(path).station.name == "Zürich"
    path.write_bytes(b"{\n  station: {name: '\xff'}}")
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert info.value.problems == [f"{path}:2:20: syntax error: not UTF-8 (byte 0xff)"]


def test_default_settings_match_the_dataclass_defaults() -> None:
    s = default_settings()
    assert s.root == Path.cwd()
    assert s.oip.tcp == dataclasses.replace(
        OipTcpSettings(), allowed_peers=(), tls=dataclasses.replace(
            OipTcpSettings().tls, path=Path.cwd() / "public"))


def test_summary_is_one_line() -> None:
    line = summary(load_settings_text("{station: {name: 'press-3', role: 'lente'}, "
                                      "opcua_server: {enable: true, security_policies: "
                                      "['NoSecurity']}}", root=Path("/r")))
    assert line == ("station 'press-3' (lente); OIP/TCP 127.0.0.1:7701; OIP/SOAP 127.0.0.1:7780; "
                    "status server 0.0.0.0:4841; store /r/data/outbox.sqlite; upstream "
                    "opc.tcp://127.0.0.1:4855/ (Basic256Sha256/SignAndEncrypt); 1 warning(s)")


def test_key_path() -> None:
    assert key_path(("oip", "tcp", "allowed_peers", 2)) == "oip.tcp.allowed_peers[2]"
    assert key_path(()) == "(top level)"


# --------------------------------------------------------------------------- shipped files


def schema_paths(cls: type = Settings, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for f, tp in user_fields(cls):
        out.append((*prefix, f.name))
        if dataclasses.is_dataclass(tp):
            out.extend(schema_paths(tp, (*prefix, f.name)))
    return out


def test_shipped_settings_json_loads_cleanly_and_lists_every_key() -> None:
    path = ROOT / "settings.json"
    s = load_settings(path)
    assert [w.split(": ", 1)[1] for w in s.warnings] == [NO_IDENTITY.split(": ", 1)[1]]
    entries = scan(path.read_text(encoding="utf-8")).entries
    missing = [".".join(p) for p in schema_paths() if p not in entries]
    assert missing == [], f"add to settings.json (see {gen_settings_doc.REGENERATE} --help)"
    listeners = [(s.oip.tcp.enable, s.oip.tcp.listen_address),
                 (s.oip.soap.enable, s.oip.soap.listen_address),
                 (s.opcua_server.enable, s.opcua_server.listen_address)]
    assert all(address in ("127.0.0.1", "::1") for on, address in listeners if on)


def test_docs_settings_md_is_generated_from_the_schema() -> None:
    current = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    assert current == gen_settings_doc.render_doc(), f"run: {gen_settings_doc.REGENERATE}"
    sections = {f.name for f, tp in user_fields(Settings) if dataclasses.is_dataclass(tp)}
    for path in schema_paths():
        if path[0] in sections:
            assert f"\n## {path[0]}\n" in current
        if len(path) > 1 or path[0] not in sections:
            assert f"| `{'.'.join(path)}` |" in current


def test_generated_settings_json_round_trips_to_the_defaults() -> None:
    s = load_settings_text(gen_settings_doc.render_settings_json(), root=Path.cwd())
    assert dataclasses.replace(s, source="<defaults>", warnings=()) == dataclasses.replace(
        default_settings(), warnings=())


# --------------------------------------------------------------------------- scanner


def at(text: str, pos: Pos | None) -> str:
    assert pos is not None
    lines = text.split("\n")
    return lines[pos.line - 1][pos.col - 1:]


TRICKY = """\
// header { "not": a key } 'either
{
  /* block } with ] and "quotes' */ "a//b": "x // y }",
  b: [1, {c: 'd}\\'', e: [ {f: 1,}, ],}, [[], {}],],
  'g\\'h': +Infinity, i: 0x1F, j: -.5e+3, k: NaN, $_l: null,
  "m": {"n": {"o": [true, false]}}, // trailing } comment
}
"""


def test_scanner_on_tricky_json5() -> None:
    result = scan(TRICKY)
    assert result.error is None and result.duplicates == []
    e = result.entries
    assert at(TRICKY, e[("a//b",)].key).startswith('"a//b": "x // y }"')
    assert at(TRICKY, e[("a//b",)].value).startswith('"x // y }",')
    assert at(TRICKY, e[("b", 1, "c")].value).startswith("'d}\\'', e:")
    assert at(TRICKY, e[("b", 1, "e", 0, "f")].key).startswith("f: 1,}")
    assert at(TRICKY, e[("b", 2, 0)].value).startswith("[], {}]")
    assert at(TRICKY, e[("b", 2, 1)].value).startswith("{}]")
    assert at(TRICKY, e[("g'h",)].key).startswith("'g\\'h': +Inf")
    assert at(TRICKY, e[("g'h",)].value).startswith("+Infinity,")
    assert at(TRICKY, e[("j",)].value).startswith("-.5e+3,")
    assert at(TRICKY, e[("$_l",)].value).startswith("null,")
    assert at(TRICKY, e[("m", "n", "o", 1)].value).startswith("false]")
    assert e[()].value == Pos(2, 1)
    assert set(e) == {(), ("a//b",), ("b",), ("b", 0), ("b", 1), ("b", 1, "c"), ("b", 1, "e"),
                      ("b", 1, "e", 0), ("b", 1, "e", 0, "f"), ("b", 2), ("b", 2, 0), ("b", 2, 1),
                      ("g'h",), ("i",), ("j",), ("k",), ("$_l",), ("m",), ("m", "n"),
                      ("m", "n", "o"), ("m", "n", "o", 0), ("m", "n", "o", 1)}


def test_scanner_keys_decode_like_pyjson5() -> None:
    import pyjson5

    text = r"""{"\u0041\x42\ud83d\ude00": 1, 'it\'s': 2, \u0061b: 3, "line\
cont": 4}"""
    assert set(scan(text).entries) - {()} == {(k,) for k in pyjson5.decode(text)}


def test_scanner_reports_duplicates_and_keeps_the_last() -> None:
    result = scan('{a: {x: 1, y: 2},\n a: {z: 3}}')
    assert [(d.path, d.first, d.second) for d in result.duplicates] == [
        (("a",), Pos(1, 2), Pos(2, 2))]
    assert ("a", "x") not in result.entries and ("a", "z") in result.entries


def test_scanner_stops_on_broken_text_without_raising() -> None:
    result = scan('{a: 1, b: "open')
    assert result.error == (10, "unclosed string")
    assert ("a",) in result.entries
    assert scan("[" * 10_000).error == (201, "nesting too deep")


@given(st.text())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_scanner_never_crashes(text: str) -> None:
    result = scan(text)
    assert result.error is None or 0 <= result.error[0] <= len(text)
    assert all(p.line >= 1 and p.col >= 1 for e in result.entries.values() for p in (e.value,))


@given(st.text(alphabet='{}[]:,"\'/*\\ \n\tab01xe.+-', max_size=60))
@settings(max_examples=300)
def test_loader_raises_only_settings_errors(text: str) -> None:
    try:
        load_settings_text(text, root=Path("/r"))
    except SettingsError as exc:
        assert exc.problems and all(p.startswith("settings.json:") for p in exc.problems)


scalars = (st.none() | st.booleans() | st.integers(-10**12, 10**12)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8))
documents = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(max_size=6), inner, max_size=4), max_leaves=20)


def walk(value: Any, path: tuple[str | int, ...] = ()) -> Any:
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from walk(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from walk(v, (*path, i))


@given(documents, st.sampled_from([None, 0, 2]), st.booleans())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_scanner_positions_point_at_keys_and_values(doc: Any, indent: int | None,
                                                    ascii_only: bool) -> None:
    text = json.dumps(doc, indent=indent, ensure_ascii=ascii_only)
    result = scan(text)
    assert result.error is None and result.duplicates == []
    index = LineIndex(text)
    offsets = {index.pos(i): i for i in range(len(text) + 1)}
    expected = dict(walk(doc))
    assert set(result.entries) == set(expected)
    for path, entry in result.entries.items():
        value = expected[path]
        if entry.key is not None:
            key_text = json.dumps(path[-1], ensure_ascii=ascii_only)
            assert text.startswith(key_text, offsets[entry.key])
        else:
            assert path == () or isinstance(path[-1], int)
        rest = text[offsets[entry.value]:]
        if isinstance(value, (dict, list)):
            assert rest[0] == ("{" if isinstance(value, dict) else "[")
        else:
            shown = json.dumps(value, ensure_ascii=ascii_only)
            assert rest.startswith(shown) or (isinstance(value, float) and math.isfinite(value))


GAPS = ["", " ", "\n    ", "\t", "\r\n", " /* } ] \" ' // { */ ", "  // } ' \" /* [\n"]
IDENTIFIER = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")


def quoted(s: str, quote: str) -> str:
    out = []
    for ch in s:
        if ch in ("\\", quote):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ch in "\u2028\u2029":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return quote + "".join(out) + quote


class Json5Writer:
    """Renders a document as JSON5 with drawn comments, quoting, number forms and trailing
    commas, recording where it put every key and value (the oracle for the scanner)."""

    def __init__(self, data: st.DataObject) -> None:
        self.draw = data.draw
        self.parts: list[str] = []
        self.size = 0
        self.keys: dict[tuple[str | int, ...], int] = {}
        self.values: dict[tuple[str | int, ...], int] = {}

    def emit(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)

    def gap(self) -> None:
        self.emit(self.draw(st.sampled_from(GAPS)))

    def value(self, value: Any, path: tuple[str | int, ...]) -> None:
        self.values[path] = self.size
        if isinstance(value, dict):
            self.members("{}", list(value.items()), path)
        elif isinstance(value, list):
            self.members("[]", list(enumerate(value)), path)
        elif isinstance(value, str):
            self.emit(quoted(value, self.draw(st.sampled_from("\"'"))))
        elif isinstance(value, bool) or value is None:
            self.emit(json.dumps(value))
        elif isinstance(value, int) and value >= 0 and self.draw(st.booleans()):
            self.emit(self.draw(st.sampled_from(["0x", "+0X"])) + f"{value:x}")
        elif isinstance(value, float) and math.isinf(value):
            self.emit("Infinity" if value > 0 else "-Infinity")
        else:
            self.emit(json.dumps(value))

    def members(self, brackets: str, items: list[tuple[Any, Any]], path: tuple[Any, ...]) -> None:
        self.emit(brackets[0])
        for n, (key, item) in enumerate(items):
            self.gap()
            if brackets == "{}":
                self.keys[(*path, key)] = self.size
                if IDENTIFIER.fullmatch(key) and self.draw(st.booleans()):
                    self.emit(key)
                else:
                    self.emit(quoted(key, self.draw(st.sampled_from("\"'"))))
                self.gap()
                self.emit(":")
                self.gap()
            self.value(item, (*path, key))
            self.gap()
            if n < len(items) - 1 or self.draw(st.booleans()):
                self.emit(",")
                self.gap()
        self.emit(brackets[1])


json5_scalars = (st.none() | st.booleans() | st.integers(-10**6, 10**15)
                 | st.floats(allow_nan=False) | st.text(max_size=6))
json5_keys = st.text(max_size=5) | st.from_regex(IDENTIFIER, fullmatch=True)
json5_documents = st.recursive(json5_scalars, lambda inner: st.lists(inner, max_size=3)
                               | st.dictionaries(json5_keys, inner, max_size=3), max_leaves=15)


@given(json5_documents, st.data())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_scanner_positions_in_generated_json5(doc: Any, data: st.DataObject) -> None:
    import pyjson5

    writer = Json5Writer(data)
    writer.gap()
    writer.value(doc, ())
    writer.gap()
    text = "".join(writer.parts)
    assert pyjson5.decode(text) == doc  # the writer itself is right
    result = scan(text)
    assert result.error is None and result.end == len(text)
    index = LineIndex(text)
    assert {p: e.value for p, e in result.entries.items()} == {
        p: index.pos(o) for p, o in writer.values.items()}
    assert {p: e.key for p, e in result.entries.items() if e.key} == {
        p: index.pos(o) for p, o in writer.keys.items()}
