"""JSON errors for every failure a client can cause: a status and a message naming the problem."""

from __future__ import annotations

import logging

from flask import Blueprint, Flask, jsonify
from werkzeug.exceptions import HTTPException

from ..errors import CdsError

log = logging.getLogger("cds.http")


class ApiError(CdsError):
    def __init__(self, status: int, message: str, **extra: object):
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def error_body(status: int, message: str, **extra: object):
    response = jsonify({"error": {"status": status, "message": message, **extra}})
    response.status_code = status
    return response


def register_error_handlers(bp_or_app: Blueprint | Flask) -> None:
    @bp_or_app.errorhandler(ApiError)
    def _api_error(e: ApiError):
        return error_body(e.status, e.message, **e.extra)

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
