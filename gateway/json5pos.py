"""Where things are in a JSON5 text: line:col of every key and value, and duplicate keys.

pyjson5 parses settings.json but reports no positions for what it parsed and silently keeps the
last of two duplicate keys. This scanner walks the same text and records, for every key path
(``("oip", "tcp", "listen_port")``; list items are ints: ``("oip", "tcp", "allowed_peers", 2)``),
where its key and its value start, so that every settings problem can name its line:col.

It is deliberately lenient about the *values* (pyjson5 stays the judge of validity) and never
raises: on text it cannot follow it stops, keeps what it found and records the offset and a
short description in ``ScanResult.error``. Positions are 1-based; a column counts characters
(code points), a line ends at ``\\n``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

KeyPath = tuple[str | int, ...]

MAX_DEPTH = 200  # deeper nesting is not a settings file; stop rather than recurse further

_PUNCT = frozenset(':,{}[]"\'/')
_SIMPLE_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "0": "\0"}
_LINE_TERMINATORS = frozenset("\n\r\u2028\u2029")
_HEX = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True, order=True)
class Pos:
    """A 1-based line and column."""

    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.line}:{self.col}"


@dataclass(frozen=True)
class Entry:
    """Where one member's key (None for list items and the top level) and value start."""

    key: Pos | None
    value: Pos


@dataclass(frozen=True)
class Duplicate:
    """A key given twice in one object: ``second`` is the one pyjson5 keeps."""

    path: KeyPath
    first: Pos
    second: Pos


@dataclass
class ScanResult:
    entries: dict[KeyPath, Entry] = field(default_factory=dict)
    duplicates: list[Duplicate] = field(default_factory=list)
    error: tuple[int, str] | None = None  # (offset, what) of the first thing it could not follow
    end: int = 0  # offset of the first character after the top-level value and trailing blanks


class _Stop(Exception):
    """Internal: the scanner cannot go on."""


class LineIndex:
    """Offset -> Pos conversion for one text."""

    def __init__(self, text: str) -> None:
        self._starts = [0]
        for i, ch in enumerate(text):
            if ch == "\n":
                self._starts.append(i + 1)
        self._len = len(text)

    def pos(self, offset: int) -> Pos:
        offset = max(0, min(offset, self._len))
        lo, hi = 0, len(self._starts) - 1
        while lo < hi:  # last line start <= offset
            mid = (lo + hi + 1) // 2
            if self._starts[mid] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return Pos(lo + 1, offset - self._starts[lo] + 1)


def line_col(text: str, offset: int) -> Pos:
    """The 1-based line:col of a 0-based character offset (clamped into the text)."""
    return LineIndex(text).pos(offset)


def scan(text: str) -> ScanResult:
    """Scan a JSON5 text; never raises (see ScanResult.error)."""
    return _Scanner(text).run()


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.lines = LineIndex(text)
        self.result = ScanResult()
        self.key_offsets: dict[KeyPath, int] = {}

    # ------------------------------------------------------------------ driver

    def run(self) -> ScanResult:
        try:
            self.blank()
            if self.i >= len(self.text):
                self.fail("no JSON data found")
            self.value((), None, 0)
            self.blank()
            self.result.end = self.i
        except _Stop:
            pass
        except RecursionError:  # defensive: MAX_DEPTH keeps us far from the limit
            self.result.error = (self.i, "nesting too deep")
        return self.result

    def fail(self, what: str, offset: int | None = None) -> None:
        self.result.error = (self.i if offset is None else offset, what)
        raise _Stop

    # ------------------------------------------------------------------ blanks and comments

    def blank(self) -> None:
        text, n = self.text, len(self.text)
        while self.i < n:
            ch = text[self.i]
            if ch.isspace() or ch == "\ufeff":
                self.i += 1
            elif text.startswith("//", self.i):
                self.i += 2
                while self.i < n and text[self.i] not in _LINE_TERMINATORS:
                    self.i += 1
            elif text.startswith("/*", self.i):
                close = text.find("*/", self.i + 2)
                if close < 0:
                    self.fail("unclosed comment")
                self.i = close + 2
            else:
                return

    # ------------------------------------------------------------------ values

    def value(self, path: KeyPath, key_offset: int | None, depth: int) -> None:
        if depth > MAX_DEPTH:
            self.fail("nesting too deep")
        start = self.i
        self.result.entries[path] = Entry(
            None if key_offset is None else self.lines.pos(key_offset), self.lines.pos(start))
        ch = self.text[start] if start < len(self.text) else ""
        if ch == "{":
            self.obj(path, depth)
        elif ch == "[":
            self.array(path, depth)
        elif ch and ch in "\"'":
            self.string()
        elif ch and ch not in _PUNCT and not ch.isspace():
            self.atom()
        else:
            self.fail("expected a value")

    def obj(self, path: KeyPath, depth: int) -> None:
        self.i += 1  # {
        while True:
            self.blank()
            if self.peek() == "}":
                self.i += 1
                return
            key_offset = self.i
            key = self.key()
            self.blank()
            if self.peek() != ":":
                self.fail("expected ':' after a key")
            self.i += 1
            self.blank()
            child = (*path, key)
            if child in self.key_offsets:
                self.result.duplicates.append(Duplicate(
                    child, self.lines.pos(self.key_offsets[child]), self.lines.pos(key_offset)))
                self.forget(child)  # the second value replaces the first, subtree and all
            self.key_offsets[child] = key_offset
            self.value(child, key_offset, depth + 1)
            self.blank()
            ch = self.peek()
            if ch == ",":
                self.i += 1
            elif ch == "}":
                self.i += 1
                return
            else:
                self.fail("expected ',' or '}'")

    def array(self, path: KeyPath, depth: int) -> None:
        self.i += 1  # [
        index = 0
        while True:
            self.blank()
            if self.peek() == "]":
                self.i += 1
                return
            self.value((*path, index), None, depth + 1)
            index += 1
            self.blank()
            ch = self.peek()
            if ch == ",":
                self.i += 1
            elif ch == "]":
                self.i += 1
                return
            else:
                self.fail("expected ',' or ']'")

    def forget(self, prefix: KeyPath) -> None:
        n = len(prefix)
        for table in (self.result.entries, self.key_offsets):
            for p in [p for p in table if p[:n] == prefix]:
                del table[p]

    def peek(self) -> str:
        return self.text[self.i] if self.i < len(self.text) else ""

    # ------------------------------------------------------------------ tokens

    def key(self) -> str:
        ch = self.peek()
        if ch in ("\"", "'") and ch:
            return self.string()
        start = self.i
        text, n = self.text, len(self.text)
        while self.i < n and text[self.i] not in _PUNCT and not text[self.i].isspace():
            self.i += 2 if text[self.i] == "\\" else 1
        self.i = min(self.i, n)
        if self.i == start:
            self.fail("expected a key")
        return _unescape(text[start:self.i])

    def string(self) -> str:
        """Scan a quoted string at self.i and return its decoded content."""
        text, n = self.text, len(self.text)
        quote, start = text[self.i], self.i
        self.i += 1
        while self.i < n:
            ch = text[self.i]
            if ch == "\\":
                if text.startswith("\r\n", self.i + 1):
                    self.i += 1  # \ CR LF is one line continuation
                self.i += 2
            elif ch == quote:
                self.i += 1
                return _unescape(text[start + 1:self.i - 1])
            else:
                self.i += 1
        self.fail("unclosed string", start)
        return ""  # unreachable (fail raises)

    def atom(self) -> None:
        """A number or a literal (true, false, null, Infinity, NaN) - pyjson5 checks which."""
        text, n = self.text, len(self.text)
        if text[self.i] in "+-":
            self.i += 1
        while self.i < n:
            ch = text[self.i]
            if ch in "+-" and text[self.i - 1] in "eE":
                self.i += 1
            elif ch.isalnum() or ch in "._":
                self.i += 1
            else:
                return


def _unescape(raw: str) -> str:
    """Decode JSON5 escapes as pyjson5 does (unknown escapes stand for the character itself)."""
    if "\\" not in raw:
        return raw
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        ch = raw[i]
        if ch != "\\" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        esc = raw[i + 1]
        i += 2
        if esc in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[esc])
        elif esc in "xu":
            width = 2 if esc == "x" else 4
            code = _hex(raw[i:i + width], width)
            if code is None:
                out.append(esc)
                continue
            i += width
            if 0xD800 <= code < 0xDC00 and raw.startswith("\\u", i):  # surrogate pair
                low = _hex(raw[i + 2:i + 6], 4)
                if low is not None and 0xDC00 <= low < 0xE000:
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    i += 6
            out.append(chr(code))
        elif esc == "\r":
            if raw.startswith("\n", i):
                i += 1
        elif esc in _LINE_TERMINATORS:
            pass  # line continuation
        else:
            out.append(esc)
    return "".join(out)


def _hex(digits: str, width: int) -> int | None:
    if len(digits) != width or any(c not in _HEX for c in digits):
        return None
    return int(digits, 16)
