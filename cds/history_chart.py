"""The patient's session history and its chart: a hand-written SVG, no plotting library. Pure: no Flask.

:func:`sessions` reads every session from the extracted facts (``PatientFacts.sessions``: the same
codes, statuses, validation and pain linking as the decision), so each date gives the session that
would have decided on it (the highest rung that day).
:func:`render_svg` draws them:

* reps per round (``rect.round-point``) over the target range ``reps_low``..``reps_high`` (``rect.band-target``);
* the highest pain per session (``circle.session-point``, one per session; hollow at the axis when no
  pain was recorded) over the pain gate 0..``pain_gate_max`` (``rect.band-pain``);
* the rung as a step line (``path.rung-line``) on a lane of the ladder's rungs;
* the onset of low back pain (``line.onset-mark``) when it is known.

Every visible word comes from the rule files (the ``app`` section, the ladder's displays); every value is escaped.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from html import escape
from typing import Any

from .facts import PatientFacts
from .ruleset.model import RuleSet
from .templates import derived_parameters, fill, render_number

#: bounds the work on a very long history (the newest sessions are kept)
MAX_SESSIONS = 500


@dataclass(frozen=True)
class SessionPoint:
    date: dt.date
    exercise: str
    rung: int  # 0: the first rung
    reps: tuple[float, ...]
    max_pain: float | None


@dataclass(frozen=True)
class History:
    sessions: tuple[SessionPoint, ...]  # oldest first
    onset: dt.date | None


def sessions(facts: PatientFacts, ruleset: RuleSet) -> History:
    """Every session of the patient (oldest first; the newest ``MAX_SESSIONS``) and the onset of the
    condition that counts, from the extracted facts (:func:`cds.extract.extract`): the sessions are
    ``facts.sessions``, so the latest is the one the service decides from, with the same validation
    and pain linking."""
    rung_of = {code: i for i, code in enumerate(ruleset.document.ladder.codes)}
    found = tuple(
        SessionPoint(date=s.date, exercise=s.exercise, rung=rung_of[s.exercise], reps=tuple(s.reps),
                     max_pain=s.max_pain)
        for s in facts.sessions[-MAX_SESSIONS:]
    )
    return History(sessions=found, onset=facts.onset)


# -- the SVG ------------------------------------------------------------------------------------

WIDTH, LEFT, RIGHT = 720, 70, 20
REPS_TOP, REPS_BOTTOM = 40, 190
PAIN_TOP, PAIN_BOTTOM = 215, 305
RUNG_TOP, RUNG_BOTTOM = 330, 400
HEIGHT = 470
PAD = 36  # room inside the plot before the first and after the last session


def _x_scale(days: list[dt.date]) -> Any:
    lo, hi = min(days), max(days)
    span = max((hi - lo).days, 1)
    inner = WIDTH - LEFT - RIGHT - 2 * PAD

    def x(day: dt.date) -> float:
        if lo == hi:
            return LEFT + PAD + inner / 2
        return LEFT + PAD + inner * (day - lo).days / span

    return x


def _y(value: float, low: float, high: float, top: float, bottom: float) -> float:
    value = min(max(value, low), high)
    return bottom - (bottom - top) * (value - low) / (high - low if high > low else 1)


def _f(v: float) -> str:
    return f"{v:.1f}"


def render_svg(history: History, ruleset: RuleSet) -> str:
    """The chart as an SVG element (``svg#history-chart``), ready to embed in HTML."""
    doc = ruleset.document
    app = doc.app
    assert app is not None, "the app needs the rule set's app section"
    params = doc.parameters
    values = {k: render_number(v) for k, v in {**params, **derived_parameters(params)}.items()}
    t = {k: escape(fill(getattr(app, k), values)) for k in (
        "chart_title", "reps_axis", "pain_axis", "legend_reps", "legend_pain", "legend_rung", "legend_target",
        "legend_pain_gate", "legend_onset", "no_sessions")}
    low, high = float(params.get("reps_low", 0)), float(params.get("reps_high", 0))
    gate = float(params.get("pain_gate_max", 0))
    pts = history.sessions
    reps_max = max([high * 1.4, 10.0, *(r for s in pts for r in s.reps)])
    rungs = doc.ladder.rungs
    n = len(pts)
    out: list[str] = [
        f'<svg id="history-chart" role="img" data-sessions="{n}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="100%" aria-labelledby="history-chart-title" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="history-chart-title">{t["chart_title"]}</title>',
    ]
    # panels and bands (the bands are drawn even with no session: the targets are the rule set's)
    plot_l, plot_r = LEFT, WIDTH - RIGHT
    yb = _y(high, 0, reps_max, REPS_TOP, REPS_BOTTOM), _y(low, 0, reps_max, REPS_TOP, REPS_BOTTOM)
    out.append(f'<rect class="panel" x="{plot_l}" y="{REPS_TOP}" width="{plot_r - plot_l}" height="{REPS_BOTTOM - REPS_TOP}"/>')
    out.append(f'<rect class="band-target" x="{plot_l}" y="{_f(yb[0])}" width="{plot_r - plot_l}" '
               f'height="{_f(yb[1] - yb[0])}"><title>{t["legend_target"]}</title></rect>')
    yp = _y(gate, 0, 10, PAIN_TOP, PAIN_BOTTOM)
    out.append(f'<rect class="panel" x="{plot_l}" y="{PAIN_TOP}" width="{plot_r - plot_l}" height="{PAIN_BOTTOM - PAIN_TOP}"/>')
    out.append(f'<rect class="band-pain" x="{plot_l}" y="{_f(yp)}" width="{plot_r - plot_l}" '
               f'height="{_f(PAIN_BOTTOM - yp)}"><title>{t["legend_pain_gate"]}</title></rect>')
    out.append(f'<rect class="panel" x="{plot_l}" y="{RUNG_TOP}" width="{plot_r - plot_l}" height="{RUNG_BOTTOM - RUNG_TOP}"/>')
    # axes labels and ticks
    out.append(f'<text class="axis-label" x="8" y="{REPS_TOP - 12}">{t["reps_axis"]}</text>')
    out.append(f'<text class="axis-label" x="8" y="{PAIN_TOP - 6}">{t["pain_axis"]}</text>')
    out.append(f'<text class="axis-label" x="8" y="{RUNG_TOP - 6}">{t["legend_rung"]}</text>')
    for v in (0, low, high):
        y = _y(v, 0, reps_max, REPS_TOP, REPS_BOTTOM)
        out.append(f'<text class="tick" x="{LEFT - 6}" y="{_f(y + 4)}" text-anchor="end">{escape(render_number(v))}</text>')
    for v in (0, gate, 10):
        y = _y(v, 0, 10, PAIN_TOP, PAIN_BOTTOM)
        out.append(f'<text class="tick" x="{LEFT - 6}" y="{_f(y + 4)}" text-anchor="end">{escape(render_number(v))}</text>')
    lane = (RUNG_BOTTOM - RUNG_TOP) / max(len(rungs), 1)

    def rung_y(i: int) -> float:
        return RUNG_BOTTOM - lane * (i + 0.5)

    for i, _rung in enumerate(rungs):
        out.append(f'<text class="tick" x="{LEFT - 6}" y="{_f(rung_y(i) + 4)}" text-anchor="end">{i + 1}</text>')

    # the time axis spans the sessions; an onset before them is marked at the left edge, dated
    days = [s.date for s in pts] or ([history.onset] if history.onset else [])
    if days:
        x = _x_scale(days)
        if history.onset is not None:
            before = bool(pts) and history.onset < pts[0].date
            ox = _f(LEFT + 3 if before else x(history.onset))
            out.append(f'<line class="onset-mark" x1="{ox}" x2="{ox}" y1="{REPS_TOP}" y2="{RUNG_BOTTOM}">'
                       f'<title>{t["legend_onset"]}: {history.onset.isoformat()}</title></line>')
            label = ("\u2190 " if before else "") + history.onset.isoformat()
            out.append(f'<text class="tick onset-date" x="{_f(float(ox) + 4)}" y="{REPS_TOP - 4}">{label}</text>')
        if pts:
            # the rung as a step line: flat until the next session, then up or down
            path = [f"M{_f(x(pts[0].date))},{_f(rung_y(pts[0].rung))}"]
            for prev, cur in zip(pts, pts[1:], strict=False):
                path.append(f"H{_f(x(cur.date))}")
                if cur.rung != prev.rung:
                    path.append(f"V{_f(rung_y(cur.rung))}")
            if n == 1:
                path.append("h1")
            out.append(f'<path class="rung-line" d="{" ".join(path)}"/>')
            pain_path = [(x(s.date), _y(s.max_pain, 0, 10, PAIN_TOP, PAIN_BOTTOM)) for s in pts if s.max_pain is not None]
            if len(pain_path) > 1:
                out.append('<polyline class="pain-line" points="' + " ".join(f"{_f(a)},{_f(b)}" for a, b in pain_path) + '"/>')
            for s in pts:
                sx = x(s.date)
                rung = escape(rungs[s.rung].display)
                reps = ", ".join(render_number(r) for r in s.reps)
                for j, r in enumerate(s.reps):
                    ry = _y(r, 0, reps_max, REPS_TOP, REPS_BOTTOM)
                    out.append(f'<rect class="round-point" x="{_f(sx - 4 + (j - (len(s.reps) - 1) / 2) * 3)}" '
                               f'y="{_f(ry - 3)}" width="6" height="6"/>')
                pain = render_number(s.max_pain) if s.max_pain is not None else None
                cy = _y(s.max_pain if s.max_pain is not None else 0, 0, 10, PAIN_TOP, PAIN_BOTTOM)
                klass = "session-point" if pain is not None else "session-point pain-unknown"
                label = f"{s.date.isoformat()}: {rung}; {t['reps_axis']}: {escape(reps)}"
                if pain is not None:
                    label += f"; {t['pain_axis']}: {pain}"
                out.append(f'<circle class="{klass}" cx="{_f(sx)}" cy="{_f(cy)}" r="5"><title>{label}</title></circle>')
            # date ticks, from the newest back, at least 80 px apart
            ticks: list[SessionPoint] = []
            for s in reversed(pts):
                if not ticks or x(ticks[-1].date) - x(s.date) >= 80:
                    ticks.append(s)
            for s in ticks:
                out.append(f'<text class="tick date" x="{_f(x(s.date))}" y="{RUNG_BOTTOM + 16}" '
                           f'text-anchor="middle">{s.date.isoformat()}</text>')
    if not pts:
        out.append(f'<text class="empty" x="{WIDTH / 2}" y="{(REPS_TOP + REPS_BOTTOM) / 2}" '
                   f'text-anchor="middle">{t["no_sessions"]}</text>')
    # legend
    ly = HEIGHT - 14
    legend = [("round-point", t["legend_reps"]), ("session-point", t["legend_pain"]),
              ("band-target", t["legend_target"]), ("band-pain", t["legend_pain_gate"]),
              ("rung-line", t["legend_rung"]), ("onset-mark", t["legend_onset"])]
    lx = LEFT
    out.append('<g class="legend">')
    for i, (klass, text) in enumerate(legend):
        row, col = divmod(i, 3)
        lx = LEFT + col * 215
        y = ly - 18 * (1 - row)
        out.append(f'<rect class="key {klass}-key" x="{lx}" y="{y - 9}" width="12" height="10"/>'
                   f'<text class="legend-text" x="{lx + 16}" y="{y}">{text}</text>')
    out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)
