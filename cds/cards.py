"""Decisions -> CDS Hooks cards.

:func:`build_cards` turns an :class:`~cds.decisions.Evaluation` (the rules that fired) into one
:class:`~cds.cdshooks.Card` per fired rule, in firing order. All clinical content -- numbers, wording,
codes, evidence, the disclaimer -- comes from the rule set and the patient's facts; this module only
arranges it.

Card text templates use ``str.format``-style ``{placeholders}`` (parsed with :class:`string.Formatter`;
``{{`` and ``}}`` are literal braces; no format specs or conversions). A template may name

* every parameter of the rule set (``{pain_gate_max}``, ``{rounds}``...), and
* the fact placeholders in :data:`PLACEHOLDERS`.

:func:`placeholders_for` gives the full set for one rule set, :func:`template_fields` the names one
template uses, and :func:`max_rendered_length` an upper bound of a filled-in template's length so the
rule checker can reject a summary that could reach the CDS Hooks 140-character limit.
"""

from __future__ import annotations

import logging
import string
import uuid
from collections.abc import Callable
from typing import Any

from fhir.resources.R4B.servicerequest import ServiceRequest

from .assessment import Assessment
from .cdshooks import SUMMARY_MAX_CHARS, Action, Card, Coding, Link, OverrideReason, Source, Suggestion
from .decisions import Evaluation, FiredRule
from .facts import PatientFacts
from .fhir_validation import validate
from .ruleset.model import RuleSet
from .ruleset.schema import Recommend, Rung

__all__ = [
    "EXTENSION_KEY",
    "NOT_RECORDED",
    "PLACEHOLDERS",
    "TemplateError",
    "build_card",
    "build_cards",
    "fill",
    "max_rendered_length",
    "placeholders_for",
    "recommended_rung",
    "render_number",
    "template_fields",
    "template_values",
]

log = logging.getLogger(__name__)

#: key of the machine-readable recommendation in ``Card.extension``
EXTENSION_KEY = "org.lbp-cds.recommendation"

#: what an unknown fact renders as in card text
NOT_RECORDED = "not recorded"

#: the fact placeholders a card template may use, besides the rule set's parameter names
PLACEHOLDERS: frozenset[str] = frozenset(
    {
        "onset_date",  # most recent documented onset, YYYY-MM-DD
        "onset_days_ago",  # days from onset to the evaluation date
        "session_date",  # date of the latest session, YYYY-MM-DD
        "exercise",  # ladder code of the latest session's exercise
        "exercise_name",  # its ladder display name
        "recommended",  # ladder code of the recommended exercise
        "recommended_name",  # its ladder display name
        "reps",  # reps per round of the latest session, e.g. "28, 27"
        "max_pain",  # highest pain (0-10) associated with the latest session
        "min_reps",  # fewest reps in a round of the latest session
        "max_reps",  # most reps in a round of the latest session
        "rounds_recorded",  # rounds recorded in the latest session
    }
)

# --- length bounds used by max_rendered_length --------------------------------------------------
#: a date renders as YYYY-MM-DD
DATE_CHARS = 10
#: a standalone number fact (pain, min/max reps, days, rounds): up to 8 characters ("12345678",
#: "2.333333"); a longer value is possible only with absurd data and is caught by the runtime truncation
NUMBER_CHARS = 8
#: ``{reps}`` is bounded as up to 8 rounds of up to 3 characters each, joined by ", " (38 characters)
REPS_MAX_ROUNDS = 8
REPS_NUMBER_CHARS = 3
REPS_SEPARATOR = ", "

_DATE_FIELDS = frozenset({"onset_date", "session_date"})
_NUMBER_FIELDS = frozenset({"onset_days_ago", "max_pain", "min_reps", "max_reps", "rounds_recorded"})
_CODE_FIELDS = frozenset({"exercise", "recommended"})
_NAME_FIELDS = frozenset({"exercise_name", "recommended_name"})
assert _DATE_FIELDS | _NUMBER_FIELDS | _CODE_FIELDS | _NAME_FIELDS | {"reps"} == PLACEHOLDERS

_formatter = string.Formatter()


class TemplateError(ValueError):
    """A card template that cannot be filled: unknown placeholder, format spec, bad braces."""


# ------------------------------------------------------------------------------------------------
# Templates
# ------------------------------------------------------------------------------------------------


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


def _json_number(value: float) -> int | float:
    f = float(value)
    return int(f) if f.is_integer() else f


def _parse(template: str) -> list[tuple[str, str | None]]:
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
    for _, field in _parse(template):
        if field is not None:
            seen.setdefault(field, None)
    return list(seen)


def placeholders_for(ruleset: RuleSet) -> frozenset[str]:
    """Every placeholder a template of this rule set may use: its parameter names plus :data:`PLACEHOLDERS`."""
    return PLACEHOLDERS | frozenset(ruleset.document.parameters)


def fill(template: str, values: dict[str, str]) -> str:
    """Fill a template. An unknown placeholder is a :class:`TemplateError` (the rule checker prevents it)."""
    out: list[str] = []
    for literal, field in _parse(template):
        out.append(literal)
        if field is not None:
            if field not in values:
                raise TemplateError(f"unknown placeholder {{{field}}}")
            out.append(values[field])
    return "".join(out)


def _placeholder_bound(name: str, ruleset: RuleSet) -> int:
    unknown = len(NOT_RECORDED)
    if name in _DATE_FIELDS:
        return max(DATE_CHARS, unknown)
    if name in _NUMBER_FIELDS:
        return max(NUMBER_CHARS, unknown)
    if name in _CODE_FIELDS:
        return max(max(len(r.code) for r in ruleset.document.ladder.rungs), unknown)
    if name in _NAME_FIELDS:
        return max(max(len(r.display) for r in ruleset.document.ladder.rungs), unknown)
    if name == "reps":
        reps = REPS_MAX_ROUNDS * REPS_NUMBER_CHARS + (REPS_MAX_ROUNDS - 1) * len(REPS_SEPARATOR)
        return max(reps, unknown)
    if name in ruleset.document.parameters:
        return len(render_number(ruleset.document.parameters[name]))
    raise TemplateError(f"unknown placeholder {{{name}}}")


def max_rendered_length(template: str, ruleset: RuleSet) -> int:
    """An upper bound of the template's length once filled in, for this rule set.

    Bounds per placeholder (each at least ``len("not recorded")`` = 12, since an unknown fact renders
    so): parameters -- their exact rendered value; dates -- 10; ``exercise``/``recommended`` -- the
    longest ladder code; ``*_name`` -- the longest ladder display name; other numbers --
    :data:`NUMBER_CHARS`; ``reps`` -- :data:`REPS_MAX_ROUNDS` rounds of :data:`REPS_NUMBER_CHARS`
    characters. Raises :class:`TemplateError` for an unknown placeholder or bad syntax.
    """
    total = 0
    for literal, field in _parse(template):
        total += len(literal)
        if field is not None:
            total += _placeholder_bound(field, ruleset)
    return total


def recommended_rung(recommend: Recommend | None, assessment: Assessment, ruleset: RuleSet) -> Rung | None:
    """The ladder rung a rule recommends, relative to the latest session's rung (clamped to the ladder).

    ``first`` -> the first rung; ``previous``/``current``/``next`` -> one below / the same / one above
    the assessment's rung (``previous`` on the first rung stays there; ``next`` on the top stays there).
    ``None`` when the rule recommends nothing, or a relative move has no current rung to move from.
    """
    if recommend is None:
        return None
    rungs = ruleset.document.ladder.rungs
    if recommend.rung == "first":
        return rungs[0]
    if assessment.rung is None:
        log.warning("rule recommends %r but no session rung is known; no recommendation made", recommend.rung)
        return None
    index = assessment.rung - 1 + {"previous": -1, "current": 0, "next": 1}[recommend.rung]
    return rungs[min(max(index, 0), len(rungs) - 1)]


def template_values(
    evaluation: Evaluation,
    facts: PatientFacts,
    ruleset: RuleSet,
    fired: FiredRule | None = None,
) -> dict[str, str]:
    """The value of every placeholder in :func:`placeholders_for` (``ruleset``), as text.

    ``recommended``/``recommended_name`` depend on ``fired`` (its ``recommend``); without a rule or a
    recommendation they render as "not recorded", like every unknown fact. Fact names take precedence
    over a parameter of the same name (the rule checker should reject such a clash).
    """
    a = evaluation.assessment
    ladder = ruleset.document.ladder
    session = facts.latest_session
    values: dict[str, str] = {name: render_number(v) for name, v in ruleset.document.parameters.items()}
    for name in PLACEHOLDERS:
        values[name] = NOT_RECORDED

    onset = facts.onset
    if onset is not None:
        values["onset_date"] = onset.isoformat()
    if a.onset_days_ago is not None:
        values["onset_days_ago"] = render_number(a.onset_days_ago)
    elif onset is not None:
        values["onset_days_ago"] = render_number((evaluation.evaluation_date - onset).days)

    exercise = session.exercise if session is not None else a.exercise
    if exercise is not None:
        values["exercise"] = exercise
        if exercise in ladder.codes:
            values["exercise_name"] = ladder.rung(exercise).display
    if session is not None:
        values["session_date"] = session.date.isoformat()
        if session.reps:
            values["reps"] = REPS_SEPARATOR.join(render_number(r) for r in session.reps)
    max_pain = session.max_pain if session is not None else a.max_pain
    if max_pain is None:
        max_pain = a.max_pain
    if max_pain is not None:
        values["max_pain"] = render_number(max_pain)
    if a.min_reps is not None:
        values["min_reps"] = render_number(a.min_reps)
    if a.max_reps is not None:
        values["max_reps"] = render_number(a.max_reps)
    values["rounds_recorded"] = render_number(len(session.reps) if session is not None else a.rounds_recorded)

    rung = recommended_rung(fired.recommend, a, ruleset) if fired is not None else None
    if rung is not None:
        values["recommended"] = rung.code
        values["recommended_name"] = rung.display
    return values


# ------------------------------------------------------------------------------------------------
# Cards
# ------------------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _facts_table(values: dict[str, str], facts: PatientFacts) -> str:
    exercise = values["exercise_name"]
    if values["exercise"] != NOT_RECORDED:
        exercise = f"{exercise} (`{values['exercise']}`)" if exercise != NOT_RECORDED else f"`{values['exercise']}`"
    rows = [
        ("Exercise", exercise),
        ("Session date", values["session_date"]),
        ("Reps per round", values["reps"]),
        ("Highest pain (0-10)", values["max_pain"]),
        ("Onset date", values["onset_date"]),
    ]
    if facts.skipped_invalid > 0:
        rows.append(("Resources skipped as invalid", render_number(facts.skipped_invalid)))
    lines = ["**Facts used**", "", "| Fact | Value |", "|---|---|"]
    lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in rows]
    return "\n".join(lines)


def _blockquote(text: str) -> str:
    return "\n".join(f"> *{line.strip()}*" if line.strip() else ">" for line in text.strip().splitlines())


def _dose_text(ruleset: RuleSet) -> str | None:
    """The dose, from the parameters only: ``rounds`` rounds, pain at most ``pain_gate_max``/10."""
    params = ruleset.document.parameters
    parts: list[str] = []
    if "rounds" in params:
        parts.append(f"{render_number(params['rounds'])} rounds, each to just short of technical failure")
    if "pain_gate_max" in params:
        parts.append(f"pain at most {render_number(params['pain_gate_max'])}/10 during and after")
    return "; ".join(parts) if parts else None


def _service_request(
    rung: Rung, fired: FiredRule, evaluation: Evaluation, ruleset: RuleSet, patient_id: str, adjustment: str | None
) -> dict[str, Any]:
    ladder = ruleset.document.ladder
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "proposal",
        "code": {
            "coding": [{"system": ladder.system, "code": rung.code, "display": rung.display}],
            "text": rung.display,
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": evaluation.evaluation_date.isoformat(),
    }
    dose = _dose_text(ruleset)
    if dose:
        resource["orderDetail"] = [{"text": dose}]
        resource["patientInstruction"] = f"{rung.display}: {dose}."
    notes = []
    if adjustment:
        notes.append({"text": adjustment})
    notes.append({"text": f"Proposed by rule {fired.rule_id} of {evaluation.ruleset.name} {evaluation.ruleset.version}."})
    resource["note"] = notes
    # A failure here is a bug in this module or the rule set, never client input: let it raise.
    # The patient reference (a validated FHIR id) and the date are the only per-request parts, so
    # the resource is validated with them fixed: once per rule-set version, rung and rule.
    validate(ServiceRequest, {**resource, "subject": {"reference": "Patient/x"}, "authoredOn": "2000-01-01"})
    return resource


def _extension(fired: FiredRule, facts: PatientFacts, evaluation: Evaluation, rung: Rung | None) -> dict[str, Any]:
    a = evaluation.assessment
    session = facts.latest_session
    fact_values: dict[str, Any] = {}
    if session is not None:
        fact_values["sessionDate"] = session.date.isoformat()
        if session.reps:
            fact_values["reps"] = [_json_number(r) for r in session.reps]
    max_pain = session.max_pain if session is not None else None
    if max_pain is None:
        max_pain = a.max_pain
    if max_pain is not None:
        fact_values["maxPain"] = _json_number(max_pain)
    if facts.onset is not None:
        fact_values["onsetDate"] = facts.onset.isoformat()
    fact_values["skippedInvalid"] = facts.skipped_invalid

    rec: dict[str, Any] = {"ruleId": fired.rule_id, "decision": fired.decision}
    current = session.exercise if session is not None else a.exercise
    if current is not None:
        rec["currentExercise"] = current
    if rung is not None:
        rec["recommendedExercise"] = rung.code
    if fired.notes:
        rec["notes"] = list(fired.notes)  # ids of the rule-file notes added to the detail
    rec["ruleset"] = evaluation.ruleset.model_dump()
    rec["facts"] = fact_values
    return {EXTENSION_KEY: rec}


def _summary(text: str, rule_id: str) -> str:
    text = " ".join(text.split())  # a summary is one line
    if len(text) > SUMMARY_MAX_CHARS:
        log.warning("summary of rule %s is %d characters; truncated to %d", rule_id, len(text), SUMMARY_MAX_CHARS)
        text = text[: SUMMARY_MAX_CHARS - 1] + "…"
    return text


def build_card(
    fired: FiredRule,
    evaluation: Evaluation,
    facts: PatientFacts,
    ruleset: RuleSet,
    *,
    patient_id: str,
    uuid_factory: Callable[[], str],
) -> Card:
    """The card of one fired rule (see :func:`build_cards`)."""
    doc = ruleset.document
    rule = ruleset.rule(fired.rule_id)
    values = template_values(evaluation, facts, ruleset, fired)
    identity = evaluation.ruleset
    rung = recommended_rung(fired.recommend, evaluation.assessment, ruleset)

    sections = [fill(rule.card.detail, values).strip()]
    sections += [fill(ruleset.note(note_id).text, values).strip() for note_id in fired.notes]
    sections.append(_facts_table(values, facts))
    sections.append(f"Rule: `{fired.rule_id}` · Rule set: {identity.name} {identity.version}")
    sections.append(_blockquote(doc.disclaimer))
    detail = "\n\n".join(s for s in sections if s)

    meta = doc.ruleset
    source = Source(
        label=f"{meta.source.label} ({identity.name} {identity.version})",
        url=meta.source.url,
        topic=Coding(**meta.source.topic.model_dump()) if meta.source.topic is not None else None,
    )
    links = [Link(label=e.label, url=e.url, type="absolute") for e in doc.evidence]
    override_reasons = [OverrideReason(system=r.system, code=r.code, display=r.display) for r in doc.override_reasons]

    suggestions: list[Suggestion] = []
    if rung is not None:
        adjustment = None
        if fired.recommend is not None and fired.recommend.adjustment:
            adjustment = fill(fired.recommend.adjustment, values).strip() or None
        resource = _service_request(rung, fired, evaluation, ruleset, patient_id, adjustment)
        dose = _dose_text(ruleset)
        description = f"Propose {rung.display}" + (f": {dose}" if dose else "")
        if adjustment:
            description += f". {adjustment}"
        suggestions.append(
            Suggestion(
                label=f"Order {rung.display}",
                uuid=uuid_factory(),
                is_recommended=True,
                actions=[Action(type="create", description=description, resource=resource)],
            )
        )

    return Card(
        uuid=uuid_factory(),
        summary=_summary(fill(rule.card.summary, values), fired.rule_id),
        detail=detail,
        indicator=fired.indicator,
        source=source,
        suggestions=suggestions,
        selection_behavior="at-most-one" if suggestions else None,
        override_reasons=override_reasons,
        links=links,
        extension=_extension(fired, facts, evaluation, rung),
    )


def build_cards(
    evaluation: Evaluation,
    facts: PatientFacts,
    ruleset: RuleSet,
    *,
    patient_id: str,
    uuid_factory: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> list[Card]:
    """One card per fired rule, in firing order.

    Each card has a fresh ``uuid``; the summary and detail are the rule's templates filled in, the
    detail followed by the texts of the rule's fired notes, a table of the facts it was decided from,
    the rule id and rule-set version, and the disclaimer. A recommended exercise becomes one suggestion
    creating a draft FHIR R4 ``ServiceRequest``. ``extension["org.lbp-cds.recommendation"]`` carries the
    decision for machines (SPEC 2.1, plus ``notes``: the ids of the notes shown, when there are any).
    ``patient_id`` must be the hook context's patient (a FHIR id).
    """
    return [
        build_card(fired, evaluation, facts, ruleset, patient_id=patient_id, uuid_factory=uuid_factory)
        for fired in evaluation.fired
    ]
