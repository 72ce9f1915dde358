"""Can a rule ever fire? A rule is shadowed when a higher-priority rule of its stage always matches
whenever it does (first match wins within a stage). We show it only where it can be proved from the
comparisons alone: every alternative of the rule implies the whole condition of one earlier rule.
"""

from __future__ import annotations

import math

from .conditions import Comparison, CompiledCondition

_INF = math.inf


def _interval(c: Comparison) -> tuple[float, bool, float, bool] | None:
    """(low, low_inclusive, high, high_inclusive) of the values a numeric comparison admits."""
    if not isinstance(c.value, float):
        return None
    v = c.value
    return {
        "<": (-_INF, False, v, False),
        "<=": (-_INF, False, v, True),
        ">": (v, False, _INF, False),
        ">=": (v, True, _INF, False),
        "==": (v, True, v, True),
    }.get(c.op)


def _within(inner: tuple, outer: tuple) -> bool:
    ilo, ilo_in, ihi, ihi_in = inner
    olo, olo_in, ohi, ohi_in = outer
    low_ok = ilo > olo or (ilo == olo and (olo_in or not ilo_in))
    high_ok = ihi < ohi or (ihi == ohi and (ohi_in or not ihi_in))
    return low_ok and high_ok


def implies(d: Comparison, c: Comparison) -> bool:
    """Does comparison ``d`` holding guarantee that ``c`` holds?"""
    if d.fact != c.fact:
        return False
    if c.op == "present":
        return d.op != "missing"
    if c.op == "missing" or d.op == "missing":
        return d.op == c.op
    if c.op == "!=":
        return (d.op == "!=" and d.value == c.value) or (d.op == "==" and d.value != c.value)
    if c.op == "==" and not isinstance(c.value, float):
        return d.op == "==" and d.value == c.value
    di, ci = _interval(d), _interval(c)
    return di is not None and ci is not None and _within(di, ci)


def _alternative_implies(alternative: list[Comparison], condition: CompiledCondition) -> bool:
    return any(all(any(implies(d, c) for d in alternative) for c in other) for other in condition.dnf)


def shadowed_by(rule: CompiledCondition, earlier: list[tuple[str, CompiledCondition]]) -> str | None:
    """The id of an earlier rule that matches whenever ``rule`` does, if one can be shown."""
    for rule_id, condition in earlier:
        if rule.dnf and all(_alternative_implies(alt, condition) for alt in rule.dnf):
            return rule_id
    return None
