"""The gate a rule folder passes before it is served: :func:`candidate` builds the pair for a rule folder
and accepts it only if the rule checker passes (:func:`cds.ruleset.loader.load_ruleset`) and, when the
folder has a ``tests/`` directory with cases, every case passes on that very engine.
"""

from __future__ import annotations

from pathlib import Path

from .active_rules import ActiveRules, build
from .engine import EngineError
from .errors import CdsError
from .ruleset.loader import RuleSetError, load_ruleset
from .ruleset.model import RuleSet
from .ruleset.ruletests import RuleTestError, load_cases, run_cases


class CandidateRejected(CdsError):
    """A rule folder that must not be served. ``summary`` is one line; ``details`` (the message) says
    why: the ``file:line:column`` problems, or the failing rule-test cases with where they are."""

    def __init__(self, summary: str, details: str, *, ruleset_error: RuleSetError | None = None):
        super().__init__(details)
        self.summary = summary
        self.details = details
        self.ruleset_error = ruleset_error


def rule_tests(active: ActiveRules, tests_dir: Path) -> str | None:
    """Run the cases of ``tests_dir`` on ``active``: None if all pass (or there are none), else why."""
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


__all__ = ["CandidateRejected", "candidate", "rule_tests"]
