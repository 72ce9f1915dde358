"""``cds evaluate``: every fhir_examples request evaluated offline, as text and as JSON.

On the fixture rule set (``CDS_RULES_DIR``): the views are compared with what the pure core answers, not
with what the shipped rules should answer (each scenario's expected cards live only in rules/tests).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import EVALUATION_DATE, REQUESTS_DIR, RULES_DIR

from cds.cli import main

ROOT = Path(__file__).resolve().parent.parent
REQUESTS = REQUESTS_DIR
EXAMPLES = sorted(REQUESTS.glob("*.json"))


@pytest.fixture(autouse=True)
def fixture_rules(monkeypatch) -> None:
    monkeypatch.setenv("CDS_RULES_DIR", str(RULES_DIR))


def expected(request: Path) -> dict:
    """The cards the pure core gives for ``request`` with the fixture rules, in the views' terms."""
    from cds import service
    from cds.clock import FixedClock
    from cds.live_rules import LiveRuleSet

    body = json.loads(request.read_text())
    outcome = service.evaluate(LiveRuleSet(RULES_DIR).current(), body["prefetch"],
                               patient_id=body["context"]["patientId"], clock=FixedClock(EVALUATION_DATE))
    cards = []
    for fired, card in zip(outcome.evaluation.fired, outcome.cards, strict=True):
        exercise = (card.extension or {})["org.lbp-cds.recommendation"].get("recommendedExercise")
        cards.append({"decision": fired.decision, "ruleId": fired.rule_id, "indicator": fired.indicator,
                      **({"recommendedExercise": exercise} if exercise else {}),
                      **({"notes": list(fired.notes)} if fired.notes else {})})
    return {"evaluationDate": EVALUATION_DATE.isoformat(), "cards": cards,
            "skippedInvalid": outcome.facts.skipped_invalid}


@pytest.mark.parametrize("request_file", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_text_view_of_every_example(request_file: Path, capsys) -> None:
    exp = expected(request_file)
    assert main(["evaluate", str(request_file), "--as-of", exp["evaluationDate"]]) == 0
    out = capsys.readouterr().out
    for heading in ("FACTS EXTRACTED", "RESOURCES SKIPPED", "ASSESSMENT", "RULES FIRED", f"CARDS ({len(exp['cards'])})"):
        assert heading in out
    fired = out[out.index("RULES FIRED"):out.index("CARDS (")]
    for card in exp["cards"]:
        assert f": {card['ruleId']} (priority " in fired
        assert f"-> {card['decision']}, {card['indicator']}" in fired
        if card.get("recommendedExercise"):
            assert f"recommends {card['recommendedExercise']}" in fired
        for note in card.get("notes", []):
            assert f"note {note}:" in fired
    if exp.get("skippedInvalid"):
        assert "[invalid FHIR, counted on the card]" in out


@pytest.mark.parametrize("request_file", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_json_view_of_every_example(request_file: Path, capsys) -> None:
    exp = expected(request_file)
    assert main(["evaluate", str(request_file), "--as-of", exp["evaluationDate"], "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    got = [
        {"decision": f["decision"], "ruleId": f["rule"], "indicator": f["indicator"],
         **({"recommendedExercise": f["recommended"]} if f["recommended"] else {}),
         **({"notes": [n["note"] for n in f["notes"]]} if f["notes"] else {})}
        for f in report["fired"]
    ]
    assert got == exp["cards"]
    assert [c["indicator"] for c in report["cards"]] == [c["indicator"] for c in exp["cards"]]
    # each fired rule names the card it gave, and that card carries the rule's own id and decision
    for f in report["fired"]:
        if f["card"] is None:  # a silent rule gives no card
            continue
        card = report["cards"][f["card"]]
        assert card["extension"]["org.lbp-cds.recommendation"]["ruleId"] == f["rule"]
        assert card["extension"]["org.lbp-cds.recommendation"]["decision"] == f["decision"]
    assert sorted(f["card"] for f in report["fired"] if f["card"] is not None) == list(range(len(report["cards"])))
    assert sum(s["invalid"] for s in report["skipped"]) == exp.get("skippedInvalid", 0)
    assert report["evaluationDate"] == exp["evaluationDate"]
    assert len(report["ruleset"]["sha256"]) == 64


def test_facts_name_their_resources(capsys) -> None:
    assert main(["evaluate", str(REQUESTS / "bird-dog-28-27.json"), "--as-of", "2026-11-20"]) == 0
    out = capsys.readouterr().out
    assert "Condition/condition-1: onset 2026-01-24" in out
    assert "round 1: 28 reps    Observation/round-20261118-bird-dog-1" in out
    assert "round 2: 27 reps    Observation/round-20261118-bird-dog-2" in out
    assert "1/10 on 2026-11-18    Observation/pain-20261118" in out
    assert "[1] INFO: Bird-dog too easy (reps 28, 27): step up to Single-leg reverse hyper" in out
    assert "with: min_reps = 27, reps_high = 25" in out


def test_skipped_resources_and_why(capsys) -> None:
    assert main(["evaluate", str(REQUESTS / "ignored-resources.json"), "--as-of", "2026-11-20", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    reasons = {s["reason"] for s in report["skipped"]}
    assert "subject is not the context patient" in reasons
    assert all(s["resourceId"] for s in report["skipped"])


def test_as_of_changes_the_decision(capsys) -> None:
    request = str(REQUESTS / "boundary-onset-42-days.json")
    assert main(["evaluate", request, "--as-of", "2026-11-19", "--format", "json"]) == 0
    assert [f["rule"] for f in json.loads(capsys.readouterr().out)["fired"]] == ["new-onset"]


def test_missing_prefetch_key_is_a_clear_error(tmp_path: Path, capsys) -> None:
    body = json.loads((REQUESTS / "bird-dog-28-27.json").read_text())
    del body["prefetch"]["painScores"]
    del body["prefetch"]["exerciseRounds"]
    path = tmp_path / "partial.json"
    path.write_text(json.dumps(body))
    assert main(["evaluate", str(path), "--as-of", "2026-11-20"]) == 2
    err = capsys.readouterr().err
    assert f"cannot evaluate: {path}: prefetch key(s) missing: painScores, exerciseRounds." in err
    assert "does not fetch from the FHIR server" in err


def test_not_json_and_not_a_request(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["evaluate", str(bad)]) == 2
    assert "not a JSON hook request" in capsys.readouterr().err
    bad.write_text(json.dumps({"hook": "patient-view"}))
    assert main(["evaluate", str(bad)]) == 2
    assert "not a valid patient-view request" in capsys.readouterr().err


def test_other_rules_folder(tmp_path: Path, capsys) -> None:
    import shutil

    rules = tmp_path / "rules"
    shutil.copytree(RULES_DIR, rules, ignore=shutil.ignore_patterns("tests"))
    text = (rules / "ruleset.yaml").read_text()
    (rules / "ruleset.yaml").write_text(text.replace("reps_high: 25 ", "reps_high: 30 "))
    request = str(REQUESTS / "bird-dog-28-27.json")
    assert main(["evaluate", request, "--as-of", "2026-11-20", "--rules", str(rules), "--format", "json"]) == 0
    assert [f["rule"] for f in json.loads(capsys.readouterr().out)["fired"]] == ["continue"]


def test_red_flag_and_risk_factor_conditions_are_listed_with_their_category(capsys) -> None:
    """The red-flag rules fire on conditions that are not low-back-pain codes: the facts list them too."""
    safety = RULES_DIR.parent / "rules_safety"
    assert main(["evaluate", str(REQUESTS / "red-flag-cauda-equina.json"), "--as-of", "2026-11-20",
                 "--rules", str(safety)]) == 0
    out = capsys.readouterr().out
    facts = out[out.index("FACTS EXTRACTED"):out.index("RESOURCES SKIPPED")]
    assert "Red-flag conditions:\n    Condition/condition-2: Cauda equina syndrome (" in facts
    assert "Risk-factor conditions: none found" in facts
    assert main(["evaluate", str(REQUESTS / "risk-steroids-step-up.json"), "--as-of", "2026-11-20",
                 "--rules", str(safety), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["facts"]["redFlags"] == []
    assert [(c["resourceId"], c["category"]) for c in report["facts"]["riskFactors"]] == [
        ("Condition/condition-2", "steroids")]
    assert main(["evaluate", str(REQUESTS / "bird-dog-28-27.json"), "--as-of", "2026-11-20"]) == 0
    assert "Red-flag conditions: none found" in capsys.readouterr().out
