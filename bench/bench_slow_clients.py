"""Slow clients against the production entry point (issue 12 point 1), over loopback.

`.venv/bin/python bench/bench_slow_clients.py [--headers 1000] [--bodies 100] [--seconds 40] [--server image]`:

1. raises this process's open-file limit (RLIMIT_NOFILE) to its hard limit;
2. starts the server: ``image`` = ``sh docker/entrypoint.sh`` as the Docker image runs it (``cds db upgrade``,
   then the production server), or for comparison ``gunicorn`` (gunicorn gthread with
   ``cds.gunicorn_conf``, the image's server before) or ``nginx`` (that gunicorn behind a loopback nginx
   with ``docker/nginx.conf``'s timeouts and buffering; needs the ``nginx`` binary); auth off (slow clients
   never get as far as a token), the SQLite audit, the repository's rules;
3. opens ``--headers`` connections that send a request line and then one header byte per second without
   ever ending the headers, and ``--bodies`` connections that send complete headers of a hook call with
   ``Content-Length: 1000000`` and then one body byte per second; a connection the server closes is
   opened again at once (an attacker keeps the count up), and the reopenings are counted;
4. while they are open, probes ``GET /healthz`` and a real hook call (``bird-dog-28-27``) one after the
   other on fresh connections, each with a deadline (``--bound``, default 2 s), and prints the answered
   share, p50/max latency, and how many slow connections were open during the probes.

It asserts nothing; tests/test_slow_clients.py runs the same harness with fewer connections and asserts.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
URL = "/cds-services/lbp-exercise-progression"
TYPICAL = ROOT / "fhir_examples" / "requests" / "bird-dog-28-27.json"
EVALUATION_DATE = json.loads((ROOT / "fhir_examples" / "config.json").read_text())["evaluationDate"]


def raise_nofile(wanted: int) -> int:
    """The soft open-file limit raised towards ``wanted`` (never above the hard limit); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = soft if soft >= wanted else (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard))
    if target != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the slow connections --------------------------------------------------------------------------


@dataclass
class _Slow:
    kind: str  # "header" or "body"
    sock: socket.socket
    sent: int = 0


@dataclass
class SlowClients:
    """``headers`` slow-header and ``bodies`` slow-body connections to 127.0.0.1:``port``, dripping one byte
    per connection every ``interval`` seconds from a background thread until :meth:`stop`."""

    port: int
    headers: int
    bodies: int
    interval: float = 1.0
    opened: int = 0
    reopened: int = 0
    refused: int = 0  # connect attempts that failed (the listen queue full, or a reset)
    _conns: dict[int, _Slow] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def _first_bytes(self, kind: str) -> bytes:
        if kind == "header":
            return b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
        return (f"POST {URL} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: 1000000\r\n\r\n").encode() + b"{"

    def _open(self, kind: str) -> bool:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(5)
        try:
            sock.connect(("127.0.0.1", self.port))
            sock.sendall(self._first_bytes(kind))
        except OSError:
            sock.close()
            self.refused += 1
            return False
        sock.setblocking(False)
        with self._lock:
            self._conns[sock.fileno()] = _Slow(kind, sock)
        self.opened += 1
        return True

    def open_count(self) -> dict[str, int]:
        with self._lock:
            kinds = [c.kind for c in self._conns.values()]
        return {"header": kinds.count("header"), "body": kinds.count("body")}

    def start(self) -> SlowClients:
        for _ in range(self.headers):
            self._open("header")
        for _ in range(self.bodies):
            self._open("body")
        self._thread = threading.Thread(target=self._drip, name="slow-clients", daemon=True)
        self._thread.start()
        return self

    def _drip(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                conns = list(self._conns.values())
            closed: list[_Slow] = []
            for conn in conns:
                try:
                    # closed by the server (b""), or answered (408/400/413) before closing
                    data = conn.sock.recv(4096)
                    if not data or data.startswith(b"HTTP/"):
                        closed.append(conn)
                        continue
                except BlockingIOError:
                    pass  # nothing from the server: still waiting for us
                except OSError:
                    closed.append(conn)
                    continue
                try:
                    conn.sock.send(b"a" if conn.kind == "header" else b" ")
                    conn.sent += 1
                except OSError:
                    closed.append(conn)
            for conn in closed:
                with self._lock:
                    self._conns.pop(conn.sock.fileno(), None)
                conn.sock.close()
            for conn in closed:
                if self._stop.is_set():
                    break
                if self._open(conn.kind):
                    self.reopened += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            for conn in self._conns.values():
                conn.sock.close()
            self._conns.clear()


# ---- probes -----------------------------------------------------------------------------------------


def call(port: int, method: str, path: str, body: bytes | None, timeout: float) -> tuple[int | None, float]:
    """(status or None on timeout/error, seconds) of one request on a fresh connection."""
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, time.monotonic() - t0
    except OSError:
        return None, time.monotonic() - t0
    finally:
        conn.close()


@dataclass
class ProbeResult:
    name: str
    statuses: list[int | None] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def answered(self, bound: float) -> int:
        return sum(1 for s, t in zip(self.statuses, self.seconds, strict=True) if s == 200 and t <= bound)

    def line(self, bound: float) -> str:
        ordered = sorted(self.seconds)
        p50 = ordered[len(ordered) // 2] * 1e3 if ordered else float("nan")
        worst = ordered[-1] * 1e3 if ordered else float("nan")
        return (f"{self.name:10} {self.answered(bound):3d}/{len(self.statuses):<3d} answered 200 within {bound:.1f} s; "
                f"p50 {p50:7.1f} ms, max {worst:7.1f} ms; statuses {dict(Counter(self.statuses))}")


def probe(port: int, seconds: float, bound: float, body: bytes, pause: float = 0.25,
          clients: SlowClients | None = None) -> tuple[ProbeResult, ProbeResult, list[dict[str, int]]]:
    """``/healthz`` and a hook call, alternately, for ``seconds``; the open slow connections at each probe."""
    health, hook, open_counts = ProbeResult("/healthz"), ProbeResult("hook call"), []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for result, method, path, data in ((health, "GET", "/healthz", None), (hook, "POST", URL, body)):
            status, took = call(port, method, path, data, timeout=bound)
            result.statuses.append(status)
            result.seconds.append(took)
            if clients is not None:
                open_counts.append(clients.open_count())
        time.sleep(pause)
    return health, hook, open_counts


# ---- servers ----------------------------------------------------------------------------------------


def server_env(tmp: Path, port: int, rules_dir: Path, workers: int = 2, threads: int = 8) -> dict[str, str]:
    bin_dir = Path(sys.executable).parent
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PYTHONPATH": str(ROOT), "HOME": str(tmp),
        "CDS_HOST": "127.0.0.1", "CDS_PORT": str(port),
        "CDS_WORKERS": str(workers), "CDS_THREADS": str(threads),
        "CDS_AUTH": "off", "CDS_RULES_DIR": str(rules_dir), "CDS_RULES_POLL_SECONDS": "0",
        "CDS_EVALUATION_DATE": EVALUATION_DATE,
        "CDS_DATABASE_URL": f"sqlite:///{tmp / 'cds.sqlite3'}", "CDS_AUDIT_KEY": "bench-only-audit-key-0123456789",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
    }


NGINX_CONF = """\
{user}worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    client_max_body_size 2m;
    client_header_timeout 10s;
    client_body_timeout 10s;
    send_timeout 10s;
    upstream app {{ server 127.0.0.1:{upstream}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering on;
            proxy_read_timeout 30s;
        }}
    }}
}}
"""


def start(kind: str, tmp: Path, port: int, rules_dir: Path, workers: int = 2, threads: int = 8,
          extra_env: dict[str, str] | None = None) -> list[subprocess.Popen]:
    """The server processes (the last one is the one clients reach), started and answering /readyz."""
    env = {**server_env(tmp, port, rules_dir, workers, threads), **(extra_env or {})}
    procs = []
    log = (tmp / f"{kind}.log").open("w")
    if kind == "image":
        procs.append(subprocess.Popen(["/bin/sh", str(ROOT / "docker" / "entrypoint.sh")], env=env, stdout=log,
                                      stderr=subprocess.STDOUT, cwd=tmp))
        wait_ready(procs[-1], port, tmp / f"{kind}.log")
        return procs
    upstream = free_port() if kind == "nginx" else port
    env["CDS_PORT"] = str(upstream)
    subprocess.run([sys.executable, "-m", "cds", "db", "upgrade"], env=env, check=True, capture_output=True, cwd=tmp)
    procs.append(subprocess.Popen([sys.executable, "-m", "gunicorn", "--config", "python:cds.gunicorn_conf",
                                   "cds.wsgi:app"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp))
    wait_ready(procs[-1], upstream, tmp / f"{kind}.log")
    if kind == "nginx":
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        conf = tmp / "nginx.conf"
        user = "user root;\n" if os.geteuid() == 0 else ""  # its temporary files live in our private folder
        conf.write_text(NGINX_CONF.format(user=user, tmp=tmp, port=port, upstream=upstream))
        procs.append(subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp), "-g", "daemon off;"], stdout=log,
                                      stderr=subprocess.STDOUT, cwd=tmp))
        wait_ready(procs[-1], port, tmp / f"{kind}.log")
    return procs


def wait_ready(proc: subprocess.Popen, port: int, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        if call(port, "GET", "/readyz", None, timeout=2)[0] == 200:
            return
        time.sleep(0.3)
    raise RuntimeError(f"server not ready after {timeout} s:\n{log.read_text()[-3000:]}")


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--headers", type=int, default=1000, help="slow-header connections (default 1000)")
    parser.add_argument("--bodies", type=int, default=100, help="slow-body connections (default 100)")
    parser.add_argument("--seconds", type=float, default=40, help="probing time with them open (default 40)")
    parser.add_argument("--bound", type=float, default=2.0, help="deadline of one probe, seconds (default 2)")
    parser.add_argument("--server", choices=["image", "gunicorn", "nginx"], default="image")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    limit = raise_nofile(2 * (args.headers + args.bodies) + 512)
    body = TYPICAL.read_bytes()
    with tempfile.TemporaryDirectory(prefix="bench-slow-") as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        procs = start(args.server, tmp, port, ROOT / "rules", args.workers, args.threads)
        try:
            quiet_health, quiet_hook, _ = probe(port, 3, args.bound, body)
            t0 = time.monotonic()
            clients = SlowClients(port, args.headers, args.bodies).start()
            opened_in = time.monotonic() - t0
            health, hook, counts = probe(port, args.seconds, args.bound, body, clients=clients)
            reopened, refused = clients.reopened, clients.refused
            clients.stop()
            after_health, after_hook, _ = probe(port, 3, args.bound, body)
        finally:
            stop(procs)
    print(f"slow clients {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, server {args.server!r} "
          f"({args.workers} workers x {args.threads} threads), {os.cpu_count()} CPUs, RLIMIT_NOFILE {limit}")
    print(f"{args.headers} slow-header + {args.bodies} slow-body connections (1 byte/s each), opened in {opened_in:.1f} s; "
          f"probes for {args.seconds:.0f} s, each on a fresh connection with a {args.bound:.1f} s deadline")
    print("before:     " + quiet_health.line(args.bound) + " | " + quiet_hook.line(args.bound))
    print("while open:")
    print("  " + health.line(args.bound))
    print("  " + hook.line(args.bound))
    low = {k: min(c[k] for c in counts) for k in ("header", "body")} if counts else {}
    mid = {k: sorted(c[k] for c in counts)[len(counts) // 2] for k in ("header", "body")} if counts else {}
    print(f"  slow connections open at the probes: median {mid.get('header', 0)} header + {mid.get('body', 0)} body, "
          f"at least {low.get('header', 0)} + {low.get('body', 0)}; "
          f"closed by the server (deadlines) and reopened at once: {reopened}; connects refused: {refused}")
    print("after:      " + after_health.line(args.bound) + " | " + after_hook.line(args.bound))
    return 0


if __name__ == "__main__":
    sys.exit(main())
