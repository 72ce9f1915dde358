"""The worst hook-call bodies under the 2 MiB size limit: CPU time, peak RSS and log lines per call.

    .venv/bin/python bench/bench_worst_body.py            # every shape, each in a fresh process
    .venv/bin/python bench/bench_worst_body.py --shape empty-entries

Issue 12 found one authenticated 2 MiB call (a Bundle of 522,351 ``{}`` entries) costing 30 s of CPU and
522,352 log lines. Work is now bounded by counts (``CDS_MAX_ENTRIES_PER_KEY``, default 1000: more is a
413 before any work) and skipped resources give one summary line per request. The shapes:

* ``empty-entries``: one key holding as many ``{}`` entries as 2 MiB allows (the finding): 413.
* ``empty-at-cap``: every Bundle key at the cap of ``{}`` entries (4,000 skips): 200.
* ``observations-at-cap``: every Observation key at the cap of minimal, distinct, valid-looking
  Observations for the context patient (each validated and converted): 200.
* ``fat-observations``: the cap's worth of Observations padded to fill 2 MiB (bytes, not counts): 200.
* ``deep-nesting``: an Observation whose extension nests as deep as the JSON parser allows: 200.
* ``huge-components``, ``huge-coding``, ``huge-condition``, ``many-extensions``: one resource whose
  arrays fill the body (half a million ``{}`` components or codings in a pain score, notes in the LBP
  Condition; 450,000 extensions): the entry cap does not bound them; the resource bound does
  (``cds.fhir_validation.MAX_RESOURCE_BYTES``: more content is invalid without validation; before it,
  ``huge-components`` cost 9.9 s of CPU and 870 MiB): 200, the resource skipped and said so.

Each shape runs in its own process (so peak RSS is that call's), through the Flask test client, auth
off, no database. Prints: status, CPU seconds (process time of the call), wall seconds, peak RSS (MiB,
the whole process: Python + the app + the body) and the number of log records at INFO and above (what
a deployment logs) and at every level. Target: < 1 s CPU for every shape.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LIMIT = 2 * 1024 * 1024
URL = "/cds-services/lbp-exercise-progression"
EXAMPLE = ROOT / "fhir_examples" / "requests" / "bird-dog-12-14.json"
SHAPES = ["empty-entries", "empty-at-cap", "observations-at-cap", "fat-observations", "deep-nesting",
          "huge-components", "huge-coding", "huge-condition", "many-extensions"]


def _bundle(entries: list[Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": entries}


def _observation(i: int, pid: str, pad: str = "") -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation", "id": f"o{i}", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "72514-3"}]},
        "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": "2031-07-19",
        "valueInteger": i % 11,
    }
    if pad:
        obs["note"] = [{"text": pad}]
    return obs


def build(shape: str, cap: int) -> bytes:
    body = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    pid = body["context"]["patientId"]
    bundle_keys = [k for k, v in body["prefetch"].items() if isinstance(v, dict) and v.get("resourceType") == "Bundle"]
    obs_keys = ["painScores", "exerciseRounds"]
    if shape == "empty-entries":
        base = len(json.dumps(body).encode())
        n = (LIMIT - base - 200) // 4  # '{}, ' per entry
        body["prefetch"]["conditions"] = _bundle([{}] * n)
    elif shape == "empty-at-cap":
        for key in bundle_keys:
            body["prefetch"][key] = _bundle([{}] * cap)
    elif shape == "observations-at-cap":
        for j, key in enumerate(obs_keys):
            body["prefetch"][key] = _bundle([{"resource": _observation(j * cap + i, pid)} for i in range(cap)])
    elif shape == "fat-observations":
        per = (LIMIT - 20_000) // cap - 400
        body["prefetch"]["painScores"] = _bundle([{"resource": _observation(i, pid, "x" * per)} for i in range(cap)])
    elif shape == "deep-nesting":
        depth = 450  # dict + list per level: ~900 levels, near what the JSON parser accepts
        nested: dict[str, Any] = {"url": "http://example.org/x", "valueString": "v"}
        for _ in range(depth):
            nested = {"url": "http://example.org/x", "extension": [nested]}
        obs = _observation(1, pid)
        obs["extension"] = [nested]
        body["prefetch"]["painScores"] = _bundle([{"resource": obs}])
    elif shape in ("huge-components", "huge-coding", "huge-condition", "many-extensions"):
        # one resource whose arrays fill the body: the entry cap does not bound them, the resource bound does
        n = (LIMIT - len(json.dumps(body).encode()) - 2000) // 4  # '{}, ' per element
        pain = body["prefetch"]["painScores"]["entry"][0]["resource"]
        if shape == "huge-components":
            pain["component"] = [{}] * n
        elif shape == "huge-coding":
            pain["code"]["coding"] = pain["code"]["coding"] + [{}] * n
        elif shape == "huge-condition":
            body["prefetch"]["conditions"]["entry"][0]["resource"]["note"] = [{}] * n
        else:
            pain["extension"] = [{"url": "x"}] * (n // 4)  # '{"url": "x"}, ' per extension
    else:
        raise SystemExit(f"unknown shape {shape}")
    raw = json.dumps(body, separators=(",", ":") if shape == "deep-nesting" else (", ", ": ")).encode()
    assert len(raw) <= LIMIT, (shape, len(raw))
    return raw


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.info = self.all = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.all += 1
        self.info += record.levelno >= logging.INFO


def run_one(shape: str) -> dict[str, Any]:
    from cds.config import load_settings
    from cds.http import create_app

    settings = load_settings({}, development=True, rules_dir=ROOT / "rules", auth=False, database_url="",
                             rules_poll_seconds=0)
    app = create_app(settings)
    client = app.test_client()
    raw = build(shape, settings.max_entries_per_key)
    counter = _Count()
    root = logging.getLogger()
    root.addHandler(counter)
    root.setLevel(logging.DEBUG)
    cpu, wall = time.process_time(), time.perf_counter()
    response = client.post(URL, data=raw, headers={"Content-Type": "application/json"})
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    root.removeHandler(counter)
    return {
        "shape": shape, "bytes": len(raw), "status": response.status_code, "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3), "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "log_lines_info": counter.info, "log_lines_all": counter.all,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES)
    args = parser.parse_args()
    if args.shape:
        print(json.dumps(run_one(args.shape)))
        return
    print(f"{'shape':22} {'bytes':>9} {'status':>6} {'CPU s':>6} {'wall s':>6} {'RSS MiB':>8} {'log INFO+':>9} {'log all':>8}")
    worst = 0.0
    for shape in SHAPES:
        out = subprocess.run([sys.executable, __file__, "--shape", shape], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        worst = max(worst, r["cpu_s"])
        print(f"{r['shape']:22} {r['bytes']:>9} {r['status']:>6} {r['cpu_s']:>6.3f} {r['wall_s']:>6.3f} "
              f"{r['peak_rss_mib']:>8.1f} {r['log_lines_info']:>9} {r['log_lines_all']:>8}")
    print(f"worst CPU per call: {worst:.3f} s (target < 1 s)")


if __name__ == "__main__":
    main()
