"""Feedback over HTTP on real databases (SPEC §3): every example request is answered and audited, then
clinicians' feedback on some of the cards is stored, joined to the audit and reported; repeated reports
are stored once; invalid reports are 400s naming the field; a database that is down makes feedback and
/readyz answer 503 while hook calls keep answering with cards.

Databases: a temporary SQLite file always; PostgreSQL too when ``CDS_TEST_DATABASE_URL`` is set (each
PostgreSQL test gets a fresh schema, dropped afterwards).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import SERVICE_URL, build_app, error_issue, example_pairs

PG_URL = os.environ.get("CDS_TEST_DATABASE_URL")
FEEDBACK_URL = SERVICE_URL + "/feedback"
AUDIT_KEY = "test-audit-key-0123456789abcdef"
OUTCOME_AT = "2026-11-20T10:15:00Z"
COMMENT = "prefers to repeat the current exercise this week"
EXTENSION = "org.lbp-cds.recommendation"


# ---------------------------------------------------------------------------------------------------
# fixtures and helpers (test_report_cli.py and test_ops.py import them)


@pytest.fixture
def db_url(empty_db_url):
    """URL of an empty database the app can use: SQLite is migrated by the app at start-up; PostgreSQL is
    migrated here (servers run ``cds db upgrade``)."""
    if not empty_db_url.startswith("sqlite"):
        from cds.storage import upgrade

        upgrade(empty_db_url)
    return empty_db_url


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rule_of(card: dict[str, Any]) -> str:
    return card["extension"][EXTENSION]["ruleId"]


@dataclass
class Filled:
    """An app whose database holds the audit of every example request (and, after ``give_feedback``,
    some feedback)."""

    app: Any
    client: Any
    cards: list[dict[str, Any]]
    patient_ids: list[str]
    feedback: list[dict[str, Any]] = field(default_factory=list)

    @property
    def store(self):
        return self.app.extensions["lbp_cds"].store

    def shown(self) -> Counter:
        return Counter(rule_of(c) for c in self.cards)


def post_examples(client) -> tuple[list[dict[str, Any]], list[str]]:
    cards, patients = [], []
    for name, request, _ in example_pairs():
        response = client.post(SERVICE_URL, json=request)
        assert response.status_code == 200, (name, response.get_json())
        cards += response.get_json()["cards"]
        patients.append(request["context"]["patientId"])
    return cards, patients


def accepted_item(card: dict[str, Any]) -> dict[str, Any]:
    return {
        "card": card["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
        "outcomeTimestamp": OUTCOME_AT,
    }


def overridden_item(card: dict[str, Any], reason: int) -> dict[str, Any]:
    return {
        "card": card["uuid"],
        "outcome": "overridden",
        "overrideReason": {"reason": card["overrideReasons"][reason], "userComment": COMMENT},
        "outcomeTimestamp": OUTCOME_AT,
    }


def feedback_plan(cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every ``continue`` card accepted (its suggestion), every ``step-up`` card overridden for the
    patient's preference, every ``new-onset`` card overridden as clinical judgement; others no feedback."""
    items = []
    for card in cards:
        rule = rule_of(card)
        if rule == "continue":
            items.append(accepted_item(card))
        elif rule == "step-up":
            items.append(overridden_item(card, 1))
        elif rule == "new-onset":
            items.append(overridden_item(card, 0))
    return items


def fill(db_url: str, *, with_feedback: bool = True, **overrides: Any) -> Filled:
    """An app on ``db_url`` that has answered (and audited) every example request, and received the
    feedback of :func:`feedback_plan`."""
    app = build_app(database_url=db_url, audit_key=AUDIT_KEY, **overrides)
    client = app.test_client()
    cards, patients = post_examples(client)
    assert app.extensions["lbp_cds"].audit.flush(timeout=60)
    filled = Filled(app, client, cards, patients)
    if with_feedback:
        filled.feedback = feedback_plan(cards)
        response = client.post(FEEDBACK_URL, json={"feedback": filled.feedback})
        assert response.status_code == 200, response.get_json()
        assert response.get_json() == {"received": len(filled.feedback), "stored": len(filled.feedback)}
    return filled


@pytest.fixture
def filled(db_url):
    f = fill(db_url, with_feedback=False)
    yield f
    f.app.extensions["lbp_cds"].audit.writer.close()
    f.store.close()


def _error(response) -> dict[str, Any]:
    """The error as ``{"message", "field"?, "code"}``, read from the OperationOutcome body."""
    issue = error_issue(response)
    out = {"message": issue["diagnostics"], "code": issue["code"]}
    if "expression" in issue:
        out["field"] = issue["expression"][0]
    return out


# ---------------------------------------------------------------------------------------------------
# audit and feedback stored


def test_every_hook_call_is_audited(filled):
    store = filled.store
    assert store.count("audit_evaluation") == len(example_pairs())
    assert store.count("audit_card") == len(filled.cards)
    assert store.count("audit_suggestion") == sum(len(c.get("suggestions", ())) for c in filled.cards)
    assert filled.app.extensions["lbp_cds"].audit.failures == 0
    rows = {r.rule_id: r for r in store.report()}
    assert {rule: r.shown for rule, r in rows.items()} == dict(filled.shown())
    # the example set as it stands: a guard against a silently empty audit
    assert min(rows["continue"].shown, rows["step-up"].shown, rows["new-onset"].shown) > 0


def test_feedback_is_stored_and_joined_to_the_audit(filled):
    plan = feedback_plan(filled.cards)
    response = filled.client.post(FEEDBACK_URL, json={"feedback": plan})
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"received": len(plan), "stored": len(plan)}
    assert filled.store.count("feedback") == len(plan)

    rows = {r.rule_id: r for r in filled.store.report()}
    shown = filled.shown()
    assert "(unknown)" not in rows  # every card uuid joined to its audited card
    assert (rows["continue"].shown, rows["continue"].accepted, rows["continue"].overridden) == (shown["continue"], shown["continue"], 0)
    assert (rows["step-up"].accepted, rows["step-up"].overridden) == (0, shown["step-up"])
    assert [(r.code, r.count) for r in rows["step-up"].override_reasons] == [("patient-preference", shown["step-up"])]
    assert [(r.code, r.count) for r in rows["new-onset"].override_reasons] == [("clinician-judgement", shown["new-onset"])]
    assert (rows["pain-gate"].accepted, rows["pain-gate"].overridden) == (0, 0)
    assert {r.ruleset_version for r in rows.values()} == {"1.0.0"}


def test_one_accepted_and_one_overridden_card(filled):
    accept = next(c for c in filled.cards if rule_of(c) == "step-back")
    override = next(c for c in filled.cards if rule_of(c) == "pain-gate")
    items = [accepted_item(accept), overridden_item(override, 2)]
    response = filled.client.post(FEEDBACK_URL, json={"feedback": items})
    assert response.status_code == 200
    assert response.get_json() == {"received": 2, "stored": 2}
    rows = {r.rule_id: r for r in filled.store.report()}
    assert rows["step-back"].accepted == 1
    assert rows["pain-gate"].overridden == 1
    [reason] = rows["pain-gate"].override_reasons
    assert (reason.system, reason.code, reason.display) == (
        override["overrideReasons"][2]["system"], "data-incomplete", override["overrideReasons"][2]["display"],
    )
    # the whole report is kept, comment included
    from sqlalchemy import select

    from cds.storage.models import feedback

    with filled.store.engine.connect() as conn:
        stored = {r.card_uuid: r for r in conn.execute(select(feedback))}
    assert stored[override["uuid"]].override_comment == COMMENT
    assert stored[accept["uuid"]].accepted_suggestions == f'["{accept["suggestions"][0]["uuid"]}"]'


def test_the_same_report_twice_is_stored_once(filled):
    card = next(c for c in filled.cards if rule_of(c) == "continue")
    body = {"feedback": [accepted_item(card)]}
    first = filled.client.post(FEEDBACK_URL, json=body)
    second = filled.client.post(FEEDBACK_URL, json=body)
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.get_json() == {"received": 1, "stored": 1}
    assert second.get_json() == {"received": 1, "stored": 0}
    assert filled.store.count("feedback") == 1
    # a UUID in upper case is the same report
    upper = {"feedback": [{**body["feedback"][0], "card": card["uuid"].upper()}]}
    assert filled.client.post(FEEDBACK_URL, json=upper).get_json() == {"received": 1, "stored": 0}
    rows = {r.rule_id: r for r in filled.store.report()}
    assert (rows["continue"].accepted, rows["continue"].feedback_reports) == (1, 1)


def test_feedback_for_a_card_never_shown_is_kept_as_unknown(filled):
    stranger = {"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": OUTCOME_AT}
    response = filled.client.post(FEEDBACK_URL, json={"feedback": [stranger]})
    assert response.get_json() == {"received": 1, "stored": 1}
    rows = {r.rule_id: r for r in filled.store.report()}
    assert rows["(unknown)"].overridden == 1


# ---------------------------------------------------------------------------------------------------
# invalid reports


def test_accepted_without_accepted_suggestions_is_400_naming_the_field(filled):
    card = filled.cards[0]
    item = {"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": OUTCOME_AT}
    response = filled.client.post(FEEDBACK_URL, json={"feedback": [item]})
    assert response.status_code == 400
    error = _error(response)
    assert error["field"] == "feedback[0].acceptedSuggestions"
    assert error["message"].startswith("feedback[0].acceptedSuggestions: ")
    assert filled.store.count("feedback") == 0


def test_unknown_feedback_fields_are_ignored_counted_and_logged_by_name_only(filled, caplog):
    """Issue 11: liberal where clients vary. Unknown keys never make a 400; each is counted in
    ``cds_feedback_unknown_fields_total{field}`` and logged by name, never by value."""
    card = filled.cards[0]
    item = {
        "card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": OUTCOME_AT,
        "overrideReason": {"reason": {"system": card["overrideReasons"][0]["system"],
                                      "code": card["overrideReasons"][0]["code"]}, "mood": "SECRET-VALUE-1"},
        "ehrUserRole": "SECRET-VALUE-2", "weird key!": 3,
    }
    with caplog.at_level(logging.INFO, logger="cds.http"):
        response = filled.client.post(FEEDBACK_URL, json={"feedback": [item], "clientVersion": "SECRET-VALUE-3"})
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"received": 1, "stored": 1}
    assert filled.store.count("feedback") == 1
    metrics = filled.client.get("/metrics").get_data(as_text=True)
    for name in ("mood", "ehrUserRole", "clientVersion", "(unnamed)"):
        assert f'cds_feedback_unknown_fields_total{{field="{name}"}} 1.0' in metrics, name
    assert "weird key!" not in metrics
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "ehrUserRole" in logged and "SECRET-VALUE" not in logged


def test_unknown_field_labels_are_bounded(filled):
    from cds.http.ehr import MAX_FIELD_LABELS

    card = filled.cards[0]
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": OUTCOME_AT}
    item.update({f"f{i:03d}": 1 for i in range(MAX_FIELD_LABELS + 5)})
    assert filled.client.post(FEEDBACK_URL, json={"feedback": [item]}).status_code == 200
    metrics = filled.client.get("/metrics").get_data(as_text=True)
    labels = [line for line in metrics.splitlines() if line.startswith("cds_feedback_unknown_fields_total{")]
    assert len(labels) == MAX_FIELD_LABELS + 1  # the first names, then "(other)"
    assert 'cds_feedback_unknown_fields_total{field="(other)"} 5.0' in metrics


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({}, 400, "feedback"),
        ({"feedback": []}, 400, "feedback"),
        ({"feedback": "accepted"}, 400, "feedback"),
        ({"feedback": [{"card": "not-a-uuid", "outcome": "overridden", "outcomeTimestamp": OUTCOME_AT}]}, 400, "feedback[0].card"),
        ({"feedback": [{"card": str(uuid.UUID(int=1)), "outcome": "ignored", "outcomeTimestamp": OUTCOME_AT}]}, 400, "feedback[0].outcome"),
        ({"feedback": [{"card": str(uuid.UUID(int=1)), "outcome": "overridden"}]}, 400, "feedback[0].outcomeTimestamp"),
        ({"feedback": [{"card": str(uuid.UUID(int=1)), "outcome": "overridden", "outcomeTimestamp": "2026-11-20"}]}, 400, "feedback[0].outcomeTimestamp"),
        ({"feedback": [{"card": str(uuid.UUID(int=1)), "outcome": "accepted", "outcomeTimestamp": OUTCOME_AT,
                        "acceptedSuggestions": [{"id": "x"}], "mood": 1}]}, 400, "feedback[0].acceptedSuggestions[0].id"),
    ],
)
def test_malformed_feedback_is_400_naming_the_field(filled, body, status, field):
    response = filled.client.post(FEEDBACK_URL, json=body)
    assert response.status_code == status
    assert _error(response)["field"] == field
    assert filled.store.count("feedback") == 0


@pytest.mark.parametrize(
    "data, content_type",
    [("{not json", "application/json"), ("[1, 2]", "application/json"), ('{"feedback": NaN}', "application/json")],
)
def test_malformed_json_is_400(filled, data, content_type):
    response = filled.client.post(FEEDBACK_URL, data=data, content_type=content_type)
    assert response.status_code == 400
    _error(response)


def test_feedback_to_an_unknown_service_is_404(filled):
    card = filled.cards[0]
    response = filled.client.post("/cds-services/no-such-service/feedback", json={"feedback": [overridden_item(card, 0)]})
    assert response.status_code == 404
    assert "no-such-service" in _error(response)["message"]
    assert filled.store.count("feedback") == 0


# ---------------------------------------------------------------------------------------------------
# the database is down


def _audit_failures(client) -> float:
    for line in client.get("/metrics").get_data(as_text=True).splitlines():
        if line.startswith("cds_audit_failures "):
            return float(line.split()[1])
    raise AssertionError("cds_audit_failures not in /metrics")


def _assert_down_but_answering(app, caplog) -> None:
    client = app.test_client()
    name, request, _ = next(p for p in example_pairs() if p[0] == "bird-dog-20-18")
    card_body = {"feedback": [{"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": OUTCOME_AT}]}

    response = client.post(FEEDBACK_URL, json=card_body)
    assert response.status_code == 503
    assert "retry" in _error(response)["message"]

    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["checks"]["database"] is False
    assert ready.get_json()["status"] == "not ready"
    assert client.get("/healthz").status_code == 200  # alive, just not ready

    with caplog.at_level(logging.INFO):
        for _ in range(3):
            hook = client.post(SERVICE_URL, json=request)
            assert hook.status_code == 200
            assert [rule_of(c) for c in hook.get_json()["cards"]] == ["continue"]
        assert app.extensions["lbp_cds"].audit.flush(timeout=60)
    failures = [r for r in caplog.records if r.name == "cds.audit" and r.levelno >= logging.ERROR]
    assert len(failures) == 3, caplog.text
    assert all("audit not stored" in r.getMessage() for r in failures)
    assert request["context"]["patientId"] not in caplog.text
    assert _audit_failures(client) == 3


def test_sqlite_removed_after_start(tmp_path, caplog):
    directory = tmp_path / "gone"
    app = build_app(database_url=f"sqlite:///{directory / 'cds.sqlite3'}", audit_key=AUDIT_KEY)
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    assert client.post(SERVICE_URL, json=example_pairs()[0][1]).status_code == 200
    assert app.extensions["lbp_cds"].audit.flush(timeout=60)
    shutil.rmtree(directory)
    # No dispose here: the pooled connections still hold the unlinked file open, and the store must
    # notice that the file is gone instead of acknowledging writes into it.
    _assert_down_but_answering(app, caplog)


def test_postgresql_on_a_closed_port(caplog):
    pytest.importorskip("psycopg")
    app = build_app(database_url=f"postgresql+psycopg://cds:cds@127.0.0.1:{closed_port()}/cds", audit_key=AUDIT_KEY)
    _assert_down_but_answering(app, caplog)
