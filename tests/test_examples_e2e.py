"""Every fhir_examples request end to end: through the Flask test client, and over a real HTTP server.

Each answer must be 200, CDS Hooks 2.0 conformant, and carry the cards of the request's sidecar
(``<scenario>.expected.json``): decision, rule id, indicator, recommended exercise, notes, and the
count of invalid resources skipped. Every card names the rule set (name, version, sha256).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cdshooks_conformance import assert_conformant_response
from conftest import EXAMPLE_NAMES, SERVICE_URL, build_app, example_pairs
from werkzeug.serving import make_server

EXAMPLES = {name: (request, expected) for name, request, expected in example_pairs()}
EXT = "org.lbp-cds.recommendation"


def test_there_are_examples():
    assert len(EXAMPLES) >= 20


def check_answer(body: dict[str, Any], expected: dict[str, Any], ruleset) -> None:
    """``body`` is conformant and holds exactly the cards the sidecar lists."""
    assert_conformant_response(body)
    cards = body["cards"]
    got = [
        {
            "decision": c["extension"][EXT]["decision"],
            "ruleId": c["extension"][EXT]["ruleId"],
            "indicator": c["indicator"],
            **({"recommendedExercise": c["extension"][EXT]["recommendedExercise"]}
               if "recommendedExercise" in c["extension"][EXT] else {}),
        }
        for c in cards
    ]
    want = [{k: v for k, v in card.items() if k != "notes"} for card in expected["cards"]]
    assert got == want

    ident = ruleset.identity
    for card, want_card in zip(cards, expected["cards"], strict=True):
        ext = card["extension"][EXT]
        # notes: exactly those listed, and each note's text is shown in the card detail
        want_notes = want_card.get("notes", [])
        assert ext.get("notes", []) == want_notes
        for note_id in want_notes:
            literal = [p.strip() for p in re.split(r"\{[^}]*\}", ruleset.note(note_id).text) if p.strip()]
            assert literal
            for part in literal:  # every fixed part of the note text, around its placeholders
                assert part in card["detail"], f"note {note_id}: {part!r} not in the card detail"
        # invalid resources skipped
        assert ext["facts"].get("skippedInvalid", 0) == expected.get("skippedInvalid", 0)
        # the rule set that decided, on every card
        assert ext["ruleset"] == {"name": ident.name, "version": ident.version, "sha256": ident.sha256}
        assert ident.name in card["source"]["label"] and ident.version in card["source"]["label"]
        assert f"`{ext['ruleId']}`" in card["detail"]


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_through_the_test_client(client, ruleset, evaluation_date, name):
    request, expected = EXAMPLES[name]
    assert expected["evaluationDate"] == evaluation_date.isoformat()
    response = client.post(SERVICE_URL, json=request)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    check_answer(response.get_json(), expected, ruleset)


def test_each_call_gets_fresh_card_uuids(client):
    request, _ = EXAMPLES["bird-dog-28-27"]
    first = client.post(SERVICE_URL, json=request).get_json()
    second = client.post(SERVICE_URL, json=request).get_json()
    assert {c["uuid"] for c in first["cards"]}.isdisjoint({c["uuid"] for c in second["cards"]})


# ------------------------------------------------------------------------------------------------
# A real HTTP server on loopback
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    app = build_app()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="e2e-http-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


REAL_SERVER_EXAMPLES = ["bird-dog-28-27", "new-onset", "onset-undocumented", "single-round", "invalid-resource"]


def test_examples_over_a_real_http_server(server_url, ruleset):
    with httpx.Client(base_url=server_url, timeout=10) as http:
        discovery = http.get("/cds-services")
        assert discovery.status_code == 200
        assert discovery.json()["services"][0]["id"] == "lbp-exercise-progression"
        for name in REAL_SERVER_EXAMPLES:
            request, expected = EXAMPLES[name]
            response = http.post(SERVICE_URL, json=request)
            assert response.status_code == 200, (name, response.text[:500])
            assert response.headers["content-type"].startswith("application/json")
            check_answer(response.json(), expected, ruleset)


def test_concurrent_calls_over_a_real_http_server(server_url, ruleset):
    """Several clients at once, each getting the cards of its own request."""
    errors: list[str] = []

    def worker(offset: int) -> None:
        try:
            with httpx.Client(base_url=server_url, timeout=20) as http:
                for i in range(10):
                    name = REAL_SERVER_EXAMPLES[(offset + i) % len(REAL_SERVER_EXAMPLES)]
                    request, expected = EXAMPLES[name]
                    response = http.post(SERVICE_URL, json=request)
                    if response.status_code != 200:
                        errors.append(f"{name}: {response.status_code}")
                        continue
                    check_answer(response.json(), expected, ruleset)
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
        assert "JSON" in response.json()["error"]["message"]
        response = http.post("/cds-services/unknown", json={})
        assert response.status_code == 404
