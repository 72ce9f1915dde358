"""CDS Hooks 2.0 conformance checks for service responses, shared by every API test.

    from cdshooks_conformance import assert_conformant_response, assert_conformant_card

Both collect *every* problem and fail with one message listing each as ``<json path>: <problem>``
(e.g. ``cards[0].suggestions[0].actions[0].resource: ServiceRequest invalid: subject: Field required``),
so a failing test says exactly what is wrong. :func:`response_problems` and :func:`card_problems`
return the list instead of asserting.

Rules checked (CDS Hooks 2.0 plus this project's SPEC §1.4, §2.1, §3):

* response: a JSON object with a ``cards`` list (``[]`` allowed); only ``cards``/``systemActions``;
  card uuids unique; nothing ``null``/``""``/``[]``/``{}`` anywhere except the top-level ``cards: []``;
* card: only the spec's keys; ``uuid``; ``summary`` a non-empty string shorter than 140 characters;
  ``indicator`` info|warning|critical; ``detail`` a string containing the disclaimer words
  "educational purposes only" and "not medical advice"; ``source.label`` (``url``/``icon`` strings,
  ``topic`` a Coding); ``suggestions`` each with ``label`` and ``uuid`` and ``actions`` whose ``type``
  is create|update|delete with a ``description``, a ``resource`` for create/update that validates as
  its FHIR R4 (fhir.resources R4B) ``resourceType``, a ``resourceId`` for delete; ``selectionBehavior``
  (at-most-one|any) present if and only if there are suggestions; ``overrideReasons`` Codings with
  ``system``, ``code``, ``display``; ``links`` with ``label``, ``url``, ``type`` absolute|smart and
  ``appContext`` only on smart links;
* ``extension["org.lbp-cds.recommendation"]``: ``ruleId``, ``decision`` one of the 10 decisions of SPEC 2.1,
  ``ruleset`` with ``name``, ``version``, ``sha256`` (64 hex digits), ``facts`` with an integer
  ``skippedInvalid`` and well-formed optional facts (``redFlags``/``redFlagRisks``: lists of category
  ids); no ``recommendedExercise`` for red-flag, red-flag-risk, new-onset and onset-unknown; a
  ``recommendedExercise`` comes with a suggestion.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pydantic
from fhir.resources.R4B import get_fhir_model_class

__all__ = [
    "DECISIONS",
    "assert_conformant_card",
    "assert_conformant_response",
    "card_problems",
    "empty_values",
    "response_problems",
]

DECISIONS = frozenset(
    {"red-flag", "red-flag-risk", "new-onset", "onset-unknown", "start", "pain-gate", "pain-unrecorded", "step-back",
     "continue", "step-up"}
)
INDICATORS = frozenset({"info", "warning", "critical"})
ACTION_TYPES = frozenset({"create", "update", "delete"})
SELECTION_BEHAVIORS = frozenset({"at-most-one", "any"})
LINK_TYPES = frozenset({"absolute", "smart"})
CARD_KEYS = frozenset(
    {"uuid", "summary", "detail", "indicator", "source", "suggestions", "selectionBehavior",
     "overrideReasons", "links", "extension"}
)
RESPONSE_KEYS = frozenset({"cards", "systemActions"})
DISCLAIMER_WORDS = ("educational purposes only", "not medical advice")
EXTENSION_KEY = "org.lbp-cds.recommendation"
NO_RECOMMENDATION = frozenset({"red-flag", "red-flag-risk", "new-onset", "onset-unknown"})
SUMMARY_LIMIT = 140  # the summary must be shorter than this


def _fmt(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def empty_values(value: Any, path: str) -> list[str]:
    """Paths of every ``None``, ``""``, ``[]`` or ``{}`` inside ``value`` (``value`` itself included)."""
    if value is None:
        return [f"{path}: null (omit the field instead)"]
    if isinstance(value, str):
        return [f'{path}: empty string "" (omit the field instead)'] if value == "" else []
    if isinstance(value, dict):
        out = [f"{path}: empty object {{}} (omit the field instead)"] if not value else []
        for k, v in value.items():
            out += empty_values(v, f"{path}.{k}" if path else str(k))
        return out
    if isinstance(value, list):
        out = [f"{path}: empty list [] (omit the field instead)"] if not value else []
        for i, v in enumerate(value):
            out += empty_values(v, f"{path}[{i}]")
        return out
    return []


def _nonempty_str(obj: dict, key: str, path: str, problems: list[str], *, required: bool = True) -> bool:
    if key not in obj:
        if required:
            problems.append(f"{path}.{key}: required field missing")
        return False
    if not isinstance(obj[key], str) or not obj[key]:
        problems.append(f"{path}.{key}: must be a non-empty string, got {_fmt(obj[key])}")
        return False
    return True


def _list(obj: dict, key: str, path: str, problems: list[str]) -> list:
    value = obj.get(key)
    if key not in obj:
        return []
    if not isinstance(value, list):
        problems.append(f"{path}.{key}: must be a list, got {type(value).__name__}")
        return []
    return value


def _coding(coding: Any, path: str, problems: list[str], *, display_required: bool = False) -> None:
    if not isinstance(coding, dict):
        problems.append(f"{path}: must be a Coding object, got {type(coding).__name__}")
        return
    _nonempty_str(coding, "system", path, problems)
    _nonempty_str(coding, "code", path, problems)
    _nonempty_str(coding, "display", path, problems, required=display_required)


def _fhir_resource(resource: Any, path: str, problems: list[str]) -> None:
    if not isinstance(resource, dict):
        problems.append(f"{path}: must be a FHIR resource object, got {type(resource).__name__}")
        return
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        problems.append(f"{path}.resourceType: required field missing")
        return
    try:
        model = get_fhir_model_class(rtype)
    except (KeyError, ValueError, LookupError):
        problems.append(f"{path}.resourceType: {rtype!r} is not a FHIR R4 resource type")
        return
    try:
        model.model_validate(resource)
    except pydantic.ValidationError as err:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in err.errors(include_url=False)[:5]
        )
        problems.append(f"{path}: not a valid FHIR R4 {rtype}: {details}")


def _action(action: Any, path: str, problems: list[str], *, system: bool = False) -> None:
    if not isinstance(action, dict):
        problems.append(f"{path}: must be an object, got {type(action).__name__}")
        return
    atype = action.get("type")
    if atype not in ACTION_TYPES:
        problems.append(f"{path}.type: must be one of create|update|delete, got {_fmt(atype)}")
    # CDS Hooks 2.0: "description is optional for systemAction"
    _nonempty_str(action, "description", path, problems, required=not system)
    if atype in ("create", "update"):
        if "resource" not in action:
            problems.append(f"{path}.resource: required for a {atype} action")
        else:
            _fhir_resource(action["resource"], f"{path}.resource", problems)
    elif atype == "delete":
        # CDS Hooks 2.0: relative references ("ServiceRequest/123"); an array of them, or one string
        ids = action.get("resourceId")
        if isinstance(ids, list):
            if not ids or not all(isinstance(i, str) and "/" in i for i in ids):
                problems.append(f"{path}.resourceId: must be a non-empty array of relative references, got {_fmt(ids)}")
        else:
            _nonempty_str(action, "resourceId", path, problems)


def _date(value: Any, path: str, problems: list[str]) -> None:
    try:
        if not isinstance(value, str) or len(value) != 10:
            raise ValueError
        dt.date.fromisoformat(value)
    except ValueError:
        problems.append(f"{path}: must be an ISO date YYYY-MM-DD, got {_fmt(value)}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _recommendation(ext: Any, card: dict, path: str, problems: list[str]) -> None:
    if not isinstance(ext, dict):
        problems.append(f"{path}: must be an object, got {type(ext).__name__}")
        return
    _nonempty_str(ext, "ruleId", path, problems)
    decision = ext.get("decision")
    if decision not in DECISIONS:
        problems.append(f"{path}.decision: must be one of {sorted(DECISIONS)}, got {_fmt(decision)}")
    for key in ("currentExercise", "recommendedExercise"):
        _nonempty_str(ext, key, path, problems, required=False)
    if decision in NO_RECOMMENDATION and "recommendedExercise" in ext:
        problems.append(f"{path}.recommendedExercise: must be absent for decision {decision!r}")
    if "recommendedExercise" in ext and not card.get("suggestions"):
        problems.append(f"{path}.recommendedExercise: present but the card has no suggestion to order it")

    if "notes" in ext:
        notes = ext["notes"]
        if not isinstance(notes, list) or not all(isinstance(n, str) and n for n in notes):
            problems.append(f"{path}.notes: must be a list of note ids, got {_fmt(notes)}")

    rs = ext.get("ruleset")
    if not isinstance(rs, dict):
        problems.append(f"{path}.ruleset: required object with name, version, sha256; got {_fmt(rs)}")
    else:
        _nonempty_str(rs, "name", f"{path}.ruleset", problems)
        _nonempty_str(rs, "version", f"{path}.ruleset", problems)
        sha = rs.get("sha256")
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
            problems.append(f"{path}.ruleset.sha256: must be 64 lowercase hex digits, got {_fmt(sha)}")

    facts = ext.get("facts")
    fpath = f"{path}.facts"
    if not isinstance(facts, dict):
        problems.append(f"{fpath}: required object (with at least skippedInvalid), got {_fmt(facts)}")
        return
    skipped = facts.get("skippedInvalid")
    if not isinstance(skipped, int) or isinstance(skipped, bool) or skipped < 0:
        problems.append(f"{fpath}.skippedInvalid: must be a non-negative integer, got {_fmt(skipped)}")
    for key in ("sessionDate", "onsetDate"):
        if key in facts:
            _date(facts[key], f"{fpath}.{key}", problems)
    if "onsetPrecision" in facts and (facts["onsetPrecision"] not in ("month", "year") or "onsetDate" not in facts):
        problems.append(f"{fpath}.onsetPrecision: 'month' or 'year' beside onsetDate, got {_fmt(facts['onsetPrecision'])}")
    if "reps" in facts:
        reps = facts["reps"]
        if not isinstance(reps, list) or not all(_is_number(r) and r >= 0 for r in reps):
            problems.append(f"{fpath}.reps: must be a list of non-negative numbers, got {_fmt(reps)}")
        elif any(isinstance(r, float) and r.is_integer() for r in reps):
            problems.append(f"{fpath}.reps: integral values must be written as integers, got {_fmt(reps)}")
    for key in ("redFlags", "redFlagRisks"):
        if key in facts:
            ids = facts[key]
            if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
                problems.append(f"{fpath}.{key}: must be a non-empty list of category ids, got {_fmt(ids)}")
    if "maxPain" in facts:
        pain = facts["maxPain"]
        if not _is_number(pain) or not 0 <= pain <= 10:
            problems.append(f"{fpath}.maxPain: must be a number from 0 to 10, got {_fmt(pain)}")


def card_problems(card: Any, path: str = "card") -> list[str]:
    """Every conformance problem of one card (see the module docstring), as ``<path>: <problem>``."""
    if not isinstance(card, dict):
        return [f"{path}: a card must be a JSON object, got {type(card).__name__}"]
    problems: list[str] = []
    for key in sorted(set(card) - CARD_KEYS):
        problems.append(f"{path}.{key}: not a CDS Hooks card field (put extensions under 'extension')")

    _nonempty_str(card, "uuid", path, problems)

    summary = card.get("summary")
    if "summary" not in card:
        problems.append(f"{path}.summary: required field missing")
    elif not isinstance(summary, str) or not summary.strip():
        problems.append(f"{path}.summary: must be a non-empty string, got {_fmt(summary)}")
    elif len(summary) >= SUMMARY_LIMIT:
        problems.append(f"{path}.summary: is {len(summary)} characters; CDS Hooks requires fewer than {SUMMARY_LIMIT}")

    if card.get("indicator") not in INDICATORS:
        problems.append(f"{path}.indicator: must be one of info|warning|critical, got {_fmt(card.get('indicator'))}")

    if _nonempty_str(card, "detail", path, problems):
        lowered = card["detail"].lower()
        for words in DISCLAIMER_WORDS:
            if words not in lowered:
                problems.append(f"{path}.detail: disclaimer words {words!r} missing")

    source = card.get("source")
    if not isinstance(source, dict):
        problems.append(f"{path}.source: required object with a label, got {_fmt(source)}")
    else:
        _nonempty_str(source, "label", f"{path}.source", problems)
        _nonempty_str(source, "url", f"{path}.source", problems, required=False)
        _nonempty_str(source, "icon", f"{path}.source", problems, required=False)
        if "topic" in source:
            _coding(source["topic"], f"{path}.source.topic", problems)

    suggestions = _list(card, "suggestions", path, problems)
    seen_uuids: set[str] = set()
    for i, s in enumerate(suggestions):
        spath = f"{path}.suggestions[{i}]"
        if not isinstance(s, dict):
            problems.append(f"{spath}: must be an object, got {type(s).__name__}")
            continue
        _nonempty_str(s, "label", spath, problems)
        if _nonempty_str(s, "uuid", spath, problems):
            if s["uuid"] in seen_uuids:
                problems.append(f"{spath}.uuid: duplicate suggestion uuid {s['uuid']!r}")
            seen_uuids.add(s["uuid"])
        if "isRecommended" in s and not isinstance(s["isRecommended"], bool):
            problems.append(f"{spath}.isRecommended: must be a boolean, got {_fmt(s['isRecommended'])}")
        for j, action in enumerate(_list(s, "actions", spath, problems)):
            _action(action, f"{spath}.actions[{j}]", problems)

    if suggestions and "selectionBehavior" not in card:
        problems.append(f"{path}.selectionBehavior: required when suggestions are present")
    elif "selectionBehavior" in card:
        if not suggestions:
            problems.append(f"{path}.selectionBehavior: present but the card has no suggestions")
        elif card["selectionBehavior"] not in SELECTION_BEHAVIORS:
            problems.append(
                f"{path}.selectionBehavior: must be at-most-one|any, got {_fmt(card['selectionBehavior'])}"
            )

    for i, reason in enumerate(_list(card, "overrideReasons", path, problems)):
        _coding(reason, f"{path}.overrideReasons[{i}]", problems, display_required=True)

    for i, link in enumerate(_list(card, "links", path, problems)):
        lpath = f"{path}.links[{i}]"
        if not isinstance(link, dict):
            problems.append(f"{lpath}: must be an object, got {type(link).__name__}")
            continue
        _nonempty_str(link, "label", lpath, problems)
        _nonempty_str(link, "url", lpath, problems)
        if link.get("type") not in LINK_TYPES:
            problems.append(f"{lpath}.type: must be absolute|smart, got {_fmt(link.get('type'))}")
        if "appContext" in link and link.get("type") != "smart":
            problems.append(f"{lpath}.appContext: only allowed on links of type 'smart'")

    ext = card.get("extension")
    if not isinstance(ext, dict):
        problems.append(f"{path}.extension: required object holding {EXTENSION_KEY!r}, got {_fmt(ext)}")
    elif EXTENSION_KEY not in ext:
        problems.append(f"{path}.extension.{EXTENSION_KEY}: required field missing")
    else:
        _recommendation(ext[EXTENSION_KEY], card, f"{path}.extension.{EXTENSION_KEY}", problems)

    problems += empty_values(card, path)
    return problems


def response_problems(body: Any) -> list[str]:
    """Every conformance problem of a service response body (see the module docstring)."""
    if not isinstance(body, dict):
        return [f"response: must be a JSON object, got {type(body).__name__}"]
    problems: list[str] = []
    for key in sorted(set(body) - RESPONSE_KEYS):
        problems.append(f"response.{key}: not a CDS Hooks response field")
    if "cards" not in body:
        problems.append("response.cards: required field missing (send \"cards\": [] when there is nothing to say)")
        cards: list = []
    elif not isinstance(body["cards"], list):
        problems.append(f"response.cards: must be a list, got {type(body['cards']).__name__}")
        cards = []
    else:
        cards = body["cards"]
    seen: set[str] = set()
    for i, card in enumerate(cards):
        problems += card_problems(card, f"cards[{i}]")
        if isinstance(card, dict) and isinstance(card.get("uuid"), str):
            if card["uuid"] in seen:
                problems.append(f"cards[{i}].uuid: duplicate card uuid {card['uuid']!r}")
            seen.add(card["uuid"])
    if "systemActions" in body:
        actions = body["systemActions"]
        if not isinstance(actions, list):
            problems.append(f"response.systemActions: must be a list, got {type(actions).__name__}")
        else:
            for i, action in enumerate(actions):
                _action(action, f"systemActions[{i}]", problems, system=True)
            problems += empty_values(actions, "systemActions")
    return problems


def _fail(problems: list[str], what: str) -> None:
    if problems:
        listing = "\n  - ".join(problems)
        raise AssertionError(f"{what} is not CDS Hooks 2.0 conformant ({len(problems)} problem(s)):\n  - {listing}")


def assert_conformant_response(body: dict) -> None:
    """Assert ``body`` (a parsed service response) is a conformant CDS Hooks 2.0 response with conformant cards."""
    _fail(response_problems(body), "response")


def assert_conformant_card(card: dict) -> None:
    """Assert one card (parsed JSON) is conformant."""
    _fail(card_problems(card), "card")
