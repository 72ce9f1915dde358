"""The committed FHIR example requests are complete, valid FHIR R4, and exactly what the generator makes.

These tests check the data only; posting the requests to the service is the end-to-end test's job. The
request files live in ``rules/tests/requests`` (``fhir_examples/requests`` is a symlink to it); each
scenario's description and expected cards are written once, in ``rules/tests/examples.yaml``, and
checked only by the rule tests: nothing here asserts what the shipped rules answer.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import RULES_DIR, load_script
from fhir.resources.R4B import get_fhir_model_class

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "fhir_examples"
REQUESTS = ROOT / "rules" / "tests" / "requests"

gen = load_script(EXAMPLES / "generate.py", "fhir_examples_generate")

ANCHOR = dt.date.fromisoformat(json.loads((EXAMPLES / "config.json").read_text())["evaluationDate"])
SCENARIOS = {s.name: s for s in gen.SCENARIOS}
#: the patient-view scenarios (``requests/<name>.json``); the order-sign ones are in ``requests/order-sign/``
NAMES = sorted(n for n, s in SCENARIOS.items() if s.hook == "patient-view")
ORDER_NAMES = sorted(n for n, s in SCENARIOS.items() if s.hook == "order-sign")
PREFETCH_KEYS = {"patient", "conditions", "painScores", "exerciseRounds"}
OBS = "https://lbp-cds.org/fhir/CodeSystem/observation"

CODES = yaml.safe_load((RULES_DIR / "codes.yaml").read_text())
LADDER = [r["code"] for r in CODES["ladder"]["rungs"]]


def load(name: str) -> dict[str, Any]:
    return json.loads((REQUESTS / SCENARIOS[name].path).read_text(encoding="utf-8"))


def entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", [])]


def day(value: str) -> dt.date:
    """The date part of a FHIR date/dateTime as written (a year or year-month: its first day)."""
    value = value[:10]
    return dt.date.fromisoformat(value + "-01-01"[len(value) - 4:] if len(value) < 10 else value)


#: scenarios whose onset is after the evaluation date on purpose (a data-entry error the service flags)
FUTURE_ONSET = {"onset-future"}


def offset(value: str) -> int:
    return (day(value) - ANCHOR).days


def own(resources: list[dict[str, Any]], patient_id: str, *, valid_only: bool = True) -> list[dict[str, Any]]:
    """The resources the service should use: this patient's, final, and not deliberately invalid."""
    return [r for r in resources
            if r["subject"]["reference"] == f"Patient/{patient_id}"
            and r.get("status", "final") == "final"
            and not (valid_only and gen.is_deliberately_invalid(r))]


# --- the files as a whole -------------------------------------------------------------------------

def test_anchor_is_the_fixed_evaluation_date():
    assert json.loads((EXAMPLES / "config.json").read_text()) == {"evaluationDate": "2026-11-20"}


def test_committed_requests_equal_generator_output():
    """The request files are the generator's (patient data, declared in generate.py). The README's
    scenario table is built from the rule test cases, i.e. clinical content: its freshness is checked
    beside them (rules/tests/test_examples_readme.py), so an edit of rules/ never fails a test here."""
    placeholder_cases = {s.path.removesuffix(".json"): {"description": "-"} for s in gen.SCENARIOS}
    files = gen.build(ANCHOR, placeholder_cases)
    committed = {f"rules/tests/requests/{p.relative_to(REQUESTS)}" for p in REQUESTS.rglob("*") if p.is_file()}
    generated = {rel for rel in files if rel.startswith("rules/tests/requests/")}
    assert committed == generated, "stale or missing files: run make examples"
    assert set(files) == generated | {"fhir_examples/README.md"}
    for rel in generated:
        assert (ROOT / rel).read_text(encoding="utf-8") == files[rel], f"{rel} differs from generate.py output"


def test_fhir_examples_requests_is_a_relative_link_to_the_rule_tests():
    link = EXAMPLES / "requests"
    assert link.is_symlink() and str(link.readlink()) == "../rules/tests/requests"
    assert link.resolve() == REQUESTS.resolve()
    assert (link / "bird-dog-28-27.json").read_bytes() == (REQUESTS / "bird-dog-28-27.json").read_bytes()


def test_no_outcome_sidecars():
    """The expected cards are written once, in rules/tests/examples.yaml."""
    assert not list(REQUESTS.glob("*.expected.json"))
    assert not list(ROOT.glob("fhir_examples/**/*.expected.json"))


def test_required_scenarios_present():
    required = {
        "new-onset", "new-onset-period", "onset-undocumented", "no-sessions", "pain-5-bird-dog",
        "pain-4-hip-abduction", "no-pain-recorded", "bird-dog-12-14", "bird-dog-20-18", "bird-dog-28-27",
        "reverse-hyper-30-29", "hip-abduction-10-9", "single-round", "pain-loinc-answer", "onset-period",
        "ignored-resources", "invalid-resource", "two-exercises-same-day", "pain-derived-from",
        "boundary-reps-15-15", "boundary-reps-25-25", "boundary-reps-26-26", "boundary-reps-14-20",
        "boundary-pain-2", "boundary-pain-3", "boundary-onset-41-days", "boundary-onset-42-days",
    }
    assert required <= set(NAMES)


def test_hook_instances_and_patients_are_unique():
    requests = [load(n) for n in NAMES]
    assert len({r["hookInstance"] for r in requests}) == len(requests)
    assert len({r["context"]["patientId"] for r in requests}) == len(requests)


# --- each request ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_request_hook_fields(name):
    req = load(name)
    assert set(req) == {"hook", "hookInstance", "context", "prefetch"}
    assert req["hook"] == "patient-view"
    assert str(uuid.UUID(req["hookInstance"])) == req["hookInstance"]
    assert req["context"] == {"userId": "Practitioner/example", "patientId": f"lbp-{name}"}
    assert set(req["prefetch"]) == PREFETCH_KEYS
    patient = req["prefetch"]["patient"]
    assert patient["resourceType"] == "Patient" and patient["id"] == req["context"]["patientId"]


@pytest.mark.parametrize("name", NAMES)
def test_bundles_are_searchsets_newest_first(name):
    prefetch = load(name)["prefetch"]
    for key in PREFETCH_KEYS - {"patient"}:
        bundle = prefetch[key]
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
        assert bundle["total"] == len(bundle.get("entry", []))
        assert "entry" not in bundle or bundle["entry"], "empty entry arrays are omitted in FHIR JSON"
        for e in bundle.get("entry", []):
            r = e["resource"]
            assert e["fullUrl"].endswith(f"/{r['resourceType']}/{r['id']}")
            assert e["search"] == {"mode": "match"}
        if key != "conditions":
            stamps = [dt.datetime.fromisoformat(r["effectiveDateTime"]) for r in entries(bundle)
                      if not gen.is_deliberately_invalid(r) and not gen.is_deliberately_unusable(r)]
            assert stamps == sorted(stamps, reverse=True)
    assert {r["resourceType"] for r in entries(prefetch["conditions"])} <= {"Condition"}
    ids = [r["id"] for r in gen.request_resources(load(name))]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("name", NAMES)
def test_resources_validate_as_fhir_r4(name):
    req = load(name)
    invalid = 0
    for resource in gen.request_resources(req):
        model = get_fhir_model_class(resource["resourceType"])
        if gen.is_deliberately_invalid(resource):
            invalid += 1
            with pytest.raises(ValueError):
                model.model_validate(resource)
        else:
            model.model_validate(resource)
    assert invalid == SCENARIOS[name].deliberately_invalid
    gen.validate_request(req)  # the Bundles too, minus deliberately invalid entries


@pytest.mark.parametrize("name", NAMES)
def test_observations_follow_the_profile(name):
    req = load(name)
    pid = req["context"]["patientId"]
    for r in entries(req["prefetch"]["exerciseRounds"]):
        assert set(r) == {"resourceType", "id", "status", "code", "subject", "effectiveDateTime",
                          "valueQuantity", "component"}
        assert r["code"] == {"coding": [{"system": OBS, "code": "reps-to-technical-failure"}]}
        q = r["valueQuantity"]
        assert q["unit"] == "repetitions" and q["system"] == "http://unitsofmeasure.org" and q["code"] == "{repetitions}"
        exercise, rnd = r["component"]
        assert exercise["code"]["coding"][0]["code"] == "exercise"
        assert exercise["valueCodeableConcept"]["coding"][0]["code"] in LADDER
        assert rnd["code"]["coding"][0]["code"] == "round" and rnd["valueInteger"] >= 1
        assert r["effectiveDateTime"][10:11] == "T" and r["effectiveDateTime"][-6] in "+-"
    round_ids = {r["id"] for r in entries(req["prefetch"]["exerciseRounds"])}
    for r in entries(req["prefetch"]["painScores"]):
        assert r["code"]["coding"][0]["system"] == "http://loinc.org"
        assert r["code"]["coding"][0]["code"] == "72514-3"
        assert len({"valueInteger", "valueQuantity", "valueCodeableConcept"} & set(r)) == 1
        for ref in r.get("derivedFrom", []):
            assert ref["reference"].removeprefix("Observation/") in round_ids
    for r in gen.request_resources(req)[1:]:
        if not gen.is_deliberately_invalid(r) and not (name in FUTURE_ONSET and r["resourceType"] == "Condition"):
            assert offset(r.get("effectiveDateTime") or r.get("onsetDateTime") or r.get("onsetPeriod", {}).get(
                "start", ANCHOR.isoformat())) <= 0, "no data after the evaluation date"
        assert r["subject"]["reference"] in {f"Patient/{pid}", "Patient/someone-else"}


def test_pain_association_varies_across_scenarios():
    with_refs = [n for n in NAMES if any("derivedFrom" in p for p in entries(load(n)["prefetch"]["painScores"]))]
    without = [n for n in NAMES if any("derivedFrom" not in p for p in entries(load(n)["prefetch"]["painScores"]))]
    assert len(with_refs) >= 3 and len(without) >= 3


def test_most_patients_have_older_sessions():
    with_history = [n for n in NAMES
                    if len({r["effectiveDateTime"][:10] for r in entries(load(n)["prefetch"]["exerciseRounds"])}) >= 3]
    assert len(with_history) > len(NAMES) * 0.7


# --- dates match the declared offsets -------------------------------------------------------------

def onsets(name: str) -> list[int]:
    req = load(name)
    out = []
    for c in own(entries(req["prefetch"]["conditions"]), req["context"]["patientId"]):
        start = c.get("onsetDateTime") or c.get("onsetPeriod", {}).get("start")
        if start:
            out.append(offset(start))
    return out


@pytest.mark.parametrize(("name", "days"), [
    ("new-onset", -10), ("new-onset-period", -10), ("onset-period", -200), ("no-sessions", -300),
    ("boundary-onset-41-days", -41), ("boundary-onset-42-days", -42), ("bird-dog-28-27", -300),
])
def test_onset_offsets(name, days):
    assert onsets(name) == [days]


def test_onset_fields():
    assert "onsetPeriod" in entries(load("new-onset-period")["prefetch"]["conditions"])[0]
    onset_period = entries(load("onset-period")["prefetch"]["conditions"])[0]
    assert onset_period["onsetPeriod"] == {"start": (ANCHOR - dt.timedelta(days=200)).isoformat()}
    assert "onsetDateTime" not in onset_period
    assert load("onset-undocumented")["prefetch"]["conditions"] == {
        "resourceType": "Bundle", "type": "searchset", "total": 0}
    assert load("no-sessions")["prefetch"]["exerciseRounds"]["total"] == 0


def test_new_onset_is_exactly_ten_days_before_the_evaluation_date():
    condition = entries(load("new-onset")["prefetch"]["conditions"])[0]
    assert dt.date.fromisoformat(condition["onsetDateTime"]) == ANCHOR - dt.timedelta(days=10)


@pytest.mark.parametrize("name", NAMES)
def test_round_dates_match_declared_sessions(name):
    req = load(name)
    declared = sorted((s.day, s.exercise, r) for s in SCENARIOS[name].sessions for r in s.reps)
    found = sorted((offset(r["effectiveDateTime"]), r["component"][0]["valueCodeableConcept"]["coding"][0]["code"],
                    r["valueQuantity"]["value"]) for r in entries(req["prefetch"]["exerciseRounds"]))
    assert found == declared


def latest_session(name: str) -> tuple[int, str, list[int], list[int]]:
    """(day offset, exercise, reps, pain scores) of the latest session, following SPEC section 2."""
    req = load(name)
    pid = req["context"]["patientId"]
    rounds = own(entries(req["prefetch"]["exerciseRounds"]), pid)
    days = {offset(r["effectiveDateTime"]) for r in rounds}
    latest = max(days)
    exercises = {r["component"][0]["valueCodeableConcept"]["coding"][0]["code"]
                 for r in rounds if offset(r["effectiveDateTime"]) == latest}
    exercise = max(exercises, key=LADDER.index)
    mine = [r for r in rounds if offset(r["effectiveDateTime"]) == latest
            and r["component"][0]["valueCodeableConcept"]["coding"][0]["code"] == exercise]
    ids = {f"Observation/{r['id']}" for r in mine}
    pains = []
    for p in own(entries(req["prefetch"]["painScores"]), pid):
        refs = {d["reference"] for d in p.get("derivedFrom", [])}
        if (refs & ids) if refs else offset(p["effectiveDateTime"]) == latest:
            pains.append(p.get("valueInteger", p.get("valueQuantity", {}).get("value")))
    return latest, exercise, [r["valueQuantity"]["value"] for r in mine], pains


@pytest.mark.parametrize(("name", "expected"), [
    ("bird-dog-12-14", (-2, "bird-dog", [12, 14], [1])),
    ("bird-dog-28-27", (-2, "bird-dog", [28, 27], [1])),
    ("reverse-hyper-30-29", (-2, "reverse-hyper", [30, 29], [0])),
    ("single-round", (-2, "bird-dog", [20], [1])),
    ("two-exercises-same-day", (-2, "bird-dog", [22, 21], [1])),
    ("pain-derived-from", (-2, "bird-dog", [28, 27], [4])),
    ("pain-derived-from-older-session", (-2, "bird-dog", [28, 27], [])),
    ("ignored-resources", (-2, "bird-dog", [20, 18], [1])),
    ("invalid-resource", (-2, "bird-dog", [28, 27], [1])),
    ("no-pain-recorded", (-2, "bird-dog", [22, 21], [])),
    ("date-as-written", (-2, "bird-dog", [28, 27], [1])),
])
def test_latest_session_data(name, expected):
    assert latest_session(name) == expected


def test_scenario_specifics():
    # pain 4 on the day after the session, derived from its rounds; pain 0 on the session day, older round
    pains = entries(load("pain-derived-from")["prefetch"]["painScores"])
    by_value = {p["valueInteger"]: p for p in pains}
    assert offset(by_value[4]["effectiveDateTime"]) == -1
    assert offset(by_value[0]["effectiveDateTime"]) == -2
    assert all("20261111" in d["reference"] for d in by_value[0]["derivedFrom"])
    # the LOINC answer
    answer = entries(load("pain-loinc-answer")["prefetch"]["painScores"])[0]
    assert answer["valueCodeableConcept"]["coding"][0] == {"system": "http://loinc.org", "code": "LA6113-0",
                                                           "display": "2"}
    # the invalid resource: an impossible date, marked, and it would change the outcome if used
    bad = [p for p in entries(load("invalid-resource")["prefetch"]["painScores"]) if gen.is_deliberately_invalid(p)]
    assert len(bad) == 1 and bad[0]["effectiveDateTime"] == "2026-02-30T10:00:00Z"
    # the decoys in ignored-resources
    req = load("ignored-resources")
    conditions = entries(req["prefetch"]["conditions"])
    eie = [c for c in conditions if c["verificationStatus"]["coding"][0]["code"] == "entered-in-error"]
    assert len(eie) == 1 and offset(eie[0]["onsetDateTime"]) == -5
    other = [c for c in conditions if c["subject"]["reference"] == "Patient/someone-else"]
    assert len(other) == 1 and offset(other[0]["onsetDateTime"]) == -3
    pains = entries(req["prefetch"]["painScores"])
    assert any(p["status"] == "entered-in-error" and p["valueInteger"] == 9 and offset(p["effectiveDateTime"]) == -2
               for p in pains)
    assert any(p["subject"]["reference"] == "Patient/someone-else" and offset(p["effectiveDateTime"]) == -2
               for p in pains)
    rounds = entries(req["prefetch"]["exerciseRounds"])
    assert any(r["status"] == "entered-in-error" and r["valueQuantity"]["value"] == 5 for r in rounds)
    assert any(r["subject"]["reference"] == "Patient/someone-else" and offset(r["effectiveDateTime"]) == -2
               for r in rounds)


# --- the rule test cases of the scenarios ---------------------------------------------------------

CASES_FILE = ROOT / "rules" / "tests" / "examples.yaml"


def test_every_scenario_has_one_described_rule_test_case():
    """Each request is the ``request:`` of exactly one case of rules/tests/examples.yaml (relative to it),
    which carries the scenario's description and expected cards; no case names a missing request."""
    doc = yaml.safe_load(CASES_FILE.read_text(encoding="utf-8"))
    requests = [c["request"] for c in doc["cases"] if "request" in c]
    assert sorted(requests) == sorted(f"requests/{s.path}" for s in SCENARIOS.values())
    cases = gen.load_example_cases()
    for name in NAMES:
        assert cases[name]["name"] == name and cases[name]["description"].strip()
        assert cases[name]["as_of"] == ANCHOR


def test_readme_table_is_built_from_the_rule_test_cases():
    """Change a case's description or expected cards and the README row follows (no second copy)."""
    cases = gen.load_example_cases()
    cases["bird-dog-28-27"] = {**cases["bird-dog-28-27"], "description": "Changed | text.",
                               "expect": [{"rule": "x-rule", "decision": "continue", "indicator": "info",
                                           "recommended": "bird-dog", "notes": ["n1"]}], "skipped_invalid": 2}
    readme = gen.build_readme(ANCHOR, cases)
    assert "| `bird-dog-28-27` | Changed \\| text. | continue → bird-dog (info, rule x-rule, note n1); skippedInvalid 2 |" in readme


def test_readme_documents_every_scenario():
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for name in NAMES:
        assert f"| `{name}` |" in readme
    assert ("curl -s -X POST http://127.0.0.1:8080/cds-services/lbp-exercise-progression "
            "-H 'Content-Type: application/json' -d @fhir_examples/requests/bird-dog-28-27.json") in readme


# --- the order-sign requests ----------------------------------------------------------------------

def test_there_are_order_sign_examples():
    assert {"order-agrees", "order-one-rung-too-high"} <= set(ORDER_NAMES)


@pytest.mark.parametrize("name", ORDER_NAMES)
def test_order_sign_request_fields(name):
    """An order-sign request: the patient-view prefetch plus context.draftOrders, a Bundle of valid
    draft ServiceRequests coded exercise therapy (a ladder exercise also has its ladder code)."""
    req = load(name)
    assert set(req) == {"hook", "hookInstance", "context", "prefetch"}
    assert req["hook"] == "order-sign"
    assert set(req["context"]) == {"userId", "patientId", "draftOrders"}
    assert req["context"]["patientId"] == f"lbp-{name}"
    assert set(req["prefetch"]) == PREFETCH_KEYS
    drafts = req["context"]["draftOrders"]
    get_fhir_model_class("Bundle").model_validate(drafts)
    assert drafts["resourceType"] == "Bundle" and drafts["entry"]
    for entry in drafts["entry"]:
        order = entry["resource"]
        get_fhir_model_class("ServiceRequest").model_validate(order)
        assert order["status"] == "draft" and order["subject"] == {"reference": f"Patient/lbp-{name}"}
        assert {"system": "http://snomed.info/sct", "code": "229065009", "display": "Exercise therapy"} in order[
            "code"]["coding"]
    gen.validate_request(req)


def test_readme_documents_the_order_sign_scenarios():
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for name in ORDER_NAMES:
        assert f"| `order-sign/{name}` |" in readme
