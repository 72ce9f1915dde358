#!/bin/sh
# Run database migrations, then serve the app with gunicorn (production: auth on unless CDS_AUTH=off).
# One worker with threads per container: the rule engine serialises evaluations anyway, and /metrics
# then covers the whole container. Scale with more containers.
set -e
cds db upgrade
exec gunicorn --bind "${CDS_HOST:-0.0.0.0}:${CDS_PORT:-8080}" --worker-class gthread \
    --workers "${CDS_WORKERS:-1}" --threads "${CDS_THREADS:-8}" --access-logfile - \
    cds.wsgi:app
