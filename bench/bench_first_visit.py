"""The typical example as a repeat visit, as a new patient's first visit, and in a cold process, for any
checkout of lbp-cds (to compare versions interleaved): prints one line, asserts nothing.

    .venv/bin/python bench/bench_first_visit.py [CHECKOUT] [--calls N]

CHECKOUT (default: this one) is the folder whose ``cds`` package, ``rules/`` and typical request
(``fhir_examples/requests/bird-dog-28-27.json``) are used, so an older version in a git worktree runs
with its own code and data: ``git worktree add /tmp/old <commit>`` then
``bench/bench_first_visit.py /tmp/old``. Through the Flask test client, auth off, no database, the
examples' evaluation date; thread CPU time p50 of N calls per row:

- **typical**: the same request again (a repeat visit: every cache warm);
- **new patient**: N patients never seen (the typical request under N other patient ids);
- **cold**: every validation cache and memo emptied before each call (a process that served nothing and
  checked nothing: no real process is in that state, since start-up runs the rule tests);
- **after start-up**: every cache and memo emptied, then the rule folder's own tests run on the served
  rules, as start-up does before a process serves (:func:`cds.reload_gate.candidate`), then the typical
  request of a patient never seen: the first patient of a freshly started process (N/4 calls, since each
  repeats the start-up's rule tests).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

URL = "/cds-services/lbp-exercise-progression"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", nargs="?", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--calls", type=int, default=400)
    args = parser.parse_args()
    root = Path(args.checkout).resolve()
    sys.path.insert(0, str(root))

    import cds.fhir_validation as fhir_validation
    from cds.config import load_settings
    from cds.http import create_app

    try:
        from cds.extract import fact_memo
    except ImportError:  # versions before the fact memo
        fact_memo = None
    try:
        from cds.ruletests import load_cases, run_cases
    except ImportError:  # versions before issue 9 moved the runner out of cds.ruleset
        from cds.ruleset.ruletests import load_cases, run_cases  # type: ignore[no-redef]

    evaluation_date = dt.date.fromisoformat(json.loads((root / "fhir_examples" / "config.json").read_text())["evaluationDate"])
    settings = load_settings({}, development=True, rules_dir=root / "rules", evaluation_date=evaluation_date, auth=False,
                             database_url="", rules_poll_seconds=0)
    app = create_app(settings)
    gc.freeze()
    client = app.test_client()
    typical = (root / "fhir_examples" / "requests" / "bird-dog-28-27.json").read_text()
    patient = json.loads(typical)["context"]["patientId"]

    def call(body: str) -> float:
        c0 = time.thread_time()
        response = client.post(URL, data=body, content_type="application/json")
        if response.status_code != 200:
            raise SystemExit(f"status {response.status_code}: {response.get_data(as_text=True)[:300]}")
        return (time.thread_time() - c0) * 1e3

    for _ in range(200):
        call(typical)
    repeat = [call(typical) for _ in range(args.calls)]
    new = [call(typical.replace(patient, f"new-patient-{i}")) for i in range(args.calls)]
    def forget() -> None:
        fhir_validation.validation_cache.clear()
        if fact_memo is not None:
            fact_memo.clear()

    cold = []
    for _ in range(args.calls):
        forget()
        cold.append(call(typical))
    served = app.extensions["lbp_cds"].rules.current()
    cases = load_cases(root / "rules" / "tests")
    started = []
    for i in range(max(1, args.calls // 4)):
        forget()
        report = run_cases(cases, served)  # what start-up runs on the rules it is about to serve
        if report.failed:
            raise SystemExit(f"{len(report.failed)} rule test case(s) fail in {root / 'rules' / 'tests'}")
        started.append(call(typical.replace(patient, f"first-after-start-{i}")))
    median = statistics.median
    print(f"{str(root):30} typical {median(repeat):.3f}  new patient {median(new):.3f}  cold {median(cold):.3f}  "
          f"after start-up {median(started):.3f}  ms CPU p50 ({args.calls} calls each, {len(started)} after start-up; "
          f"load average {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
