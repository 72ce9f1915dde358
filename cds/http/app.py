"""The Flask app factory: configuration, the live rule set, storage, security and the blueprints."""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, g, request
from flask.json.provider import DefaultJSONProvider
from prometheus_client import Counter
from werkzeug.exceptions import MethodNotAllowed

from ..audit import AuditObserver
from ..auth import JwtVerifier
from ..clock import Clock, clock_for
from ..config import Settings, load_settings
from ..fhir_client import FetchSettings
from ..live_rules import LiveRuleSet
from ..logs import request_id
from ..metrics import Metrics
from ..storage import Store, pg_settings, upgrade
from . import charts, openapi, ops, routes, smart_app
from .errors import error_body, register_error_handlers
from .security import build_verifier, enable_cors, require_jwt

log = logging.getLogger("cds.http")

#: a client's X-Request-Id is kept only when it is 1-64 ASCII letters, digits and hyphens
_REQUEST_ID = re.compile(r"[A-Za-z0-9-]{1,64}")


@dataclass
class AppState:
    """What the request handlers share. Built once per app."""

    settings: Settings
    rules: LiveRuleSet
    clock: Clock
    metrics: Metrics
    store: Store | None = None
    audit: AuditObserver | None = None
    verifier: JwtVerifier | None = None
    fetch_settings: FetchSettings = field(default_factory=FetchSettings)
    observers: list[Any] = field(default_factory=list)
    #: ``cds_feedback_unknown_fields_total{field}``: keys a feedback body sent that we ignored (cds.http.ehr)
    feedback_unknown_fields: Counter | None = None

    def after_evaluation(self, hook_request, service_id, outcome) -> None:
        for observer in self.observers:
            observer.after_evaluation(hook_request, service_id, outcome)

    def observe_fetch_error(self, key: str | None) -> None:
        for observer in self.observers:
            observer.fetch_error(key)


def _open_store(settings: Settings) -> Store | None:
    if not settings.database_url:
        log.warning("no database configured (CDS_DATABASE_URL empty): no audit, feedback answers 503")
        return None
    if settings.database_url.startswith("sqlite:///"):
        from pathlib import Path

        Path(settings.database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        upgrade(settings.database_url)  # the embedded database migrates itself; servers run `cds db upgrade`
    return Store(settings.database_url, pg_settings(settings))


def create_app(settings: Settings | None = None, *, rules: LiveRuleSet | None = None, clock: Clock | None = None) -> Flask:
    settings = settings or load_settings()
    app = Flask("cds")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json = DefaultJSONProvider(app)
    app.json.sort_keys = False
    live = rules or LiveRuleSet(settings.rules_dir, poll_seconds=settings.rules_poll_seconds)
    metrics = Metrics()
    store = _open_store(settings)
    state = AppState(
        settings=settings,
        rules=live,
        clock=clock or clock_for(settings.evaluation_date),
        metrics=metrics,
        store=store,
        verifier=build_verifier(settings),
        fetch_settings=FetchSettings(
            connect_timeout=settings.fetch_connect_timeout,
            total_timeout=settings.fetch_total_timeout,
            max_pages=settings.fetch_max_pages,
            max_entries=settings.max_entries_per_key,
            connections_per_host=settings.fetch_connections_per_host,
            allow_http=settings.allow_http_fhir,
        ),
    )
    state.observers.append(metrics)
    state.feedback_unknown_fields = Counter(
        "cds_feedback_unknown_fields_total", "Unknown feedback fields ignored, by name (bounded label set)", ["field"],
        registry=metrics.registry,
    )
    if store is not None:
        # outside development, Settings refuses a database without CDS_AUDIT_KEY (cds.config)
        key = settings.audit_key.encode() if settings.audit_key else None
        if key is None:
            log.warning("CDS_AUDIT_KEY not set: a random key per process (development only)")
        state.audit = AuditObserver(store, key, shutdown_timeout=settings.audit_shutdown_timeout)
        metrics.watch_audit(state.audit)
        if metrics.multiprocess:  # the gauge's file outlives the worker: records lost at its exit still count
            audit = state.audit
            audit.writer.after_shutdown = lambda: metrics.audit_failures.set(audit.failures)
        state.observers.append(state.audit)
    app.extensions["lbp_cds"] = state

    require_jwt(routes.bp)
    app.register_blueprint(routes.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(charts.bp)
    smart_app.init_app(app)  # the SMART on FHIR app at /app/ when CDS_APP is on
    register_error_handlers(app)
    _allow_on_405(app)
    enable_cors(app, settings)
    _instrument(app, metrics)
    live.start_watching()
    if not settings.auth:
        log.warning("AUTHENTICATION IS OFF: any caller can use this service. Development only; set CDS_AUTH=on.")
    return app


def _allow_on_405(app: Flask) -> None:
    """A 405 says which methods the URL has (``Allow``, RFC 9110 §15.5.6), with the JSON error body."""

    @app.errorhandler(MethodNotAllowed)
    def _method_not_allowed(e: MethodNotAllowed):
        response = error_body(405, "method not allowed")
        for name, value in e.get_headers():
            if name.lower() == "allow":
                response.headers[name] = value
        return response


def _instrument(app: Flask, metrics: Metrics) -> None:
    @app.before_request
    def _start():
        rid = request.headers.get("X-Request-Id", "")
        rid = rid if _REQUEST_ID.fullmatch(rid) else uuid.uuid4().hex  # anything else is never echoed
        g.request_id = rid
        g.token = request_id.set(rid)
        g.started = time.perf_counter()

    @app.after_request
    def _finish(response):
        endpoint = request.url_rule.rule if request.url_rule else "(unmatched)"
        service_id = (request.view_args or {}).get("service_id", "")
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        metrics.requests.labels(endpoint, service_id, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(elapsed)
        response.headers["X-Request-Id"] = g.get("request_id", "")
        if endpoint.startswith("/cds-services"):
            log.info(
                "%s %s -> %s", request.method, endpoint, response.status_code,
                extra={"status": response.status_code, "duration_ms": round(elapsed * 1e3, 2), "service": service_id},
            )
        return response

    @app.teardown_request
    def _reset(exc):
        token = g.pop("token", None)
        if token is not None:
            request_id.reset(token)
