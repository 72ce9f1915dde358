"""The patient-view service as a pure function of the hook request: no Flask, no HTTP.

hook request + complete prefetch -> facts (``extract``) -> assessment -> engine -> cards.

The services a rule set offers are declared in its ``services`` section (:func:`services`); without
one it offers the single patient-view service :data:`SERVICE_ID`. The ``order-sign`` flow is in
:mod:`cds.order_check`, built on :func:`evaluate`.
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
from .extract import MAX_ENTRIES_PER_KEY, extract
from .facts import PatientFacts
from .fhir_client import PrefetchUnavailable
from .ruleset.model import RuleSet
from .ruleset.schema import Service

log = logging.getLogger("cds.service")

#: the default service: what a rule set without a ``services`` section offers
SERVICE_ID = "lbp-exercise-progression"
HOOK = "patient-view"
ORDER_SIGN_HOOK = "order-sign"
RULESET_EXTENSION = "org.lbp-cds.ruleset"


def prefetch_templates(ruleset: RuleSet) -> dict[str, str]:
    """The prefetch templates of SPEC §2.1; codes come from the rule files, so a site's mapping applies."""
    codes = ruleset.document.codes
    patient = "{{context.patientId}}"
    # every active condition: LBP, red-flag and risk-factor codes are matched locally (prefixes included)
    clinical = ",".join(codes.condition_clinical_status)
    pain = ",".join(f"{c.system}|{c.code}" for c in codes.pain_codes)
    reps = ",".join(f"{c.system}|{c.code}" for c in codes.reps_codes)
    return {
        "patient": f"Patient/{patient}",
        "conditions": f"Condition?patient={patient}&clinical-status={clinical}",
        "painScores": f"Observation?patient={patient}&code={pain}&_sort=-date&_count=100",
        "exerciseRounds": f"Observation?patient={patient}&code={reps}&_sort=-date&_count=100",
    }


def services(ruleset: RuleSet) -> list[Service]:
    """The services the rule set declares (``services``), or the default patient-view service."""
    return list(ruleset.document.services) or [Service(id=SERVICE_ID, hook=HOOK)]


def find_service(ruleset: RuleSet, service_id: str) -> Service | None:
    """The declared service with this id, or None."""
    return next((s for s in services(ruleset) if s.id == service_id), None)


def describe(ruleset: RuleSet, svc: Service | None = None) -> ServiceDescription:
    """The discovery entry of ``svc`` (default: the rule set's first service). Every service has the
    same prefetch (an order-sign service evaluates the patient exactly as patient-view does)."""
    meta = ruleset.document.ruleset
    svc = svc or services(ruleset)[0]
    return ServiceDescription(
        hook=svc.hook,
        id=svc.id,
        title=svc.title or meta.title,
        description=svc.description or meta.description,
        prefetch=prefetch_templates(ruleset),
        usage_requirements=" ".join(svc.usage_requirements.split()) if svc.usage_requirements else None,
        extension={RULESET_EXTENSION: ruleset.identity.model_dump()},
    )


def describe_all(ruleset: RuleSet) -> list[ServiceDescription]:
    """The discovery entries of every service, in declaration order."""
    return [describe(ruleset, s) for s in services(ruleset)]


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


def decide(
    active: ActiveRules,
    prefetch: Mapping[str, Any],
    *,
    patient_id: str,
    clock: Clock,
    stages: list[str] | None = None,
    max_entries_per_key: int = MAX_ENTRIES_PER_KEY,
) -> tuple[Evaluation, PatientFacts, dict[str, float]]:
    """The decision for one patient without its cards: (evaluation, facts, timings in ms). See
    :func:`evaluate` for the arguments; the order-sign service checks draft orders against it."""
    ruleset = active.ruleset
    missing = [k for k in prefetch_templates(ruleset) if k not in prefetch]
    if missing:
        raise PrefetchUnavailable(missing[0], "not prefetched", keys=missing)
    doc = ruleset.document
    t0 = time.perf_counter()
    facts = extract(prefetch, patient_id=patient_id, codes=doc.codes, ladder=doc.ladder,
                    max_entries_per_key=max_entries_per_key)
    t1 = time.perf_counter()
    today = clock.today()
    evaluation = active.engine.evaluate(assess(facts, doc.ladder.codes, today, doc.parameters), today, stages=stages)
    t2 = time.perf_counter()
    return evaluation, facts, {"extract": (t1 - t0) * 1e3, "rules": (t2 - t1) * 1e3}


def evaluate(
    active: ActiveRules,
    prefetch: Mapping[str, Any],
    *,
    patient_id: str,
    clock: Clock,
    user_id: str | None = None,
    stages: list[str] | None = None,
    max_entries_per_key: int = MAX_ENTRIES_PER_KEY,
    public_base_url: str | None = None,
) -> Outcome:
    """Evaluate one patient with one rule-set version. ``prefetch`` holds every template key; a key
    still absent is :class:`~cds.fhir_client.PrefetchUnavailable` (412), this function never fetches.

    ``user_id`` (the hook context's ``userId``) becomes the requester of proposed orders when it is a
    Practitioner or PractitionerRole; ``stages``: only the rules of those stages run (a service's
    ``stages``; None: every stage). A prefetch Bundle of more than ``max_entries_per_key``
    entries is :class:`~cds.extract.PrefetchTooLarge` (``CDS_MAX_ENTRIES_PER_KEY``). ``public_base_url``
    (the URL EHRs reach the service at) gives progression cards their trend chart and SMART app link.
    """
    evaluation, facts, timings = decide(active, prefetch, patient_id=patient_id, clock=clock, stages=stages,
                                        max_entries_per_key=max_entries_per_key)
    t2 = time.perf_counter()
    cards = build_cards(evaluation, facts, active.ruleset, patient_id=patient_id, user_id=user_id,
                        public_base_url=public_base_url)
    timings["cards"] = (time.perf_counter() - t2) * 1e3
    return Outcome(cards, evaluation, facts, timings)
