"""The durable-rules wrapper (cds.engine): its guarantees, proven (shared/notes/durable-rules.md).

1. One engine, no background threads, one lock around each evaluation.
2. Every evaluation gets its own session, deleted whatever happens; action exceptions surface;
   facts are checked before they reach C.
3. 5,000 sequential evaluations (past the 1,024-session ceiling) without error or memory growth;
   8 threads x 1,000 evaluations each getting its own result; a fact matching no rule; an action
   that raises; a Decimal value; an oversized fact; a nested value -- each a clear error or a
   correct result, and the next evaluation still works.

Then each rule of rules/progression.yaml, fired by a hand-built Assessment.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from decimal import Decimal

import pytest

from cds.assessment import Assessment
from cds.engine import MAX_FACT_PROPERTIES, ActionFailed, EngineInputError, RuleEngine, _safe_fact

TODAY = dt.date(2026, 11, 20)
PAGE = os.sysconf("SC_PAGE_SIZE")
MiB = 1024 * 1024


def rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm (second field, in pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


@pytest.fixture(scope="module")
def engine(ruleset) -> RuleEngine:
    return RuleEngine(ruleset)


# ------------------------------------------------------------------------------------------------
# Hand-built assessments
# ------------------------------------------------------------------------------------------------

LADDER = ["hip-abduction", "bird-dog", "single-leg-reverse-hyper", "reverse-hyper"]


def assessment(
    exercise: str | None = "bird-dog",
    reps: tuple[float, ...] = (20, 18),
    pain: float | None = 1,
    onset_days_ago: int | None = 200,
) -> Assessment:
    """An assessment as cds.assessment.assess would build it (no session when ``exercise`` is None)."""
    values: dict = {"onset_known": onset_days_ago is not None, "onset_days_ago": onset_days_ago}
    if exercise is None:
        return Assessment(session_recorded=False, **values)
    rung = LADDER.index(exercise) + 1
    return Assessment(
        session_recorded=True,
        exercise=exercise,
        rung=rung,
        on_first_rung=rung == 1,
        on_top_rung=rung == len(LADDER),
        rounds_recorded=len(reps),
        min_reps=min(reps),
        max_reps=max(reps),
        pain_recorded=pain is not None,
        max_pain=pain,
        **values,
    )


def fired(engine: RuleEngine, a: Assessment) -> list[str]:
    return [f.rule_id for f in engine.evaluate(a, TODAY).fired]


def outcome(engine: RuleEngine, a: Assessment) -> tuple:
    """Everything an evaluation decided: (rule id, notes) of each fired rule, in order."""
    return tuple((f.rule_id, f.notes) for f in engine.evaluate(a, TODAY).fired)


#: (assessment, expected outcome): pairwise different, so a result landing on another input shows.
DISTINCT_CASES: list[tuple[Assessment, tuple]] = [
    (assessment(onset_days_ago=10), (("new-onset", ()),)),
    (assessment(exercise=None, onset_days_ago=None), (("onset-unknown", ()), ("start", ()))),
    (assessment(exercise=None), (("start", ()),)),
    (assessment(pain=None, reps=(22, 21)), (("pain-unrecorded", ()),)),
    (assessment("hip-abduction", pain=4), (("pain-gate-first-rung", ()),)),
    (assessment("bird-dog", pain=5), (("pain-gate", ()),)),
    (assessment("hip-abduction", reps=(10, 9)), (("step-back-first-rung", ()),)),
    (assessment("bird-dog", reps=(12, 14)), (("step-back", ()),)),
    (assessment("reverse-hyper", reps=(30, 29), pain=0), (("step-up-top-rung", ()),)),
    (assessment("bird-dog", reps=(28, 27)), (("step-up", ()),)),
    (assessment("bird-dog", reps=(20, 18)), (("continue", ()),)),
    (assessment("bird-dog", reps=(20,)), (("continue", ("incomplete-session",)),)),
]


def test_distinct_cases_really_are_distinct():
    outcomes = [expected for _, expected in DISTINCT_CASES]
    assert len(set(outcomes)) == len(outcomes)


@pytest.mark.parametrize("case", range(len(DISTINCT_CASES)))
def test_distinct_case(engine, case):
    a, expected = DISTINCT_CASES[case]
    assert outcome(engine, a) == expected


# ------------------------------------------------------------------------------------------------
# Guarantee 1: no background threads, one engine
# ------------------------------------------------------------------------------------------------


def test_creating_and_using_an_engine_starts_no_thread(ruleset):
    before = set(threading.enumerate())
    eng = RuleEngine(ruleset)
    after_create = set(threading.enumerate())
    assert fired(eng, assessment()) == ["continue"]
    after_use = set(threading.enumerate())
    assert after_create == before, f"threads started by RuleEngine(): {after_create - before}"
    assert after_use == before, f"threads started by an evaluation: {after_use - before}"


# ------------------------------------------------------------------------------------------------
# Guarantee 3: sessions are deleted (past the 1,024 ceiling, no memory growth), thread safety
# ------------------------------------------------------------------------------------------------


def test_5000_sequential_evaluations_without_error_or_memory_growth(engine):
    cases = [a for a, _ in DISTINCT_CASES]
    expected = [e for _, e in DISTINCT_CASES]
    for i in range(500):  # warm-up: allocator pools, caches
        outcome(engine, cases[i % len(cases)])
    before = rss_bytes()
    for i in range(5000):
        k = i % len(cases)
        assert outcome(engine, cases[k]) == expected[k], f"evaluation {i}"
    grown = rss_bytes() - before
    # A leaked session holds ~100 KiB: 5,000 leaks would be ~500 MiB (and a crash at 1,025).
    assert grown < 5 * MiB, f"RSS grew by {grown / MiB:.1f} MiB over 5,000 evaluations"


def test_8_threads_x_1000_evaluations_each_get_their_own_result(engine):
    n_threads, per_thread = 8, 1000
    errors: list[str] = []
    counts = [0] * n_threads
    start = threading.Barrier(n_threads)

    def worker(t: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                # every thread walks the cases from a different offset, so at any moment the threads
                # evaluate different inputs and a cross-talk would hand one thread another's result
                a, expected = DISTINCT_CASES[(t + i) % len(DISTINCT_CASES)]
                got = engine.evaluate(a, TODAY)
                if got.assessment is not a:
                    errors.append(f"thread {t} evaluation {i}: result carries another assessment")
                result = tuple((f.rule_id, f.notes) for f in got.fired)
                if result != expected:
                    errors.append(f"thread {t} evaluation {i}: expected {expected}, got {result}")
                counts[t] += 1
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"thread {t}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads), "a worker thread hung"
    assert errors == [], errors[:5]
    assert counts == [per_thread] * n_threads


# ------------------------------------------------------------------------------------------------
# Each failure mode: a clear error or a correct result, and the next evaluation still works
# ------------------------------------------------------------------------------------------------


def _next_evaluation_works(engine: RuleEngine) -> None:
    assert fired(engine, assessment("bird-dog", reps=(28, 27))) == ["step-up"]


def test_facts_matching_no_rule_fire_nothing(engine):
    run = engine.run_facts([{"kind": "unrelated", "colour": "blue", "size": 3}])
    assert run.fired == []
    assert run.notes == {}
    assert run.error is None
    _next_evaluation_works(engine)


def test_no_facts_at_all_fire_nothing(engine):
    assert engine.run_facts([]).fired == []
    _next_evaluation_works(engine)


def test_an_action_that_raises_is_surfaced_as_action_failed(engine, monkeypatch):
    def broken(rule_id: str) -> None:
        raise RuntimeError(f"recording {rule_id} broke")

    monkeypatch.setattr(engine, "_record_rule", broken)
    with pytest.raises(ActionFailed) as info:
        engine.evaluate(assessment("bird-dog", reps=(20, 18)), TODAY)
    message = str(info.value)
    assert "rule action failed" in message
    assert "recording continue broke" in message  # the action's own message, not swallowed
    monkeypatch.undo()
    _next_evaluation_works(engine)
    # and several more, so a half-deleted session would show
    for a, expected in DISTINCT_CASES:
        assert outcome(engine, a) == expected


def test_a_decimal_value_is_converted_and_gives_the_right_result(engine):
    values = assessment("bird-dog", reps=(28, 27)).engine_fact()
    values.update(min_reps=Decimal("27"), max_reps=Decimal("28"), max_pain=Decimal("1.0"), rung=Decimal(2))
    run = engine.run_facts([{"kind": "assessment", "stage": "progression", **values}])
    assert run.fired == ["step-up"]
    safe = _safe_fact({"a": Decimal("2.5"), "b": 3, "c": True, "d": "x"})
    assert safe == {"a": 2.5, "b": 3.0, "c": True, "d": "x"}
    assert type(safe["a"]) is float and type(safe["b"]) is float and safe["c"] is True
    _next_evaluation_works(engine)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), Decimal("NaN")])
def test_a_non_finite_number_is_refused(engine, bad):
    with pytest.raises(EngineInputError, match="finite"):
        engine.run_facts([{"kind": "assessment", "stage": "progression", "min_reps": bad}])
    _next_evaluation_works(engine)


@pytest.mark.parametrize("bad", [1e16, 1e-05, Decimal("1E+20")])
def test_a_number_in_exponent_notation_is_refused(engine, bad):
    """durable-rules reads facts as JSON text and cannot parse 1e-05 or 1e+16: refused before C."""
    with pytest.raises(EngineInputError, match="cannot read"):
        engine.run_facts([{"kind": "assessment", "stage": "progression", "min_reps": bad}])
    _next_evaluation_works(engine)


@pytest.fixture
def c_engine_spy(engine, monkeypatch):
    """Records every fact that reaches the C engine (through the host), while still passing it on."""
    reached: list[dict] = []
    real = engine._host.assert_fact

    def spy(ruleset_name, fact, *args, **kwargs):
        reached.append(fact)
        return real(ruleset_name, fact, *args, **kwargs)

    monkeypatch.setattr(engine._host, "assert_fact", spy)
    return reached


def test_an_oversized_fact_is_refused_before_reaching_the_engine(engine, c_engine_spy):
    big = {"kind": "assessment", "stage": "progression", **{f"p{i}": float(i) for i in range(300)}}
    with pytest.raises(EngineInputError, match=rf"302 properties.*at most {MAX_FACT_PROPERTIES}"):
        engine.run_facts([{"kind": "evaluation-like"}, big])
    assert c_engine_spy == [], "a fact reached the C engine although the batch was refused"
    _next_evaluation_works(engine)


@pytest.mark.parametrize(
    "value, kind",
    [({"nested": 1}, "dict"), ([1, 2], "list"), (None, "NoneType"), (dt.date(2026, 1, 1), "date")],
)
def test_a_nested_or_non_json_value_is_refused_before_reaching_the_engine(engine, c_engine_spy, value, kind):
    with pytest.raises(EngineInputError, match=rf"'inner' has type {kind}; facts must be flat"):
        engine.run_facts([{"kind": "assessment", "stage": "progression", "inner": value}])
    assert c_engine_spy == []
    _next_evaluation_works(engine)


def test_the_same_fact_twice_is_a_clear_error(engine):
    # a fact that a rule matches and keeps: the marker fact the wrapper asserts first
    with pytest.raises(EngineInputError, match="asserted twice"):
        engine.run_facts([{"kind": "evaluation"}])
    _next_evaluation_works(engine)


# ------------------------------------------------------------------------------------------------
# Each rule of rules/progression.yaml
# ------------------------------------------------------------------------------------------------


def test_rule_new_onset(engine):
    assert fired(engine, assessment(onset_days_ago=10)) == ["new-onset"]
    assert fired(engine, assessment(onset_days_ago=41)) == ["new-onset"]
    assert fired(engine, assessment(onset_days_ago=0)) == ["new-onset"]


def test_rule_new_onset_is_final_and_suppresses_progression(engine):
    # every progression rule would match one of these; the final new-onset rule halts them all
    for a in [
        assessment(exercise=None, onset_days_ago=5),
        assessment(pain=None, onset_days_ago=5),
        assessment("bird-dog", pain=8, onset_days_ago=5),
        assessment("bird-dog", reps=(30, 30), onset_days_ago=5),
        assessment("bird-dog", reps=(20,), onset_days_ago=5),
    ]:
        ev = engine.evaluate(a, TODAY)
        assert [f.rule_id for f in ev.fired] == ["new-onset"]
        assert ev.fired[0].notes == ()  # progression notes belong to no fired rule


def test_after_a_final_rule_no_later_stage_fact_is_asserted(engine, c_engine_spy):
    """evaluate stops asserting stage facts once a final rule fired: the same evaluation as asserting
    them all (every later rule excludes the halted fact; a note counts only for a fired rule)."""
    new_onset = assessment("bird-dog", reps=(30, 30), onset_days_ago=5)  # a progression rule matches too
    ev = engine.evaluate(new_onset, TODAY)
    assert [f.rule_id for f in ev.fired] == ["new-onset"]
    stages = [f.get("stage") for f in c_engine_spy if f.get("kind") == "assessment"]
    assert stages == ["onset"]  # the progression fact never reached the engine
    values = new_onset.engine_fact()
    every = [{"kind": "assessment", "stage": s, **{k: v for k, v in values.items() if k in engine._stage_facts[s]}}
             for s in engine._stages]
    c_engine_spy.clear()
    full = engine.run_facts(every)  # all stage facts asserted, as before
    assert full.fired == ["new-onset"]
    assert [f.get("stage") for f in c_engine_spy if f.get("kind") == "assessment"] == ["onset", "progression"]
    # not final: every stage fact is asserted
    c_engine_spy.clear()
    assert fired(engine, assessment(onset_days_ago=200)) == ["continue"]
    assert [f.get("stage") for f in c_engine_spy if f.get("kind") == "assessment"] == ["onset", "progression"]


def test_stage_facts_carry_exactly_the_named_values_in_field_order(engine, c_engine_spy):
    a = assessment(onset_days_ago=200)
    engine.evaluate(a, TODAY)
    values = a.engine_fact()
    for fact in (f for f in c_engine_spy if f.get("kind") == "assessment"):
        named = engine._stage_facts[fact["stage"]]
        expected = {k: v for k, v in values.items() if k in named}
        assert {k: v for k, v in fact.items() if k not in ("kind", "stage", "sid")} == expected
        assert [k for k in fact if k in named] == list(expected)


def test_onset_not_new_at_the_window(engine):
    assert fired(engine, assessment(onset_days_ago=42)) == ["continue"]


def test_rule_onset_unknown_is_not_final(engine):
    assert fired(engine, assessment(onset_days_ago=None)) == ["onset-unknown", "continue"]
    assert fired(engine, assessment("bird-dog", reps=(28, 27), onset_days_ago=None)) == ["onset-unknown", "step-up"]


def test_rule_start(engine):
    ev = engine.evaluate(assessment(exercise=None), TODAY)
    assert [f.rule_id for f in ev.fired] == ["start"]
    assert ev.fired[0].recommend.rung == "first"


def test_rule_pain_unrecorded(engine):
    assert fired(engine, assessment(pain=None, reps=(22, 21))) == ["pain-unrecorded"]
    # first match wins: no pain beats a too-easy session
    assert fired(engine, assessment(pain=None, reps=(30, 30))) == ["pain-unrecorded"]


def test_rule_pain_gate_first_rung(engine):
    assert fired(engine, assessment("hip-abduction", pain=4)) == ["pain-gate-first-rung"]
    # first match wins: pain-gate-first-rung (30) over pain-gate (31) and step-back-first-rung (40)
    assert fired(engine, assessment("hip-abduction", reps=(10, 9), pain=4)) == ["pain-gate-first-rung"]


def test_rule_pain_gate(engine):
    assert fired(engine, assessment("bird-dog", pain=5)) == ["pain-gate"]
    assert fired(engine, assessment("bird-dog", pain=3)) == ["pain-gate"]
    assert fired(engine, assessment("bird-dog", pain=2.5)) == ["pain-gate"]
    assert fired(engine, assessment("bird-dog", pain=2)) == ["continue"]  # at the gate is allowed
    # pain beats reps: a too-easy but painful session steps back, not up
    assert fired(engine, assessment("bird-dog", reps=(30, 30), pain=3)) == ["pain-gate"]


def test_rule_step_back_first_rung(engine):
    assert fired(engine, assessment("hip-abduction", reps=(10, 9))) == ["step-back-first-rung"]


def test_rule_step_back(engine):
    assert fired(engine, assessment("bird-dog", reps=(12, 14))) == ["step-back"]
    assert fired(engine, assessment("bird-dog", reps=(14, 20))) == ["step-back"]
    assert fired(engine, assessment("bird-dog", reps=(15, 15))) == ["continue"]


def test_rule_step_up_top_rung(engine):
    assert fired(engine, assessment("reverse-hyper", reps=(30, 29), pain=0)) == ["step-up-top-rung"]


def test_rule_step_up(engine):
    assert fired(engine, assessment("bird-dog", reps=(28, 27))) == ["step-up"]
    assert fired(engine, assessment("bird-dog", reps=(26, 26))) == ["step-up"]
    assert fired(engine, assessment("bird-dog", reps=(25, 26))) == ["continue"]
    assert fired(engine, assessment("bird-dog", reps=(25, 25))) == ["continue"]


def test_rule_continue(engine):
    ev = engine.evaluate(assessment("bird-dog", reps=(20, 18)), TODAY)
    assert [f.rule_id for f in ev.fired] == ["continue"]
    assert ev.fired[0].decision == "continue"
    assert ev.fired[0].indicator == "info"
    assert ev.fired[0].notes == ()


def test_note_incomplete_session(engine):
    ev = engine.evaluate(assessment("bird-dog", reps=(20,)), TODAY)
    assert [(f.rule_id, f.notes) for f in ev.fired] == [("continue", ("incomplete-session",))]
    # notes go with the rule of their stage whatever rule it is
    ev = engine.evaluate(assessment("bird-dog", reps=(28,)), TODAY)
    assert [(f.rule_id, f.notes) for f in ev.fired] == [("step-up", ("incomplete-session",))]


def test_every_rule_of_the_rule_file_is_covered(ruleset):
    covered = {rule_id for _, expected in DISTINCT_CASES for rule_id, _ in expected}
    assert covered == {r.id for r in ruleset.document.rules}
    assert {n for _, expected in DISTINCT_CASES for _, notes in expected for n in notes} == {
        n.id for n in ruleset.document.notes
    }


def test_fired_rules_carry_the_rule_file_fields(engine, ruleset):
    for a, _expected in DISTINCT_CASES:
        for f in engine.evaluate(a, TODAY).fired:
            rule = ruleset.rule(f.rule_id)
            assert (f.stage, f.decision, f.indicator, f.recommend) == (
                rule.stage, rule.decision, rule.indicator, rule.recommend
            )


# ------------------------------------------------------------------------------------------------
# Freeing the C ruleset (reload: each replaced engine must give its memory back)
# ------------------------------------------------------------------------------------------------


def test_close_frees_the_c_ruleset_and_refuses_later_evaluations(ruleset, engine):
    from cds import engine as engine_module
    from cds.engine import EngineError

    before = engine_module.live_rulesets()
    eng = RuleEngine(ruleset)
    assert engine_module.live_rulesets() == before + 1
    assert outcome(eng, DISTINCT_CASES[0][0]) == DISTINCT_CASES[0][1]
    eng.close()
    eng.close()  # idempotent
    assert eng.closed
    assert engine_module.live_rulesets() == before
    with pytest.raises(EngineError, match="closed"):  # an error, never freed C memory
        eng.evaluate(DISTINCT_CASES[0][0], TODAY)
    _next_evaluation_works(engine)  # the other engines are untouched


def test_a_dropped_engine_is_freed_without_close(ruleset):
    from cds import engine as engine_module

    before = engine_module.live_rulesets()
    eng = RuleEngine(ruleset)
    eng.evaluate(DISTINCT_CASES[0][0], TODAY)
    assert engine_module.live_rulesets() == before + 1
    del eng  # no reference cycle: freed by its last reference, not by a later garbage collection
    assert engine_module.live_rulesets() == before


def test_an_engine_dropped_while_the_lock_is_held_is_freed_later_without_deadlock(ruleset):
    from cds import engine as engine_module

    before = engine_module.live_rulesets()
    eng = RuleEngine(ruleset)
    with engine_module._ENGINE_LOCK:  # as in a garbage collection during an evaluation
        del eng  # the finaliser must not block on the (non-reentrant) lock
        assert engine_module._PENDING_FREE
    assert engine_module.live_rulesets() == before  # queued: no longer counted as live
    engine_module.free_pending()
    assert not engine_module._PENDING_FREE


def test_300_engines_and_compile_checks_do_not_grow_memory(ruleset):
    from cds.engine import compile_check

    for _ in range(20):
        RuleEngine(ruleset).close()
        compile_check(ruleset)
    before = rss_bytes()
    for n in range(300):
        eng = RuleEngine(ruleset)
        if n % 2:
            eng.close()
        del eng
        compile_check(ruleset)
    growth = (rss_bytes() - before) / MiB
    assert growth < 5, f"300 engines grew RSS by {growth:.1f} MiB"
