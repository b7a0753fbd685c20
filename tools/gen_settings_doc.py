"""Generate docs/settings.md (and, on request, the shipped settings.json) from gateway/settings.py.

    .venv/bin/python -m tools.gen_settings_doc            # rewrite docs/settings.md
    .venv/bin/python -m tools.gen_settings_doc --check    # exit 1 if docs/settings.md is stale
    .venv/bin/python -m tools.gen_settings_doc --settings-json PATH   # write a full settings.json

The schema is the single source of truth; tests/test_settings.py fails when docs/settings.md
drifts from it, and when the shipped settings.json misses a key.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import textwrap
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.settings import Settings
from gateway.settings_loader import describe_type, field_default, jsonable, user_fields

ROOT = Path(__file__).resolve().parent.parent
DOC_PATH = ROOT / "docs" / "settings.md"
REGENERATE = ".venv/bin/python -m tools.gen_settings_doc"

_INTRO = f"""\
# settings.json reference

<!-- Generated from gateway/settings.py by tools/gen_settings_doc.py; do not edit by hand.
     Regenerate with: {REGENERATE} -->

`settings.json` is JSON5: comments (`//`, `/* */`), trailing commas, unquoted keys and
single-quoted strings are allowed. Every key is optional; a missing key takes the default below.
Unknown keys, values of the wrong type or out of range, and duplicate keys are errors: every
problem is reported at once as `settings.json:LINE:COL: path.to.key: expected ..., got ...`
(`linegate check` lists them and exits 2). Relative paths resolve against the directory holding
settings.json (the installation root). Lists are read as tuples.
"""


def _item_class(tp: Any) -> type | None:
    """The dataclass of a ``list[SomeDataclass]`` (possibly ``| None``), else None."""
    for arg in (tp, *typing.get_args(tp)):
        if typing.get_origin(arg) in (list, tuple):
            inner = typing.get_args(arg)[0]
            if dataclasses.is_dataclass(inner):
                return inner  # type: ignore[return-value]
    return None


def _type_text(tp: Any, meta: typing.Mapping[str, Any]) -> str:
    text = describe_type(tp, meta)
    for article in ("a ", "an "):
        if text.startswith(article):
            text = text[len(article):]
    return text


def rows(cls: type = Settings, prefix: str = "") -> Iterator[tuple[str, str, str, str]]:
    """(key, type, default, meaning) for every key under cls, depth first, in schema order."""
    for f, tp in user_fields(cls):
        key = f"{prefix}{f.name}"
        doc = str(f.metadata.get("doc", ""))
        if dataclasses.is_dataclass(tp):
            yield key, "object", "", doc
            yield from rows(tp, f"{key}.")  # type: ignore[arg-type]
            continue
        default = json.dumps(jsonable(field_default(f)), ensure_ascii=False)
        yield key, _type_text(tp, f.metadata), f"`{default}`", doc
        item = _item_class(tp)
        if item is not None:
            yield from rows(item, f"{key}[].")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_doc() -> str:
    out = [_INTRO]
    sections: list[tuple[str, str, list[tuple[str, str, str, str]]]] = []
    top: list[tuple[str, str, str, str]] = []
    for f, tp in user_fields(Settings):
        if dataclasses.is_dataclass(tp):
            sections.append((f.name, str(f.metadata.get("doc", "")),
                             list(rows(tp, f"{f.name}."))))  # type: ignore[arg-type]
        else:
            top.extend(r for r in rows() if r[0] == f.name or r[0].startswith(f"{f.name}["))
    if top:
        sections.append(("top-level keys", "Keys directly under the root object.", top))
    for name, doc, table in sections:
        out.append(f"\n## {name}\n\n{doc}\n\n| Key | Type | Default | Meaning |\n"
                   "|---|---|---|---|\n")
        out.extend(f"| `{k}` | {_cell(t)} | {_cell(d)} | {_cell(m)} |\n" for k, t, d, m in table)
    return "".join(out)


# --------------------------------------------------------------------------- settings.json


def _comment(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, width=100, initial_indent=f"{indent}// ",
                         subsequent_indent=f"{indent}// ") if text else []


def _members(cls: type, depth: int) -> list[str]:
    indent = "  " * depth
    lines: list[str] = []
    for f, tp in user_fields(cls):
        lines.extend(_comment(str(f.metadata.get("doc", "")), indent))
        if dataclasses.is_dataclass(tp):
            lines.append(f"{indent}{json.dumps(f.name)}: {{")
            lines.extend(_members(tp, depth + 1))  # type: ignore[arg-type]
            lines.append(f"{indent}}},")
            continue
        item = _item_class(tp)
        if item is not None:
            example = {g.name: jsonable(field_default(g)) for g, _ in user_fields(item)}
            lines.append(f"{indent}// each item: {json.dumps(example, ensure_ascii=False)}")
        value = json.dumps(jsonable(field_default(f)), ensure_ascii=False)
        lines.append(f"{indent}{json.dumps(f.name)}: {value},")
    return lines


def render_settings_json() -> str:
    head = [
        "// linegate settings.json (JSON5: comments and trailing commas are fine).",
        "// Every key is listed with its default; a key left out takes its default. Unknown keys",
        "// are errors. Relative paths resolve against the directory holding this file.",
        "// Check it with: linegate check --settings settings.json   Reference: docs/settings.md",
        "{",
    ]
    return "\n".join([*head, *_members(Settings, 1), "}", ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/settings.md is stale")
    parser.add_argument("--settings-json", type=Path, metavar="PATH",
                        help="also write a complete settings.json with every default to PATH")
    args = parser.parse_args(argv)
    text = render_doc()
    if args.check:
        current = DOC_PATH.read_text(encoding="utf-8") if DOC_PATH.exists() else ""
        if current != text:
            print(f"{DOC_PATH} is out of date; run: {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    DOC_PATH.parent.mkdir(parents=True, exist_ok=True)
    DOC_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {DOC_PATH}")
    if args.settings_json:
        args.settings_json.write_text(render_settings_json(), encoding="utf-8")
        print(f"wrote {args.settings_json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
