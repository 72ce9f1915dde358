"""Several worker processes per container, one /metrics for all of them (issue 13 point 1).

The production entry point (docker/entrypoint.sh: ``cds db upgrade`` then granian through
``cds.serve``) runs here for real in a subprocess on loopback, with two workers, this checkout's
``cds`` (PYTHONPATH) and the fixture rule set. Whichever worker answers /metrics, it reports the
requests of every worker, including one that was killed and replaced; the killed worker's live-mode
gauge files are swept at the next scrape (granian has no exit hook in the parent: cds.metrics).
Single-process mode (the tests' ``create_app``, ``cds run``) keeps the ordinary registry: tests/test_ops.py.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import EVALUATION_DATE, REQUESTS_DIR, ROOT, RULES_DIR, SERVICE_URL
from prometheus_client.mmap_dict import MmapedDict

from cds.metrics import sweep_dead_processes
from cds.serve import available_cpus

ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
BODY = (REQUESTS_DIR / "bird-dog-12-14.json").read_bytes()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> set[int]:
    """The worker processes of the server ``pid`` (multiprocessing spawn children; not its resource tracker)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"spawn_main" in cmdline:
            found.add(int(stat.parent.name))
    return found


def _get(port: int, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        if body is None:
            conn.request("GET", path)
        else:
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, value = line.rsplit(" ", 1)
        if head.split("{", 1)[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


@pytest.fixture
def server(tmp_path):
    port = _free_port()
    multiproc = tmp_path / "metrics"
    multiproc.mkdir()
    (multiproc / "counter_999999.db").write_bytes(b"stale file of a previous run")  # removed at start
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PYTHONPATH": str(ROOT),  # this checkout's cds, for gunicorn's workers and `cds db upgrade`
        "HOME": str(tmp_path),
        "CDS_HOST": "127.0.0.1",
        "CDS_PORT": str(port),
        "CDS_WORKERS": "2",
        "CDS_THREADS": "4",
        "CDS_AUTH": "off",
        "CDS_RULES_DIR": str(RULES_DIR),
        "CDS_RULES_POLL_SECONDS": "0",
        "CDS_EVALUATION_DATE": EVALUATION_DATE.isoformat(),
        "CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "CDS_AUDIT_KEY": "test-only-audit-key-0123456789",
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
    }
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(["/bin/sh", str(ENTRYPOINT)], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if _get(port, "/readyz")[0] == 200 and len(_children(proc.pid)) == 2:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        yield proc, port, multiproc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()
        log.close()


def _hook_calls(port: int, n: int, log: Path) -> None:
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(lambda _: _get(port, SERVICE_URL, BODY)[0], range(n)))
    except OSError as e:
        raise AssertionError(f"{e!r}; server log:\n{log.read_text()[-3000:]}") from e
    assert statuses == [200] * n


def _wait_for_replacement(proc, old: set[int]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = _children(proc.pid)
        if len(now) == 2 and now != old:
            return
        time.sleep(0.2)
    raise AssertionError("the server did not replace the killed worker")


def test_metrics_sum_the_requests_of_every_worker_even_one_that_was_replaced(server):
    proc, port, multiproc = server
    workers = _children(proc.pid)
    assert len(workers) == 2  # CDS_WORKERS=2
    assert not (multiproc / "counter_999999.db").exists()  # the stale file of a previous run is gone

    _hook_calls(port, 30, multiproc.parent / "server.log")
    counted = {p.name for p in multiproc.glob("counter_*.db")}
    victim = int(next(iter(sorted(counted))).removeprefix("counter_").removesuffix(".db"))
    assert victim in workers  # the counters are written by the workers themselves
    os.kill(victim, signal.SIGKILL)  # died: the server replaces it; its counts must not be lost
    # a live-mode gauge file of the victim, as prometheus-client makes one for a livesum gauge
    MmapedDict(str(multiproc / f"gauge_livesum_{victim}.db")).close()
    _wait_for_replacement(proc, workers)
    _hook_calls(port, 30, multiproc.parent / "server.log")

    files = {p.name for p in multiproc.glob("counter_*.db")}
    assert len(files) >= 2  # counts from at least two processes, the killed one included
    assert f"counter_{victim}.db" in files
    # every scrape, whichever worker answers it, sees all 60 hook calls
    for _ in range(6):
        status, body = _get(port, "/metrics")
        assert status == 200
        text = body.decode()
        assert _metric(text, "cds_requests_total", endpoint="/cds-services/<service_id>", status="200") == 60
        assert _metric(text, "cds_request_seconds_count", endpoint="/cds-services/<service_id>") == 60
        assert _metric(text, "cds_decisions_total") >= 60  # at least one card-making rule per call
        assert _metric(text, "cds_audit_failures") == 0
        assert "cds_audit_failures" in text
    # the live gauges of the killed worker were swept by the scrapes (granian has no child_exit hook)
    assert not list(multiproc.glob(f"gauge_live*_{victim}.db"))
    assert (multiproc / f"counter_{victim}.db").exists()  # its counters stay


def test_the_sweep_removes_only_live_gauges_of_processes_that_no_longer_run(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = os.getppid()
    for name in (f"gauge_livesum_{dead.pid}.db", f"gauge_liveall_{dead.pid}.db", f"counter_{dead.pid}.db",
                 f"gauge_sum_{dead.pid}.db", f"gauge_livesum_{alive}.db"):
        (tmp_path / name).write_bytes(b"")
    assert sweep_dead_processes(str(tmp_path)) == [dead.pid]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"counter_{dead.pid}.db", f"gauge_sum_{dead.pid}.db", f"gauge_livesum_{alive}.db"])


def test_available_cpus_follow_the_cgroup_quota(tmp_path):
    cpu_max = tmp_path / "cpu.max"
    affinity = len(os.sched_getaffinity(0))
    cpu_max.write_text("150000 100000\n")  # 1.5 CPUs -> 2 workers (rounded up), never above affinity
    assert available_cpus(cpu_max) == min(2, affinity)
    cpu_max.write_text("50000 100000\n")
    assert available_cpus(cpu_max) == 1
    cpu_max.write_text("max 100000\n")
    assert available_cpus(cpu_max) == affinity
    assert available_cpus(tmp_path / "missing") == affinity


def test_several_workers_share_the_replay_store_in_the_database(tmp_path):
    """A token replayed to another worker must be refused too: with a database configured (the image's
    default SQLite file, or PostgreSQL), the replay store defaults to that database."""
    from cds.config import load_settings

    shared = load_settings({"CDS_DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3", "CDS_AUDIT_KEY": "k" * 32},
                           serving=False)
    assert shared.jti_store == "database"
    assert load_settings({"CDS_DATABASE_URL": "", "CDS_AUDIT_KEY": "k" * 32}, serving=False).jti_store == "memory"
