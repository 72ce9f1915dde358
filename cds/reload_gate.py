"""The gate a rule folder passes before it is served: :func:`candidate` builds the pair for a rule folder
and accepts it only if the rule checker passes (:func:`cds.ruleset.loader.load_ruleset`) and, when the
folder has a ``tests/`` directory with cases, every case passes on that very engine.

The same gate serves at start-up (:class:`cds.live_rules.LiveRuleSet` refuses to start with a rule set
that fails its own tests) and at every reload (the last good version keeps serving).
"""

from __future__ import annotations

from pathlib import Path

from .active_rules import ActiveRules, build
from .engine import EngineError
from .errors import CdsError
from .ruleset.loader import RuleSetError, load_ruleset
from .ruleset.model import RuleSet
from .ruletests import RuleTestError, load_cases, run_cases


class CandidateRejected(CdsError):
    """A rule folder that must not be served. ``summary`` is one line; ``details`` (the message) says
    why: the ``file:line:column`` problems, or the failing rule-test cases with where they are."""

    def __init__(self, summary: str, details: str, *, ruleset_error: RuleSetError | None = None,
                 headline: str | None = None):
        super().__init__(details)
        self.summary = summary
        self.details = details
        self.ruleset_error = ruleset_error
        #: one line for an operator naming the first problem and where it is (see :attr:`one_line`)
        self.headline = headline

    @property
    def one_line(self) -> str:
        """The reason on one line (what start-up prints before it refuses to start): the headline, else
        ``summary: first line of the details``."""
        if self.headline:
            return self.headline
        first = next((line.strip() for line in self.details.splitlines() if line.strip()), "")
        return f"{self.summary}: {first}" if first else self.summary


def _rule_test_failures(active: ActiveRules, tests_dir: Path) -> tuple[str, str] | None:
    """``(details, headline)`` when the cases of ``tests_dir`` fail on ``active`` (or cannot be read)."""
    if not tests_dir.is_dir():
        return None
    try:
        cases = load_cases(tests_dir)
    except RuleTestError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "cannot be read"
        return f"the rule tests in {tests_dir} cannot be read:\n{e}", f"the rule tests cannot be read: {first}"
    except OSError as e:
        return f"the rule tests in {tests_dir} cannot be read: {e}", f"the rule tests in {tests_dir} cannot be read: {e}"
    if not cases:
        return None
    failed = run_cases(cases, active).failed
    if not failed:
        return None
    lines = [f"{len(failed)} of {len(cases)} rule test(s) in {tests_dir} fail:"]
    for r in failed:
        lines.append(f"FAIL {r.case.where}: {r.case.name}")
        lines += [f"    {d}" for d in ([r.error] if r.error else r.diff)]
    more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
    headline = (f"{len(failed)} of {len(cases)} rule test case(s) fail, first {failed[0].case.where}: "
                f"{failed[0].case.name}{more}")
    return "\n".join(lines), headline


def rule_tests(active: ActiveRules, tests_dir: Path) -> str | None:
    """Run the cases of ``tests_dir`` on ``active``: None if all pass (or there are none), else why."""
    found = _rule_test_failures(active, tests_dir)
    return None if found is None else found[0]


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
        problem = _rule_test_failures(active, folder / "tests")
    except BaseException:
        active.engine.close()
        raise
    if problem is not None:
        active.engine.close()
        raise CandidateRejected("the rule tests fail", problem[0], headline=problem[1])
    return active


__all__ = ["CandidateRejected", "candidate", "rule_tests"]
