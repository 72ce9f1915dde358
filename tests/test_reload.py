"""Reload without restart: rule-file edits are picked up under concurrent load, atomically.

Eight threads post a fhir_examples request continuously while the main thread rewrites the rule files
several times, alternating valid versions (another threshold and version number) with invalid ones.
Every response must be 200 and come from exactly one valid version, with that version's decisions;
an invalid edit is logged and never served; the last valid version is served at the end.

Issue 9 point 5 (reload is safe): the watcher loads only files stable for one poll (a half-written file
is never served); a candidate must pass the checker and its own rule tests; a content change without a
version bump is logged; replaced engines are freed once no request holds them (threads evaluating
through 50 reloads; 200 reloads grow RSS by less than 8 MiB).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import RULES_DIR

from cds.clock import FixedClock
from cds.config import load_settings
from cds.live_rules import LiveRuleSet
from cds.ruleset.loader import load_ruleset

ROOT = Path(__file__).resolve().parent.parent
RULES = RULES_DIR
REQUEST = json.loads((ROOT / "fhir_examples" / "requests" / "onset-undocumented.json").read_text())  # reps 20, 18
URL = "/cds-services/lbp-exercise-progression"
EXT = "org.lbp-cds.recommendation"
ORIGINAL = (RULES / "ruleset.yaml").read_text()


def variant(version: str | None = None, **params: str) -> str:
    text = ORIGINAL
    if version:
        text = text.replace("version: 1.0.0", f"version: {version}")
    for name, value in params.items():
        old = next(line for line in text.splitlines() if line.startswith(f"  {name}: "))
        text = text.replace(old, f"  {name}: {value}", 1)
    return text


# name -> (ruleset.yaml text, the decisions of the request's cards under it; None = invalid)
VERSIONS = {
    "v1.0.0": (ORIGINAL, ["onset-unknown", "continue"]),
    "v1.1.0": (variant("1.1.0", reps_high="17"), ["onset-unknown", "step-up"]),
    "v1.2.0": (variant("1.2.0", reps_low="19"), ["onset-unknown", "step-back"]),
    "bad-type": (variant("9.9.9", reps_high="seventeen"), None),
    "bad-yaml": (variant("9.9.8").replace("  rounds: 2", "  rounds: [2"), None),
}
EDITS = ["v1.1.0", "bad-type", "v1.0.0", "bad-yaml", "v1.2.0", "bad-type", "v1.1.0", "bad-yaml", "v1.2.0"]


def write_atomically(path: Path, text: str) -> None:
    """What editors do: write a temporary file beside it, then rename over the old one."""
    tmp = path.with_name(path.name + ".tmp")  # not *.yaml: never read as a rule file
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    dest = tmp_path / "rules"
    shutil.copytree(RULES, dest, ignore=shutil.ignore_patterns("tests"))
    return dest


def shas(tmp_path: Path) -> dict[str, str]:
    """The sha256 of each valid version, computed from a separate copy of the files."""
    out = {}
    for name, (text, decisions) in VERSIONS.items():
        if decisions is None:
            continue
        folder = tmp_path / f"sha-{name}"
        shutil.copytree(RULES, folder, ignore=shutil.ignore_patterns("tests"))
        (folder / "ruleset.yaml").write_text(text)
        out[load_ruleset(folder).sha256] = name
    return out


def test_invalid_variants_are_invalid(tmp_path: Path) -> None:
    from cds.ruleset.loader import check_ruleset

    for name, (text, decisions) in VERSIONS.items():
        folder = tmp_path / name
        shutil.copytree(RULES, folder, ignore=shutil.ignore_patterns("tests"))
        (folder / "ruleset.yaml").write_text(text)
        assert bool(check_ruleset(folder)) == (decisions is None), name


def test_reload_under_concurrent_requests(rules: Path, tmp_path: Path, caplog) -> None:
    from cds.http import create_app

    caplog.set_level(logging.INFO, logger="cds.rules")
    valid = shas(tmp_path)
    live = LiveRuleSet(rules, poll_seconds=0.01)
    settings = load_settings({}, development=True, rules_dir=rules, database_url=f"sqlite:///{tmp_path}/db.sqlite3")
    app = create_app(settings, rules=live, clock=FixedClock(__import__("datetime").date(2026, 11, 20)))
    stop = threading.Event()
    responses: list[tuple[int, list[dict]]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client_loop() -> None:
        client = app.test_client()
        try:
            while not stop.is_set():
                r = client.post(URL, json=REQUEST)
                with lock:
                    responses.append((r.status_code, (r.get_json() or {}).get("cards", [])))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=client_loop) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.2)
        last_valid = "v1.0.0"
        for edit in EDITS:
            text, decisions = VERSIONS[edit]
            write_atomically(rules / "ruleset.yaml", text)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # wait until the watcher has read this edit
                current = valid.get(live.current().ruleset.sha256)
                if not live.changed_on_disk() and (
                    (decisions is not None and current == edit) or (decisions is None and live.last_error is not None)
                ):
                    break
                time.sleep(0.01)
            else:
                pytest.fail(f"the edit {edit} was not picked up in 10 s")
            if decisions is not None:
                last_valid = edit
            assert valid[live.current().ruleset.sha256] == last_valid  # an invalid edit keeps the old one
            time.sleep(0.15)  # requests flow under this version
    finally:
        stop.set()
        for t in threads:
            t.join()
        live.stop()

    assert not errors, errors
    assert len(responses) > 100
    seen = set()
    for status, cards in responses:
        assert status == 200
        recs = [c["extension"][EXT] for c in cards]
        versions = {(r["ruleset"]["sha256"], r["ruleset"]["version"]) for r in recs}
        assert len(versions) == 1, f"one response, several rule-set versions: {versions}"
        [(sha, version)] = versions
        assert sha in valid, f"served an invalid or unknown version {version}"
        name = valid[sha]
        assert version == name.removeprefix("v")
        assert [r["decision"] for r in recs] == VERSIONS[name][1], name
        seen.add(name)
    assert seen == {"v1.0.0", "v1.1.0", "v1.2.0"}
    # the final version is served at the end
    final = app.test_client().post(URL, json=REQUEST).get_json()["cards"]
    assert {c["extension"][EXT]["ruleset"]["version"] for c in final} == {"1.2.0"}
    # invalid edits are logged with file:line:column and the version still served
    invalid = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("still serving version 1.1.0" in m and f"{rules}/ruleset.yaml:25:14: parameters.reps_high: "
               "expected a number, found 'seventeen'" in m for m in invalid), invalid
    assert any("still serving version 1.0.0" in m and "YAML syntax error" in m for m in invalid), invalid


def test_explicit_reload_keeps_old_version_when_invalid(rules: Path) -> None:
    live = LiveRuleSet(rules)  # no watching: reload() on demand (what SIGHUP does)
    before = live.current()
    write_atomically(rules / "ruleset.yaml", VERSIONS["bad-type"][0])
    assert live.reload() is False
    assert live.current() is before
    assert "expected a number, found 'seventeen'" in str(live.last_error)
    write_atomically(rules / "ruleset.yaml", VERSIONS["v1.1.0"][0])
    assert live.reload() is True
    assert live.current().ruleset.identity.version == "1.1.0"
    assert live.last_error is None
    assert live.reload() is False  # unchanged: nothing to swap


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _discovery_version(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/cds-services", timeout=1) as r:
            return json.load(r)["services"][0]["extension"]["org.lbp-cds.ruleset"]["version"]
    except OSError:
        return None


def _wait_for(port: int, version: str, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _discovery_version(port) == version:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(sys.platform == "win32", reason="SIGHUP")
def test_sighup_reloads_cds_run(rules: Path, tmp_path: Path) -> None:
    port = _free_port()
    env = dict(os.environ, CDS_RULES_DIR=str(rules), CDS_PORT=str(port), CDS_RULES_POLL_SECONDS="0",
               CDS_DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite3", CDS_PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))  # this checkout's cds, not an installed one
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "cds.cli", "run", "--dev"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        assert _wait_for(port, "1.0.0"), (tmp_path / "server.log").read_text()
        write_atomically(rules / "ruleset.yaml", VERSIONS["v1.1.0"][0])
        time.sleep(0.5)
        assert _discovery_version(port) == "1.0.0"  # not watching: nothing happens without the signal
        proc.send_signal(signal.SIGHUP)
        assert _wait_for(port, "1.1.0"), (tmp_path / "server.log").read_text()
        write_atomically(rules / "ruleset.yaml", VERSIONS["bad-type"][0])
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "still serving version 1.1.0" not in (tmp_path / "server.log").read_text():
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.1)
        time.sleep(1)
        assert _discovery_version(port) == "1.1.0"
        assert "parameters.reps_high: expected a number, found 'seventeen'" in (tmp_path / "server.log").read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


# -- stable files, rule tests, version warning, freeing (issue 9 point 5) ----------------------------

PROGRESSION = (RULES / "progression.yaml").read_text()
#: progression.yaml cut before its fourth rule: valid YAML and a valid rule set, but half the rules
HALF = PROGRESSION[: PROGRESSION.index("  - id: pain-unrecorded")]
FULL_EDITED = PROGRESSION + "# edited: same rules, same version\n"


def _sha_of(tmp_path: Path, name: str, progression: str) -> str:
    folder = tmp_path / f"sha-{name}"
    shutil.copytree(RULES, folder, ignore=shutil.ignore_patterns("tests"))
    (folder / "progression.yaml").write_text(progression)
    return load_ruleset(folder).sha256


def _served(live: LiveRuleSet) -> list[str]:
    """The decisions of the test request under the version served now."""
    from cds.service import evaluate

    outcome = evaluate(live.current(), REQUEST["prefetch"], patient_id=REQUEST["context"]["patientId"],
                       clock=FixedClock(__import__("datetime").date(2026, 11, 20)))
    return [f.decision for f in outcome.evaluation.fired]


def test_half_written_file_is_never_loaded(rules: Path, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="cds.rules")
    half_sha, full_sha = _sha_of(tmp_path, "half", HALF), _sha_of(tmp_path, "full", FULL_EDITED)
    live = LiveRuleSet(rules)  # polled by hand: one call of poll() is one watcher tick
    first = live.current().ruleset.sha256
    (rules / "progression.yaml").write_text(HALF)  # an editor's first step: the file cut short
    assert live.poll() is False  # changed: remembered, not loaded
    (rules / "progression.yaml").write_text(FULL_EDITED)  # second step, within the same poll
    assert live.poll() is False  # changed again: still not stable
    assert live.poll() is True  # the same files two polls running: loaded
    assert live.history == [first, full_sha]
    assert half_sha not in live.history
    assert _served(live) == ["onset-unknown", "continue"]
    assert live.poll() is False  # nothing changed: nothing to do
    # the content changed but ruleset.version did not: a warning naming the version
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("ruleset.version is still 1.0.0" in m for m in warnings), warnings


def test_half_written_file_is_never_served_by_the_watcher(rules: Path, tmp_path: Path) -> None:
    half_sha, full_sha = _sha_of(tmp_path, "half", HALF), _sha_of(tmp_path, "full", FULL_EDITED)
    live = LiveRuleSet(rules, poll_seconds=0.2)
    live.start_watching()
    try:
        for _ in range(3):
            (rules / "progression.yaml").write_text(HALF)
            time.sleep(0.05)  # well within one poll
            (rules / "progression.yaml").write_text(FULL_EDITED)
            deadline = time.monotonic() + 10
            while live.current().ruleset.sha256 != full_sha:
                assert time.monotonic() < deadline, "the full file was not loaded in 10 s"
                time.sleep(0.02)
            (rules / "progression.yaml").write_text(PROGRESSION)
            while live.current().ruleset.sha256 == full_sha:
                assert time.monotonic() < deadline, "the original file was not loaded again in 10 s"
                time.sleep(0.02)
    finally:
        live.stop()
    assert half_sha not in live.history
    assert live.history.count(full_sha) == 3


CASE = """\
cases:
  - name: onset undocumented, reps 20 and 18
    as_of: 2026-11-20
    request: {request}
    expect:
      - {{rule: onset-unknown, decision: onset-unknown, indicator: warning}}
      - {{rule: continue, decision: continue, indicator: info, recommended: bird-dog}}
"""


def test_candidate_must_pass_its_rule_tests(rules: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="cds.rules")
    (rules / "tests").mkdir()
    request = ROOT / "fhir_examples" / "requests" / "onset-undocumented.json"
    (rules / "tests" / "cases.yaml").write_text(CASE.format(request=request))
    live = LiveRuleSet(rules)
    before = live.current()
    # v1.1.0 is a valid rule set, but it answers step-up where the folder's own case expects continue
    write_atomically(rules / "ruleset.yaml", VERSIONS["v1.1.0"][0])
    assert live.reload() is False
    assert live.current() is before
    assert _served(live) == ["onset-unknown", "continue"]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("the rule tests fail; still serving version 1.0.0" in m
               and f"FAIL {rules}/tests/cases.yaml:2:5: onset undocumented, reps 20 and 18" in m
               and "card 2 decision: expected continue, got step-up" in m for m in errors), errors
    assert "1 of 1 rule test(s)" in str(live.last_error)
    # the rule author updates the case: the same rule files now pass and are swapped in
    (rules / "tests" / "cases.yaml").write_text(CASE.format(request=request).replace(
        "decision: continue, indicator: info, recommended: bird-dog",
        "decision: step-up, indicator: info, recommended: single-leg-reverse-hyper").replace(
        "rule: continue", "rule: step-up"))
    assert live.poll() is False and live.poll() is True  # the watcher tries again once the tests change
    assert live.current().ruleset.identity.version == "1.1.0"
    assert live.last_error is None
    # a folder whose case file cannot be read is refused too
    (rules / "tests" / "broken.yaml").write_text("cases: [{name: x}]\n")
    write_atomically(rules / "ruleset.yaml", VERSIONS["v1.2.0"][0])
    assert live.reload() is False
    assert live.current().ruleset.identity.version == "1.1.0"
    assert "cannot be read" in str(live.last_error) and "broken.yaml:1:" in str(live.last_error)


def test_start_up_passes_the_same_gate_as_a_reload(rules: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """A folder whose rule files fail their own rule tests is not served even first: LiveRuleSet refuses
    it (CandidateRejected, its engine freed) and `cds run` stops with one line naming the failed case."""
    from cds import engine
    from cds.cli import main
    from cds.reload_gate import CandidateRejected

    (rules / "tests").mkdir()
    request = ROOT / "fhir_examples" / "requests" / "onset-undocumented.json"
    (rules / "tests" / "cases.yaml").write_text(CASE.format(request=request))
    assert LiveRuleSet(rules).current().ruleset.identity.version == "1.0.0"  # its tests pass: it starts
    write_atomically(rules / "ruleset.yaml", VERSIONS["v1.1.0"][0])  # valid, but answers step-up
    engine.free_pending()
    before = engine.live_rulesets()
    with pytest.raises(CandidateRejected) as info:
        LiveRuleSet(rules)
    assert engine.live_rulesets() == before  # the refused engine was freed
    where = f"{rules}/tests/cases.yaml:2:5: onset undocumented, reps 20 and 18"
    assert info.value.one_line == f"1 of 1 rule test case(s) fail, first {where}"
    assert "card 2 decision: expected continue, got step-up" in info.value.details

    monkeypatch.setenv("CDS_RULES_DIR", str(rules))
    monkeypatch.setenv("CDS_DATABASE_URL", f"sqlite:///{tmp_path}/db.sqlite3")
    assert main(["run", "--dev"]) == 1
    err = capsys.readouterr().err
    assert err == f"refusing to start: {rules}: 1 of 1 rule test case(s) fail, first {where}\n"

    # the WSGI entry point (gunicorn cds.wsgi:app) refuses in the same one line, no traceback
    env = {**os.environ, "CDS_RULES_DIR": str(rules), "CDS_AUTH": "off", "CDS_AUDIT_KEY": "k" * 32,
           "CDS_DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", "import cds.wsgi"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == f"refusing to start: {rules}: 1 of 1 rule test case(s) fail, first {where}"
    assert "Traceback" not in proc.stderr


def test_start_up_refuses_unreadable_rule_tests_and_still_reports_invalid_files_first(rules: Path) -> None:
    from cds.reload_gate import CandidateRejected
    from cds.ruleset.loader import RuleSetError

    (rules / "tests").mkdir()
    (rules / "tests" / "broken.yaml").write_text("cases: [{name: x}]\n")
    with pytest.raises(CandidateRejected) as info:
        LiveRuleSet(rules)
    assert "\n" not in info.value.one_line
    assert info.value.one_line.startswith("the rule tests cannot be read: ")
    assert "broken.yaml:1:" in info.value.one_line
    write_atomically(rules / "ruleset.yaml", VERSIONS["bad-type"][0])
    with pytest.raises(RuleSetError) as bad:  # the checker's file:line:column problems, as before
        LiveRuleSet(rules)
    assert f"{rules}/ruleset.yaml:25:14: parameters.reps_high" in str(bad.value)


def test_invalid_candidate_logs_file_line_column(rules: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="cds.rules")
    live = LiveRuleSet(rules)
    before = live.current()
    write_atomically(rules / "ruleset.yaml", VERSIONS["bad-type"][0])
    assert live.reload() is False
    assert live.current() is before
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("rule files are invalid; still serving version 1.0.0" in m
               and f"{rules}/ruleset.yaml:25:14: parameters.reps_high" in m for m in errors), errors


def test_threads_evaluate_correctly_through_50_reloads(rules: Path) -> None:
    import gc

    from cds import engine
    from cds.service import evaluate

    gc.collect()
    engine.free_pending()
    baseline = engine.live_rulesets()
    live = LiveRuleSet(rules)
    held = live.current()  # a request that holds the first pair through every reload
    expected = {"1.0.0": VERSIONS["v1.0.0"][1], "1.1.0": VERSIONS["v1.1.0"][1]}
    stop = threading.Event()
    errors: list[BaseException] = []
    counts = [0]

    def run(active) -> None:
        outcome = evaluate(active, REQUEST["prefetch"], patient_id=REQUEST["context"]["patientId"],
                           clock=FixedClock(__import__("datetime").date(2026, 11, 20)))
        version = active.ruleset.identity.version
        assert outcome.evaluation.ruleset.version == version
        assert [f.decision for f in outcome.evaluation.fired] == expected[version], version

    def loop() -> None:
        try:
            while not stop.is_set():
                run(live.current())
                run(held)  # noqa: F821 - bound in the enclosing test; deleted after the threads stop
                counts[0] += 1
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=loop) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for n in range(50):
            write_atomically(rules / "ruleset.yaml", VERSIONS["v1.1.0" if n % 2 == 0 else "v1.0.0"][0])
            assert live.reload() is True
            time.sleep(0.005)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert counts[0] > 50
    run(held)  # still evaluates correctly after 50 reloads
    assert not held.engine.closed
    gc.collect()
    engine.free_pending()
    assert engine.live_rulesets() - baseline == 2  # the one served now and the one still held
    del held
    engine.free_pending()
    assert engine.live_rulesets() - baseline == 1  # released at once by its last holder


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_200_reloads_do_not_grow_memory(rules: Path) -> None:
    import gc

    live = LiveRuleSet(rules)
    texts = [VERSIONS["v1.1.0"][0], VERSIONS["v1.0.0"][0]]
    for n in range(20):  # warm up: caches, allocator arenas
        (rules / "ruleset.yaml").write_text(texts[n % 2])
        assert live.reload() is True
    gc.collect()
    before = _rss_mib()
    for n in range(200):
        (rules / "ruleset.yaml").write_text(texts[n % 2])
        assert live.reload() is True
    gc.collect()
    growth = _rss_mib() - before
    assert growth < 8, f"200 reloads grew RSS by {growth:.1f} MiB"
