"""The session trend on progression cards (issue 14 point 1) and their SMART app link (point 2's link).

On the fixture rule set (tests/fixtures/rules, whose ``texts.trend`` and ``texts.app_link`` these
tests read); the shipped rules' table is checked by rules/tests/trend.yaml.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import RULES_DIR, SERVICE_URL, edit_rule_file, rule_problems

from cds import service
from cds.active_rules import ActiveRules
from cds.cards import APP_LAUNCH_PATH, CHART_PATH
from cds.cdshooks import CdsResponse, to_json
from cds.clock import FixedClock
from cds.ehr_profiles import GENERIC, PROFILE_DEFAULTS, EhrProfile, shape_response
from cds.engine import RuleEngine
from cds.live_rules import LiveRuleSet
from cds.ruleset.model import RuleSet
from cds.trend import TrendSession, chart_query, session_history
from cds.trend_chart import ChartData, ChartQueryError, parse_query, render

PATIENT = "p1"
TODAY = dt.date(2026, 11, 20)
BASE = "https://cds.example.org/lbp"
OBS = "https://lbp-cds.org/fhir/CodeSystem/observation"
EXERCISE = "https://lbp-cds.org/fhir/CodeSystem/exercise"
EXT = "org.lbp-cds.recommendation"


def a_round(rid: str, day: str, exercise: str, reps: int, number: int | None = None, **over: Any) -> dict[str, Any]:
    components: list[dict[str, Any]] = [
        {"code": {"coding": [{"system": OBS, "code": "exercise"}]},
         "valueCodeableConcept": {"coding": [{"system": EXERCISE, "code": exercise}]}}]
    if number is not None:
        components.append({"code": {"coding": [{"system": OBS, "code": "round"}]}, "valueInteger": number})
    return {"resourceType": "Observation", "id": rid, "status": "final",
            "code": {"coding": [{"system": OBS, "code": "reps-to-technical-failure"}]},
            "subject": {"reference": f"Patient/{PATIENT}"}, "effectiveDateTime": day, "valueInteger": reps,
            "component": components, **over}


def a_pain(rid: str, day: str, score: int, derived: list[str] | None = None) -> dict[str, Any]:
    pain = {"resourceType": "Observation", "id": rid, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "72514-3"}]},
            "subject": {"reference": f"Patient/{PATIENT}"}, "effectiveDateTime": day, "valueInteger": score}
    if derived:
        pain["derivedFrom"] = [{"reference": f"Observation/{r}"} for r in derived]
    return pain


LBP = {"resourceType": "Condition", "id": "lbp",
       "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                      "code": "active"}]},
       "code": {"coding": [{"system": "http://snomed.info/sct", "code": "279039007"}]},
       "subject": {"reference": f"Patient/{PATIENT}"}, "onsetDateTime": "2026-01-10"}


def bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def prefetch(rounds: list[dict[str, Any]], pains: list[dict[str, Any]]) -> dict[str, Any]:
    return {"patient": {"resourceType": "Patient", "id": PATIENT}, "conditions": bundle([LBP]),
            "painScores": bundle(pains), "exerciseRounds": bundle(rounds)}


def weekly(n: int, last: dt.date = dt.date(2026, 11, 18)) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``n`` weekly bird-dog sessions up to ``last``, reps rising 18+i / 17+i, pain i % 3."""
    rounds, pains = [], []
    for i in range(n):
        day = (last - dt.timedelta(days=7 * (n - 1 - i))).isoformat()
        rounds += [a_round(f"s{i}-1", day, "bird-dog", 18 + i, 1), a_round(f"s{i}-2", day, "bird-dog", 17 + i, 2)]
        pains.append(a_pain(f"pain{i}", day, i % 3))
    return rounds, pains


@pytest.fixture(scope="module")
def active() -> ActiveRules:
    return LiveRuleSet(RULES_DIR).current()


def evaluate(active: ActiveRules, data: dict[str, Any], **kwargs: Any) -> service.Outcome:
    return service.evaluate(active, data, patient_id=PATIENT, clock=FixedClock(TODAY), **kwargs)


def progression_card(outcome: service.Outcome) -> Any:
    (card,) = [c for c in outcome.cards if c.extension[EXT].get("recommendedExercise")]
    return card


def table_rows(detail: str) -> list[list[str]]:
    """The rows of the trend table (after its heading), as cells."""
    section = detail.split("**Recent sessions**", 1)[1]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


# ---- the sessions ----------------------------------------------------------------------------------------


def test_the_last_sessions_oldest_first_ending_with_the_decisions_session(active):
    rounds, pains = weekly(8)
    outcome = evaluate(active, prefetch(rounds, pains))
    history = session_history(outcome.facts, active.ruleset)
    assert len(history) == 6  # texts.trend.sessions
    assert [s.date for s in history] == [dt.date(2026, 11, 18) - dt.timedelta(days=7 * k) for k in range(5, -1, -1)]
    assert [s.reps for s in history] == [(18.0 + i, 17.0 + i) for i in range(2, 8)]
    assert [s.max_pain for s in history] == [i % 3 for i in range(2, 8)]
    latest = outcome.facts.latest_session
    assert (history[-1].date, history[-1].exercise, list(history[-1].reps)) == (latest.date, latest.exercise, latest.reps)
    assert {s.rung for s in history} == {2}
    assert session_history(outcome.facts, active.ruleset, limit=2) == history[-2:]


def test_sessions_follow_the_extraction_rules():
    """Another patient's, a preliminary, an invalid and a month-dated round never make a session; the
    highest rung of a date is its session; rounds in round order, only the first ``rounds`` (2); a pain
    score with derivedFrom belongs to the session it references, whatever its date."""
    active = LiveRuleSet(RULES_DIR).current()
    rounds = [
        a_round("a1", "2026-11-04", "hip-abduction", 30, 1), a_round("a2", "2026-11-04", "hip-abduction", 29, 2),
        a_round("b2", "2026-11-11", "bird-dog", 14, 2), a_round("b1", "2026-11-11", "bird-dog", 16, 1),
        a_round("b3", "2026-11-11", "bird-dog", 9, 3),
        a_round("h1", "2026-11-11", "hip-abduction", 40, 1),  # lower rung on the same date: not the session
        a_round("x1", "2026-11-06", "bird-dog", 20, 1, subject={"reference": "Patient/someone-else"}),
        a_round("x2", "2026-11-07", "bird-dog", 20, 1, status="preliminary"),
        a_round("x3", "2026-11-08", "bird-dog", 20, 1, effectiveDateTime="2026-11-08T25:00:00Z"),  # invalid FHIR
        a_round("x4", "2026-10", "bird-dog", 20, 1),  # not precise to the day
        a_round("c1", "2026-11-18", "bird-dog", 20, 1), a_round("c2", "2026-11-18", "bird-dog", 18, 2),
    ]
    pains = [a_pain("p-a", "2026-11-12", 4, derived=["a1"]),  # recorded a week later, for 2026-11-04
             a_pain("p-b", "2026-11-11", 1), a_pain("p-c", "2026-11-18", 0)]
    data = prefetch(rounds, pains)
    outcome = evaluate(active, data)
    history = session_history(outcome.facts, active.ruleset)
    assert history == [
        TrendSession(dt.date(2026, 11, 4), 1, "hip-abduction", (30.0, 29.0), 4.0),
        TrendSession(dt.date(2026, 11, 11), 2, "bird-dog", (16.0, 14.0), 1.0),
        TrendSession(dt.date(2026, 11, 18), 2, "bird-dog", (20.0, 18.0), 0.0),
    ]


def test_malformed_raw_json_in_the_history_is_passed_over(active):
    """What the raw look reads may be any JSON: it is passed over (extraction counts it), never a crash."""
    rounds, pains = weekly(3)
    good = session_history(evaluate(active, prefetch(rounds, pains)).facts, active.ruleset)
    odd = [
        {**rounds[0], "id": "o1", "status": ["final"]},
        {**rounds[0], "id": "o2", "code": {"coding": [{"system": ["x"], "code": {"a": 1}}]}},
        {**rounds[0], "id": 7},
        {**rounds[0], "id": "o4", "effectiveDateTime": ["2026-11-04"]},
        {**rounds[0], "id": "o5", "subject": "Patient/p1"},
        {**rounds[0], "id": "o6", "code": ["reps"]},
        "not a resource", None, [],
        {**pains[0], "id": "o7", "derivedFrom": [{"reference": ["Observation/s0-1"]}, "x", None]},
        {**pains[0], "id": "o8", "derivedFrom": {"reference": "Observation/s0-1"}, "valueInteger": 9},
    ]
    data = prefetch(rounds + odd[:6], pains + odd[6:])
    assert session_history(evaluate(active, data).facts, active.ruleset) == good


def test_no_session_no_trend_but_the_link(active):
    outcome = evaluate(active, prefetch([], []), public_base_url=BASE)
    card = progression_card(outcome)  # start: first rung
    assert "**Recent sessions**" not in card.detail and CHART_PATH not in card.detail
    assert [link.url for link in card.links if link.type == "smart"] == [BASE + APP_LAUNCH_PATH]


# ---- the card ----------------------------------------------------------------------------------------------


def test_progression_card_shows_the_table_and_the_chart(active):
    rounds, pains = weekly(3)
    outcome = evaluate(active, prefetch(rounds, pains), public_base_url=BASE)
    card = progression_card(outcome)
    assert table_rows(card.detail) == [
        ["2026-11-04", "Bird-dog", "2", "18, 17", "0"],
        ["2026-11-11", "Bird-dog", "2", "19, 18", "1"],
        ["2026-11-18", "Bird-dog", "2", "20, 19", "2"],
    ]
    assert "| Date | Exercise | Rung | Reps per round | Highest pain (0-10) |" in card.detail
    (alt, url) = re.findall(r"!\[([^\]]*)\]\((\S+)\)", card.detail)[0]
    assert alt == "Chart of the recent sessions"
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == BASE + CHART_PATH
    assert parse_qs(parts.query) == {"d": ["2026-11-04,2026-11-11,2026-11-18"], "g": ["2,2,2"],
                                     "r": ["18_17,19_18,20_19"], "p": ["0,1,2"], "lo": ["15"], "hi": ["25"],
                                     "gate": ["2"]}


def test_the_chart_url_carries_no_identifier(active):
    rounds, pains = weekly(6)
    outcome = evaluate(active, prefetch(rounds, pains), public_base_url=BASE)
    url = re.findall(r"\]\((\S+/charts/trend\.svg\?\S+)\)", progression_card(outcome).detail)[0]
    query = urlsplit(url).query
    assert re.fullmatch(r"[a-z]+=[0-9,._-]+(&[a-z]+=[0-9,._-]+)*", query), query
    for ident in (PATIENT, "s0-1", "pain0", "lbp", active.ruleset.sha256, active.ruleset.identity.name):
        assert ident not in query


def test_without_a_public_base_url_the_table_only_and_no_link(active):
    rounds, pains = weekly(2)
    card = progression_card(evaluate(active, prefetch(rounds, pains)))
    assert len(table_rows(card.detail)) == 2
    assert CHART_PATH not in card.detail and "![" not in card.detail
    assert all(link.type == "absolute" for link in card.links)


def test_only_progression_cards_show_the_trend(active):
    """The onset-unknown warning (no recommended rung) has no trend; the progression card beside it has."""
    rounds, pains = weekly(2)
    data = prefetch(rounds, pains)
    data["conditions"] = bundle([{k: v for k, v in LBP.items() if k != "onsetDateTime"}])
    cards = evaluate(active, data, public_base_url=BASE).cards
    decisions = {c.extension[EXT]["decision"]: c for c in cards}
    assert "onset-unknown" in decisions and len(cards) == 2
    for card in cards:
        progression = "recommendedExercise" in card.extension[EXT]
        assert ("**Recent sessions**" in card.detail) is progression
        assert any(link.type == "smart" for link in card.links) is progression


def _with(ruleset: RuleSet, **texts: Any) -> ActiveRules:
    doc = ruleset.document
    changed = RuleSet(doc.model_copy(update={"texts": doc.texts.model_copy(update=texts)}), ruleset.sha256,
                      ruleset.files, ruleset.conditions)
    return ActiveRules(changed, RuleEngine(changed))


def test_without_texts_trend_and_app_link_cards_are_as_before(active):
    rounds, pains = weekly(3)
    bare = _with(active.ruleset, trend=None, app_link=None)
    card = progression_card(evaluate(bare, prefetch(rounds, pains), public_base_url=BASE))
    assert "**Recent sessions**" not in card.detail and CHART_PATH not in card.detail
    assert all(link.type == "absolute" for link in card.links)


def test_a_card_option_hides_or_shows_the_trend(rules_copy):
    edit_rule_file(rules_copy, "progression.yaml", "    recommend: {rung: next}\n    card:\n",
                   "    recommend: {rung: next}\n    card:\n      trend: false\n")
    assert rule_problems(rules_copy) == []
    rounds = [a_round("r1", "2026-11-18", "bird-dog", 28, 1), a_round("r2", "2026-11-18", "bird-dog", 27, 2)]
    hidden = LiveRuleSet(rules_copy).current()
    card = progression_card(evaluate(hidden, prefetch(rounds, [a_pain("p", "2026-11-18", 1)]), public_base_url=BASE))
    assert card.extension[EXT]["decision"] == "step-up"
    assert "**Recent sessions**" not in card.detail
    assert any(link.type == "smart" for link in card.links)  # the link does not depend on the trend


def test_the_smart_link_and_its_app_context(active):
    rounds, pains = weekly(2)
    card = progression_card(evaluate(active, prefetch(rounds, pains), public_base_url=BASE + "/"))
    (link,) = [link for link in card.links if link.type == "smart"]
    assert link.label == "Open the exercise app"
    assert link.url == BASE + APP_LAUNCH_PATH
    assert link.app_context == json.dumps(
        {"rung": card.extension[EXT]["recommendedExercise"], "ruleSetSha256": active.ruleset.sha256},
        separators=(",", ":"))


def test_the_oracle_profile_drops_app_context_from_this_link_and_keeps_the_link(active):
    rounds, pains = weekly(2)
    response = CdsResponse(cards=evaluate(active, prefetch(rounds, pains), public_base_url=BASE).cards)
    oracle = EhrProfile(name="oracle", **PROFILE_DEFAULTS["oracle"])
    epic = EhrProfile(name="epic", **PROFILE_DEFAULTS["epic"])
    for profile, kept in ((oracle, False), (epic, True), (GENERIC, True)):
        wire = to_json(shape_response(response, profile))["cards"]
        smart = [link for card in wire for link in card["links"] if link["type"] == "smart"]
        assert [link["url"] for link in smart] == [BASE + APP_LAUNCH_PATH], profile.name
        assert all(("appContext" in link) is kept for link in smart), profile.name


# ---- the chart ---------------------------------------------------------------------------------------------


def test_the_query_stays_within_what_the_chart_accepts(active):
    """Absurd reps and more rounds than a chart takes are cut for the chart (the table shows them all)."""
    sessions = [TrendSession(dt.date(2026, 11, 4), 1, "hip-abduction", (5000.0, *range(1, 10)), None)]
    data = parse_query(parse_qs(chart_query(sessions, active.ruleset)))
    assert data.reps == ((999.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0),)


def test_the_query_round_trips_and_bounds_what_it_reads(active):
    sessions = [TrendSession(dt.date(2026, 11, 4), 1, "hip-abduction", (30.0, 29.5), None),
                TrendSession(dt.date(2026, 11, 11), 2, "bird-dog", (16.0,), 1.0)]
    query = chart_query(sessions, active.ruleset)
    data = parse_query(parse_qs(query, keep_blank_values=True))
    assert data == ChartData((dt.date(2026, 11, 4), dt.date(2026, 11, 11)), (1, 2), ((30.0, 29.5), (16.0,)),
                             (None, 1.0), 15.0, 25.0, 2.0)


BAD_QUERIES = [
    ("", "d"),
    ("r=1", "d"),
    ("d=2026-11-04", "r"),
    ("d=2026-02-30&r=1", "d"),
    ("d=26-11-04&r=1", "d"),
    ("d=2026-11-04&d=2026-11-05&r=1", "d"),
    ("d=" + ",".join(["2026-11-04"] * 13) + "&r=" + ",".join(["1"] * 13), "d"),
    ("d=2026-11-04&r=1,2", "r"),
    ("d=2026-11-04&r=1000", "r"),
    ("d=2026-11-04&r=-1", "r"),
    ("d=2026-11-04&r=1e3", "r"),
    ("d=2026-11-04&r=" + "_".join(["1"] * 9), "r"),
    ("d=2026-11-04&r=<script>", "r"),
    ("d=2026-11-04&r=1&p=11", "p"),
    ("d=2026-11-04&r=1&p=1,2", "p"),
    ("d=2026-11-04&r=1&g=0", "g"),
    ("d=2026-11-04&r=1&g=100", "g"),
    ("d=2026-11-04&r=1&lo=20&hi=10", "lo"),
    ("d=2026-11-04&r=1&gate=10.5", "gate"),
    ("d=2026-11-04&r=1&patient=p1", "patient"),
]


@pytest.mark.parametrize(("query", "parameter"), BAD_QUERIES)
def test_a_bad_query_names_its_parameter(query, parameter):
    with pytest.raises(ChartQueryError) as caught:
        parse_query(parse_qs(query, keep_blank_values=True), len(query))
    assert caught.value.parameter == parameter


def test_an_over_long_query_is_refused():
    with pytest.raises(ChartQueryError) as caught:
        parse_query({"d": ["2026-11-04"], "r": ["1"]}, 1025)
    assert caught.value.parameter == "query"


def test_the_svg_is_accessible_and_draws_what_the_query_says(active):
    labels = active.ruleset.document.texts.trend
    data = ChartData((dt.date(2026, 11, 4), dt.date(2026, 11, 11), dt.date(2026, 11, 18)), (1, 1, 2),
                     ((19.0, 18.0), (23.0, 22.0, 9.0), (28.0,)), (1.0, None, 3.0), 15.0, 25.0, 2.0)
    svg = render(data, labels)
    assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg"') and svg.endswith("</svg>")
    assert 'role="img"' in svg and 'aria-labelledby="trend-title trend-desc"' in svg
    assert f'<title id="trend-title">{labels.chart_title}</title>' in svg
    assert f'<desc id="trend-desc">{labels.chart_desc}</desc>' in svg
    assert svg.count('class="reps-point"') == 6
    assert svg.count('class="pain-point"') == 2
    assert svg.count('class="band-target"') == 1 and svg.count('class="band-pain"') == 1
    for label in (labels.legend_reps, labels.legend_pain, labels.legend_target, labels.legend_gate,
                  labels.axis_reps, labels.axis_pain, f"{labels.rung} 2", "2026-11-18"):
        assert f">{label}</text>" in svg, label
    assert "<script" not in svg and "href" not in svg
    plain = render(ChartData((dt.date(2026, 11, 4),), (None,), ((20.0,),), (None,)), labels)
    assert "band-" not in plain and labels.legend_target not in plain and "pain-point" not in plain


def test_labels_are_escaped_and_renders_are_cached(active):
    labels = active.ruleset.document.texts.trend.model_copy(update={"chart_title": "Reps < 15 & pain > 2"})
    data = ChartData((dt.date(2026, 11, 4),), (1,), ((20.0,),), (1.0,))
    svg = render(data, labels)
    assert "<title id=\"trend-title\">Reps &lt; 15 &amp; pain &gt; 2</title>" in svg
    assert render(data, labels) is svg  # the LRU cache answers the same query
    assert render(ChartData((dt.date(2026, 11, 4),), (1,), ((21.0,),), (1.0,)), labels) is not svg


# ---- the route ---------------------------------------------------------------------------------------------

QUERY = "d=2026-11-04,2026-11-11,2026-11-18&g=1,1,2&r=19_18,23_22,28_27&p=1,-,1&lo=15&hi=25&gate=2"


def test_the_route_serves_the_svg_with_strict_headers(client):
    response = client.get(f"{CHART_PATH}?{QUERY}")
    assert response.status_code == 200
    assert response.mimetype == "image/svg+xml"
    assert response.headers["Cache-Control"].startswith("public, max-age=")
    assert int(response.headers["Cache-Control"].split("max-age=")[1]) >= 3600
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert response.get_data(as_text=True).count('class="reps-point"') == 6


@pytest.mark.parametrize(("query", "parameter"), [BAD_QUERIES[3], BAD_QUERIES[12], BAD_QUERIES[-1]])
def test_the_route_answers_400_naming_the_parameter(client, query, parameter):
    from conftest import error_expression, error_message

    response = client.get(f"{CHART_PATH}?{query}")
    assert response.status_code == 400
    assert error_expression(response) == [parameter]
    assert f"'{parameter}'" in error_message(response)
    assert "<script>" not in response.get_data(as_text=True)


def test_the_route_needs_no_token_and_is_404_without_texts_trend(make_app, rules_copy):
    assert make_app(auth=False).test_client().get(f"{CHART_PATH}?{QUERY}").status_code == 200
    text = (rules_copy / "ruleset.yaml").read_text()
    start = text.index("  trend:\n")
    end = text.index("\n  app_link:")
    (rules_copy / "ruleset.yaml").write_text(text[:start] + text[end + 1:])
    assert rule_problems(rules_copy) == []
    response = make_app(rules_dir=rules_copy).test_client().get(f"{CHART_PATH}?{QUERY}")
    assert response.status_code == 404


def test_a_hook_call_links_the_chart_the_service_serves(make_app):
    app = make_app(public_base_url=BASE)
    client = app.test_client()
    rounds, pains = weekly(4)
    body = {"hook": "patient-view", "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
            "context": {"userId": "Practitioner/example", "patientId": PATIENT}, "prefetch": prefetch(rounds, pains)}
    cards = client.post(SERVICE_URL, json=body).get_json()["cards"]
    (card,) = [c for c in cards if c["extension"][EXT].get("recommendedExercise")]
    url = re.findall(r"\]\((\S+)\)", card["detail"])[0]
    assert url.startswith(BASE + CHART_PATH + "?")
    (smart,) = [link for link in card["links"] if link["type"] == "smart"]
    assert smart["url"] == BASE + APP_LAUNCH_PATH and json.loads(smart["appContext"])["rung"] == "bird-dog"
    chart = client.get(url.removeprefix(BASE))
    assert chart.status_code == 200 and chart.get_data(as_text=True).count('class="reps-point"') == 8


# ---- the rule checker --------------------------------------------------------------------------------------


def test_rule_check_reports_trend_mistakes_with_their_position(rules_copy):
    edit_rule_file(rules_copy, "ruleset.yaml", "    target_low: reps_low\n", "    target_low: reps_lo\n")
    edit_rule_file(rules_copy, "ruleset.yaml", "    legend_gate: Pain allowed\n", "    legend_gate: Pain {pain_gate_max}\n")
    edit_rule_file(rules_copy, "ruleset.yaml", "    sessions: 6\n", "    sessions: 13\n")
    text = (rules_copy / "ruleset.yaml").read_text().splitlines()
    line_of = {key: next(i + 1 for i, line in enumerate(text) if line.startswith(f"    {key}:"))
               for key in ("legend_gate", "sessions")}
    problems = rule_problems(rules_copy)
    assert any(p.startswith(f"ruleset.yaml:{line_of['legend_gate']}:") and "texts.trend.legend_gate" in p
               and "no placeholders" in p for p in problems), problems
    assert any(p.startswith(f"ruleset.yaml:{line_of['sessions']}:") and "texts.trend.sessions" in p for p in problems)


def test_rule_check_reports_an_unknown_band_parameter(rules_copy):
    edit_rule_file(rules_copy, "ruleset.yaml", "    target_low: reps_low\n", "    target_low: reps_lo\n")
    line = next(i + 1 for i, s in enumerate((rules_copy / "ruleset.yaml").read_text().splitlines())
                if s.startswith("    target_low:"))
    assert rule_problems(rules_copy) == [
        f"ruleset.yaml:{line}:17: texts.trend.target_low: unknown parameter 'reps_lo' (did you mean 'reps_low'?)"]


def test_rule_check_reports_a_missing_trend_label(rules_copy):
    edit_rule_file(rules_copy, "ruleset.yaml", "    axis_pain: Pain (0-10)\n", "")
    (problem,) = rule_problems(rules_copy)
    assert re.fullmatch(r"ruleset\.yaml:\d+:\d+: texts\.trend: required key 'axis_pain' is missing", problem), problem


def test_the_patient_view_fixture_rule_sets_have_the_trend_texts():
    """rules-orders (order-sign cards, which show no trend) keeps loading without them: the keys are optional."""
    from cds.ruleset.loader import load_ruleset

    for folder in sorted(Path(RULES_DIR).parent.iterdir()):
        if folder.is_dir() and any(folder.glob("*.yaml")):
            texts = load_ruleset(folder).document.texts
            with_trend = folder.name != "rules-orders"
            assert (texts.trend is not None, texts.app_link is not None) == (with_trend, with_trend), folder.name
