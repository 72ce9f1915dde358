"""Prometheus metrics of one app instance (its own registry, so test apps never collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cds_requests_total", "HTTP requests by endpoint, service and status", ["endpoint", "service", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cds_request_seconds", "HTTP request latency", ["endpoint"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.decisions = Counter(
            "cds_decisions_total", "Cards returned, by rule and decision", ["rule", "decision", "ruleset_version"],
            registry=self.registry,
        )
        self.fetch_errors = Counter(
            "cds_fhir_fetch_errors_total", "Prefetch keys that could not be fetched from fhirServer", ["key"],
            registry=self.registry,
        )
        self.feedback = Counter("cds_feedback_total", "Feedback items stored", ["outcome"], registry=self.registry)
        self.audit_failures = Gauge(
            "cds_audit_failures", "Audit records that could not be written (failed or dropped) since start",
            registry=self.registry,
        )

    def watch_audit(self, audit) -> None:
        self.audit_failures.set_function(lambda: audit.failures)

    # observer interface (AppState.observers)
    def after_evaluation(self, hook_request, service_id, outcome) -> None:
        version = outcome.evaluation.ruleset.version
        for fired in outcome.evaluation.fired:
            self.decisions.labels(fired.rule_id, fired.decision, version).inc()

    def fetch_error(self, key: str | None) -> None:
        self.fetch_errors.labels(key or "(none)").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
