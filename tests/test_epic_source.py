"""Cards Epic can track (issue 11 point 3): a static alphanumeric topic code (the checker warns on any
other), a source icon set in the rule files, and discovery's usageRequirements from the rule files."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import build_app, edit_rule_file as edit, example_requests

from cds.ruleset.loader import check_ruleset


@pytest.fixture
def rules(rules_copy: Path) -> Path:
    return rules_copy


def warnings_of(folder: Path) -> list[str]:
    return [str(p).removeprefix(f"{folder}/") for p in check_ruleset(folder, warnings=True) if not p.is_error]


def test_a_topic_code_that_is_not_alphanumeric_is_a_warning_with_its_position(rules: Path) -> None:
    assert not [w for w in warnings_of(rules) if "topic code" in w]
    edit(rules, "ruleset.yaml", "code: lowbackstrengthening", "code: low-back_strengthening")
    [warning] = [w for w in warnings_of(rules) if "topic code" in w]
    assert warning.startswith("ruleset.yaml:17:13: warning: topic code 'low-back_strengthening' is not letters and "
                              "digits only; Epic tracks overrides by this code")
    assert "e.g. 'lowbackstrengthening'" in warning


def test_icon_and_usage_requirements_come_from_the_rule_files(rules: Path) -> None:
    edit(rules, "ruleset.yaml", "    url: https://lbp-cds.org/rulesets/lbp-exercise-progression\n",
         "    url: https://lbp-cds.org/rulesets/lbp-exercise-progression\n    icon: https://lbp-cds.org/icon-100.png\n")
    (rules / "services.yaml").write_text(
        "services:\n  - id: lbp-exercise-progression\n    hook: patient-view\n"
        "    usage_requirements: >-\n      Needs pain scores\n      and rounds.\n")
    assert check_ruleset(rules) == []
    client = build_app(rules_dir=rules).test_client()
    [service] = client.get("/cds-services").get_json()["services"]
    assert service["usageRequirements"] == "Needs pain scores and rounds."
    _, request = example_requests()[0]
    card = client.post("/cds-services/lbp-exercise-progression", json=request).get_json()["cards"][0]
    assert card["source"]["icon"] == "https://lbp-cds.org/icon-100.png"
    assert card["source"]["topic"]["code"] == "lowbackstrengthening"


def test_an_icon_must_be_an_absolute_url(rules: Path) -> None:
    edit(rules, "ruleset.yaml", "    url: https://lbp-cds.org/rulesets/lbp-exercise-progression\n",
         "    url: https://lbp-cds.org/rulesets/lbp-exercise-progression\n    icon: icon.png\n")
    [problem] = [str(p).removeprefix(f"{rules}/") for p in check_ruleset(rules)]
    assert problem.startswith("ruleset.yaml:") and "icon" in problem
