"""Operations endpoints: liveness, readiness, Prometheus metrics. Never behind JWT auth.

The JSON bodies are built from the pydantic models below, which also give the OpenAPI document its
schemas for them (:mod:`cds.http.openapi`).
"""

from __future__ import annotations

from typing import Literal

from flask import Blueprint, Response, current_app, jsonify
from pydantic import BaseModel, ConfigDict

from ..metrics import CONTENT_TYPE

bp = Blueprint("ops", __name__)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Health(_Body):
    status: Literal["ok"] = "ok"


class RuleSetCheck(_Body):
    name: str
    version: str
    sha256: str


class ReadinessChecks(_Body):
    rules: RuleSetCheck
    #: True/False: the database took a probe write or not; "not configured": no CDS_DATABASE_URL
    database: bool | Literal["not configured"]


class Readiness(_Body):
    status: Literal["ready", "not ready"]
    checks: ReadinessChecks


@bp.get("/healthz")
def healthz():
    # liveness only: never the database or anything else that can wait (a hung database is /readyz's job)
    return jsonify(Health().model_dump(mode="json"))


@bp.get("/readyz")
def readyz():
    state = current_app.extensions["lbp_cds"]
    ident = state.rules.current().ruleset.identity
    database: bool | Literal["not configured"]
    if state.store is None:
        database = "not configured"
        ok = True
    else:
        database = ok = state.store.ready()  # a committed write, reused for a second (Store.ready)
    checks = ReadinessChecks(rules=RuleSetCheck(name=ident.name, version=ident.version, sha256=ident.sha256), database=database)
    body = Readiness(status="ready" if ok else "not ready", checks=checks)
    response = jsonify(body.model_dump(mode="json"))
    response.status_code = 200 if ok else 503
    return response


@bp.get("/metrics")
def metrics():
    return Response(current_app.extensions["lbp_cds"].metrics.render(), mimetype=CONTENT_TYPE)
