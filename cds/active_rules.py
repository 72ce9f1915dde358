"""One rule-set version ready to serve: the checked rule set and its compiled engine.

A request takes an :class:`ActiveRules` once (``LiveRuleSet.current()``) and uses that pair for the
whole request. The engine's C ruleset is freed when the last holder lets go of it (the engine's
finaliser; see :class:`cds.engine.RuleEngine`), so a request that still holds a replaced pair keeps
evaluating correctly, and a replaced pair costs no memory once its requests are done.

:func:`candidate` builds the pair for a rule folder and accepts it only if the rule checker passes
(:func:`cds.ruleset.loader.load_ruleset`) and, when the folder has a ``tests/`` directory with cases,
every case passes on that very engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .engine import EngineError, RuleEngine
from .ruleset.loader import RuleSetError, load_ruleset
from .ruleset.model import RuleSet


@dataclass(frozen=True)
class ActiveRules:
    ruleset: RuleSet
    engine: RuleEngine


class CandidateRejected(Exception):
    """A rule folder that must not be served. ``summary`` is one line; ``details`` (the message) says
    why: the ``file:line:column`` problems, or the failing rule-test cases with where they are."""

    def __init__(self, summary: str, details: str, *, ruleset_error: RuleSetError | None = None):
        super().__init__(details)
        self.summary = summary
        self.details = details
        self.ruleset_error = ruleset_error


def build(ruleset: RuleSet) -> ActiveRules:
    return ActiveRules(ruleset, RuleEngine(ruleset))


def rule_tests(active: ActiveRules, tests_dir: Path) -> str | None:
    """Run the cases of ``tests_dir`` on ``active``: None if all pass (or there are none), else why."""
    from .ruleset.ruletests import RuleTestError, load_cases, run_cases

    if not tests_dir.is_dir():
        return None
    try:
        cases = load_cases(tests_dir)
    except RuleTestError as e:
        return f"the rule tests in {tests_dir} cannot be read:\n{e}"
    except OSError as e:
        return f"the rule tests in {tests_dir} cannot be read: {e}"
    if not cases:
        return None
    failed = run_cases(cases, active).failed
    if not failed:
        return None
    lines = [f"{len(failed)} of {len(cases)} rule test(s) in {tests_dir} fail:"]
    for r in failed:
        lines.append(f"FAIL {r.case.where}: {r.case.name}")
        lines += [f"    {d}" for d in ([r.error] if r.error else r.diff)]
    return "\n".join(lines)


def candidate(folder: str | Path, *, ruleset: RuleSet | None = None) -> ActiveRules:
    """The servable pair of ``folder``, or :class:`CandidateRejected` (any engine built is freed)."""
    folder = Path(folder)
    if ruleset is None:
        try:
            ruleset = load_ruleset(folder)
        except RuleSetError as e:
            raise CandidateRejected("rule files are invalid", str(e), ruleset_error=e) from None
    try:
        active = build(ruleset)
    except EngineError as e:
        raise CandidateRejected("the rule engine rejects the rule set", str(e)) from None
    try:
        problem = rule_tests(active, folder / "tests")
    except BaseException:
        active.engine.close()
        raise
    if problem is not None:
        active.engine.close()
        raise CandidateRejected("the rule tests fail", problem)
    return active


__all__ = ["ActiveRules", "CandidateRejected", "build", "candidate", "rule_tests"]
