"""Decisions -> CDS Hooks cards: arrangement only.

:func:`build_cards` turns an :class:`~cds.decisions.Evaluation` (the rules that fired) into one
:class:`RuleCard` (the fired rule and its :class:`~cds.cdshooks.Card`) per fired rule, in firing
order. All clinical content -- numbers, wording, codes, evidence, the disclaimer, the labels -- comes
from the rule set and the patient's facts; the template language is :mod:`cds.templates`; the
recommended rung was decided by the engine (:attr:`FiredRule.recommended`).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B.servicerequest import ServiceRequest

from .cdshooks import SUMMARY_MAX_CHARS, Action, Card, Coding, Link, OverrideReason, Source, Suggestion
from .decisions import Evaluation, FiredRule
from .facts import PatientFacts
from .fhir_validation import validate
from .ruleset.model import RuleSet
from .ruleset.schema import OrderCheck, Rung
from .templates import (
    LIST_TEXT_CHARS,
    PLACEHOLDERS,
    REPS_SEPARATOR,
    derived_parameters,
    fill,
    join_list,
    render_number,
)
from .trend import TrendSession, chart_query, session_history

__all__ = [
    "APP_LAUNCH_PATH",
    "CHART_PATH",
    "EXTENSION_KEY",
    "RuleCard",
    "build_card",
    "build_cards",
    "build_order_check_card",
    "recommended_order",
    "requester_reference",
    "shows_trend",
    "template_values",
    "text_values",
]

log = logging.getLogger(__name__)

#: key of the machine-readable recommendation in ``Card.extension``
EXTENSION_KEY = "org.lbp-cds.recommendation"
#: the trend chart (``cds.http.charts``) and the SMART app's launch URL, below the public base URL
CHART_PATH = "/charts/trend.svg"
APP_LAUNCH_PATH = "/app/launch"


@dataclass(frozen=True)
class RuleCard:
    """One fired rule and the card built for it."""

    fired: FiredRule
    card: Card


def _json_number(value: float) -> int | float:
    f = float(value)
    return int(f) if f.is_integer() else f


def template_values(
    evaluation: Evaluation,
    facts: PatientFacts,
    ruleset: RuleSet,
    fired: FiredRule | None = None,
) -> dict[str, str]:
    """The value of every placeholder in :func:`~cds.templates.placeholders_for` (``ruleset``), as text.

    ``recommended``/``recommended_name`` come from ``fired.recommended``; without a rule or a
    recommendation they render as ``texts.not_recorded``, like every unknown fact. Fact names take
    precedence over a parameter of the same name (the rule checker should reject such a clash).
    """
    a = evaluation.assessment
    doc = ruleset.document
    ladder = doc.ladder
    session = facts.latest_session
    unknown = doc.texts.not_recorded
    values: dict[str, str] = {name: render_number(v) for name, v in doc.parameters.items()}
    values.update({name: render_number(v) for name, v in derived_parameters(doc.parameters).items()})
    for name in PLACEHOLDERS:
        values[name] = unknown

    condition = facts.onset_condition
    onset = condition.onset if condition is not None else None
    if condition is not None and onset is not None:
        values["onset_date"] = condition.onset_text or onset.isoformat()  # as written: 2026-06 stays 2026-06
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
        values["session_days_ago"] = render_number((evaluation.evaluation_date - session.date).days)
        used = a.rounds_used if a.session_recorded else len(session.reps)
        if session.reps[:used]:
            values["reps"] = REPS_SEPARATOR.join(render_number(r) for r in session.reps[:used])
        if session.reps[used:]:
            values["extra_reps"] = REPS_SEPARATOR.join(render_number(r) for r in session.reps[used:])
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
    values["rounds_used"] = render_number(a.rounds_used)
    values["extra_rounds"] = render_number(a.extra_rounds)
    values["skipped_in_session"] = render_number(a.skipped_in_session)
    if a.skipped_pain_max is not None:
        values["skipped_pain_max"] = render_number(a.skipped_pain_max)
    if a.pain_after_session_max is not None:
        values["pain_after_session_max"] = render_number(a.pain_after_session_max)
    listed = _skipped_list(facts, ruleset)
    if listed:
        values["skipped_list"] = listed

    separator = doc.texts.list_separator
    for prefix, found in (("red_flag", facts.red_flags), ("red_flag_risk", facts.risk_factors)):
        if found:
            values[f"{prefix}_category"] = join_list([f.category_display for f in found], separator, LIST_TEXT_CHARS)
            values[f"{prefix}_condition"] = join_list([f.text for f in found], separator, LIST_TEXT_CHARS)

    if fired is not None and fired.recommended is not None:
        rung = ladder.rung(fired.recommended)
        values["recommended"] = rung.code
        values["recommended_name"] = rung.display
    return values


def _preselected(fired: FiredRule, ruleset: RuleSet) -> bool:
    """Whether the order a fired rule's card proposes is marked ``isRecommended``: not while one of its
    notes says ``suggestion: not-recommended`` (an onset caveat, unusable data)."""
    return not any(ruleset.note(n).suggestion == "not-recommended" for n in fired.notes)


def _skipped_list(facts: PatientFacts, ruleset: RuleSet) -> str:
    """The unusable data that could have mattered, one markdown list item each, worded by
    ``texts.skipped``: the pain scores and rounds that could have belonged to the latest session, the
    pain scores with the highest readable value among the unusable ones, and every low back pain,
    red-flag or risk-factor Condition that failed validation. Empty without ``texts.skipped``."""
    texts = ruleset.document.texts
    words = texts.skipped
    if words is None:
        return ""
    unusable = [s for s in facts.skipped if s.invalid and s.kind is not None]
    highest = max((s.value for s in unusable if s.kind == "pain" and s.value is not None), default=None)
    lines = []
    for s in unusable:
        reason = getattr(words.reasons, s.reason_key or "invalid", words.reasons.invalid).strip()
        if s.kind == "condition":  # a condition that could not be read could always have changed the decision
            if words.condition is None:
                continue
            item = fill(words.condition, {"condition": s.condition or words.lbp_condition,
                                          "date": s.date_text or texts.not_recorded, "reason": reason})
        elif s.in_session or (s.kind == "pain" and highest is not None and s.value == highest):
            dated, undated = (words.pain, words.pain_undated) if s.kind == "pain" else (words.round, words.round_undated)
            item = fill(dated if s.date_text or undated is None else undated, {
                "value": render_number(s.value) if s.value is not None else texts.not_recorded,
                "date": s.date_text or texts.not_recorded,
                "reason": reason,
            })
        else:
            continue
        lines.append(f"- {' '.join(item.split())}")
    return "\n".join(lines)


def text_values(values: dict[str, str], rule_id: str, evaluation: Evaluation, ruleset: RuleSet) -> dict[str, str]:
    """``values`` plus the placeholders of the ``texts`` section (:data:`~cds.templates.TEXT_PLACEHOLDERS`);
    ``rule_id`` is the id of the rule (or order check) whose card the texts are for."""
    identity = evaluation.ruleset
    return {
        **values,
        "dose": fill(ruleset.document.texts.dose, values).strip(),
        "rule_id": rule_id,
        "ruleset_name": identity.name,
        "ruleset_version": identity.version,
    }


# ------------------------------------------------------------------------------------------------
# Cards
# ------------------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _facts_table(values: dict[str, str], facts: PatientFacts, ruleset: RuleSet) -> str:
    labels = ruleset.document.texts.facts
    # the exercise by its name only: the ladder code stays in the extension (currentExercise)
    exercise = values["exercise_name"]
    rows = [
        (labels.exercise, exercise),
        (labels.session_date, values["session_date"]),
        (labels.reps, values["reps"]),
        (labels.max_pain, values["max_pain"]),
        (labels.onset_date, values["onset_date"]),
    ]
    if facts.skipped_invalid > 0:
        rows.append((labels.skipped_invalid, render_number(facts.skipped_invalid)))
    lines = [f"**{labels.heading.strip()}**", "", f"| {_cell(labels.fact)} | {_cell(labels.value)} |", "|---|---|"]
    lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in rows]
    return "\n".join(lines)


def shows_trend(fired: FiredRule, ruleset: RuleSet) -> bool:
    """Whether the card of ``fired`` shows the session trend: the rule set has ``texts.trend`` and the
    rule's ``card.trend`` says so (default: the rule recommends a rung, a progression card)."""
    rule = ruleset.rule(fired.rule_id)
    if ruleset.document.texts.trend is None or rule.card is None:
        return False
    return rule.card.trend if rule.card.trend is not None else rule.recommend is not None


def _markdown_alt(text: str) -> str:
    return " ".join(text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]").split())


def _trend_section(history: Sequence[TrendSession], ruleset: RuleSet, public_base_url: str | None) -> str:
    """The trend: heading, a table of the sessions (oldest first) and, with a public base URL, the chart."""
    doc = ruleset.document
    labels = doc.texts.trend
    if labels is None or not history:
        return ""
    unknown = doc.texts.not_recorded
    header = (labels.date, labels.exercise, labels.rung, labels.reps, labels.max_pain)
    lines = [f"**{labels.heading.strip()}**", "", "| " + " | ".join(_cell(h) for h in header) + " |",
             "|---|---|---|---|---|"]
    for s in history:
        reps = REPS_SEPARATOR.join(render_number(r) for r in s.reps) or unknown
        pain = render_number(s.max_pain) if s.max_pain is not None else unknown
        row = (s.date.isoformat(), doc.ladder.rung(s.exercise).display, str(s.rung), reps, pain)
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    if public_base_url:
        url = f"{public_base_url.rstrip('/')}{CHART_PATH}?{chart_query(history, ruleset)}"
        lines += ["", f"![{_markdown_alt(labels.chart_alt)}]({url})"]
    return "\n".join(lines)


def _app_link(fired: FiredRule, evaluation: Evaluation, ruleset: RuleSet, public_base_url: str | None) -> Link | None:
    """The SMART app link of a progression card: ``texts.app_link``, with the recommended rung and the
    rule set's sha256 as ``appContext`` (a compact JSON string)."""
    label = ruleset.document.texts.app_link
    if label is None or not public_base_url or fired.recommended is None:
        return None
    context = json.dumps({"rung": fired.recommended, "ruleSetSha256": evaluation.ruleset.sha256},
                         separators=(",", ":"))
    return Link(label=label.strip(), url=f"{public_base_url.rstrip('/')}{APP_LAUNCH_PATH}", type="smart",
                app_context=context)


def _blockquote(text: str) -> str:
    return "\n".join(f"> *{line.strip()}*" if line.strip() else ">" for line in text.strip().splitlines())


#: a ``context.userId`` that may be an order's ``requester`` (FHIR R4 ServiceRequest.requester)
_REQUESTER = re.compile(r"^(Practitioner|PractitionerRole)/[A-Za-z0-9\-.]{1,64}$")


def requester_reference(user_id: str | None) -> str | None:
    """``context.userId`` when it is a Practitioner or PractitionerRole reference, else None."""
    return user_id if user_id is not None and _REQUESTER.match(user_id) else None


def _coding(c: Any) -> dict[str, Any]:
    return {k: v for k, v in (("system", c.system), ("code", c.code), ("display", c.display)) if v}


def _service_request(
    rung: Rung, evaluation: Evaluation, ruleset: RuleSet, patient_id: str, adjustment: str | None,
    values: dict[str, str], *, facts: PatientFacts | None = None, user_id: str | None = None,
) -> dict[str, Any]:
    """The proposed order of ``rung``: a draft FHIR R4 ServiceRequest saying what the card says.

    ``code``: the ladder coding, then ``codes.order_code`` when the rule files give one; ``category``:
    ``codes.order_category``; ``patientInstruction``: ``texts.patient_instruction`` (the exercise and its
    dose) followed by the rule's adjustment; ``note``: the adjustment, the dose, then ``texts.order_note``.
    ``reasonReference``: the LBP Condition the decision used; ``requester``: ``user_id`` when it is a
    Practitioner or PractitionerRole.
    """
    doc = ruleset.document
    ladder = doc.ladder
    texts = doc.texts
    codings = [{"system": ladder.system, "code": rung.code, "display": rung.display}]
    if doc.codes.order_code is not None:
        codings.append(_coding(doc.codes.order_code))
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "proposal",
    }
    if doc.codes.order_category is not None:
        resource["category"] = [{"coding": [_coding(doc.codes.order_category)]}]
    resource["code"] = {"coding": codings, "text": rung.display}
    dose = values["dose"]
    if dose:
        resource["orderDetail"] = [{"text": dose}]
    resource["subject"] = {"reference": f"Patient/{patient_id}"}
    resource["authoredOn"] = evaluation.evaluation_date.isoformat()
    requester = requester_reference(user_id)
    if requester is not None:
        resource["requester"] = {"reference": requester}
    condition = facts.condition_used if facts is not None else None
    if condition is not None:
        resource["reasonReference"] = [{"reference": f"Condition/{condition.resource_id}"}]
    instruction = fill(texts.patient_instruction, values).strip()
    if adjustment:
        instruction = f"{instruction} {adjustment}".strip()
    if instruction:
        resource["patientInstruction"] = instruction
    notes = [{"text": text} for text in (adjustment, dose) if text]
    notes.append({"text": fill(texts.order_note, values).strip()})
    resource["note"] = notes
    # A failure here is a bug in this module or the rule set, never client input: let it raise.
    # The references (validated FHIR ids) and the date are the only per-request parts, so the resource
    # is validated with them fixed: once per rule-set version, rung and rule.
    fixed = {**resource, "subject": {"reference": "Patient/x"}, "authoredOn": "2000-01-01"}
    if "requester" in fixed:
        fixed["requester"] = {"reference": "Practitioner/x"}
    if "reasonReference" in fixed:
        fixed["reasonReference"] = [{"reference": "Condition/x"}]
    validate(ServiceRequest, fixed)
    return resource


def recommended_order(
    fired: FiredRule,
    evaluation: Evaluation,
    facts: PatientFacts,
    ruleset: RuleSet,
    values: dict[str, str],
    texts: dict[str, str],
    *,
    patient_id: str,
    user_id: str | None = None,
    description: str | None = None,
) -> tuple[dict[str, Any], str] | None:
    """The order a fired rule recommends: (ServiceRequest, action description), or None.

    ``values`` are the card placeholders of ``fired`` (:func:`template_values`) and ``texts`` those plus
    the texts placeholders (:func:`text_values`), as the calling card already has them. ``description``
    is a template for the action's description (default ``texts.action_description``); with the rule's
    adjustment it goes through ``texts.action_description_adjusted``.
    """
    if fired.recommended is None:
        return None
    doc = ruleset.document
    rung = doc.ladder.rung(fired.recommended)
    adjustment = None
    if fired.recommend is not None and fired.recommend.adjustment:
        adjustment = fill(fired.recommend.adjustment, values).strip() or None
    resource = _service_request(rung, evaluation, ruleset, patient_id, adjustment, texts, facts=facts, user_id=user_id)
    text = fill(description or doc.texts.action_description, texts).strip()
    if adjustment:
        adjusted = {**texts, "action_description": text, "adjustment": adjustment}
        text = fill(doc.texts.action_description_adjusted, adjusted).strip()
    return resource, text


def _extension(fired: FiredRule, facts: PatientFacts, evaluation: Evaluation) -> dict[str, Any]:
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
    onset = facts.onset_condition
    if onset is not None and onset.onset is not None:
        fact_values["onsetDate"] = onset.onset.isoformat()  # the first possible day of the onset
        if onset.onset_precision not in (None, "day"):
            fact_values["onsetPrecision"] = onset.onset_precision  # "month" or "year": written only to that
    if facts.red_flags:
        fact_values["redFlags"] = list(dict.fromkeys(f.category for f in facts.red_flags))
    if facts.risk_factors:
        fact_values["redFlagRisks"] = list(dict.fromkeys(f.category for f in facts.risk_factors))
    fact_values["skippedInvalid"] = facts.skipped_invalid

    rec: dict[str, Any] = {"ruleId": fired.rule_id, "decision": fired.decision}
    current = session.exercise if session is not None else a.exercise
    if current is not None:
        rec["currentExercise"] = current
    if fired.recommended is not None:
        rec["recommendedExercise"] = fired.recommended
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


def _override_reasons(ruleset: RuleSet) -> list[OverrideReason]:
    return [OverrideReason(system=r.system, code=r.code, display=r.display) for r in ruleset.document.override_reasons]


def _evidence_links(ruleset: RuleSet) -> list[Link]:
    return [Link(label=e.label, url=e.url, type="absolute") for e in ruleset.document.evidence]


def card_source(ruleset: RuleSet, texts: dict[str, str]) -> Source:
    """The card's ``source``: ``texts.source_label`` filled in, the URL, icon and topic of ``ruleset.source``."""
    meta = ruleset.document.ruleset
    return Source(
        label=fill(ruleset.document.texts.source_label, {**texts, "source_label": meta.source.label}).strip(),
        url=meta.source.url,
        icon=meta.source.icon,
        topic=Coding(**meta.source.topic.model_dump()) if meta.source.topic is not None else None,
    )


def build_card(
    fired: FiredRule,
    evaluation: Evaluation,
    facts: PatientFacts,
    ruleset: RuleSet,
    *,
    patient_id: str,
    uuid_factory: Callable[[], str],
    user_id: str | None = None,
    public_base_url: str | None = None,
    history: Sequence[TrendSession] = (),
) -> Card:
    """The card of one fired rule (see :func:`build_cards`); ``history``: the sessions of its trend."""
    doc = ruleset.document
    rule = ruleset.rule(fired.rule_id)
    if rule.card is None:
        raise ValueError(f"rule {fired.rule_id} is silent: it answers no card")
    values = template_values(evaluation, facts, ruleset, fired)
    texts = text_values(values, fired.rule_id, evaluation, ruleset)

    sections = [fill(rule.card.detail, values).strip()]
    sections += [fill(ruleset.note(note_id).text, values).strip() for note_id in fired.notes]
    sections.append(_facts_table(values, facts, ruleset))
    if history and shows_trend(fired, ruleset):
        sections.append(_trend_section(history, ruleset, public_base_url))
    sections.append(fill(doc.texts.provenance, texts).strip())
    sections.append(_blockquote(doc.disclaimer))
    detail = "\n\n".join(s for s in sections if s)

    source = card_source(ruleset, texts)

    suggestions: list[Suggestion] = []
    order = recommended_order(fired, evaluation, facts, ruleset, values, texts, patient_id=patient_id,
                              user_id=user_id)
    if order is not None:
        resource, description = order
        suggestions.append(
            Suggestion(
                label=fill(doc.texts.suggestion_label, texts).strip(),
                uuid=uuid_factory(),
                is_recommended=_preselected(fired, ruleset),
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
        override_reasons=_override_reasons(ruleset),
        links=[*_evidence_links(ruleset), *filter(None, [_app_link(fired, evaluation, ruleset, public_base_url)])],
        extension=_extension(fired, facts, evaluation),
    )


def build_cards(
    evaluation: Evaluation,
    facts: PatientFacts,
    ruleset: RuleSet,
    *,
    patient_id: str,
    uuid_factory: Callable[[], str] = lambda: str(uuid.uuid4()),
    user_id: str | None = None,
    public_base_url: str | None = None,
) -> list[RuleCard]:
    """One :class:`RuleCard` per fired rule that is not ``silent``, in firing order.

    Each card has a fresh ``uuid``; the summary and detail are the rule's templates filled in, the
    detail followed by the texts of the rule's fired notes, a table of the facts it was decided from,
    the ``texts.provenance`` line, and the disclaimer. A recommended exercise becomes one suggestion
    creating a draft FHIR R4 ``ServiceRequest``. ``extension["org.lbp-cds.recommendation"]`` carries the
    decision for machines (SPEC 2.1, plus ``notes``: the ids of the notes shown, when there are any).
    ``patient_id`` must be the hook context's patient (a FHIR id); ``user_id`` is the hook context's
    ``userId`` (the order's requester when it is a Practitioner or PractitionerRole).

    Progression cards (see :func:`shows_trend`) also show the patient's last sessions, read from
    ``facts.sessions`` (:func:`cds.trend.session_history`), as a table
    and, with ``public_base_url`` (the URL the service is reached at), a chart image it serves; with
    ``public_base_url`` and ``texts.app_link`` a card recommending a rung links the SMART app.
    """
    fired_cards = [f for f in evaluation.fired if not ruleset.rule(f.rule_id).silent]
    history: Sequence[TrendSession] = ()
    if any(shows_trend(f, ruleset) for f in fired_cards):
        history = session_history(facts, ruleset)
    return [
        RuleCard(fired, build_card(fired, evaluation, facts, ruleset, patient_id=patient_id,
                                   uuid_factory=uuid_factory, user_id=user_id, public_base_url=public_base_url,
                                   history=history))
        for fired in fired_cards
    ]


# ------------------------------------------------------------------------------------------------
# Order-check cards (the order-sign service, cds/order_check.py)
# ------------------------------------------------------------------------------------------------


def build_order_check_card(
    check: OrderCheck,
    decisive: FiredRule | None,
    evaluation: Evaluation,
    facts: PatientFacts,
    ruleset: RuleSet,
    *,
    draft_reference: str,
    ordered: str,
    patient_id: str,
    user_id: str | None = None,
    uuid_factory: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> Card:
    """The card of an order check that fired on the draft order ``draft_reference`` of rung ``ordered``.

    ``decisive`` is the patient-view rule whose decision the order conflicts with (its recommended rung
    is the order the suggestion creates). Texts: the check's ``card`` and ``suggestion`` templates, which
    may also use ``{ordered}`` and ``{ordered_name}``; the detail ends like every card (facts table,
    provenance naming the check, disclaimer). The one suggestion deletes the draft (``resourceId``) and,
    when a rung is recommended, creates the recommended ServiceRequest (the patient-view card's order).
    """
    doc = ruleset.document
    values = template_values(evaluation, facts, ruleset, decisive)
    values["ordered"] = ordered
    values["ordered_name"] = doc.ladder.rung(ordered).display
    texts = text_values(values, check.id, evaluation, ruleset)
    sections = [fill(check.card.detail, values).strip(), _facts_table(values, facts, ruleset),
                fill(doc.texts.provenance, texts).strip(), _blockquote(doc.disclaimer)]
    source = card_source(ruleset, texts)
    actions = [Action(type="delete", description=fill(check.suggestion.delete, texts).strip(),
                      resource_id=[draft_reference])]
    order = None
    if decisive is not None and check.suggestion.replace:
        order = recommended_order(decisive, evaluation, facts, ruleset, values, texts, patient_id=patient_id,
                                  user_id=user_id, description=check.suggestion.create)
    if order is not None:
        resource, description = order
        actions.append(Action(type="create", description=description, resource=resource))
    # the replacement order is pre-selected exactly when the patient-view card's own order would be
    # (a not-recommended note there, such as an onset caveat or unusable data, clears it here too)
    recommended = order is None or decisive is None or _preselected(decisive, ruleset)
    suggestion = Suggestion(label=fill(check.suggestion.label, texts).strip(), uuid=uuid_factory(),
                            is_recommended=recommended, actions=actions)
    if decisive is not None:
        extension = _extension(decisive, facts, evaluation)
        rec = extension[EXTENSION_KEY]
        rec["decisionRuleId"] = rec["ruleId"]
    else:
        extension = {EXTENSION_KEY: {"ruleset": evaluation.ruleset.model_dump()}}
        rec = extension[EXTENSION_KEY]
    rec.update(ruleId=check.id, draftOrder=draft_reference, orderedExercise=ordered)
    return Card(
        uuid=uuid_factory(),
        summary=_summary(fill(check.card.summary, values), check.id),
        detail="\n\n".join(s for s in sections if s),
        indicator=check.indicator,
        source=source,
        suggestions=[suggestion],
        selection_behavior="at-most-one",
        override_reasons=_override_reasons(ruleset),
        links=_evidence_links(ruleset),
        extension=extension,
    )
