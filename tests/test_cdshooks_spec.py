"""CDS Hooks 2.0, to the letter: the specification points not pinned elsewhere.

Each test names the spec rule it pins (quotes from the CDS Hooks 2.0 specification, HL7 STU 2). The card
shape of every 200 answer is already checked by ``cdshooks_conformance`` (through the checking test client
of conftest); the error statuses of the service call by ``test_api``; feedback validation by
``test_feedback_http``; JWT checks by ``test_auth_http``. See docs/cds-hooks-conformance.md for the map.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from typing import Any
from urllib.parse import parse_qsl

import pytest
from cdshooks_conformance import response_problems
from conftest import REQUESTS_DIR, SERVICE_URL, build_app, error_expression
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from cds.cdshooks import (
    Action,
    Card,
    CdsResponse,
    Coding,
    Link,
    OverrideReason,
    Source,
    Suggestion,
    SystemAction,
    to_json,
)

BASE = json.loads((REQUESTS_DIR / "bird-dog-20-18.json").read_text())
FEEDBACK_URL = SERVICE_URL + "/feedback"

#: "Each CDS Service SHALL be described by the following attributes" (+ the reserved ``extension``)
SERVICE_FIELDS = {"hook", "title", "description", "id", "prefetch", "usageRequirements", "extension"}
#: patient-view context fields (all are prefetch tokens) and the user identifier tokens of the spec
CONTEXT_TOKENS = {"context.userId", "context.patientId", "context.encounterId"}
USER_TOKENS = {"userPractitionerId", "userPractitionerRoleId", "userPatientId", "userRelatedPersonId"}
#: "date search parameters ... using only the prefixes eq, lt, gt, ge, le"
DATE_PREFIXES = ("eq", "lt", "gt", "ge", "le")


def _post(client, body: dict[str, Any]):
    return client.post(SERVICE_URL, data=json.dumps(body), content_type="application/json")


def _card(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "summary": "s",
        "indicator": "info",
        "source": Source(label="x"),
    }
    values.update(overrides)
    return values


# ------------------------------------------------------------------------------------------------
# Discovery
# ------------------------------------------------------------------------------------------------


def test_discovery_service_fields_have_the_spec_types(client):
    """hook, description, id REQUIRED strings; title RECOMMENDED string; prefetch an object of strings."""
    response = client.get("/cds-services")
    assert response.status_code == 200 and response.mimetype == "application/json"
    services = response.get_json()["services"]
    assert isinstance(services, list) and services
    for svc in services:
        assert set(svc) <= SERVICE_FIELDS, set(svc) - SERVICE_FIELDS
        for key in ("hook", "id", "title", "description"):
            assert isinstance(svc[key], str) and svc[key].strip(), key
        # "The {id} portion of the URL to this service": one path segment, nothing to escape
        assert re.fullmatch(r"[A-Za-z0-9._~-]+", svc["id"]), svc["id"]
        assert isinstance(svc["prefetch"], dict) and svc["prefetch"]
        assert all(isinstance(k, str) and k and isinstance(v, str) and v for k, v in svc["prefetch"].items())
        if "extension" in svc:  # "The value of an extension element MUST be a ... JSON object"
            assert isinstance(svc["extension"], dict) and svc["extension"]


def test_each_discovered_service_answers_at_base_url_slash_id(client):
    """"{baseUrl}/cds-services/{id}" is the service; "{baseUrl}/cds-services/{service.id}/feedback" its feedback."""
    for svc in client.get("/cds-services").get_json()["services"]:
        body = copy.deepcopy(BASE)
        body["hook"] = svc["hook"]
        response = client.post(f"/cds-services/{svc['id']}", json=body)
        assert response.status_code == 200, response.get_json()
        # no database in this app: the feedback endpoint exists but cannot store (503), it is not a 404/405
        assert client.post(f"/cds-services/{svc['id']}/feedback", json={"feedback": []}).status_code not in (404, 405)


def _templates(client) -> list[tuple[str, str]]:
    return [(k, v) for svc in client.get("/cds-services").get_json()["services"] for k, v in svc["prefetch"].items()]


def test_prefetch_tokens_are_context_fields_or_user_identifiers(client):
    """"Prefetch tokens MUST be delimited by {{ and }}, and MUST contain only the qualified path to a hook
    context field ... or one of the following user identifiers" -- and "their token name MUST be
    context.name-of-the-field"."""
    for key, template in _templates(client):
        tokens = re.findall(r"\{\{(.*?)\}\}", template)
        assert tokens, f"{key}: a template without a token cannot be patient-specific"
        for token in tokens:
            assert token in CONTEXT_TOKENS | USER_TOKENS, f"{key}: token {{{{{token}}}}} not allowed"
        rest = re.sub(r"\{\{.*?\}\}", "", template)
        assert "{" not in rest and "}" not in rest, f"{key}: unbalanced token delimiters"


def test_prefetch_templates_keep_to_the_spec_query_restrictions(client):
    """"valid prefetch templates MUST only make use of": instance reads, type-level searches, references,
    token parameters by equality (only ``:in`` as modifier), date parameters with eq|lt|gt|ge|le,
    ``_count`` and ``_sort``. Resource types are FHIR R4 ones."""
    for key, template in _templates(client):
        path, _, query = template.partition("?")
        rtype, _, rid = path.partition("/")
        get_fhir_model_class(rtype)  # raises for a type FHIR R4 does not have
        if not query:
            assert re.fullmatch(r"\{\{[^{}]+\}\}", rid), f"{key}: a read is Type/{{{{id token}}}}"
            continue
        assert not rid, f"{key}: a search is type-level (Type?params), not Type/id?params"
        params = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
        for name, value in params:
            assert value, f"{key}: parameter {name} has no value"
            base, _, modifier = name.partition(":")
            assert modifier in ("", "in"), f"{key}: modifier :{modifier} is not allowed"
            if base == "_count":
                assert value.isdigit() and int(value) > 0, f"{key}: _count must be a positive integer"
            elif base == "_sort":
                assert re.fullmatch(r"-?[a-z][a-z-]*", value), f"{key}: _sort={value}"
            elif base.startswith("_"):
                pytest.fail(f"{key}: result parameter {base} is not in the spec's allowed subset")
            elif base in ("date", "onset-date", "authored"):
                assert value.startswith(DATE_PREFIXES), f"{key}: date prefix of {value}"
            elif base == "code":
                # token equality; several values are OR-ed with ",", each system|code
                for token in value.split(","):
                    assert re.fullmatch(r"[^|,\s]+\|[^|,\s]+", token), f"{key}: code token {token!r}"
            elif base == "clinical-status":
                # a token parameter of Condition, by equality: plain codes of its required value set
                for token in value.split(","):
                    assert re.fullmatch(r"[a-z][a-z-]*", token), f"{key}: clinical-status token {token!r}"
            else:
                assert base in ("patient", "subject"), f"{key}: unexpected search parameter {base}"
                assert value == "{{context.patientId}}", f"{key}: {base} must reference the context patient"


# ------------------------------------------------------------------------------------------------
# The service call
# ------------------------------------------------------------------------------------------------


def test_the_spec_example_request_shape_is_accepted(client):
    """The spec's own request: fhirAuthorization with token_type Bearer, expires_in, scope, subject (and the
    CONDITIONAL ``patient``), fhirServer with it, a top-level ``extension``. The prefetch is complete, so
    nothing is fetched."""
    body = copy.deepcopy(BASE)
    body["fhirServer"] = "https://ehr.example.org/fhir"
    body["fhirAuthorization"] = {
        "access_token": "some-opaque-fhir-access-token",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "user/Patient.read user/Observation.read user/Condition.read",
        "subject": "cds-service4",
        "patient": body["context"]["patientId"],
    }
    body["extension"] = {"com.example.timestamp": "2017-11-27T22:13:25Z"}
    response = _post(client, body)
    assert response.status_code == 200, response.get_json()
    assert "some-opaque-fhir-access-token" not in response.get_data(as_text=True)


def test_hook_instance_must_be_a_uuid(client):
    """The spec: hookInstance is "A universally unique identifier (UUID)". Since issue 12 it must be one
    (the hyphenated form, either case); anything else is a 400 naming it. See docs/cds-hooks-conformance.md."""
    for value in ("d1577c69-dfbe-44ad-ba6d-3e05e953b2ea", "D1577C69-DFBE-44AD-BA6D-3E05E953B2EA"):
        body = copy.deepcopy(BASE)
        body["hookInstance"] = value
        assert _post(client, body).status_code == 200, value
    for value in ("D1577C69DFBE44ADBA6D3E05E953B2EA", "encounter-42#3", "not-a-uuid"):
        body = copy.deepcopy(BASE)
        body["hookInstance"] = value
        response = _post(client, body)
        assert response.status_code == 400, value
        assert error_expression(response) == ["hookInstance"]


def test_prefetch_keys_the_service_did_not_ask_for_are_ignored(client):
    """"services SHALL only receive the data they requested": when a client sends more, the extra keys are
    ignored (deliberate: neither an error nor used)."""
    plain = _post(client, BASE).get_json()["cards"]
    body = copy.deepcopy(BASE)
    body["prefetch"]["somethingElse"] = {"resourceType": "Patient", "id": "someone-else"}
    extra = _post(client, body).get_json()["cards"]
    strip = lambda cards: [{k: v for k, v in c.items() if k != "uuid" and k != "suggestions"} for c in cards]  # noqa: E731
    assert strip(extra) == strip(plain)


def test_card_and_suggestion_uuids_are_uuids_fresh_on_every_call(client):
    """card.uuid "SHALL be included in any subsequent calls to the CDS service's feedback endpoint" and
    suggestion.uuid identifies an accepted suggestion: both are UUIDs (our feedback endpoint requires
    that), unique within the response, and never reused by a later call."""
    seen: set[str] = set()
    for _ in range(2):
        cards = _post(client, BASE).get_json()["cards"]
        assert cards
        for card in cards:
            ids = [card["uuid"]] + [s["uuid"] for s in card.get("suggestions", [])]
            for value in ids:
                assert str(uuid.UUID(value)) == value, value  # canonical lower-case, hyphenated
                assert value not in seen, f"uuid {value} reused"
                seen.add(value)


def test_every_example_answer_has_cards_and_no_system_actions(client):
    """"CDS Services SHALL respond with a 200 HTTP response with an object containing a cards array";
    this service never proposes auto-applied actions."""
    for path in sorted(REQUESTS_DIR.glob("*.json")):
        if path.name.endswith(".expected.json"):
            continue
        response = _post(client, json.loads(path.read_text()))
        if response.status_code != 200:
            continue  # the error examples are pinned by test_examples_e2e
        body = response.get_json()
        assert isinstance(body.get("cards"), list), path.name
        assert "systemActions" not in body, path.name


def test_a_request_the_service_cannot_serve_is_412_not_an_empty_card_list(client):
    """"If the CDS Service is unable to obtain required data because it cannot access the FHIR server and
    the request did not contain the necessary prefetch keys, the service SHALL respond with an HTTP 412".
    In particular, an absent key is never treated as "no data" (that is what null is for)."""
    body = copy.deepcopy(BASE)
    body["prefetch"].pop("exerciseRounds")
    assert _post(client, body).status_code == 412
    body["prefetch"]["exerciseRounds"] = None  # "the prefetch template key MUST have a value of null"
    assert _post(client, body).status_code == 200


# ------------------------------------------------------------------------------------------------
# Response models: the rules the service's own output must keep
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["all", "exactly-one", "at-least-one", "AT-MOST-ONE", ""])
def test_selection_behavior_is_at_most_one_or_any(value):
    """"Allowed values are: at-most-one ... any" (CDS Clients "MUST treat the card as an error" otherwise)."""
    suggestion = Suggestion(label="x", uuid=str(uuid.uuid4()))
    for ok in ("at-most-one", "any"):
        Card(**_card(suggestions=[suggestion], selection_behavior=ok))
    with pytest.raises(ValidationError):
        Card(**_card(suggestions=[suggestion], selection_behavior=value))


def test_suggestion_uuids_are_unique_within_a_card():
    same = str(uuid.uuid4())
    suggestions = [Suggestion(label="a", uuid=same), Suggestion(label="b", uuid=same)]
    with pytest.raises(ValidationError, match="unique"):
        Card(**_card(suggestions=suggestions, selection_behavior="any"))


def test_card_uuids_are_unique_within_a_response():
    card = Card(**_card())
    with pytest.raises(ValidationError, match="unique"):
        CdsResponse(cards=[card, card])
    assert to_json(CdsResponse(cards=[card, Card(**_card())]))["cards"]


def test_system_action_description_is_optional_unlike_a_card_action():
    """"A systemAction shares all elements with an Action except that its description is optional"."""
    resource = {"resourceType": "ServiceRequest", "id": "example-MRI-59879846", "status": "draft",
                "intent": "order", "subject": {"reference": "Patient/1"}}
    with pytest.raises(ValidationError, match="description"):
        Action(type="update", resource=resource)
    response = CdsResponse(systemActions=[SystemAction(type="update", resource=resource)])
    wire = to_json(response)
    assert wire == {"cards": [], "systemActions": [{"type": "update", "resource": resource}]}
    assert response_problems(wire) == []
    # the rest of the Action rules still hold
    with pytest.raises(ValidationError, match="resourceId"):
        SystemAction(type="delete")
    with pytest.raises(ValidationError, match="resource"):
        SystemAction(type="create")


def test_delete_uses_resource_id_not_resource():
    """``resourceId``: "A relative reference ... SHOULD be provided when the type attribute is delete";
    a FHIR id in ``resource`` for a delete is DEPRECATED, so this service always writes resourceId."""
    action = Action(type="delete", description="Remove", resource_id="ServiceRequest/procedure-request-1")
    assert to_json(action) == {"type": "delete", "description": "Remove", "resourceId": "ServiceRequest/procedure-request-1"}
    with pytest.raises(ValidationError):
        Action(type="delete", description="Remove", resource={"resourceType": "ServiceRequest", "id": "x"})


def test_delete_resource_id_as_an_array():
    """The order-sign service deletes a draft order with ``resourceId`` as an array of relative references."""
    action = Action(type="delete", description="Remove", resource_id=["ServiceRequest/draft-1"])
    wire = to_json(action)
    assert wire == {"type": "delete", "description": "Remove", "resourceId": ["ServiceRequest/draft-1"]}
    with pytest.raises(ValidationError, match="resourceId"):
        Action(type="delete", description="Remove", resource_id=[])
    problems = response_problems({"cards": [{"uuid": "u", "summary": "s", "indicator": "info",
                                             "source": {"label": "l"}, "selectionBehavior": "at-most-one",
                                             "suggestions": [{"label": "x", "actions": [wire]}]}]})
    assert not [p for p in problems if "resourceId" in p], problems


@pytest.mark.parametrize("url", ["/relative/path", "pubmed.ncbi.nlm.nih.gov/1", "https:///no-host"])
def test_an_absolute_link_needs_an_absolute_url(url):
    """"A type of absolute indicates that the URL is absolute and should be treated as-is."."""
    with pytest.raises(ValidationError, match="absolute URL"):
        Link(label="x", url=url, type="absolute")
    Link(label="x", url="https://pubmed.ncbi.nlm.nih.gov/33992236/", type="absolute")


def test_topic_is_a_coding_display_optional():
    """Source.topic is a Coding: code and system REQUIRED, display "OPTIONAL for Topic"."""
    topic = Coding(system="http://example.org/cds-services/fhir/CodeSystem/topics", code="12345")
    assert to_json(Source(label="x", topic=topic)) == {"label": "x", "topic": {"system": topic.system, "code": "12345"}}
    with pytest.raises(ValidationError):
        Source(label="x", topic={"system": "http://example.org"})
    with pytest.raises(ValidationError):
        Source(url="https://example.org")  # label REQUIRED


def test_one_coding_model_for_rule_files_wire_and_feedback():
    """A Coding is defined once (cds.ruleset.schema); the wire and feedback use that very model, so its
    rules (system and code required, unknown keys refused) and its wire form (display omitted) are one."""
    from cds import feedback, ruleset

    assert Coding is ruleset.schema.Coding is feedback.Coding
    assert issubclass(OverrideReason, Coding)
    with pytest.raises(ValidationError, match="extra_forbidden|Extra inputs"):
        Coding(system="s", code="c", version="1")
    assert to_json(Source(label="x", topic=Coding(system="s", code="c"))) == {
        "label": "x", "topic": {"system": "s", "code": "c"}}


def test_served_cards_carry_source_topic_and_override_reasons_as_codings(client):
    for card in _post(client, BASE).get_json()["cards"]:
        topic = card["source"]["topic"]
        assert set(topic) <= {"system", "code", "display"} and topic["system"] and topic["code"]
        for reason in card["overrideReasons"]:  # "MUST populate a display value for each reason's Coding"
            assert set(reason) == {"system", "code", "display"}
        for link in card["links"]:
            assert link["type"] in ("absolute", "smart") and re.match(r"https?://[^/]", link["url"])
            assert "appContext" not in link or link["type"] == "smart"  # appContext only on smart links


# ------------------------------------------------------------------------------------------------
# Feedback
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def feedback_client(tmp_path):
    app = build_app(database_url=f"sqlite:///{tmp_path / 'cds.sqlite3'}", audit_key="test-audit-key-0123456789abcdef")
    try:
        yield app.test_client()
    finally:
        app.extensions["lbp_cds"].audit.writer.close()


def test_the_spec_feedback_examples_are_accepted(feedback_client):
    """The three examples of the spec's Feedback section, verbatim: a suggestion accepted, a card overridden
    without a reason, and overridden with a reason Coding without ``display`` plus a userComment. Plus the
    RFC 3339 timestamp with fractional seconds the spec gives as its format example. The spec defines no
    response body for feedback: we answer 200 with ``{"received", "stored"}`` (a deliberate extra)."""
    items = [
        {"card": "4e0a3a1e-3283-4575-ab82-028d55fe2719", "outcome": "accepted",
         "acceptedSuggestions": [{"id": "e56e1945-20b3-4393-8503-a1a20fd73152"}],
         "outcomeTimestamp": "2021-12-11T10:05:31Z"},
        {"card": "f6b95768-b1c8-40dc-8385-bf3504b82ffb", "outcome": "overridden",
         "outcomeTimestamp": "2020-12-11T00:00:00Z"},
        {"card": "9368d37b-283f-44a0-93ea-547cebab93ed", "outcome": "overridden",
         "overrideReason": {"reason": {"code": "d7ecf885", "system": "https://example.com/cds-hooks/override-reason-system"},
                            "userComment": "A comment entered by the clinician."},
         "outcomeTimestamp": "2020-12-11T00:00:00Z"},
        {"card": "9368d37b-283f-44a0-93ea-547cebab93ed", "outcome": "overridden",
         "overrideReason": {"userComment": "only a comment"}, "outcomeTimestamp": "1985-04-12T23:20:50.52Z"},
    ]
    for item in items:
        response = feedback_client.post(FEEDBACK_URL, json={"feedback": [item]})
        assert response.status_code == 200, (item, response.get_json())
        assert response.get_json() == {"received": 1, "stored": 1}
    response = feedback_client.post(FEEDBACK_URL, json={"feedback": items})  # several cards at once
    assert response.status_code == 200 and response.get_json()["received"] == len(items)


def test_feedback_on_a_served_card_round_trips(feedback_client):
    """What the service sends (card.uuid, suggestion.uuid) is exactly what feedback may name."""
    card = next(c for c in _post(feedback_client, BASE).get_json()["cards"] if c.get("suggestions"))
    item = {"card": card["uuid"], "outcome": "accepted", "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
            "outcomeTimestamp": "2026-11-20T10:15:00Z"}
    assert feedback_client.post(FEEDBACK_URL, json={"feedback": [item]}).status_code == 200
    item = {"card": card["uuid"], "outcome": "overridden", "overrideReason": {"reason": card["overrideReasons"][0]},
            "outcomeTimestamp": "2026-11-20T10:16:00Z"}
    assert feedback_client.post(FEEDBACK_URL, json={"feedback": [item]}).status_code == 200


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda i: i.update(acceptedSuggestions=[{}]), "feedback[0].acceptedSuggestions[0].id"),
        (lambda i: i.update(acceptedSuggestions=[]), "feedback[0].acceptedSuggestions"),
        (lambda i: i.update(overrideReason={"reason": {"code": "x"}}), "feedback[0].overrideReason.reason.system"),
        (lambda i: i.update(outcomeTimestamp=1639217131), "feedback[0].outcomeTimestamp"),
    ],
)
def test_feedback_required_members_are_enforced(feedback_client, change, field):
    """AcceptedSuggestion.id REQUIRED; acceptedSuggestions "Required for accepted outcomes"; a reason is a
    Coding (system and code REQUIRED); outcomeTimestamp an ISO 8601 string."""
    item = {"card": str(uuid.uuid4()), "outcome": "accepted",
            "acceptedSuggestions": [{"id": str(uuid.uuid4())}], "outcomeTimestamp": "2021-12-11T10:05:31Z"}
    change(item)
    response = feedback_client.post(FEEDBACK_URL, json={"feedback": [item]})
    assert response.status_code == 400
    assert error_expression(response) == [field]
