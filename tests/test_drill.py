"""The scale-out drill (issue 13 point 5): ``bench/drill.py --quick`` for real, on loopback.

Two instances of the production entry point (docker/entrypoint.sh) behind nginx on one throw-away
PostgreSQL; under load instance A's process group is killed (-9) and restarted. The script checks its own
invariants and exits non-zero when one fails (every error is a request in flight on A at the kill or sent
to it just after; feedback acknowledged == rows stored, the same card uuids; a token used on A is refused
on B, on A and through nginx). Here its output is checked as well, so a script that silently stopped
checking would fail too. Skipped, with the script's own message, when nginx or PostgreSQL is not installed
(.ci/run installs both).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DRILL = ROOT / "bench" / "drill.py"


def run_drill(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in [n for n in env if n.startswith("CDS_") or n == "PROMETHEUS_MULTIPROC_DIR"]:
        del env[name]  # the drill configures its instances itself
    return subprocess.run([sys.executable, str(DRILL), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_missing_nginx_is_exit_2_with_how_to_install(tmp_path: Path) -> None:
    result = run_drill("--nginx", str(tmp_path / "no-nginx-here"), timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "not installed: nginx" in result.stderr
    assert "apt-get install -y nginx postgresql" in result.stderr
    assert result.stdout == ""  # nothing started


@pytest.mark.slow
def test_quick_drill_keeps_its_invariants(tmp_path: Path) -> None:
    preflight = run_drill("--preflight", timeout=120)
    if preflight.returncode == 2:
        pytest.skip(preflight.stderr.strip().splitlines()[0])
    assert preflight.returncode == 0, preflight.stderr
    # the frozen fixture rule set, as every Python test: the drill does not depend on the shipped content
    result = run_drill("--quick", "--keep", str(tmp_path / "logs"), "--rules", str(ROOT / "tests" / "fixtures" / "rules"))
    out = result.stdout
    assert result.returncode == 0, out + result.stderr[-3000:]
    assert "invariants: all held" in out

    whole = {kind: re.search(rf"^whole run, {kind}\s+(\d+)\s+(\d+)", out, re.M) for kind in ("hook", "feedback")}
    for kind, match in whole.items():
        assert match, f"no whole-run line for {kind}:\n{out}"
        assert int(match.group(2)) > 50, f"too few {kind} requests answered:\n{out}"
    # both instances answered before the kill, and A again after its restart
    before = re.search(r"before the kill\s+A\s+(\d+)\s+B\s+(\d+)", out)
    after = re.search(r"after the restart\s+A\s+(\d+)\s+B\s+(\d+)", out)
    assert before and after, out
    assert min(map(int, before.groups())) > 0 and int(after.group(1)) > 0, out

    feedback = re.search(r"feedback: (\d+) items sent, (\d+) acknowledged \(2xx\), (\d+) rows stored in PostgreSQL: EQUAL", out)
    assert feedback, out
    sent, acked, stored = map(int, feedback.groups())
    assert sent == acked == stored > 0

    for line in ("token used once, directly on A           -> 200",
                 "the same token replayed directly to B    -> 401",
                 "the same token replayed to A             -> 401",
                 "the same token replayed through nginx    -> 401",
                 "a fresh token directly to B              -> 200"):
        assert line in out, out
    # the kill really happened: A's process group held the server and its workers, and A was restarted
    killed = re.search(r"kill -9 of A's process group \((\d+) processes\)", out)
    assert killed and int(killed.group(1)) >= 2, out  # the server and its workers
    assert (tmp_path / "logs" / "A-instance.log").read_text().count("---- start ") == 2
