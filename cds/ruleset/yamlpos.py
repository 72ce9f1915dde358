"""YAML loading that remembers where every key and value is, so errors can name file:line:column."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

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


class YamlSyntaxError(ValueError):
    def __init__(self, message: str, mark: Mark):
        super().__init__(message)
        self.message = message
        self.mark = mark


def load(text: str) -> PositionedYaml:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        m = e.problem_mark or e.context_mark
        msg = e.problem or e.context or "invalid YAML"
        if e.context and e.problem:
            c = e.context_mark
            where = f" that starts at line {c.line + 1}, column {c.column + 1}" if c is not None else ""
            msg += f" ({e.context}{where})"
        raise YamlSyntaxError(f"YAML syntax error: {msg}", Mark(m.line + 1, m.column + 1) if m else Mark(1, 1)) from None
    except yaml.YAMLError as e:  # pragma: no cover - non-marked YAML errors are rare
        raise YamlSyntaxError(f"YAML error: {e}", Mark(1, 1)) from None
    out = PositionedYaml(data)
    if node is not None:
        _walk(node, (), out)
    return out


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
