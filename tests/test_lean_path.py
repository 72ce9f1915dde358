"""The lean request path (issue 13 point 2): orjson behind Flask's JSON provider with the standard library
wherever orjson would differ, the JSON log formatter, pre-bound metric children, and the JWT read once."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from decimal import Decimal

import pytest
from conftest import SERVICE_URL, build_app, error_message, example_requests
from flask.json.provider import DefaultJSONProvider
from prometheus_client.parser import text_string_to_metric_families

from cds.auth import _json_segment
from cds.http.json_provider import OrjsonProvider, loads_request
from cds.logs import JsonFormatter
from cds.metrics import MAX_BOUND_CHILDREN, Metrics

TYPICAL = dict(example_requests())["bird-dog-28-27"]


@pytest.fixture(scope="module")
def lean_app():
    return build_app()


# --- the JSON provider -----------------------------------------------------------------------------


def _std(app, obj) -> str:
    std = DefaultJSONProvider(app)
    std.sort_keys = False
    return std.dumps(obj)


@pytest.mark.parametrize("value", [
    {"summary": "Übung: Vogel-Hund ✓", "n": [1, 2.5, True, None], "z": {"b": 1, "a": 2}},
    {"big": 2**70, "small": -(2**70)},  # beyond 64 bits: orjson refuses, the standard library writes them
    {"lone": "\ud800 surrogate"},  # orjson refuses a lone surrogate; the standard library escapes it
    {"when": dt.datetime(2026, 12, 4, 3, 0, tzinfo=dt.timezone.utc), "day": dt.date(2026, 12, 4)},
    {"amount": Decimal("1.10")},
    {3: "int key"},
])
def test_provider_writes_the_same_json_as_the_default_provider(lean_app, value):
    provider = lean_app.json
    assert isinstance(provider, OrjsonProvider)
    with lean_app.app_context():
        response = provider.response(value)
    assert response.mimetype == "application/json"
    assert json.loads(response.get_data()) == json.loads(_std(lean_app, value))
    assert json.loads(provider.dumps(value)) == json.loads(_std(lean_app, value))


def test_provider_keeps_insertion_order_and_writes_utf8(lean_app):
    with lean_app.app_context():
        body = lean_app.json.response({"z": "é", "a": 1}).get_data()
    assert body == '{"z":"é","a":1}'.encode()


def test_provider_never_writes_nan(lean_app):
    with lean_app.app_context():
        body = lean_app.json.response({"x": math.nan}).get_data()
    assert b"NaN" not in body and json.loads(body) == {"x": None}


@pytest.mark.parametrize("raw", [
    b'{"n": 12345678901234567890123}',  # orjson would read a float
    b'{"a": 1, "a": 2}',
    "\ufeff{\"bom\": true}".encode(),
    b'{"u": "\\ud800"}',
    b'{"x": 0.1, "y": -0, "e": 1e400}',
    '{"t": "caf\u00e9"}'.encode("utf-16"),
])
def test_request_bodies_parse_as_the_standard_library_parses_them(raw):
    def reject(name):
        raise ValueError(name)

    assert loads_request(raw, parse_constant=reject) == json.loads(raw, parse_constant=reject)
    if raw.startswith(b'{"n"'):
        assert isinstance(loads_request(raw, parse_constant=reject)["n"], int)


def test_nan_in_a_request_body_is_still_a_400_naming_it(lean_app):
    body = json.dumps(TYPICAL).replace('"hookInstance"', '"x": NaN, "hookInstance"', 1)
    response = lean_app.test_client().post(SERVICE_URL, data=body, content_type="application/json")
    assert response.status_code == 400
    assert "NaN and Infinity are not JSON numbers" in error_message(response)


def test_a_hook_call_answers_the_cards_as_utf8_json(lean_app):
    response = lean_app.test_client().post(SERVICE_URL, json=TYPICAL)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    cards = json.loads(response.get_data())["cards"]
    assert cards and all(c["summary"] and c["uuid"] for c in cards)
    assert b"\\u" not in response.get_data()  # written once, by orjson (the standard library escapes)


# --- logs ------------------------------------------------------------------------------------------


def _record(msg: str, **extra) -> logging.LogRecord:
    record = logging.LogRecord("cds.http", logging.INFO, __file__, 1, msg, (), None)
    for k, v in extra.items():
        setattr(record, k, v)
    return record


def test_log_line_time_is_iso_utc_milliseconds():
    record = _record("hello")
    line = json.loads(JsonFormatter().format(record))
    expected = dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds")
    assert line["time"] == expected
    later = _record("later")
    later.created = record.created + 1.5
    assert json.loads(JsonFormatter().format(later))["time"] == dt.datetime.fromtimestamp(
        later.created, dt.timezone.utc).isoformat(timespec="milliseconds")


def test_log_line_keeps_only_allowed_extras_and_survives_what_orjson_refuses():
    line = json.loads(JsonFormatter().format(_record("x \ud800", status=200, token="secret", key=2**70)))
    assert line["status"] == 200 and line["key"] == 2**70 and "token" not in line
    assert line["message"] == "x \ud800"


# --- metrics ---------------------------------------------------------------------------------------


def _samples(metrics: Metrics, name: str) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_observe_request_counts_through_bound_children():
    metrics = Metrics()
    for _ in range(3):
        metrics.observe_request("/cds-services/<service_id>", "svc", 200, 0.002)
    metrics.observe_request("/cds-services/<service_id>", "svc", 400, 0.001)
    counts = _samples(metrics, "cds_requests_total")
    key = lambda status: (("endpoint", "/cds-services/<service_id>"), ("service", "svc"), ("status", status))  # noqa: E731
    assert counts[key("200")] == 3 and counts[key("400")] == 1
    assert _samples(metrics, "cds_request_seconds_count")[(("endpoint", "/cds-services/<service_id>"),)] == 4


def test_bound_children_are_capped_and_past_the_cap_still_counted():
    metrics = Metrics()
    for i in range(MAX_BOUND_CHILDREN + 5):
        metrics.observe_request("/x", f"s{i}", 404, 0.0)
    metrics.observe_request("/x", f"s{MAX_BOUND_CHILDREN + 1}", 404, 0.0)
    assert len(metrics._request_children) == MAX_BOUND_CHILDREN
    counts = _samples(metrics, "cds_requests_total")
    assert counts[(("endpoint", "/x"), ("service", f"s{MAX_BOUND_CHILDREN + 1}"), ("status", "404"))] == 2


def test_hook_calls_count_decisions_and_requests(lean_app):
    client = lean_app.test_client()
    for _ in range(2):
        assert client.post(SERVICE_URL, json=TYPICAL).status_code == 200
    metrics = lean_app.extensions["lbp_cds"].metrics
    decisions = _samples(metrics, "cds_decisions_total")
    assert decisions and all(v >= 2 for v in decisions.values())


# --- the JWT read once -----------------------------------------------------------------------------


@pytest.mark.parametrize("segment, expected", [
    ("eyJhbGciOiJFUzI1NiJ9", {"alg": "ES256"}),
    ("eyJhbGciOiJFUzI1NiJ9" + "A", None),  # a length no base64 has
    ("WzEsMl0", None),  # [1,2]: JSON, not an object
    ("bm90IGpzb24", None),  # "not json"
    ("", None),
])
def test_jws_segments_are_read_as_pyjwt_reads_them(segment, expected):
    assert _json_segment(segment) == expected
