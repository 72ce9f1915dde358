"""gunicorn configuration of the production entry point: ``gunicorn -c python:cds.gunicorn_conf cds.wsgi:app``.

Every core used: ``CDS_WORKERS`` worker processes (default: the CPUs this container may use, from
its cgroup CPU quota or, without one, its CPU affinity), each with ``CDS_THREADS`` threads (default 8)
for requests that wait on a FHIR server. Each worker imports :mod:`cds.wsgi` itself (no preload), so
each has its own rule engine, engine lock, rule-file watcher, database pool and audit writer.

Metrics stay whole across the workers with prometheus-client's multiprocess mode: the entry point sets
``PROMETHEUS_MULTIPROC_DIR`` (docker/entrypoint.sh); this module empties that folder when the server
starts and marks each exited worker dead (:mod:`cds.metrics`). Bind address: ``CDS_HOST``/``CDS_PORT``.

Only gunicorn reads this module; it does not import the application.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def available_cpus(cgroup_cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The CPUs this process may use: the cgroup v2 quota (``cpu.max``, rounded up) when there is one,
    else the CPU affinity; at least 1."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
        if quota != "max":
            return max(1, min(affinity, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, affinity)


def _positive_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"configuration error: {name}: not a whole number: {raw!r}") from None
    if value < 1:
        raise SystemExit(f"configuration error: {name}: must be at least 1, got {value}")
    return value


bind = f"{os.environ.get('CDS_HOST') or '0.0.0.0'}:{os.environ.get('CDS_PORT') or '8080'}"
worker_class = "gthread"
workers = _positive_int("CDS_WORKERS", available_cpus())
threads = _positive_int("CDS_THREADS", 8)
accesslog = "-"
# Several workers share the JWT replay store: with a database configured, CDS_JTI_STORE defaults to it
# (cds/config.py), so a token used on one worker is refused on every other one.
# Kubernetes sends SIGTERM and waits terminationGracePeriodSeconds (30 s): finish requests well before.
graceful_timeout = 20
keepalive = 5  # behind a proxy or load balancer that keeps connections open


def on_starting(server) -> None:
    """In the master, before any worker: a fresh multiprocess folder (files of a previous run would be
    added to this one's counters)."""
    folder = os.environ.get(MULTIPROC_ENV)
    if not folder:
        return
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()


def child_exit(server, worker) -> None:
    """In the master, when a worker exits: its live gauges go; its counters keep counting."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
