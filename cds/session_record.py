"""Record a session: a validated form -> the Observations of the SPEC profile (SPEC §2). Pure: no Flask, no HTTP.

The SMART app's form (``cds.http.smart_app``) sends an exercise (a ladder code), a date, each round's
reps and the highest pain during and after the exercise. :func:`parse_form` validates it against the
rule set (:class:`SessionForm`; a wrong field is a :class:`FormErrors` keyed by the form's input id,
worded by ``app.errors``); :func:`round_observations` and :func:`pain_observations` build the
resources to create: one ``reps-to-technical-failure`` Observation per round (the exercise and round
number as components) and one pain score each for during and after, linked by ``derivedFrom`` to the
rounds once they have ids on the server. Every code comes from the rule files' ``codes`` and ``ladder``.

Form bounds: at most ``record_max_rounds`` rounds (parameter, default :data:`DEFAULT_MAX_ROUNDS`) of
0..``record_max_reps`` reps (default :data:`DEFAULT_MAX_REPS`); pain on the 0-10 scale of the pain code.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .errors import CdsError
from .ruleset.model import RuleSet
from .templates import derived_parameters, fill, render_number

#: plausibility bounds of the form when the rule set does not set them (parameters record_max_*)
DEFAULT_MAX_ROUNDS = 10
DEFAULT_MAX_REPS = 1000
PAIN_MAX = 10  # the 0-10 numeric rating scale of the pain score (SPEC §2)

UCUM = "http://unitsofmeasure.org"


class SessionForm(BaseModel):
    """One session as entered, validated (:func:`parse_form`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    exercise: str
    date: dt.date
    reps: tuple[int, ...] = Field(min_length=1)
    pain_during: int = Field(ge=0, le=PAIN_MAX)
    pain_after: int = Field(ge=0, le=PAIN_MAX)


class FormErrors(CdsError):
    """The fields that are wrong: input id -> message (``app.errors``)."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__(", ".join(errors))
        self.errors = errors


def prescribed_rounds(ruleset: RuleSet) -> int:
    """The rounds the form shows at first: the ``rounds`` parameter (at least 1)."""
    return max(1, int(ruleset.document.parameters.get("rounds", 1)))


def max_rounds(ruleset: RuleSet) -> int:
    params = ruleset.document.parameters
    return max(prescribed_rounds(ruleset), int(params.get("record_max_rounds", DEFAULT_MAX_ROUNDS)))


def max_reps(ruleset: RuleSet) -> int:
    return max(1, int(ruleset.document.parameters.get("record_max_reps", DEFAULT_MAX_REPS)))


def round_count(form: Mapping[str, str], ruleset: RuleSet) -> int:
    """How many round inputs the form has: the highest ``reps-N`` sent, at least the prescribed rounds."""
    sent = [int(k[5:]) for k in form if k.startswith("reps-") and k[5:].isdigit()]
    return min(max([prescribed_rounds(ruleset), *sent]), max_rounds(ruleset))


def _whole(text: str | None, low: int, high: int) -> int | None:
    text = (text or "").strip()
    if not text.isdigit() or len(text) > 6:
        return None
    value = int(text)
    return value if low <= value <= high else None


def parse_form(form: Mapping[str, str], ruleset: RuleSet, today: dt.date) -> SessionForm:
    """Validate the form; raises :class:`FormErrors` (input id -> message) naming every wrong field.

    Rounds ``reps-1`` .. ``reps-K`` (K from :func:`round_count`): all must be filled; pain
    ``pain_during`` and ``pain_after`` 0-10; ``date`` ISO, not after ``today``."""
    app = ruleset.document.app
    parameters = ruleset.document.parameters
    params = {k: render_number(v) for k, v in {**parameters, **derived_parameters(parameters)}.items()}
    top = max_reps(ruleset)
    messages = {
        "exercise": app.errors.exercise if app else "exercise",
        "date": app.errors.date if app else "date",
        "reps": fill(app.errors.reps, {**params, "max_reps": str(top)}) if app else "reps",
        "pain": app.errors.pain if app else "pain",
    }
    errors: dict[str, str] = {}
    exercise = (form.get("exercise") or "").strip()
    if exercise not in ruleset.document.ladder.codes:
        errors["exercise"] = messages["exercise"]
    day: dt.date | None = None
    try:
        text = (form.get("date") or "").strip()
        day = dt.date.fromisoformat(text) if len(text) == 10 else None
    except ValueError:
        day = None
    if day is None or day > today:
        errors["session-date"] = messages["date"]
    reps: list[int] = []
    for n in range(1, round_count(form, ruleset) + 1):
        value = _whole(form.get(f"reps-{n}"), 0, top)
        if value is None:
            errors[f"reps-{n}"] = messages["reps"]
        else:
            reps.append(value)
    pains: dict[str, int] = {}
    for name, input_id in (("pain_during", "pain-during"), ("pain_after", "pain-after")):
        value = _whole(form.get(name), 0, PAIN_MAX)
        if value is None:
            errors[input_id] = messages["pain"]
        else:
            pains[name] = value
    if errors:
        raise FormErrors(errors)
    assert day is not None
    return SessionForm(exercise=exercise, date=day, reps=tuple(reps), **pains)


def _subject(patient_id: str) -> dict[str, str]:
    return {"reference": f"Patient/{patient_id}"}


def _coding(c: Any) -> dict[str, str]:
    out = {"system": c.system, "code": c.code}
    if getattr(c, "display", None):
        out["display"] = c.display
    return out


def round_observations(session: SessionForm, ruleset: RuleSet, patient_id: str) -> list[dict[str, Any]]:
    """One ``reps-to-technical-failure`` Observation per round, in round order (SPEC §2 example)."""
    codes, ladder = ruleset.document.codes, ruleset.document.ladder
    rung = ladder.rung(session.exercise)
    out = []
    for n, reps in enumerate(session.reps, start=1):
        out.append({
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [_coding(codes.reps_codes[0])]},
            "subject": _subject(patient_id),
            "effectiveDateTime": session.date.isoformat(),
            "valueQuantity": {"value": reps, "unit": "repetitions", "system": UCUM, "code": "{repetitions}"},
            "component": [
                {"code": {"coding": [_coding(codes.exercise_component)]},
                 "valueCodeableConcept": {"coding": [{"system": ladder.system, "code": rung.code,
                                                      "display": rung.display}]}},
                {"code": {"coding": [_coding(codes.round_component)]}, "valueInteger": n},
            ],
        })
    return out


def pain_observations(
    session: SessionForm, ruleset: RuleSet, patient_id: str, round_refs: Sequence[str]
) -> list[dict[str, Any]]:
    """The pain during and the pain after the exercise: two 0-10 pain scores on the session's date, each
    ``derivedFrom`` the rounds (``round_refs``: ``Observation/<id>`` as created on the server), so they
    belong to this session only (SPEC §2, Session)."""
    code = ruleset.document.codes.pain_codes[0]
    return [
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [_coding(code)]},
            "subject": _subject(patient_id),
            "effectiveDateTime": session.date.isoformat(),
            "valueInteger": score,
            "derivedFrom": [{"reference": ref} for ref in round_refs],
        }
        for score in (session.pain_during, session.pain_after)
    ]
