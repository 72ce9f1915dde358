"""The order-sign service as a pure function of the hook request: no Flask, no HTTP.

hook request + complete prefetch -> the patient evaluated exactly as patient-view does
(:func:`cds.service.evaluate`: same extraction, same rules) -> for each draft ServiceRequest of a
ladder exercise in ``context.draftOrders``: the order facts (:mod:`cds.order_facts`) -> the first
order check of the rule files (``order_checks``, lowest ``priority``) whose ``when`` holds -> one card
for that draft. No check holds: the order agrees with the decision, no card.

The decision the orders are checked against is the patient-view card that recommends an exercise,
else that of the final rule that ended the evaluation, else the first card: :func:`decisive_rule`.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .active_rules import ActiveRules
from .cards import build_order_check_card
from .cdshooks import FHIR_ID_PATTERN, Card
from .clock import Clock
from .decisions import Evaluation, FiredRule
from .extract import MAX_ENTRIES_PER_KEY
from .facts import PatientFacts
from .ruleset.conditions import holds
from .ruleset.loader import ORDER_CHECK_PREFIX
from .ruleset.model import RuleSet
from .ruleset.schema import OrderCheck
from .service import decide

log = logging.getLogger("cds.order_check")

_FHIR_ID = re.compile(FHIR_ID_PATTERN)


@dataclass(frozen=True)
class DraftOrder:
    """A draft ServiceRequest of a ladder exercise (``draftOrders`` entry ``index``)."""

    index: int
    resource_id: str
    exercise: str  # ladder code
    rung: int  # ladder position, 1 = first rung

    @property
    def reference(self) -> str:
        return f"ServiceRequest/{self.resource_id}"


@dataclass(frozen=True)
class FiredCheck:
    """An order check that fired on one draft order (the audit and the rule tests read it)."""

    rule_id: str  # the order check's id
    decision: str  # the patient-view decision the order conflicts with ("none" without a card)
    indicator: str
    draft: DraftOrder
    recommended: str | None  # ladder code of the order the suggestion creates


@dataclass(frozen=True)
class CheckCard:
    fired: FiredCheck
    card: Card


@dataclass
class OrderOutcome:
    """Everything one order-sign evaluation produced."""

    rule_cards: list[CheckCard]
    evaluation: Evaluation  # the patient-view decision the orders were checked against
    facts: PatientFacts
    drafts: list[DraftOrder]
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def cards(self) -> list[Card]:
        return [rc.card for rc in self.rule_cards]


def draft_orders(bundle: Mapping[str, Any], ruleset: RuleSet) -> list[DraftOrder]:
    """The draft ServiceRequests of ladder exercises in a ``draftOrders`` Bundle, in entry order.

    A ladder exercise is an order whose ``code`` has a coding of the ladder's system with a ladder
    code (beside, say, the ``codes.order_code`` coding). Any other entry is skipped; a ladder order
    without a usable ``id`` (nothing to delete) too. Skips are logged by entry position only.
    """
    ladder = ruleset.document.ladder
    codes = ladder.codes
    out: list[DraftOrder] = []
    for index, entry in enumerate(bundle.get("entry") or []):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or resource.get("resourceType") != "ServiceRequest":
            log.info("draftOrders entry %d skipped: not a ServiceRequest", index)
            continue
        code = resource.get("code")
        codings = code.get("coding") if isinstance(code, dict) else None
        exercise = next(
            (c["code"] for c in codings or [] if isinstance(c, dict) and c.get("system") == ladder.system
             and c.get("code") in codes),
            None,
        ) if isinstance(codings, list) else None
        if exercise is None:
            log.info("draftOrders entry %d skipped: not a ladder exercise", index)
            continue
        rid = resource.get("id")
        if not isinstance(rid, str) or not _FHIR_ID.match(rid):
            log.info("draftOrders entry %d skipped: a ladder exercise order without a valid id", index)
            continue
        out.append(DraftOrder(index, rid, exercise, codes.index(exercise) + 1))
    return out


def decisive_rule(evaluation: Evaluation, ruleset: RuleSet) -> FiredRule | None:
    """The patient-view decision orders are checked against: the card that recommends an exercise,
    else the card of the ``final`` rule that ended the evaluation (a red flag, a new onset), else the
    first card, else None (no card at all). A card beside the decision, such as a risk-factor warning
    ahead of a new onset, is never the decision."""
    fired = evaluation.fired
    recommending = next((f for f in fired if f.recommended is not None), None)
    if recommending is not None:
        return recommending
    final = next((f for f in fired if ruleset.rule(f.rule_id).final), None)
    return final or (fired[0] if fired else None)


def order_facts(draft: DraftOrder, evaluation: Evaluation, ruleset: RuleSet) -> dict[str, Any]:
    """The facts an order check reads for one draft: the assessment plus the order facts."""
    values: dict[str, Any] = {k: v for k, v in evaluation.assessment.model_dump().items() if v is not None}
    values["ordered_exercise"] = draft.exercise
    values["ordered_rung"] = draft.rung
    decisive = decisive_rule(evaluation, ruleset)
    if decisive is not None:
        values["decision"] = decisive.decision
        if decisive.recommended is not None:
            values["recommended_exercise"] = decisive.recommended
            values["recommended_rung"] = ruleset.ladder_codes.index(decisive.recommended) + 1
            values["rungs_above_recommended"] = draft.rung - values["recommended_rung"]
    return values


def first_check(facts: Mapping[str, Any], ruleset: RuleSet) -> OrderCheck | None:
    """The order check (lowest priority, then file order) whose condition holds, or None."""
    checks = sorted(enumerate(ruleset.document.order_checks), key=lambda t: (t[1].priority, t[0]))
    for _, check in checks:
        if holds(ruleset.conditions[ORDER_CHECK_PREFIX + check.id], facts):
            return check
    return None


def evaluate_orders(
    active: ActiveRules,
    prefetch: Mapping[str, Any],
    draft_bundle: Mapping[str, Any],
    *,
    patient_id: str,
    clock: Clock,
    user_id: str | None = None,
    stages: list[str] | None = None,
    max_entries_per_key: int = MAX_ENTRIES_PER_KEY,
    uuid_factory: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> OrderOutcome:
    """Check every ladder-exercise draft order of ``draft_bundle`` against the patient's decision."""
    ruleset = active.ruleset
    # the patient's decision, as patient-view takes it, without building patient-view cards nobody sees
    evaluation, facts, timings = decide(active, prefetch, patient_id=patient_id, clock=clock, stages=stages,
                                        max_entries_per_key=max_entries_per_key)
    decisive = decisive_rule(evaluation, ruleset)
    drafts = draft_orders(draft_bundle, ruleset)
    cards: list[CheckCard] = []
    for draft in drafts:
        check = first_check(order_facts(draft, evaluation, ruleset), ruleset)
        if check is None:
            continue  # the order agrees with the decision
        card = build_order_check_card(
            check, decisive, evaluation, facts, ruleset, draft_reference=draft.reference,
            ordered=draft.exercise, patient_id=patient_id, user_id=user_id, uuid_factory=uuid_factory,
        )
        fired = FiredCheck(check.id, decisive.decision if decisive else "none", check.indicator, draft,
                           decisive.recommended if decisive else None)
        cards.append(CheckCard(fired, card))
    return OrderOutcome(cards, evaluation, facts, drafts, timings)


__all__ = [
    "CheckCard", "DraftOrder", "FiredCheck", "OrderOutcome",
    "decisive_rule", "draft_orders", "evaluate_orders", "first_check", "order_facts",
]
