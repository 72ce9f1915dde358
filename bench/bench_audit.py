"""How many audit records per second the background writer's database writes can take: prints figures,
asserts nothing.

    .venv/bin/python bench/bench_audit.py [--records N] [--database sqlite|postgres|both]

The audit queue (``cds.storage.AuditWriter``, 1,000 records) drops records when hook calls come faster
than its one writer thread stores them. This measures that thread's capacity: N records like a typical
hook call's (two cards, one with a suggestion) stored one transaction each (``Store.record_evaluation``,
what the writer does when calls are sparse) and in batches (``Store.record_evaluations``, what it does
with whatever queued up while the previous write ran), on a SQLite file and on a throw-away loopback
PostgreSQL (fsync off, as bench_http.py starts it). Wall time and this process's CPU time per record.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cds.storage import AuditCard, AuditRecord, Store, hash_patient_id, upgrade  # noqa: E402


def record(i: int) -> AuditRecord:
    return AuditRecord(
        hook_instance=str(uuid.uuid4()), service_id="lbp-exercise-progression", ruleset_name="lbp",
        ruleset_version="2.1.0", ruleset_sha256="a" * 64, patient_hash=hash_patient_id(b"k" * 32, f"Patient/{i}"),
        cards=(
            AuditCard(card_uuid=str(uuid.uuid4()), rule_id="step-up", decision="step-up", indicator="info",
                      suggestion_uuids=(str(uuid.uuid4()),)),
            AuditCard(card_uuid=str(uuid.uuid4()), rule_id="disclaimer", decision="disclaimer", indicator="info"),
        ),
    )


def measure(url: str, records: int) -> list[tuple[str, float, float]]:
    upgrade(url)
    store = Store(url)
    rows = []
    try:
        for label, batch in (("one per transaction", 1), ("batches of 10", 10), ("batches of 100", 100)):
            todo = [record(i) for i in range(records)]
            store.record_evaluations(todo[:batch])  # warm: connection, prepared statements
            todo = todo[batch:]
            t0, c0 = time.perf_counter(), time.process_time()
            for start in range(0, len(todo), batch):
                if batch == 1:
                    store.record_evaluation(todo[start])
                else:
                    store.record_evaluations(todo[start:start + batch])
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            rows.append((label, len(todo) / wall, cpu * 1e3 / len(todo)))
    finally:
        store.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lbp-cds-bench-audit-") as tmp:
        targets = []
        if args.database in ("sqlite", "both"):
            targets.append(("SQLite file", f"sqlite:///{tmp}/audit.db", None))
        pg_data = None
        if args.database in ("postgres", "both"):
            from bench_http import start_postgres

            pg_url, pg_data = start_postgres(Path(tmp))
            targets.append(("PostgreSQL 15, loopback, fsync off", pg_url, pg_data))
        try:
            print(f"audit writes, {args.records} records of two cards each, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
            for name, url, _ in targets:
                print(f"\n{name}")
                for label, per_s, cpu_ms in measure(url, args.records):
                    print(f"  {label:22} {per_s:8.0f} records/s   {cpu_ms:6.3f} ms CPU per record (this process)")
        finally:
            if pg_data is not None:
                from bench_http import stop_postgres

                stop_postgres(pg_data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
