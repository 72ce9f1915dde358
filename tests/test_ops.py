"""Operations: /healthz, /readyz, /metrics (Prometheus text format), structured JSON logs without PHI,
the X-Request-Id header, and the ``cds.wsgi`` entry point."""

from __future__ import annotations

import copy
import gc
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import uuid
from typing import Any

import pytest
from conftest import ROOT, RULES_DIR, SERVICE_URL, build_app, error_expression, example_pairs
from prometheus_client.parser import text_string_to_metric_families
from test_feedback_http import (  # noqa: F401 - fixtures
    AUDIT_KEY,
    FEEDBACK_URL,
    closed_port,
    db_url,
    feedback_plan,
    rule_of,
)

from cds.logs import JsonFormatter

SERVICE_ID = "lbp-exercise-progression"
HOOK_ENDPOINT = "/cds-services/<service_id>"
TOKEN = "secret-access-token-" + uuid.uuid4().hex
EXTENSION = "org.lbp-cds.recommendation"


def failing_fetch_request() -> tuple[dict[str, Any], str]:
    """An example request with one prefetch key left out, a fhirServer on a closed loopback port and an
    access token: the service must fetch the key, cannot, and answers 412. Returns (body, missing key)."""
    _, request, _ = next(p for p in example_pairs() if p[0] == "bird-dog-20-18")
    body = copy.deepcopy(request)
    missing = "conditions"
    del body["prefetch"][missing]
    body["fhirServer"] = f"http://127.0.0.1:{closed_port()}/fhir"
    body["fhirAuthorization"] = {
        "access_token": TOKEN, "token_type": "Bearer", "expires_in": 300,
        "scope": "patient/Patient.read patient/Condition.read patient/Observation.read", "subject": "lbp-cds",
    }
    return body, missing


def samples(client) -> dict[str, list[Any]]:
    """/metrics parsed with the Prometheus client's own parser: sample name → samples."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def value(samples_: dict[str, list[Any]], name: str, **labels: str) -> float:
    matching = [s.value for s in samples_.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matching) == 1, (name, labels, samples_.get(name))
    return matching[0]


# ---------------------------------------------------------------------------------------------------
# health and readiness


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_names_the_ruleset_and_the_database(db_url, ruleset):
    app = build_app(database_url=db_url, audit_key=AUDIT_KEY)
    response = app.test_client().get("/readyz")
    assert response.status_code == 200
    ident = ruleset.identity
    assert response.get_json() == {
        "status": "ready",
        "checks": {"rules": {"name": ident.name, "version": ident.version, "sha256": ident.sha256}, "database": True},
    }
    assert re.fullmatch(r"[0-9a-f]{64}", ident.sha256)
    app.extensions["lbp_cds"].store.close()


def test_ops_endpoints_need_no_token(make_app):
    app = make_app(auth=True)
    client = app.test_client()
    assert client.post(SERVICE_URL, json={}).status_code == 401
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/metrics").status_code == 200


# ---------------------------------------------------------------------------------------------------
# metrics


def test_metrics_after_every_example_and_a_failing_fetch(tmp_path):
    app = build_app(database_url=f"sqlite:///{tmp_path / 'cds.sqlite3'}", audit_key=AUDIT_KEY)
    client = app.test_client()
    before = samples(client)
    assert "cds_audit_failures" in before and value(before, "cds_audit_failures") == 0
    assert "cds_fhir_fetch_errors_total" not in before  # no label set yet

    cards = []
    for _, request, _ in example_pairs():
        response = client.post(SERVICE_URL, json=request)
        assert response.status_code == 200
        cards += response.get_json()["cards"]
    body, missing = failing_fetch_request()
    failed = client.post(SERVICE_URL, json=body)
    assert failed.status_code == 412
    assert error_expression(failed) == [f"prefetch.{missing}"]
    assert client.post("/cds-services/nope", json={}).status_code == 404
    assert client.post(FEEDBACK_URL, json={"feedback": feedback_plan(cards)}).status_code == 200
    assert app.extensions["lbp_cds"].audit.flush(timeout=60)

    m = samples(client)
    n = len(example_pairs())
    # requests by endpoint, service and status
    assert value(m, "cds_requests_total", endpoint=HOOK_ENDPOINT, service=SERVICE_ID, status="200") == n
    assert value(m, "cds_requests_total", endpoint=HOOK_ENDPOINT, service=SERVICE_ID, status="412") == 1
    assert value(m, "cds_requests_total", endpoint=HOOK_ENDPOINT, service="nope", status="404") == 1
    assert value(m, "cds_requests_total", endpoint=HOOK_ENDPOINT + "/feedback", service=SERVICE_ID, status="200") == 1
    assert value(m, "cds_requests_total", endpoint="/metrics", service="", status="200") == 1
    # latency histogram: buckets, count and sum per endpoint
    assert value(m, "cds_request_seconds_count", endpoint=HOOK_ENDPOINT) == n + 2
    assert value(m, "cds_request_seconds_bucket", endpoint=HOOK_ENDPOINT, le="+Inf") == n + 2
    assert value(m, "cds_request_seconds_sum", endpoint=HOOK_ENDPOINT) > 0
    buckets = [s for s in m["cds_request_seconds_bucket"] if s.labels["endpoint"] == HOOK_ENDPOINT]
    assert len(buckets) == 12
    assert [s.value for s in buckets] == sorted(s.value for s in buckets)  # cumulative
    # decisions by rule (and decision and rule-set version)
    by_rule: dict[str, int] = {}
    for card in cards:
        by_rule[rule_of(card)] = by_rule.get(rule_of(card), 0) + 1
    decisions = {s.labels["rule"]: s.value for s in m["cds_decisions_total"]}
    assert decisions == by_rule
    assert value(m, "cds_decisions_total", rule="continue", decision="continue", ruleset_version="1.0.0") == by_rule[
        "continue"]
    assert value(m, "cds_decisions_total", rule="step-back-first-rung", decision="step-back",
                 ruleset_version="1.0.0") == by_rule["step-back-first-rung"]
    # FHIR fetch errors by prefetch key
    assert value(m, "cds_fhir_fetch_errors_total", key=missing) == 1
    # feedback by outcome, audit failures
    assert value(m, "cds_feedback_total", outcome="accepted") == by_rule["continue"] > 0
    assert value(m, "cds_feedback_total", outcome="overridden") == by_rule["step-up"] + by_rule["new-onset"] > 0
    assert value(m, "cds_audit_failures") == 0
    app.extensions["lbp_cds"].store.close()


def test_metrics_format_is_prometheus_text(make_app):
    client = make_app().test_client()
    client.get("/healthz")
    text = client.get("/metrics").get_data(as_text=True)
    for name, kind in [("cds_requests_total", "counter"), ("cds_request_seconds", "histogram"),
                       ("cds_decisions_total", "counter"), ("cds_fhir_fetch_errors_total", "counter"),
                       ("cds_feedback_total", "counter")]:
        # prometheus_client names a counter's family with or without _total depending on its version
        family = re.escape(name.removesuffix("_total"))
        assert re.search(rf"^# TYPE {family}(_total)? {kind}$", text, re.M), name
        assert re.search(rf"^# HELP {family}(_total)? \S", text, re.M), name
    assert 'cds_requests_total{endpoint="/healthz",service="",status="200"} 1.0' in text


def test_each_app_has_its_own_metrics(make_app):
    one, two = make_app(), make_app()
    one.test_client().get("/healthz")
    assert 'endpoint="/healthz"' in one.test_client().get("/metrics").get_data(as_text=True)
    assert 'endpoint="/healthz"' not in two.test_client().get("/metrics").get_data(as_text=True)


# ---------------------------------------------------------------------------------------------------
# request id


def test_request_id_is_generated_and_echoed(client):
    first = client.get("/healthz").headers["X-Request-Id"]
    second = client.get("/healthz").headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", first) and re.fullmatch(r"[0-9a-f]{32}", second)
    assert first != second


def test_client_request_id_is_honoured(client):
    _, request, _ = example_pairs()[0]
    response = client.post(SERVICE_URL, json=request, headers={"X-Request-Id": "ehr-call-0042"})
    assert response.headers["X-Request-Id"] == "ehr-call-0042"
    error = client.post(SERVICE_URL, json={}, headers={"X-Request-Id": "ehr-call-0043"})
    assert error.status_code == 400
    assert error.headers["X-Request-Id"] == "ehr-call-0043"


@pytest.mark.parametrize("bad", ["x" * 65, "has space", "new\\nline", "<script>", "a;b"])
def test_unusable_request_id_is_replaced(client, bad):
    response = client.get("/healthz", headers={"X-Request-Id": bad})
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-Id"])


# ---------------------------------------------------------------------------------------------------
# structured logs without PHI


@pytest.fixture
def json_log_lines():
    """Every log record of the test, formatted by cds.logs.JsonFormatter (as in production), at DEBUG."""
    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Capture(level=logging.DEBUG)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def _clinical_values(cards: list[dict[str, Any]]) -> set[str]:
    """Strings that would reveal a patient's clinical facts if they appeared in a log line."""
    values = set()
    for card in cards:
        facts = card["extension"][EXTENSION]["facts"]
        values.add(card["summary"])
        for key in ("sessionDate", "onsetDate"):
            if key in facts:
                values.add(facts[key])
        if "reps" in facts:
            reps = [str(r) for r in facts["reps"]]
            values.update({"[" + ", ".join(reps) + "]", "[" + ",".join(reps) + "]", "reps " + ", ".join(reps)})
            if len(reps) > 1:  # a lone number would match durations and status codes
                values.update({", ".join(reps), ",".join(reps)})
    return values


def test_json_logs_carry_request_ids_and_no_phi(tmp_path, json_log_lines):
    directory = tmp_path / "db"
    app = build_app(database_url=f"sqlite:///{directory / 'cds.sqlite3'}", audit_key=AUDIT_KEY)
    client = app.test_client()
    state = app.extensions["lbp_cds"]
    patients, cards, request_ids = [], [], []
    for _, request, _ in example_pairs():
        patients.append(request["context"]["patientId"])
        response = client.post(SERVICE_URL, json=request)
        assert response.status_code == 200
        cards += response.get_json()["cards"]
        request_ids.append(response.headers["X-Request-Id"])
    body, missing = failing_fetch_request()
    failed = client.post(SERVICE_URL, json=body, headers={"X-Request-Id": "failing-fetch-1"})
    assert failed.status_code == 412
    assert client.post(FEEDBACK_URL, json={"feedback": feedback_plan(cards)}).status_code == 200
    assert state.audit.flush(timeout=60)
    # then the database goes away: audit failures and a refused feedback are logged too
    shutil.rmtree(directory)
    state.store.engine.dispose()
    _, request, _ = example_pairs()[0]
    assert client.post(SERVICE_URL, json=request).status_code == 200
    assert client.post(FEEDBACK_URL, json={"feedback": feedback_plan(cards)[:1]}).status_code == 503
    assert state.audit.flush(timeout=60)
    assert state.audit.failures == 1
    state.store.close()

    assert json_log_lines, "nothing was logged"
    records = [json.loads(line) for line in json_log_lines]  # every line is one JSON object
    for rec in records:
        assert {"time", "level", "logger", "message"} <= set(rec), rec

    # one request log per CDS Hooks call, each with its request id
    request_logs = [r for r in records if r["logger"] == "cds.http" and r["message"].startswith("POST /cds-services")]
    assert len(request_logs) == len(example_pairs()) + 4
    assert [r["request_id"] for r in request_logs[: len(request_ids)]] == request_ids
    failing = request_logs[len(request_ids)]
    assert (failing["request_id"], failing["status"], failing["service"]) == ("failing-fetch-1", 412, SERVICE_ID)
    assert [r["status"] for r in request_logs[-3:]] == [200, 200, 503]
    # every line logged while a request was handled names it (the audit writer works off the request
    # path: its lines name the hook instance instead)
    audit_errors = [r for r in records if r["logger"] == "cds.audit"]
    assert len(audit_errors) == 1 and audit_errors[0]["level"] == "ERROR"
    assert audit_errors[0]["hook_instance"] == request["hookInstance"]
    assert all("request_id" in r for r in records if r["logger"].startswith("cds.") and r["logger"] != "cds.audit"
               and not r["message"].startswith(("rule set loaded", "AUTHENTICATION IS OFF")))
    assert all(isinstance(r["duration_ms"], float | int) for r in request_logs)
    # what the fetch logged about the failing request carries its id too
    fetch_logs = [r for r in records if r["logger"].startswith("cds.fhir")]
    assert fetch_logs and all(r.get("request_id") == "failing-fetch-1" for r in fetch_logs), fetch_logs

    everything = "\n".join(json_log_lines)
    # patient ids and the access token: nowhere, in any field of any line
    for patient in patients:
        assert patient not in everything, patient
        assert patient.removeprefix("lbp-") not in everything, patient
    assert TOKEN not in everything
    assert "Bearer" not in everything
    # clinical facts: no fact names, no card summaries, no session/onset dates, no repetition lists
    # (resource ids such as Observation/pain-eie-20261118 are logged on purpose: they are not values)
    for key in ("sessionDate", "maxPain", "onsetDate", '"reps"', "Reps per round", "Highest pain"):
        assert key not in everything, key
    for clinical in _clinical_values(cards):
        for rec in records:
            assert clinical not in rec["message"], (clinical, rec)
    # nor the feedback's free-text comment
    assert "prefers to repeat" not in everything


def test_production_refuses_to_start_without_an_audit_key(tmp_path):
    """A random key per process would make the keyed patient hashes unlinkable across instances."""
    from cds.config import ConfigError, load_settings

    # the settings validation refuses it, before any app is built (tests/test_config.py: the CLI's one line)
    with pytest.raises(ConfigError, match="CDS_AUDIT_KEY: required"):
        load_settings({}, database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}", rules_poll_seconds=0)
    with pytest.raises(ConfigError, match="CDS_AUDIT_KEY: .*at least 16"):
        load_settings({"CDS_AUDIT_KEY": "short"})


def test_wsgi_builds_an_app_from_the_environment(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    env.update({
        "CDS_AUTH": "off",
        "CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'var' / 'wsgi.sqlite3'}",
        "CDS_RULES_DIR": str(RULES_DIR),
        "CDS_RULES_POLL_SECONDS": "0",
        "CDS_AUDIT_KEY": "wsgi-test-audit-key-0123456789",
    })
    script = (
        "import gc, json, cds.wsgi as w\n"
        "c = w.app.test_client()\n"
        "r = c.get('/readyz')\n"
        "print(json.dumps({'status': r.status_code, 'body': r.get_json(),"
        " 'rid': r.headers.get('X-Request-Id'), 'services': c.get('/cds-services').status_code,"
        " 'frozen': gc.get_freeze_count(), 'thresholds': gc.get_threshold()}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["status"] == 200
    assert out["body"]["checks"]["database"] is True
    assert out["body"]["checks"]["rules"]["version"] == "1.0.0"
    assert out["services"] == 200  # CDS_AUTH=off
    # the collector settled after start-up (cds/collector.py): start-up objects frozen, full collections rare
    assert out["frozen"] > 10_000 and out["thresholds"][2] == 1000 and out["thresholds"][:2] == list(gc.get_threshold()[:2])
    assert (tmp_path / "var" / "wsgi.sqlite3").exists()  # the embedded database migrated itself
    # logs go to stderr as JSON lines
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines
    logged = [json.loads(line) for line in lines]
    assert any("AUTHENTICATION IS OFF" in r["message"] for r in logged)
    assert any(r["message"] == "rule set loaded" and r.get("version") == "1.0.0" for r in logged)
