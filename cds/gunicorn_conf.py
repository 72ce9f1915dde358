"""gunicorn configuration, for running the app under gunicorn instead of the image's server:
``gunicorn -c python:cds.gunicorn_conf cds.wsgi:app``.

The image runs granian (:mod:`cds.serve`): gunicorn's gthread workers tie a Python thread to each
connection, so a handful of clients sending their headers or body slowly take every thread; run gunicorn
only behind a buffering proxy with header and body timeouts (nginx, docs/operations.md "Production").
Same variables as :mod:`cds.serve`: ``CDS_WORKERS`` processes (default: the CPUs this container may use)
x ``CDS_THREADS`` threads (default 8), ``CDS_HOST``/``CDS_PORT``, ``CDS_GRACEFUL_TIMEOUT``. Each worker
imports :mod:`cds.wsgi` itself (no preload).

Metrics stay whole across the workers with prometheus-client's multiprocess mode: this module empties
``PROMETHEUS_MULTIPROC_DIR`` when the server starts and marks each exited worker dead (:mod:`cds.metrics`).
Only gunicorn reads this module; it does not import the application.
"""

from __future__ import annotations

import os

from cds.serve import (  # noqa: F401 - available_cpus: its old home, kept for importers
    MULTIPROC_ENV,
    ServerConfigError,
    available_cpus,
    load_server_settings,
    reset_multiproc_dir,
)

try:
    _settings = load_server_settings()
except ServerConfigError as e:
    raise SystemExit(f"configuration error: {e}") from None

bind = f"{_settings.host}:{_settings.port}"
worker_class = "gthread"
workers = _settings.workers
threads = _settings.threads
accesslog = "-"
# Several workers share the JWT replay store: with a database configured, CDS_JTI_STORE defaults to it
# (cds/config.py), so a token used on one worker is refused on every other one.
# Kubernetes sends SIGTERM and waits terminationGracePeriodSeconds (30 s): finish requests well before.
graceful_timeout = _settings.graceful_timeout
keepalive = 5  # behind a proxy or load balancer that keeps connections open


def on_starting(server) -> None:
    """In the master, before any worker: a fresh multiprocess folder (files of a previous run would be
    added to this one's counters)."""
    reset_multiproc_dir()


def child_exit(server, worker) -> None:
    """In the master, when a worker exits: its live gauges go; its counters keep counting."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
