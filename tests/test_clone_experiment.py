"""The clone experiment (issue 9, point 4): a valid edit of the shipped rules/ never breaks a Python test,
and the rule tests in rules/tests always notice it.

A ``git clone`` of HEAD (committed work only) gets the edits of ``bench/clone_experiment.py``
(``reps_low``, ``reps_high``, ``pain_gate_max``, ``new_onset_days`` in ruleset.yaml, a rung's display name
in codes.yaml, a card text in progression.yaml). Then, in the clone and with ``CDS_RULES_DIR`` pointing at
its edited rules:

* the whole Python suite (``pytest tests``, this file deselected) must pass: the Python tests run on the
  fixture rule set tests/fixtures/rules, never on the shipped content;
* ``cds rules test <clone>/rules`` must fail and name the cases whose expectations the edits changed.

No Python test depends on the shipped rules: the guide's example test, which shows the shipped rules'
output, lives in rules/tests/ with the other content tests.

Running the suite again takes one to two minutes, so the whole-suite test is marked ``slow``: it runs by
default; skip it with ``-m "not slow"``. The quick test runs only the test files that load rules
(test_cards, test_service, test_api, test_examples_e2e, test_fetch_e2e, test_engine, test_ruletests). The
same experiment, printed for a report: ``.venv/bin/python bench/clone_experiment.py [--quick] [--skip-known]``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parent.parent
bench = load_script(ROOT / "bench" / "clone_experiment.py", "clone_experiment")

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None
    or subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode != 0,
    reason="needs git and a git checkout",
)


def check(result) -> None:
    assert result.python_rc == 0, "a Python test depends on the shipped rules/:\n" + result.python_tail
    assert result.rules_rc == 1, result.rules_output
    failed = result.failed_cases
    for name in bench.EXPECTED_FAILURES:
        assert name in failed, f"rule test case {name!r} did not notice the edit:\n{result.rules_output}"
    out = result.rules_output
    # the failures name what changed: a decision that moved with a threshold, and a card text
    assert "card 1 decision: expected step-back, got continue" in out  # reps_low 15 -> 12: 14 is in range now
    assert "card 1 decision: expected pain-gate, got continue" in out  # pain_gate_max 2 -> 3
    assert "card 1 summary: expected to contain 'step up to Single-leg reverse hyper', got " in out  # rung name
    assert "card 1 summary: expected to contain 'add resistance', got " in out  # card text


def test_edits_apply_to_a_copy_of_the_rules(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", rules)
    bench.edit_rules(rules)
    import yaml

    from cds.ruleset.loader import load_ruleset

    load_ruleset(rules)  # the edits are valid rules
    params = yaml.safe_load((rules / "ruleset.yaml").read_text())["parameters"]
    assert [params[k] for k in ("reps_low", "reps_high", "pain_gate_max", "new_onset_days")] == [12, 22, 3, 28]
    codes = yaml.safe_load((rules / "codes.yaml").read_text())
    assert "Single-leg RDL" in [r["display"] for r in codes["ladder"]["rungs"]]


def test_clone_experiment_quick(tmp_path: Path) -> None:
    """Only the test files that load rules: test_cards, test_service, test_api, test_examples_e2e,
    test_fetch_e2e, test_engine, test_ruletests."""
    check(bench.experiment(tmp_path, quick=True))


@pytest.mark.slow
def test_clone_experiment_whole_suite(tmp_path: Path) -> None:
    check(bench.experiment(tmp_path))
