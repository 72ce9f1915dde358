"""What the rule engine decided for one evaluation: the rules that fired, in firing order."""

from __future__ import annotations

import datetime as dt
import logging

from pydantic import BaseModel, ConfigDict

from .assessment import Assessment
from .ruleset.model import RuleSetIdentity
from .ruleset.schema import Decision, Indicator, Ladder, Recommend

log = logging.getLogger(__name__)


class FiredRule(BaseModel):
    model_config = ConfigDict(frozen=True)

    rule_id: str
    stage: str
    decision: Decision
    indicator: Indicator
    recommend: Recommend | None = None
    recommended: str | None = None  # ladder code of the recommended rung (see recommended_rung)
    notes: tuple[str, ...] = ()  # ids of the notes whose condition held for this rule's stage


class Evaluation(BaseModel):
    model_config = ConfigDict(frozen=True)

    ruleset: RuleSetIdentity
    evaluation_date: dt.date
    assessment: Assessment
    fired: tuple[FiredRule, ...]


def recommended_rung(recommend: Recommend | None, assessment: Assessment, ladder: Ladder) -> str | None:
    """The ladder code a rule recommends, relative to the latest session's rung (clamped to the ladder).

    ``first`` -> the first rung; ``previous``/``current``/``next`` -> one below / the same / one above
    the assessment's rung (``previous`` on the first rung stays there; ``next`` on the top stays there).
    ``None`` when the rule recommends nothing, or a relative move has no current rung to move from.
    """
    if recommend is None:
        return None
    rungs = ladder.rungs
    if recommend.rung == "first":
        return rungs[0].code
    if assessment.rung is None:
        log.warning("rule recommends %r but no session rung is known; no recommendation made", recommend.rung)
        return None
    index = assessment.rung - 1 + {"previous": -1, "current": 0, "next": 1}[recommend.rung]
    return rungs[min(max(index, 0), len(rungs) - 1)].code
