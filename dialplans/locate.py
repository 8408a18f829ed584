"""Where a field of a TOML document is written: the line an error message should name.

Theory of operation
-------------------
``tomllib`` returns plain dicts and forgets where each value came from, so an error found
after parsing (a pydantic validation error, an unknown transfer target) cannot say which
line is at fault. This module scans the TOML text once and records, for every table header
and every ``key = value`` assignment, the field path it defines and the lines its value
spans::

    [agent]                      ("agent",)                      line 3
    voice = "nova"               ("agent", "voice")              line 4
    [[webhook]]                  ("webhook", 0)                  line 9
    [webhook.parameters]         ("webhook", 0, "parameters")    line 14

Paths use the same shape as pydantic's error ``loc``: strings for keys, integers for
array-of-tables indices. ``line_of(path)`` falls back to the nearest recorded ancestor (a
key inside an inline table, an element of an array, a missing key of a table), so every
path gets the most precise line the text allows. When a value is given, the element of an
array (or a key of an inline table) is searched for inside the value's own lines.

The scanner is a small lexer, not a TOML parser: it only has to tell strings, comments and
brackets apart so that text inside a multi-line string or array is never taken for a key.
The document has already parsed with ``tomllib`` when this runs, so it is valid TOML.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Path = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Span:
    """Lines (1-based, inclusive) a header or an assignment occupies."""

    first: int
    last: int


def _parse_key(text: str, pos: int) -> tuple[list[str], int]:
    """Parse a (dotted, possibly quoted) key at ``pos``; return its parts and the end."""
    parts: list[str] = []
    n = len(text)
    while True:
        while pos < n and text[pos] in " \t":
            pos += 1
        if pos >= n:
            break
        ch = text[pos]
        if ch == '"':
            end = pos + 1
            buf: list[str] = []
            while end < n and text[end] != '"':
                if text[end] == "\\" and end + 1 < n:
                    buf.append(_unescape(text[end:end + 2]))
                    end += 2
                    continue
                buf.append(text[end])
                end += 1
            parts.append("".join(buf))
            pos = end + 1
        elif ch == "'":
            end = text.find("'", pos + 1)
            end = n if end < 0 else end
            parts.append(text[pos + 1:end])
            pos = end + 1
        else:
            m = _BARE_KEY.match(text, pos)
            if m is None:
                break
            parts.append(m.group(0))
            pos = m.end()
        while pos < n and text[pos] in " \t":
            pos += 1
        if pos < n and text[pos] == ".":
            pos += 1
            continue
        break
    return parts, pos


def _unescape(seq: str) -> str:
    return {"\\n": "\n", "\\t": "\t", '\\"': '"', "\\\\": "\\"}.get(seq, seq[1:])


class TomlLocator:
    """Maps field paths of one TOML document to the lines that define them."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self._spans: dict[Path, Span] = {}
        self._array_index: dict[Path, int] = {}
        self._scan()

    # -- public -------------------------------------------------------------------------

    def span(self, path: Path) -> Span | None:
        """The exact span recorded for ``path``, or None."""
        return self._spans.get(tuple(path))

    def line_of(self, path: Path, value: object = None) -> int:
        """Best line for ``path``: exact, else the nearest ancestor; 1 if nothing matches.

        ``value`` (the offending value, when known) refines an ancestor match: a string
        element of a multi-line array, or a key inside an inline table, is looked for in
        the ancestor's own lines.
        """
        path = tuple(path)
        for cut in range(len(path), -1, -1):
            span = self._spans.get(path[:cut])
            if span is None:
                continue
            if cut < len(path):
                refined = self._refine(span, path[cut:], value)
                if refined is not None:
                    return refined
            return span.first
        return 1

    # -- scanning -----------------------------------------------------------------------

    def _refine(self, span: Span, rest: Path, value: object) -> int | None:
        """Inside ``span``, find the line that writes ``value`` or the first key of ``rest``."""
        needles: list[re.Pattern[str]] = []
        if isinstance(value, str) and value:
            needles.append(re.compile(r"[\"']" + re.escape(value) + r"[\"']"))
        first = rest[0]
        if isinstance(first, str):
            needles.append(re.compile(r"(^|[{,\s])[\"']?" + re.escape(first) + r"[\"']?\s*="))
        for needle in needles:
            for lineno in range(span.first, span.last + 1):
                if needle.search(self._code(lineno)):
                    return lineno
        return None

    def _code(self, lineno: int) -> str:
        return self.lines[lineno - 1] if 0 < lineno <= len(self.lines) else ""

    def _resolve(self, parts: list[str]) -> Path:
        """Turn header parts into a path, inserting the current index of each array table."""
        path: list[str | int] = []
        for part in parts:
            path.append(part)
            index = self._array_index.get(tuple(path))
            if index is not None:
                path.append(index)
        return tuple(path)

    def _scan(self) -> None:
        table: Path = ()
        lineno = 0
        total = len(self.lines)
        while lineno < total:
            lineno += 1
            raw = self.lines[lineno - 1]
            stripped = raw.lstrip()
            if not stripped or stripped.startswith("#"):
                continue
            if stripped.startswith("[["):
                parts, _ = _parse_key(stripped, 2)
                parent = self._resolve(parts[:-1])
                key = (*parent, parts[-1]) if parts else parent
                index = self._array_index.get(key, -1) + 1
                self._array_index[key] = index
                table = (*key, index)
                self._spans.setdefault(key, Span(lineno, lineno))
                self._spans[table] = Span(lineno, lineno)
                continue
            if stripped.startswith("["):
                parts, _ = _parse_key(stripped, 1)
                table = self._resolve(parts)
                # [a.b.c] also defines a and a.b when nothing did before.
                for cut in range(1, len(table)):
                    self._spans.setdefault(table[:cut], Span(lineno, lineno))
                self._spans[table] = Span(lineno, lineno)
                continue
            parts, pos = _parse_key(stripped, 0)
            if not parts or pos >= len(stripped) or stripped[pos] != "=":
                continue
            last = self._value_end(lineno, len(raw) - len(stripped) + pos + 1)
            path = table
            for depth, part in enumerate(parts, start=1):
                path = (*path, part)
                if depth < len(parts):
                    self._spans.setdefault(path, Span(lineno, last))
            self._spans[path] = Span(lineno, last)
            lineno = last

    def _value_end(self, lineno: int, col: int) -> int:
        """Last line of the value that starts at (``lineno``, ``col``)."""
        depth = 0
        in_str: str | None = None       # the delimiter of the string we are inside
        total = len(self.lines)
        while True:
            text = self.lines[lineno - 1]
            i = col
            n = len(text)
            while i < n:
                if in_str is not None:
                    if in_str in ('"', '"""') and text[i] == "\\":
                        i += 2
                        continue
                    if text.startswith(in_str, i):
                        i += len(in_str)
                        in_str = None
                        continue
                    i += 1
                    continue
                ch = text[i]
                if ch == "#":
                    break
                if text.startswith('"""', i) or text.startswith("'''", i):
                    in_str = text[i:i + 3]
                    i += 3
                    continue
                if ch in "\"'":
                    in_str = ch
                    i += 1
                    continue
                if ch in "[{":
                    depth += 1
                elif ch in "]}":
                    depth -= 1
                i += 1
            if in_str in ('"', "'"):
                in_str = None            # a single-line string cannot continue: valid TOML
            if (depth <= 0 and in_str is None) or lineno >= total:
                return lineno
            lineno += 1
            col = 0
