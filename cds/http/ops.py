"""Operations endpoints: liveness, readiness, Prometheus metrics. Never behind JWT auth."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from ..metrics import CONTENT_TYPE

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    state = current_app.extensions["lbp_cds"]
    ident = state.rules.current().ruleset.identity
    if state.store is None:
        database: bool | str = "not configured"
        ok = True
    else:
        database = ok = state.store.ping()
    checks = {"rules": {"name": ident.name, "version": ident.version, "sha256": ident.sha256}, "database": database}
    response = jsonify({"status": "ready" if ok else "not ready", "checks": checks})
    response.status_code = 200 if ok else 503
    return response


@bp.get("/metrics")
def metrics():
    return Response(current_app.extensions["lbp_cds"].metrics.render(), mimetype=CONTENT_TYPE)
