"""Errors for every failure a client can cause, as FHIR R4 ``OperationOutcome`` resources.

CDS Hooks 3.0 (ballot) says services SHOULD answer errors with an OperationOutcome. Every 4xx and 5xx body
is :class:`OperationOutcome`::

    {"resourceType": "OperationOutcome",
     "issue": [{"severity": "error", "code": "invalid",
                "diagnostics": "context.patientId: Field required",
                "expression": ["context.patientId"]}]}

* ``code`` is a FHIR issue type chosen from the HTTP status (:data:`ISSUE_TYPE`: 400 ``invalid``, 401
  ``security``, 404 ``not-found``, 405/415 ``not-supported``, 412 ``incomplete``, 413 ``too-costly``, 500
  ``exception``, 503 ``transient``) unless the raiser names a more precise one;
* ``diagnostics`` is the message (it names the field and says what is wrong; a 401 says only
  ``unauthorized``);
* ``expression`` names the failing field when one is known: the ``field`` given to :class:`ApiError`
  (``feedback[0].outcome``, ``fhirServer``), ``prefetch.<key>`` for a prefetch ``key`` a 412 could not get,
  or else the field path a message starts with (``context.patientId: ...``). Omitted when none applies.

The HTTP status is unchanged and the content type stays ``application/json`` (every CDS Hooks client
reads it; an OperationOutcome is valid JSON). The same model gives the OpenAPI document its error schema
(:mod:`cds.http.openapi`).
"""

from __future__ import annotations

import logging
import re
from typing import Literal

from flask import Blueprint, Flask, jsonify
from pydantic import BaseModel, ConfigDict, Field
from werkzeug.exceptions import HTTPException

from ..errors import CdsError

log = logging.getLogger("cds.http")

#: the FHIR R4 IssueType codes this service uses (http://hl7.org/fhir/issue-type)
IssueType = Literal[
    "invalid", "structure", "required", "value", "security", "login", "forbidden", "not-supported",
    "not-found", "too-costly", "incomplete", "exception", "transient", "timeout", "processing",
]

#: HTTP status -> the default issue type of its OperationOutcome
ISSUE_TYPE: dict[int, str] = {
    400: "invalid",
    401: "security",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    412: "incomplete",
    413: "too-costly",
    415: "not-supported",
    500: "exception",
    503: "transient",
}

#: a message that starts with a field path: ``context.patientId: ...``, ``feedback[0].card: ...``
_LEADING_PATH = re.compile(r"^([A-Za-z_$][A-Za-z0-9_$\-]*(?:\[\d+\])*(?:\.[A-Za-z0-9_$\-?]+(?:\[\d+\])*)*): ")


class OutcomeIssue(BaseModel):
    """One ``OperationOutcome.issue``: what is wrong (``diagnostics``) and where (``expression``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    severity: Literal["fatal", "error", "warning", "information"]
    code: IssueType
    diagnostics: str = Field(min_length=1)
    expression: list[str] | None = Field(default=None, min_length=1)


class OperationOutcome(BaseModel):
    """The body of every 4xx and 5xx answer: a FHIR R4 OperationOutcome with one issue."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resourceType: Literal["OperationOutcome"]
    issue: list[OutcomeIssue] = Field(min_length=1)


#: the error body model (the name the OpenAPI document and older imports use)
ErrorResponse = OperationOutcome


class ApiError(CdsError):
    """A client-visible error: ``status``, the message, and optionally the ``field`` path, the prefetch
    ``key`` or a FHIR issue type ``code`` more precise than the status's default."""

    def __init__(
        self, status: int, message: str, *, field: str | None = None, key: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.key = key
        self.code = code


def expression_for(message: str, *, field: str | None = None, key: str | None = None) -> list[str] | None:
    """The ``expression`` of an error: the field, ``prefetch.<key>``, or the path the message starts with."""
    if field:
        return [field]
    if key:
        return [f"prefetch.{key}"]
    match = _LEADING_PATH.match(message)
    if match and match.group(1) != "(body)":
        return [match.group(1)]
    return None


def outcome(
    status: int, message: str, *, field: str | None = None, key: str | None = None, code: str | None = None
) -> OperationOutcome:
    issue_code = code or ISSUE_TYPE.get(status) or ("exception" if status >= 500 else "invalid")
    expression = None if status == 401 else expression_for(message, field=field, key=key)
    issue = OutcomeIssue.model_validate(
        {"severity": "error", "code": issue_code, "diagnostics": message, "expression": expression}
    )
    return OperationOutcome(resourceType="OperationOutcome", issue=[issue])


def error_body(status: int, message: str, *, field: str | None = None, key: str | None = None, code: str | None = None):
    body = outcome(status, message, field=field, key=key, code=code)
    response = jsonify(body.model_dump(mode="json", exclude_none=True))
    response.status_code = status
    return response


def register_error_handlers(bp_or_app: Blueprint | Flask) -> None:
    @bp_or_app.errorhandler(ApiError)
    def _api_error(e: ApiError):
        return error_body(e.status, e.message, field=e.field, key=e.key, code=e.code)

    @bp_or_app.errorhandler(HTTPException)
    def _http_error(e: HTTPException):
        messages = {
            404: "not found",
            405: "method not allowed",
            413: "request body too large",
            415: "unsupported media type: send application/json",
        }
        return error_body(e.code or 500, messages.get(e.code or 0, e.description or e.name))

    @bp_or_app.errorhandler(Exception)
    def _unexpected(e: Exception):
        log.exception("unexpected error while handling a request")
        return error_body(500, "internal error")
