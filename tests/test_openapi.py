"""The OpenAPI document (``GET /openapi.json``): generated from the pydantic models the endpoints use, a valid
OpenAPI 3.1 document, bearer security and every error status declared; and the recorder
(tests/openapi_recorder.py) that checks every live response of the suite against it really fails a run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import RULES_DIR, SERVICE_URL, build_app, example_requests
from openapi_check import DocumentChecker, Exchange
from openapi_recorder import recorded
from openapi_spec_validator import validate

from cds.cdshooks import HOOK_REQUEST_MODELS, SUMMARY_MAX_CHARS, Card, CdsResponse, Source
from cds.http.errors import ErrorResponse
from cds.http.openapi import REQUEST_MODELS, RESPONSE_MODELS, component_schemas

TESTS = Path(__file__).resolve().parent
HOOK_PATH = "/cds-services/{service_id}"
FEEDBACK_PATH = HOOK_PATH + "/feedback"
CDS_OPERATIONS = [("/cds-services", "get"), (HOOK_PATH, "post"), (FEEDBACK_PATH, "post")]


@pytest.fixture(scope="module")
def secured_app():
    return build_app(auth=True, public_base_url="https://cds.example.org")


@pytest.fixture(scope="module")
def doc(app) -> dict[str, Any]:
    return app.test_client().get("/openapi.json").get_json()


@pytest.fixture(scope="module")
def secured_doc(secured_app) -> dict[str, Any]:
    return secured_app.test_client().get("/openapi.json").get_json()


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        out = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        for v in node.values():
            out |= _refs(v)
        return out
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node)) if node else set()
    return set()


def _reachable(doc: dict[str, Any], roots: set[str]) -> set[str]:
    """Names of the component schemas reachable from the refs ``roots``."""
    schemas = doc["components"]["schemas"]
    seen: set[str] = set()
    todo = [r.rsplit("/", 1)[-1] for r in roots if r.startswith("#/components/schemas/")]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += [r.rsplit("/", 1)[-1] for r in _refs(schemas[name]) if r.startswith("#/components/schemas/")]
    return seen


# ---- the document ----------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["doc", "secured_doc"])
def test_the_served_document_is_valid_openapi_3_1(which, request):
    document = request.getfixturevalue(which)
    assert document["openapi"] == "3.1.0"
    validate(document)  # openapi-spec-validator: raises on an invalid document


def test_every_component_schema_is_generated_from_the_models(doc):
    schemas, refs = component_schemas()
    assert doc["components"]["schemas"] == json.loads(json.dumps(schemas))
    # and the names are the models' own (pydantic adds -Input/-Output when one name has two shapes)
    models = {m.__name__ for m in (*REQUEST_MODELS, *RESPONSE_MODELS)}
    assert {refs[m]["$ref"].rsplit("/", 1)[-1] for m in (*REQUEST_MODELS, *RESPONSE_MODELS)} == models
    assert ErrorResponse.__name__ in schemas and "Card" in schemas


def test_a_changed_model_changes_the_document(doc):
    """No copy of a model's fields anywhere: the Card schema is exactly pydantic's (wire form)."""
    card = doc["components"]["schemas"]["Card"]
    assert card["properties"]["summary"]["maxLength"] == SUMMARY_MAX_CHARS
    assert set(card["properties"]) == {f.alias or name for name, f in Card.model_fields.items()}


def test_response_schemas_never_claim_null_and_request_schemas_accept_it(doc):
    """The wire omits an optional field with no value; requests may send null (pydantic accepts it)."""
    responses = {ref for path in doc["paths"].values() for op in path.values() if isinstance(op, dict) and "responses" in op
                 for ref in _refs(op["responses"])}
    names = _reachable(doc, responses)
    assert {"Card", "Source", "Suggestion", "Action", "OutcomeIssue", "Readiness"} <= names
    text = json.dumps({n: doc["components"]["schemas"][n] for n in names})
    assert '"null"' not in text and '"default": null' not in text
    request_text = json.dumps(doc["components"]["schemas"]["PatientViewRequest"])
    assert '{"type": "null"}' in request_text  # e.g. "fhirServer": null is accepted


def test_a_null_field_in_a_response_would_be_caught(doc):
    checker = DocumentChecker(doc)
    card = CdsResponse(cards=[Card(uuid="u-1", summary="s", indicator="info", source=Source(label="x"))]).wire()
    assert checker.schema_errors({"$ref": "#/components/schemas/CdsResponse"}, card) == []
    card["cards"][0]["detail"] = None
    errors = checker.schema_errors({"$ref": "#/components/schemas/CdsResponse"}, card)
    assert errors and "cards/0/detail" in errors[0]


def test_the_hook_path_is_generic_and_takes_every_hook_request_model(doc, app):
    assert set(doc["paths"]) >= {"/cds-services", HOOK_PATH, FEEDBACK_PATH}
    operation = doc["paths"][HOOK_PATH]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"anyOf": [{"$ref": f"#/components/schemas/{m.__name__}"} for m in HOOK_REQUEST_MODELS]}
    (param,) = doc["paths"][HOOK_PATH]["parameters"]
    assert param["in"] == "path" and param["name"] == "service_id"
    discovered = app.test_client().get("/cds-services").get_json()["services"]
    assert param["schema"]["enum"] == [s["id"] for s in discovered]


def test_the_request_schema_accepts_every_example_request(doc):
    checker = DocumentChecker(doc)
    schema = doc["paths"][HOOK_PATH]["post"]["requestBody"]["content"]["application/json"]["schema"]
    for name, hook_request in example_requests():
        assert checker.schema_errors(schema, hook_request) == [], name


def test_bearer_security_is_declared_and_required_when_auth_is_on(secured_doc, doc):
    scheme = secured_doc["components"]["securitySchemes"]["bearer"]
    assert scheme == {**scheme, "type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    for path, method in CDS_OPERATIONS:
        operation = secured_doc["paths"][path][method]
        assert operation["security"] == [{"bearer": []}], path
        unauthorized = operation["responses"]["401"]
        assert unauthorized["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/OperationOutcome"}
        assert "WWW-Authenticate" in unauthorized["headers"]
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert "security" not in secured_doc["paths"][path]["get"]
    assert secured_doc["servers"] == [{"url": "https://cds.example.org"}]
    # with authentication off (development) nothing asks for a token and no 401 is promised
    for path, method in CDS_OPERATIONS:
        assert "security" not in doc["paths"][path][method] and "401" not in doc["paths"][path][method]["responses"]


def test_every_error_status_is_declared_with_the_error_model(secured_doc):
    paths = secured_doc["paths"]
    declared = {
        (path, method): set(op["responses"]) for path, item in paths.items() for method, op in item.items() if method != "parameters"
    }
    assert {"200", "400", "401", "404", "412", "413", "415", "500"} <= declared[(HOOK_PATH, "post")]
    assert {"200", "400", "401", "404", "413", "415", "500", "503"} <= declared[(FEEDBACK_PATH, "post")]
    assert {"200", "503"} <= declared[("/readyz", "get")]
    for (path, method), codes in declared.items():
        for code in codes - {"200"}:
            schema = paths[path][method]["responses"][code]["content"]["application/json"]["schema"]
            if path != "/readyz":
                assert schema == {"$ref": "#/components/schemas/OperationOutcome"}, (path, code)


def test_the_live_answers_of_each_declared_error_match_it(secured_app, app):
    """A 401 (with WWW-Authenticate), 404, 415 and 413 as sent, checked here explicitly (the recorder checks
    them again after the test)."""
    checker = DocumentChecker(secured_app.test_client().get("/openapi.json").get_json())
    unauthorized = secured_app.test_client().post(SERVICE_URL, json={})
    assert unauthorized.status_code == 401 and unauthorized.headers["WWW-Authenticate"] == "Bearer"
    client = app.test_client()
    answers = [
        unauthorized,
        client.post("/cds-services/no-such-service", json={}),
        client.post(SERVICE_URL, data="x", content_type="text/plain"),
        client.post(SERVICE_URL, data=b"{" * (app.config["MAX_CONTENT_LENGTH"] + 1), content_type="application/json"),
    ]
    assert [a.status_code for a in answers] == [401, 404, 415, 413]
    for answer in answers:
        exchange = Exchange("POST", answer.request.path, answer.status_code, answer.mimetype, answer.get_data())
        assert checker.problem(exchange) is None
    # and the recorder saw them all (the document fetches above are its own kind of request too)
    assert {(e.path, e.status) for e in recorded()} >= {(a.request.path, a.status_code) for a in answers}


# ---- the checker -----------------------------------------------------------------------------------


def test_the_checker_names_the_request_and_the_problem(doc):
    checker = DocumentChecker(doc)
    good = Exchange("GET", "/healthz", 200, "application/json", b'{"status": "ok"}')
    assert checker.problem(good) is None
    cases = {
        Exchange("GET", "/healthz", 200, "application/json", b'{"status": "sick"}'): "GET /healthz -> 200",
        Exchange("GET", "/healthz", 418, "application/json", b"{}"): "status 418 is not documented for GET /healthz",
        Exchange("GET", "/healthz", 200, "text/html", b"<p>"): "content type not documented",
        Exchange("GET", "/nowhere", 200, "application/json", b"{}"): "the path is not in the document",
        Exchange("DELETE", "/healthz", 200, "application/json", b"{}"): "must be 405",
        Exchange("POST", SERVICE_URL, 200, "application/json", b'{"cards": [{"uuid": "x"}]}'): "'summary' is a required property",
        Exchange("POST", SERVICE_URL, 412, "application/json", b'{"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "incomplete"}]}'): "'diagnostics' is a required property",
    }
    for exchange, expected in cases.items():
        problem = checker.problem(exchange)
        assert problem is not None and expected in problem and str(exchange) in problem, (exchange, problem)


def test_the_checker_accepts_what_the_document_cannot_describe_only_in_its_documented_form(doc):
    checker = DocumentChecker(doc)
    error = json.dumps(
        {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found", "diagnostics": "not found"}]}
    ).encode()
    assert checker.problem(Exchange("GET", "/nowhere", 404, "application/json", error)) is None
    assert checker.problem(Exchange("OPTIONS", SERVICE_URL, 200, "text/html", b"")) is None
    assert checker.problem(Exchange("HEAD", "/healthz", 200, "application/json", b"")) is None
    assert checker.problem(Exchange("GET", SERVICE_URL, 405, "application/json", b"{}")) is not None  # not an error body


# ---- the recorder fails a run ---------------------------------------------------------------------

_INNER_TEST = """
from cds.config import load_settings
from cds.http import create_app


def _app():
    return create_app(load_settings({}, development=True, rules_dir=RULES, rules_poll_seconds=0, database_url=""))


def test_documented():
    assert _app().test_client().get("/healthz").status_code == 200


def test_wrong_body():
    app = _app()
    app.view_functions["ops.healthz"] = lambda: {"status": "sick"}
    assert app.test_client().get("/healthz").status_code == 200


def test_undocumented_status():
    app = _app()
    app.view_functions["ops.healthz"] = lambda: ({"status": "ok"}, 418)
    assert app.test_client().get("/healthz").status_code == 418


def test_real_server():
    import threading, urllib.request
    from werkzeug.serving import make_server

    app = _app()
    app.view_functions["ops.readyz"] = lambda: ({"status": "ready"}, 200)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/readyz") as answer:
            assert answer.status == 200
    finally:
        server.shutdown()
"""


def test_the_recorder_fails_a_test_whose_response_the_document_does_not_describe(tmp_path):
    (tmp_path / "conftest.py").write_text(
        f"import sys\nsys.path.insert(0, {str(TESTS)!r})\n"
        "from openapi_recorder import _openapi_checked, _openapi_recorder, pytest_terminal_summary  # noqa\n"
    )
    (tmp_path / "test_inner.py").write_text(f"RULES = {str(RULES_DIR)!r}\n" + textwrap.dedent(_INNER_TEST))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS.parent), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "4 passed, 3 errors" in out, out  # the three failing tests error at teardown, naming the request
    assert "GET /healthz -> 200 application/json: the body does not match the schema of 200 for GET /healthz" in out
    assert "at status: 'ok' was expected" in out, out
    assert "GET /healthz -> 418 application/json: status 418 is not documented for GET /healthz" in out
    assert "GET /readyz -> 200 application/json: the body does not match" in out and "'checks' is a required property" in out
    assert "openapi: 4 live responses checked" in out
