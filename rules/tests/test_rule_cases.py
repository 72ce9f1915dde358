"""pytest runs the same rule tests as ``cds rules test rules``: one test per case, plus coverage."""

from __future__ import annotations

from pathlib import Path

import pytest

from cds.ruletests import active_rules, describe_card, load_cases, run_case, run_cases

TESTS = Path(__file__).resolve().parent
RULES = TESTS.parent
CASES = load_cases(TESTS)


@pytest.fixture(scope="module")
def active():
    return active_rules(RULES)


@pytest.mark.parametrize("case", CASES, ids=[f"{Path(c.file).name}:{c.line}:{c.name}" for c in CASES])
def test_rule_case(case, active) -> None:
    result = run_case(case, active)
    assert result.error is None, f"{case.where}: {result.error}"
    assert not result.diff, (
        f"{case.where}: {case.name}\n  " + "\n  ".join(result.diff)
        + "\n  actual: " + "; ".join(describe_card(a) for a in result.actual)
    )


def test_every_rule_and_note_is_covered(active) -> None:
    report = run_cases(CASES, active)
    assert report.uncovered_rules == []
    assert report.uncovered_notes == []


def test_a_copy_of_rules_passes_every_case_anywhere(tmp_path) -> None:
    """``cp -r rules /tmp/x && cds rules test /tmp/x``: the folder carries everything its cases need."""
    import shutil

    from cds.cli import main

    copy = tmp_path / "x"
    shutil.copytree(RULES, copy, ignore=shutil.ignore_patterns("__pycache__"))
    report = run_cases(load_cases(copy / "tests"), active_rules(copy))
    assert len(report.results) == len(CASES) and report.ok, [r.case.name for r in report.failed]
    assert main(["rules", "test", str(copy)]) == 0
