"""The SMART app's pure core: the record-a-session form and its Observations (cds.session_record), the
history and its SVG (cds.history_chart), and the rule files' ``app`` section (checked by ``cds rules check``).
Run on the frozen fixture rule set (tests/fixtures/rules, whose smart-app.yaml holds the app's wording)."""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
from pathlib import Path
from xml.etree import ElementTree

import pytest
from conftest import REQUESTS_DIR, build_app, edit_rule_file, rule_problems
from fhir.resources.R4B.observation import Observation

from cds import history_chart, service, session_record
from cds.extract import extract
from cds.ruleset.loader import load_ruleset

TODAY = dt.date(2026, 11, 20)
GOOD = {"exercise": "bird-dog", "date": "2026-11-20", "reps-1": "20", "reps-2": "19", "pain_during": "1",
        "pain_after": "2"}


def test_a_valid_form_gives_the_session(ruleset):
    form = session_record.parse_form(GOOD, ruleset, TODAY)
    assert form == session_record.SessionForm(exercise="bird-dog", date=TODAY, reps=(20, 19), pain_during=1, pain_after=2)
    three = session_record.parse_form({**GOOD, "reps-3": "0"}, ruleset, TODAY)
    assert three.reps == (20, 19, 0)


@pytest.mark.parametrize(("change", "wrong"), [
    ({"exercise": "plank"}, "exercise"),
    ({"exercise": ""}, "exercise"),
    ({"date": "2026-11-21"}, "session-date"),  # the future
    ({"date": "2026-02-30"}, "session-date"),
    ({"date": ""}, "session-date"),
    ({"reps-1": "-1"}, "reps-1"),
    ({"reps-2": "1.5"}, "reps-2"),
    ({"reps-2": ""}, "reps-2"),
    ({"reps-1": "1001"}, "reps-1"),  # above record_max_reps' default
    ({"pain_during": "11"}, "pain-during"),
    ({"pain_after": "x"}, "pain-after"),
    ({"reps-3": ""}, "reps-3"),  # a round added and left empty
])
def test_each_wrong_field_is_named_by_its_input_id(ruleset, change, wrong):
    with pytest.raises(session_record.FormErrors) as e:
        session_record.parse_form({**GOOD, **change}, ruleset, TODAY)
    assert list(e.value.errors) == [wrong]


def test_the_messages_come_from_the_rule_files(ruleset):
    with pytest.raises(session_record.FormErrors) as e:
        session_record.parse_form({"reps-1": "x"}, ruleset, TODAY)
    app = ruleset.document.app
    assert e.value.errors == {
        "exercise": app.errors.exercise, "session-date": app.errors.date, "pain-during": app.errors.pain,
        "pain-after": app.errors.pain,
        "reps-1": app.errors.reps.replace("{max_reps}", "1000"), "reps-2": app.errors.reps.replace("{max_reps}", "1000"),
    }


def test_rounds_are_bounded_by_the_parameter(ruleset):
    assert session_record.round_count({}, ruleset) == 2  # the rounds parameter
    assert session_record.round_count({"reps-4": "1"}, ruleset) == 4
    assert session_record.round_count({"reps-99": "1"}, ruleset) == session_record.DEFAULT_MAX_ROUNDS


def test_the_observations_are_the_spec_profile_and_read_back_as_the_session(ruleset):
    form = session_record.parse_form(GOOD, ruleset, TODAY)
    rounds = session_record.round_observations(form, ruleset, "p1")
    for i, r in enumerate(rounds):
        r["id"] = f"r{i + 1}"
    pains = session_record.pain_observations(form, ruleset, "p1", ["Observation/r1", "Observation/r2"])
    for i, p in enumerate(pains):
        p["id"] = f"p{i + 1}"
    for resource in rounds + pains:
        Observation.model_validate(resource)
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in rounds + pains]}
    facts = extract({"exerciseRounds": bundle}, patient_id="p1", codes=ruleset.document.codes,
                    ladder=ruleset.document.ladder)
    session = facts.latest_session
    assert session is not None and session.exercise == "bird-dog" and session.date == TODAY
    assert session.reps == [20, 19] and [r.round_number for r in session.rounds] == [1, 2]
    assert session.max_pain == 2 and {p.derived_from for p in session.pain_scores} == {("r1", "r2")}


def _history(prefetch: dict, ruleset, patient_id: str) -> history_chart.History:
    """The history chart's sessions, read from the facts extraction gives the prefetch."""
    facts = extract(prefetch, patient_id=patient_id, codes=ruleset.document.codes, ladder=ruleset.document.ladder)
    return history_chart.sessions(facts, ruleset)


def _prefetch(name: str) -> tuple[dict, str]:
    body = json.loads((REQUESTS_DIR / f"{name}.json").read_text())
    return body["prefetch"], body["context"]["patientId"]


def test_the_history_has_every_session_oldest_first(ruleset):
    prefetch, pid = _prefetch("bird-dog-28-27")
    history = _history(prefetch, ruleset, pid)
    assert [(s.date.isoformat(), s.exercise, s.reps, s.max_pain) for s in history.sessions] == [
        ("2026-11-04", "hip-abduction", (19, 18), 1), ("2026-11-11", "hip-abduction", (23, 22), 1),
        ("2026-11-18", "bird-dog", (28, 27), 1)]
    assert history.onset == dt.date(2026, 1, 24)
    # the latest session is the one the service decides from
    facts = extract(prefetch, patient_id=pid, codes=ruleset.document.codes, ladder=ruleset.document.ladder)
    assert facts.latest_session.reps == list(history.sessions[-1].reps)


def test_the_history_takes_the_highest_rung_of_a_day_and_pain_linked_by_derived_from(ruleset):
    prefetch, pid = _prefetch("two-exercises-same-day")
    history = _history(prefetch, ruleset, pid)
    facts = extract(prefetch, patient_id=pid, codes=ruleset.document.codes, ladder=ruleset.document.ladder)
    assert history.sessions[-1].exercise == facts.latest_session.exercise
    assert len({s.date for s in history.sessions}) == len(history.sessions)
    prefetch, pid = _prefetch("pain-derived-from-older-session")
    history = _history(prefetch, ruleset, pid)
    assert len(history.sessions) >= 2 and all(s.max_pain is None or 0 <= s.max_pain <= 10 for s in history.sessions)


def test_no_data_is_an_empty_history(ruleset):
    prefetch = {k: None for k in service.prefetch_templates(ruleset)}
    history = _history(prefetch, ruleset, "x")
    assert history == history_chart.History(sessions=(), onset=None)
    svg = history_chart.render_svg(history, ruleset)
    root = ElementTree.fromstring(svg)
    assert root.get("data-sessions") == "0" and 'class="onset-mark"' not in svg
    assert ruleset.document.app.no_sessions in svg


def _svg_classes(svg: str) -> list[str]:
    root = ElementTree.fromstring(svg)
    return [el.get("class", "") for el in root.iter()]


def test_the_chart_draws_the_contracts_elements(ruleset):
    prefetch, pid = _prefetch("bird-dog-28-27")
    history = _history(prefetch, ruleset, pid)
    svg = history_chart.render_svg(history, ruleset)
    root = ElementTree.fromstring(svg)  # well-formed XML
    ns = "{http://www.w3.org/2000/svg}"
    assert root.get("id") == "history-chart" and root.get("role") == "img" and root.get("data-sessions") == "3"
    assert root.find(f"{ns}title").text == ruleset.document.app.chart_title
    classes = _svg_classes(svg)
    assert classes.count("session-point") == 3 and classes.count("round-point") == 6
    assert classes.count("rung-line") == 1 and classes.count("band-target") == 1 and classes.count("band-pain") == 1
    assert classes.count("onset-mark") == 1
    # the rung steps up once (hip abduction -> bird-dog): one vertical segment
    path = next(el for el in root.iter() if el.get("class") == "rung-line").get("d")
    assert path.count("V") == 1
    # the target band spans reps_low..reps_high: its height is (25-15)/(35-0) of the panel (reps_max = 1.4 * 25)
    band = next(el for el in root.iter() if el.get("class") == "band-target")
    panel = history_chart.REPS_BOTTOM - history_chart.REPS_TOP
    assert float(band.get("height")) == pytest.approx(panel * 10 / 35, abs=0.1)
    # the pain gate band spans 0..pain_gate_max of the 0-10 scale
    gate = next(el for el in root.iter() if el.get("class") == "band-pain")
    assert float(gate.get("height")) == pytest.approx((history_chart.PAIN_BOTTOM - history_chart.PAIN_TOP) * 0.2, abs=0.1)


def test_a_session_without_pain_is_drawn_hollow(ruleset):
    prefetch, pid = _prefetch("no-pain-recorded")
    svg = history_chart.render_svg(_history(prefetch, ruleset, pid), ruleset)
    assert "session-point pain-unknown" in _svg_classes(svg)


def test_rule_file_texts_are_escaped_in_the_chart(rules_copy: Path):
    edit_rule_file(rules_copy, "smart-app.yaml",
                   "  chart_title: Repetitions per round and pain per session over time, with the exercise rung\n",
                   '  chart_title: "<script>x</script> & Repetitions per round"\n')
    ruleset = load_ruleset(rules_copy)
    svg = history_chart.render_svg(history_chart.History(sessions=(), onset=None), ruleset)
    assert "<script>" not in svg and "&lt;script&gt;x&lt;/script&gt; &amp; Repetitions" in svg


def test_an_unknown_placeholder_in_the_app_texts_is_a_precise_rule_file_error(rules_copy: Path):
    edit_rule_file(rules_copy, "smart-app.yaml", 'round_label: "Round {n}', 'round_label: "Round {round}')
    (problem,) = rule_problems(rules_copy)
    line = next(i for i, text in enumerate((rules_copy / "smart-app.yaml").read_text().splitlines(), 1)
                if "round_label:" in text)
    assert re.match(rf"smart-app\.yaml:{line}:\d+: .*unknown fact '{{round}}'", problem), problem


def test_a_missing_app_text_is_a_precise_rule_file_error(rules_copy: Path):
    text = (rules_copy / "smart-app.yaml").read_text()
    (rules_copy / "smart-app.yaml").write_text(re.sub(r"\n  record_button: [^\n]*", "", text))
    (problem,) = rule_problems(rules_copy)
    assert re.match(r"smart-app\.yaml:\d+:\d+: .*record_button", problem), problem


def test_a_rule_set_without_app_texts_still_loads_and_the_app_says_why_it_is_unavailable(rules_copy: Path):
    (rules_copy / "smart-app.yaml").unlink()
    assert rule_problems(rules_copy) == []
    app = build_app(rules_dir=rules_copy)
    answer = app.test_client().get("/app/?demo=bird-dog-28-27")
    assert answer.status_code == 503 and "rules/smart-app.yaml" in answer.get_data(as_text=True)


def test_the_demo_page_decides_like_the_service(client, ruleset):
    """The demo page's recommendation is service.evaluate's on the same prefetch (the same rules)."""
    from cds.clock import FixedClock

    body = json.loads((REQUESTS_DIR / "bird-dog-28-27.json").read_text())
    active = client.application.extensions["lbp_cds"].rules.current()
    outcome = service.evaluate(active, copy.deepcopy(body["prefetch"]), patient_id=body["context"]["patientId"],
                               clock=FixedClock(TODAY))
    page = client.get("/app/?demo=bird-dog-28-27").get_data(as_text=True)
    import html

    shown = [html.unescape(s) for s in re.findall(r'<h3 class="card-summary">(.*?)</h3>', page)]
    assert shown == [c.summary for c in outcome.cards] and shown


@pytest.mark.parametrize("path", sorted(REQUESTS_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_the_latest_session_of_the_history_is_the_one_the_service_decides_from(ruleset, path):
    body = json.loads(path.read_text())
    prefetch = {k: v for k, v in (body.get("prefetch") or {}).items()}
    pid = body["context"]["patientId"]
    facts = extract(prefetch, patient_id=pid, codes=ruleset.document.codes, ladder=ruleset.document.ladder)
    history = _history(prefetch, ruleset, pid)
    assert history.onset == facts.onset
    latest = facts.latest_session
    if latest is None:
        assert history.sessions == ()
        return
    last = history.sessions[-1]
    assert (last.date, last.exercise, list(last.reps), last.max_pain) == (latest.date, latest.exercise, latest.reps,
                                                                          latest.max_pain)
    assert [s.date for s in history.sessions] == sorted({s.date for s in history.sessions})
