"""``GET /openapi.json``: an OpenAPI 3.1 document of this service's own endpoints (unauthenticated).

Request and response bodies are described with JSON Schemas generated from the pydantic models that
validate and serialise them (:mod:`cds.cdshooks`, :mod:`cds.feedback`), so the document cannot drift
from what the service accepts. The prefetch schema is written by hand: the models accept any JSON there
and leave the FHIR shape to :mod:`cds.extract`. Every error is ``{"error": {"status", "message", ...}}``.

The document is built once per app, from that app's settings: ``servers`` is the configured public base
URL, and the bearer-JWT security requirement is declared only when authentication is on.
"""

from __future__ import annotations

import copy
from typing import Any

from flask import Blueprint, current_app, jsonify
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .. import service
from ..cdshooks import CdsResponse, Discovery, PatientViewRequest
from ..feedback import FeedbackRequest
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

bp = Blueprint("openapi", __name__)

OPENAPI_VERSION = "3.1.0"
_REF = "#/components/schemas/"


def _schemas(models: list[type[BaseModel]], mode: str, prefix: str = "") -> dict[str, Any]:
    """Component schemas of ``models`` (and everything they use), names prefixed to avoid collisions."""

    def name(model: str) -> str:
        return model if not prefix or model.startswith(prefix) else prefix + model

    ref_template = _REF + prefix + "{model}"
    _, top = models_json_schema([(m, mode) for m in models], by_alias=True, ref_template=ref_template)  # type: ignore[misc]
    defs = top.get("$defs", {})
    out = {name(k): v for k, v in defs.items()}
    # A prefixed ref of a name that already started with the prefix must point at the unprefixed key.
    return _fix_refs(out, prefix) if prefix else out


def _fix_refs(node: Any, prefix: str) -> Any:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str) and v.startswith(_REF + prefix + prefix):
                v = _REF + v[len(_REF + prefix) :]
            out[k] = _fix_refs(v, prefix)
        return out
    if isinstance(node, list):
        return [_fix_refs(v, prefix) for v in node]
    return node


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _fhir_schemas() -> dict[str, Any]:
    resource = {
        "type": "object",
        "description": "A FHIR R4 resource (validated by the service; an invalid one inside a Bundle is skipped).",
        "required": ["resourceType"],
        "properties": {"resourceType": {"type": "string", "pattern": "^[A-Z][A-Za-z]{0,63}$"}},
        "additionalProperties": True,
    }
    bundle = {
        "type": "object",
        "description": "A FHIR searchset Bundle; OperationOutcome entries are skipped.",
        "required": ["resourceType"],
        "properties": {
            "resourceType": {"const": "Bundle"},
            "type": {"type": "string"},
            "entry": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"fullUrl": {"type": "string"}, "resource": _ref("FhirResource")},
                    "additionalProperties": True,
                },
            },
        },
        "additionalProperties": True,
    }
    value = {
        "description": "A FHIR resource or Bundle; null means the EHR has no such data.",
        "anyOf": [_ref("FhirBundle"), _ref("FhirResource"), {"type": "null"}],
    }
    return {"FhirResource": resource, "FhirBundle": bundle, "PrefetchValue": value}


def _hook_request_schema(schemas: dict[str, Any], keys: list[str]) -> None:
    req = schemas["PatientViewRequest"]
    req["properties"]["prefetch"] = {
        "type": "object",
        "description": "Prefetched data by template key. An absent key is fetched from fhirServer.",
        "properties": {k: _ref("PrefetchValue") for k in keys},
        "additionalProperties": _ref("PrefetchValue"),
    }
    req["properties"]["hook"] = {"type": "string", "const": service.HOOK}
    req["properties"]["fhirServer"] = {
        "type": "string",
        "format": "uri",
        "pattern": "^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?$",
        "description": "Base URL of the EHR's FHIR server; required with fhirAuthorization.",
    }
    req["dependentRequired"] = {"fhirAuthorization": ["fhirServer"]}


def _feedback_schema(schemas: dict[str, Any]) -> None:
    schemas["FeedbackItem"]["properties"]["card"] = {"type": "string", "format": "uuid"}
    schemas["FeedbackAcceptedSuggestion"]["properties"]["id"] = {"type": "string", "format": "uuid"}
    schemas["FeedbackRequest"]["properties"]["feedback"]["minItems"] = 1


def _error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["status", "message"],
                "properties": {
                    "status": {"type": "integer"},
                    "message": {"type": "string"},
                    "field": {"type": "string"},
                    "key": {"type": "string"},
                },
                "additionalProperties": True,
            }
        },
        "additionalProperties": False,
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Malformed JSON, a missing or wrongly typed field (the message names it), or a wrong hook.",
        401: "Missing or invalid bearer JWT (no detail is given).",
        404: "Unknown path or service.",
        405: "Method not allowed.",
        412: "Required prefetch data was neither sent nor fetchable from fhirServer.",
        413: "Request body too large.",
        415: "Content-Type is not application/json.",
        503: "Storage unavailable or not configured.",
    }
    return {str(c): _json(_ref("Error"), text[c]) for c in codes}


def build_document(settings: Any, prefetch_keys: list[str]) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    schemas.update(_schemas([PatientViewRequest], "validation"))
    schemas.update(_schemas([CdsResponse, Discovery], "serialization"))
    schemas.update(_schemas([FeedbackRequest], "validation", prefix="Feedback"))
    schemas.update(_fhir_schemas())
    schemas["Error"] = _error_schema()
    schemas["FeedbackResponse"] = {
        "type": "object",
        "required": ["received", "stored"],
        "properties": {"received": {"type": "integer", "minimum": 1}, "stored": {"type": "integer", "minimum": 0}},
        "additionalProperties": False,
    }
    _hook_request_schema(schemas, prefetch_keys)
    _feedback_schema(schemas)

    auth = bool(getattr(settings, "auth", True))
    secured: dict[str, Any] = {"security": [{"ehrJwt": []}]} if auth else {}
    auth_errors = (401,) if auth else ()
    service_path = f"/cds-services/{service.SERVICE_ID}"

    paths: dict[str, Any] = {
        "/cds-services": {
            "get": {
                "operationId": "discovery",
                "summary": "CDS Hooks discovery",
                **secured,
                "responses": {"200": _json(_ref("Discovery"), "The services this CDS service offers."), **_errors(*auth_errors)},
            }
        },
        service_path: {
            "post": {
                "operationId": "callService",
                "summary": f"Call the {service.HOOK} service",
                **secured,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": _ref("PatientViewRequest"),
                            "example": {
                                "hook": service.HOOK,
                                "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
                                "context": {"userId": "Practitioner/example", "patientId": "example"},
                                "prefetch": {key: None for key in prefetch_keys},
                            },
                        }
                    },
                },
                "responses": {
                    "200": _json(_ref("CdsResponse"), "Cards ({\"cards\": []} when there is nothing to say)."),
                    **_errors(400, *auth_errors, 412, 413, 415),
                },
            }
        },
        service_path + "/feedback": {
            "post": {
                "operationId": "feedback",
                "summary": "Report what the clinician did with the cards",
                **secured,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": _ref("FeedbackRequest"),
                            "example": {
                                "feedback": [
                                    {
                                        "card": "0b5c8d4e-2f1a-4a53-9f9a-3e2b7c1d5e6f",
                                        "outcome": "overridden",
                                        "outcomeTimestamp": "2026-11-20T10:00:00Z",
                                    }
                                ]
                            },
                        }
                    },
                },
                "responses": {
                    "200": _json(_ref("FeedbackResponse"), "Feedback stored."),
                    **_errors(400, *auth_errors, 413, 415, 503),
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness",
                "responses": {
                    "200": _json(
                        {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
                        "The process is alive.",
                    )
                },
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Readiness: rule set loaded and database reachable",
                "responses": {
                    "200": _json(_ref("Readiness"), "Ready."),
                    "503": _json(_ref("Readiness"), "Not ready (database unreachable)."),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format.",
                        "content": {METRICS_CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
            }
        },
    }
    schemas["Readiness"] = {
        "type": "object",
        "required": ["status", "checks"],
        "properties": {
            "status": {"enum": ["ready", "not ready"]},
            "checks": {
                "type": "object",
                "properties": {
                    "rules": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "version": {"type": "string"},
                            "sha256": {"type": "string"},
                        },
                    },
                    "database": {"type": "boolean"},
                },
            },
        },
    }
    components: dict[str, Any] = {"schemas": schemas}
    if auth:
        components["securitySchemes"] = {
            "ehrJwt": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "CDS Hooks 2.0 client JWT signed by a trusted EHR (asymmetric alg; aud is the called URL).",
            }
        }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "lbp-cds",
            "version": _version(),
            "description": "CDS Hooks 2.0 service recommending the next step of a low-back strengthening programme.",
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


@bp.get("/openapi.json")
def openapi_document():
    state = current_app.extensions["lbp_cds"]
    cache = current_app.extensions.setdefault("lbp_cds_openapi", {})
    if "doc" not in cache:
        keys = list(service.prefetch_templates(state.rules.current().ruleset))
        cache["doc"] = build_document(state.settings, keys)
    return jsonify(copy.deepcopy(cache["doc"]))
