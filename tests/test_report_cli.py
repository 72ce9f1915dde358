"""``cds report`` and ``cds db upgrade|purge`` on a database filled over HTTP: every example request
answered and audited, then feedback on some cards (tests/test_feedback_http.py: every ``continue`` card
accepted, every ``step-up`` card overridden for the patient's preference, every ``new-onset`` card
overridden as clinical judgement). SQLite always; PostgreSQL too when ``CDS_TEST_DATABASE_URL`` is set."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid

import pytest
from test_feedback_http import closed_port, db_url, fill  # noqa: F401 - fixtures

from cds.cli import main
from cds.storage import AuditCard, AuditRecord, Store, current_revision, head_revision

REASON_PREFERENCE = "Patient declined or prefers another exercise"
REASON_JUDGEMENT = "Clinical judgement differs from this recommendation"
RULESET = "lbp-exercise-progression 1.0.0"


@pytest.fixture
def filled_url(db_url):
    """(url, cards shown per rule) of a database holding the audit of every example and the feedback."""
    filled = fill(db_url)
    shown = filled.shown()
    filled.app.extensions["lbp_cds"].audit.writer.close()
    filled.store.close()
    return db_url, shown


def report(capsys, *args: str) -> str:
    assert main(["report", *args]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out


def table_rows(out: str) -> dict[str, list[str]]:
    """Table body lines by rule: the cells split on runs of two or more spaces."""
    lines = out.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == [
        "rule", "ruleset version", "shown", "accepted", "overridden", "acceptance", "top override reasons",
    ]
    assert set(lines[1]) == {"-", " "}
    rows = {}
    for line in lines[2:]:
        if set(line) <= {"-", " "}:
            break
        cells = re.split(r"\s{2,}", line)
        rows[cells[0]] = cells[1:]
    total = next(line for line in lines if line.startswith("total"))
    rows["total"] = re.split(r"\s{2,}", total)[1:]
    return rows


def test_report_table_has_the_exact_numbers_per_rule(filled_url, capsys):
    url, shown = filled_url
    rows = table_rows(report(capsys, "--database-url", url))
    assert rows["continue"] == [RULESET, str(shown["continue"]), str(shown["continue"]), "0", "100%", "-"]
    assert rows["step-up"] == [RULESET, str(shown["step-up"]), "0", str(shown["step-up"]), "0%",
                               f"{REASON_PREFERENCE} ({shown['step-up']})"]
    assert rows["new-onset"] == [RULESET, str(shown["new-onset"]), "0", str(shown["new-onset"]), "0%",
                                 f"{REASON_JUDGEMENT} ({shown['new-onset']})"]
    assert rows["pain-gate"] == [RULESET, str(shown["pain-gate"]), "0", "0", "-", "-"]
    assert set(rows) - {"total"} == set(shown)
    for rule, count in shown.items():
        assert rows[rule][1] == str(count), rule
    accepted, overridden = shown["continue"], shown["step-up"] + shown["new-onset"]
    assert rows["total"] == [str(sum(shown.values())), str(accepted), str(overridden),
                             f"{accepted / (accepted + overridden) * 100:.0f}%"]
    # a guard against a silently empty audit: the example set shows each of these decisions
    assert min(shown["continue"], shown["step-up"], shown["new-onset"], shown["pain-gate"]) > 0


def test_report_json_matches_the_table(filled_url, capsys):
    url, shown = filled_url
    data = json.loads(report(capsys, "--database-url", url, "--format", "json"))
    rows = {r["rule_id"]: r for r in data["rows"]}
    assert {rule: r["shown"] for rule, r in rows.items()} == dict(shown)
    assert {r["ruleset_name"] for r in rows.values()} == {"lbp-exercise-progression"}
    assert {r["ruleset_version"] for r in rows.values()} == {"1.0.0"}
    cont, up, onset = rows["continue"], rows["step-up"], rows["new-onset"]
    assert (cont["accepted"], cont["overridden"], cont["no_feedback"], cont["acceptance_rate"]) == (
        shown["continue"], 0, 0, 1.0)
    assert (up["accepted"], up["overridden"], up["acceptance_rate"]) == (0, shown["step-up"], 0.0)
    assert up["override_reasons"] == [{
        "system": "https://lbp-cds.org/fhir/CodeSystem/override-reason", "code": "patient-preference",
        "display": REASON_PREFERENCE, "count": shown["step-up"],
    }]
    assert [(r["code"], r["count"]) for r in onset["override_reasons"]] == [("clinician-judgement", shown["new-onset"])]
    assert rows["pain-gate"] == {
        "rule_id": "pain-gate", "ruleset_name": "lbp-exercise-progression", "ruleset_version": "1.0.0",
        "shown": shown["pain-gate"], "accepted": 0, "overridden": 0, "no_feedback": shown["pain-gate"],
        "feedback_reports": 0,
        "acceptance_rate": None, "override_reasons": [],
    }
    assert sum(r["feedback_reports"] for r in rows.values()) == shown["continue"] + shown["step-up"] + shown["new-onset"]


def test_report_since(filled_url, capsys):
    url, shown = filled_url
    today = dt.datetime.now(dt.timezone.utc).date()
    future = (today + dt.timedelta(days=1)).isoformat()
    assert report(capsys, "--database-url", url, "--since", future) == "No cards or feedback recorded in this period.\n"
    assert json.loads(report(capsys, "--database-url", url, "--since", future, "--format", "json")) == {"rows": []}
    since_yesterday = json.loads(report(capsys, "--database-url", url, "--since",
                                        (today - dt.timedelta(days=1)).isoformat(), "--format", "json"))
    assert {r["rule_id"]: r["shown"] for r in since_yesterday["rows"]} == dict(shown)


def test_report_reads_cds_database_url(filled_url, capsys, monkeypatch):
    url, _ = filled_url
    monkeypatch.setenv("CDS_DATABASE_URL", url)
    assert "continue" in table_rows(report(capsys))


def test_report_bad_since_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["report", "--since", "yesterday", "--database-url", "sqlite://"])
    assert exc.value.code == 2
    assert "expected a date YYYY-MM-DD" in capsys.readouterr().err


def test_report_database_down(capsys):
    pytest.importorskip("psycopg")
    assert main(["report", "--database-url", f"postgresql+psycopg://cds:cds@127.0.0.1:{closed_port()}/cds"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("database unavailable")


# ---------------------------------------------------------------------------------------------------
# cds db upgrade | purge


def test_db_upgrade_on_a_fresh_database(empty_db_url, capsys):
    if empty_db_url.startswith("sqlite:///"):
        from pathlib import Path

        Path(empty_db_url.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    assert current_revision(empty_db_url) is None
    assert main(["db", "upgrade", "--database-url", empty_db_url]) == 0
    assert capsys.readouterr().out == f"database at revision {head_revision()}\n"
    assert current_revision(empty_db_url) == head_revision()
    # idempotent
    assert main(["db", "upgrade", "--database-url", empty_db_url]) == 0
    assert capsys.readouterr().out == f"database at revision {head_revision()}\n"
    # the migrated database is usable
    store = Store(empty_db_url)
    try:
        assert store.ping()
        assert store.report() == []
    finally:
        store.close()


def test_db_upgrade_reads_cds_database_url(tmp_path, capsys, monkeypatch):
    url = f"sqlite:///{tmp_path / 'env.sqlite3'}"
    monkeypatch.setenv("CDS_DATABASE_URL", url)
    assert main(["db", "upgrade"]) == 0
    assert current_revision(url) == head_revision()


def test_db_upgrade_database_down(capsys):
    pytest.importorskip("psycopg")
    url = f"postgresql+psycopg://cds:secret-password@127.0.0.1:{closed_port()}/cds"
    assert main(["db", "upgrade", "--database-url", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("database unavailable")


def _old_evaluation(store: Store, days: int) -> None:
    store.record_evaluation(AuditRecord(
        hook_instance="old-call", service_id="lbp-exercise-progression",
        evaluated_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days),
        ruleset_name="lbp-exercise-progression", ruleset_version="0.9.0", ruleset_sha256="0" * 64,
        cards=(AuditCard(card_uuid=str(uuid.uuid4()), rule_id="continue",
                         decision="continue", indicator="info"),),
    ))


def test_db_purge(filled_url, capsys, monkeypatch):
    url, shown = filled_url
    store = Store(url)
    try:
        _old_evaluation(store, days=40)
        _old_evaluation(store, days=400)
        before = store.count("audit_evaluation")

        assert main(["db", "purge", "--days", "30", "--database-url", url]) == 0
        out = capsys.readouterr().out
        assert out.startswith("purged records older than 30 days:")
        assert "2 evaluations, 0 feedback reports" in out
        assert store.count("audit_evaluation") == before - 2
        assert store.count("audit_card") == sum(shown.values())
        assert store.count("feedback") == shown["continue"] + shown["step-up"] + shown["new-onset"]  # just now: kept

        # the retention period from the environment
        _old_evaluation(store, days=400)
        monkeypatch.setenv("CDS_AUDIT_RETENTION_DAYS", "365")
        assert main(["db", "purge", "--database-url", url]) == 0
        assert "older than 365 days" in capsys.readouterr().out
        assert store.count("audit_evaluation") == before - 2

        # the rest of the report is untouched
        data = json.loads(report(capsys, "--database-url", url, "--format", "json"))
        assert {r["rule_id"]: r["shown"] for r in data["rows"]} == dict(shown)
    finally:
        store.close()


@pytest.mark.parametrize("days", ["0", "-5", "ten"])
def test_db_purge_refuses_a_retention_under_one_day(days, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'cds.sqlite3'}"
    with pytest.raises(SystemExit) as exc:
        main(["db", "purge", "--days", days, "--database-url", url])
    assert exc.value.code == 2
    assert "at least 1" in capsys.readouterr().err
