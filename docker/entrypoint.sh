#!/bin/sh
# Run database migrations, then serve the app with granian (cds/serve.py; production: auth on unless
# CDS_AUTH=off). granian's Rust I/O holds slow clients without a Python thread each (issue 12).
# Every core used: CDS_WORKERS worker processes (default: the container's CPUs) x CDS_THREADS threads
# (default 8). /metrics stays whole across the workers through prometheus-client's multiprocess mode: a
# folder of per-worker value files, emptied at each start (cds/serve.py).
set -e
export PROMETHEUS_MULTIPROC_DIR="${PROMETHEUS_MULTIPROC_DIR:-/tmp/cds-metrics}"
mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
# CDS_DATABASE_URL set but empty: no database (no audit), nothing to migrate
if [ "${CDS_DATABASE_URL-unset}" != "" ]; then
    cds db upgrade
fi
exec python -m cds.serve
