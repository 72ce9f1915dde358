"""Prometheus metrics of one app instance (its own registry, so test apps never collide).

Two modes, chosen by the environment like prometheus-client itself chooses its value store:

- single process (``cds run``, ``cds run --dev``, the tests' ``create_app``): an ordinary registry,
  rendered as is;
- multiprocess (``PROMETHEUS_MULTIPROC_DIR`` set, as the production entry point does for its worker
  processes, :mod:`cds.serve`): every worker writes its values to files in that folder and
  ``/metrics``, whichever worker answers it, renders the sum over all of them through a
  ``MultiProcessCollector``; counters of workers that exited still count. The production server
  (granian, :mod:`cds.serve`) has no hook in the parent when a worker exits, so each scrape removes the
  live-mode gauge files of processes that no longer run (:func:`sweep_dead_processes`, prometheus-client's
  ``mark_process_dead``); gunicorn's ``child_exit`` (:mod:`cds.gunicorn_conf`) does the same at once.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: label children kept bound per metric (issue 13): past this many label sets, ``labels()`` as before
MAX_BOUND_CHILDREN = 1024
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The multiprocess folder when that mode is on (the variable prometheus-client reads at import)."""
    return os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower()) or None


_PID_FILE = re.compile(r"_(\d+)\.db$")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: running
        return True
    return True


def sweep_dead_processes(folder: str) -> list[int]:
    """``mark_process_dead`` for every process with files in ``folder`` that no longer runs: its live
    gauges (``livesum``, ``liveall``, ...) go, its counters, histograms and other gauges stay (they keep
    counting). The pids whose files were swept. A pid the kernel gave to a new process since looks alive,
    so its live gauges would stay until that process ends too (no such gauge is defined today)."""
    pids = {int(m.group(1)) for p in Path(folder).glob("*.db") if (m := _PID_FILE.search(p.name))}
    dead = sorted(pid for pid in pids if pid != os.getpid() and not _running(pid))
    for pid in dead:
        mark_process_dead(pid, folder)
    return dead


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess = multiprocess_dir() is not None
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
        # multiprocess: each worker's own count, summed over every worker since the container started
        self.audit_failures = Gauge(
            "cds_audit_failures", "Audit records that could not be written (failed or dropped) since start",
            registry=self.registry, multiprocess_mode="sum",
        )
        self._audit = None
        # pre-bound label children: ``labels()`` validates and locks on every call; a dict lookup does not
        self._request_children: dict[tuple[str, str, int], Any] = {}
        self._latency_children: dict[str, Any] = {}
        self._decision_children: dict[tuple[str, str, str], Any] = {}

    @staticmethod
    def _child(cache: dict, key: Any, make: Any) -> Any:
        child = cache.get(key)
        if child is None:
            child = make()
            if len(cache) < MAX_BOUND_CHILDREN:
                cache[key] = child
        return child

    def observe_request(self, endpoint: str, service: str, status: int, seconds: float) -> None:
        """``cds_requests_total`` + 1 and ``cds_request_seconds`` for one answered request."""
        self._child(self._request_children, (endpoint, service, status),
                    lambda: self.requests.labels(endpoint, service, str(status))).inc()
        self._child(self._latency_children, endpoint, lambda: self.latency.labels(endpoint)).observe(seconds)

    def watch_audit(self, audit) -> None:
        self._audit = audit
        if not self.multiprocess:
            self.audit_failures.set_function(lambda: audit.failures)
        # multiprocess: a callback is not shared between processes; _sync_audit copies the count

    def _sync_audit(self) -> None:
        if self.multiprocess and self._audit is not None:
            self.audit_failures.set(self._audit.failures)

    # observer interface (AppState.observers)
    def after_evaluation(self, hook_request, service_id, outcome) -> None:
        version = outcome.evaluation.ruleset.version
        children = self._decision_children
        for fired in outcome.evaluation.fired:
            key = (fired.rule_id, fired.decision, version)
            child = children.get(key)
            if child is None:
                child = self._child(children, key, lambda: self.decisions.labels(*key))  # noqa: B023 - called at once
            child.inc()
        self._sync_audit()  # the previous requests' audit writes (the writer runs in the background)

    def fetch_error(self, key: str | None) -> None:
        self.fetch_errors.labels(key or "(none)").inc()

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        self._sync_audit()
        folder = multiprocess_dir()
        if folder:
            sweep_dead_processes(folder)
        registry = CollectorRegistry()  # per scrape, as prometheus-client's multiprocess mode requires
        MultiProcessCollector(registry)
        return generate_latest(registry)
