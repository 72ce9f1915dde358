"""Formatting of the feedback report (``cds report``): a fixed-width table or JSON. Pure functions."""

from __future__ import annotations

import json
from collections.abc import Sequence

from .storage.store import ReportRow

COLUMNS = ("rule", "ruleset version", "shown", "accepted", "overridden", "acceptance", "top override reasons")
NUMERIC = {"shown", "accepted", "overridden", "acceptance"}
TOP_REASONS = 3
MAX_REASONS_WIDTH = 60


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.0f}%"


def _reasons(row: ReportRow) -> str:
    if not row.override_reasons:
        return "-"
    parts = [f"{r.label} ({r.count})" for r in row.override_reasons[:TOP_REASONS]]
    rest = len(row.override_reasons) - TOP_REASONS
    if rest > 0:
        parts.append(f"+{rest} more")
    text = ", ".join(parts)
    return text if len(text) <= MAX_REASONS_WIDTH else text[: MAX_REASONS_WIDTH - 1] + "…"


def _version(row: ReportRow) -> str:
    return row.ruleset_version if row.ruleset_name in ("", row.ruleset_version) else f"{row.ruleset_name} {row.ruleset_version}"


def format_table(rows: Sequence[ReportRow]) -> str:
    if not rows:
        return "No cards or feedback recorded in this period.\n"
    body = [
        (
            r.rule_id,
            _version(r),
            str(r.shown),
            str(r.accepted),
            str(r.overridden),
            _rate(r.acceptance_rate),
            _reasons(r),
        )
        for r in rows
    ]
    total = (
        "total",
        "",
        str(sum(r.shown for r in rows)),
        str(sum(r.accepted for r in rows)),
        str(sum(r.overridden for r in rows)),
        _rate(_total_rate(rows)),
        "",
    )
    widths = [max(len(c), *(len(line[i]) for line in [*body, total])) for i, c in enumerate(COLUMNS)]

    def fmt(cells: Sequence[str]) -> str:
        out = []
        for i, (cell, width) in enumerate(zip(cells, widths, strict=True)):
            out.append(cell.rjust(width) if COLUMNS[i] in NUMERIC else cell.ljust(width))
        return "  ".join(out).rstrip()

    lines = [fmt(COLUMNS), fmt(["-" * w for w in widths])]
    lines += [fmt(line) for line in body]
    lines += [fmt(["-" * w for w in widths]), fmt(total)]
    lines.append("")
    lines.append("acceptance = accepted / (accepted + overridden), each card counted once by its latest outcome")
    return "\n".join(lines) + "\n"


def _total_rate(rows: Sequence[ReportRow]) -> float | None:
    acc = sum(r.accepted for r in rows)
    answered = acc + sum(r.overridden for r in rows)
    return None if answered == 0 else acc / answered


def format_json(rows: Sequence[ReportRow]) -> str:
    return json.dumps({"rows": [r.to_dict() for r in rows]}, indent=2, ensure_ascii=False) + "\n"


def format_report(rows: Sequence[ReportRow], fmt: str = "table") -> str:
    if fmt == "table":
        return format_table(rows)
    if fmt == "json":
        return format_json(rows)
    raise ValueError(f"unknown report format {fmt!r} (expected 'table' or 'json')")
