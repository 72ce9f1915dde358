"""The CDS Hooks endpoints: discovery and the services the rule files declare (SPEC §3).

Each service id is looked up in the current rule set (``services``); its hook decides the flow:
``patient-view`` (:func:`cds.service.evaluate`) or ``order-sign`` (:func:`cds.order_check.evaluate_orders`).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Blueprint, current_app, jsonify, request
from pydantic import ValidationError

from .. import order_check, service
from ..cdshooks import (
    CdsResponse,
    Discovery,
    OrderSignRequest,
    PatientViewRequest,
    to_json,
    validation_message,
)
from ..engine import EngineError
from ..extract import PrefetchShapeError, PrefetchTooLarge
from ..feedback import FeedbackAck, FeedbackError, parse_feedback
from ..fhir_client import PrefetchUnavailable, complete_prefetch
from ..storage import StoreUnavailable
from .ehr import check_fhir_server, note_ignored_feedback_fields, shape_for_ehr
from .errors import ApiError

log = logging.getLogger("cds.http")

bp = Blueprint("cds_hooks", __name__)


def _state():
    return current_app.extensions["lbp_cds"]


class _NonStandardJson(ValueError):
    """NaN, Infinity and -Infinity: accepted by Python's json module, not JSON (RFC 8259)."""


def _reject_constant(name: str) -> Any:
    raise _NonStandardJson(name)


def json_body() -> dict[str, Any]:
    """The request body as a JSON object, or a 4xx naming what is wrong with it."""
    if not request.is_json:
        raise ApiError(415, "unsupported media type: send Content-Type: application/json")
    raw = request.get_data(cache=True)
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if limit is not None and request.content_length is None and len(raw) >= limit:
        # A streamed (chunked) body is cut at the limit by werkzeug without an error: refuse it here.
        raise ApiError(413, "request body too large")
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply") from None
    except _NonStandardJson:
        raise ApiError(400, "request body is not valid JSON: NaN and Infinity are not JSON numbers") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON: {getattr(e, 'msg', 'cannot decode')}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


@bp.get("/cds-services")
def discovery():
    active = _state().rules.current()
    return jsonify(to_json(Discovery(services=service.describe_all(active.ruleset))))


def _known_service(service_id: str, active=None):
    """The declared service, or 404 for a service id we do not offer (checked after authentication)."""
    active = active or _state().rules.current()
    svc = service.find_service(active.ruleset, service_id)
    if svc is None:
        raise ApiError(404, f"unknown service '{service_id}'")
    return svc


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str):
    state = _state()
    active = state.rules.current()  # one rule-set version for the whole request
    svc = _known_service(service_id, active)
    body = json_body()
    if isinstance(body.get("hook"), str) and body["hook"] != svc.hook:
        raise ApiError(400, f"hook: service '{service_id}' answers '{svc.hook}', not the hook sent")
    model = OrderSignRequest if svc.hook == service.ORDER_SIGN_HOOK else PatientViewRequest
    try:
        hook_request: PatientViewRequest | OrderSignRequest = model.model_validate(body)
    except ValidationError as e:
        raise ApiError(400, validation_message(e)) from None
    check_fhir_server(hook_request.fhir_server)  # the calling EHR's allow-list: 412 before any fetch
    patient_id = hook_request.context.patient_id
    templates = service.prefetch_templates(active.ruleset)
    try:
        prefetch = complete_prefetch(
            templates=templates,
            prefetch=hook_request.prefetch,
            context=body["context"],
            patient_id=patient_id,
            fhir_server=hook_request.fhir_server,
            access_token=hook_request.fhir_authorization.access_token if hook_request.fhir_authorization else None,
            settings=state.fetch_settings,
        )
        user_id = hook_request.context.user_id
        outcome: service.Outcome | order_check.OrderOutcome
        if isinstance(hook_request, OrderSignRequest):
            outcome = order_check.evaluate_orders(
                active, prefetch, hook_request.context.draft_orders, patient_id=patient_id, clock=state.clock,
                user_id=user_id, stages=svc.stages, max_entries_per_key=state.fetch_settings.max_entries,
            )
        else:
            outcome = service.evaluate(active, prefetch, patient_id=patient_id, clock=state.clock, user_id=user_id,
                                       stages=svc.stages, max_entries_per_key=state.fetch_settings.max_entries,
                                       public_base_url=state.settings.public_base_url)
    except PrefetchUnavailable as e:  # from the fetch, or a key evaluate still misses
        state.observe_fetch_error(e.key)
        raise ApiError(412, str(e), **({"key": e.key} if e.key else {})) from None
    except PrefetchShapeError as e:
        if isinstance(e, PrefetchTooLarge):
            raise ApiError(413, str(e), field=f"prefetch.{e.key}") from None
        raise ApiError(400, str(e)) from None
    except EngineError:
        log.exception("rule engine failed")
        raise ApiError(500, "the rule engine could not evaluate this request") from None
    state.after_evaluation(hook_request, service_id, outcome)
    return jsonify(to_json(shape_for_ehr(CdsResponse(cards=outcome.cards))))  # the calling EHR's profile


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str):
    _known_service(service_id)
    body = json_body()
    try:
        parsed = parse_feedback(body)
    except FeedbackError as e:
        raise ApiError(400, str(e), field=e.field) from None
    note_ignored_feedback_fields(parsed.ignored_fields)  # liberal: unknown fields counted, never a 400
    state = _state()
    if state.store is None:
        raise ApiError(503, "feedback storage is not configured")
    try:
        stored = state.store.record_feedback(service_id, parsed.feedback)
    except StoreUnavailable:
        log.error("feedback not stored: database unavailable")
        raise ApiError(503, "feedback could not be stored right now; retry later") from None
    for item in parsed.feedback:
        state.metrics.feedback.labels(item.outcome).inc()
    return jsonify(FeedbackAck(received=len(parsed.feedback), stored=stored).model_dump(mode="json"))

