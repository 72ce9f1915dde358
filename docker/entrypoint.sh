#!/bin/sh
# Run database migrations, then serve the app with gunicorn (production: auth on unless CDS_AUTH=off).
# Every core used: CDS_WORKERS worker processes (default: the container's CPUs) x CDS_THREADS threads
# (default 8), configured in cds/gunicorn_conf.py. /metrics stays whole across the workers through
# prometheus-client's multiprocess mode: a folder of per-worker value files, emptied at each start.
set -e
export PROMETHEUS_MULTIPROC_DIR="${PROMETHEUS_MULTIPROC_DIR:-/tmp/cds-metrics}"
mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
# CDS_DATABASE_URL set but empty: no database (no audit), nothing to migrate
if [ "${CDS_DATABASE_URL-unset}" != "" ]; then
    cds db upgrade
fi
exec gunicorn --config python:cds.gunicorn_conf cds.wsgi:app
