"""The template language of rule-file texts: the one home of parsing, filling and length bounds.

Texts use ``str.format``-style ``{placeholders}`` (parsed with :class:`string.Formatter`; ``{{`` and
``}}`` are literal braces; no format specs or conversions). A card text may name

* every parameter of the rule set (``{pain_gate_max}``, ``{rounds}``...),
* the parameters derived from them in :data:`DERIVED` (``{reps_target}``), and
* the fact placeholders in :data:`PLACEHOLDERS`.

The ``texts`` section of a rule set may also name :data:`TEXT_PLACEHOLDERS` (``{dose}``,
``{rule_id}``...), except ``texts.dose`` itself, which uses card placeholders only.

:func:`placeholders_for` gives the card-text set for one rule set, :func:`template_fields` the names
one template uses, and :func:`max_rendered_length` an upper bound of a filled-in template's length
so the rule checker can reject a summary that could reach the CDS Hooks 140-character limit.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping

from .errors import CdsError
from .ruleset.model import RuleSet

__all__ = [
    "APP_TEXT_PLACEHOLDERS",
    "DERIVED",
    "PLACEHOLDERS",
    "TEXT_KEY_PLACEHOLDERS",
    "TEXT_PLACEHOLDERS",
    "TemplateError",
    "derived_parameters",
    "fill",
    "join_list",
    "max_rendered_length",
    "parse",
    "placeholder_bound",
    "placeholders_for",
    "render_number",
    "template_fields",
]

#: the fact placeholders a card template may use, besides the rule set's parameter names
PLACEHOLDERS: frozenset[str] = frozenset(
    {
        "onset_date",  # most recent documented onset as written: YYYY-MM-DD, YYYY-MM or YYYY
        "onset_days_ago",  # days from the onset's earliest possible day to the evaluation date
        "session_date",  # date of the latest session, YYYY-MM-DD
        "session_days_ago",  # days from the latest session to the evaluation date
        "exercise",  # ladder code of the latest session's exercise
        "exercise_name",  # its ladder display name
        "recommended",  # ladder code of the recommended exercise
        "recommended_name",  # its ladder display name
        "reps",  # reps per round used of the latest session (the first `rounds`), e.g. "28, 27"
        "extra_reps",  # reps of the rounds beyond the first `rounds` (shown, not used), e.g. "14"
        "max_pain",  # highest pain (0-10) associated with the latest session
        "min_reps",  # fewest reps in a round of the latest session
        "max_reps",  # most reps in a round of the latest session
        "rounds_recorded",  # rounds recorded in the latest session
        "red_flag_category",  # the red-flag categories found (their display), joined by texts.list_separator
        "red_flag_condition",  # the red-flag conditions as the record names them, joined likewise
        "red_flag_risk_category",  # the risk-factor categories found
        "red_flag_risk_condition",  # the risk-factor conditions as the record names them
        "rounds_used",  # rounds that decide (the first `rounds`)
        "extra_rounds",  # rounds beyond the first `rounds`
        "skipped_in_session",  # unusable pain scores and rounds that could have belonged to the latest session
        "skipped_pain_max",  # highest readable value of an unusable pain score
        "pain_after_session_max",  # highest pain score recorded after the latest session, not associated with it
        "skipped_list",  # markdown list of the unusable data that could have mattered (texts.skipped)
    }
)

#: placeholders computed from parameters: name -> (the parameters it needs, how it is computed)
DERIVED: dict[str, tuple[tuple[str, ...], Callable[..., float]]] = {
    "reps_target": (("reps_low", "reps_high"), lambda low, high: (low + high) / 2),  # middle of the range
}

#: placeholders of the ``app`` section's keys besides the parameters (key path -> names): the SMART app's wording
APP_TEXT_PLACEHOLDERS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("round_label",): ("n",),  # the round number
    ("opened_from",): ("exercise",),  # the display of the rung the launching card recommended
    ("ruleset_differs",): ("card_sha256", "active_sha256"),  # the first 12 hex digits of each
    ("demo_banner",): ("example",),  # the bundled example's name
    ("errors", "reps"): ("max_reps",),  # the highest accepted number of reps
}


#: extra placeholders of the ``texts`` section (not of rule cards)
TEXT_PLACEHOLDERS: frozenset[str] = frozenset({"dose", "rule_id", "ruleset_name", "ruleset_version"})

#: placeholders only one key of the ``texts`` section may use, besides :data:`TEXT_PLACEHOLDERS`
TEXT_KEY_PLACEHOLDERS: dict[str, frozenset[str]] = {
    "source_label": frozenset({"source_label"}),  # ruleset.source.label
    "action_description_adjusted": frozenset({"action_description", "adjustment"}),  # both filled in
}

# --- length bounds used by max_rendered_length --------------------------------------------------
#: a date renders as YYYY-MM-DD
DATE_CHARS = 10
#: a standalone number fact (pain, min/max reps, days, rounds): up to 8 characters ("12345678",
#: "2.333333"); a longer value is possible only with absurd data and is caught by the runtime truncation
NUMBER_CHARS = 8
#: a list placeholder (``{red_flag_category}``, ``{red_flag_condition}``...) is cut to this many
#: characters ("…" at the end), so a summary using one has a bound
LIST_TEXT_CHARS = 80
#: ``{reps}`` is bounded as up to 8 rounds of up to 3 characters each, joined by ", " (38 characters)
REPS_MAX_ROUNDS = 8
REPS_NUMBER_CHARS = 3
REPS_SEPARATOR = ", "

DATE_FIELDS = frozenset({"onset_date", "session_date"})
NUMBER_FIELDS = frozenset({
    "onset_days_ago", "session_days_ago", "max_pain", "min_reps", "max_reps", "rounds_recorded", "rounds_used",
    "extra_rounds", "skipped_in_session", "skipped_pain_max", "pain_after_session_max",
})
CODE_FIELDS = frozenset({"exercise", "recommended"})
NAME_FIELDS = frozenset({"exercise_name", "recommended_name"})
#: category placeholder -> the ``codes`` list its categories come from
CATEGORY_FIELDS = {"red_flag_category": "red_flags", "red_flag_risk_category": "red_flag_risks"}
CONDITION_FIELDS = frozenset({"red_flag_condition", "red_flag_risk_condition"})
REPS_FIELDS = frozenset({"reps", "extra_reps"})
#: multi-line lists: bounded so high that a summary using one is refused by the rule checker
LIST_FIELDS = frozenset({"skipped_list"})
LIST_CHARS = 10_000
assert (DATE_FIELDS | NUMBER_FIELDS | CODE_FIELDS | NAME_FIELDS | set(CATEGORY_FIELDS) | CONDITION_FIELDS
        | REPS_FIELDS | LIST_FIELDS) == PLACEHOLDERS

_formatter = string.Formatter()


class TemplateError(CdsError, ValueError):
    """A template that cannot be filled: a card text's unknown placeholder, format spec or bad braces,
    or a prefetch template's token that the hook context cannot fill (:func:`cds.fhir_client.render_template`)."""


def render_number(value: float | int) -> str:
    """``28.0`` -> ``"28"``, ``2.5`` -> ``"2.5"`` (shortest round-trip form, never a trailing ``.0``)."""
    if isinstance(value, bool):
        raise TypeError("a bool is not a number here")
    if isinstance(value, int):
        return str(value)
    f = float(value)
    if f.is_integer():
        return str(int(f))
    return repr(f)


def join_list(items: list[str], separator: str, limit: int | None = None) -> str:
    """The distinct ``items`` in order, joined by ``separator``; cut to ``limit`` characters (ending
    in "…") when longer: after the last whole item that fits, else after the last whole word, else
    mid-word (one item without spaces longer than the limit)."""
    text = separator.join(dict.fromkeys(items))
    if limit is not None and len(text) > limit:
        head = text[: limit - 1]
        cut = head.rfind(separator.rstrip() or separator) if separator.strip() else -1
        if cut <= 0:
            cut = head.rfind(" ")
        text = (head[:cut] if cut > 0 else head).rstrip() + "…"
    return text


def parse(template: str) -> list[tuple[str, str | None]]:
    """``[(literal, field_name or None), ...]``; raises :class:`TemplateError` on bad syntax."""
    try:
        parsed = list(_formatter.parse(template))
    except ValueError as exc:
        raise TemplateError(f"bad template braces: {exc}") from None
    out: list[tuple[str, str | None]] = []
    for literal, field, spec, conversion in parsed:
        if field is not None:
            if field == "" or not field.isidentifier():
                raise TemplateError(f"placeholder {{{field}}} must be a plain name")
            if spec or conversion:
                raise TemplateError(f"placeholder {{{field}}} must not have a format spec or conversion")
        out.append((literal, field))
    return out


def template_fields(template: str) -> list[str]:
    """The placeholder names a template uses, in order of first use."""
    seen: dict[str, None] = {}
    for _, field in parse(template):
        if field is not None:
            seen.setdefault(field, None)
    return list(seen)


def derived_parameters(parameters: Mapping[str, int | float]) -> dict[str, float]:
    """The :data:`DERIVED` placeholders whose parameters this rule set defines, with their values.
    A parameter of the same name wins over a derived one."""
    out: dict[str, float] = {}
    for name, (needs, compute) in DERIVED.items():
        if name not in parameters and all(n in parameters for n in needs):
            out[name] = compute(*(parameters[n] for n in needs))
    return out


def placeholders_for(ruleset: RuleSet) -> frozenset[str]:
    """Every placeholder a card template of this rule set may use: parameters, derived, facts."""
    params = ruleset.document.parameters
    return PLACEHOLDERS | frozenset(params) | frozenset(derived_parameters(params))


def fill(template: str, values: Mapping[str, str]) -> str:
    """Fill a template. An unknown placeholder is a :class:`TemplateError` (the rule checker prevents it)."""
    out: list[str] = []
    for literal, field in parse(template):
        out.append(literal)
        if field is not None:
            if field not in values:
                raise TemplateError(f"unknown placeholder {{{field}}}")
            out.append(values[field])
    return "".join(out)


def placeholder_bound(name: str, ruleset: RuleSet) -> int:
    """The longest a card placeholder can render for this rule set (at least the "not recorded" text)."""
    doc = ruleset.document
    unknown = len(doc.texts.not_recorded)
    if name in DATE_FIELDS:
        return max(DATE_CHARS, unknown)
    if name in NUMBER_FIELDS:
        return max(NUMBER_CHARS, unknown)
    if name in CODE_FIELDS:
        return max(max(len(r.code) for r in doc.ladder.rungs), unknown)
    if name in NAME_FIELDS:
        return max(max(len(r.display) for r in doc.ladder.rungs), unknown)
    if name in CATEGORY_FIELDS:
        displays = [c.display for c in getattr(doc.codes, CATEGORY_FIELDS[name])]
        joined = sum(map(len, displays)) + max(len(displays) - 1, 0) * len(doc.texts.list_separator)
        return max(min(joined, LIST_TEXT_CHARS), unknown)
    if name in CONDITION_FIELDS:
        return max(LIST_TEXT_CHARS, unknown)
    if name in LIST_FIELDS:
        return LIST_CHARS
    if name in REPS_FIELDS:
        reps = REPS_MAX_ROUNDS * REPS_NUMBER_CHARS + (REPS_MAX_ROUNDS - 1) * len(REPS_SEPARATOR)
        return max(reps, unknown)
    if name in doc.parameters:
        return len(render_number(doc.parameters[name]))
    derived = derived_parameters(doc.parameters)
    if name in derived:
        return len(render_number(derived[name]))
    raise TemplateError(f"unknown placeholder {{{name}}}")


def max_rendered_length(template: str, ruleset: RuleSet) -> int:
    """An upper bound of the template's length once filled in, for this rule set.

    Bounds per placeholder (each at least the length of ``texts.not_recorded``, since an unknown
    fact renders so): parameters and derived parameters -- their exact rendered value; dates -- 10;
    ``exercise``/``recommended`` -- the longest ladder code; ``*_name`` -- the longest ladder display
    name; other numbers -- :data:`NUMBER_CHARS`; ``reps`` -- :data:`REPS_MAX_ROUNDS` rounds of
    :data:`REPS_NUMBER_CHARS` characters. Raises :class:`TemplateError` for an unknown placeholder or
    bad syntax.
    """
    total = 0
    for literal, field in parse(template):
        total += len(literal)
        if field is not None:
            total += placeholder_bound(field, ruleset)
    return total
