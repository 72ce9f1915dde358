"""Profile of the request path: the production app called in process through WSGI, CPU per stage.

    .venv/bin/python bench/bench_request_path.py [--calls N] [--database sqlite|postgres] [--top K]
                                                  [--pyinstrument]

The app is the production one (:func:`cds.http.create_app` on :func:`cds.config.load_settings`): auth ON
against a loopback JWKS (an ES384 key made here, as bench/bench_http.py), a fresh signed token per call
(signed before the clock starts), the JWT replay store as production uses it (``CDS_JTI_STORE=database``)
and the audit on the same database: ``CDS_BENCH_DATABASE_URL`` when set (e.g. a throw-away PostgreSQL,
migrated here), else ``--database postgres`` starts one with bench/bench_http.py's helper, else a SQLite
file. JSON logging at INFO through :func:`cds.logs.configure_logging` (to /dev/null: the formatting work
is done, the writes are not). Multiprocess metrics off (one process).

Each call is a raw WSGI environ for ``fhir_examples/requests/bird-dog-28-27.json`` handed to ``app.wsgi_app``
(no test client, no HTTP server): what is measured is Flask and everything the app does per request.
Printed: CPU per call (process CPU: the audit writer thread included, since it runs on the same cores),
wall p50/p99, then one cProfile run split by stage (cumulative CPU of named functions per call), and the
top functions by own time. The figures go to bench/README.md ("request path").
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_core import EVALUATION_DATE, URL, pct  # noqa: E402
from bench_http import ISS, sign, start_jwks  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

TYPICAL = ROOT / "fhir_examples" / "requests" / "bird-dog-28-27.json"

#: stage -> functions (file suffix, function name) whose cumulative time is that stage
STAGES: list[tuple[str, list[tuple[str, str]]]] = [
    ("JWT verification (signature, claims)", [("cds/auth.py", "_verify")]),
    ("  of which: jti replay store", [("cds/storage/replay.py", "check_and_add"), ("cds/auth.py", "check_and_add")]),
    ("request JSON parse", [("cds/http/routes.py", "json_body")]),
    ("hook request validation (pydantic)", [("pydantic/main.py", "model_validate")]),
    ("prefetch completion", [("cds/fhir_client.py", "complete_prefetch")]),
    ("service (extract + rules + cards)", [("cds/service.py", "evaluate"), ("cds/service.py", "decide")]),
    ("observers (audit enqueue + decision metrics)", [("cds/http/app.py", "after_evaluation")]),
    ("response shaping + serialisation", [("cds/http/ehr.py", "shape_for_ehr"), ("cds/cdshooks.py", "to_json"),
                                          ("flask/json/__init__.py", "jsonify"), ("cds/http/routes.py", "_respond")]),
    ("after_request (metrics, access log)", [("cds/http/app.py", "_finish")]),
    ("logging (format + emit, all lines)", [("logging/__init__.py", "handle")]),
    ("audit writer thread (database write)", [("cds/storage/store.py", "record_evaluation"),
                                              ("cds/storage/store.py", "record_evaluations")]),
]


def environ_for(body: bytes, token: str, base: str) -> dict[str, Any]:
    host, port = base.removeprefix("http://").split(":")
    return {
        "REQUEST_METHOD": "POST", "SCRIPT_NAME": "", "PATH_INFO": URL, "QUERY_STRING": "",
        "SERVER_NAME": host, "SERVER_PORT": port, "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)),
        "HTTP_AUTHORIZATION": f"Bearer {token}", "HTTP_HOST": f"{host}:{port}",
        "wsgi.input": io.BytesIO(body), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False, "wsgi.version": (1, 0),
        "REMOTE_ADDR": "127.0.0.1",
    }


def call(app: Any, environ: dict[str, Any]) -> tuple[str, bytes]:
    status: list[str] = []

    def start_response(s: str, headers: list, exc_info: Any = None) -> None:
        status.append(s)

    chunks = app.wsgi_app(environ, start_response)
    try:
        body = b"".join(chunks)
    finally:
        if hasattr(chunks, "close"):
            chunks.close()
    return status[0], body


def stage_split(stats: pstats.Stats, calls: int) -> list[tuple[str, float]]:
    table = stats.stats  # type: ignore[attr-defined]
    out = []
    for stage, funcs in STAGES:
        total = 0.0
        for (filename, _line, name), (_cc, _nc, _tt, ct, _callers) in table.items():
            if any(filename.endswith(suffix) and name == fn for suffix, fn in funcs):
                total += ct
        out.append((stage, total * 1e3 / calls))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="timed calls (default 2000)")
    parser.add_argument("--profile-calls", type=int, default=1000, help="calls under cProfile (default 1000)")
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite",
                        help="without CDS_BENCH_DATABASE_URL: a SQLite file (default) or a throw-away PostgreSQL")
    parser.add_argument("--top", type=int, default=25, help="functions listed by own time (default 25)")
    parser.add_argument("--pyinstrument", action="store_true", help="also print a pyinstrument tree")
    args = parser.parse_args()

    key = ec.generate_private_key(ec.SECP384R1())
    jwks, jwks_url = start_jwks(key)
    body = TYPICAL.read_bytes()
    base = "http://127.0.0.1:8080"
    with tempfile.TemporaryDirectory(prefix="bench-request-path-") as tmp_name:
        tmp = Path(tmp_name)
        pg_data = None
        database_url = os.environ.get("CDS_BENCH_DATABASE_URL", "")
        if not database_url and args.database == "postgres":
            from bench_http import start_postgres

            database_url, pg_data = start_postgres(tmp)
        if database_url and not database_url.startswith("sqlite"):
            from cds.storage import upgrade

            upgrade(database_url)  # what `cds db upgrade` does in the entry point
        database_url = database_url or f"sqlite:///{tmp / 'cds.sqlite3'}"
        issuers = tmp / "issuers.json"
        issuers.write_text(json.dumps({"issuers": [{"iss": ISS, "jwks_url": jwks_url}]}))
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        os.environ.update({
            "CDS_AUTH": "on", "CDS_TRUSTED_ISSUERS": str(issuers), "CDS_PUBLIC_BASE_URL": base,
            "CDS_DATABASE_URL": database_url, "CDS_JTI_STORE": "database", "CDS_ALLOW_HTTP_JWKS": "1",
            "CDS_AUDIT_KEY": "bench-only-audit-key-0123456789", "CDS_RULES_DIR": str(ROOT / "rules"),
            "CDS_EVALUATION_DATE": EVALUATION_DATE.isoformat(), "CDS_RULES_POLL_SECONDS": "0",
        })
        from cds.config import load_settings
        from cds.http import create_app
        from cds.logs import configure_logging

        configure_logging(logging.INFO)
        devnull = open(os.devnull, "w")  # noqa: SIM115 - closed at the end
        logging.getLogger().handlers[0].setStream(devnull)  # type: ignore[attr-defined]
        app = create_app(load_settings())
        state = app.extensions["lbp_cds"]
        total = 50 + args.calls + args.profile_calls + (300 if args.pyinstrument else 0)
        tokens = iter([sign(key, base + URL) for _ in range(total)])

        def one() -> None:
            status, out = call(app, environ_for(body, next(tokens), base))
            if not status.startswith("200"):
                raise SystemExit(f"unexpected answer {status}: {out[:300]!r}")

        for _ in range(50):
            one()
        if state.audit is not None:
            state.audit.flush(30)
        wall, cpu = [], []
        cpu_start = time.process_time()
        for _ in range(args.calls):
            t0, c0 = time.perf_counter(), time.process_time()
            one()
            wall.append((time.perf_counter() - t0) * 1e3)
            cpu.append((time.process_time() - c0) * 1e3)
        if state.audit is not None:
            state.audit.flush(60)
        cpu_total = (time.process_time() - cpu_start) * 1e3 / args.calls

        # the audit writer thread is profiled too: cProfile per thread, merged
        profiles: list[cProfile.Profile] = []
        import threading

        writer = state.audit.writer if state.audit is not None else None
        if writer is not None:
            writer.flush(60)
            original_run = writer.store.record_evaluations
            thread_profile = cProfile.Profile(time.thread_time)
            profiles.append(thread_profile)

            def profiled(records: Any) -> Any:
                thread_profile.enable()
                try:
                    return original_run(records)
                finally:
                    thread_profile.disable()

            writer.store.record_evaluations = profiled  # type: ignore[method-assign]
        main_profile = cProfile.Profile(time.thread_time)
        main_profile.enable()
        for _ in range(args.profile_calls):
            one()
        main_profile.disable()
        if writer is not None:
            writer.flush(60)
            writer.store.record_evaluations = original_run  # type: ignore[method-assign]
        stats = pstats.Stats(main_profile)
        for p in profiles:
            stats.add(p)

        print(f"request path, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, Python {sys.version.split()[0]}, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
        print(f"production app through WSGI in process: auth on (ES384, loopback JWKS), jti store database, audit on "
              f"{database_url.split(':', 1)[0].split('+')[0]}, JSON logs at INFO, {TYPICAL.name}")
        print(f"{args.calls} calls: CPU per call (process, audit writer included) {cpu_total:.3f} ms; "
              f"per-call p50 {statistics.median(cpu):.3f} ms; wall p50 {pct(wall, 50):.3f} ms, p99 {pct(wall, 99):.3f} ms")
        print()
        print(f"stages under cProfile ({args.profile_calls} calls, thread CPU time; cProfile inflates every figure, "
              f"compare them with each other), ms CPU per call:")
        for stage, ms in stage_split(stats, args.profile_calls):
            print(f"  {stage:48} {ms:7.3f}")
        profiled_total = sum(v[2] for v in stats.stats.values()) * 1e3 / args.profile_calls  # type: ignore[attr-defined]
        print(f"  {'total under the profiler':48} {profiled_total:7.3f}")
        print()
        print(f"top {args.top} functions by own time (ms per call):")
        rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[: args.top]  # type: ignore[attr-defined]
        for (filename, line, name), (_cc, nc, tt, ct, _callers) in rows:
            where = filename if filename.startswith("~") else "/".join(Path(filename).parts[-2:])
            print(f"  {tt * 1e3 / args.profile_calls:7.4f}  cum {ct * 1e3 / args.profile_calls:7.4f}  "
                  f"{nc / args.profile_calls:6.1f}x  {where}:{line} {name}")
        if args.pyinstrument:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0001)
            profiler.start()
            for _ in range(300):
                one()
            profiler.stop()
            print(profiler.output_text(unicode=False, color=False, show_all=False))
        del threading
        if state.verifier is not None:
            state.verifier.close()
        if state.audit is not None:
            state.audit.writer.close()
        if pg_data is not None:
            state.store.engine.dispose() if hasattr(state.store, "engine") else None
            from bench_http import stop_postgres

            stop_postgres(pg_data)
        devnull.close()
    jwks.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
