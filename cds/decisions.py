"""What the rule engine decided for one evaluation: the rules that fired, in firing order."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict

from .assessment import Assessment
from .ruleset.model import RuleSetIdentity
from .ruleset.schema import Decision, Indicator, Recommend


class FiredRule(BaseModel):
    model_config = ConfigDict(frozen=True)

    rule_id: str
    stage: str
    decision: Decision
    indicator: Indicator
    recommend: Recommend | None = None
    notes: tuple[str, ...] = ()  # ids of the notes whose condition held for this rule's stage


class Evaluation(BaseModel):
    model_config = ConfigDict(frozen=True)

    ruleset: RuleSetIdentity
    evaluation_date: dt.date
    assessment: Assessment
    fired: tuple[FiredRule, ...]
