#!/bin/sh
# Run database migrations, then serve the app factory with gunicorn (production: auth on unless CDS_AUTH=off).
set -e
cds db upgrade
exec gunicorn --bind "${CDS_HOST:-0.0.0.0}:${CDS_PORT:-8080}" --worker-class gthread \
    --workers "${CDS_WORKERS:-2}" --threads "${CDS_THREADS:-8}" --access-logfile - \
    cds.wsgi:app
