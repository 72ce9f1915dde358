"""The pure core (cds.service) without Flask: evaluate, describe, prefetch templates from the rule files.

On the fixture rule set; these check the mechanics of an evaluation. Which cards the shipped rules give
each example is tested only by rules/tests.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import pytest
import yaml
from cdshooks_conformance import assert_conformant_card
from conftest import EXAMPLE_NAMES, RULES_DIR, example_requests

from cds import service
from cds.cdshooks import CdsResponse, to_json
from cds.clock import FixedClock
from cds.fhir_client import PrefetchUnavailable
from cds.live_rules import LiveRuleSet
from cds.ruleset.loader import load_ruleset

EXAMPLES = dict(example_requests())
EXT = "org.lbp-cds.recommendation"


@pytest.fixture(scope="module")
def active():
    return LiveRuleSet(RULES_DIR).current()


@pytest.fixture(scope="module")
def clock(evaluation_date):
    return FixedClock(evaluation_date)


def run(active, clock, name: str) -> service.Outcome:
    request = EXAMPLES[name]
    return service.evaluate(active, request["prefetch"], patient_id=request["context"]["patientId"], clock=clock)


def test_the_core_does_not_import_flask():
    # cds.service and everything it imports stay free of the web framework
    import subprocess

    code = "import sys, cds.service; print(sorted(m for m in sys.modules if m.split('.')[0] in ('flask', 'werkzeug')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def check_outcome(active, outcome: service.Outcome, evaluation_date) -> None:
    """One conformant card per fired rule, in order, carrying that rule's decision, indicator and notes."""
    assert outcome.evaluation.evaluation_date == evaluation_date
    assert outcome.evaluation.ruleset == active.ruleset.identity
    fired = outcome.evaluation.fired
    assert fired, "every example fires at least one rule"
    body = to_json(CdsResponse(cards=outcome.cards))
    assert len(body["cards"]) == len(fired)
    for card, rule in zip(body["cards"], fired, strict=True):
        assert_conformant_card(card)
        ext = card["extension"][EXT]
        assert (ext["ruleId"], ext["decision"]) == (rule.rule_id, rule.decision)
        assert card["indicator"] == rule.indicator
        assert ext.get("notes", []) == list(rule.notes)
        assert ext["facts"].get("skippedInvalid", 0) == outcome.facts.skipped_invalid


@pytest.mark.parametrize("name", ["bird-dog-28-27", "single-round", "new-onset", "onset-undocumented", "invalid-resource"])
def test_evaluate_an_example_without_flask(active, clock, evaluation_date, name):
    outcome = run(active, clock, name)
    check_outcome(active, outcome, evaluation_date)
    assert set(outcome.timings_ms) == {"extract", "rules", "cards"}
    assert all(v >= 0 for v in outcome.timings_ms.values())


def test_the_invalid_resource_is_skipped_and_counted(active, clock):
    outcome = run(active, clock, "invalid-resource")
    assert sum(s.invalid for s in outcome.facts.skipped) == outcome.facts.skipped_invalid == 1


def test_every_example_without_flask(active, clock, evaluation_date):
    for name in EXAMPLE_NAMES:
        check_outcome(active, run(active, clock, name), evaluation_date)


def test_the_clock_sets_the_evaluation_date(active, evaluation_date):
    request = EXAMPLES["boundary-onset-41-days"]
    args = dict(patient_id=request["context"]["patientId"])
    today = service.evaluate(active, request["prefetch"], clock=FixedClock(evaluation_date), **args)
    later = service.evaluate(active, request["prefetch"], clock=FixedClock(evaluation_date + dt.timedelta(days=1)), **args)
    assert [f.rule_id for f in today.evaluation.fired] == ["new-onset"]
    assert "new-onset" not in [f.rule_id for f in later.evaluation.fired]


def test_a_missing_prefetch_key_is_the_412_prefetch_unavailable(active, clock):
    request = EXAMPLES["bird-dog-20-18"]
    prefetch = dict(request["prefetch"])
    del prefetch["exerciseRounds"]
    with pytest.raises(PrefetchUnavailable) as info:
        service.evaluate(active, prefetch, patient_id=request["context"]["patientId"], clock=clock)
    assert info.value.keys == ["exerciseRounds"] and info.value.key == "exerciseRounds"
    assert str(info.value) == "prefetch key 'exerciseRounds' could not be fetched: not prefetched"
    del prefetch["painScores"]
    with pytest.raises(PrefetchUnavailable) as info:
        service.evaluate(active, prefetch, patient_id=request["context"]["patientId"], clock=clock)
    assert info.value.keys == ["painScores", "exerciseRounds"] and info.value.key == "painScores"
    assert str(info.value) == "prefetch keys 'painScores', 'exerciseRounds' could not be fetched: not prefetched"


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
        doc["codes"]["condition_clinical_status"] = ["active", "remission"]

    edit_yaml(rules_copy / "codes.yaml", change)
    templates = service.prefetch_templates(load_ruleset(rules_copy))
    assert templates["painScores"] == (
        "Observation?patient={{context.patientId}}&code=http://example.org/pain|PAIN-1&_sort=-date&_count=100"
    )
    assert "|site-reps&" in templates["exerciseRounds"]
    # every condition with a counted clinical status: the codes are matched locally, not in the query
    assert templates["conditions"] == "Condition?patient={{context.patientId}}&clinical-status=active,remission"
    assert templates["patient"] == original["patient"]
    for key in ("painScores", "exerciseRounds", "conditions"):
        assert templates[key] != original[key]


def test_a_changed_code_changes_what_is_read(rules_copy, clock):
    """With the pain code changed in the rule files, the examples' LOINC pain scores no longer count."""
    edit_yaml(rules_copy / "codes.yaml", lambda d: d["codes"]["pain_score"].update(code="00000-0"))
    active = LiveRuleSet(rules_copy).current()
    request = EXAMPLES["bird-dog-20-18"]
    outcome = service.evaluate(active, request["prefetch"], patient_id=request["context"]["patientId"], clock=clock)
    assert [f.rule_id for f in outcome.evaluation.fired] == ["pain-unrecorded"]
