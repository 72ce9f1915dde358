"""In-process benchmark of the progression card's trend (issue 14 point 1): prints figures, asserts nothing.

    .venv/bin/python bench/bench_trend.py [--quick]

1. The chart: parsing a 6-session query (``cds.trend_chart.parse_query``), drawing the SVG cold
   (``render.__wrapped__``: the LRU cache bypassed) and cached (``render``: the same query again), and
   one ``GET /charts/trend.svg`` through the Flask test client (cached render; headers, routing).
2. Card building (``cds.cards.build_cards``) with the trend and the SMART link vs the same rule set
   without ``texts.trend`` and ``texts.app_link``, interleaved call for call, on a typical example
   (``bird-dog-28-27``: 3 sessions) and on the generated two-year history of bench_core (200
   sessions, 600 resources), after one warm-up call (validation cache filled, as after extraction);
   and ``cds.trend.session_history`` alone.

Medians and p99 in microseconds; the machine is shared, so run it a few times and compare medians.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_core import long_history_request  # noqa: E402

from cds import service  # noqa: E402
from cds.active_rules import ActiveRules  # noqa: E402
from cds.cards import build_cards  # noqa: E402
from cds.clock import FixedClock  # noqa: E402
from cds.config import load_settings  # noqa: E402
from cds.engine import RuleEngine  # noqa: E402
from cds.http import create_app  # noqa: E402
from cds.live_rules import LiveRuleSet  # noqa: E402
from cds.ruleset.model import RuleSet  # noqa: E402
from cds.trend import chart_query, session_history  # noqa: E402
from cds.trend_chart import parse_query, render  # noqa: E402

REQUESTS = ROOT / "fhir_examples" / "requests"
EVALUATION_DATE = dt.date.fromisoformat(json.loads((ROOT / "fhir_examples" / "config.json").read_text())["evaluationDate"])
BASE = "https://cds.example.org"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e6


def line(name: str, samples: list[float]) -> str:
    return f"  {name:<52} p50 {statistics.median(samples):8.1f} us   p99 {pct(samples, 99):8.1f} us"


def without_trend(active: ActiveRules) -> ActiveRules:
    rs = active.ruleset
    doc = rs.document
    bare = RuleSet(doc.model_copy(update={"texts": doc.texts.model_copy(update={"trend": None, "app_link": None})}),
                   rs.sha256, rs.files, rs.conditions)
    return ActiveRules(bare, RuleEngine(bare))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer calls")
    n = 300 if parser.parse_args().quick else 3000

    active = LiveRuleSet(ROOT / "rules").current()
    bare = without_trend(active)
    clock = FixedClock(EVALUATION_DATE)
    labels = active.ruleset.document.texts.trend
    assert labels is not None

    typical = json.loads((REQUESTS / "bird-dog-28-27.json").read_text())
    long = long_history_request(EVALUATION_DATE)
    print(f"bench_trend: {n} calls per figure, Python {sys.version.split()[0]}")

    # 1. the chart
    outcome = service.evaluate(active, long["prefetch"], patient_id=long["context"]["patientId"], clock=clock)
    history = session_history(outcome.facts, active.ruleset)
    query = chart_query(history, active.ruleset)
    args = parse_qs(query)
    data = parse_query(args)
    print(f"\n1. chart of {len(history)} sessions ({len(query)}-character query)")
    print(line("parse_query", [timed(lambda: parse_query(args, len(query))) for _ in range(n)]))
    print(line("render, cold (no cache)", [timed(lambda: render.__wrapped__(data, labels)) for _ in range(n)]))
    render(data, labels)
    print(line("render, cached (same query)", [timed(lambda: render(data, labels)) for _ in range(n)]))
    settings = load_settings({}, development=True, rules_dir=ROOT / "rules", rules_poll_seconds=0, auth=False,
                             database_url="")
    client = create_app(settings).test_client()
    url = f"/charts/trend.svg?{query}"
    assert client.get(url).status_code == 200
    print(line("GET /charts/trend.svg (Flask test client, cached)", [timed(lambda: client.get(url)) for _ in range(n)]))
    print(f"  SVG size: {len(render(data, labels))} bytes")

    # 2. card building with and without the trend
    for name, request in (("typical (bird-dog-28-27)", typical), ("long history (200 sessions)", long)):
        card_figures(name, request, active, bare, clock, n)


def card_figures(name: str, request: dict[str, Any], active: ActiveRules, bare: ActiveRules, clock: FixedClock,
                 n: int) -> None:
    patient = request["context"]["patientId"]
    prefetch = request["prefetch"]
    evaluation, facts, _ = service.decide(active, prefetch, patient_id=patient, clock=clock)

    def with_trend() -> None:
        build_cards(evaluation, facts, active.ruleset, patient_id=patient, public_base_url=BASE)

    def without() -> None:
        build_cards(evaluation, facts, bare.ruleset, patient_id=patient, public_base_url=BASE)

    def history() -> None:
        session_history(facts, active.ruleset)

    with_trend()  # warm-up: the trend's memo filled, as after the first chart opening
    with_t, without_t, hist = [], [], []
    for _ in range(n):  # interleaved call for call
        with_t.append(timed(with_trend))
        without_t.append(timed(without))
        hist.append(timed(history))
    print(f"\n2. card building, {name}")
    print(line("build_cards without the trend", without_t))
    print(line("build_cards with the trend and the SMART link", with_t))
    print(line("  of which session_history", hist))
    print(f"  added per call (p50): {statistics.median(with_t) - statistics.median(without_t):.1f} us")

if __name__ == "__main__":
    main()
