"""``cds evaluate``: one hook request evaluated offline, explained for a clinician or a machine.

:func:`evaluate_request` runs the pure service core (no server, no fetching) and :func:`explain`
turns the outcome into a JSON-ready report: the facts extracted with the resource ids they came
from, the resources skipped and why, the assessment the rules read, the rules and notes that fired
(with their conditions and the values those conditions used) and the cards. :func:`render_text`
prints that report as plain text.
"""

from __future__ import annotations

import datetime as dt
import json
import textwrap
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .active_rules import ActiveRules
from .assessment import FACT_FIELDS
from .cdshooks import PatientViewRequest, to_json, validation_message
from .clock import FixedClock
from .errors import CdsError
from .facts import FlaggedCondition
from .service import Outcome, evaluate, prefetch_templates
from .templates import render_number


class EvaluateError(CdsError):
    """The request cannot be evaluated offline; the message says why and what to do."""


def read_request(path: Path) -> dict[str, Any]:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvaluateError(f"{path}: no such file") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise EvaluateError(f"{path}: not a JSON hook request ({e})") from None
    if not isinstance(body, dict):
        raise EvaluateError(f"{path}: a hook request is a JSON object")
    return body


def evaluate_request(body: dict[str, Any], active: ActiveRules, as_of: dt.date, *, source: str = "request") -> Outcome:
    """Evaluate a ``patient-view`` request with its prefetch only: missing keys are an error."""
    from .extract import PrefetchShapeError

    try:
        request = PatientViewRequest.model_validate(body)
    except ValidationError as e:
        raise EvaluateError(f"{source}: not a valid patient-view request: {validation_message(e)}") from None
    prefetch = body.get("prefetch") or {}
    missing = [k for k in prefetch_templates(active.ruleset) if k not in prefetch]
    if missing:
        raise EvaluateError(
            f"{source}: prefetch key(s) missing: {', '.join(missing)}. cds evaluate works offline and does not "
            f"fetch from the FHIR server; add them to the request's \"prefetch\" (null means no data)."
        )
    try:
        return evaluate(active, prefetch, patient_id=request.context.patient_id, clock=FixedClock(as_of),
                        user_id=request.context.user_id)
    except PrefetchShapeError as e:
        raise EvaluateError(f"{source}: {e}") from None


def _num(value: float | int | None) -> int | float | None:
    if value is None:
        return None
    f = float(value)
    return int(f) if f.is_integer() else f


def _flagged(c: FlaggedCondition) -> dict[str, str]:
    return {"resourceId": f"Condition/{c.resource_id}", "category": c.category, "categoryDisplay": c.category_display,
            "text": c.text}


def explain(outcome: Outcome, active: ActiveRules) -> dict[str, Any]:
    """The JSON-ready explanation of one evaluation."""
    ruleset = active.ruleset
    facts, evaluation = outcome.facts, outcome.evaluation
    session = facts.latest_session
    session_ids = {r.resource_id for r in session.rounds} if session else set()
    assessment = evaluation.assessment.model_dump()
    params = ruleset.document.parameters

    # the card each fired rule gave (its index in "cards"), from the explicit pairs; None for a silent rule
    card_of = {id(rc.fired): i for i, rc in enumerate(outcome.rule_cards)}
    fired = []
    for rule in evaluation.fired:
        definition = ruleset.rule(rule.rule_id)
        condition = ruleset.conditions[rule.rule_id]
        fired.append({
            "rule": rule.rule_id,
            "stage": rule.stage,
            "priority": definition.priority,
            "when": definition.when.strip(),
            "values": {**{f: _jsonable(assessment.get(f)) for f in sorted(condition.facts)},
                       **{p: _num(params[p]) for p in sorted(condition.parameters)}},
            "decision": rule.decision,
            "indicator": rule.indicator,
            "final": definition.final,
            "notes": [{"note": n, "when": ruleset.note(n).when.strip()} for n in rule.notes],
            "recommended": rule.recommended,
            "card": card_of.get(id(rule)),
        })
    cards = [to_json(c) for c in outcome.cards]

    return {
        "patientId": facts.patient_id,
        "evaluationDate": evaluation.evaluation_date.isoformat(),
        "ruleset": evaluation.ruleset.model_dump(),
        "facts": {
            "conditions": [
                {"resourceId": f"Condition/{c.resource_id}", "onset": c.onset.isoformat() if c.onset else None}
                for c in facts.conditions
            ],
            "onset": facts.onset.isoformat() if facts.onset else None,
            "redFlags": [_flagged(c) for c in facts.red_flags],
            "riskFactors": [_flagged(c) for c in facts.risk_factors],
            "latestSession": None if session is None else {
                "exercise": session.exercise,
                "date": session.date.isoformat(),
                "rounds": [
                    {"resourceId": f"Observation/{r.resource_id}", "round": r.round_number, "reps": _num(r.reps)}
                    for r in session.rounds
                ],
                "painScores": [
                    {"resourceId": f"Observation/{p.resource_id}", "score": _num(p.score), "date": p.date.isoformat(),
                     "derivedFrom": [f"Observation/{d}" for d in p.derived_from]}
                    for p in session.pain_scores
                ],
            },
            "otherRoundsThatDay": [
                {"resourceId": f"Observation/{r.resource_id}", "exercise": r.exercise, "reps": _num(r.reps)}
                for r in facts.rounds if r.resource_id not in session_ids
            ],
        },
        "skipped": [
            {"resourceType": s.resource_type, "resourceId": s.resource_id, "reason": s.reason, "invalid": s.invalid}
            for s in facts.skipped
        ],
        "assessment": {k: _jsonable(v) for k, v in assessment.items()},
        "fired": fired,
        "cards": cards,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return _num(value)
    return value


# -- text ------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    if value is None:
        return "not recorded"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return render_number(value)
    return str(value)


def render_text(report: dict[str, Any], active: ActiveRules) -> str:
    """A clinician-readable view of :func:`explain`'s report."""
    ladder = active.ruleset.document.ladder
    names = {r.code: r.display for r in ladder.rungs}
    rs = report["ruleset"]
    out: list[str] = [
        f"Patient {report['patientId']}, evaluated as of {report['evaluationDate']}",
        f"Rule set {rs['name']} {rs['version']} (sha256 {rs['sha256'][:12]})",
        "",
        "FACTS EXTRACTED",
    ]
    facts = report["facts"]
    if facts["conditions"]:
        out.append("  Low back pain conditions:")
        for c in facts["conditions"]:
            out.append(f"    {c['resourceId']}: onset {c['onset'] or 'not recorded'}")
        out.append(f"  Most recent onset: {facts['onset'] or 'not recorded'}")
    else:
        out.append("  Low back pain conditions: none found")
    for key, heading in (("redFlags", "Red-flag conditions"), ("riskFactors", "Risk-factor conditions")):
        if facts[key]:
            out.append(f"  {heading}:")
            for c in facts[key]:
                out.append(f"    {c['resourceId']}: {c['text']} ({c['categoryDisplay']}, {c['category']})")
        else:
            out.append(f"  {heading}: none found")
    session = facts["latestSession"]
    if session is None:
        out.append("  Latest session: no exercise rounds recorded")
    else:
        out.append(f"  Latest session: {names.get(session['exercise'], session['exercise'])} "
                   f"({session['exercise']}) on {session['date']}")
        for n, r in enumerate(session["rounds"], 1):
            out.append(f"    round {r['round'] or n}: {_show(r['reps'])} reps    {r['resourceId']}")
        if session["painScores"]:
            out.append("  Pain scores for this session:")
            for p in session["painScores"]:
                via = f" (derived from {', '.join(p['derivedFrom'])})" if p["derivedFrom"] else ""
                out.append(f"    {_show(p['score'])}/10 on {p['date']}    {p['resourceId']}{via}")
        else:
            out.append("  Pain scores for this session: none")
    for r in facts["otherRoundsThatDay"]:
        out.append(f"  Also that day (not the session): {r['exercise']} {_show(r['reps'])} reps    {r['resourceId']}")

    out += ["", "RESOURCES SKIPPED"]
    if not report["skipped"]:
        out.append("  none")
    for s in report["skipped"]:
        flag = " [invalid FHIR, counted on the card]" if s["invalid"] else ""
        out.append(f"  {s['resourceType']}/{s['resourceId'] or '(no id)'}: {s['reason']}{flag}")

    out += ["", "ASSESSMENT (what the rules read)"]
    width = max(len(k) for k in report["assessment"])
    for name, value in report["assessment"].items():
        meaning = FACT_FIELDS.get(name, (None, ""))[1]
        out.append(f"  {name:<{width}}  {_show(value):<12}  {meaning}")

    out += ["", "RULES FIRED"]
    halted = False
    for stage in active.ruleset.document.stages:
        in_stage = [f for f in report["fired"] if f["stage"] == stage]
        if not in_stage:
            out.append(f"  {stage}: " + ("not evaluated (a final rule fired earlier)" if halted else "no rule fired"))
        out += _fired_lines(in_stage)
        halted = halted or any(f["final"] for f in in_stage)

    out += ["", f"CARDS ({len(report['cards'])})"]
    for n, card in enumerate(report["cards"], 1):
        out.append(f"  [{n}] {card['indicator'].upper()}: {card['summary']}")
        for s in card.get("suggestions", []):
            for action in s.get("actions", []):
                out.append(f"      Recommendation: {action.get('description', s['label'])}")
        if not card.get("suggestions"):
            out.append("      Recommendation: none")
        out.append("")
        for line in card.get("detail", "").splitlines():
            out.append(textwrap.indent(line, "      ") if line.strip() else "")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _fired_lines(fired: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for f in fired:
        values = ", ".join(f"{k} = {_show(v)}" for k, v in f["values"].items())
        out.append(f"  {f['stage']}: {f['rule']} (priority {f['priority']}) -> {f['decision']}, {f['indicator']}"
                   + (f", recommends {f['recommended']}" if f.get("recommended") else "")
                   + (" [final: later stages skipped]" if f["final"] else ""))
        out.append(f"      when: {f['when']}")
        out.append(f"      with: {values}")
        for note in f["notes"]:
            out.append(f"      note {note['note']}: {note['when']}")
    return out
