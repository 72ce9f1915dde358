"""The production server: cds/serve.py (granian, configured from the environment) and cds/rsgi.py (the
body read on the event loop, then the WSGI app on a thread).

The entry point runs for real (``sh docker/entrypoint.sh``, one module-wide instance with small limits:
a 64 KiB body limit, a 1 s header deadline and a 1 s body deadline) and is driven over raw sockets:
the body limit is enforced before a byte of an over-long body is read, chunked bodies are read up to the
limit, a late body is 408, late headers are dropped, headers and query strings reach the app. Separate
instances check SIGTERM (the audit queue is drained, or what is lost is logged, in every worker) and
SIGHUP (every worker replaced, still serving).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REQUESTS_DIR, ROOT, RULES_DIR, SERVICE_URL, load_script

from cds.serve import ServerConfigError, available_cpus, load_server_settings

harness = load_script(ROOT / "bench" / "bench_slow_clients.py", "bench_slow_clients")

BODY = (REQUESTS_DIR / "bird-dog-12-14.json").read_bytes()
LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    port = harness.free_port()
    procs = harness.start("image", tmp, port, RULES_DIR, workers=1, threads=2, extra_env={
        "CDS_MAX_BODY_BYTES": str(LIMIT), "CDS_HEADER_TIMEOUT": "1", "CDS_BODY_TIMEOUT": "1"})
    try:
        yield port
    finally:
        harness.stop(procs)


def _raw(port: int, data: bytes, wait: float = 5.0) -> bytes:
    """Send ``data`` and return whatever the server answers until it closes or ``wait`` runs out."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        answer = b""
        deadline = time.monotonic() + wait
        try:
            while time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
                if b"\r\n\r\n" in answer and answer.startswith(b"HTTP/1.1 "):
                    head, _, rest = answer.partition(b"\r\n\r\n")
                    length = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
                    if length and len(rest) >= length[0]:
                        break
        except (TimeoutError, ConnectionResetError):
            pass
        return answer


def _post_head(length: int | str, extra: str = "") -> bytes:
    return (f"POST {SERVICE_URL} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n{extra}\r\n").encode()


def test_a_hook_call_is_answered(server):
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
    conn.request("POST", SERVICE_URL + "?probe=1", body=BODY,
                 headers={"Content-Type": "application/json", "X-Request-Id": "serve-test-1"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("X-Request-Id") == "serve-test-1"  # headers reach the app and come back
    assert json.loads(response.read())["cards"]


def test_an_over_long_content_length_is_413_without_the_body_being_read(server):
    answer = _raw(server, _post_head(50 * 1024 * 1024))  # announces 50 MiB, sends none of it
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"request body too large" in answer  # the app's own error document


def test_a_chunked_body_is_read_up_to_the_limit_only(server):
    def chunks(total: int):
        for _ in range(total // 8192):
            yield b" " * 8192

    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
    conn.request("POST", SERVICE_URL, body=chunks(4 * LIMIT), encode_chunked=True,
                 headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    response = conn.getresponse()
    assert response.status == 413
    conn.close()


def test_a_chunked_hook_call_under_the_limit_is_answered(server):
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
    conn.request("POST", SERVICE_URL, body=iter([BODY[:1000], BODY[1000:]]), encode_chunked=True,
                 headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    response = conn.getresponse()
    assert response.status == 200
    assert json.loads(response.read())["cards"]


def test_a_body_slower_than_its_deadline_is_408(server):
    started = time.monotonic()
    answer = _raw(server, _post_head(1000) + b'{"hook": ', wait=6)  # 9 of 1000 bytes, then nothing
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started < 5


def test_headers_slower_than_their_deadline_are_dropped(server):
    started = time.monotonic()
    answer = _raw(server, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a", wait=6)
    assert not answer.startswith(b"HTTP/1.1 200")  # closed (or 408), never served
    assert time.monotonic() - started < 5


# ---- configuration --------------------------------------------------------------------------------


def test_server_settings_defaults_and_errors():
    settings = load_server_settings({})
    assert (settings.host, settings.port, settings.threads) == ("0.0.0.0", 8080, 8)
    assert settings.workers == available_cpus()
    assert (settings.header_timeout, settings.body_timeout, settings.graceful_timeout) == (10, 15, 20)
    assert load_server_settings({"CDS_WORKERS": " 3 ", "CDS_PORT": "9000"}).workers == 3
    with pytest.raises(ServerConfigError, match=r"^CDS_THREADS: must be at least 1, got 0$"):
        load_server_settings({"CDS_THREADS": "0"})
    with pytest.raises(ServerConfigError, match=r"^CDS_HEADER_TIMEOUT: must be at most 60, got 61$"):
        load_server_settings({"CDS_HEADER_TIMEOUT": "61"})


def test_every_server_variable_is_read():
    from cds.config import SERVER_ENV

    values = {"CDS_HOST": "127.0.0.2", "CDS_PORT": "9001", "CDS_WORKERS": "5", "CDS_THREADS": "3",
              "CDS_HEADER_TIMEOUT": "7", "CDS_BODY_TIMEOUT": "9", "CDS_GRACEFUL_TIMEOUT": "11"}
    assert set(values) == set(SERVER_ENV)
    settings = load_server_settings(values)
    for var, field in SERVER_ENV.items():
        assert str(getattr(settings, field)) == values[var], var
    assert load_server_settings({"CDS_THREADS": "  "}).threads == 8  # blank: the default


@pytest.mark.parametrize("module", ["cds.serve", "cds.gunicorn_conf"])
def test_a_bad_worker_count_stops_the_server_in_one_line(tmp_path, module):
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "CDS_WORKERS": "two"}
    args = ["-m", module] if module == "cds.serve" else ["-c", f"import {module}"]
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.strip() == "configuration error: CDS_WORKERS: not a whole number: 'two'"


# ---- signals ---------------------------------------------------------------------------------------


def _workers(pid: int) -> set[int]:
    """The granian worker processes of the server ``pid`` (multiprocessing spawn children, not its
    resource tracker)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"spawn_main" in cmdline:
            found.add(int(stat.parent.name))
    return found


def _hook_call(port: int) -> int:
    status, _ = harness.call(port, "POST", SERVICE_URL, BODY, timeout=10)
    return status or 0


def test_sigterm_drains_or_reports_the_audit_queue_of_every_worker(tmp_path):
    """SIGTERM while the database is slow: each worker waits CDS_AUDIT_SHUTDOWN_TIMEOUT for its audit
    queue (its interpreter exits normally: spawn, atexit), then logs how many records are lost."""
    port = harness.free_port()
    procs = harness.start("image", tmp_path, port, RULES_DIR, workers=2, threads=2,
                          extra_env={"CDS_AUDIT_SHUTDOWN_TIMEOUT": "1"})
    (proc,) = procs
    blocker = sqlite3.connect(tmp_path / "cds.sqlite3", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock: every audit write waits
        assert [_hook_call(port) for _ in range(12)] == [200] * 12  # answered: the audit is off the request path
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        elapsed = time.monotonic() - started
    finally:
        blocker.close()
        harness.stop(procs)
    log = (tmp_path / "image.log").read_text()
    lost = [int(line.split("shutdown: ", 1)[1].split()[0]) for line in log.splitlines()
            if "audit record(s) not written after waiting 1.0 s" in line]
    assert sum(lost) >= 10, log[-3000:]  # the writer may hold one record per worker in its transaction
    assert elapsed < 15


def test_sighup_replaces_every_worker_and_keeps_serving(tmp_path):
    port = harness.free_port()
    procs = harness.start("image", tmp_path, port, RULES_DIR, workers=2, threads=2)
    (proc,) = procs
    try:
        before = _workers(proc.pid)
        assert len(before) == 2
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = _workers(proc.pid)
            if len(now) == 2 and not now & before:
                break
            time.sleep(0.3)
        else:
            raise AssertionError(f"workers not replaced: before {before}, now {_workers(proc.pid)}")
        harness.wait_ready(proc, port, tmp_path / "image.log")
        assert _hook_call(port) == 200
    finally:
        harness.stop(procs)


def test_a_worker_that_refuses_to_start_stops_the_server_instead_of_respawning_forever(tmp_path):
    """Invalid rule files: each worker prints its one line and the server exits (non-zero), as gunicorn
    does on a worker's exit 4, instead of respawning workers that can only refuse again."""
    empty_rules = tmp_path / "rules"
    empty_rules.mkdir()
    env = harness.server_env(tmp_path, harness.free_port(), empty_rules, workers=2, threads=2)
    started = time.monotonic()
    proc = subprocess.run(["/bin/sh", str(ROOT / "docker" / "entrypoint.sh")], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-2000:]
    assert f"refusing to start: the rule files in {empty_rules} are invalid" in output
    assert "Traceback" not in output
    assert output.count("Respawning") <= 2  # at most the workers that died before the stop arrived
    assert time.monotonic() - started < 90


# ---- the bridge in process (a fake RSGI protocol) ------------------------------------------------


class _Headers:
    def __init__(self, items):
        self._items = items

    def items(self):
        return list(self._items)


class _Scope:
    proto, http_version, scheme, server, client = "http", "1.1", "http", "127.0.0.1:8080", "127.0.0.1:50000"

    def __init__(self, method="GET", path="/", query_string="", headers=()):
        self.method, self.path, self.query_string, self.headers = method, path, query_string, _Headers(headers)


class _Protocol:
    def __init__(self, body=b"", chunks=None):
        self.body, self.chunks, self.sent, self.read = body, chunks, None, 0

    async def __call__(self):
        self.read += len(self.body)
        return self.body

    def __aiter__(self):
        async def gen():
            for chunk in self.chunks or []:
                self.read += len(chunk)
                yield chunk
        return gen()

    def response_bytes(self, status, headers, body):
        self.sent = (status, headers, body)


def _run(bridge, scope, protocol):
    import asyncio

    async def main():
        bridge.__rsgi_init__(asyncio.get_running_loop())
        try:
            await bridge.__rsgi__(scope, protocol)
        finally:
            bridge.__rsgi_del__(asyncio.get_running_loop())

    asyncio.run(main())
    return protocol.sent


def test_the_bridge_gives_the_app_a_plain_wsgi_environ():
    from cds.rsgi import BufferedWSGI

    seen = {}

    def app(environ, start_response):
        seen.update(environ, body=environ["wsgi.input"].read())
        start_response("201 Created", [("X-A", "1")])
        return [b"he", b"llo"]

    scope = _Scope("POST", "/a b/é", "x=%20y", [("content-type", "application/json"), ("content-length", "2"),
                                                  ("x-a", "1"), ("x-a", "2")])
    assert _run(BufferedWSGI(app, 2, 100, 5), scope, _Protocol(b"{}")) == (201, [("X-A", "1")], b"hello")
    assert seen["PATH_INFO"] == "/a b/é".encode().decode("latin-1")  # WSGI: the bytes as latin-1
    assert (seen["QUERY_STRING"], seen["CONTENT_TYPE"], seen["CONTENT_LENGTH"]) == ("x=%20y", "application/json", "2")
    assert seen["HTTP_X_A"] == "1,2" and seen["body"] == b"{}"
    assert (seen["SERVER_NAME"], seen["SERVER_PORT"], seen["REMOTE_ADDR"]) == ("127.0.0.1", "8080", "127.0.0.1")


def test_the_bridge_never_reads_a_body_over_the_limit_and_answers_500_for_its_own_faults():
    from cds.rsgi import BufferedWSGI

    lengths = []

    def app(environ, start_response):
        lengths.append((environ["CONTENT_LENGTH"], environ["wsgi.input"].read()))
        start_response("413 Payload Too Large", [])
        return []

    over = _Protocol(b"x" * 500)
    _run(BufferedWSGI(app, 1, 100, 5), _Scope("POST", headers=[("content-length", "500")]), over)
    chunked = _Protocol(chunks=[b"x" * 60] * 10)
    _run(BufferedWSGI(app, 1, 100, 5), _Scope("POST", headers=[("transfer-encoding", "chunked")]), chunked)
    assert over.read == 0 and chunked.read == 120  # nothing read; read up to just past the limit
    assert lengths == [("500", b""), ("120", b"")]

    def broken(environ, start_response):
        return [b"no start_response"]

    assert _run(BufferedWSGI(broken, 1, None, 5), _Scope(), _Protocol())[0] == 500


def test_sigterm_lets_a_request_in_progress_finish_and_refuses_new_connections(tmp_path):
    port = harness.free_port()
    procs = harness.start("image", tmp_path, port, RULES_DIR, workers=1, threads=2, extra_env={"CDS_DATABASE_URL": ""})
    (proc,) = procs
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(_post_head(len(BODY)) + BODY[:100])  # a hook call whose body is still arriving
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            time.sleep(1)
            with pytest.raises(OSError):  # no new connection while stopping
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
            sock.sendall(BODY[100:])
            assert sock.recv(100).startswith(b"HTTP/1.1 200")  # the request in progress is answered
        assert proc.wait(timeout=30) == 0
    finally:
        harness.stop(procs)
