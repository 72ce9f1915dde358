"""JSON errors for every failure a client can cause: a status and a message naming the problem.

The body is :class:`ErrorResponse` (``{"error": {"status", "message", "field"?, "key"?}}``); the same model
builds every error body and gives the OpenAPI document its error schema (:mod:`cds.http.openapi`).
"""

from __future__ import annotations

import logging

from flask import Blueprint, Flask, jsonify
from pydantic import BaseModel, ConfigDict, Field
from werkzeug.exceptions import HTTPException

from ..errors import CdsError

log = logging.getLogger("cds.http")


class ErrorDetail(BaseModel):
    """What went wrong. ``field`` names the failing field path of a feedback body, ``key`` the prefetch key
    a 412 could not get; both are omitted when they do not apply."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: int = Field(ge=400, le=599)
    message: str = Field(min_length=1)
    field: str | None = Field(default=None, min_length=1)
    key: str | None = Field(default=None, min_length=1)


class ErrorResponse(BaseModel):
    """The body of every 4xx and 5xx answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    error: ErrorDetail


class ApiError(CdsError):
    def __init__(self, status: int, message: str, *, field: str | None = None, key: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.key = key


def error_body(status: int, message: str, *, field: str | None = None, key: str | None = None):
    body = ErrorResponse(error=ErrorDetail(status=status, message=message, field=field, key=key))
    response = jsonify(body.model_dump(mode="json", exclude_none=True))
    response.status_code = status
    return response


def register_error_handlers(bp_or_app: Blueprint | Flask) -> None:
    @bp_or_app.errorhandler(ApiError)
    def _api_error(e: ApiError):
        return error_body(e.status, e.message, field=e.field, key=e.key)

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
