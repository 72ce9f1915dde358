"""The clone experiment (issue 9, point 4): edit the shipped rules of a clone, then see what notices.

A rule author's valid edit of ``rules/`` must never break a Python test (they run on the frozen fixture
rule set ``tests/fixtures/rules``) and must always be caught by the rule tests in ``rules/tests`` when it
changes an expected outcome. The experiment checks both on a throwaway ``git clone`` of HEAD (so it sees
what is committed, not uncommitted work):

1. clone the repository's HEAD into a temporary folder;
2. edit the clone's ``rules/``: ``reps_low``, ``reps_high``, ``pain_gate_max`` and ``new_onset_days`` in
   ruleset.yaml, the display name of a rung in codes.yaml, and a card text in progression.yaml (all valid);
3. run the Python suite of the clone (``pytest tests``) with ``CDS_RULES_DIR`` pointing at the edited
   rules: it must pass;
4. run ``cds rules test <clone>/rules``: it must fail, naming the cases whose expectations changed.

Run ``.venv/bin/python bench/clone_experiment.py [--quick] [--skip-known] [--keep]``; it prints the result
and exits 0 when both hold. ``--quick`` runs only the test files that load rules (:data:`RULE_LOADING_TESTS`);
``--skip-known`` deselects :data:`KNOWN_DEPENDENTS`, the Python tests still known to check the shipped
rules (the script runs and lists them by default).
tests/test_clone_experiment.py runs the same steps (marked ``slow``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: (file in rules/, text that occurs once, replacement): valid edits a rule author might make
EDITS: tuple[tuple[str, str, str], ...] = (
    ("ruleset.yaml", "reps_low: 15 ", "reps_low: 12 "),
    ("ruleset.yaml", "reps_high: 25 ", "reps_high: 22 "),
    ("ruleset.yaml", "pain_gate_max: 2 ", "pain_gate_max: 3 "),
    ("ruleset.yaml", "new_onset_days: 42 ", "new_onset_days: 28 "),
    ("codes.yaml", "display: Single-leg reverse hyper", "display: Single-leg RDL"),
    ("progression.yaml", 'too easy (reps {reps}): add resistance"', 'too easy (reps {reps}): add load"'),
)

#: the Python test files that load a rule set (the quick form of the experiment)
RULE_LOADING_TESTS = ("test_cards.py", "test_service.py", "test_api.py", "test_examples_e2e.py",
                      "test_fetch_e2e.py", "test_engine.py", "test_ruletests.py")

#: Python test files known to depend on the shipped rules/: none (the guide's example test, which shows the
#: shipped rules' output, lives in rules/tests/ with the other content tests).
KNOWN_DEPENDENTS: tuple[str, ...] = ()

#: cases of rules/tests whose expectation the edits change (each must be reported as FAIL)
EXPECTED_FAILURES = ("boundary-reps-14-20", "boundary-reps-25-25", "boundary-pain-3", "boundary-onset-41-days",
                     "bird-dog-28-27", "reverse-hyper-30-29")


@dataclass
class Result:
    clone: Path
    python_rc: int
    python_tail: str
    python_seconds: float
    rules_rc: int
    rules_output: str
    deselected: tuple[str, ...] = ()

    @property
    def python_failures(self) -> list[str]:
        """The failed Python tests (``FAILED``/``ERROR`` lines of the summary)."""
        return re.findall(r"^(?:FAILED|ERROR) (\S+)", self.python_tail, flags=re.M)

    @property
    def failed_cases(self) -> list[str]:
        return re.findall(r"^FAIL \S+: (.+)$", self.rules_output, flags=re.M)

    @property
    def ok(self) -> bool:
        return (self.python_rc == 0 and self.rules_rc != 0
                and all(name in self.failed_cases for name in EXPECTED_FAILURES))


def clone(dest: Path, source: Path = ROOT) -> Path:
    """A ``git clone`` of ``source``'s HEAD at ``dest`` (the fhir_examples/requests symlink included)."""
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(source), str(dest)], check=True,
                   stdout=subprocess.DEVNULL)
    return dest


def edit_rules(rules: Path) -> None:
    """Apply :data:`EDITS` to the rule folder ``rules``; each text must occur exactly once."""
    for name, old, new in EDITS:
        path = rules / name
        text = path.read_text(encoding="utf-8")
        if text.count(old) != 1:
            raise ValueError(f"{path}: expected {old!r} exactly once, found {text.count(old)}")
        path.write_text(text.replace(old, new), encoding="utf-8")


def _env(repo: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDS_", "PYTEST_"))}
    env["CDS_RULES_DIR"] = str(repo / "rules")
    env["PYTHONPATH"] = str(repo)  # the clone's cds package, not the one the virtualenv points at
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_python_tests(repo: Path, files: tuple[str, ...] | None = None,
                     deselect: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``pytest tests`` (or just ``files`` of tests/) in ``repo`` with ``CDS_RULES_DIR=<repo>/rules``; every
    failure is listed (no ``-x``), ``deselect`` and this experiment's own test are left out."""
    targets = [f"tests/{f}" for f in files] if files else ["tests"]
    cmd = [sys.executable, "-m", "pytest", *targets, "-q", "-rfE", "-p", "no:cacheprovider"]
    for path in ("tests/test_clone_experiment.py", *deselect):
        cmd += ["--deselect", path]
    return subprocess.run(cmd, cwd=repo, env=_env(repo), capture_output=True, text=True)


def run_rule_tests(repo: Path) -> subprocess.CompletedProcess:
    """``cds rules test <repo>/rules``, with the clone's code."""
    code = "import sys; from cds.cli import main; sys.exit(main(['rules', 'test', sys.argv[1]]))"
    return subprocess.run([sys.executable, "-c", code, str(repo / "rules")], cwd=repo, env=_env(repo),
                          capture_output=True, text=True)


def experiment(workdir: Path, *, quick: bool = False, source: Path = ROOT,
               deselect: tuple[str, ...] = KNOWN_DEPENDENTS) -> Result:
    repo = clone(workdir / "repo", source)
    edit_rules(repo / "rules")
    started = time.monotonic()
    py = run_python_tests(repo, RULE_LOADING_TESTS if quick else None, deselect)
    seconds = time.monotonic() - started
    rules = run_rule_tests(repo)
    out = (py.stdout + py.stderr).strip().splitlines()
    summary = [line for line in out if line.startswith(("FAILED ", "ERROR "))]
    tail = "\n".join(out[-15:] + [line for line in summary if line not in out[-15:]])
    return Result(repo, py.returncode, tail, seconds, rules.returncode, rules.stdout + rules.stderr, deselect)


def report(result: Result) -> str:
    lines = ["Clone experiment: edited " + ", ".join(sorted({f"rules/{f}" for f, _, _ in EDITS}))]
    lines += [f"  {f}: {old.strip()!r} -> {new.strip()!r}" for f, old, new in EDITS]
    verdict = ("PASS (as it must)" if result.python_rc == 0
               else f"FAILED (exit {result.python_rc}): these Python tests depend on the shipped rules")
    left_out = f" (deselected: {', '.join(result.deselected)})" if result.deselected else ""
    lines.append(f"Python suite with CDS_RULES_DIR=<clone>/rules{left_out}: {verdict} in {result.python_seconds:.0f} s")
    if result.python_rc != 0:
        lines += ["    " + t for t in result.python_failures] or ["    " + t for t in result.python_tail.splitlines()]
        unknown = [t for t in result.python_failures if not t.startswith(KNOWN_DEPENDENTS)]
        lines.append("  known dependents only (" + ", ".join(KNOWN_DEPENDENTS) + ")" if not unknown
                     else f"  NEW dependents: {', '.join(unknown)}")
    failed = result.failed_cases
    verdict = f"FAILED (as it must), exit {result.rules_rc}" if result.rules_rc else "PASSED: the edits went unnoticed"
    lines.append(f"cds rules test <clone>/rules: {verdict}; {len(failed)} case(s) name the changed expectations:")
    lines += [f"    {name}" for name in failed]
    missing = [n for n in EXPECTED_FAILURES if n not in failed]
    if missing:
        lines.append(f"  expected to fail but did not: {', '.join(missing)}")
    summary = [line for line in result.rules_output.splitlines() if re.match(r"\d+ passed, \d+ failed", line)]
    lines += [f"  {line}" for line in summary]
    if result.ok:
        verdict = "ok: the Python tests ignore the shipped rules; the rule tests catch every change"
    elif only_known_dependents(result):
        verdict = ("ok except the known dependents (" + ", ".join(KNOWN_DEPENDENTS)
                   + "): they still check the shipped rules; the rule tests catch every change")
    else:
        verdict = "NOT ok"
    lines.append("RESULT: " + verdict)
    return "\n".join(lines)


def only_known_dependents(result: Result) -> bool:
    """The rule tests caught the edits and every Python failure is in :data:`KNOWN_DEPENDENTS`."""
    rules_ok = result.rules_rc != 0 and all(name in result.failed_cases for name in EXPECTED_FAILURES)
    failures = result.python_failures
    return rules_ok and bool(failures) and all(t.startswith(KNOWN_DEPENDENTS) for t in failures)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the test files that load rules")
    parser.add_argument("--keep", action="store_true", help="keep the clone and print where it is")
    parser.add_argument("--skip-known", action="store_true",
                        help=f"deselect the known dependents ({', '.join(KNOWN_DEPENDENTS)}), as the test does")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="lbp-clone-experiment-"))
    try:
        result = experiment(workdir, quick=args.quick, deselect=KNOWN_DEPENDENTS if args.skip_known else ())
        print(report(result))
        if args.keep:
            print(f"clone kept at {result.clone}")
        return 0 if result.ok or only_known_dependents(result) else 1
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
