"""The rule-test runner and ``cds rules test``: pass/fail, readable diffs, coverage, malformed cases.

On the fixture rule set (tests/fixtures/rules) with cases written here; whether the shipped cases pass on
the shipped rules is rules/tests' own test (rules/tests/test_rule_cases.py). Here only the mechanics of
the shipped folder: a copy of rules/ anywhere runs every one of its cases exactly as in place.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import REQUESTS_DIR, RULES_DIR

from cds.cli import main
from cds.ruletests import RuleTestError, load_cases, run_tests

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "rules"
RULES = RULES_DIR
REQUEST = REQUESTS_DIR / "bird-dog-28-27.json"


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


def outcome(report) -> list[tuple]:
    """What a run found, independent of where the folder is: per case its name, pass, diff and error."""
    return [(r.case.name, Path(r.case.file).name, r.case.line, r.passed, tuple(r.diff), r.error) for r in report.results]


def test_a_copy_of_the_shipped_rules_runs_every_case_as_in_place(tmp_path: Path, capsys) -> None:
    """``cp -r rules /tmp/x && cds rules test /tmp/x``: every case's request is inside rules/tests, so the copy
    loads every case, evaluates each without error, and finds exactly what the run in place finds."""
    copy = tmp_path / "x"
    shutil.copytree(SHIPPED, copy, ignore=shutil.ignore_patterns("__pycache__"))
    cases = load_cases(copy / "tests")
    assert len(cases) >= 40
    for case in cases:
        if case.request is not None:
            assert case.request.is_relative_to(copy.resolve() / "tests" / "requests"), case.where
    in_place, copied = run_tests(SHIPPED), run_tests(copy)
    assert [r.error for r in copied.results] == [None] * len(cases)
    assert outcome(copied) == outcome(in_place)
    assert (copied.uncovered_rules, copied.uncovered_notes) == (in_place.uncovered_rules, in_place.uncovered_notes)
    assert main(["rules", "test", str(copy)]) == (0 if in_place.ok else 1)
    out = capsys.readouterr().out
    assert "no such file" not in out and f"{len(cases) - len(in_place.failed)} passed" in out


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


def test_a_changed_threshold_is_caught_by_the_cases(rules: Path, tmp_path: Path, capsys) -> None:
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "cases.yaml").write_text(STEP_UP.replace("REQUEST", str(REQUEST)))
    assert main(["rules", "test", str(rules), "--tests", str(cases)]) == 1  # passes, but coverage is incomplete
    assert "1 passed, 0 failed" in capsys.readouterr().out
    text = (rules / "ruleset.yaml").read_text()
    assert "reps_high: 25 " in text
    (rules / "ruleset.yaml").write_text(text.replace("reps_high: 25 ", "reps_high: 30 "))
    assert main(["rules", "test", str(rules), "--tests", str(cases)]) == 1
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


# -- card text: summary, detail, suggestion --------------------------------------------------------

TEXT_CASE = """\
cases:
  - name: bird-dog 28, 27 text
    description: the step-up card names the next exercise
    as_of: 2026-11-20
    request: REQUEST
    expect:
      - {rule: step-up, decision: step-up, indicator: info, recommended: single-leg-reverse-hyper,
         summary: SUMMARY, detail: DETAIL, suggestion: SUGGESTION}
"""


def text_case(rules: Path, summary: str, detail: str, suggestion: str) -> Path:
    return write_case(rules, TEXT_CASE.replace("SUMMARY", summary).replace("DETAIL", detail)
                      .replace("SUGGESTION", suggestion))


def test_text_checks_pass(rules: Path) -> None:
    text_case(rules, "{contains: step up to Single-leg reverse hyper}", '{matches: "reps 28, 27\\\\)\\\\s+with pain"}',
              "{label: {contains: Single-leg reverse hyper}}")
    [case] = load_cases(rules / "tests")
    assert case.description == "the step-up card names the next exercise"
    [result] = run_tests(rules).results
    assert result.passed, result.diff
    assert result.texts[0].summary.startswith("Bird-dog too easy")


def test_text_checks_fail_with_readable_lines(rules: Path, capsys) -> None:
    text_case(rules, "{contains: Hip abduction}", '{matches: "^Pain \\\\d+/10"}', "none")
    [result] = run_tests(rules).results
    summary = result.texts[0].summary
    assert result.diff[0] == f"card 1 summary: expected to contain 'Hip abduction', got '{summary}'"
    assert result.diff[1].startswith("card 1 detail: expected to match '^Pain \\d+/10', got 'On 2026-11-18 ")
    assert result.diff[2] == "card 1 suggestion: expected none, got 'Order Single-leg reverse hyper'"
    assert len(result.diff) == 3
    assert main(["rules", "test", str(rules)]) == 1
    out = capsys.readouterr().out
    assert f"    card 1 summary: expected to contain 'Hip abduction', got '{summary}'" in out


def test_suggestion_label_mismatch_and_no_suggestion(rules: Path) -> None:
    text_case(rules, "{contains: too easy}", "{contains: Facts used}", "{label: {matches: ^Order Bird-dog$}}")
    [result] = run_tests(rules).results
    assert result.diff == ["card 1 suggestion label: expected to match '^Order Bird-dog$', "
                           "got 'Order Single-leg reverse hyper'"]
    write_case(rules, """\
cases:
  - name: new onset has no suggestion
    as_of: 2026-11-20
    request: ONSET
    expect:
      - {rule: new-onset, decision: new-onset, indicator: warning, suggestion: {label: {contains: Order}}}
""".replace("ONSET", str(REQUESTS_DIR / "new-onset.json")))
    [result] = run_tests(rules).results
    assert result.diff == ["card 1 suggestion label: expected to contain 'Order', got no suggestion"]


def test_malformed_text_checks_are_reported_with_positions(rules: Path) -> None:
    path = write_case(rules, """\
cases:
  - name: bad text checks
    description: 12
    as_of: 2026-11-20
    request: REQUEST
    expect:
      - rule: step-up
        decision: step-up
        indicator: info
        summary: {contain: x}
        detail: "just text"
        suggestion: {label: {matches: "("}, lable: x}
      - rule: continue
        decision: continue
        indicator: info
        summary: {contains: ""}
        detial: {contains: x}
        suggestion: maybe
""")
    with pytest.raises(RuleTestError) as e:
        load_cases(rules / "tests")
    problems = [str(p) for p in e.value.problems]
    assert problems == [
        f"{path}:3:18: description: expected text",
        f"{path}:10:19: unknown key 'contain' in summary (did you mean 'contains'?)",
        f"{path}:11:17: detail: expected {{contains: \"...\"}} or {{matches: \"regex\"}}",
        f"{path}:12:39: suggestion.label.matches: not a regular expression: missing ), unterminated subpattern at position 0",
        f"{path}:12:45: unknown key 'lable' in suggestion (allowed: label)",
        f"{path}:16:29: summary.contains: expected text",
        f"{path}:17:9: unknown key 'detial' in an expected card (did you mean 'detail'?)",
        f"{path}:18:21: suggestion: expected {{label: {{contains: \"...\"}}}} or none",
    ]
