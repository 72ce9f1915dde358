"""The patient-view service as a pure function of the hook request: no Flask, no HTTP.

hook request + complete prefetch -> facts (``extract``) -> assessment -> engine -> cards.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .active_rules import ActiveRules
from .assessment import assess
from .cards import RuleCard, build_cards
from .cdshooks import Card, ServiceDescription
from .clock import Clock
from .decisions import Evaluation
from .errors import CdsError
from .extract import extract
from .facts import PatientFacts
from .ruleset.model import RuleSet

log = logging.getLogger("cds.service")

SERVICE_ID = "lbp-exercise-progression"
HOOK = "patient-view"
RULESET_EXTENSION = "org.lbp-cds.ruleset"


class MissingPrefetch(CdsError, LookupError):
    """Required data was neither prefetched nor fetchable (HTTP 412)."""

    def __init__(self, keys: list[str], reason: str = "not prefetched"):
        self.keys = keys
        self.reason = reason
        super().__init__(f"prefetch key(s) {', '.join(keys)}: {reason}")


def prefetch_templates(ruleset: RuleSet) -> dict[str, str]:
    """The prefetch templates of SPEC §2.1; codes come from the rule files, so a site's mapping applies."""
    codes = ruleset.document.codes
    patient = "{{context.patientId}}"
    condition_codes = ",".join(f"{c.system}|{c.code}" for c in codes.lbp_condition)
    pain = f"{codes.pain_score.system}|{codes.pain_score.code}"
    reps = f"{codes.reps_to_failure.system}|{codes.reps_to_failure.code}"
    return {
        "patient": f"Patient/{patient}",
        "lbpConditions": f"Condition?patient={patient}&code={condition_codes}",
        "painScores": f"Observation?patient={patient}&code={pain}&_sort=-date&_count=100",
        "exerciseRounds": f"Observation?patient={patient}&code={reps}&_sort=-date&_count=100",
    }


def describe(ruleset: RuleSet) -> ServiceDescription:
    meta = ruleset.document.ruleset
    return ServiceDescription(
        hook=HOOK,
        id=SERVICE_ID,
        title=meta.title,
        description=meta.description,
        prefetch=prefetch_templates(ruleset),
        extension={RULESET_EXTENSION: ruleset.identity.model_dump()},
    )


@dataclass
class Outcome:
    """Everything one evaluation produced, for the HTTP layer, the audit and ``cds evaluate``."""

    rule_cards: list[RuleCard]  # one per fired rule, in firing order: the rule and its card
    evaluation: Evaluation
    facts: PatientFacts
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def cards(self) -> list[Card]:
        """The cards alone, in firing order."""
        return [rc.card for rc in self.rule_cards]


def evaluate(active: ActiveRules, prefetch: Mapping[str, Any], *, patient_id: str, clock: Clock) -> Outcome:
    """Evaluate one patient with one rule-set version. ``prefetch`` holds every template key."""
    ruleset = active.ruleset
    missing = [k for k in prefetch_templates(ruleset) if k not in prefetch]
    if missing:
        raise MissingPrefetch(missing)
    doc = ruleset.document
    t0 = time.perf_counter()
    facts = extract(prefetch, patient_id=patient_id, codes=doc.codes, ladder=doc.ladder)
    t1 = time.perf_counter()
    today = clock.today()
    evaluation = active.engine.evaluate(assess(facts, doc.ladder.codes, today, doc.parameters), today)
    t2 = time.perf_counter()
    cards = build_cards(evaluation, facts, ruleset, patient_id=patient_id)
    t3 = time.perf_counter()
    timings = {"extract": (t1 - t0) * 1e3, "rules": (t2 - t1) * 1e3, "cards": (t3 - t2) * 1e3}
    return Outcome(cards, evaluation, facts, timings)
