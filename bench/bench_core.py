"""In-process benchmark of the patient-view service: prints figures, asserts nothing.

    make bench                       # or: .venv/bin/python bench/bench_core.py [--quick]

1. The fhir_examples requests, round-robin, through the Flask test client (N calls): p50/p99 per call,
   and the split FHIR parsing (extract) / rule evaluation / card building from ``Outcome.timings_ms``.
   In the same loop, interleaved call for call, a bare Flask endpoint that returns one fixed card for
   the same request bodies; the ratio of the two p50s.
   Then the typical example three ways: as a repeat visit (the same request again), as the first
   visit of a new patient (every call the typical request under a patient id never sent before, so
   none of its resources was seen, while what patients share, such as codes and components, is warm as
   in a running service), and as the first call of a cold process (every cache and memo emptied).
2. A generated long history (two years: ~200 pain scores and ~400 rounds, newest first, valid FHIR
   R4) through the test client: p50/p99 and the split.
3. Resident memory (RSS, /proc/self/statm) before and after 100,000 full ``service.evaluate`` calls
   (extract + rules + cards: everything but Flask), round-robin over the examples.

Settings: the repository's rules, the examples' evaluation date, auth off, no database (so no audit
writes: the audit runs on a background thread in production and is not part of a call's latency),
no rule-file watching.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flask import Flask  # noqa: E402

from cds import service  # noqa: E402
from cds.clock import FixedClock  # noqa: E402
from cds.collector import settle_after_start_up  # noqa: E402
from cds.config import load_settings  # noqa: E402
from cds.extract import fact_memo  # noqa: E402
from cds.fhir_validation import validation_cache  # noqa: E402
from cds.http import create_app  # noqa: E402

REQUESTS = ROOT / "fhir_examples" / "requests"
EVALUATION_DATE = dt.date.fromisoformat(json.loads((ROOT / "fhir_examples" / "config.json").read_text())["evaluationDate"])
URL = "/cds-services/lbp-exercise-progression"
PAGE = os.sysconf("SC_PAGE_SIZE")
OBS = "https://lbp-cds.org/fhir/CodeSystem/observation"
LADDER = ["hip-abduction", "bird-dog", "single-leg-reverse-hyper", "reverse-hyper"]


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def examples() -> list[tuple[str, dict[str, Any]]]:
    return [
        (p.stem, json.loads(p.read_text()))
        for p in sorted(REQUESTS.glob("*.json"))
        if not p.name.endswith(".expected.json")
    ]


# ------------------------------------------------------------------------------------------------
# A long history: two years of sessions
# ------------------------------------------------------------------------------------------------


def long_history_request(anchor: dt.date, *, sessions: int = 200) -> dict[str, Any]:
    """A patient with ``sessions`` sessions over two years (2 rounds + 1 pain score each), newest first."""
    patient = "lbp-long-history"
    subject = {"reference": f"Patient/{patient}"}
    rounds: list[dict[str, Any]] = []
    pains: list[dict[str, Any]] = []
    span = 730
    for k in range(sessions):  # k = 0 is the newest session
        day = anchor - dt.timedelta(days=2 + round(k * (span - 2) / max(1, sessions - 1)))
        stamp = day.strftime("%Y%m%d")
        exercise = LADDER[min(len(LADDER) - 1, (sessions - 1 - k) * len(LADDER) // sessions)]
        ids = []
        for n, reps in ((1, 20 + k % 4), (2, 18 + k % 3)):
            rid = f"round-{stamp}-{n}"
            ids.append(rid)
            rounds.append({
                "resourceType": "Observation",
                "id": rid,
                "status": "final",
                "code": {"coding": [{"system": OBS, "code": "reps-to-technical-failure"}]},
                "subject": subject,
                "effectiveDateTime": f"{day.isoformat()}T10:0{n}:00-05:00",
                "valueQuantity": {"value": reps, "unit": "repetitions", "system": "http://unitsofmeasure.org",
                                  "code": "{repetitions}"},
                "component": [
                    {"code": {"coding": [{"system": OBS, "code": "exercise"}]},
                     "valueCodeableConcept": {"coding": [{"system": "https://lbp-cds.org/fhir/CodeSystem/exercise",
                                                          "code": exercise}]}},
                    {"code": {"coding": [{"system": OBS, "code": "round"}]}, "valueInteger": n},
                ],
            })
        pain = {
            "resourceType": "Observation",
            "id": f"pain-{stamp}",
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "survey"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "72514-3"}]},
            "subject": subject,
            "effectiveDateTime": f"{day.isoformat()}T10:30:00-05:00",
            "valueInteger": k % 3,
        }
        if k % 2:
            pain["derivedFrom"] = [{"reference": f"Observation/{i}"} for i in ids]
        pains.append(pain)

    def bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
        # newest first, as `_sort=-date` returns them (round 2 of a day was written after round 1)
        ordered = sorted(resources, key=lambda r: r.get("effectiveDateTime", ""), reverse=True)
        return {
            "resourceType": "Bundle", "type": "searchset", "total": len(ordered),
            "entry": [{"fullUrl": f"https://ehr.example.org/fhir/{r['resourceType']}/{r['id']}", "resource": r,
                       "search": {"mode": "match"}} for r in ordered],
        }

    condition = {
        "resourceType": "Condition", "id": "lbp-1",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                       "code": "active"}]},
        "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                           "code": "confirmed"}]},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "278860009"}]},
        "subject": subject,
        "onsetDateTime": (anchor - dt.timedelta(days=800)).isoformat(),
    }
    return {
        "hook": "patient-view",
        "hookInstance": "00000000-0000-4000-8000-000000000001",
        "context": {"userId": "Practitioner/example", "patientId": patient},
        "prefetch": {
            "patient": {"resourceType": "Patient", "id": patient},
            "conditions": bundle([condition]),
            "painScores": bundle(pains),
            "exerciseRounds": bundle(rounds),
        },
    }


def validate_fhir(request: dict[str, Any]) -> None:
    """Every resource of the generated request is valid FHIR R4 (fhir.resources R4B)."""
    from fhir.resources.R4B import get_fhir_model_class

    for value in request["prefetch"].values():
        get_fhir_model_class(value["resourceType"]).model_validate(value)


# ------------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------------


class TimingRecorder:
    """An evaluation observer (AppState.observers) keeping each call's Outcome.timings_ms."""

    def __init__(self) -> None:
        self.timings: list[dict[str, float]] = []

    def after_evaluation(self, hook_request, service_id, outcome) -> None:
        self.timings.append(outcome.timings_ms)

    def fetch_error(self, key) -> None:
        return None


def bare_app(card: dict[str, Any]) -> Flask:
    """The baseline: a bare Flask endpoint that returns one fixed card (serialised per call)."""
    app = Flask("bare")
    app.json.sort_keys = False

    @app.post(URL)
    def call():
        return app.json.response({"cards": [card]})

    return app


def row(name: str, samples_ms: list[float], cpu: list[float], split: list[dict[str, float]] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "n": len(samples_ms), "p50": pct(samples_ms, 50), "p99": pct(samples_ms, 99),
                           "cpu50": pct(cpu, 50), "cpu99": pct(cpu, 99)}
    if split:
        for part in ("extract", "rules", "cards"):
            out[part] = statistics.median(t[part] for t in split)
    return out


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (f"{'':34} {'calls':>6} {'p50 ms':>7} {'p99 ms':>7} | {'cpu p50':>7} {'cpu p99':>7} | "
            f"{'extract':>7} {'rules':>6} {'cards':>6}  (median ms)")
    print(head)
    print("-" * len(head))
    for r in rows:
        split = (
            f"{r['extract']:7.3f} {r['rules']:6.3f} {r['cards']:6.3f}" if "extract" in r else ""
        )
        print(f"{r['name']:34} {r['n']:6d} {r['p50']:7.3f} {r['p99']:7.3f} | {r['cpu50']:7.3f} {r['cpu99']:7.3f} | {split}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000, help="calls through the test client (default 3000)")
    parser.add_argument("--long-calls", type=int, default=300, help="long-history calls (default 300)")
    parser.add_argument("--memory-evals", type=int, default=100_000, help="evaluations for the memory check")
    parser.add_argument("--quick", action="store_true", help="a tenth of every count")
    args = parser.parse_args()
    if args.quick:
        args.calls, args.long_calls, args.memory_evals = args.calls // 10, args.long_calls // 10, args.memory_evals // 10

    settings = load_settings(
        {}, development=True, rules_dir=ROOT / "rules", evaluation_date=EVALUATION_DATE, auth=False,
        database_url="", rules_poll_seconds=0,
    )
    app = create_app(settings)
    settle_after_start_up()  # as the entry points do (cds.wsgi, cds run): cds/collector.py
    state = app.extensions["lbp_cds"]
    recorder = TimingRecorder()
    state.observers.append(recorder)
    client = app.test_client()

    reqs = examples()
    bodies = [json.dumps(r).encode() for _, r in reqs]
    typical = next(r for name, r in reqs if name == "bird-dog-28-27")
    fixed_card = client.post(URL, data=json.dumps(typical), content_type="application/json").get_json()["cards"][0]
    bare_client = bare_app(fixed_card).test_client()

    cpu_ms: dict[int, list[float]] = {}  # id(list of wall samples) -> CPU-time samples of the same calls

    def call(c, body: bytes, into: list[float] | None = None) -> float:
        c0, t0 = time.thread_time(), time.perf_counter()
        response = c.post(URL, data=body, content_type="application/json")
        elapsed = (time.perf_counter() - t0) * 1e3
        cpu = (time.thread_time() - c0) * 1e3
        if response.status_code != 200:
            raise SystemExit(f"bench: status {response.status_code}: {response.get_data(as_text=True)[:300]}")
        if into is not None:
            into.append(elapsed)
            cpu_ms.setdefault(id(into), []).append(cpu)
        return elapsed

    print(f"lbp-cds core bench  python {platform.python_version()}  {platform.machine()}  "
          f"{len(reqs)} example requests, evaluation date {EVALUATION_DATE}")
    print()

    # warm-up: imports, pydantic/fhir model caches, allocator
    for i in range(min(300, args.calls)):
        call(client, bodies[i % len(bodies)])
        call(bare_client, bodies[i % len(bodies)])
    recorder.timings.clear()

    # 1. examples vs bare Flask, interleaved call for call
    ex_ms: list[float] = []
    bare_ms: list[float] = []
    for i in range(args.calls):
        body = bodies[i % len(bodies)]
        call(client, body, ex_ms)
        call(bare_client, body, bare_ms)
    ex_split = list(recorder.timings)
    recorder.timings.clear()

    # the typical example alone
    typical_body = json.dumps(typical).encode()
    typ_ms: list[float] = []
    for _ in range(max(100, args.calls // 3)):
        call(client, typical_body, typ_ms)
    typ_split = list(recorder.timings)
    recorder.timings.clear()

    # the typical example, first visit of a new patient: every call another patient (the typical
    # request under a patient id never sent before), so none of its resources was seen by this process;
    # what other patients share (codes, components, the suggested order's shape) is warm, as in service
    new_ms: list[float] = []
    typical_text = json.dumps(typical)
    patient_id = typical["context"]["patientId"]
    new_bodies = [typical_text.replace(patient_id, f"new-patient-{i}").encode() for i in range(max(100, args.calls // 3))]
    for body in new_bodies:
        call(client, body, new_ms)
    new_split = list(recorder.timings)
    recorder.timings.clear()

    # the typical example, cold process: every validation cache and memo emptied before every call
    cold_ms: list[float] = []
    for _ in range(max(100, args.calls // 3)):
        validation_cache.clear()
        fact_memo.clear()  # the Observation -> fact memo too: nothing of this patient is known
        call(client, typical_body, cold_ms)
    cold_split = list(recorder.timings)
    recorder.timings.clear()

    # 2. long history
    long_req = long_history_request(EVALUATION_DATE)
    validate_fhir(long_req)
    pains = len(long_req["prefetch"]["painScores"]["entry"])
    rounds = len(long_req["prefetch"]["exerciseRounds"]["entry"])
    long_body = json.dumps(long_req).encode()
    for _ in range(min(20, args.long_calls)):
        call(client, long_body)
    recorder.timings.clear()
    long_ms: list[float] = []
    for _ in range(args.long_calls):
        call(client, long_body, long_ms)
    long_split = list(recorder.timings)
    recorder.timings.clear()
    long_cards = client.post(URL, data=long_body, content_type="application/json").get_json()["cards"]

    rows = [
        row("examples, round-robin", ex_ms, cpu_ms[id(ex_ms)], ex_split),
        row("typical example (bird-dog-28-27)", typ_ms, cpu_ms[id(typ_ms)], typ_split),
        row("bare Flask, one fixed card", bare_ms, cpu_ms[id(bare_ms)]),
        row(f"long history ({pains} pain, {rounds} rounds)", long_ms, cpu_ms[id(long_ms)], long_split),
        row("typical example, first visit", cold_ms, cpu_ms[id(cold_ms)], cold_split),
        row("typical example, new patient", new_ms, cpu_ms[id(new_ms)], new_split),
    ]
    print_table(rows)
    ratio_all = rows[0]["p50"] / rows[2]["p50"]
    ratio_typ = rows[1]["p50"] / rows[2]["p50"]
    print()
    print(f"ratio p50 examples / bare Flask:        {ratio_all:5.2f}x   (target <= 5x)")
    print(f"ratio p50 typical example / bare Flask: {ratio_typ:5.2f}x")
    print(f"first visit (every cache emptied) / bare Flask: {rows[4]['p50'] / rows[2]['p50']:5.2f}x; "
          f"a new patient (none of its resources seen before) / bare Flask: {rows[5]['p50'] / rows[2]['p50']:5.2f}x")
    print(f"same ratios on CPU time per call:       {rows[0]['cpu50'] / rows[2]['cpu50']:5.2f}x, "
          f"{rows[1]['cpu50'] / rows[2]['cpu50']:5.2f}x")
    print(f"examples p99 {rows[0]['p99']:.3f} ms (target < 5 ms); long history p50 {rows[3]['p50']:.3f} ms "
          f"(target < 15 ms); long history answer: "
          f"{', '.join(c['extension']['org.lbp-cds.recommendation']['ruleId'] for c in long_cards)}")
    print("(per call through the Flask test client, request body pre-serialised; p50/p99 = wall clock, cpu = this")
    print(" thread's CPU time, which other processes on a busy machine do not inflate; split = Outcome.timings_ms)")
    try:
        print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    except OSError:
        pass
    print()

    # 3. memory over many full evaluations (service.evaluate: extract + rules + cards, no Flask)
    if args.memory_evals <= 0:
        return 0
    active = state.rules.current()
    clock = FixedClock(EVALUATION_DATE)
    inputs = [(r["prefetch"], r["context"]["patientId"]) for _, r in reqs]
    for i in range(2000):  # warm-up
        prefetch, pid = inputs[i % len(inputs)]
        service.evaluate(active, prefetch, patient_id=pid, clock=clock)
    gc.collect()
    before = rss_mib()
    t0 = time.perf_counter()
    checkpoints = []
    step = max(1, args.memory_evals // 4)
    for i in range(args.memory_evals):
        prefetch, pid = inputs[i % len(inputs)]
        service.evaluate(active, prefetch, patient_id=pid, clock=clock)
        if (i + 1) % step == 0:
            checkpoints.append(rss_mib())
    seconds = time.perf_counter() - t0
    gc.collect()
    after = rss_mib()
    print(f"memory: {args.memory_evals:,} x service.evaluate (extract + rules + cards, no Flask) in {seconds:.1f} s "
          f"({seconds / args.memory_evals * 1e3:.3f} ms each)")
    print(f"  RSS before {before:.1f} MiB, after {after:.1f} MiB, growth {after - before:+.1f} MiB; "
          f"at each quarter: {', '.join(f'{c:.1f}' for c in checkpoints)} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
