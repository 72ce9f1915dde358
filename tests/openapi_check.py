"""Checks a live response against the OpenAPI document the app serves (used by the recorder in conftest.py).

:meth:`DocumentChecker.problem` answers ``None`` when the response is documented -- its path, method, status and
content type are in the document and its JSON body validates against the documented schema (with
``openapi-schema-validator``'s OpenAPI 3.1 dialect and format checker) -- and otherwise a message naming
the request and what is wrong.

Answers the document cannot describe: a path it does not list must be a documented error body with 404;
a method it does not list for a path must be 405 with an error body, except ``OPTIONS`` (CORS preflight
or Flask's automatic answer: 200, no JSON body) and ``HEAD`` of a documented ``GET`` (same status, no
body).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from openapi_schema_validator import OAS31Validator, oas31_format_checker

#: the component schema of every error body (cds.http.errors.OperationOutcome)
ERROR_SCHEMA = {"$ref": "#/components/schemas/OperationOutcome"}


@dataclass(frozen=True)
class Exchange:
    """What the recorder keeps of one request and its response."""

    method: str
    path: str
    status: int
    content_type: str  # the mimetype, without parameters
    body: bytes

    def __str__(self) -> str:
        return f"{self.method} {self.path} -> {self.status} {self.content_type or '(no content type)'}"


def _template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}/]+\})", template)
    return re.compile("^" + "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts) + "$")


def match_path(doc: dict[str, Any], path: str) -> str | None:
    """The document's path (template) that ``path`` falls under; a literal path wins over a template."""
    paths = doc.get("paths", {})
    if path in paths:
        return path
    for template in paths:
        if "{" in template and _template_regex(template).match(path):
            return template
    return None


class DocumentChecker:
    """Checks exchanges against one OpenAPI document (validators compiled once per schema)."""

    def __init__(self, doc: dict[str, Any]):
        self.doc = doc
        self._validators: dict[str, OAS31Validator] = {}

    def schema_errors(self, schema: dict[str, Any], instance: Any) -> list[str]:
        """Every validation error of ``instance`` against ``schema`` (whose refs point into the document)."""
        key = json.dumps(schema, sort_keys=True)
        validator = self._validators.get(key)
        if validator is None:
            root = {"allOf": [schema], "components": self.doc.get("components", {})}
            validator = self._validators[key] = OAS31Validator(root, format_checker=oas31_format_checker)
        out = []
        for err in sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path]):
            where = "/".join(str(p) for p in err.absolute_path) or "(body)"
            out.append(f"at {where}: {err.message[:300]}")
        return out

    def _body_problem(self, exchange: Exchange, schema: dict[str, Any], what: str) -> str | None:
        try:
            body = json.loads(exchange.body)
        except ValueError:
            return f"{exchange}: the body is not JSON, but {what} documents a JSON body"
        errors = self.schema_errors(schema, body)
        if errors:
            return f"{exchange}: the body does not match {what} ({json.dumps(schema)}): " + "; ".join(errors[:5])
        return None

    def problem(self, exchange: Exchange) -> str | None:
        """None when ``exchange`` is what the document says; else a message naming the request and the problem."""
        doc = self.doc
        template = match_path(doc, exchange.path)
        if template is None:
            if exchange.status != 404:
                return f"{exchange}: the path is not in the document, so the answer must be 404, not {exchange.status}"
            return self._body_problem(exchange, ERROR_SCHEMA, "the error schema")
        item = doc["paths"][template]
        method = exchange.method.lower()
        if method not in item:
            if method == "options":
                if exchange.status != 200 or exchange.content_type == "application/json":
                    return f"{exchange}: a preflight (OPTIONS) answer must be 200 without a JSON body"
                return None
            if method == "head" and "get" in item:
                if str(exchange.status) not in item["get"]["responses"]:
                    return f"{exchange}: status {exchange.status} is not documented for GET {template}"
                return None
            if exchange.status != 405:
                return f"{exchange}: {exchange.method} is not documented for {template}, so the answer must be 405"
            return self._body_problem(exchange, ERROR_SCHEMA, "the error schema")
        responses = item[method]["responses"]
        documented = responses.get(str(exchange.status), responses.get("default"))
        if documented is None:
            return (
                f"{exchange}: status {exchange.status} is not documented for {exchange.method} {template} "
                f"(documented: {', '.join(sorted(responses))})"
            )
        content = documented.get("content")
        if not content:
            return f"{exchange}: the document says no body, but one was sent" if exchange.body else None
        if exchange.content_type not in content:
            return f"{exchange}: content type not documented (documented: {', '.join(content)})"
        schema = content[exchange.content_type].get("schema")
        if schema is None or exchange.content_type != "application/json":
            return None
        return self._body_problem(exchange, schema, f"the schema of {exchange.status} for {exchange.method} {template}")


@lru_cache(maxsize=32)
def _validated_document(text: str) -> None:
    from openapi_spec_validator import validate

    validate(json.loads(text))


def validate_document(doc: dict[str, Any]) -> None:
    """Raise when ``doc`` is not a valid OpenAPI document (``openapi-spec-validator``); cached by content."""
    _validated_document(json.dumps(doc, sort_keys=True))
