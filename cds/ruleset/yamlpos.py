"""YAML loading that remembers where every key and value is, so errors can name file:line:column."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import CdsError

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Mark:
    line: int  # 1-based
    column: int  # 1-based


@dataclass
class PositionedYaml:
    data: Any
    values: dict[Path, Mark] = field(default_factory=dict)  # where each value starts
    keys: dict[Path, Mark] = field(default_factory=dict)  # where each mapping key starts
    scalars: dict[Path, yaml.ScalarNode] = field(default_factory=dict)
    duplicates: list[tuple[Path, Mark]] = field(default_factory=list)

    def mark(self, path: Path, *, key: bool = False) -> Mark:
        """The position of ``path``, or of its nearest ancestor that exists."""
        table = self.keys if key else self.values
        for n in range(len(path), -1, -1):
            p = path[:n]
            if p in table:
                return table[p]
            if p in self.values:
                return self.values[p]
        return Mark(1, 1)


class YamlSyntaxError(CdsError, ValueError):
    def __init__(self, message: str, mark: Mark):
        super().__init__(message)
        self.message = message
        self.mark = mark


def load(text: str) -> PositionedYaml:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        message, mark = explain(text, e)
        raise YamlSyntaxError(message, mark) from None
    except yaml.YAMLError as e:  # pragma: no cover - non-marked YAML errors are rare
        raise YamlSyntaxError(f"YAML error: {e}", Mark(1, 1)) from None
    except RecursionError:  # pragma: no cover - absurdly deep nesting
        raise YamlSyntaxError("YAML error: the nesting is too deep", Mark(1, 1)) from None
    out = PositionedYaml(data)
    if node is not None:
        _walk(node, (), out)
    return out


# -- YAML mistakes in plain words ------------------------------------------------------------------

_BLOCK_SCALAR = re.compile(r":\s*[|>][-+0-9]*\s*(#.*)?$")


def explain(text: str, e: yaml.MarkedYAMLError) -> tuple[str, Mark]:
    """A PyYAML error as a rule author's mistake: a tab used for indentation, a wrong indentation
    (how many spaces vs how many expected), an unclosed quote; else PyYAML's own words."""
    m = e.problem_mark or e.context_mark
    lines = text.split("\n")
    line = m.line if m else 0  # 0-based
    for n in (line, line - 1):  # the tab is on the line PyYAML stops at (or a block ends just before it)
        if 0 <= n < len(lines):
            lead = lines[n][: len(lines[n]) - len(lines[n].lstrip(" \t"))]
            if "\t" in lead:
                return (("a tab character is used for indentation; indent with spaces only (YAML does not "
                        "allow tabs)"), Mark(n + 1, lead.index("\t") + 1))
    if e.context == "while scanning a quoted scalar" and e.context_mark is not None:
        c = e.context_mark
        quote = lines[c.line][c.column] if c.line < len(lines) and c.column < len(lines[c.line]) else '"'
        return (f"unclosed quote: the {quote} that starts here has no closing {quote}", Mark(c.line + 1, c.column + 1))
    explained = _unclosed_quote(lines, line) or _text_after_quote(lines, e)
    if explained:
        return explained
    indentation = _indentation(lines, line, e)
    if indentation:
        return indentation
    if e.context == "while scanning a simple key" and e.context_mark is not None:
        c = e.context_mark
        return (("this line is not 'key: value' (a ':' is missing, or text that continues the value above "
                "is indented less than that value)"), Mark(c.line + 1, c.column + 1))
    msg = e.problem or e.context or "invalid YAML"
    if e.context and e.problem:
        cm = e.context_mark
        where = f" that starts at line {cm.line + 1}, column {cm.column + 1}" if cm is not None else ""
        msg += f" ({e.context}{where})"
    if e.problem == "mapping values are not allowed here":
        msg += "; a value that contains ': ' must be in quotes"
    return f"YAML syntax error: {msg}", Mark(m.line + 1, m.column + 1) if m else Mark(1, 1)


def _unclosed_quote(lines: list[str], upto: int) -> tuple[str, Mark] | None:
    """The first ``key: "text`` line (up to the error) whose quote does not close on that line: PyYAML
    reads on to the next quote in the file and fails further down, where the mistake is not."""
    for n in range(min(upto + 1, len(lines))):
        match = re.match(r"^\s*(?:- )?[\w-]+:\s+(['\"])", lines[n])
        if not match:
            continue
        quote, start = match[1], match.end() - 1
        rest = lines[n][start + 1 :]
        closed = rest.replace("''", "") if quote == "'" else re.sub(r"\\.", "", rest)
        if quote not in closed:
            return f"unclosed quote: the {quote} that starts here has no closing {quote}", Mark(n + 1, start + 1)
    return None


def _text_after_quote(lines: list[str], e: yaml.MarkedYAMLError) -> tuple[str, Mark] | None:
    """``when: 'a' < 'b'``: a value that starts with a quote ends at the closing quote."""
    m = e.problem_mark
    if m is None or m.line >= len(lines) or not (e.problem or "").startswith("expected <block end>"):
        return None
    match = re.match(r"^\s*(?:- )?[\w-]+:\s+((['\"]).*?\2)\s*\S", lines[m.line])
    if not match or match.end(1) > m.column:
        return None
    return ((f"text after the closing quote: a value that starts with {match[2]} ends at the matching {match[2]}; "
            f"put the whole value in the other quotes (\"...\" or '...')"), Mark(m.line + 1, m.column + 1))


def _code_lines(lines: list[str], upto: int) -> list[tuple[int, int, int, str]]:
    """(line, indent, key column, key) of the mapping lines before ``upto``: not blank, not comments,
    not the content of a ``|``/``>`` block. The key column is after any ``- ``."""
    out = []
    block_indent = None
    for n in range(min(upto, len(lines))):
        raw = lines[n]
        stripped = raw.strip()
        indent = len(raw) - len(raw.lstrip(" "))
        if block_indent is not None:
            if not stripped or indent > block_indent:
                continue
            block_indent = None
        if not stripped or stripped.startswith("#"):
            continue
        key_column = indent
        body = raw[indent:]
        while body.startswith("- "):
            key_column += 2 + (len(body[2:]) - len(body[2:].lstrip(" ")))
            body = body[2:].lstrip(" ")
        key = re.match(r"[\w-]+(?=\s*:)", body)
        out.append((n, indent, key_column, key[0] if key else ""))
        if _BLOCK_SCALAR.search(raw):
            block_indent = indent
    return out


def _spaces(k: int) -> str:
    return f"{k} space{'s' if k != 1 else ''}"


def _indentation(lines: list[str], line: int, e: yaml.MarkedYAMLError) -> tuple[str, Mark] | None:
    """A key indented to no level of the mappings around it: say by how many spaces, and like which line."""
    if e.problem != "mapping values are not allowed here" and not (e.problem or "").startswith("expected <block end>"):
        return None
    if not 0 <= line < len(lines):
        return None
    raw = lines[line]
    indent = len(raw) - len(raw.lstrip(" "))
    item = raw[indent:].startswith("- ")
    key = re.match(r"\s*(?:- )?([\w-]+)\s*:", raw)
    if not key and not item:
        return None
    code = _code_lines(lines, line)
    if code and lines[code[-1][0]].rstrip().endswith(":") and indent > code[-1][2]:
        return None  # the first line of a new mapping under 'key:'
    # the levels open at this line: the line before, then each less-indented line above it
    levels: list[tuple[int, int, str]] = []  # (column, line, what)
    lowest = None
    for n, ind, key_column, name in reversed(code):
        if lowest is None or ind < lowest:
            dash = lines[n][ind:].startswith("- ")
            if item and dash:
                levels.append((ind, n, "the list item"))
            if name:
                levels.append((key_column, n, f"'{name}'"))
            lowest = ind
            if ind == 0:
                break
    if not levels or any(col == indent for col, _, _ in levels):
        return None
    col, n, what = min(levels, key=lambda lv: (abs(lv[0] - indent), -lv[0]))
    this = f"'{key[1]}'" if key and not item else "the list item"
    message = f"wrong indentation: {this} is indented {_spaces(indent)}, expected {_spaces(col)} (like {what} on line {n + 1})"
    return message, Mark(line + 1, indent + 1)


def _mark(node: yaml.Node) -> Mark:
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


def _walk(node: yaml.Node, path: Path, out: PositionedYaml) -> None:
    out.values[path] = _mark(node)
    if isinstance(node, yaml.ScalarNode):
        out.scalars[path] = node
    elif isinstance(node, yaml.SequenceNode):
        for i, child in enumerate(node.value):
            _walk(child, path + (i,), out)
    elif isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            child = path + (key,)
            if child in out.keys:
                out.duplicates.append((child, _mark(key_node)))
            out.keys[child] = _mark(key_node)
            _walk(value_node, child, out)


def scalar_column_mark(doc: PositionedYaml, path: Path, column: int) -> Mark:
    """Position of character ``column`` (0-based) inside the scalar at ``path``.

    Exact for plain and quoted one-line scalars; for block scalars (``|``, ``>``) it points at
    the first content line, where conditions and templates normally start.
    """
    node = doc.scalars.get(path)
    if node is None:
        return doc.mark(path)
    start = node.start_mark
    if node.style in ("|", ">"):
        # walk the content lines: each contributes its text after the indent plus one newline
        # (exact for literal blocks; for folded ones, exact unless blank lines precede the column)
        indent = _block_indent(start)
        lines = (start.buffer or "")[start.index :].split("\n")[1:]
        remaining = column
        for n, line in enumerate(lines):
            content = line[indent:] if line.strip() else ""
            if remaining <= len(content):
                return Mark(start.line + 2 + n, indent + remaining + 1)
            remaining -= len(content) + 1
        return Mark(start.line + 2, indent + column + 1)
    quote = 1 if node.style in ("'", '"') else 0
    return Mark(start.line + 1, start.column + quote + column + 1)


def _block_indent(start: yaml.Mark) -> int:
    buf = start.buffer or ""
    nl = buf.find("\n", start.index)
    if nl < 0:
        return 0
    line_end = buf.find("\n", nl + 1)
    line = buf[nl + 1 : line_end if line_end >= 0 else len(buf)]
    return len(line) - len(line.lstrip(" "))
