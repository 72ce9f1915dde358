"""The pure core (cds.service) without Flask: evaluate, describe, prefetch templates from the rule files."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import pytest
import yaml
from cdshooks_conformance import assert_conformant_card
from conftest import EXAMPLE_NAMES, RULES_DIR, example_pairs

from cds import service
from cds.cdshooks import CdsResponse, to_json
from cds.clock import FixedClock
from cds.live_rules import LiveRuleSet
from cds.ruleset.loader import load_ruleset

EXAMPLES = {name: (request, expected) for name, request, expected in example_pairs()}
EXT = "org.lbp-cds.recommendation"


@pytest.fixture(scope="module")
def active():
    return LiveRuleSet(RULES_DIR).current()


@pytest.fixture(scope="module")
def clock(evaluation_date):
    return FixedClock(evaluation_date)


def run(active, clock, name: str) -> service.Outcome:
    request, _ = EXAMPLES[name]
    return service.evaluate(active, request["prefetch"], patient_id=request["context"]["patientId"], clock=clock)


def test_the_core_does_not_import_flask():
    # cds.service and everything it imports stay free of the web framework
    import subprocess

    code = "import sys, cds.service; print(sorted(m for m in sys.modules if m.split('.')[0] in ('flask', 'werkzeug')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize("name", ["bird-dog-28-27", "single-round", "new-onset", "onset-undocumented", "invalid-resource"])
def test_evaluate_an_example_without_flask(active, clock, evaluation_date, name):
    _, expected = EXAMPLES[name]
    outcome = run(active, clock, name)
    assert outcome.evaluation.evaluation_date == evaluation_date
    assert outcome.evaluation.ruleset == active.ruleset.identity
    assert [f.rule_id for f in outcome.evaluation.fired] == [c["ruleId"] for c in expected["cards"]]
    assert [f.decision for f in outcome.evaluation.fired] == [c["decision"] for c in expected["cards"]]
    body = to_json(CdsResponse(cards=outcome.cards))
    assert len(body["cards"]) == len(expected["cards"])
    for card, want in zip(body["cards"], expected["cards"], strict=True):
        assert_conformant_card(card)
        ext = card["extension"][EXT]
        assert ext.get("recommendedExercise") == want.get("recommendedExercise")
        assert card["indicator"] == want["indicator"]
    assert sum(s.invalid for s in outcome.facts.skipped) == expected.get("skippedInvalid", 0)
    assert set(outcome.timings_ms) == {"extract", "rules", "cards"}
    assert all(v >= 0 for v in outcome.timings_ms.values())


def test_every_example_without_flask(active, clock):
    for name in EXAMPLE_NAMES:
        _, expected = EXAMPLES[name]
        got = [(f.rule_id, f.indicator) for f in run(active, clock, name).evaluation.fired]
        assert got == [(c["ruleId"], c["indicator"]) for c in expected["cards"]], name


def test_the_clock_sets_the_evaluation_date(active, evaluation_date):
    request, _ = EXAMPLES["boundary-onset-41-days"]
    args = dict(patient_id=request["context"]["patientId"])
    today = service.evaluate(active, request["prefetch"], clock=FixedClock(evaluation_date), **args)
    later = service.evaluate(active, request["prefetch"], clock=FixedClock(evaluation_date + dt.timedelta(days=1)), **args)
    assert [f.rule_id for f in today.evaluation.fired] == ["new-onset"]
    assert "new-onset" not in [f.rule_id for f in later.evaluation.fired]


def test_a_missing_prefetch_key_is_missing_prefetch(active, clock):
    request, _ = EXAMPLES["bird-dog-20-18"]
    prefetch = dict(request["prefetch"])
    del prefetch["exerciseRounds"]
    with pytest.raises(service.MissingPrefetch) as info:
        service.evaluate(active, prefetch, patient_id=request["context"]["patientId"], clock=clock)
    assert info.value.keys == ["exerciseRounds"]


def test_describe(active):
    desc = service.describe(active.ruleset).model_dump(by_alias=True, exclude_none=True)
    assert desc["id"] == service.SERVICE_ID and desc["hook"] == service.HOOK
    assert desc["prefetch"] == service.prefetch_templates(active.ruleset)
    assert desc["extension"][service.RULESET_EXTENSION]["sha256"] == active.ruleset.sha256


# ------------------------------------------------------------------------------------------------
# Prefetch templates come from the rule files
# ------------------------------------------------------------------------------------------------


def edit_yaml(path: Path, change) -> None:
    doc = yaml.safe_load(path.read_text())
    change(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def test_prefetch_templates_use_the_codes_of_the_rule_files(rules_copy):
    original = service.prefetch_templates(load_ruleset(RULES_DIR))

    def change(doc):
        doc["codes"]["pain_score"] = {"system": "http://example.org/pain", "code": "PAIN-1"}
        doc["codes"]["reps_to_failure"]["code"] = "site-reps"
        doc["codes"]["lbp_condition"] = [{"system": "http://example.org/dx", "code": "LBP"}]

    edit_yaml(rules_copy / "codes.yaml", change)
    templates = service.prefetch_templates(load_ruleset(rules_copy))
    assert templates["painScores"] == (
        "Observation?patient={{context.patientId}}&code=http://example.org/pain|PAIN-1&_sort=-date&_count=100"
    )
    assert "|site-reps&" in templates["exerciseRounds"]
    assert templates["lbpConditions"] == "Condition?patient={{context.patientId}}&code=http://example.org/dx|LBP"
    assert templates["patient"] == original["patient"]
    for key in ("painScores", "exerciseRounds", "lbpConditions"):
        assert templates[key] != original[key]


def test_a_changed_code_changes_what_is_read(rules_copy, clock):
    """With the pain code changed in the rule files, the examples' LOINC pain scores no longer count."""
    edit_yaml(rules_copy / "codes.yaml", lambda d: d["codes"]["pain_score"].update(code="00000-0"))
    active = LiveRuleSet(rules_copy).current()
    request, _ = EXAMPLES["bird-dog-20-18"]
    outcome = service.evaluate(active, request["prefetch"], patient_id=request["context"]["patientId"], clock=clock)
    assert [f.rule_id for f in outcome.evaluation.fired] == ["pain-unrecorded"]
