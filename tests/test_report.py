"""The feedback report's table and JSON formats."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest

from cds.feedback import FeedbackItem
from cds.report import format_report
from cds.storage import UNKNOWN, AuditCard, AuditRecord, ReasonCount, ReportRow, Store, upgrade

ROWS = [
    ReportRow(
        rule_id="progress-step-up",
        ruleset_name="lbp",
        ruleset_version="1.0.0",
        shown=10,
        accepted=6,
        overridden=2,
        feedback_reports=9,
        override_reasons=(
            ReasonCount("not-relevant", "Not relevant for this patient", "http://x", 1),
            ReasonCount("patient-declined", None, "http://x", 1),
        ),
    ),
    ReportRow(rule_id="pain-gate", ruleset_name="lbp", ruleset_version="1.0.0", shown=4),
    ReportRow(
        rule_id=UNKNOWN,
        ruleset_name=UNKNOWN,
        ruleset_version=UNKNOWN,
        accepted=1,
        feedback_reports=1,
    ),
]


def test_table_layout_and_numbers():
    out = format_report(ROWS, "table")
    lines = out.splitlines()
    header = lines[0]
    for col in ("rule", "ruleset version", "shown", "accepted", "overridden", "acceptance", "top override reasons"):
        assert col in header
    row = next(line for line in lines if line.startswith("progress-step-up"))
    assert "lbp 1.0.0" in row
    assert row.split()[3:7] == ["10", "6", "2", "75%"]
    assert "Not relevant for this patient (1), patient-declined (1)" in row
    gate = next(line for line in lines if line.startswith("pain-gate"))
    assert gate.split()[3:7] == ["4", "0", "0", "-"]
    total = next(line for line in lines if line.startswith("total"))
    assert total.split()[1:5] == ["14", "7", "2", "78%"]
    # fixed width: the numeric columns end at the same offset on every data row
    data = [line for line in lines[2:] if line and not line.startswith(("-", "acceptance"))]
    ends = {line.index("%") if "%" in line else None for line in data if "%" in line}
    assert len(ends) == 1


def test_many_reasons_are_truncated():
    row = ReportRow(
        rule_id="r",
        ruleset_name="lbp",
        ruleset_version="1",
        shown=9,
        overridden=9,
        override_reasons=tuple(ReasonCount(f"reason-{i}", None, None, 9 - i) for i in range(5)),
    )
    out = format_report([row])
    assert "reason-0 (9), reason-1 (8), reason-2 (7), +2 more" in out


def test_empty():
    assert "No cards" in format_report([], "table")
    assert json.loads(format_report([], "json")) == {"rows": []}


def test_json():
    data = json.loads(format_report(ROWS, "json"))["rows"]
    assert data[0]["rule_id"] == "progress-step-up"
    assert data[0]["acceptance_rate"] == 0.75
    assert data[0]["no_feedback"] == 2
    assert data[0]["override_reasons"][0] == {
        "system": "http://x",
        "code": "not-relevant",
        "display": "Not relevant for this patient",
        "count": 1,
    }
    assert data[1]["acceptance_rate"] is None
    assert data[2]["rule_id"] == UNKNOWN


def test_unknown_format():
    with pytest.raises(ValueError):
        format_report(ROWS, "csv")


def test_report_from_a_real_store(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    store = Store(url)
    cards = [AuditCard(card_uuid=str(uuid.uuid4()), rule_id="continue", decision="continue", indicator="info") for _ in range(3)]
    store.record_evaluation(
        AuditRecord(
            hook_instance=str(uuid.uuid4()),
            service_id="svc",
            ruleset_name="lbp",
            ruleset_version="2.0.0",
            ruleset_sha256="c" * 64,
            cards=tuple(cards),
        )
    )
    ts = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc).isoformat()
    store.record_feedback(
        "svc",
        [
            FeedbackItem.model_validate(
                {
                    "card": cards[0].card_uuid,
                    "outcome": "overridden",
                    "overrideReason": {"reason": {"system": "s", "code": "c", "display": "Too hard today"}},
                    "outcomeTimestamp": ts,
                }
            ),
            FeedbackItem.model_validate(
                {
                    "card": cards[1].card_uuid,
                    "outcome": "accepted",
                    "acceptedSuggestions": [{"id": str(uuid.uuid4())}],
                    "outcomeTimestamp": ts,
                }
            ),
        ],
    )
    out = format_report(store.report())
    line = next(x for x in out.splitlines() if x.startswith("continue"))
    assert line.split()[3:7] == ["3", "1", "1", "50%"]
    assert "Too hard today (1)" in line
    store.close()
