"""One rule-set version ready to serve: the checked rule set and its compiled engine.

A request takes an :class:`ActiveRules` once (``LiveRuleSet.current()``) and uses that pair for the
whole request. The engine's C ruleset is freed when the last holder lets go of it (the engine's
finaliser; see :class:`cds.engine.RuleEngine`), so a request that still holds a replaced pair keeps
evaluating correctly, and a replaced pair costs no memory once its requests are done.

Whether a rule folder may be served at all is decided by :mod:`cds.reload_gate`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .engine import RuleEngine
from .ruleset.model import RuleSet


@dataclass(frozen=True)
class ActiveRules:
    ruleset: RuleSet
    engine: RuleEngine


def build(ruleset: RuleSet) -> ActiveRules:
    return ActiveRules(ruleset, RuleEngine(ruleset))


__all__ = ["ActiveRules", "build"]
