"""Rule tests: YAML cases beside the rules (``rules/tests/*.yaml``), run by ``cds rules test`` and pytest.

A test file holds ``cases:``, a list of::

    - name: bird-dog 28, 27 is too easy          # what the case shows
      as_of: 2026-11-20                           # the evaluation date
      description: Too easy, step up.             # optional: what the scenario shows (fhir_examples/README.md)
      request: requests/bird-dog-28-27.json       # a hook request, relative to this file
      expect:                                     # the cards, in order
        - {rule: step-up, decision: step-up, indicator: info, recommended: single-leg-reverse-hyper,
           summary: {contains: Single-leg reverse hyper}, suggestion: {label: {contains: reverse hyper}}}

or, instead of ``request``, ``patient: <id>`` and ``resources:`` (a list of FHIR resources: LBP
Conditions, pain-score and exercise-round Observations; a Patient is added when none is given).
``recommended`` and ``notes`` (ids of rule-file notes on the card) are optional; leaving them out
means "none". A card may also check its text: ``summary`` and ``detail`` take ``{contains: "..."}`` or
``{matches: "regex"}`` (``re.search``), and ``suggestion`` takes ``{label: {contains: ...}}`` (or
``matches``: some suggestion's label must match) or ``none`` (the card has no suggestion); text that is
not checked is not compared. ``skipped_invalid`` (resources skipped as invalid FHIR) is checked when given.

Order-sign cases: a request file whose ``hook`` is ``order-sign`` (its ``context.draftOrders`` holds
the draft orders), or a ``resources`` case with ``draft_orders:`` (a list of draft ServiceRequests), is
answered by the rule set's order-sign service (:func:`cds.order_check.evaluate_orders`). Its cards
are the order checks that fired: ``rule`` is the check's id, ``decision`` and ``recommended`` those of
the patient-view decision the order conflicts with. Such a card may also check its suggestion's
actions: ``delete: ServiceRequest/<id>`` (the draft it deletes) and ``create: <ladder code>`` (the
exercise of the order it creates) or ``create: none``.
Any card with a suggestion may check it: ``is_recommended: true|false`` (its first suggestion's
``isRecommended``), and ``order:`` the ServiceRequest its suggestion creates, with any of
``patient_instruction`` and ``note`` (``{contains: ...}`` or ``{matches: ...}``; the notes are joined
by new lines), ``reason`` (the ``reasonReference``, e.g. ``Condition/lbp``, or ``none``), ``requester``
(e.g. ``Practitioner/example``, or ``none``), ``authored_on`` (a date), ``codes`` and ``category`` (codes
that ``code.coding`` and ``category[].coding`` must include, any system).
A file may also have ``blocks:``, ignored by the runner: a place for YAML anchors (``&round``) that
cases reuse with aliases and merge keys (``<<: *round``).

Each case is evaluated by the pure service core (:func:`cds.service.evaluate`) with a fixed clock, so
a case checks exactly what the service would answer on that date. Coverage: the rules and notes that
no case fires.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .active_rules import ActiveRules
from .cards import EXTENSION_KEY
from .clock import FixedClock
from .engine import RuleEngine
from .errors import CdsError
from .fhir_client import PrefetchUnavailable
from .order_check import evaluate_orders
from .ruleset import yamlpos
from .ruleset.loader import Problem, RuleSetError, load_ruleset
from .service import evaluate, services

CASE_KEYS = ("name", "description", "as_of", "request", "patient", "resources", "draft_orders", "expect",
             "skipped_invalid")
CARD_KEYS = ("rule", "decision", "indicator", "recommended", "notes")
#: checks of a card's suggestion: its isRecommended flag and the order it creates
SUGGESTION_KEYS = ("is_recommended", "order")
#: checks of the created order (``order:``): text checks, exact references, code lists
ORDER_TEXT_KEYS = ("patient_instruction", "note")
ORDER_REF_KEYS = ("reason", "requester", "authored_on")
ORDER_CODE_KEYS = ("codes", "category")
ORDER_KEYS = ORDER_TEXT_KEYS + ORDER_REF_KEYS + ORDER_CODE_KEYS
#: checks of an order-check card's suggestion: the deleted draft and the created order's exercise
ACTION_KEYS = ("delete", "create")
TEXT_KEYS = ("summary", "detail", "suggestion")
MATCH_KEYS = ("contains", "matches")


@dataclass(frozen=True)
class TextCheck:
    """``contains`` a literal or ``matches`` a regular expression (searched anywhere in the text)."""

    how: str  # "contains" | "matches"
    text: str

    def test(self, value: str | None) -> bool:
        if value is None:
            return False
        return self.text in value if self.how == "contains" else re.search(self.text, value) is not None

    def describe(self) -> str:
        return f"to {'contain' if self.how == 'contains' else 'match'} {_quote(self.text)}"


#: ``suggestion: none`` in a case: the card has no suggestion
NO_SUGGESTION = "none"


@dataclass(frozen=True)
class OrderExpectation:
    """What a case checks of the ServiceRequest a card's suggestion creates (only the keys given)."""

    patient_instruction: TextCheck | None = None
    note: TextCheck | None = None
    reason: str | None = None  # a reference, or NO_SUGGESTION ("none": no reasonReference)
    requester: str | None = None
    authored_on: str | None = None
    codes: tuple[str, ...] | None = None
    category: tuple[str, ...] | None = None


@dataclass(frozen=True)
class CardText:
    """The text of an answered card: what ``summary``, ``detail`` and ``suggestion`` checks look at."""

    summary: str | None = None
    detail: str | None = None
    labels: tuple[str, ...] = ()
    is_recommended: bool | None = None  # of the first suggestion (None: no suggestion)
    order: dict[str, Any] | None = None  # the resource the first create action makes


@dataclass(frozen=True)
class ExpectedCard:
    rule: str
    decision: str
    indicator: str
    recommended: str | None = None
    notes: tuple[str, ...] = ()
    summary: TextCheck | None = None
    detail: TextCheck | None = None
    suggestion: TextCheck | str | None = None  # a label check, NO_SUGGESTION, or None (not checked)
    delete: str | None = None  # resourceId the suggestion deletes (None: not checked)
    create: str | None = None  # ladder code of the order it creates, or NO_SUGGESTION (None: not checked)
    is_recommended: bool | None = None  # None: not checked
    order: OrderExpectation | None = None  # None: not checked


@dataclass(frozen=True)
class RuleCase:
    file: str
    line: int
    column: int
    name: str
    as_of: dt.date
    expect: tuple[ExpectedCard, ...]
    request: Path | None = None
    patient: str | None = None
    resources: tuple[Any, ...] = ()
    skipped_invalid: int | None = None
    description: str | None = None
    draft_orders: tuple[Any, ...] | None = None  # a resources case of the order-sign hook

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass
class CaseResult:
    case: RuleCase
    actual: list[ExpectedCard] = field(default_factory=list)
    texts: list[CardText] = field(default_factory=list)
    skipped_invalid: int = 0
    diff: list[str] = field(default_factory=list)
    error: str | None = None
    #: every rule that fired, in order, silent ones (no card) included
    fired: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.error is None and not self.diff


@dataclass
class TestReport:
    __test__ = False  # not a pytest test class

    results: list[CaseResult]
    uncovered_rules: list[str]
    uncovered_notes: list[str]
    uncovered_checks: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if not r.passed]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.uncovered_rules and not self.uncovered_notes and not self.uncovered_checks


class RuleTestError(CdsError):
    """Test files that cannot be read as cases; ``problems`` are ``file:line:column: message``."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


# -- loading ---------------------------------------------------------------------------------------


def case_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.y*ml") if p.is_file() and p.suffix in (".yaml", ".yml"))


def load_cases(folder: str | Path) -> list[RuleCase]:
    """Every case of every test file in ``folder``; :class:`RuleTestError` lists all malformed ones."""
    folder = Path(folder)
    cases: list[RuleCase] = []
    problems: list[Problem] = []
    names: dict[str, str] = {}
    for path in case_files(folder):
        for case in _load_file(path, problems):
            if case.name in names:
                problems.append(Problem(case.file, case.line, case.column,
                                        f"duplicate case name '{case.name}' (first at {names[case.name]})"))
            names.setdefault(case.name, case.where)
            cases.append(case)
    if problems:
        raise RuleTestError(problems)
    return cases


def _load_file(path: Path, problems: list[Problem]) -> list[RuleCase]:
    file = str(path)
    try:
        doc = yamlpos.load(path.read_text(encoding="utf-8"))
    except yamlpos.YamlSyntaxError as e:
        problems.append(Problem(file, e.mark.line, e.mark.column, e.message))
        return []

    def bad(p: tuple, message: str, *, key: bool = False) -> None:
        m = doc.mark(p, key=key)
        problems.append(Problem(file, m.line, m.column, message))

    data = doc.data
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        bad((), "a rule test file is a mapping with 'cases:', a list of test cases")
        return []
    for key in data:
        if key not in ("cases", "blocks"):
            bad((key,), f"unknown key '{key}' (a test file has 'cases' and, for reusable pieces, 'blocks')", key=True)
    out = []
    for i, raw in enumerate(data["cases"]):
        at = ("cases", i)
        before = len(problems)
        case = _case(raw, at, path, bad)
        if case is not None and len(problems) == before:
            mark = doc.mark(at)
            out.append(RuleCase(file, mark.line, mark.column, **case))
    return out


def _case(raw: Any, at: tuple, path: Path, bad) -> dict[str, Any] | None:
    import difflib

    if not isinstance(raw, dict):
        bad(at, "a case is a mapping: name, as_of, request or resources, expect")
        return None
    for key in raw:
        if key not in CASE_KEYS:
            close = difflib.get_close_matches(str(key), CASE_KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (allowed: {', '.join(CASE_KEYS)})"
            bad((*at, key), f"unknown key '{key}' in a case{hint}", key=True)
    out: dict[str, Any] = {}
    for key in ("name", "as_of", "expect"):
        if key not in raw:
            bad(at, f"case: required key '{key}' is missing")
    if not isinstance(raw.get("name", ""), str) or not str(raw.get("name", "x")).strip():
        bad((*at, "name"), "name: expected text")
    out["name"] = str(raw.get("name", ""))
    if "description" in raw:
        if not isinstance(raw["description"], str) or not raw["description"].strip():
            bad((*at, "description"), "description: expected text")
        out["description"] = str(raw["description"])
    as_of = raw.get("as_of")
    if isinstance(as_of, str):
        try:
            as_of = dt.date.fromisoformat(as_of)
        except ValueError:
            pass
    if "as_of" in raw and not (isinstance(as_of, dt.date) and not isinstance(as_of, dt.datetime)):
        bad((*at, "as_of"), f"as_of: expected a date (YYYY-MM-DD), found {raw.get('as_of')!r}")
    out["as_of"] = as_of

    has_request, has_resources = "request" in raw, "resources" in raw
    if has_request == has_resources:
        bad(at, "a case gives either 'request' (a hook request file) or 'patient' and 'resources', not both or neither")
    if has_request:
        request = path.parent / str(raw["request"])
        if not isinstance(raw["request"], str) or not request.is_file():
            bad((*at, "request"), f"request: no such file {raw['request']!r} (a path relative to {path.name})")
        out["request"] = request.resolve()
        if "patient" in raw:
            bad((*at, "patient"), "patient: comes from the request's context; only for 'resources' cases", key=True)
    if has_resources:
        resources = raw["resources"]
        if not isinstance(resources, list) or not all(isinstance(r, dict) and "resourceType" in r for r in resources):
            bad((*at, "resources"), "resources: expected a list of FHIR resources (each with a resourceType)")
        else:
            out["resources"] = tuple(resources)
        if not isinstance(raw.get("patient"), str):
            bad((*at, "patient") if "patient" in raw else at, "patient: a 'resources' case names its patient id")
        out["patient"] = raw.get("patient")
    if "draft_orders" in raw:
        drafts = raw["draft_orders"]
        if not has_resources:
            bad((*at, "draft_orders"), "draft_orders: only for 'resources' cases (a request file has context.draftOrders)",
                key=True)
        elif not isinstance(drafts, list) or not all(isinstance(r, dict) and "resourceType" in r for r in drafts):
            bad((*at, "draft_orders"), "draft_orders: expected a list of FHIR resources (draft ServiceRequests)")
        else:
            out["draft_orders"] = tuple(drafts)

    expect = raw.get("expect")
    cards: list[ExpectedCard] = []
    if "expect" in raw:
        if not isinstance(expect, list):
            bad((*at, "expect"), "expect: expected a list of cards ([] for no card)")
            expect = []
        for j, card in enumerate(expect):
            where = (*at, "expect", j)
            if not isinstance(card, dict):
                bad(where, "a card is a mapping: rule, decision, indicator, recommended")
                continue
            allowed = CARD_KEYS + TEXT_KEYS + ACTION_KEYS + SUGGESTION_KEYS
            for key in card:
                if key not in allowed:
                    close = difflib.get_close_matches(str(key), allowed, n=1)
                    hint = (f" (did you mean '{close[0]}'?)" if close
                            else f" (allowed: {', '.join(allowed)})")
                    bad((*where, key), f"unknown key '{key}' in an expected card{hint}", key=True)
            for key in ("rule", "decision", "indicator"):
                if not isinstance(card.get(key), str):
                    bad(where, f"expected card: '{key}' is missing")
            notes = card.get("notes", [])
            if not isinstance(notes, list):
                bad((*where, "notes"), "notes: expected a list of note ids")
                notes = []
            texts: dict[str, Any] = {}
            for key in ("summary", "detail"):
                if key in card:
                    texts[key] = _text_check(card[key], (*where, key), key, bad)
            if "suggestion" in card:
                texts["suggestion"] = _suggestion_check(card["suggestion"], (*where, "suggestion"), bad)
            for key in ACTION_KEYS:
                if key in card:
                    value = NO_SUGGESTION if card[key] is None else card[key]
                    if not isinstance(value, str) or not value.strip():
                        bad((*where, key), f"{key}: expected " + ("a resourceId such as ServiceRequest/draft-1"
                                                                  if key == "delete" else "a ladder code or none"))
                    texts[key] = str(value)
            if "is_recommended" in card:
                if not isinstance(card["is_recommended"], bool):
                    bad((*where, "is_recommended"), "is_recommended: expected true or false")
                else:
                    texts["is_recommended"] = card["is_recommended"]
            if "order" in card:
                texts["order"] = _order_expectation(card["order"], (*where, "order"), bad)
            cards.append(ExpectedCard(str(card.get("rule")), str(card.get("decision")), str(card.get("indicator")),
                                      card.get("recommended"), tuple(str(n) for n in notes), **texts))
    out["expect"] = tuple(cards)
    if "skipped_invalid" in raw:
        if not isinstance(raw["skipped_invalid"], int) or isinstance(raw["skipped_invalid"], bool):
            bad((*at, "skipped_invalid"), "skipped_invalid: expected a whole number")
        out["skipped_invalid"] = raw["skipped_invalid"]
    return out


def _text_check(raw: Any, at: tuple, name: str, bad) -> TextCheck | None:
    """``{contains: "..."}`` or ``{matches: "regex"}``; a problem at ``at`` otherwise."""
    import difflib

    if not isinstance(raw, dict) or len(raw) != 1:
        bad(at, f"{name}: expected {{contains: \"...\"}} or {{matches: \"regex\"}}")
        return None
    [(how, text)] = raw.items()
    if how not in MATCH_KEYS:
        close = difflib.get_close_matches(str(how), MATCH_KEYS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else " (allowed: contains, matches)"
        bad((*at, how), f"unknown key '{how}' in {name}{hint}", key=True)
        return None
    if not isinstance(text, str) or not text:
        bad((*at, how), f"{name}.{how}: expected text")
        return None
    if how == "matches":
        try:
            re.compile(text)
        except re.error as e:
            bad((*at, how), f"{name}.matches: not a regular expression: {e}")
            return None
    return TextCheck(how, text)


def _order_expectation(raw: Any, at: tuple, bad) -> OrderExpectation | None:
    """``order: {patient_instruction: {contains: ...}, reason: Condition/lbp, codes: [...], ...}``."""
    import difflib

    if not isinstance(raw, dict) or not raw:
        bad(at, "order: expected a mapping of checks (" + ", ".join(ORDER_KEYS) + ")")
        return None
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in ORDER_KEYS:
            close = difflib.get_close_matches(str(key), ORDER_KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (allowed: {', '.join(ORDER_KEYS)})"
            bad((*at, key), f"unknown key '{key}' in order{hint}", key=True)
        elif key in ORDER_TEXT_KEYS:
            out[key] = _text_check(value, (*at, key), f"order.{key}", bad)
        elif key in ORDER_REF_KEYS:
            if value is None or value == NO_SUGGESTION:
                out[key] = NO_SUGGESTION
            elif isinstance(value, (str, dt.date)) and str(value).strip():
                out[key] = str(value)
            else:
                bad((*at, key), f"order.{key}: expected " + ("a date such as 2026-11-20" if key == "authored_on"
                                                             else "a reference such as Condition/lbp, or none"))
        else:
            if not isinstance(value, list) or not value or not all(isinstance(c, (str, int)) for c in value):
                bad((*at, key), f"order.{key}: expected a list of codes, such as [\"229065009\"]")
            else:
                out[key] = tuple(str(c) for c in value)
    return OrderExpectation(**out)


def _suggestion_check(raw: Any, at: tuple, bad) -> TextCheck | str | None:
    """``none`` (the word, or YAML null) or ``{label: {contains|matches: ...}}``."""
    if raw is None or raw == NO_SUGGESTION:
        return NO_SUGGESTION
    if not isinstance(raw, dict) or "label" not in raw:
        bad(at, "suggestion: expected {label: {contains: \"...\"}} or none")
        return None
    for key in raw:
        if key != "label":
            bad((*at, key), f"unknown key '{key}' in suggestion (allowed: label)", key=True)
    return _text_check(raw["label"], (*at, "label"), "suggestion.label", bad)


# -- running ---------------------------------------------------------------------------------------


def case_hook(case: RuleCase) -> tuple[str, dict[str, Any] | None, str | None]:
    """(hook, draftOrders Bundle or None, userId or None) of a case: the request file's, or patient-view
    (order-sign with ``draft_orders``) for a resources case."""
    if case.request is not None:
        body = json.loads(case.request.read_text())
        context = body.get("context") or {}
        return str(body.get("hook")), context.get("draftOrders"), context.get("userId")
    if case.draft_orders is not None:
        bundle = {"resourceType": "Bundle", "type": "collection",
                  "entry": [{"resource": _jsonable(r)} for r in case.draft_orders]}
        return "order-sign", bundle, None
    return "patient-view", None, None


def case_request(case: RuleCase, ruleset) -> tuple[dict[str, Any], str]:
    """(prefetch, patient id) for a case: the request file's, or built from its resources."""
    if case.request is not None:
        body = json.loads(case.request.read_text())
        return dict(body.get("prefetch") or {}), body["context"]["patientId"]
    codes = ruleset.document.codes
    patient = case.patient or ""
    groups: dict[str, list[Any]] = {"conditions": [], "painScores": [], "exerciseRounds": []}
    patient_resource: Any = {"resourceType": "Patient", "id": patient}
    for resource in case.resources:
        kind = resource.get("resourceType")
        if kind == "Patient":
            patient_resource = resource
        elif kind == "Condition":
            groups["conditions"].append(resource)
        elif any(_has_code(resource, c.system, c.code) for c in codes.pain_codes):
            groups["painScores"].append(resource)
        else:
            groups["exerciseRounds"].append(resource)
    prefetch: dict[str, Any] = {"patient": patient_resource}
    for key, items in groups.items():
        prefetch[key] = {"resourceType": "Bundle", "type": "searchset", "total": len(items),
                         "entry": [{"resource": _jsonable(r)} for r in items]}
    return prefetch, patient


def _has_code(resource: Mapping[str, Any], system: str, code: str) -> bool:
    codings = (resource.get("code") or {}).get("coding") or []
    return any(isinstance(c, dict) and c.get("system") == system and c.get("code") == code for c in codings)


def _jsonable(value: Any) -> Any:
    """YAML reads ``2026-11-18`` as a date; FHIR JSON has it as text."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return value


def run_case(case: RuleCase, active) -> CaseResult:
    """Evaluate one case with ``active`` (an :class:`~cds.live_rules.ActiveRules`) and compare."""

    result = CaseResult(case)
    try:
        prefetch, patient_id = case_request(case, active.ruleset)
        hook, drafts, user_id = case_hook(case)
        svc = next((s for s in services(active.ruleset) if s.hook == hook), None)
        if svc is None:
            result.error = f"no service of the rule set answers the '{hook}' hook (see 'services')"
            return result
        clock = FixedClock(case.as_of)
        if hook == "order-sign":
            order_outcome = evaluate_orders(active, prefetch, drafts or {}, patient_id=patient_id, clock=clock,
                                            user_id=user_id, stages=svc.stages)
            return _order_result(result, order_outcome)
        outcome = evaluate(active, prefetch, patient_id=patient_id, clock=clock, user_id=user_id, stages=svc.stages)
    except PrefetchUnavailable as e:
        result.error = f"the request lacks prefetch key(s) {', '.join(e.keys)}; rule tests never fetch"
        return result
    except Exception as e:  # noqa: BLE001 - reported as the case's failure
        result.error = f"evaluation failed: {type(e).__name__}: {e}"
        return result
    result.fired = [f.rule_id for f in outcome.evaluation.fired]
    for rule_card in outcome.rule_cards:
        fired = rule_card.fired
        rec = (rule_card.card.extension or {}).get(EXTENSION_KEY, {})
        result.actual.append(ExpectedCard(fired.rule_id, fired.decision, fired.indicator,
                                          rec.get("recommendedExercise"), tuple(fired.notes)))
    result.skipped_invalid = outcome.facts.skipped_invalid
    result.diff = diff_cards(case.expect, result.actual)
    if case.skipped_invalid is not None and case.skipped_invalid != result.skipped_invalid:
        result.diff.append(f"skipped_invalid: expected {case.skipped_invalid}, got {result.skipped_invalid}")
    # the card text checks (summary, detail, suggestion), on the answered cards in order
    result.texts = [card_text(c) for c in outcome.cards]
    result.diff += diff_texts(case.expect, result.texts)
    return result


def _order_result(result: CaseResult, outcome: Any) -> CaseResult:
    """Compare the cards of an order-sign evaluation (:class:`~cds.order_check.OrderOutcome`)."""
    case = result.case
    result.fired = [check_card.fired.rule_id for check_card in outcome.rule_cards]
    for check_card in outcome.rule_cards:
        fired = check_card.fired
        deleted = created = None
        for suggestion in check_card.card.suggestions or []:
            for action in suggestion.actions:
                if action.type == "delete":
                    ids = action.resource_id if isinstance(action.resource_id, list) else [action.resource_id]
                    deleted = ", ".join(str(i) for i in ids)
                elif action.type == "create" and action.resource:
                    codings = (action.resource.get("code") or {}).get("coding") or []
                    created = codings[0].get("code") if codings else None
        result.actual.append(ExpectedCard(fired.rule_id, fired.decision, fired.indicator, fired.recommended, (),
                                          delete=deleted, create=created or NO_SUGGESTION))
    result.skipped_invalid = outcome.facts.skipped_invalid
    result.diff = diff_cards(case.expect, result.actual)
    result.diff += diff_actions(case.expect, result.actual)
    if case.skipped_invalid is not None and case.skipped_invalid != result.skipped_invalid:
        result.diff.append(f"skipped_invalid: expected {case.skipped_invalid}, got {result.skipped_invalid}")
    result.texts = [card_text(c) for c in outcome.cards]
    result.diff += diff_texts(case.expect, result.texts)
    return result


def diff_actions(expected: Iterable[ExpectedCard], actual: list[ExpectedCard]) -> list[str]:
    """``card 1 delete: expected X, got Y``: the order-check suggestion checks that are given."""
    lines: list[str] = []
    for n, e in enumerate(expected):
        if n >= len(actual):
            break
        for key in ACTION_KEYS:
            want, got = getattr(e, key), getattr(actual[n], key)
            if want is not None and want != got:
                lines.append(f"card {n + 1} {key}: expected {want}, got {got or NO_SUGGESTION}")
    return lines


def card_text(card: Any) -> CardText:
    """The summary, detail and suggestion labels of an answered card (a :class:`~cds.cdshooks.Card`),
    its first suggestion's ``isRecommended`` and the resource its first create action makes."""
    suggestions = card.suggestions or []
    created = next((a.resource for s in suggestions for a in s.actions if a.type == "create" and a.resource), None)
    return CardText(card.summary, card.detail, tuple(s.label for s in suggestions),
                    suggestions[0].is_recommended if suggestions else None, created)


def _order_values(order: Mapping[str, Any]) -> dict[str, Any]:
    """The created order's checked fields, as :class:`OrderExpectation` names them."""
    def ref(value: Any) -> str:
        if isinstance(value, list):
            value = value[0] if value else None
        return value.get("reference", NO_SUGGESTION) if isinstance(value, dict) else NO_SUGGESTION

    codings = (order.get("code") or {}).get("coding") or []
    categories = [c for cc in order.get("category") or [] for c in (cc.get("coding") or [])]
    return {
        "patient_instruction": order.get("patientInstruction"),
        "note": "\n".join(n.get("text", "") for n in order.get("note") or []) or None,
        "reason": ref(order.get("reasonReference")),
        "requester": ref(order.get("requester")),
        "authored_on": str(order["authoredOn"]) if order.get("authoredOn") else NO_SUGGESTION,
        "codes": {str(c.get("code")) for c in codings},
        "category": {str(c.get("code")) for c in categories},
    }


def diff_suggestion(n: int, e: ExpectedCard, t: CardText) -> list[str]:
    """``card 1 order.reason: expected X, got Y``: the suggestion checks that are given."""
    lines: list[str] = []
    if e.is_recommended is not None and e.is_recommended != t.is_recommended:
        flag = "no suggestion" if t.is_recommended is None else str(t.is_recommended).lower()
        lines.append(f"card {n + 1} is_recommended: expected {str(e.is_recommended).lower()}, got {flag}")
    if e.order is None:
        return lines
    if t.order is None:
        return [*lines, f"card {n + 1} order: expected a suggestion that creates an order, got none"]
    got = _order_values(t.order)
    for key in ORDER_TEXT_KEYS:
        check = getattr(e.order, key)
        if check is not None and not check.test(got[key]):
            lines.append(f"card {n + 1} order.{key}: expected {check.describe()}, got {_quote(got[key])}")
    for key in ORDER_REF_KEYS:
        want = getattr(e.order, key)
        if want is not None and want != got[key]:
            lines.append(f"card {n + 1} order.{key}: expected {want}, got {got[key]}")
    for key in ORDER_CODE_KEYS:
        want = getattr(e.order, key)
        if want is not None:
            missing = [c for c in want if c not in got[key]]
            if missing:
                lines.append(f"card {n + 1} order.{key}: expected to include {', '.join(missing)}, "
                             f"got {', '.join(sorted(got[key])) or 'none'}")
    return lines


def _quote(text: str | None) -> str:
    """``'text'`` on one line (newlines shown as ``\\n``), or ``no text``."""
    return "no text" if text is None else "'" + text.replace("\n", "\\n") + "'"


def diff_texts(expected: Iterable[ExpectedCard], texts: list[CardText]) -> list[str]:
    """``card 1 summary: expected to contain '...', got '...'``, one line per failed text check."""
    lines: list[str] = []
    for n, e in enumerate(expected):
        if n >= len(texts):
            break  # the missing card is already reported
        t = texts[n]
        for name in ("summary", "detail"):
            check = getattr(e, name)
            if check is not None and not check.test(getattr(t, name)):
                lines.append(f"card {n + 1} {name}: expected {check.describe()}, got {_quote(getattr(t, name))}")
        if e.suggestion == NO_SUGGESTION:
            if t.labels:
                lines.append(f"card {n + 1} suggestion: expected none, got {', '.join(map(_quote, t.labels))}")
        elif isinstance(e.suggestion, TextCheck) and not any(e.suggestion.test(label) for label in t.labels):
            got = ", ".join(map(_quote, t.labels)) or "no suggestion"
            lines.append(f"card {n + 1} suggestion label: expected {e.suggestion.describe()}, got {got}")
        lines += diff_suggestion(n, e, t)
    return lines


def _show(value: Any) -> str:
    if value is None or value == ():
        return "none"
    if isinstance(value, tuple):
        return ", ".join(value)
    return str(value)


def describe_card(card: ExpectedCard) -> str:
    text = f"{card.rule}: {card.decision} ({card.indicator})"
    if card.recommended:
        text += f" -> {card.recommended}"
    if card.notes:
        text += f" + note {', '.join(card.notes)}"
    return text


def diff_cards(expected: Iterable[ExpectedCard], actual: Iterable[ExpectedCard]) -> list[str]:
    """Readable differences, one line per card field: ``card 1 decision: expected X, got Y``."""
    expected, actual = list(expected), list(actual)
    lines: list[str] = []
    for n in range(max(len(expected), len(actual))):
        e = expected[n] if n < len(expected) else None
        a = actual[n] if n < len(actual) else None
        if e is None:
            assert a is not None  # n < max(len(expected), len(actual))
            lines.append(f"card {n + 1}: not expected, got {describe_card(a)}")
        elif a is None:
            lines.append(f"card {n + 1}: expected {describe_card(e)}, got no card")
        else:
            for name in CARD_KEYS:
                ev, av = getattr(e, name), getattr(a, name)
                if ev != av:
                    lines.append(f"card {n + 1} {name}: expected {_show(ev)}, got {_show(av)}")
    return lines


def run_cases(cases: list[RuleCase], active) -> TestReport:
    results = [run_case(c, active) for c in cases]
    fired = {rule for r in results for rule in r.fired}
    notes = {n for r in results for card in r.actual for n in card.notes}
    doc = active.ruleset.document
    return TestReport(
        results,
        uncovered_rules=[r.id for r in doc.rules if r.id not in fired],
        uncovered_notes=[n.id for n in doc.notes if n.id not in notes],
        uncovered_checks=[c.id for c in doc.order_checks if c.id not in fired],
    )


def active_rules(rules_dir: str | Path):
    """The compiled rule set of ``rules_dir`` (:class:`RuleSetError` when invalid)."""

    ruleset = load_ruleset(rules_dir)
    return ActiveRules(ruleset, RuleEngine(ruleset))


def run_tests(rules_dir: str | Path, tests_dir: str | Path | None = None) -> TestReport:
    """Load the rule set and the cases (default ``<rules_dir>/tests``) and run every case."""
    active = active_rules(rules_dir)
    cases = load_cases(tests_dir if tests_dir is not None else Path(rules_dir) / "tests")
    return run_cases(cases, active)


def format_report(report: TestReport) -> str:
    lines: list[str] = []
    for r in report.results:
        c = r.case
        if r.passed:
            lines.append(f"PASS {c.where}: {c.name}")
            continue
        lines.append(f"FAIL {c.where}: {c.name}")
        if r.error:
            lines.append(f"    {r.error}")
            continue
        lines += [f"    {d}" for d in r.diff]
        lines.append("    expected: " + ("; ".join(describe_card(e) for e in c.expect) or "no card"))
        lines.append("    actual:   " + ("; ".join(describe_card(a) for a in r.actual) or "no card"))
    if report.uncovered_rules:
        lines.append(f"uncovered rules (no case fires them): {', '.join(report.uncovered_rules)}")
    if report.uncovered_notes:
        lines.append(f"uncovered notes (no case fires them): {', '.join(report.uncovered_notes)}")
    if report.uncovered_checks:
        lines.append(f"uncovered order checks (no case fires them): {', '.join(report.uncovered_checks)}")
    if not report.uncovered_rules and not report.uncovered_notes and not report.uncovered_checks:
        lines.append("coverage: every rule and note is fired by at least one case")
    passed = len(report.results) - len(report.failed)
    lines.append(f"{passed} passed, {len(report.failed)} failed")
    return "\n".join(lines)


__all__ = [
    "CardText", "CaseResult", "ExpectedCard", "TextCheck", "RuleCase", "RuleSetError", "RuleTestError", "TestReport",
    "active_rules",
    "card_text", "case_hook", "diff_actions",
    "diff_cards", "diff_texts", "format_report", "load_cases", "run_case", "run_cases", "run_tests",
]
