"""Shared fixtures: test settings, the Flask app and client, the rule set and the FHIR examples.

Test settings: the frozen fixture rule set ``tests/fixtures/rules/``, no rule-file watching (``rules_poll_seconds=0``), the
fixed evaluation date of ``fhir_examples/config.json``, authentication off, and no database (so no
test writes into the working tree). The process environment is ignored so a developer's ``CDS_*``
variables cannot change what the tests see.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import shutil
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

# the recorder: every live response of a cds app is checked against the OpenAPI document that app serves
from openapi_recorder import _openapi_checked, _openapi_recorder, pytest_terminal_summary  # noqa: F401
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
#: the frozen fixture rule set the Python tests run on (never the shipped ``rules/``, so a rule author's
#: valid edit of ``rules/`` cannot break a Python test); ``rules/tests/`` tests the shipped content
RULES_DIR = ROOT / "tests" / "fixtures" / "rules"
EXAMPLES_DIR = ROOT / "fhir_examples"
#: the example hook requests; the files live in ``rules/tests/requests`` (``fhir_examples/requests`` links
#: there). What the shipped rules answer to them is tested only by ``rules/tests``; the Python tests use
#: them as realistic input, evaluated with the fixture rule set
REQUESTS_DIR = EXAMPLES_DIR / "requests"
EVALUATION_DATE = dt.date.fromisoformat(json.loads((EXAMPLES_DIR / "config.json").read_text())["evaluationDate"])
SERVICE_URL = "/cds-services/lbp-exercise-progression"
#: a PostgreSQL database for the storage tests (``.ci/run`` starts one); unset: SQLite only
PG_URL = os.environ.get("CDS_TEST_DATABASE_URL")


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request, tmp_path):
    """URL of an empty database, not migrated: a SQLite file in a directory that does not exist yet, or a
    fresh PostgreSQL schema of ``CDS_TEST_DATABASE_URL`` (dropped afterwards; skipped when unset)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'cds.sqlite3'}"
        return
    if not PG_URL:
        pytest.skip("CDS_TEST_DATABASE_URL not set")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def load_script(path: Path, name: str) -> ModuleType:
    """A script outside the package (``bench/``, ``fhir_examples/``) imported as module ``name``, once."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "slow: a long test (e.g. the clone experiment re-runs the suite); runs by "
                                       "default, skip with -m 'not slow'")


def with_directory(url: str) -> str:
    """``url``, with the folder of a SQLite file created (the store itself never creates folders)."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return url


def example_requests() -> list[tuple[str, dict[str, Any]]]:
    """Every ``(scenario, request)`` of ``fhir_examples/requests``, sorted by scenario.

    There is no expected outcome here on purpose: each scenario's cards are written once, in
    ``rules/tests/examples.yaml``, and checked against the shipped rules by ``cds rules test rules``."""
    return [(path.stem, json.loads(path.read_text())) for path in sorted(REQUESTS_DIR.glob("*.json"))]


def example_pairs() -> list[tuple[str, dict[str, Any], None]]:
    """``(scenario, request, None)``: :func:`example_requests` in the older three-item shape (no expectations)."""
    return [(name, request, None) for name, request in example_requests()]


EXAMPLE_NAMES = [name for name, _ in example_requests()]


def make_settings(**overrides: Any):
    """Settings for tests (see the module docstring); ``overrides`` win."""
    from cds.config import load_settings

    values: dict[str, Any] = {
        "rules_dir": RULES_DIR,
        "rules_poll_seconds": 0,
        "evaluation_date": EVALUATION_DATE,
        "auth": False,
        "database_url": "",
    }
    values.update(overrides)
    return load_settings({}, development=True, **values)


def error_issue(body_or_response: Any) -> dict[str, Any]:
    """The single issue of an error body, checked to be a FHIR OperationOutcome (``cds.http.errors``).

    Takes the decoded body or a response (Flask test response or httpx response)."""
    body = body_or_response
    if hasattr(body, "get_json"):
        body = body.get_json()
    elif hasattr(body, "json") and callable(body.json):
        body = body.json()
    assert isinstance(body, dict) and set(body) == {"resourceType", "issue"}, body
    assert body["resourceType"] == "OperationOutcome", body
    assert isinstance(body["issue"], list) and len(body["issue"]) == 1, body
    issue = body["issue"][0]
    assert issue["severity"] == "error", issue
    assert isinstance(issue["code"], str) and issue["code"], issue
    assert isinstance(issue["diagnostics"], str) and issue["diagnostics"], issue
    return issue


def error_message(body_or_response: Any) -> str:
    """What an error body says is wrong: its OperationOutcome issue's ``diagnostics``."""
    return error_issue(body_or_response)["diagnostics"]


def error_expression(body_or_response: Any) -> list[str] | None:
    """The field path(s) an error body names: its OperationOutcome issue's ``expression`` (None if absent)."""
    return error_issue(body_or_response).get("expression")


#: the whole body of every 401 (no detail on why)
UNAUTHORIZED_BODY = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "security", "diagnostics": "unauthorized"}],
}


@pytest.fixture(scope="session")
def evaluation_date() -> dt.date:
    return EVALUATION_DATE


@pytest.fixture(scope="session")
def settings():
    return make_settings()


def _checking_client_class():
    """A Flask test client that checks every card it receives against the CDS Hooks 2.0 card rules.

    Any 200 answer to ``POST /cds-services/<id>`` goes through ``assert_conformant_response``, so no
    test can receive a card that is not checked.
    """
    from cdshooks_conformance import assert_conformant_response
    from flask.testing import FlaskClient

    class ConformanceCheckingClient(FlaskClient):
        def open(self, *args: Any, **kwargs: Any):
            response = super().open(*args, **kwargs)
            request = response.request
            if (
                request.method == "POST"
                and request.path.startswith("/cds-services/")
                and not request.path.endswith("/feedback")
                and response.status_code == 200
            ):
                assert_conformant_response(response.get_json())
            return response

    return ConformanceCheckingClient


def build_app(*, rules=None, clock=None, **overrides: Any):
    """A fresh app with test settings (``overrides`` win) whose test client checks every card."""
    from cds.http import create_app

    app = create_app(make_settings(**overrides), rules=rules, clock=clock)
    app.test_client_class = _checking_client_class()
    return app


@pytest.fixture(scope="session")
def make_app() -> Callable[..., Any]:
    """``make_app(**settings_overrides, rules=None, clock=None)``: a fresh app with test settings."""
    return build_app


@pytest.fixture(scope="session")
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def ruleset():
    from cds.ruleset.loader import load_ruleset

    return load_ruleset(RULES_DIR)


@pytest.fixture
def rules_copy(tmp_path: Path) -> Path:
    """A writable copy of ``rules/`` (without its test cases) to edit in a test."""
    target = tmp_path / "rules"
    shutil.copytree(RULES_DIR, target, ignore=shutil.ignore_patterns("tests", "__pycache__"))
    return target


def edit_rule_file(folder: Path, file: str, old: str, new: str) -> None:
    """Replace ``old`` (which must occur exactly once) by ``new`` in the rule file ``folder/file``."""
    path = folder / file
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} must occur exactly once in {file}"
    path.write_text(text.replace(old, new))


def rule_problems(folder: Path) -> list[str]:
    """What ``cds rules check`` reports for ``folder`` (errors), each without the folder prefix."""
    from cds.ruleset.loader import check_ruleset

    return [str(p).removeprefix(f"{folder}/") for p in check_ruleset(folder)]


@pytest.fixture(scope="session")
def examples() -> list[dict[str, Any]]:
    """Every fhir_examples request."""
    return [request for _, request in example_requests()]
