"""The production server: ``python -m cds.serve`` (docker/entrypoint.sh runs it after ``cds db upgrade``).

granian (Rust: tokio + hyper) serves ``cds.wsgi:app`` through its RSGI interface and the bridge in
:mod:`cds.rsgi`. Connections and header parsing are handled by the Rust runtime and request bodies are
awaited on each worker's event loop, so a client that sends its headers or its body one byte a second
costs a socket and a small task, never a Python thread: the ``CDS_THREADS`` threads only run requests that
have fully arrived (issue 12 point 1; bench/bench_slow_clients.py, tests/test_slow_clients.py). granian's
own WSGI interface would not do: it hands a request to a thread when its headers are in and lets the
thread block on ``wsgi.input`` while the body trickles in (measured: 20 slow bodies starve 2 x 8 threads).

Configuration from the environment, read and validated by :class:`cds.config.ServerSettings` (a bad
value stops start-up with one line naming the variable, exit 2):

- ``CDS_HOST`` / ``CDS_PORT``: bind address (``0.0.0.0:8080``);
- ``CDS_WORKERS``: worker processes, default the CPUs this container may use (:func:`available_cpus`);
  each imports :mod:`cds.wsgi` itself: its own rule engine, engine lock, watcher, pool and audit writer;
- ``CDS_THREADS``: Python threads per worker running requests (granian's blocking threads; default 8);
- ``CDS_HEADER_TIMEOUT``: seconds a client has to send its request headers (default 10, at most 60);
  a slower one is closed;
- ``CDS_BODY_TIMEOUT``: seconds a client has to send its whole body (default 15); then 408;
- ``CDS_GRACEFUL_TIMEOUT``: seconds a worker has on SIGTERM to finish its requests and drain its audit
  queue before it is killed (default 20, below Kubernetes' 30 s grace period).

Every worker process is started with multiprocessing's ``spawn`` (a fresh interpreter, not a fork of this
launcher), so a worker that stops on SIGTERM exits its interpreter normally and its ``atexit`` handlers
(the audit queue's flush, cds/storage/background.py) run. A worker that dies is started again
(``respawn_failed_workers``). ``SIGHUP`` to this process restarts every worker gracefully, each building
the app, so the rule set, afresh. Metrics: prometheus-client's multiprocess folder
(``PROMETHEUS_MULTIPROC_DIR``) is emptied here before any worker starts; see :mod:`cds.metrics` for dead
workers' files (granian has no per-worker exit hook).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from .config import ConfigError, ServerSettings, available_cpus, load_server_settings  # noqa: F401 - re-exported

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
TARGET = "cds.rsgi:production_app"  # a factory, called in each worker


#: a bad server setting (one line for the operator): the settings' own error, cds.config.ConfigError
ServerConfigError = ConfigError


def reset_multiproc_dir(env: Mapping[str, str] | None = None) -> None:
    """A fresh multiprocess folder before any worker starts (files of a previous run would be added to
    this one's counters)."""
    folder = (os.environ if env is None else env).get(MULTIPROC_ENV)
    if not folder:
        return
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()


#: requests (connections with a request in progress, per worker) the Rust side admits at once; far above
#: any slow-client count, so they cannot exhaust it: the CPU-bound part is bounded by CDS_THREADS instead
BACKPRESSURE = 16384


def build_server(settings: ServerSettings):
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings
    from granian.server import Server

    return Server(
        TARGET,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.RSGI,  # cds.rsgi: the body is read on the event loop, then WSGI on a thread
        factory=True,
        workers=settings.workers,
        backlog=2048,
        backpressure=BACKPRESSURE,
        http=HTTPModes.http1,  # TLS and HTTP/2 belong to the proxy or load balancer in front
        websockets=False,
        http1_settings=HTTP1Settings(header_read_timeout=settings.header_timeout * 1000),
        respawn_failed_workers=True,
        workers_kill_timeout=settings.graceful_timeout,
        log_access=False,  # the app logs one JSON line per request (cds/http)
    )


def main() -> int:
    try:
        settings = load_server_settings()
    except ServerConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr, flush=True)
        return 2
    reset_multiproc_dir()
    # a fresh interpreter per worker: atexit handlers (the audit flush) run when it stops
    multiprocessing.set_start_method("spawn", force=True)
    from .rsgi import REFUSED_ENV

    with tempfile.TemporaryDirectory(prefix="cds-serve-") as folder:
        refused = Path(folder) / "refused"
        os.environ[REFUSED_ENV] = str(refused)  # inherited by the workers
        build_server(settings).serve()
        if refused.exists():  # a worker refused to start and stopped the server: exit as it did
            return int(refused.read_text() or 1) or 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
