"""Fetch of the absent prefetch keys against a slow, strict loopback FHIR server: sequential vs concurrent.

``.venv/bin/python bench/bench_fetch.py [--runs N] [--delay S]`` starts tests/fhir_server.py (strict like
Tomcat, HAPI-style paging) with the data of one example request, makes every search answer after
``--delay`` seconds (default 0.6, what issue 11 measured on a real EHR FHIR API), then fetches all the
service's prefetch keys with ``cds.fhir_client.complete_prefetch`` on the DEFAULT fetch settings:

* concurrent: one call with nothing prefetched (what the service does);
* sequential: one call per key, the other keys prefetched, one after the other (what a fetch without
  concurrency would cost).

It prints wall-clock figures and asserts only that both give the same data. Plain http on loopback.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fhir_server import FhirData, FhirTestServer  # noqa: E402

from cds.fhir_client import FetchSettings, complete_prefetch, make_client  # noqa: E402
from cds.ruleset.loader import load_ruleset  # noqa: E402
from cds.service import prefetch_templates  # noqa: E402

EXAMPLE = ROOT / "fhir_examples" / "requests" / "bird-dog-28-27.json"
TOKEN = "bench-token"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--delay", type=float, default=0.6, help="seconds before each search is answered")
    args = parser.parse_args()

    path = EXAMPLE if EXAMPLE.exists() else sorted((ROOT / "fhir_examples" / "requests").glob("*.json"))[0]
    request = json.loads(path.read_text(encoding="utf-8"))
    templates = prefetch_templates(load_ruleset(ROOT / "rules"))
    settings = replace(FetchSettings(), allow_http=True)  # the default budget; http: loopback
    context = request["context"]
    patient_id = context["patientId"]

    with FhirTestServer(FhirData.from_prefetch(request["prefetch"])) as server:
        server.required_token = TOKEN
        server.search_delay = args.delay
        client = make_client(settings)

        def fetch(prefetch: dict[str, Any] | None) -> dict[str, Any]:
            return complete_prefetch(templates=templates, prefetch=prefetch, context=context,
                                     patient_id=patient_id, fhir_server=server.base_url, access_token=TOKEN,
                                     settings=settings, client=client)

        reference = fetch(None)  # warm the pool
        concurrent: list[float] = []
        sequential: list[float] = []
        for _ in range(args.runs):
            started = time.perf_counter()
            together = fetch(None)
            concurrent.append(time.perf_counter() - started)
            started = time.perf_counter()
            one_by_one: dict[str, Any] = {}
            for key in templates:
                one_by_one[key] = fetch({k: v for k, v in reference.items() if k != key})[key]
            sequential.append(time.perf_counter() - started)
            assert together == reference and one_by_one == reference
        searches = sum(1 for t in templates.values() if "?" in t)
        client.close()

    print(f"{len(templates)} keys ({searches} searches answered after {args.delay:.1f} s, 1 read), "
          f"default budget {settings.total_timeout} s, {args.runs} runs, {path.stem}")
    for name, times in (("concurrent (the service)", concurrent), ("sequential, key by key", sequential)):
        print(f"  {name:26s} median {statistics.median(times) * 1000:7.0f} ms   max {max(times) * 1000:7.0f} ms")
    print(f"  speed-up {statistics.median(sequential) / statistics.median(concurrent):.1f}x")


if __name__ == "__main__":
    main()
