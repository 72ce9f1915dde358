# lbp-cds: CDS Hooks service. durable-rules 2.0.28 compiles C at install and does not build on
# Python 3.13, so both stages use 3.11.
FROM python:3.11-slim-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc g++ make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cds ./cds
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[postgres]'

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    CDS_RULES_DIR=/app/rules CDS_HOST=0.0.0.0 CDS_PORT=8080 \
    CDS_DATABASE_URL=sqlite:////app/var/lbp-cds.sqlite3
RUN useradd --create-home --uid 10001 cds
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /app
COPY rules ./rules
# entrypoint: `cds db upgrade`, then granian through cds/serve.py (CDS_WORKERS, default one per CPU of the
# container, x CDS_THREADS; slow clients held by granian's Rust I/O, not by Python threads); /metrics
# sums the workers (PROMETHEUS_MULTIPROC_DIR, default under /tmp, which must be writable: an emptyDir
# with a read-only root file system, deploy/deployment.yaml). SIGTERM: graceful stop (CDS_GRACEFUL_TIMEOUT),
# SIGHUP: every worker restarted. Plain HTTP/1.1: terminate TLS in front (docs/operations.md "Production").
COPY docker/entrypoint.sh /usr/local/bin/entrypoint.sh
RUN mkdir -p /app/var && chown -R cds:cds /app/var
USER cds
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import os,urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"CDS_PORT\",\"8080\")}/healthz', timeout=2)" || exit 1
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
