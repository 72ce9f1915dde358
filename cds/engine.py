"""The durable-rules engine, wrapped so that none of its crash modes can reach a patient.

What this module guarantees (see ``shared/notes/durable-rules.md``):

1. One engine per rule-set version, built once; no background timer threads (:class:`_QuietHost`);
   one process-wide lock around every evaluation (the C code never releases the GIL anyway).
2. Every evaluation: a unique session id, a marker fact first (so an action has always run before
   the session is deleted), facts asserted one at a time ("not handled" is normal), every fact
   checked to be small, flat and JSON-safe before it reaches C, exceptions swallowed by the engine
   turned into :class:`ActionFailed`, and the session deleted in ``finally`` whatever happens.

Rule semantics compiled here: stages run in order; each stage's assessment fact is retracted by the
first rule (lowest priority number) that fires on it, so later rules of the stage never fire; a
``final`` rule asserts a ``halted`` fact that every rule's condition excludes. Notes of a stage match
the same fact with a priority ahead of every rule, so they see it before it is retracted.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import threading
import weakref
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from durable import engine as durable

from .assessment import Assessment
from .decisions import Evaluation, FiredRule, recommended_rung
from .errors import CdsError
from .ruleset.model import RuleSet

log = logging.getLogger("cds.engine")

#: durable-rules caps a fact at 255 properties after flattening
MAX_FACT_PROPERTIES = 255
_MARKER = "__evaluation__"
_NOTE_PREFIX = "note:"

# The C engine is process-global state: one lock for all engines (all rule-set versions).
_ENGINE_LOCK = threading.Lock()
_ruleset_counter = itertools.count(1)
_session_counter = itertools.count(1)
# C ruleset handles whose engine became unreachable while the engine lock could not be taken (for
# example a garbage collection inside an evaluation, on the thread that holds the lock): freed at the
# next safe point (:func:`free_pending`, the next engine built or closed).
_PENDING_FREE: list[int] = []
#: handles of the C rulesets alive now (created by a RuleEngine and not yet deleted)
_LIVE_HANDLES: set[int] = set()


def _delete_handles_locked(handles: Iterable[int]) -> None:
    """Delete C rulesets; the caller holds ``_ENGINE_LOCK``."""
    import durable_rules_engine as c_engine

    for handle in handles:
        if handle in _LIVE_HANDLES:
            _LIVE_HANDLES.discard(handle)
            try:
                c_engine.delete_ruleset(handle)
            except Exception:  # noqa: BLE001 - freeing must never fail a request or a reload
                log.exception("could not delete a durable-rules ruleset")


def _drain_pending_locked() -> None:
    while _PENDING_FREE:
        _delete_handles_locked([_PENDING_FREE.pop()])


def free_pending() -> None:
    """Free the C rulesets of engines that were dropped while the engine lock was busy.

    Call it from a thread that does not hold the engine lock (the rule-file watcher does, every poll)."""
    if _PENDING_FREE:
        with _ENGINE_LOCK:
            _drain_pending_locked()


def live_rulesets() -> int:
    """How many C rulesets built by :class:`RuleEngine` are alive (not freed yet)."""
    return len(_LIVE_HANDLES) - len(set(_PENDING_FREE) & _LIVE_HANDLES)


def _release_unreachable(handles: tuple[int, ...]) -> None:
    """Finaliser of a RuleEngine nobody references any more: free its C ruleset now if the lock is
    free, else queue it. Never blocks: it may run inside a garbage collection on a thread that already
    holds the (non-reentrant) engine lock."""
    _PENDING_FREE.extend(handles)
    if _ENGINE_LOCK.acquire(blocking=False):
        try:
            _drain_pending_locked()
        finally:
            _ENGINE_LOCK.release()


class EngineError(CdsError, RuntimeError):
    """The rule engine could not evaluate; never answered with a card."""


class EngineInputError(EngineError):
    """A fact that the engine cannot take safely (nested, too large, not JSON-safe)."""


class ActionFailed(EngineError):
    """An action raised inside the engine (durable-rules swallows these; we do not)."""


class EngineCompileError(EngineError):
    def __init__(self, rule_id: str | None, reason: str):
        super().__init__(f"rule {rule_id or '?'}: {reason}")
        self.rule_id = rule_id
        self.reason = reason


def _marker_action(c: Any) -> None:
    return None


class _QuietHost(durable.Host):
    """A durable-rules host without its two background ``threading.Timer`` dispatch loops."""

    def _run(self) -> None:  # noqa: D401 - deliberately does nothing
        return None


@dataclass
class _Run:
    """What happened in one engine session."""

    sid: str
    fired: list[str] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)  # stage -> note ids
    error: str | None = None


def durable_definition(ruleset: RuleSet) -> dict[str, dict[str, Any]]:
    """The rule set as a durable-rules ruleset definition (without the action callables)."""
    doc = ruleset.document
    rules: dict[str, dict[str, Any]] = {_MARKER: {"all": [{"m": {"kind": "evaluation"}}], "pri": 0}}
    # Notes come first (priority 0, defined before the rules, whose priorities are shifted by one):
    # a note sees its stage's assessment fact before the stage's first rule retracts it.
    for note in doc.notes:
        cond = ruleset.conditions[_NOTE_PREFIX + note.id].durable
        rules[_NOTE_PREFIX + note.id] = {
            "all": [{"m": {"$and": [{"kind": "assessment"}, {"stage": note.stage}, cond]}}],
            "pri": 0,
        }
    for rule in doc.rules:
        cond = ruleset.conditions[rule.id].durable
        rules[rule.id] = {
            "all": [
                {"m": {"$and": [{"kind": "assessment"}, {"stage": rule.stage}, cond]}},
                {"m_1$not": {"kind": "halted"}},
            ],
            "pri": rule.priority + 1,
        }
    return rules


def compile_check(ruleset: RuleSet) -> None:
    """Compile every rule on its own in the C engine and release it; raise on the first rejection."""
    import durable_rules_engine as c_engine

    definition = durable_definition(ruleset)
    with _ENGINE_LOCK:
        _drain_pending_locked()
        for name, rule in definition.items():
            try:
                handle = c_engine.create_ruleset(f"check-{next(_ruleset_counter)}", json.dumps({name: rule}))
            except Exception as e:  # the C extension raises plain Exception with an error code
                raise EngineCompileError(None if name == _MARKER else name.removeprefix(_NOTE_PREFIX), str(e)) from None
            c_engine.delete_ruleset(handle)  # each check ruleset is freed at once


def _safe_fact(fact: Mapping[str, Any]) -> dict[str, Any]:
    """A flat copy of ``fact`` with only str/bool/float values, or :class:`EngineInputError`."""
    if len(fact) > MAX_FACT_PROPERTIES:
        raise EngineInputError(f"fact has {len(fact)} properties; the engine takes at most {MAX_FACT_PROPERTIES}")
    out: dict[str, Any] = {}
    for key, value in fact.items():
        if isinstance(value, bool) or isinstance(value, str):
            out[key] = value
        elif isinstance(value, (int, float, Decimal)):
            number = float(value)
            if number != number or number in (float("inf"), float("-inf")):
                raise EngineInputError(f"fact property {key!r} is not a finite number")
            if "e" in repr(number):  # the C engine cannot parse JSON numbers in exponent notation
                raise EngineInputError(f"fact property {key!r} is a number the engine cannot read (too large or small)")
            out[key] = number
        else:
            raise EngineInputError(f"fact property {key!r} has type {type(value).__name__}; facts must be flat")
    return out


class RuleEngine:
    """One compiled rule set in durable-rules. Thread-safe; evaluations are serialised.

    Its C ruleset lives until :meth:`close` or, at the latest, until nobody references the engine any
    more (a finaliser frees it then: the actions hold the engine only weakly, so that is as soon as the
    last reference goes). An engine is closed only when no request can still use it.
    """

    def __init__(self, ruleset: RuleSet):
        self.ruleset = ruleset
        self._stages = list(ruleset.document.stages)
        # Each stage's fact carries only the facts its rules and notes name: the C engine's cost grows
        # with the properties of every fact asserted, and a fact no condition reads cannot change a match.
        doc = ruleset.document
        self._stage_facts: dict[str, frozenset[str]] = {}
        for stage in self._stages:
            ids = [r.id for r in doc.rules if r.stage == stage] + [f"{_NOTE_PREFIX}{n.id}" for n in doc.notes
                                                                 if n.stage == stage]
            self._stage_facts[stage] = frozenset().union(*(ruleset.conditions[i].facts for i in ids
                                                           if i in ruleset.conditions))
        self._final = {r.id for r in ruleset.document.rules if r.final}
        self._stage_of = {r.id: r.stage for r in doc.rules}
        # each stage's facts in the assessment's field order (the fact as before, built without a scan)
        self._stage_keys = {stage: tuple(k for k in Assessment.model_fields if k in named)
                            for stage, named in self._stage_facts.items()}
        self._name = f"lbp{next(_ruleset_counter)}"
        self._run: _Run | None = None
        self.closed = False
        definition = durable_definition(ruleset)
        for name, rule in definition.items():
            rule["run"] = _marker_action if name == _MARKER else self._action_for(name)
        try:
            with _ENGINE_LOCK:
                _drain_pending_locked()
                self._host = _QuietHost({self._name: definition})
                self._handles = tuple(r._handle for r in self._host._ruleset_list)
                _LIVE_HANDLES.update(self._handles)
        except Exception as e:
            raise EngineCompileError(None, str(e)) from None
        self._finalizer = weakref.finalize(self, _release_unreachable, self._handles)
        self._finalizer.atexit = False  # type: ignore[misc]  # a documented attribute the stub's __slots__ omits  # at exit a daemon thread may still evaluate: leave it to the OS

    def close(self) -> None:
        """Free the C ruleset (under the engine lock). Idempotent; evaluating afterwards raises
        :class:`EngineError` instead of reaching freed C memory."""
        with _ENGINE_LOCK:
            if self.closed:
                return
            self.closed = True
            self._finalizer.detach()
            _delete_handles_locked(self._handles)
            _drain_pending_locked()

    # -- actions (run synchronously, on the calling thread, under the lock) -----------------------
    # They reference the engine weakly: no reference cycle, so a dropped engine is freed at once.
    def _action_for(self, name: str):
        engine = weakref.ref(self)
        if name.startswith(_NOTE_PREFIX):
            note_id = name.removeprefix(_NOTE_PREFIX)

            def note_action(c: Any) -> None:
                live = engine()
                assert live is not None, "an action runs only inside the engine's own evaluation"
                live._record_note(c.m.stage, note_id)

            return note_action

        final = name in self._final

        def rule_action(c: Any) -> None:
            live = engine()
            assert live is not None, "an action runs only inside the engine's own evaluation"
            live._record_rule(name)
            c.retract_fact(c.m)  # first match wins: the stage fact is gone, pending rules drop
            if final:
                c.assert_fact({"kind": "halted"})

        return rule_action

    def _record_rule(self, rule_id: str) -> None:
        assert self._run is not None
        self._run.fired.append(rule_id)

    def _record_note(self, stage: str, note_id: str) -> None:
        assert self._run is not None
        notes = self._run.notes.setdefault(stage, [])
        if note_id not in notes:  # a condition with 'or' matches once per alternative that holds
            notes.append(note_id)

    # -- evaluation ----------------------------------------------------------------------------
    def run_facts(self, facts: Iterable[Mapping[str, Any]], *, until_final: bool = False) -> _Run:
        """Assert ``facts`` one at a time in a fresh session and return what fired.

        Facts are checked before the session starts, so bad input never reaches the C engine.
        ``until_final``: stop asserting once a ``final`` rule has fired (the stage facts of
        :meth:`evaluate`: every rule's condition excludes the ``halted`` fact it asserted, so no rule
        of a later stage can fire, and a note counts only for a fired rule of its stage).
        """
        safe = [_safe_fact(f) for f in facts]
        with _ENGINE_LOCK:
            if self.closed:
                raise EngineError("this rule engine was closed (its rule set was replaced)")
            run = _Run(sid=f"s{next(_session_counter)}")
            self._run = run
            try:
                self._assert({"kind": "evaluation"})  # marker: an action always runs before delete
                for fact in safe:
                    self._assert(fact)
                    if until_final and run.fired and run.fired[-1] in self._final:
                        break
                exception = self._host.get_state(self._name, run.sid).get("exception")
                if exception or run.error:
                    raise ActionFailed(f"a rule action failed: {run.error or exception}")
            finally:
                self._run = None
                self._host.delete_state(self._name, run.sid)
        return run

    def _assert(self, fact: dict[str, Any]) -> None:
        run = self._run
        assert run is not None
        try:
            self._host.assert_fact(self._name, dict(fact, sid=run.sid))
        except durable.MessageNotHandledException:
            pass  # no rule matches this fact: normal
        except durable.MessageObservedException:
            raise EngineInputError("the same fact was asserted twice in one evaluation") from None
        except BaseException as e:
            run.error = f"{type(e).__name__}: {e}"
            raise ActionFailed(f"the engine failed on a fact: {run.error}") from None

    def _note_applies(self, note_id: str, decision: str) -> bool:
        """A note with ``decisions: [...]`` is only added to the card of a rule with one of those decisions."""
        decisions = self.ruleset.note(note_id).decisions
        return not decisions or decision in decisions

    def evaluate(self, assessment: Assessment, evaluation_date: dt.date, *,
                 stages: Collection[str] | None = None) -> Evaluation:
        """Run the rule set on one assessment: the stages in order (with their notes). ``stages``: only
        these stages run (a service's ``stages``); the others' rules cannot fire, so a final rule of a
        stage left out never ends the evaluation. None: every stage."""
        values = assessment.engine_fact()
        rules = self.ruleset.document
        stage_of = self._stage_of
        facts: list[dict[str, Any]] = []
        for stage in self._stages:
            if stages is not None and stage not in stages:
                continue
            fact = {"kind": "assessment", "stage": stage}
            for k in self._stage_keys[stage]:
                if k in values:
                    fact[k] = values[k]
            facts.append(fact)
        run = self.run_facts(facts, until_final=True)
        fired = []
        for rule_id in run.fired:
            rule = self.ruleset.rule(rule_id)
            notes = [n for n in run.notes.get(stage_of[rule_id], ()) if self._note_applies(n, rule.decision)]
            fired.append(
                FiredRule(
                    rule_id=rule.id,
                    stage=rule.stage,
                    decision=rule.decision,
                    indicator=rule.indicator,
                    recommend=rule.recommend,
                    recommended=recommended_rung(rule.recommend, assessment, rules.ladder),
                    notes=tuple(notes),
                )
            )
        return Evaluation(
            ruleset=self.ruleset.identity, evaluation_date=evaluation_date, assessment=assessment, fired=tuple(fired)
        )
