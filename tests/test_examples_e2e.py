"""Every fhir_examples request end to end: through the Flask test client, and over a real HTTP server.

Mechanics only, with the fixture rule set (tests/fixtures/rules): each answer must be 200, CDS Hooks 2.0
conformant, carry exactly the cards the pure core (cds.service.evaluate) gives for the same request and
date, each card must agree with a rule of the rule files (decision, indicator, stage order, notes shown
in the detail), count the request's deliberately invalid resources, and name the rule set (name, version,
sha256). Which cards the *shipped* rules give for each scenario is tested only by rules/tests
(``cds rules test rules``), where each expected outcome is written once.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from cdshooks_conformance import assert_conformant_response
from conftest import (
    EVALUATION_DATE,
    EXAMPLE_NAMES,
    RULES_DIR,
    SERVICE_URL,
    build_app,
    error_message,
    example_requests,
    make_settings,
)
from loopback import serve_wsgi

EXAMPLES = dict(example_requests())
EXT = "org.lbp-cds.recommendation"
DELIBERATELY_INVALID = {"system": "https://lbp-cds.org/fhir/CodeSystem/example-tag", "code": "deliberately-invalid"}
#: valid FHIR the service cannot use on purpose (e.g. a date written only to the month): counted too
DELIBERATELY_UNUSABLE = {"system": "https://lbp-cds.org/fhir/CodeSystem/example-tag", "code": "deliberately-unusable"}
RULES_FILE = yaml.safe_load((RULES_DIR / "progression.yaml").read_text())
RULES = {r["id"]: r for r in RULES_FILE["rules"]}


def test_there_are_examples():
    assert len(EXAMPLES) >= 20


def _looked_at(resource: dict[str, Any]) -> bool:
    """Whether the fixture rule set reads the resource at all: every Observation, and the Conditions coded in
    its code lists (it has no red-flag lists, so a red-flag Condition is an unrelated one, never validated)."""
    if resource.get("resourceType") != "Condition":
        return True
    from cds.extract import CodeList
    from cds.ruleset.loader import load_ruleset

    codes = load_ruleset(RULES_DIR).document.codes
    lists = [CodeList(codes.lbp_condition)] + [CodeList(c.codes) for c in (*codes.red_flags, *codes.red_flag_risks)]
    pairs = [(c.get("system"), c.get("code")) for c in resource.get("code", {}).get("coding", [])]
    return any(cl.any(pairs) for cl in lists)


def deliberately_invalid(request: dict[str, Any]) -> int:
    """How many resources of the request carry the example tag of a resource broken (or unusable) on purpose,
    among those the fixture rule set reads."""
    count = 0
    for value in request["prefetch"].values():
        for resource in [e["resource"] for e in value.get("entry", [])] if value["resourceType"] == "Bundle" else [value]:
            tags = resource.get("meta", {}).get("tag", [])
            count += _looked_at(resource) and any(t.get("system") == tag["system"] and t.get("code") == tag["code"]
                                                  for t in tags for tag in (DELIBERATELY_INVALID, DELIBERATELY_UNUSABLE))
    return count


_CORE: dict[str, list[dict[str, Any]]] = {}


def core_cards(name: str) -> list[dict[str, Any]]:
    """The cards the pure core gives for example ``name`` with the fixture rules, without their uuids."""
    if name not in _CORE:
        from cds import service
        from cds.cdshooks import CdsResponse, to_json
        from cds.clock import FixedClock
        from cds.live_rules import LiveRuleSet

        request = EXAMPLES[name]
        outcome = service.evaluate(LiveRuleSet(RULES_DIR).current(), request["prefetch"],
                                   patient_id=request["context"]["patientId"], clock=FixedClock(EVALUATION_DATE),
                                   user_id=request["context"]["userId"], public_base_url=make_settings().public_base_url)
        _CORE[name] = strip_uuids(to_json(CdsResponse(cards=outcome.cards))["cards"])
    return _CORE[name]


def strip_uuids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: strip_uuids(v) for k, v in value.items() if k != "uuid"}
    if isinstance(value, list):
        return [strip_uuids(v) for v in value]
    return value


def check_answer(name: str, body: dict[str, Any], ruleset) -> None:
    """``body`` is conformant, holds the core's cards, and every card agrees with the rule files."""
    assert_conformant_response(body)
    cards = body["cards"]
    assert cards, f"{name}: every example gets at least one card"
    assert strip_uuids(cards) == core_cards(name), f"{name}: the HTTP answer differs from the core's cards"

    ident = ruleset.identity
    stages = []
    for card in cards:
        ext = card["extension"][EXT]
        rule = RULES[ext["ruleId"]]  # a rule of the rule files ...
        assert (ext["decision"], card["indicator"]) == (rule["decision"], rule["indicator"])  # ... that agrees
        stages.append(rule["stage"])
        # each note on the card: its text is shown in the card detail
        for note_id in ext.get("notes", []):
            literal = [p.strip() for p in re.split(r"\{[^}]*\}", ruleset.note(note_id).text) if p.strip()]
            assert literal
            for part in literal:  # every fixed part of the note text, around its placeholders
                assert part in card["detail"], f"note {note_id}: {part!r} not in the card detail"
        # invalid resources skipped: exactly the ones the request breaks on purpose
        assert ext["facts"].get("skippedInvalid", 0) == deliberately_invalid(EXAMPLES[name])
        # the rule set that decided, on every card
        assert ext["ruleset"] == {"name": ident.name, "version": ident.version, "sha256": ident.sha256}
        assert ident.name in card["source"]["label"] and ident.version in card["source"]["label"]
        assert f"`{ext['ruleId']}`" in card["detail"]
    assert stages == sorted(stages, key=RULES_FILE["stages"].index), "cards in stage order"


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_through_the_test_client(client, ruleset, name):
    response = client.post(SERVICE_URL, json=EXAMPLES[name])
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    check_answer(name, response.get_json(), ruleset)


def test_each_call_gets_fresh_card_uuids(client):
    request = EXAMPLES["bird-dog-28-27"]
    first = client.post(SERVICE_URL, json=request).get_json()
    second = client.post(SERVICE_URL, json=request).get_json()
    assert {c["uuid"] for c in first["cards"]}.isdisjoint({c["uuid"] for c in second["cards"]})


# ------------------------------------------------------------------------------------------------
# A real HTTP server on loopback
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    app = build_app()
    with serve_wsgi(app, "e2e-http-server") as url:
        yield url


REAL_SERVER_EXAMPLES = ["bird-dog-28-27", "new-onset", "onset-undocumented", "single-round", "invalid-resource"]


def test_examples_over_a_real_http_server(server_url, ruleset):
    with httpx.Client(base_url=server_url, timeout=10) as http:
        discovery = http.get("/cds-services")
        assert discovery.status_code == 200
        assert discovery.json()["services"][0]["id"] == "lbp-exercise-progression"
        for name in REAL_SERVER_EXAMPLES:
            response = http.post(SERVICE_URL, json=EXAMPLES[name])
            assert response.status_code == 200, (name, response.text[:500])
            assert response.headers["content-type"].startswith("application/json")
            check_answer(name, response.json(), ruleset)


def test_concurrent_calls_over_a_real_http_server(server_url, ruleset):
    """Several clients at once, each getting the cards of its own request."""
    errors: list[str] = []

    def worker(offset: int) -> None:
        try:
            with httpx.Client(base_url=server_url, timeout=20) as http:
                for i in range(10):
                    name = REAL_SERVER_EXAMPLES[(offset + i) % len(REAL_SERVER_EXAMPLES)]
                    response = http.post(SERVICE_URL, json=EXAMPLES[name])
                    if response.status_code != 200:
                        errors.append(f"{name}: {response.status_code}")
                        continue
                    check_answer(name, response.json(), ruleset)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []


def test_errors_over_a_real_http_server(server_url):
    with httpx.Client(base_url=server_url, timeout=10) as http:
        response = http.post(SERVICE_URL, content=b"{not json", headers={"Content-Type": "application/json"})
        assert response.status_code == 400
        assert "JSON" in error_message(response.json())
        response = http.post("/cds-services/unknown", json={})
        assert response.status_code == 404
