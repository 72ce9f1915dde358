"""Slow clients cannot take the service down (issue 12 point 1).

The production entry point runs for real, as the image runs it (``sh docker/entrypoint.sh``: ``cds db
upgrade``, then granian through cds/serve.py; 2 workers x 4 threads = 8 request threads, this checkout's
``cds``, the fixture rule set). 200 connections send their headers one byte a second and 50 send a hook
call's body one byte a second, far more than the 8 threads; while they stay open, ``/healthz`` and a real
hook call must answer 200 within 2 s, every time. The same harness (bench/bench_slow_clients.py) holds
1,000 + 100 connections in the bench, whose output is in bench/README.md.

The harness itself is checked against a server that does tie a thread to a connection (the standard
library's single-threaded HTTPServer): one slow-header connection must block it, or the harness would
prove nothing.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from conftest import REQUESTS_DIR, ROOT, RULES_DIR, load_script

harness = load_script(ROOT / "bench" / "bench_slow_clients.py", "bench_slow_clients")

HEADERS, BODIES, BOUND = 200, 50, 2.0
BODY = (REQUESTS_DIR / "bird-dog-12-14.json").read_bytes()


@pytest.fixture
def entrypoint(tmp_path):
    harness.raise_nofile(2 * (HEADERS + BODIES) + 256)
    port = harness.free_port()
    procs = harness.start("image", tmp_path, port, RULES_DIR, workers=2, threads=4)
    try:
        yield port
    finally:
        harness.stop(procs)


def test_slow_header_and_slow_body_clients_do_not_starve_healthz_or_hook_calls(entrypoint):
    port = entrypoint
    clients = harness.SlowClients(port, HEADERS, BODIES).start()
    try:
        health, hook, counts = harness.probe(port, seconds=5, bound=BOUND, body=BODY, clients=clients)
    finally:
        clients.stop()
    # every slow connection stayed open while the probes ran (the header timeout is 10 s, the body's 15 s)
    assert clients.refused == 0
    assert min(c["header"] for c in counts) == HEADERS
    assert min(c["body"] for c in counts) == BODIES
    assert len(health.statuses) >= 5
    assert health.answered(BOUND) == len(health.statuses), health.line(BOUND)
    assert hook.answered(BOUND) == len(hook.statuses), hook.line(BOUND)


class _OneAtATime(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format, *args) -> None:
        pass


def test_the_harness_blocks_a_server_with_a_thread_per_connection():
    server = HTTPServer(("127.0.0.1", 0), _OneAtATime)  # one request at a time, like one busy thread
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        assert harness.call(port, "GET", "/healthz", None, timeout=2)[0] == 200
        clients = harness.SlowClients(port, headers=1, bodies=0, interval=0.2).start()
        try:
            status, _ = harness.call(port, "GET", "/healthz", None, timeout=1)
        finally:
            clients.stop()
        assert status is None  # starved by one slow-header client
    finally:
        server.shutdown()
        server.server_close()
