"""The OIP ``c`` pattern language of validate-serial steps (handler 3).

The seed writes ``11an||00*`` and ``14an||NPZQ*``: a length and a character class, then, after
``||``, what the value must start with. The grammar adopted (documented in PROTOCOL.md)::

    pattern := spec [ "||" affix ]
    spec    := [ length ] class
    length  := N            exactly N characters (1..999)
             | N "-" M      N to M characters
    class   := "n"          digits 0-9
             | "a"          letters A-Z a-z
             | "an"         letters and digits
             | "x"          any character OIP can carry
    affix   := literal "*"  the value starts with literal
             | literal      the value equals literal

Without a length any length is allowed. The empty pattern accepts everything. ``match_pattern``
is a pure function the station calls on DATA values; ``parse_pattern`` lets the codec refuse an
ORDER whose validate-serial step carries a pattern nobody can evaluate.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

_SPEC = re.compile(r"(?:([0-9]{1,3})(?:-([0-9]{1,3}))?)?(an|n|a|x)")

CLASSES: dict[str, tuple[str, str]] = {
    # class -> (regex of one allowed character, human name)
    "n": ("[0-9]", "digits"),
    "a": ("[A-Za-z]", "letters"),
    "an": ("[A-Za-z0-9]", "letters and digits"),
    "x": (".", "any character"),
}


@dataclass(frozen=True)
class Pattern:
    min_len: int | None
    max_len: int | None
    cls: str
    literal: str
    prefix: bool  # True: value starts with literal; False: value equals literal (if literal)


@functools.lru_cache(maxsize=256)
def parse_pattern(pattern: str) -> Pattern:
    """Parse a ``c`` pattern; ValueError names what is wrong."""
    spec, sep, affix = pattern.partition("||")
    m = _SPEC.fullmatch(spec)  # not match(..$): "$" accepts a trailing newline
    if m is None:
        raise ValueError(f"pattern {pattern!r}: {spec!r} is not <length><class> "
                         "(class n, a, an or x; length N or N-M)")
    lo = int(m.group(1)) if m.group(1) else None
    hi = int(m.group(2)) if m.group(2) else lo
    if lo is not None and (lo < 1 or (hi is not None and hi < lo)):
        raise ValueError(f"pattern {pattern!r}: length range {spec!r} is empty")
    prefix = affix.endswith("*")
    literal = affix[:-1] if prefix else affix
    if "*" in literal:
        raise ValueError(f"pattern {pattern!r}: '*' is only allowed at the end")
    if sep and not affix:
        raise ValueError(f"pattern {pattern!r}: nothing after '||'")
    return Pattern(lo, hi, m.group(3), literal, prefix)


def match_pattern(pattern: str, value: str) -> str | None:
    """None when ``value`` matches ``pattern``, else the reason it does not."""
    if not pattern:
        return None
    try:
        p = parse_pattern(pattern)
    except ValueError as exc:
        return str(exc)
    n = len(value)
    if p.min_len is not None and p.max_len is not None and not p.min_len <= n <= p.max_len:
        want = str(p.min_len) if p.min_len == p.max_len else f"{p.min_len} to {p.max_len}"
        return f"value {value!r} has {n} characters, pattern {pattern!r} wants {want}"
    if n == 0:
        return f"empty value, pattern {pattern!r} wants one"
    char_re, name = CLASSES[p.cls]
    one = re.compile(char_re, re.DOTALL)
    for pos, ch in enumerate(value):
        if not one.fullmatch(ch):
            return (f"value {value!r}: character {ch!r} at position {pos + 1} is not "
                    f"{name} (pattern {pattern!r})")
    if p.literal:
        if p.prefix and not value.startswith(p.literal):
            return f"value {value!r} does not start with {p.literal!r} (pattern {pattern!r})"
        if not p.prefix and value != p.literal:
            return f"value {value!r} is not {p.literal!r} (pattern {pattern!r})"
    return None
