"""HTTP benchmark: the production entry point against a bare Flask fixed-card app, over loopback.

`make bench-http` (or `.venv/bin/python bench/bench_http.py [--requests N] [--connections C] [--rounds R]`):

1. starts a loopback JWKS server (an ES384 key made here) and the production entry point as the image
   runs it (`sh docker/entrypoint.sh`: `cds db upgrade`, then granian through cds/serve.py, CDS_WORKERS=2
   workers x CDS_THREADS=8 threads; `--server gunicorn` runs the image's server before, gunicorn gthread
   with cds.gunicorn_conf, and `--server granian-wsgi` granian's own WSGI interface, for comparison)
   with auth on (trusted issuers = the loopback JWKS), the JWT replay store and
   the audit on a throw-away loopback PostgreSQL (or SQLite: --database sqlite), the repository's rules;
2. starts the fixed reference: bench/fixed_card_app.py (bare Flask, one fixed card: the real service's
   card for the typical example) under gunicorn with 2 sync workers;
3. drives both in turn with the same load: C keep-alive connections (threads in 2 load processes,
   http.client), the example requests round-robin, each with its own signed token (a fresh jti;
   tokens are signed before the clock starts), and prints req/s, p50/p99 and the ratio;
4. sends a long history (two years: 200 pain scores, 400 rounds) to the real service on one connection.

It asserts nothing but that every answer is 200; the figures go to bench/README.md. The load generator
runs on the same cores as the servers, so absolute figures are low; the ratio is what compares.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from bench_core import EVALUATION_DATE, ROOT, URL, examples, long_history_request, pct
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ISS = "https://ehr.bench.example"
KID = "bench-es384"
BENCH = Path(__file__).resolve().parent


# ---- loopback JWKS --------------------------------------------------------------------------------


def start_jwks(private_key: ec.EllipticCurvePrivateKey) -> tuple[ThreadingHTTPServer, str]:
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private_key.public_key()))
    jwk.update({"kid": KID, "alg": "ES384", "use": "sig"})
    body = json.dumps({"keys": [jwk]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="jwks").start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/jwks.json"


def sign(key: ec.EllipticCurvePrivateKey, aud: str) -> str:
    now = int(time.time())
    claims = {"iss": ISS, "aud": aud, "iat": now, "exp": now + 600, "jti": uuid.uuid4().hex}
    return jwt.encode(claims, key, algorithm="ES384", headers={"kid": KID, "typ": "JWT"})


# ---- servers --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def start_server(cmd: list[str], env: dict[str, str], port: int, log: Path, ready: str) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=log.parent)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[0]} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if get(port, ready)[0] in (200, 405):
                return proc
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"{cmd[0]} did not start:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)  # the gunicorn master stops its workers
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---- a throw-away PostgreSQL (the production database; .ci/run starts one the same way) ---------


PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _as_pg(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd  # postgres refuses root


def start_postgres(folder: Path) -> tuple[str, Path]:
    """initdb + pg_ctl start on a free loopback port (fsync off: a benchmark, not a database to keep)."""
    data, port = folder / "pg", free_port()
    data.mkdir()
    if os.geteuid() == 0:
        os.chmod(folder, 0o755)
        subprocess.run(["chown", "postgres:", str(data)], check=True)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "check": True}
    subprocess.run(_as_pg([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"]), **quiet)
    subprocess.run(_as_pg([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(data / "server.log"), "-w", "-t", "60",
                           "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off", "start"]), **quiet)
    return f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", data


def stop_postgres(data: Path) -> None:
    subprocess.run(_as_pg([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# ---- load generator -------------------------------------------------------------------------------


def _load_process(port: int, bodies: list[bytes], threads: int, per_conn: int, offset: int, key_pem: bytes,
                  aud: str, ready: Any, start: Any, out: Any) -> None:
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    jobs = [
        [(bodies[(offset + t * per_conn + i) % len(bodies)],
          {"Content-Type": "application/json", "Authorization": f"Bearer {sign(key, aud)}"})
         for i in range(per_conn)]
        for t in range(threads)
    ]
    results: list[tuple[list[float], Counter[int]]] = []
    lock = threading.Lock()

    def run(requests: list[tuple[bytes, dict[str, str]]]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        latencies: list[float] = []
        statuses: Counter[int] = Counter()
        for body, headers in requests:
            t0 = time.perf_counter()
            conn.request("POST", URL, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            latencies.append((time.perf_counter() - t0) * 1e3)
            statuses[response.status] += 1
        conn.close()
        with lock:
            results.append((latencies, statuses))

    workers = [threading.Thread(target=run, args=(job,)) for job in jobs]
    ready.put(1)
    start.wait()
    t_start = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    t_end = time.monotonic()
    out.put((t_start, t_end, [x for lat, _ in results for x in lat], sum((s for _, s in results), Counter())))


def drive(port: int, bodies: list[bytes], connections: int, per_conn: int, key_pem: bytes, aud: str,
          processes: int = 2, server_pids: list[int] | None = None) -> dict[str, Any]:
    """``connections`` keep-alive connections (threads split over ``processes`` load processes), each
    sending ``per_conn`` requests back to back."""
    ctx = mp.get_context("fork")
    ready, out, start = ctx.Queue(), ctx.Queue(), ctx.Event()
    split = [connections // processes + (1 if i < connections % processes else 0) for i in range(processes)]
    procs = [
        ctx.Process(target=_load_process, args=(port, bodies, n, per_conn, i * 7919, key_pem, aud, ready, start, out))
        for i, n in enumerate(split) if n
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=300)  # every token signed
    cpu_before = tree_cpu_seconds(server_pids or [])
    start.set()
    parts = [out.get(timeout=600) for _ in procs]
    cpu = tree_cpu_seconds(server_pids or []) - cpu_before
    for p in procs:
        p.join()
    latencies = [x for part in parts for x in part[2]]
    statuses: Counter[int] = sum((part[3] for part in parts), Counter())
    elapsed = max(part[1] for part in parts) - min(part[0] for part in parts)
    return {"n": len(latencies), "rps": len(latencies) / elapsed, "p50": pct(latencies, 50), "p99": pct(latencies, 99),
            "max": max(latencies), "statuses": dict(statuses), "cpu_ms": cpu * 1e3 / len(latencies)}


def tree_cpu_seconds(roots: list[int]) -> float:
    """User + system CPU time of these processes and all their descendants (from /proc): what the server
    itself spent, which other processes on a busy machine do not inflate."""
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(stat.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime + stime
    wanted, frontier = set(), set(roots)
    while frontier:
        wanted |= frontier
        frontier = {pid for pid, (ppid, _) in stats.items() if ppid in frontier} - wanted
    return sum(stats[pid][1] for pid in wanted if pid in stats) / os.sysconf("SC_CLK_TCK")


def metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, value = line.rsplit(" ", 1)
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
    return total


_MIGRATE = 'mkdir -p "$PROMETHEUS_MULTIPROC_DIR"; if [ "${CDS_DATABASE_URL-unset}" != "" ]; then cds db upgrade; fi; '
#: how the real service is started: the image's entry point, or other servers for comparison
SERVERS = {
    "image": ["/bin/sh", str(ROOT / "docker" / "entrypoint.sh")],
    "gunicorn": ["/bin/sh", "-c", _MIGRATE + "exec gunicorn --config python:cds.gunicorn_conf cds.wsgi:app"],
    "granian-wsgi": ["/bin/sh", "-c", _MIGRATE + 'exec granian --interface wsgi --http 1 --no-ws --host "$CDS_HOST" '
                     '--port "$CDS_PORT" --workers "$CDS_WORKERS" --blocking-threads "$CDS_THREADS" cds.wsgi:app'],
}
SERVER_NAMES = {
    "image": "sh docker/entrypoint.sh (granian, cds.serve)",
    "gunicorn": "gunicorn gthread (cds.gunicorn_conf, the image's server before)",
    "granian-wsgi": "granian --interface wsgi",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--requests", type=int, default=4800, help="requests per run (default 4800)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each server, in turn (default 2)")
    parser.add_argument("--long-calls", type=int, default=100, help="long-history calls (default 100)")
    parser.add_argument("--workers", type=int, default=2, help="CDS_WORKERS of the real service (default 2)")
    parser.add_argument("--threads", type=int, default=8, help="CDS_THREADS of the real service (default 8)")
    parser.add_argument("--jti-store", choices=["database", "memory"], default="database",
                        help="CDS_JTI_STORE of the real service (default database, as in deploy/)")
    parser.add_argument("--database", choices=["postgres", "sqlite", "none"], default="postgres" if (PG_BIN / "initdb").exists()
                        else "sqlite", help="a throw-away PostgreSQL (default, when installed), a SQLite file, or none "
                        "(no audit; implies --jti-store memory)")
    parser.add_argument("--server", choices=sorted(SERVERS), default="image",
                        help="image: sh docker/entrypoint.sh (default); gunicorn / granian-wsgi: for comparison")
    parser.add_argument("--quick", action="store_true", help="a tenth of the requests, one round")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds, args.long_calls = args.requests // 10, 1, args.long_calls // 5
    per_conn = max(1, args.requests // args.connections)
    bin_dir = Path(sys.executable).parent

    key = ec.generate_private_key(ec.SECP384R1())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    jwks, jwks_url = start_jwks(key)
    reqs = examples()
    bodies = [json.dumps(r).encode() for _, r in reqs]
    typical = json.dumps(next(r for name, r in reqs if name == "bird-dog-28-27")).encode()
    long_body = json.dumps(long_history_request(EVALUATION_DATE)).encode()

    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp_name:
        tmp = Path(tmp_name)
        issuers = tmp / "issuers.json"
        issuers.write_text(json.dumps({"issuers": [{"iss": ISS, "jwks_url": jwks_url}]}))
        pg_data, pg_pids = None, []
        if args.database == "postgres":
            database_url, pg_data = start_postgres(tmp)
            pg_pids = [int((pg_data / "postmaster.pid").read_text().split()[0])]
        elif args.database == "sqlite":
            database_url = f"sqlite:///{tmp / 'cds.sqlite3'}"
        else:
            database_url, args.jti_store = "", "memory"
        real_port, ref_port = free_port(), free_port()
        base = f"http://127.0.0.1:{real_port}"
        env = {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "PYTHONPATH": str(ROOT), "HOME": str(tmp),
            "CDS_HOST": "127.0.0.1", "CDS_PORT": str(real_port),
            "CDS_WORKERS": str(args.workers), "CDS_THREADS": str(args.threads),
            "CDS_AUTH": "on", "CDS_TRUSTED_ISSUERS": str(issuers), "CDS_ALLOW_HTTP_JWKS": "1",  # loopback JWKS
            "CDS_PUBLIC_BASE_URL": base,
            "CDS_DATABASE_URL": database_url, "CDS_JTI_STORE": args.jti_store,
            "CDS_AUDIT_KEY": "bench-only-audit-key-0123456789", "CDS_RULES_DIR": str(ROOT / "rules"),
            "CDS_EVALUATION_DATE": EVALUATION_DATE.isoformat(), "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
        }
        real = start_server(SERVERS[args.server], env, real_port, tmp / "real.log", "/readyz")
        # warm-up (both workers, every example), then the fixed card: the real answer to the typical example
        warm = drive(real_port, bodies, args.connections, max(3, len(bodies) // args.connections + 1), key_pem, base + URL)
        conn = http.client.HTTPConnection("127.0.0.1", real_port, timeout=30)
        conn.request("POST", URL, body=typical, headers={"Content-Type": "application/json",
                                                          "Authorization": f"Bearer {sign(key, base + URL)}"})
        answer = conn.getresponse()
        card = json.loads(answer.read())["cards"][0]
        conn.close()
        (tmp / "card.json").write_text(json.dumps(card))
        ref_env = {"PATH": env["PATH"], "HOME": str(tmp), "BENCH_CARD_FILE": str(tmp / "card.json")}
        ref_cmd = [str(bin_dir / "gunicorn"), "--chdir", str(BENCH), "--bind", f"127.0.0.1:{ref_port}",
                   "--workers", "2", "--worker-class", "sync", "fixed_card_app:app"]
        ref = start_server(ref_cmd, ref_env, ref_port, tmp / "reference.log", URL)
        drive(ref_port, bodies, args.connections, 20, key_pem, base + URL)  # warm-up

        load_before = os.getloadavg()[0]
        runs: dict[str, list[dict[str, Any]]] = {"real": [], "reference": []}
        for _ in range(args.rounds):
            runs["real"].append(drive(real_port, bodies, args.connections, per_conn, key_pem, base + URL,
                                      server_pids=[real.pid, *pg_pids]))
            runs["reference"].append(drive(ref_port, bodies, args.connections, per_conn, key_pem, base + URL,
                                           server_pids=[ref.pid]))
        stop_server(ref)

        # the long history, one connection, one call at a time
        conn = http.client.HTTPConnection("127.0.0.1", real_port, timeout=60)
        long_ms, long_statuses = [], Counter()
        for _ in range(args.long_calls):
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {sign(key, base + URL)}"}
            t0 = time.perf_counter()
            conn.request("POST", URL, body=long_body, headers=headers)
            response = conn.getresponse()
            response.read()
            long_ms.append((time.perf_counter() - t0) * 1e3)
            long_statuses[response.status] += 1
        conn.close()
        load_after = os.getloadavg()[0]
        metrics = get(real_port, "/metrics")[1].decode()
        stop_server(real)
        if pg_data is not None:
            stop_postgres(pg_data)
        jwks.shutdown()

    sent = warm["n"] + 1 + sum(r["n"] for r in runs["real"]) + args.long_calls  # warm-up, card, runs, long history
    counted = metric_sum(metrics, "cds_requests_total", endpoint="/cds-services/<service_id>")
    print(f"HTTP benchmark {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, Python {platform.python_version()}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs; load average {load_before:.2f} before the runs")
    print(f"{args.connections} keep-alive connections (2 load processes on the same machine), "
          f"{per_conn * args.connections} requests per run, the {len(bodies)} examples round-robin, a fresh ES384 token each")
    print(f"real:      {SERVER_NAMES[args.server]}, {args.workers} workers x {args.threads} threads, auth on, jti store "
          f"{args.jti_store}, audit on "
          f"{ {'postgres': 'PostgreSQL 15 (loopback, fsync off)', 'sqlite': 'SQLite', 'none': 'nothing (off)'}[args.database]}")
    print("reference: bare Flask, one fixed card, gunicorn 2 sync workers")
    print()
    print(f"{'':10} {'run':>3} {'requests':>8} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
          f"{'cpu ms/req':>10}  statuses")
    for name in ("real", "reference"):
        for i, r in enumerate(runs[name], 1):
            print(f"{name:10} {i:3d} {r['n']:8d} {r['rps']:8.0f} {r['p50']:7.2f} {r['p99']:7.2f} {r['max']:7.1f} "
                  f"{r['cpu_ms']:10.2f}  {r['statuses']}")
    real_rps = sum(r["rps"] for r in runs["real"]) / len(runs["real"])
    ref_rps = sum(r["rps"] for r in runs["reference"]) / len(runs["reference"])
    real_p99 = max(r["p99"] for r in runs["real"])
    print()
    print(f"ratio req/s real / reference: {real_rps / ref_rps:.2f}x  (mean of the runs: {real_rps:.0f} vs {ref_rps:.0f}; "
          f"goal >= 0.6x)")
    real_cpu = sum(r["cpu_ms"] for r in runs["real"]) / len(runs["real"])
    ref_cpu = sum(r["cpu_ms"] for r in runs["reference"]) / len(runs["reference"])
    print(f"server CPU per request (server processes{' + PostgreSQL' if pg_pids else ''}): real {real_cpu:.2f} ms, "
          f"reference {ref_cpu:.2f} ms: "
          f"reference / real {ref_cpu / real_cpu:.2f}x (the req/s ratio if the servers had the cores to themselves)")
    print(f"real p99 at {args.connections} connections: {real_p99:.1f} ms (worst run; goal < 25 ms)")
    print(f"long history (200 pain, 400 rounds, {len(long_body) // 1024} KiB), 1 connection, {args.long_calls} calls: "
          f"p50 {pct(long_ms, 50):.1f} ms, p99 {pct(long_ms, 99):.1f} ms  {dict(long_statuses)}")
    print(f"/metrics (multiprocess, {args.workers} workers) counted {counted:.0f} of the {sent} hook calls sent "
          f"(warm-up included); load average {load_after:.2f} at the end")
    bad = [r for rs in runs.values() for r in rs if set(r["statuses"]) != {200}] + ([1] if set(long_statuses) != {200} else [])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
