"""`cds rules check`: every error class reported as its exact ``file:line:column: message``.

Each test copies ``rules/`` to a temporary folder, introduces one mistake a rule author could make,
and asserts the exact line the checker prints (file names relative to the copied folder).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import RULES_DIR, edit_rule_file as edit, rule_problems as problems

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
        ("ruleset.yaml:24:3: YAML syntax error: expected ',' or ']', but got '<scalar>' "
        "(while parsing a flow sequence that starts at line 23, column 18)"),
    ),
    "yaml-duplicate-key": (
        "ruleset.yaml", "  pain_gate_max: 2 ", "  pain_gate_max: 2\n  pain_gate_max: 3 ",
        "ruleset.yaml:24:3: duplicate key 'pain_gate_max' (the later one would silently win)",
    ),
    "misspelt-key": (
        "progression.yaml", "    priority: 10\n    when: onset_known", "    priorty: 10\n    when: onset_known",
        "progression.yaml:11:5: rule 'new-onset': unknown key 'priorty' (did you mean 'priority'?)",
    ),
    "misspelt-section": (
        "codes.yaml", "\nladder:", "\nlader:",
        "codes.yaml:24:1: unknown key 'lader' in the file (did you mean 'ladder'?)",
    ),
    "wrong-type-priority": (
        "progression.yaml", "    priority: 20\n    when: not onset_known", "    priority: high\n    when: not onset_known",
        "progression.yaml:28:15: rule 'onset-unknown': priority: expected a whole number, found 'high'",
    ),
    "wrong-type-parameter": (
        "ruleset.yaml", "  reps_low: 15 ", "  reps_low: fifteen ",
        "ruleset.yaml:24:13: parameters.reps_low: expected a number, found 'fifteen'",
    ),
    "wrong-indicator": (
        "progression.yaml", "    indicator: warning\n    final: true", "    indicator: warn\n    final: true",
        "progression.yaml:14:16: rule 'new-onset': indicator: expected 'info', 'warning' or 'critical', found 'warn'",
    ),
    "undefined-parameter": (
        "progression.yaml", "when: max_pain > pain_gate_max and on_first_rung", "when: max_pain > pain_gate and on_first_rung",
        "progression.yaml:78:22: rule 'pain-gate-first-rung': unknown parameter 'pain_gate' (did you mean 'pain_gate_max'?)",
    ),
    "unknown-fact": (
        "progression.yaml", "when: min_reps < reps_low and", "when: min_repz < reps_low and",
        "progression.yaml:111:11: rule 'step-back-first-rung': unknown fact 'min_repz' (did you mean 'min_reps'?)",
    ),
    "unknown-rung-in-condition": (
        "progression.yaml", "    when: min_reps > reps_high\n", "    when: min_reps > reps_high and exercise == 'bird-dogg'\n",
        "progression.yaml:162:48: rule 'step-up': unknown ladder rung 'bird-dogg' (did you mean 'bird-dog'?)",
    ),
    "unknown-evidence-on-rung": (
        "codes.yaml", "evidence: [reverse-hyper-emg]", "evidence: [reverse-hyper-emgg]",
        "codes.yaml:40:18: unknown evidence id 'reverse-hyper-emgg' (did you mean 'reverse-hyper-emg'?)",
    ),
    "condition-does-not-parse": (
        "progression.yaml", "when: not pain_recorded", "when: not pain_recorded and",
        "progression.yaml:62:32: rule 'pain-unrecorded': condition does not parse: it ends too early (invalid syntax)",
    ),
    "condition-bad-operator": (
        "progression.yaml", "when: not pain_recorded", "when: max_pain => 2",
        "progression.yaml:62:20: rule 'pain-unrecorded': condition does not parse: invalid syntax",
    ),
    "condition-unsupported": (
        "progression.yaml", "when: not pain_recorded", "when: max_pain >> 2",
        "progression.yaml:62:11: rule 'pain-unrecorded': unsupported expression 'max_pain >> 2': use comparisons joined by 'and'/'or'",
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
        ("progression.yaml:111:11: rule 'severe-pain' can never fire: rule 'pain-gate' has a higher priority "
        "and matches whenever this rule does"),
    ),
    "unknown-stage": (
        "progression.yaml", "    stage: onset\n    priority: 20", "    stage: onsett\n    priority: 20",
        "progression.yaml:27:12: rule 'onset-unknown': unknown stage 'onsett' (stages: onset, progression)",
    ),
    "source-url-not-absolute": (
        "ruleset.yaml", "    url: https://lbp-cds.org/rulesets/lbp-exercise-progression",
        "    url: lbp-cds.org/rulesets",
        ("ruleset.yaml:14:10: ruleset.source.url: expected an absolute URL starting with https:// or http://, "
        "found 'lbp-cds.org/rulesets'"),
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
        "progression.yaml:78:22: rule 'pain-gate-first-rung': unknown parameter 'pain_gate' (did you mean 'pain_gate_max'?)",
        "progression.yaml:111:11: rule 'step-back-first-rung': unknown fact 'min_repz' (did you mean 'min_reps'?)",
    ]


# -- the command -------------------------------------------------------------------------------


def test_cli_valid_rules_exit_0(capsys) -> None:
    assert main(["rules", "check", str(RULES)]) == 0
    assert "rule set is valid" in capsys.readouterr().out


def test_cli_invalid_rules_exit_1_with_positions(rules: Path, capsys) -> None:
    edit(rules, "progression.yaml", "when: min_reps < reps_low and", "when: min_repz < reps_low and")
    assert main(["rules", "check", str(rules)]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"{rules}/progression.yaml:111:11: rule 'step-back-first-rung': unknown fact 'min_repz' (did you mean 'min_reps'?)"]
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


# -- the disclaimer (issue 9.2a) ------------------------------------------------------------------

DISCLAIMER = """\
disclaimer: >-
  For educational purposes only. This is not medical advice, and no clinician-patient relationship
  is implied. All low back pain should be evaluated by a qualified medical professional before
  starting an exercise programme.
"""


@pytest.mark.parametrize(
    "new, expected",
    [
        ('disclaimer: ""\n', "ruleset.yaml:28:13: disclaimer is blank: write the disclaimer text every card carries"),
        ('disclaimer: "   "\n', "ruleset.yaml:28:13: disclaimer is blank: write the disclaimer text every card carries"),
        ("disclaimer: >-\n   \n", "ruleset.yaml:28:13: disclaimer is blank: write the disclaimer text every card carries"),
        ("disclaimer:\n", "ruleset.yaml:28:1: section 'disclaimer' has no value: write the disclaimer every card carries"),
        ("disclaimer: ~\n", "ruleset.yaml:28:1: section 'disclaimer' has no value: write the disclaimer every card carries"),
        ("", "codes.yaml:1:1: section 'disclaimer' is missing from the rule set (no file defines it)"),
    ],
    ids=["empty", "spaces", "blank-block", "null", "tilde", "missing"],
)
def test_disclaimer_must_have_text(rules: Path, new: str, expected: str) -> None:
    edit(rules, "ruleset.yaml", DISCLAIMER, new)
    assert problems(rules) == [expected]


def test_null_section_is_an_error_not_a_traceback(rules: Path, capsys) -> None:
    edit(rules, "progression.yaml", "stages: [onset, progression]", "stages:")
    assert problems(rules) == ["progression.yaml:5:1: section 'stages' has no value: write its content"]
    assert main(["rules", "check", str(rules)]) == 1


# -- rules and notes are named by their id (issue 9.2d) ---------------------------------------------


def test_note_condition_error_names_the_note(rules: Path) -> None:
    edit(rules, "progression.yaml", "when: session_recorded and rounds_recorded < rounds",
         "when: session_recorded and rounds_recorded < round")
    assert problems(rules) == [
        "progression.yaml:193:50: note 'incomplete-session': unknown parameter 'round' (did you mean 'rounds'?)"
    ]


def test_missing_key_names_the_rule(rules: Path) -> None:
    edit(rules, "progression.yaml", "    priority: 20\n    when: not pain_recorded\n", "    when: not pain_recorded\n")
    assert problems(rules) == ["progression.yaml:59:5: rule 'pain-unrecorded': required key 'priority' is missing"]


def test_rule_without_an_id_is_named_by_position(rules: Path) -> None:
    edit(rules, "progression.yaml", "  - id: pain-unrecorded\n    stage: progression\n    priority: 20",
         "  - stage: progression\n    priority: -1")
    assert problems(rules) == [
        "progression.yaml:59:5: rules.3: required key 'id' is missing",
        "progression.yaml:60:15: rules.3: priority: Input should be greater than or equal to 0",
    ]


# -- type mismatches in conditions are errors with a position, not a TypeError (issue 9.2e) ---------

TYPE_MISMATCHES = {
    "minus-text": ("max_pain > -'a'", ("22: rule 'pain-unrecorded': 'max_pain' is a number fact: compare it with a "
                   "number or a parameter name, not text (-'a')")),
    "text-plus-number": ("max_pain > 'a' + 1", ("22: rule 'pain-unrecorded': 'max_pain' is a number fact: compare it "
                         "with a number or a parameter name, not a calculation ('a' + 1)")),
    "not-comparison": ("not 'x' > 3", ("15: rule 'pain-unrecorded': 'not' applies only to a yes/no fact, "
                       "e.g. 'not pain_recorded'")),
    "bool-fact-vs-number": ("pain_recorded > 3", ("27: rule 'pain-unrecorded': 'pain_recorded' is a yes/no fact: "
                            "write 'pain_recorded' or 'not pain_recorded', not a comparison")),
    "number-fact-vs-bool": ("max_pain > True", ("22: rule 'pain-unrecorded': 'max_pain' is a number fact: compare it "
                            "with a number or a parameter name, not a yes/no value (True)")),
    "number-fact-vs-minus-bool": ("max_pain == -True", ("23: rule 'pain-unrecorded': 'max_pain' is a number fact: "
                                  "compare it with a number or a parameter name, not a yes/no value (-True)")),
    "number-fact-vs-bool-fact": ("max_pain > pain_recorded", ("22: rule 'pain-unrecorded': 'max_pain' is compared "
                                 "with another fact 'pain_recorded': compare a fact with a number or a parameter name")),
    "text-vs-text": ("\"'a' < 'b'\"", "12: rule 'pain-unrecorded': expected a fact name, found \"'a'\""),
    "huge-number": ("max_pain > 1e999", "22: rule 'pain-unrecorded': number 1e309 is too large"),
}


@pytest.mark.parametrize("name", sorted(TYPE_MISMATCHES))
def test_condition_type_mismatch_is_an_error(rules: Path, name: str) -> None:
    condition, expected = TYPE_MISMATCHES[name]
    edit(rules, "progression.yaml", "when: not pain_recorded", f"when: {condition}")
    assert problems(rules) == [f"progression.yaml:62:{expected}"]


# -- numbers in card text that equal a parameter are warnings (issue 9.2b) --------------------------

#: the fixture rule set writes "15-25" and "15 and 25" in two adjustments: warnings it loads with
FIXTURE_WARNINGS = [
    "progression.yaml:116:93: warning: 15 in card text equals parameter 'reps_low'; write {reps_low}",
    "progression.yaml:116:96: warning: 25 in card text equals parameter 'reps_high'; write {reps_high}",
    "progression.yaml:149:67: warning: 15 in card text equals parameter 'reps_low'; write {reps_low}",
    "progression.yaml:149:74: warning: 25 in card text equals parameter 'reps_high'; write {reps_high}",
]


def all_problems(folder: Path) -> list[str]:
    return [str(p).removeprefix(f"{folder}/") for p in check_ruleset(folder, warnings=True)]


def test_fixture_warnings_do_not_prevent_loading(rules: Path) -> None:
    from cds.ruleset.loader import WARNING, load_ruleset, load_ruleset_with_warnings

    ruleset, warnings = load_ruleset_with_warnings(rules)
    assert [str(w).removeprefix(f"{rules}/") for w in warnings] == FIXTURE_WARNINGS
    assert {w.severity for w in warnings} == {WARNING} and not any(w.is_error for w in warnings)
    assert load_ruleset(rules).sha256 == ruleset.sha256
    assert check_ruleset(rules) == []  # errors only
    assert all_problems(rules) == FIXTURE_WARNINGS


@pytest.mark.parametrize(
    "file, old, new, expected",
    [
        ("progression.yaml", "ended below {reps_low} repetitions (reps {reps}),\n        so the exercise is too hard for now. It is",
         "ended below 15 repetitions (reps {reps}),\n        so the exercise is too hard for now. It is",
         "progression.yaml:120:66: warning: 15 in card text equals parameter 'reps_low'; write {reps_low}"),
        ("progression.yaml", "above {pain_gate_max}/10, modify it", "above 2/10, modify it",
         ("progression.yaml:85:62: warning: 2 in card text equals parameters 'pain_gate_max' or 'rounds'; "
         "write {pain_gate_max} or {rounds}")),
        ("progression.yaml", "Only {rounds_recorded} of {rounds} rounds", "Only {rounds_recorded} of 2.0 rounds",
         ("progression.yaml:194:38: warning: 2.0 in card text equals parameters 'pain_gate_max' or 'rounds'; "
         "write {pain_gate_max} or {rounds}")),
        ("progression.yaml", '"{exercise_name} too easy (reps {reps}): add resistance"',
         '"{exercise_name} too easy (reps {reps} > 25): add resistance"',
         "progression.yaml:151:57: warning: 25 in card text equals parameter 'reps_high'; write {reps_high}"),
    ],
    ids=["detail", "summary-two-parameters", "note-decimal", "summary"],
)
def test_number_equal_to_a_parameter_is_a_warning(rules: Path, file: str, old: str, new: str, expected: str) -> None:
    edit(rules, file, old, new)
    assert [p for p in all_problems(rules) if p not in FIXTURE_WARNINGS] == [expected]


def test_numbers_in_placeholders_codes_and_words_are_not_warned(rules: Path) -> None:
    from cds.ruleset.loader import literal_numbers

    assert literal_numbers("{reps} reps, 15-25, bird-dog-25, v2, 1.5, 25., {{25}}") == [
        (15.0, 13), (25.0, 16), (1.5, 37), (25.0, 42), (25.0, 49)
    ]
    edit(rules, "progression.yaml", '"{exercise_name} too easy (reps {reps}): add resistance"',
         '"{exercise_name} too easy (reps {reps}, step-25, x2): add resistance"')
    assert all_problems(rules) == FIXTURE_WARNINGS


def test_cli_warnings_exit_0_unless_strict(rules: Path, capsys) -> None:
    assert main(["rules", "check", str(rules)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"{rules}/{w}" for w in FIXTURE_WARNINGS] + [f"{rules}: rule set is valid"]
    assert err == f"4 warning(s) in {rules}\n"
    assert main(["rules", "check", "--strict", str(rules)]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"{rules}/{w}" for w in FIXTURE_WARNINGS]
    assert err == f"4 warning(s) in {rules} (--strict: warnings fail the check)\n"


def test_cli_errors_and_warnings(rules: Path, capsys) -> None:
    edit(rules, "progression.yaml", "add resistance\"", "add {resistance}\"")
    assert main(["rules", "check", str(rules)]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"{rules}/progression.yaml:151:61: unknown fact '{{resistance}}' in card text"]
    assert err == f"1 problem(s) in {rules}\n"


def test_live_ruleset_loads_with_warnings(rules: Path) -> None:
    assert LiveRuleSet(rules).current().ruleset.identity.version == "1.0.0"


# -- YAML mistakes in plain words (issue 9.2c) ------------------------------------------------------

YAML_MISTAKES = {
    "indented-too-far": (
        "progression.yaml", "    priority: 20\n    when: not pain_recorded", "     priority: 20\n    when: not pain_recorded",
        ("progression.yaml:61:6: wrong indentation: 'priority' is indented 5 spaces, expected 4 spaces "
        "(like 'stage' on line 60)"),
    ),
    "indented-too-little": (
        "ruleset.yaml", "  reps_low: 15 ", " reps_low: 15 ",
        ("ruleset.yaml:24:2: wrong indentation: 'reps_low' is indented 1 space, expected 2 spaces "
        "(like 'pain_gate_max' on line 23)"),
    ),
    "list-item-indented-wrong": (
        "progression.yaml", "  - id: pain-unrecorded\n", " - id: pain-unrecorded\n",
        ("progression.yaml:59:2: wrong indentation: the list item is indented 1 space, expected 2 spaces "
        "(like the list item on line 43)"),
    ),
    "tab": (
        "progression.yaml", "    priority: 20\n    when: not pain_recorded", "    priority: 20\n\twhen: not pain_recorded",
        "progression.yaml:62:1: a tab character is used for indentation; indent with spaces only (YAML does not allow tabs)",
    ),
    "unclosed-double-quote": (
        "progression.yaml", '"{exercise_name} too easy (reps {reps}): add resistance"',
        '"{exercise_name} too easy (reps {reps}): add resistance',
        'progression.yaml:151:16: unclosed quote: the " that starts here has no closing "',
    ),
    "unclosed-single-quote": (
        "progression.yaml", "when: not pain_recorded", "when: 'not pain_recorded",
        "progression.yaml:62:11: unclosed quote: the ' that starts here has no closing '",
    ),
    "text-after-quote": (
        "progression.yaml", "when: not pain_recorded", "when: 'a' < 'b'",
        ("progression.yaml:62:15: text after the closing quote: a value that starts with ' ends at the matching '; "
        "put the whole value in the other quotes (\"...\" or '...')"),
    ),
    "colon-in-value": (
        "ruleset.yaml", "  title: Low-back", "  title: Low: back",
        ("ruleset.yaml:7:13: YAML syntax error: mapping values are not allowed here; a value that contains ': ' "
        "must be in quotes"),
    ),
    "block-text-indented-less": (
        "progression.yaml", "(reps {reps}),\n        so the exercise is too hard for now. It is",
        "(reps {reps}),\n      so the exercise is too hard for now. It is",
        ("progression.yaml:121:7: this line is not 'key: value' (a ':' is missing, or text that continues the value "
        "above is indented less than that value)"),
    ),
}


@pytest.mark.parametrize("name", sorted(YAML_MISTAKES))
def test_yaml_mistake_in_plain_words(rules: Path, name: str, capsys) -> None:
    file, old, new, expected = YAML_MISTAKES[name]
    edit(rules, file, old, new)
    assert problems(rules) == [expected]
    assert main(["rules", "check", str(rules)]) == 1
    out, err = capsys.readouterr()
    assert out == f"{rules}/{expected}\n" and "Traceback" not in err


# -- a content change needs a new ruleset.version (issue 9.2f) --------------------------------------


def git(repo: Path, *args: str) -> None:
    import subprocess

    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                   check=True, capture_output=True)


@pytest.fixture
def committed_rules(rules: Path) -> Path:
    """The rule copy inside a git repository (the folder is a subfolder, as rules/ is), committed."""
    git(rules.parent, "init", "-q")
    git(rules.parent, "add", "rules")
    git(rules.parent, "commit", "-q", "-m", "rules")
    return rules


def since(folder: Path, ref: str = "HEAD") -> list[str]:
    from cds.ruleset.loader import check_since

    return [str(p).removeprefix(f"{folder}/") for p in check_since(folder, ref)]


VERSION_WARNING = ("ruleset.yaml:6:12: warning: the rule files changed since HEAD but ruleset.version is still "
                   "'1.0.0'; raise it")


def test_since_warns_when_content_changed_but_not_the_version(committed_rules: Path) -> None:
    assert since(committed_rules) == []
    edit(committed_rules, "ruleset.yaml", "  reps_high: 25 ", "  reps_high: 30 ")
    assert since(committed_rules) == [VERSION_WARNING]
    edit(committed_rules, "ruleset.yaml", "  version: 1.0.0", "  version: 1.1.0")
    assert since(committed_rules) == []


def test_since_counts_a_new_rule_file_as_a_change(committed_rules: Path) -> None:
    (committed_rules / "extra.yaml").write_text("notes: []\n")
    assert since(committed_rules) == [VERSION_WARNING]


def test_since_unknown_revision_is_an_error(committed_rules: Path) -> None:
    assert since(committed_rules, "no-such-ref") == [
        f"{committed_rules}:1:1: --since no-such-ref: not a git revision of the repository holding this folder"
    ]


def test_cli_since(committed_rules: Path, capsys) -> None:
    edit(committed_rules, "ruleset.yaml", "  reps_high: 25 ", "  reps_high: 30 ")
    assert main(["rules", "check", str(committed_rules), "--since", "HEAD"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"{committed_rules}/{VERSION_WARNING}" in out and out[-1] == f"{committed_rules}: rule set is valid"
    assert main(["rules", "check", str(committed_rules), "--since", "HEAD", "--strict"]) == 1


def test_version_unchanged() -> None:
    from cds.ruleset.loader import content_digest, load_ruleset, version_unchanged

    ruleset = load_ruleset(RULES)
    contents = {p.name: p.read_bytes() for p in sorted(RULES.glob("*.yaml"))}
    assert content_digest(contents) == ruleset.sha256
    assert version_unchanged("a" * 64, "1.0.0", ruleset.sha256, "1.0.0")
    assert not version_unchanged(ruleset.sha256, "1.0.0", ruleset.sha256, "1.0.0")
    assert not version_unchanged("a" * 64, "1.0.0", ruleset.sha256, "1.1.0")


def test_since_outside_git_is_an_error(rules: Path, monkeypatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(rules.parent.parent))
    assert since(rules) == [f"{rules}:1:1: --since HEAD: this folder is not in a git repository"]


def test_document_refuses_a_blank_disclaimer(ruleset) -> None:
    from pydantic import ValidationError

    from cds.ruleset.schema import RuleSetDocument

    data = ruleset.document.model_dump()
    with pytest.raises(ValidationError):
        RuleSetDocument.model_validate({**data, "disclaimer": "  "})


def test_an_empty_shared_card_text_is_an_error_in_plain_words(rules_copy) -> None:
    path = rules_copy / "ruleset.yaml"
    lines = path.read_text().splitlines()
    n = next(i for i, line in enumerate(lines) if line.startswith("  dose: "))
    lines[n] = '  dose: ""'
    path.write_text("\n".join(lines) + "\n")
    problems = check_ruleset(rules_copy)
    assert [str(p) for p in problems] == [f"{path}:{n + 1}:9: texts.dose: must not be empty: write the text, found ''"]


# -- texts.source_label and texts.action_description_adjusted (issue 9.1: no wording in Python) ----


def test_source_label_and_adjusted_description_placeholders_belong_to_their_key(rules: Path) -> None:
    edit(rules, "ruleset.yaml", 'action_description: "Propose {recommended_name}: {dose}"',
         'action_description: "Propose {recommended_name}: {dose} {adjustment}"')
    edit(rules, "ruleset.yaml", '"{source_label} ({ruleset_name} {ruleset_version})"',
         '"{source_label} ({ruleset_name} {ruleset_version}) {adjustment}"')
    edit(rules, "ruleset.yaml", '"{action_description}. {adjustment}"', '"{action_description}. {source_label}"')
    assert problems(rules) == [
        "ruleset.yaml:49:59: unknown fact '{adjustment}' in card text",
        "ruleset.yaml:53:68: unknown fact '{adjustment}' in card text",
        "ruleset.yaml:54:55: unknown fact '{source_label}' in card text",
    ]


def test_source_label_is_required(rules: Path) -> None:
    edit(rules, "ruleset.yaml", '  source_label: "{source_label} ({ruleset_name} {ruleset_version})"\n', "")
    [found] = problems(rules)
    assert found.startswith("ruleset.yaml:") and "source_label" in found, found
