"""The trend chart of a progression card: a small accessible SVG, written by hand (no plotting library).

:func:`parse_query` reads and bounds the chart's query (numbers and dates only: see
:func:`cds.trend.chart_query`), raising :class:`ChartQueryError` naming the parameter; :func:`render`
draws it with the rule set's labels (``texts.trend``), memoised (LRU) by (query, labels). Every
piece of text in the SVG is either a number or date parsed here, or a rule-file label escaped for XML,
so nothing in a query can inject markup. Pure core: no Flask.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from html import escape

from .errors import CdsError
from .ruleset.schema import TREND_MAX_SESSIONS, TrendTexts

__all__ = ["ALLOWED", "ChartData", "ChartQueryError", "MAX_ROUNDS", "parse_query", "render"]

#: the query parameters the chart accepts (anything else is an error)
ALLOWED = ("d", "g", "r", "p", "lo", "hi", "gate")
MAX_ROUNDS = 8  # rounds per session in one chart
MAX_REPS = 999
MAX_RUNG = 99
MAX_QUERY_CHARS = 1024

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_NUMBER = re.compile(r"[0-9]{1,3}(?:\.[0-9])?")
_RUNG = re.compile(r"[0-9]{1,2}")


class ChartQueryError(CdsError, ValueError):
    """A chart query that is not accepted; ``parameter`` names the culprit."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter
        self.message = message


@dataclass(frozen=True, slots=True)
class ChartData:
    dates: tuple[dt.date, ...]
    rungs: tuple[int | None, ...]
    reps: tuple[tuple[float, ...], ...]
    pain: tuple[float | None, ...]
    lo: float | None = None
    hi: float | None = None
    gate: float | None = None


def _number(text: str, parameter: str, high: float) -> float:
    if not _NUMBER.fullmatch(text):
        raise ChartQueryError(parameter, "expected a number (digits, at most one decimal)")
    value = float(text)
    if value > high:
        raise ChartQueryError(parameter, f"a value is above {high:g}")
    return value


def _split(args: Mapping[str, Sequence[str]], parameter: str, count: int | None) -> list[str] | None:
    values = args.get(parameter)
    if not values:
        return None
    if len(values) != 1:
        raise ChartQueryError(parameter, "given more than once")
    parts = values[0].split(",")
    if count is not None and len(parts) != count:
        raise ChartQueryError(parameter, f"expected {count} values, one per date (d)")
    return parts


def parse_query(args: Mapping[str, Sequence[str]], query_chars: int = 0) -> ChartData:
    """The chart of a query (``parameter -> values``, as parsed from the URL); raises
    :class:`ChartQueryError` naming the first parameter that is unknown, repeated, malformed, out of
    bounds or of the wrong length. ``query_chars``: the raw query string's length (bounded)."""
    if query_chars > MAX_QUERY_CHARS:
        raise ChartQueryError("query", f"longer than {MAX_QUERY_CHARS} characters")
    for name in args:
        if name not in ALLOWED:
            raise ChartQueryError(name, f"unknown parameter (allowed: {', '.join(ALLOWED)})")
    raw_dates = _split(args, "d", None)
    if raw_dates is None:
        raise ChartQueryError("d", "required: the session dates, YYYY-MM-DD separated by ','")
    if len(raw_dates) > TREND_MAX_SESSIONS:
        raise ChartQueryError("d", f"at most {TREND_MAX_SESSIONS} sessions")
    dates = []
    for text in raw_dates:
        try:
            if not _DATE.fullmatch(text):
                raise ValueError
            dates.append(dt.date.fromisoformat(text))
        except ValueError:
            raise ChartQueryError("d", "expected dates YYYY-MM-DD separated by ','") from None
    n = len(dates)
    raw_reps = _split(args, "r", n)
    if raw_reps is None:
        raise ChartQueryError("r", "required: the reps per round of each session")
    reps = []
    for session in raw_reps:
        rounds = session.split("_")
        if len(rounds) > MAX_ROUNDS:
            raise ChartQueryError("r", f"at most {MAX_ROUNDS} rounds per session")
        reps.append(() if session == "" else tuple(_number(v, "r", MAX_REPS) for v in rounds))
    raw_rungs = _split(args, "g", n)
    rungs: tuple[int | None, ...] = (None,) * n
    if raw_rungs is not None:
        for text in raw_rungs:
            if not _RUNG.fullmatch(text) or not 1 <= int(text) <= MAX_RUNG:
                raise ChartQueryError("g", f"expected rung numbers 1-{MAX_RUNG}")
        rungs = tuple(int(t) for t in raw_rungs)
    raw_pain = _split(args, "p", n)
    pain: tuple[float | None, ...] = (None,) * n
    if raw_pain is not None:
        pain = tuple(None if t == "-" else _number(t, "p", 10) for t in raw_pain)
    bounds: dict[str, float | None] = {}
    for name, high in (("lo", MAX_REPS), ("hi", MAX_REPS), ("gate", 10)):
        values = _split(args, name, 1)
        bounds[name] = _number(values[0], name, high) if values is not None else None
    lo, hi = bounds["lo"], bounds["hi"]
    if lo is not None and hi is not None and lo > hi:
        raise ChartQueryError("lo", "above hi")
    return ChartData(tuple(dates), rungs, tuple(reps), pain, lo, hi, bounds["gate"])


# ------------------------------------------------------------------------------------------------
# Drawing
# ------------------------------------------------------------------------------------------------

WIDTH, HEIGHT = 560, 250
LEFT, RIGHT, TOP, BOTTOM = 52, 52, 28, 196  # the plot area: x from LEFT to WIDTH-RIGHT, y from TOP to BOTTOM
REPS_COLOUR = "#1f4e9c"
PAIN_COLOUR = "#a3361f"
TEXT_COLOUR = "#222222"
TARGET_FILL = "#2e7d32"
GATE_FILL = "#e0a100"


def _fmt(value: float) -> str:
    """A coordinate or label number: one decimal at most."""
    rounded = round(value, 1)
    return str(int(rounded)) if rounded == int(rounded) else f"{rounded:.1f}"


def _reps_top(data: ChartData) -> float:
    highest = max((v for session in data.reps for v in session), default=0.0)
    top = max(highest * 1.1, (data.hi or 0) * 1.3, 10.0)
    return float(-(-top // 5) * 5)  # up to a multiple of 5


def _text(x: float, y: float, text: str, *, anchor: str = "middle", size: int = 11, colour: str = TEXT_COLOUR,
          extra: str = "") -> str:
    return (f'<text x="{_fmt(x)}" y="{_fmt(y)}" font-size="{size}" text-anchor="{anchor}" fill="{colour}"'
            f'{extra}>{escape(text)}</text>')


@lru_cache(maxsize=512)
def render(data: ChartData, labels: TrendTexts) -> str:
    """The SVG document of ``data`` with ``labels`` (memoised: the same query and labels give the
    same string object)."""
    n = len(data.dates)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, BOTTOM - TOP
    reps_top = _reps_top(data)

    def x_of(i: int) -> float:
        return LEFT + plot_w / 2 if n == 1 else LEFT + 40 + i * (plot_w - 80) / (n - 1)

    def y_reps(v: float) -> float:
        return BOTTOM - min(v, reps_top) / reps_top * plot_h

    def y_pain(v: float) -> float:
        return BOTTOM - v / 10 * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-labelledby="trend-title trend-desc" font-family="sans-serif">',
        f'<title id="trend-title">{escape(labels.chart_title)}</title>',
        f'<desc id="trend-desc">{escape(labels.chart_desc)}</desc>',
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
    ]
    if data.lo is not None and data.hi is not None:
        y1, y2 = y_reps(data.hi), y_reps(data.lo)
        parts.append(f'<rect class="band-target" x="{LEFT}" y="{_fmt(y1)}" width="{plot_w}" height="{_fmt(y2 - y1)}" '
                     f'fill="{TARGET_FILL}" fill-opacity="0.14"/>')
    if data.gate is not None:
        y1 = y_pain(data.gate)
        parts.append(f'<rect class="band-pain" x="{LEFT}" y="{_fmt(y1)}" width="{plot_w}" '
                     f'height="{_fmt(BOTTOM - y1)}" fill="{GATE_FILL}" fill-opacity="0.16"/>')
    # axes and ticks: reps on the left, pain (0-10) on the right
    parts.append(f'<path d="M{LEFT} {TOP}V{BOTTOM}H{WIDTH - RIGHT}V{TOP}" fill="none" stroke="#555555"/>')
    reps_ticks = sorted({0.0, reps_top, *(v for v in (data.lo, data.hi) if v is not None)})
    for v in reps_ticks:
        parts.append(_text(LEFT - 6, y_reps(v) + 4, _fmt(v), anchor="end", size=10, colour=REPS_COLOUR))
    for v in sorted({0.0, 10.0, *(() if data.gate is None else (data.gate,))}):
        parts.append(_text(WIDTH - RIGHT + 6, y_pain(v) + 4, _fmt(v), anchor="start", size=10, colour=PAIN_COLOUR))
    mid = (TOP + BOTTOM) / 2
    parts.append(_text(14, mid, labels.axis_reps, size=10, colour=REPS_COLOUR,
                       extra=f' transform="rotate(-90 14 {_fmt(mid)})"'))
    parts.append(_text(WIDTH - 12, mid, labels.axis_pain, size=10, colour=PAIN_COLOUR,
                       extra=f' transform="rotate(90 {WIDTH - 12} {_fmt(mid)})"'))
    # sessions: date below, rung above, a dot per round, the highest pain joined by a dashed line
    short = n > 6
    pain_points = []
    for i, day in enumerate(data.dates):
        x = x_of(i)
        parts.append(_text(x, BOTTOM + 14, day.strftime("%m-%d") if short else day.isoformat(), size=10))
        rung = data.rungs[i]
        if rung is not None:
            parts.append(_text(x, TOP - 8, f"{labels.rung} {rung}", size=10))
        for j, v in enumerate(data.reps[i]):
            dx = (j - (len(data.reps[i]) - 1) / 2) * 7
            parts.append(f'<circle class="reps-point" cx="{_fmt(x + dx)}" cy="{_fmt(y_reps(v))}" r="4" '
                         f'fill="{REPS_COLOUR}"/>')
        pain = data.pain[i]
        if pain is not None:
            pain_points.append((x, y_pain(pain)))
    if len(pain_points) > 1:
        path = " ".join(f"{_fmt(x)},{_fmt(y)}" for x, y in pain_points)
        parts.append(f'<polyline class="pain-line" points="{path}" fill="none" stroke="{PAIN_COLOUR}" '
                     f'stroke-width="2" stroke-dasharray="5 3"/>')
    for x, y in pain_points:
        parts.append(f'<rect class="pain-point" x="{_fmt(x - 4)}" y="{_fmt(y - 4)}" width="8" height="8" '
                     f'fill="{PAIN_COLOUR}"/>')
    # legend
    y = HEIGHT - 18
    items = [
        (f'<circle cx="{{x}}" cy="{y - 4}" r="4" fill="{REPS_COLOUR}"/>', labels.legend_reps),
        (f'<rect x="{{x0}}" y="{y - 8}" width="8" height="8" fill="{PAIN_COLOUR}"/>', labels.legend_pain),
    ]
    if data.lo is not None and data.hi is not None:
        items.append((f'<rect x="{{x0}}" y="{y - 9}" width="12" height="10" fill="{TARGET_FILL}" fill-opacity="0.3"/>',
                      labels.legend_target))
    if data.gate is not None:
        items.append((f'<rect x="{{x0}}" y="{y - 9}" width="12" height="10" fill="{GATE_FILL}" fill-opacity="0.35"/>',
                      labels.legend_gate))
    step = (WIDTH - 2 * LEFT) / len(items)
    for k, (mark, label) in enumerate(items):
        x0 = LEFT + k * step
        parts.append(mark.format(x=_fmt(x0 + 4), x0=_fmt(x0)))
        parts.append(_text(x0 + 16, y, label, anchor="start", size=10))
    parts.append("</svg>")
    return "\n".join(parts)
