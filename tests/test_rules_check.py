"""`cds rules check`: every error class reported as its exact ``file:line:column: message``.

Each test copies ``rules/`` to a temporary folder, introduces one mistake a rule author could make,
and asserts the exact line the checker prints (file names relative to the copied folder).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import RULES_DIR

from cds.cli import main
from cds.config import load_settings
from cds.live_rules import LiveRuleSet
from cds.ruleset.loader import RuleSetError, check_ruleset

RULES = RULES_DIR


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    dest = tmp_path / "rules"
    shutil.copytree(RULES, dest, ignore=shutil.ignore_patterns("tests"))
    return dest


def edit(folder: Path, file: str, old: str, new: str) -> None:
    path = folder / file
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} must occur exactly once in {file}"
    path.write_text(text.replace(old, new))


def problems(folder: Path) -> list[str]:
    return [str(p).removeprefix(f"{folder}/") for p in check_ruleset(folder)]


NEW_RULE = """\
  - id: severe-pain
    stage: progression
    priority: 35
    when: max_pain > 5
    decision: pain-gate
    indicator: warning
    card:
      summary: "Severe pain"
      detail: "Severe pain: see a professional."

  - id: step-back-first-rung
"""

CASES = {
    "yaml-syntax": (
        "ruleset.yaml", "  pain_gate_max: 2 ", "  pain_gate_max: [2 ",
        "ruleset.yaml:24:3: YAML syntax error: expected ',' or ']', but got '<scalar>' "
        "(while parsing a flow sequence that starts at line 23, column 18)",
    ),
    "yaml-duplicate-key": (
        "ruleset.yaml", "  pain_gate_max: 2 ", "  pain_gate_max: 2\n  pain_gate_max: 3 ",
        "ruleset.yaml:24:3: duplicate key 'pain_gate_max' (the later one would silently win)",
    ),
    "misspelt-key": (
        "progression.yaml", "    priority: 10\n    when: onset_known", "    priorty: 10\n    when: onset_known",
        "progression.yaml:11:5: unknown key 'priorty' in rules.0 (did you mean 'priority'?)",
    ),
    "misspelt-section": (
        "codes.yaml", "\nladder:", "\nlader:",
        "codes.yaml:24:1: unknown key 'lader' in the file (did you mean 'ladder'?)",
    ),
    "wrong-type-priority": (
        "progression.yaml", "    priority: 20\n    when: not onset_known", "    priority: high\n    when: not onset_known",
        "progression.yaml:28:15: rules.1.priority: expected a whole number, found 'high'",
    ),
    "wrong-type-parameter": (
        "ruleset.yaml", "  reps_low: 15 ", "  reps_low: fifteen ",
        "ruleset.yaml:24:13: parameters.reps_low: expected a number, found 'fifteen'",
    ),
    "wrong-indicator": (
        "progression.yaml", "    indicator: warning\n    final: true", "    indicator: warn\n    final: true",
        "progression.yaml:14:16: rules.0.indicator: expected 'info', 'warning' or 'critical', found 'warn'",
    ),
    "undefined-parameter": (
        "progression.yaml", "when: max_pain > pain_gate_max and on_first_rung", "when: max_pain > pain_gate and on_first_rung",
        "progression.yaml:78:22: unknown parameter 'pain_gate' (did you mean 'pain_gate_max'?)",
    ),
    "unknown-fact": (
        "progression.yaml", "when: min_reps < reps_low and", "when: min_repz < reps_low and",
        "progression.yaml:111:11: unknown fact 'min_repz' (did you mean 'min_reps'?)",
    ),
    "unknown-rung-in-condition": (
        "progression.yaml", "    when: min_reps > reps_high\n", "    when: min_reps > reps_high and exercise == 'bird-dogg'\n",
        "progression.yaml:162:48: unknown ladder rung 'bird-dogg' (did you mean 'bird-dog'?)",
    ),
    "unknown-evidence-on-rung": (
        "codes.yaml", "evidence: [reverse-hyper-emg]", "evidence: [reverse-hyper-emgg]",
        "codes.yaml:40:18: unknown evidence id 'reverse-hyper-emgg' (did you mean 'reverse-hyper-emg'?)",
    ),
    "condition-does-not-parse": (
        "progression.yaml", "when: not pain_recorded", "when: not pain_recorded and",
        "progression.yaml:62:32: condition does not parse: it ends too early (invalid syntax)",
    ),
    "condition-bad-operator": (
        "progression.yaml", "when: not pain_recorded", "when: max_pain => 2",
        "progression.yaml:62:20: condition does not parse: invalid syntax",
    ),
    "condition-unsupported": (
        "progression.yaml", "when: not pain_recorded", "when: max_pain >> 2",
        "progression.yaml:62:11: unsupported expression 'max_pain >> 2': use comparisons joined by 'and'/'or'",
    ),
    "duplicate-rule-id": (
        "progression.yaml", "  - id: step-up\n", "  - id: step-back\n",
        "progression.yaml:159:9: duplicate rule id 'step-back' (first defined at line 126)",
    ),
    "template-unknown-fact": (
        "progression.yaml", "add resistance\"", "add {resistance}\"",
        "progression.yaml:151:61: unknown fact '{resistance}' in card text",
    ),
    "template-unknown-fact-in-detail": (
        "progression.yaml", "so the exercise is too hard for now.\n\n", "so the exercise is too hard for {nowz}.\n\n",
        "progression.yaml:137:41: unknown fact '{nowz}' in card text",
    ),
    "template-misspelt-fact": (
        "progression.yaml", "reps {reps}): make it easier", "reps {rep}): make it easier",
        "progression.yaml:118:48: unknown fact '{rep}' in card text (did you mean 'reps'?)",
    ),
    "template-format-spec": (
        "progression.yaml", "add resistance\"", "add {max_pain:.1f}\"",
        "progression.yaml:151:61: placeholder '{max_pain}' must be a plain name, without ':' or '!' (write {max_pain})",
    ),
    "summary-too-long": (
        "progression.yaml", "({onset_days_ago} days ago)", "({onset_days_ago} days ago, on {onset_date}, with {reps})",
        "progression.yaml:17:16: summary can reach 153 characters once filled in; CDS Hooks allows at most 139",
    ),
    "shadowed-rule": (
        "progression.yaml", "  - id: step-back-first-rung\n", NEW_RULE,
        "progression.yaml:111:11: rule 'severe-pain' can never fire: rule 'pain-gate' has a higher priority "
        "and matches whenever this rule does",
    ),
    "unknown-stage": (
        "progression.yaml", "    stage: onset\n    priority: 20", "    stage: onsett\n    priority: 20",
        "progression.yaml:27:12: unknown stage 'onsett' (stages: onset, progression)",
    ),
    "source-url-not-absolute": (
        "ruleset.yaml", "    url: https://lbp-cds.org/rulesets/lbp-exercise-progression",
        "    url: lbp-cds.org/rulesets",
        "ruleset.yaml:14:10: ruleset.source.url: expected an absolute URL starting with https:// or http://, "
        "found 'lbp-cds.org/rulesets'",
    ),
    "duplicate-section": (
        "codes.yaml", "\nladder:", "\nstages: [onset]\nladder:",
        "progression.yaml:5:1: section 'stages' is also defined in codes.yaml",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_error_is_reported_with_exact_position(rules: Path, name: str) -> None:
    file, old, new, expected = CASES[name]
    edit(rules, file, old, new)
    assert problems(rules) == [expected]


def test_missing_section(rules: Path) -> None:
    text = (rules / "codes.yaml").read_text()
    (rules / "codes.yaml").write_text(text[: text.index("# The progression, easiest first.")])
    assert problems(rules) == ["codes.yaml:1:1: section 'ladder' is missing from the rule set (no file defines it)"]


def test_shipped_rules_are_valid() -> None:
    assert check_ruleset(RULES) == []


def test_every_problem_is_reported_not_just_the_first(rules: Path) -> None:
    edit(rules, "progression.yaml", "when: min_reps < reps_low and", "when: min_repz < reps_low and")
    edit(rules, "progression.yaml", "when: max_pain > pain_gate_max and on_first_rung", "when: max_pain > pain_gate and on_first_rung")
    assert problems(rules) == [
        "progression.yaml:78:22: unknown parameter 'pain_gate' (did you mean 'pain_gate_max'?)",
        "progression.yaml:111:11: unknown fact 'min_repz' (did you mean 'min_reps'?)",
    ]


# -- the command -------------------------------------------------------------------------------


def test_cli_valid_rules_exit_0(capsys) -> None:
    assert main(["rules", "check", str(RULES)]) == 0
    assert "rule set is valid" in capsys.readouterr().out


def test_cli_invalid_rules_exit_1_with_positions(rules: Path, capsys) -> None:
    edit(rules, "progression.yaml", "when: min_reps < reps_low and", "when: min_repz < reps_low and")
    assert main(["rules", "check", str(rules)]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"{rules}/progression.yaml:111:11: unknown fact 'min_repz' (did you mean 'min_reps'?)"]
    assert "1 problem(s)" in err


def test_cli_missing_folder_exit_1(tmp_path: Path, capsys) -> None:
    assert main(["rules", "check", str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().out.strip() == f"{tmp_path / 'nope'}:1:1: not a folder of rule files"


# -- the service refuses to start with the same messages ----------------------------------------


def test_live_ruleset_refuses_invalid_rules(rules: Path) -> None:
    edit(rules, "progression.yaml", "  - id: step-up\n", "  - id: step-back\n")
    expected = check_ruleset(rules)
    with pytest.raises(RuleSetError) as e:
        LiveRuleSet(rules)
    assert e.value.problems == expected
    assert str(e.value) == f"{rules}/progression.yaml:159:9: duplicate rule id 'step-back' (first defined at line 126)"


def test_create_app_refuses_invalid_rules(rules: Path, tmp_path: Path) -> None:
    from cds.http import create_app

    edit(rules, "ruleset.yaml", "  reps_low: 15 ", "  reps_low: fifteen ")
    settings = load_settings({}, development=True, rules_dir=rules, database_url=f"sqlite:///{tmp_path}/db.sqlite3")
    with pytest.raises(RuleSetError) as e:
        create_app(settings)
    assert str(e.value) == f"{rules}/ruleset.yaml:24:13: parameters.reps_low: expected a number, found 'fifteen'"


def test_cds_run_refuses_to_start(rules: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    edit(rules, "ruleset.yaml", "  reps_low: 15 ", "  reps_low: fifteen ")
    monkeypatch.setenv("CDS_RULES_DIR", str(rules))
    monkeypatch.setenv("CDS_DATABASE_URL", f"sqlite:///{tmp_path}/db.sqlite3")
    assert main(["run", "--dev"]) == 1
    err = capsys.readouterr().err
    assert "refusing to start" in err
    assert f"{rules}/ruleset.yaml:24:13: parameters.reps_low: expected a number, found 'fifteen'" in err
