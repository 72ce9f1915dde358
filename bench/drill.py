"""Scale-out drill on loopback (issue 13 point 5): two instances behind nginx sharing one PostgreSQL.

`make drill` (or `.venv/bin/python bench/drill.py [--quick] [--connections C] [--before S] [--down S] [--after S]
[--keep DIR] [--rules DIR]`; `--preflight` only checks that nginx and PostgreSQL are installed):

1. a throw-away PostgreSQL (bench_http.start_postgres), `cds db upgrade` once, a loopback JWKS
   (bench_http.start_jwks: an ES384 key made here);
2. TWO instances of the production entry point exactly as the image runs it (docker/entrypoint.sh:
   `cds db upgrade`, then the server), each in its own process group, on distinct loopback ports, with
   auth on (trusted issuer = the loopback JWKS), the JWT replay store and the audit on the shared
   PostgreSQL, the repository's rules, and the same CDS_PUBLIC_BASE_URL: nginx's, which the EHR calls;
3. nginx (a generated configuration in a temp folder, its own pid/log/temp paths, `daemon off`, the
   current user) with an upstream of the two instances, `proxy_next_upstream error timeout`, short connect
   timeouts; each answer carries the upstream(s) nginx tried (X-Upstream), so the client sees any retry;
4. load through nginx: C keep-alive connections (threads), each sending hook calls
   (fhir_examples/requests/bird-dog-28-27.json) and, one request in four, a feedback POST for a new card
   uuid; every request has its own freshly signed token (a unique jti). A feedback POST that fails is
   sent again, as an EHR would: the same body with a fresh token (the service stores a repeated report
   once), until it is acknowledged;
5. after --before seconds, kill -9 instance A's process group (server and workers), keep the load
   running, restart A through the entry point --down seconds later, keep going --after seconds once A
   is ready, stop; stop nginx and the instances gracefully, then read the database;
6. prints requests sent / answered / errors by status for the whole run and for each phase, what nginx
   did in the outage, feedback acknowledged (2xx) vs rows stored in the database (must be equal: the same
   card uuids), and a token used once on A then replayed directly to B, to A and through nginx (must be
   401 each time; a fresh token sent directly to B, 200, shows the 401 is the replay).

Exit code: 0 when every invariant holds, 1 when one fails, 2 when nginx or PostgreSQL is not installed
(nothing is installed silently). Needs no root; as root PostgreSQL runs as the `postgres` user.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench_core import EVALUATION_DATE, ROOT, URL, pct
from bench_http import ISS, PG_BIN, free_port, get, sign, start_jwks, start_postgres, stop_postgres
from cryptography.hazmat.primitives.asymmetric import ec

SERVICE_ID = URL.rsplit("/", 1)[1]
FEEDBACK_URL = f"{URL}/feedback"
TYPICAL = ROOT / "fhir_examples" / "requests" / "bird-dog-28-27.json"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
INSTALL_HINT = "apt-get install -y nginx postgresql"
FEEDBACK_EVERY = 4  # one request in four is a feedback POST
STALE_WINDOW = 1.0  # seconds after the kill in which nginx may still use a keep-alive connection to the dead A
FEEDBACK_ATTEMPTS = 40  # a failed feedback POST is sent again, 0.25 s apart, up to this many times


# ---- processes ------------------------------------------------------------------------------------


@dataclass
class Instance:
    """One instance of the production entry point, in its own process group (so kill -9 takes the
    server and its workers at once)."""

    name: str
    port: int
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        out = self.log.open("a")
        out.write(f"---- start {self.starts} ----\n")
        out.flush()
        self.proc = subprocess.Popen(["/bin/sh", str(ENTRYPOINT)], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                     cwd=self.log.parent, start_new_session=True)
        out.close()

    def wait_ready(self, timeout: float = 180) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"instance {self.name} exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if get(self.port, "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"instance {self.name} not ready after {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def group(self) -> list[int]:
        """The live processes of this instance's process group."""
        if self.proc is None:
            return []
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.proc.pid and fields[0] != "Z":  # pgrp; zombies are dead already
                pids.append(int(stat.parent.name))
        return pids

    def kill9(self) -> tuple[int, float, float]:
        """SIGKILL to the whole process group: how many processes it held, the instant of the signal and
        the instant all of them were gone (time.monotonic())."""
        assert self.proc is not None
        victims = self.group()
        t_kill = time.monotonic()
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        deadline = time.monotonic() + 10
        while self.group() and time.monotonic() < deadline:
            time.sleep(0.01)  # the workers are reaped by init once their master is gone
        return len(victims), t_kill, time.monotonic()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # the master stops its workers
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def stop_serving(nginx_proc: subprocess.Popen | None, instances: list[Instance]) -> None:
    if nginx_proc is not None and nginx_proc.poll() is None:
        nginx_proc.send_signal(signal.SIGQUIT)  # graceful
        try:
            nginx_proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(nginx_proc.pid, signal.SIGKILL)
            nginx_proc.wait()
    for inst in instances:
        inst.stop()


def nginx_config(folder: Path, port: int, upstreams: list[str]) -> Path:
    """A configuration of nginx for this drill only: every path inside ``folder``."""
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""  # else the workers run as nobody
    servers = "\n".join(f"        server {u} max_fails=1 fail_timeout=1s;" for u in upstreams)
    conf = folder / "nginx.conf"
    conf.write_text(f"""# generated by bench/drill.py
{user}daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    log_format drill '$msec $status "$request" upstream=$upstream_addr upstream_status=$upstream_status '
                     'request_time=$request_time';
    access_log {folder}/access.log drill;
    client_body_temp_path {folder}/client_body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    client_max_body_size 2m;
    client_body_buffer_size 1m;  # a hook call (18 KiB) stays in memory

    upstream lbp_cds {{
{servers}
        keepalive 32;
    }}

    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://lbp_cds;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_next_upstream error timeout;
            proxy_connect_timeout 1s;
            proxy_read_timeout 30s;
            add_header X-Upstream $upstream_addr always;
        }}
    }}
}}
""")
    return conf


def start_nginx(nginx: str, folder: Path, conf: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([nginx, "-p", str(folder), "-e", str(folder / "error.log"), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=(folder / "stderr.log").open("w"), start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"nginx exited {proc.returncode}:\n{(folder / 'error.log').read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            time.sleep(0.1)
    raise SystemExit("nginx did not start")


# ---- load -----------------------------------------------------------------------------------------


@dataclass
class Result:
    kind: str  # "hook" or "feedback"
    t0: float  # time.monotonic() at send
    t1: float  # ... at answer (or error)
    status: int  # HTTP status; 0 = no (whole) answer: see error
    upstream: str  # X-Upstream: the instance(s) nginx tried, in order
    attempt: int = 1  # feedback: 1 = first send, 2.. = sent again after a failure
    card: str = ""
    stored: int | None = None  # feedback: the answer's "stored" (new rows)
    answer_card: str = ""  # hook call answered 200: its first card's uuid (the audit's key)
    error: str = ""  # status 0: the exception (e.g. RemoteDisconnected, IncompleteRead)


@dataclass
class Load:
    port: int
    key: ec.EllipticCurvePrivateKey
    public: str  # the public base URL (nginx): every token's audience starts with it
    hook_body: bytes
    stop: threading.Event = field(default_factory=threading.Event)
    results: list[Result] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _send(self, conn: http.client.HTTPConnection | None, path: str, body: bytes
              ) -> tuple[http.client.HTTPConnection | None, Result, bytes]:
        """One POST on ``conn`` (a new connection when None) with a fresh token: the connection to use
        next (None after an error or a close), the result and the body."""
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {sign(self.key, self.public + path)}"}
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        kind = "feedback" if path == FEEDBACK_URL else "hook"
        upstream = ""
        t0 = time.monotonic()
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            upstream = response.getheader("X-Upstream", "")
            data = response.read()
        except (OSError, http.client.HTTPException) as e:  # no answer, or an answer cut short
            conn.close()
            return None, Result(kind, t0, time.monotonic(), 0, upstream, error=type(e).__name__), b""
        result = Result(kind, t0, time.monotonic(), response.status, upstream)
        if response.will_close:
            conn.close()
            return None, result, data
        return conn, result, data

    def client(self, index: int) -> None:
        conn: http.client.HTTPConnection | None = None
        i = index  # the connections do not send their feedback POSTs in step
        while not self.stop.is_set():
            i += 1
            if i % FEEDBACK_EVERY:
                conn, result, data = self._send(conn, URL, self.hook_body)
                cards = json.loads(data).get("cards") if result.status == 200 else None
                if cards:
                    result.answer_card = cards[0]["uuid"]
                with self.lock:
                    self.results.append(result)
                continue
            card = str(uuid.uuid4())
            item = {"card": card, "outcomeTimestamp": dt.datetime.now(dt.timezone.utc).isoformat()}
            if i % (2 * FEEDBACK_EVERY):
                item.update(outcome="accepted", acceptedSuggestions=[{"id": str(uuid.uuid4())}])
            else:
                item.update(outcome="overridden")
            body = json.dumps({"feedback": [item]}).encode()
            for attempt in range(1, FEEDBACK_ATTEMPTS + 1):  # finished even after stop: an EHR retries
                conn, result, data = self._send(conn, FEEDBACK_URL, body)
                result.attempt, result.card = attempt, card
                if 200 <= result.status < 300:
                    result.stored = json.loads(data)["stored"]
                with self.lock:
                    self.results.append(result)
                if 200 <= result.status < 300:
                    break
                time.sleep(0.25)
        if conn is not None:
            conn.close()


def outcome(r: Result) -> str:
    return str(r.status) if r.status else f"cut short ({r.error})"


def counts(results: list[Result]) -> str:
    return ", ".join(f"{k} x{n}" for k, n in sorted(Counter(outcome(r) for r in results).items())) or "none"


def summary(results: list[Result]) -> str:
    ok = sum(1 for r in results if 200 <= r.status < 300)
    errors = ", ".join(f"{k} x{n}" for k, n in sorted(Counter(outcome(r) for r in results
                                                              if not 200 <= r.status < 300).items())) or "none"
    ms = [(r.t1 - r.t0) * 1e3 for r in results]
    lat = f"{pct(ms, 50):7.1f} {pct(ms, 99):7.1f} {max(ms):7.1f}" if ms else f"{'-':>7} {'-':>7} {'-':>7}"
    return f"{len(results):6d} {ok:6d}  {lat}  {errors}"


def last_upstream(r: Result) -> str:
    """The instance that answered: the last upstream nginx tried ('' when nginx did not answer)."""
    return r.upstream.split(",")[-1].strip()


def served_by(results: list[Result], instances: list[Instance]) -> str:
    last = Counter(last_upstream(r) for r in results)
    passed = sum(1 for r in results if "," in r.upstream)
    return "  ".join(f"{i.name} {last.get(i.addr, 0):5d}" for i in instances) + f"  passed on {passed}"


# ---- the drill ------------------------------------------------------------------------------------


def replay_check(key: ec.EllipticCurvePrivateKey, public: str, body: bytes, a: Instance, b: Instance, nginx_port: int
                 ) -> list[tuple[str, int, int]]:
    """(what, expected, got): a token used once directly on A, then replayed to B, to A and through nginx;
    a fresh token directly to B for comparison."""

    def post(port: int, token: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("POST", URL, body=body, headers={"Content-Type": "application/json",
                                                          "Authorization": f"Bearer {token}"})
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    token = sign(key, public + URL)
    return [
        ("token used once, directly on A", 200, post(a.port, token)),
        ("the same token replayed directly to B", 401, post(b.port, token)),
        ("the same token replayed to A", 401, post(a.port, token)),
        ("the same token replayed through nginx", 401, post(nginx_port, token)),
        ("a fresh token directly to B", 200, post(b.port, sign(key, public + URL))),
    ]


def stored_rows(database_url: str) -> tuple[list[str], set[str]]:
    """The card uuids of the feedback rows, and those of the audited cards."""
    from sqlalchemy import create_engine, select

    from cds.storage.models import audit_card, feedback

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            cards = list(conn.execute(select(feedback.c.card_uuid).where(feedback.c.service_id == SERVICE_ID)).scalars())
            audited = set(conn.execute(select(audit_card.c.card_uuid)).scalars())
    finally:
        engine.dispose()
    return cards, audited


def missing_binaries(nginx: str | None) -> list[str]:
    missing = []
    if not nginx or not os.access(nginx, os.X_OK):
        missing.append("nginx")
    if not all((PG_BIN / b).exists() for b in ("initdb", "pg_ctl")):
        missing.append(f"PostgreSQL ({PG_BIN}/initdb, pg_ctl)")
    return missing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=8, help="keep-alive connections through nginx (default 8)")
    parser.add_argument("--before", type=float, default=8.0, help="seconds of load before the kill (default 8)")
    parser.add_argument("--down", type=float, default=2.0, help="seconds A stays down before its restart (default 2)")
    parser.add_argument("--after", type=float, default=8.0, help="seconds of load once A is ready again (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="CDS_WORKERS of each instance (default 2)")
    parser.add_argument("--rules", type=Path, default=ROOT / "rules", help="CDS_RULES_DIR of the instances "
                        "(default: the repository's rules/)")
    parser.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx", help="the nginx binary")
    parser.add_argument("--keep", type=Path, help="copy the logs (nginx, instances, PostgreSQL) to this folder")
    parser.add_argument("--quick", action="store_true", help="3 s before the kill, 1 s down, 4 s after the restart, "
                        "4 connections")
    parser.add_argument("--preflight", action="store_true", help="only check that nginx and PostgreSQL are installed")
    args = parser.parse_args()
    if args.quick:
        args.before, args.down, args.after, args.connections = 3.0, 1.0, 4.0, 4
    missing = missing_binaries(args.nginx)
    if missing:
        print(f"drill: not installed: {', '.join(missing)}. Nothing is installed for you; on Debian/Ubuntu:\n"
              f"    {INSTALL_HINT}\n(PostgreSQL is looked for in {PG_BIN}; nginx with --nginx or on PATH)", file=sys.stderr)
        return 2
    if args.preflight:
        print(f"drill: nginx ({args.nginx}) and PostgreSQL ({PG_BIN}) are installed")
        return 0
    nginx_version = subprocess.run([args.nginx, "-v"], capture_output=True, text=True).stderr.strip().split("/")[-1]

    key = ec.generate_private_key(ec.SECP384R1())
    jwks, jwks_url = start_jwks(key)
    hook_body = TYPICAL.read_bytes()
    bin_dir = Path(sys.executable).parent
    instances: list[Instance] = []
    nginx_proc: subprocess.Popen | None = None
    pg_data: Path | None = None
    load: Load | None = None
    with tempfile.TemporaryDirectory(prefix="drill-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            database_url, pg_data = start_postgres(tmp)
            nginx_port = free_port()
            public = f"http://127.0.0.1:{nginx_port}"  # what the EHR calls: every token's audience
            issuers = tmp / "issuers.json"
            issuers.write_text(json.dumps({"issuers": [{"iss": ISS, "jwks_url": jwks_url}]}))
            base_env = {
                "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
                "PYTHONPATH": str(ROOT), "HOME": str(tmp), "CDS_HOST": "127.0.0.1",
                "CDS_DATABASE_URL": database_url, "CDS_AUTH": "on", "CDS_TRUSTED_ISSUERS": str(issuers),
                "CDS_ALLOW_HTTP_JWKS": "1",  # the loopback JWKS is plain http
                "CDS_PUBLIC_BASE_URL": public, "CDS_JTI_STORE": "database",
                "CDS_AUDIT_KEY": "drill-only-audit-key-0123456789", "CDS_RULES_DIR": str(args.rules.resolve()),
                "CDS_EVALUATION_DATE": EVALUATION_DATE.isoformat(), "CDS_WORKERS": str(args.workers),
            }
            upgrade = subprocess.run([str(bin_dir / "cds"), "db", "upgrade"], env=base_env, capture_output=True, text=True)
            if upgrade.returncode:
                raise SystemExit(f"cds db upgrade failed:\n{upgrade.stdout}{upgrade.stderr}")
            for name in ("A", "B"):
                port = free_port()
                env = {**base_env, "CDS_PORT": str(port), "PROMETHEUS_MULTIPROC_DIR": str(tmp / name / "metrics"),
                       "HOME": str(tmp / name)}  # its own home and working folder (the server's control socket)
                (tmp / name).mkdir()
                instances.append(Instance(name, port, env, tmp / name / "instance.log"))
            a, b = instances
            for inst in instances:
                inst.start()
            for inst in instances:
                inst.wait_ready()
            nginx_proc = start_nginx(args.nginx, tmp / "nginx", nginx_config(tmp / "nginx", nginx_port, [a.addr, b.addr]),
                                     nginx_port)
            warm = Load(nginx_port, key, public, hook_body)
            for inst in instances:  # every worker imported and warm before the clock starts
                for _ in range(4 * args.workers):
                    warm.port = inst.port
                    assert warm._send(None, URL, hook_body)[1].status == 200, f"warm-up call to {inst.name} failed"

            load = Load(nginx_port, key, public, hook_body)
            clients = [threading.Thread(target=load.client, args=(i,), name=f"load-{i}", daemon=True)
                       for i in range(args.connections)]
            t_start = time.monotonic()
            for c in clients:
                c.start()
            time.sleep(args.before)
            killed, t_kill, t_dead = a.kill9()
            time.sleep(args.down)
            t_restart = time.monotonic()
            a.start()  # through the entry point again: `cds db upgrade` (nothing to do), then the server
            a.wait_ready()
            t_ready = time.monotonic()
            time.sleep(args.after)
            t_stop = time.monotonic()
            load.stop.set()
            for c in clients:
                c.join()
            t_end = time.monotonic()

            replays = replay_check(key, public, hook_body, a, b, nginx_port)
            stop_serving(nginx_proc, instances)  # a graceful stop: the instances write what their audit has queued
            cards, audited = stored_rows(database_url)
        finally:
            if load is not None:
                load.stop.set()  # e.g. A did not come back: the clients stop too
            stop_serving(nginx_proc, instances)
            if pg_data is not None:
                stop_postgres(pg_data)
            jwks.shutdown()
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                for log in [*tmp.glob("*/*.log"), *tmp.glob("nginx/*.conf")]:
                    shutil.copy(log, args.keep / f"{log.parent.name}-{log.name}")

    results = load.results
    if args.keep:
        with (args.keep / "results.jsonl").open("w") as out:  # one line per request, times from the start of the load
            for r in results:
                out.write(json.dumps({**r.__dict__, "t0": round(r.t0 - t_start, 4), "t1": round(r.t1 - t_start, 4)}) + "\n")
    before = [r for r in results if r.t1 < t_kill]
    outage = [r for r in results if r.t1 >= t_kill and r.t0 <= t_ready]
    after = [r for r in results if r.t0 > t_ready]
    # sent before A's processes were all gone, answered after the kill, by A (the last upstream nginx tried)
    in_flight = [r for r in results if r.t0 < t_dead and r.t1 >= t_kill and last_upstream(r) == a.addr]
    # sent once A was gone, on a keep-alive connection nginx still held to it (nginx had not yet seen it close)
    stale = [r for r in results if t_dead <= r.t0 and r.t1 < t_dead + STALE_WINDOW and r.upstream == a.addr
             and not 200 <= r.status < 300]
    errors = [r for r in results if not 200 <= r.status < 300]
    slow = [r for r in outage if r.t1 - r.t0 > 1.0]

    print(f"Scale-out drill {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, Python {platform.python_version()}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end")
    print(f"nginx {nginx_version} (proxy_next_upstream error timeout, proxy_connect_timeout 1s, max_fails=1 fail_timeout=1s)"
          f" -> A, B: docker/entrypoint.sh, {args.workers} workers each, auth on, jti store and audit on one PostgreSQL 15")
    print(f"load: {args.connections} keep-alive connections through nginx: hook calls ({TYPICAL.name}) and, 1 in "
          f"{FEEDBACK_EVERY}, a feedback POST for a new card uuid; a fresh ES384 token (unique jti) per request")
    print(f"timeline: load from 0.0 s; kill -9 of A's process group ({killed} processes) at {t_kill - t_start:.2f} s, "
          f"all gone at {t_dead - t_start:.2f} s; A restarted through the entry point at {t_restart - t_start:.1f} s, "
          f"ready at {t_ready - t_start:.1f} s (outage {t_ready - t_kill:.1f} s); load stopped at {t_stop - t_start:.1f} s, "
          f"last answer at {t_end - t_start:.1f} s")
    print()
    print(f"{'':34} {'sent':>6} {'2xx':>6}  {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}  errors by status")
    for label, part in (("before the kill", before), ("outage (kill to A ready)", outage), ("after the restart", after),
                        ("whole run", results)):
        for kind in ("hook", "feedback"):
            print(f"{label + ', ' + kind:34} {summary([r for r in part if r.kind == kind])}")
    print("(feedback rows count every attempt: a failed POST is sent again)")
    print()
    print("answered by (the last upstream nginx tried) and passed on (nginx tried A, then B):")
    for label, part in (("before the kill", before), ("outage", outage), ("after the restart", after)):
        print(f"  {label:18} {served_by(part, instances)}")
    passed = [r for r in outage if "," in r.upstream]
    print("nginx in the outage, what the client saw:")
    print(f"  {len(in_flight)} requests in flight on A at the kill: {counts(in_flight)} (a POST already sent is never "
          f"passed on to B: not idempotent; cut short = A died while nginx was relaying its answer)")
    print(f"  {len(stale)} sent after A was gone on a keep-alive connection nginx still held to it: {counts(stale)} "
          f"(sent, then reset: not passed on either)")
    print(f"  {len(passed)} found A refusing connections and were passed to B: {counts(passed)}")
    if slow:
        by = Counter(({a.addr: "A", b.addr: "B"}.get(last_upstream(r), r.upstream or "no answer"), r.status) for r in slow)
        print(f"  {len(slow)} answers in the outage took over 1 s (max {max(r.t1 - r.t0 for r in slow):.1f} s): "
              + ", ".join(f"{n} x {st} from {who}" for (who, st), n in sorted(by.items()))
              + " (the restarted A listens before its workers have loaded the app: those requests wait in its backlog)")

    acked = {r.card for r in results if r.kind == "feedback" and 200 <= r.status < 300}
    items = {r.card for r in results if r.kind == "feedback"}
    first_failed = [r for r in results if r.kind == "feedback" and r.attempt == 1 and not 200 <= r.status < 300]
    again = [r for r in results if r.kind == "feedback" and r.attempt > 1 and 200 <= r.status < 300]
    said_new = sum(r.stored or 0 for r in results if r.kind == "feedback")
    stored = set(cards)
    equal = stored == acked and len(cards) == len(acked)
    print()
    print(f"feedback: {len(items)} items sent, {len(acked)} acknowledged (2xx), {len(cards)} rows stored in PostgreSQL: "
          f"{'EQUAL (the same card uuids)' if equal else 'NOT EQUAL'}")
    print(f"  first attempts that failed: {len(first_failed)} "
          f"{'(' + counts(first_failed) + ')' if first_failed else ''}; sent again and acknowledged: "
          f"{len(again)}, {sum(1 for r in again if r.stored == 0)} of them answered stored=0 (the failed attempt had been "
          f"stored, only its answer was lost; the repeat was not stored twice)")
    print(f"  answers that said new: {said_new}; never acknowledged: {len(items - acked)}; stored, not acknowledged: "
          f"{len(stored - acked)}; acknowledged, not stored: {len(acked - stored)}")
    answered = [r for r in results if r.kind == "hook" and r.status == 200 and r.answer_card]
    unaudited = [r for r in answered if r.answer_card not in audited]
    where = Counter(("A before the kill" if last_upstream(r) == a.addr and r.t1 < t_dead else
                     "elsewhere") for r in unaudited)
    lost = f" ({', '.join(f'{n} answered by {w}' for w, n in where.items())})" if unaudited else ""
    if where.get("A before the kill"):
        lost += ": the audit is written on a background thread; a kill -9 loses what it had queued"
    print(f"audit (informational): {len(answered) - len(unaudited)} of the {len(answered)} hook calls answered 200 are in "
          f"audit_card; not there: {len(unaudited)}{lost}")
    print("replay (the jti store is the shared database):")
    for what, expected, got in replays:
        print(f"  {what:40} -> {got} (expected {expected})")

    failures = []
    if not {a.addr, b.addr} <= {last_upstream(r) for r in before}:
        failures.append("both instances did not answer before the kill")
    if not any(last_upstream(r) == a.addr for r in after):
        failures.append("A answered nothing through nginx after its restart")
    beyond = [r for r in errors if r not in in_flight and r not in stale]
    if beyond:
        failures.append(f"{len(beyond)} errors beyond the requests in flight on A at the kill or sent to it just after: "
                        f"{dict(Counter(outcome(r) + ' via ' + (r.upstream or 'no upstream') for r in beyond))}")
    if not equal:
        failures.append("feedback acknowledged != stored")
    if items - acked:
        failures.append(f"{len(items - acked)} feedback items never acknowledged")
    failures += [f"{what}: {got}, expected {expected}" for what, expected, got in replays if got != expected]
    print("invariants: " + ("all held" if not failures else "FAILED: " + "; ".join(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
