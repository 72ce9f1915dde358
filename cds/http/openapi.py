"""``GET /openapi.json``: an OpenAPI 3.1 document of this service's own endpoints (unauthenticated).

Every body schema is generated from the pydantic model that validates (requests) or builds (responses)
that body -- :data:`REQUEST_MODELS` and :data:`RESPONSE_MODELS` -- with pydantic's
:func:`~pydantic.json_schema.models_json_schema`; nothing here describes a field by hand. What is written
here is the skeleton only: the paths, their operation ids, and which model answers which status.

Requests are described in pydantic's "validation" mode (what the service accepts), responses in its
"serialization" mode, in the form the wire carries them: :func:`cds.cdshooks.to_json` (and the
``exclude_none`` dumps of the other bodies) omit an optional field that has no value instead of sending
``null``, so :class:`WireJsonSchema` does not declare response fields nullable.

The document is built once per app, from that app's settings: ``servers`` is the configured public base
URL; the ``bearer`` security scheme is always declared, and required (with its 401 answer) by the CDS
Hooks operations only when authentication is on.
"""

from __future__ import annotations

import copy
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, JsonSchemaValue, models_json_schema
from pydantic_core import core_schema

from .. import service
from ..cdshooks import HOOK_REQUEST_MODELS, CdsResponse, Discovery
from ..feedback import FeedbackAck, FeedbackRequest
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .errors import ErrorResponse
from .ops import Health, Readiness

bp = Blueprint("openapi", __name__)

OPENAPI_VERSION = "3.1.0"
REF_TEMPLATE = "#/components/schemas/{model}"
#: the name of the security scheme (``components.securitySchemes``) the CDS Hooks operations require
SECURITY_SCHEME = "bearer"

#: request bodies, described as the service validates them
REQUEST_MODELS: tuple[type[BaseModel], ...] = (*HOOK_REQUEST_MODELS, FeedbackRequest)
#: response bodies, described as the service serialises them
RESPONSE_MODELS: tuple[type[BaseModel], ...] = (Discovery, CdsResponse, FeedbackAck, ErrorResponse, Health, Readiness)


class WireJsonSchema(GenerateJsonSchema):
    """pydantic's JSON Schema, except that in "serialization" mode an optional field is not nullable.

    Every response body is dumped without ``None`` values (:func:`cds.cdshooks.to_json` drops ``""``,
    ``[]`` and ``{}`` too), so on the wire such a field is absent, never ``null``: its schema is the
    schema of its value, and its ``"default": null`` annotation is dropped with the null.
    """

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        if self.mode == "serialization":
            return self.generate_inner(schema["schema"])
        return super().nullable_schema(schema)

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        out = super().default_schema(schema)
        if self.mode == "serialization" and "default" in out and out["default"] is None:
            del out["default"]
        return out


def component_schemas() -> tuple[dict[str, Any], dict[type[BaseModel], dict[str, str]]]:
    """``components.schemas`` of every request and response model, and the ``$ref`` of each model.

    A model used in both directions whose two schemas differ gets pydantic's ``-Input``/``-Output``
    names; the ``$ref`` map always names the right one.
    """
    inputs: list[tuple[type[BaseModel], JsonSchemaMode]] = [(m, "validation") for m in REQUEST_MODELS]
    inputs += [(m, "serialization") for m in RESPONSE_MODELS]
    refs, top = models_json_schema(inputs, by_alias=True, ref_template=REF_TEMPLATE, schema_generator=WireJsonSchema)
    return top.get("$defs", {}), {model: dict(refs[(model, mode)]) for model, mode in inputs}


def _json(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}, **extra}


#: what each error status means; the body is always a FHIR OperationOutcome (:class:`~cds.http.errors.OperationOutcome`)
_ERROR_TEXT = {
    400: "Malformed JSON, a missing or wrongly typed field (the issue's diagnostics and expression name it), or a wrong hook.",
    401: "Missing or invalid bearer JWT (no detail is given).",
    404: "Unknown service.",
    405: "Method not allowed.",
    412: (
        "Required prefetch data was neither sent nor fetchable from fhirServer (the issue's expression names it: "
        "`prefetch.<key>`), or fhirServer is not on the calling EHR's allow-list (expression `fhirServer`)."
    ),
    413: "Request body too large.",
    415: "Content-Type is not application/json.",
    500: "The service could not evaluate the request (a fault of the service, never of the request).",
    503: (
        "Storage unavailable or not configured, or the bearer JWT cannot be checked right now (the replay store "
        "is down, or full for the calling issuer); retry later."
    ),
}


def build_document(settings: Any, service_ids: list[str]) -> dict[str, Any]:
    """The OpenAPI document of an app with ``settings`` that offers the services ``service_ids``."""
    schemas, ref = component_schemas()
    auth = bool(getattr(settings, "auth", True))
    secured: dict[str, Any] = {"security": [{SECURITY_SCHEME: []}]} if auth else {}
    request_id: dict[str, Any] = {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}}

    def ok(model: type[BaseModel], description: str) -> dict[str, Any]:
        return _json(ref[model], description, headers=request_id)

    def errors(*codes: int) -> dict[str, Any]:
        out = {}
        if auth and 401 in codes and 503 not in codes:
            codes = (*codes, 503)  # the bearer JWT could not be checked (replay store down or full)
        for code in codes:
            if code == 401 and not auth:
                continue
            headers = dict(request_id)
            if code == 401:
                headers["WWW-Authenticate"] = {
                    "description": "The authentication scheme to use: `Bearer`.",
                    "schema": {"type": "string", "const": "Bearer"},
                }
            out[str(code)] = _json(ref[ErrorResponse], _ERROR_TEXT[code], headers=headers)
        return out

    def body(schema: dict[str, Any]) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": schema}}}

    service_id = {
        "name": "service_id",
        "in": "path",
        "required": True,
        "description": "The id of a service listed by discovery.",
        "schema": {"type": "string", "enum": list(service_ids)},
    }
    hook_request = {"anyOf": [ref[m] for m in HOOK_REQUEST_MODELS]}

    paths: dict[str, Any] = {
        "/cds-services": {
            "get": {
                "operationId": "discovery",
                "summary": "CDS Hooks discovery",
                **secured,
                "responses": {"200": ok(Discovery, "The services this CDS service offers."), **errors(401, 500)},
            }
        },
        "/cds-services/{service_id}": {
            "parameters": [service_id],
            "post": {
                "operationId": "callService",
                "summary": "Call a service (the hook request must be the service's hook)",
                **secured,
                "requestBody": body(hook_request),
                "responses": {
                    "200": ok(CdsResponse, 'Cards ({"cards": []} when there is nothing to say).'),
                    **errors(400, 401, 404, 412, 413, 415, 500),
                },
            },
        },
        "/cds-services/{service_id}/feedback": {
            "parameters": [service_id],
            "post": {
                "operationId": "feedback",
                "summary": "Report what the clinician did with the cards",
                **secured,
                "requestBody": body(ref[FeedbackRequest]),
                "responses": {"200": ok(FeedbackAck, "Feedback stored."), **errors(400, 401, 404, 413, 415, 500, 503)},
            },
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness",
                "responses": {"200": ok(Health, "The process is alive.")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Readiness: rule set loaded and database reachable",
                "responses": {"200": ok(Readiness, "Ready."), "503": ok(Readiness, "Not ready (database unreachable).")},
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format.",
                        "headers": request_id,
                        "content": {METRICS_CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/charts/trend.svg": {
            "get": {
                "operationId": "trendChart",
                "summary": "The session trend chart of progression cards (numbers and dates only, no identifier)",
                "parameters": [
                    {"name": name, "in": "query", "required": name in ("d", "r"), "description": text,
                     "schema": {"type": "string"}}
                    for name, text in (
                        ("d", "Session dates, YYYY-MM-DD, separated by ',' (at most 12)."),
                        ("r", "Reps per round of each session: rounds separated by '_', sessions by ','."),
                        ("g", "Rung of each session (1 = first), separated by ','."),
                        ("p", "Highest pain (0-10) of each session, '-' when not recorded, separated by ','."),
                        ("lo", "Low end of the target reps range (band)."),
                        ("hi", "High end of the target reps range (band)."),
                        ("gate", "The pain gate: highest allowed pain (band)."),
                    )
                ],
                "responses": {
                    "200": {"description": "The chart (SVG, cacheable).", "headers": request_id,
                            "content": {"image/svg+xml": {"schema": {"type": "string"}}}},
                    "400": _json(ref[ErrorResponse], "A query parameter that is unknown, repeated, malformed or out "
                                 "of bounds (the issue's expression names it).", headers=request_id),
                    "404": _json(ref[ErrorResponse], "The rule set has no trend chart (texts.trend).",
                                 headers=request_id),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "The OpenAPI document.", headers=request_id)},
            }
        },
    }
    components: dict[str, Any] = {
        "schemas": schemas,
        "headers": {
            "X-Request-Id": {
                "description": "The request id (the caller's X-Request-Id when it is a plain token, else a new one).",
                "schema": {"type": "string", "minLength": 1},
            }
        },
        "securitySchemes": {
            SECURITY_SCHEME: {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "CDS Hooks 2.0 client JWT signed by a trusted EHR (asymmetric alg; aud is the called URL).",
            }
        },
    }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "lbp-cds",
            "version": _version(),
            "description": "CDS Hooks 2.0 service recommending the next step of a low-back strengthening programme. "
            "The CDS Hooks paths answer CORS preflight (OPTIONS) requests without authentication.",
        },
        "servers": [{"url": settings.public_base_url}],
        "paths": paths,
        "components": components,
    }


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("lbp-cds")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "0"


def document(app: Flask) -> dict[str, Any]:
    """The document ``app`` serves (built on first use, then cached for the app's life)."""
    cache = app.extensions.setdefault("lbp_cds_openapi", {})
    if "doc" not in cache:
        state = app.extensions["lbp_cds"]
        ruleset = state.rules.current().ruleset
        cache["doc"] = build_document(state.settings, [service.describe(ruleset).id])
    return copy.deepcopy(cache["doc"])


@bp.get("/openapi.json")
def openapi_document():
    return jsonify(document(current_app._get_current_object()))  # type: ignore[attr-defined]
