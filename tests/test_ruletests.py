"""The rule-test runner and ``cds rules test``: pass/fail, readable diffs, coverage, malformed cases."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cds.cli import main
from cds.ruleset.ruletests import RuleTestError, load_cases, run_tests

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules"
REQUEST = ROOT / "fhir_examples" / "requests" / "bird-dog-28-27.json"


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    dest = tmp_path / "rules"
    shutil.copytree(RULES, dest, ignore=shutil.ignore_patterns("tests"))
    (dest / "tests").mkdir()
    return dest


def write_case(folder: Path, body: str, name: str = "cases.yaml") -> Path:
    path = folder / "tests" / name
    path.write_text(body.replace("REQUEST", str(REQUEST)))
    return path


STEP_UP = """\
cases:
  - name: bird-dog 28, 27
    as_of: 2026-11-20
    request: REQUEST
    expect:
      - {rule: step-up, decision: step-up, indicator: info, recommended: single-leg-reverse-hyper}
"""


def test_shipped_cases_pass_and_cover_everything(capsys) -> None:
    assert main(["rules", "test", str(RULES)]) == 0
    out = capsys.readouterr().out
    assert "coverage: every rule and note is fired by at least one case" in out
    assert "FAIL" not in out
    report = run_tests(RULES)
    assert len(report.results) >= 40 and report.ok


def test_passing_case_but_uncovered_rules_exit_1(rules: Path, capsys) -> None:
    write_case(rules, STEP_UP)
    assert main(["rules", "test", str(rules)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"PASS {rules}/tests/cases.yaml:2:5: bird-dog 28, 27"
    assert out[1] == (
        "uncovered rules (no case fires them): new-onset, onset-unknown, start, pain-unrecorded, "
        "pain-gate-first-rung, pain-gate, step-back-first-rung, step-back, step-up-top-rung, continue"
    )
    assert out[2] == "uncovered notes (no case fires them): incomplete-session"
    assert out[3] == "1 passed, 0 failed"


def test_failure_shows_a_field_by_field_diff(rules: Path, capsys) -> None:
    write_case(rules, STEP_UP.replace("decision: step-up, indicator: info, recommended: single-leg-reverse-hyper",
                                      "decision: continue, indicator: info, recommended: bird-dog"))
    assert main(["rules", "test", str(rules)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[:5] == [
        f"FAIL {rules}/tests/cases.yaml:2:5: bird-dog 28, 27",
        "    card 1 decision: expected continue, got step-up",
        "    card 1 recommended: expected bird-dog, got single-leg-reverse-hyper",
        "    expected: step-up: continue (info) -> bird-dog",
        "    actual:   step-up: step-up (info) -> single-leg-reverse-hyper",
    ]
    assert out[-1] == "0 passed, 1 failed"


def test_missing_and_extra_cards_and_notes(rules: Path) -> None:
    write_case(rules, STEP_UP.replace(
        "      - {rule: step-up, decision: step-up, indicator: info, recommended: single-leg-reverse-hyper}\n",
        "      - {rule: step-up, decision: step-up, indicator: info, recommended: single-leg-reverse-hyper,"
        " notes: [incomplete-session]}\n"
        "      - {rule: onset-unknown, decision: onset-unknown, indicator: warning}\n",
    ))
    [result] = run_tests(rules).results
    assert result.diff == [
        "card 1 notes: expected incomplete-session, got none",
        "card 2: expected onset-unknown: onset-unknown (warning), got no card",
    ]


def test_a_changed_threshold_is_caught_by_the_cases(tmp_path: Path, capsys) -> None:
    dest = tmp_path / "rules"
    shutil.copytree(RULES, dest, ignore=shutil.ignore_patterns("tests"))
    text = (dest / "ruleset.yaml").read_text()
    (dest / "ruleset.yaml").write_text(text.replace("reps_high: 25 ", "reps_high: 30 "))
    assert main(["rules", "test", str(dest), "--tests", str(RULES / "tests")]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "card 1 decision: expected step-up, got continue" in out


def test_resources_case(rules: Path) -> None:
    write_case(rules, """\
cases:
  - name: no data at all
    as_of: 2026-11-20
    patient: p1
    resources: []
    expect:
      - {rule: onset-unknown, decision: onset-unknown, indicator: warning}
      - {rule: start, decision: start, indicator: info, recommended: hip-abduction}
""")
    [result] = run_tests(rules).results
    assert result.passed, result.diff


def test_malformed_cases_are_reported_with_positions(rules: Path, capsys) -> None:
    path = write_case(rules, """\
cases:
  - name: typo
    as_of: 2026-11-20
    request: REQUEST
    expcet: []
  - name: bad date and missing file
    as_of: 20-11-2026
    request: nope.json
    expect:
      - {rule: step-up, decison: step-up, indicator: info}
""")
    with pytest.raises(RuleTestError) as e:
        load_cases(rules / "tests")
    assert [str(p) for p in e.value.problems] == [
        f"{path}:2:5: case: required key 'expect' is missing",
        f"{path}:5:5: unknown key 'expcet' in a case (did you mean 'expect'?)",
        f"{path}:7:12: as_of: expected a date (YYYY-MM-DD), found '20-11-2026'",
        f"{path}:8:14: request: no such file 'nope.json' (a path relative to cases.yaml)",
        f"{path}:10:9: expected card: 'decision' is missing",
        f"{path}:10:25: unknown key 'decison' in an expected card (did you mean 'decision'?)",
    ]
    assert main(["rules", "test", str(rules)]) == 1
    captured = capsys.readouterr()
    assert f"{path}:5:5: unknown key 'expcet'" in captured.out
    assert "no case was run" in captured.err


def test_invalid_rules_are_reported_before_any_case(rules: Path, capsys) -> None:
    write_case(rules, STEP_UP)
    text = (rules / "ruleset.yaml").read_text()
    (rules / "ruleset.yaml").write_text(text.replace("reps_low: 15 ", "reps_low: fifteen "))
    assert main(["rules", "test", str(rules)]) == 1
    assert capsys.readouterr().out.strip() == (
        f"{rules}/ruleset.yaml:24:13: parameters.reps_low: expected a number, found 'fifteen'"
    )


def test_request_without_prefetch_is_a_clear_failure(rules: Path, tmp_path: Path) -> None:
    import json

    body = json.loads(REQUEST.read_text())
    del body["prefetch"]["painScores"]
    request = tmp_path / "partial.json"
    request.write_text(json.dumps(body))
    write_case(rules, STEP_UP.replace("REQUEST", str(request)))
    [result] = run_tests(rules).results
    assert result.error == "the request lacks prefetch key(s) painScores; rule tests never fetch"
