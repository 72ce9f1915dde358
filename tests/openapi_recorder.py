"""A pytest plugin: every response a cds app gives during a test must be described by the OpenAPI document
that app serves (``GET /openapi.json``), or the test fails naming the request and the problem.

Responses are recorded from Flask's ``request_finished`` signal, so those of the test client and of real
loopback servers (``werkzeug.serving.make_server`` in a thread) are both seen; a response is kept only
when its app is a cds app. After each test, each recorded response is checked by
:class:`openapi_check.DocumentChecker` against the document of the app that gave it; each served document
is itself validated with ``openapi-spec-validator``. ``tests/conftest.py`` imports the fixtures. The SMART
app's pages (blueprint ``smart_app``, under ``/app/``) are HTML for browsers, outside the API document:
``tests/test_smart_app*.py`` check them.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

#: a request carrying this header is the recorder's own ``GET /openapi.json``: not recorded
RECORDER_HEADER = "X-Test-Openapi-Recorder"
_recorded: list[tuple[Any, Any]] = []  # (app, Exchange) of the running test, from any thread
_recorded_lock = threading.Lock()
_checkers: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_checked = {"responses": 0, "documents": 0}


def _record_response(sender: Any, response: Any, **_: Any) -> None:
    """``flask.request_finished``: keep what the response of a cds app says."""
    from flask import request
    from openapi_check import Exchange

    if "lbp_cds" not in sender.extensions or request.headers.get(RECORDER_HEADER):
        return
    if request.blueprint == "smart_app":  # the SMART app's HTML pages (/app/): a browser UI, not the API documented
        return
    body = b"" if response.is_streamed else response.get_data()
    exchange = Exchange(request.method, request.path, response.status_code, response.mimetype or "", body)
    with _recorded_lock:
        _recorded.append((sender, exchange))


def recorded() -> list[Any]:
    """The exchanges recorded so far in the running test."""
    with _recorded_lock:
        return [exchange for _, exchange in _recorded]


def _checker_for(app: Any) -> Any:
    """The checker of the document ``app`` serves (``GET /openapi.json``, itself validated once)."""
    from openapi_check import DocumentChecker, validate_document

    checker = _checkers.get(app)
    if checker is None:
        served = app.test_client().get("/openapi.json", headers={RECORDER_HEADER: "1"})
        assert served.status_code == 200, f"GET /openapi.json answered {served.status_code}"
        doc = served.get_json()
        validate_document(doc)
        checker = _checkers[app] = DocumentChecker(doc)
        _checked["documents"] += 1
    return checker


@pytest.fixture(scope="session", autouse=True)
def _openapi_recorder() -> Iterator[None]:
    """Record every response a cds app gives during the session (see :func:`_openapi_checked`)."""
    from flask import request_finished

    request_finished.connect(_record_response)
    try:
        yield
    finally:
        request_finished.disconnect(_record_response)


@pytest.fixture(autouse=True)
def _openapi_checked(_openapi_recorder: None) -> Iterator[None]:
    """After each test, every response it produced must be documented by the served OpenAPI document:
    path, method, status, content type and JSON body. A mismatch fails the test, naming each request."""
    with _recorded_lock:
        _recorded.clear()
    yield
    with _recorded_lock:
        exchanges = list(_recorded)
        _recorded.clear()
    problems = []
    for app, exchange in exchanges:
        problem = _checker_for(app).problem(exchange)
        if problem is not None:
            problems.append(problem)
    _checked["responses"] += len(exchanges)
    if problems:
        shown = "\n  ".join(dict.fromkeys(problems))
        pytest.fail(f"{len(problems)} response(s) not described by the served OpenAPI document:\n  {shown}", pytrace=False)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _checked["responses"]:
        terminalreporter.write_line(
            f"openapi: {_checked['responses']} live responses checked against {_checked['documents']} served document(s)"
        )
