"""The shape of the rule files in ``rules/``: what a rule author may write, as pydantic models.

Each YAML file holds any subset of the top-level sections of :class:`RuleFile`; the loader merges
the files of a folder into one :class:`RuleSetDocument` (every section present exactly once).
Models forbid unknown keys so a misspelt key is an error, never silently ignored.
"""

from __future__ import annotations

import re
import string
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SLUG = r"^[a-z0-9][a-z0-9-]*$"
IDENT = r"^[a-z][a-z0-9_]*$"
URL = r"^https?://[^/\s]+"  # an absolute http(s) URL

Decision = Literal[
    "red-flag", "red-flag-risk", "outside-programme",
    "new-onset", "onset-unknown", "start", "pain-gate", "pain-unrecorded", "step-back", "continue", "step-up",
]
Indicator = Literal["info", "warning", "critical"]
RungMove = Literal["first", "previous", "current", "next"]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Coding(_Doc):
    """The one Coding model: in the rule files (``codes``, ``source.topic``), on the wire
    (:mod:`cds.cdshooks` ``Source.topic``, ``OverrideReason``) and in feedback. Unknown keys are refused."""

    system: str = Field(min_length=1)
    code: str = Field(min_length=1)
    display: str | None = None


CodeMatch = Literal["exact", "prefix"]


def code_matches(pattern: str, match: CodeMatch, code: str) -> bool:
    """Does ``code`` match the rule-file code ``pattern``?

    ``exact``: the same code. ``prefix``: a category prefix in the ICD-10-CM sense: the code itself, or
    the code followed by more characters, where a prefix without a ``.`` (a three-character category
    such as ``M45``) must be followed by the ``.`` of a subcategory: ``S32.0`` matches ``S32.0``,
    ``S32.01`` and ``S32.010A`` but not ``S32.1``; ``M45`` matches ``M45`` and ``M45.9`` but not ``M450``.
    """
    if match == "exact" or code == pattern:
        return code == pattern
    if not code.startswith(pattern):
        return False
    return "." in pattern or code[len(pattern)] == "."


class ConditionCoding(Coding):
    """A Condition code in a code list: ``match: prefix`` also matches the codes below it (see
    :func:`code_matches`); the default ``exact`` matches the code alone."""

    match: CodeMatch = "exact"

    def matches(self, system: str | None, code: str | None) -> bool:
        return system == self.system and code is not None and code_matches(self.code, self.match, code)


class ConditionCategory(_Doc):
    """A named group of Condition codes (a red-flag or risk-factor category)."""

    id: str = Field(pattern=SLUG)
    display: str = Field(min_length=1)  # the category as the card names it
    codes: list[ConditionCoding] = Field(min_length=1)


class Source(_Doc):
    label: str = Field(min_length=1)
    url: str | None = Field(default=None, pattern=URL)  # CDS Hooks: an absolute URL
    #: an absolute URL of a small (100x100 px) PNG the EHR may show beside the card's source
    icon: str | None = Field(default=None, pattern=URL)
    #: Epic tracks overrides by ``topic.code``: keep it static and alphanumeric (the checker warns otherwise)
    topic: Coding | None = None


class RuleSetMeta(_Doc):
    name: str = Field(pattern=SLUG)
    version: str = Field(min_length=1)
    title: str = Field(min_length=1)
    description: str = Field(min_length=1)
    source: Source


class Evidence(_Doc):
    id: str = Field(pattern=SLUG)
    label: str = Field(min_length=1)
    url: str = Field(pattern=URL)


class OverrideReason(_Doc):
    code: str = Field(min_length=1)
    display: str = Field(min_length=1)
    system: str = "https://lbp-cds.org/fhir/CodeSystem/override-reason"


class PainAnswers(_Doc):
    system: str
    values: dict[str, int]

    @field_validator("values")
    @classmethod
    def _in_scale(cls, v: dict[str, int]) -> dict[str, int]:
        for code, score in v.items():
            if not 0 <= score <= 10:
                raise ValueError(f"answer {code} maps to {score}, outside the 0-10 pain scale")
        return v


class Codes(_Doc):
    lbp_condition: list[ConditionCoding] = Field(min_length=1)
    condition_clinical_status: list[str] = Field(min_length=1)
    condition_verification_excluded: list[str] = []
    observation_status: list[str] = Field(min_length=1)
    #: the pain-score code, or a list of codes read alike (e.g. LOINC 72514-3 and 38208-5)
    pain_score: Coding | list[Coding]
    pain_answers: PainAnswers
    #: the code of a round of repetitions to technical failure, or a list of codes read alike
    reps_to_failure: Coding | list[Coding]
    exercise_component: Coding
    round_component: Coding
    #: conditions that stop the programme (a red flag: medical review first), by category
    red_flags: list[ConditionCategory] = []
    #: conditions that raise the risk of a red flag (a warning beside the advice), by category
    red_flag_risks: list[ConditionCategory] = []
    #: codings every proposed exercise order carries beside its ladder coding (optional)
    order_code: Coding | None = None
    #: the ``category`` coding of every proposed exercise order (optional)
    order_category: Coding | None = None

    @property
    def pain_codes(self) -> list[Coding]:
        """``pain_score`` as a list (one coding or several)."""
        return self.pain_score if isinstance(self.pain_score, list) else [self.pain_score]

    @property
    def reps_codes(self) -> list[Coding]:
        """``reps_to_failure`` as a list (one coding or several)."""
        return self.reps_to_failure if isinstance(self.reps_to_failure, list) else [self.reps_to_failure]


class Rung(_Doc):
    code: str = Field(pattern=SLUG)
    display: str = Field(min_length=1)
    about: str = Field(min_length=1)
    evidence: list[str] = []


class Ladder(_Doc):
    system: str = Field(min_length=1)
    rungs: list[Rung] = Field(min_length=1)

    @property
    def codes(self) -> list[str]:
        return [r.code for r in self.rungs]

    def rung(self, code: str) -> Rung:
        return self.rungs[self.codes.index(code)]


class Recommend(_Doc):
    rung: RungMove
    adjustment: str | None = None


class CardTemplate(_Doc):
    summary: str = Field(min_length=1)
    detail: str = Field(min_length=1)
    #: show the session trend (``texts.trend``) on this card: default (None) on the cards of rules
    #: that recommend a rung (progression cards); ``false`` hides it, ``true`` shows it on any card
    trend: bool | None = None


class Rule(_Doc):
    id: str = Field(pattern=SLUG)
    stage: str = Field(pattern=IDENT)
    priority: int = Field(ge=0)
    when: str = Field(min_length=1)
    decision: Decision
    indicator: Indicator
    final: bool = False
    recommend: Recommend | None = None
    #: a silent rule decides but answers no card (``card`` and ``recommend`` are then not allowed)
    silent: bool = False
    card: CardTemplate | None = None  # required unless ``silent`` (the loader checks it, with a position)


class Note(_Doc):
    id: str = Field(pattern=SLUG)
    stage: str = Field(pattern=IDENT)
    when: str = Field(min_length=1)
    text: str = Field(min_length=1)
    decisions: list[Decision] = []  # only on cards of rules with one of these decisions; empty = every card
    #: ``not-recommended``: while this note is on a card, its suggestion is not marked ``isRecommended``
    suggestion: Literal["recommended", "not-recommended"] = "recommended"


#: a wording a rule author writes: never empty
Text = Annotated[str, Field(min_length=1)]

#: the CDS Hooks hooks a declared service may answer
Hook = Literal["patient-view", "order-sign"]


class Service(_Doc):
    """One CDS service the rule set offers (the ``services`` section; absent: one patient-view service)."""

    id: str = Field(pattern=SLUG)
    hook: Hook
    title: Text | None = None  # default: ruleset.title
    description: Text | None = None  # default: ruleset.description
    #: the stages whose rules decide for this service (default: every stage)
    stages: list[str] | None = None
    #: discovery's ``usageRequirements``: what the EHR must provide (codes, profiles); default: none
    usage_requirements: Text | None = None


class OrderSuggestion(_Doc):
    """The suggestion of an order-check card: delete the draft order, create the recommended one."""

    label: Text
    delete: Text  # description of the delete action
    create: Text | None = None  # description of the create action (default: texts.action_description)
    #: false: the suggestion only removes the draft, it creates no recommended order in its place
    replace: bool = True


class OrderCheck(_Doc):
    """One check of a draft order (``order_checks``): the first matching check (lowest priority) gives
    the draft's card; no matching check means the order agrees with the decision (no card)."""

    id: str = Field(pattern=SLUG)
    priority: int = Field(ge=0)
    when: str = Field(min_length=1)
    indicator: Indicator
    card: CardTemplate
    suggestion: OrderSuggestion


class FactsLabels(_Doc):
    """The labels of the facts table every card's detail ends with."""

    heading: Text
    fact: Text
    value: Text
    exercise: Text
    session_date: Text
    reps: Text
    max_pain: Text
    onset_date: Text
    skipped_invalid: Text


#: the placeholders of ``texts.skipped.pain`` and ``texts.skipped.round``
SKIPPED_ITEM_PLACEHOLDERS = ("value", "date", "reason")
SKIPPED_CONDITION_PLACEHOLDERS = ("condition", "date", "reason")


def _item_template(v: str, placeholders: tuple[str, ...] = SKIPPED_ITEM_PLACEHOLDERS) -> str:
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(v) if name is not None]
    except ValueError as e:
        raise ValueError(f"text does not parse: {e} (write {{{{ and }}}} for literal braces)") from None
    for name, spec, conv in fields:
        if name not in placeholders or spec or conv:
            allowed = ", ".join(f"{{{n}}}" for n in placeholders)
            raise ValueError(f"unknown placeholder '{{{name}}}' (this text may use {allowed})")
    return v


#: an item template of ``texts.skipped``: non-empty, placeholders {value}, {date}, {reason} only
ItemText = Annotated[str, Field(min_length=1)]


class SkippedReasons(_Doc):
    """Why a pain score or round could not be used, in words (one per reason the extractor reports)."""

    invalid: Text  # not valid FHIR R4 (an impossible date, a wrong type...)
    no_date: Text  # no effective date
    partial_date: Text  # an effective date not precise to the day
    no_value: Text  # no reps or pain value
    value_out_of_range: Text  # pain outside 0-10, negative or absurd reps
    no_exercise: Text  # no exercise component
    unknown_exercise: Text  # not a ladder exercise


class SkippedTexts(_Doc):
    """The card's list of unusable data that could have mattered (placeholder ``{skipped_list}``):
    one line per resource, from ``pain`` or ``round`` with ``{value}``, ``{date}`` (as written; an
    unknown one renders as ``not_recorded``) and ``{reason}`` (from ``reasons``); ``pain_undated`` and
    ``round_undated`` (optional) for one with no readable date. ``condition`` (optional: without it,
    unusable Conditions are counted, not listed): a low back pain, red-flag or risk-factor Condition
    that failed validation, with ``{condition}`` (the red-flag or risk category, or ``lbp_condition``),
    ``{date}`` (its onset as written) and ``{reason}``."""

    pain: ItemText
    round: ItemText
    pain_undated: ItemText | None = None
    round_undated: ItemText | None = None
    condition: ItemText | None = None
    lbp_condition: Text = "Low back pain"
    reasons: SkippedReasons

    @field_validator("pain", "round", "pain_undated", "round_undated")
    @classmethod
    def _placeholders(cls, v: str | None) -> str | None:
        return None if v is None else _item_template(v)

    @field_validator("condition")
    @classmethod
    def _condition_placeholders(cls, v: str | None) -> str | None:
        return None if v is None else _item_template(v, SKIPPED_CONDITION_PLACEHOLDERS)


#: the most sessions a trend may show (the chart route accepts no more points)
TREND_MAX_SESSIONS = 12


class TrendTexts(_Doc):
    """The session trend on progression cards (``texts.trend``; absent: no trend): a markdown table of
    the last ``sessions`` sessions and, when the service knows its public URL, a chart image served by
    the service (``/charts/trend.svg``). Every word the clinician reads is here; the bands are drawn
    from the parameters named by ``target_low``/``target_high`` and ``pain_gate`` (omitted: no band)."""

    sessions: int = Field(default=6, ge=1, le=TREND_MAX_SESSIONS)  # how many of the latest sessions
    heading: Text  # above the table
    date: Text  # table column: session date
    exercise: Text  # table column: the exercise (its ladder display name)
    rung: Text  # table column: its rung number (1 = first); also the chart's rung labels
    reps: Text  # table column: reps per round (the rounds that decide)
    max_pain: Text  # table column: highest pain of the session (0-10)
    chart_alt: Text  # the chart image's alt text (markdown)
    chart_title: Text  # the SVG's <title>
    chart_desc: Text  # the SVG's <desc> (what it shows, for screen readers)
    legend_reps: Text  # legend: reps per round (dots)
    legend_pain: Text  # legend: highest pain (line)
    legend_target: Text  # legend: the target reps range (band)
    legend_gate: Text  # legend: the pain gate (band)
    axis_reps: Text  # left axis title
    axis_pain: Text  # right axis title
    #: parameters drawn as bands: the target reps range and the highest allowed pain (optional)
    target_low: str | None = Field(default=None, pattern=IDENT)
    target_high: str | None = Field(default=None, pattern=IDENT)
    pain_gate: str | None = Field(default=None, pattern=IDENT)

    @field_validator("heading", "date", "exercise", "rung", "reps", "max_pain", "chart_alt", "chart_title",
                     "chart_desc", "legend_reps", "legend_pain", "legend_target", "legend_gate", "axis_reps",
                     "axis_pain")
    @classmethod
    def _plain(cls, v: str) -> str:
        return _plain_text(v)


def _plain_text(v: str) -> str:
    """A text shown as written: no placeholders (the chart route renders it without a patient's facts)."""
    if "{" in v or "}" in v:
        raise ValueError("this text takes no placeholders: write it without '{' and '}'")
    if not v.strip():
        raise ValueError("the text is blank")
    return v


class AppErrorTexts(_Doc):
    """The SMART app's messages for a wrong field of the record-a-session form (``app.errors``)."""

    exercise: Text  # no exercise, or one not on the ladder
    date: Text  # no date, not a date, or a date in the future
    reps: Text  # a round's reps missing or outside 0..{max_reps}; may name {max_reps}
    pain: Text  # a pain score missing or outside 0-10


class AppTexts(_Doc):
    """The wording of the SMART on FHIR app at /app/ (the ``app`` section, in ``rules/smart-app.yaml``; optional:
    without it the app answers that the rule set has no app texts). Every text may name the parameters; the keys listed
    in ``cds.templates.APP_TEXT_PLACEHOLDERS`` may also name their own placeholders."""

    title: Text  # the page title and main heading
    history_heading: Text
    chart_title: Text  # the chart's <title>, read by screen readers
    reps_axis: Text
    pain_axis: Text
    legend_reps: Text
    legend_pain: Text
    legend_rung: Text
    legend_target: Text  # the target band; e.g. "Target range {reps_low}-{reps_high}"
    legend_pain_gate: Text  # the pain-gate band; e.g. "Pain at most {pain_gate_max}/10"
    legend_onset: Text
    table_caption: Text
    column_date: Text
    column_exercise: Text
    column_reps: Text
    column_pain: Text
    no_sessions: Text
    recommendation_heading: Text
    explanation_heading: Text
    record_heading: Text
    exercise_label: Text
    date_label: Text
    round_label: Text  # "Round {n}"
    add_round: Text
    pain_during_label: Text
    pain_after_label: Text
    record_button: Text
    written_heading: Text
    write_failed: Text  # a failed write; the lists of what was and was not written follow
    opened_from: Text  # the launch's appContext: "Opened from the card recommending {exercise}."
    ruleset_differs: Text  # the card's rule set differs: may name {card_sha256} and {active_sha256}
    demo_banner: Text  # may name {example}
    errors: AppErrorTexts


class Texts(_Doc):
    """The wording every card shares (templates; see ``cds/templates.py``)."""

    not_recorded: Text
    dose: Text
    facts: FactsLabels
    suggestion_label: Text
    action_description: Text
    patient_instruction: Text
    order_note: Text
    provenance: Text
    #: the card's ``source.label``; may also name ``{source_label}`` (``ruleset.source.label``)
    source_label: Text
    #: the order action's description when the rule has an ``adjustment``; may also name
    #: ``{action_description}`` (the filled ``action_description``) and ``{adjustment}``
    action_description_adjusted: Text
    #: joins several items in one placeholder (e.g. two red-flag categories)
    list_separator: Text = ", "
    skipped: SkippedTexts | None = None  # optional: without it, {skipped_list} renders as not_recorded
    trend: TrendTexts | None = None  # optional: without it, no card shows a session trend
    #: the label of the SMART app link on progression cards (optional: without it, no link)
    app_link: Text | None = None

    @field_validator("app_link")
    @classmethod
    def _plain_link(cls, v: str | None) -> str | None:
        return None if v is None else _plain_text(v)


class RuleFile(_Doc):
    """One YAML file: any subset of the sections."""

    ruleset: RuleSetMeta | None = None
    parameters: dict[str, int | float] | None = None
    disclaimer: str | None = None
    texts: Texts | None = None
    evidence: list[Evidence] | None = None
    override_reasons: list[OverrideReason] | None = None
    codes: Codes | None = None
    ladder: Ladder | None = None
    stages: list[str] | None = None
    rules: list[Rule] | None = None
    notes: list[Note] | None = None
    services: list[Service] | None = None
    order_checks: list[OrderCheck] | None = None
    app: AppTexts | None = None

    @field_validator("parameters")
    @classmethod
    def _param_names(cls, v: dict[str, int | float] | None) -> dict[str, int | float] | None:
        for name in v or {}:
            if not re.match(IDENT, name):
                raise ValueError(f"parameter name {name!r} must be lower_snake_case")
        return v


#: sections that may be split across files (their lists are concatenated in file order)
LIST_SECTIONS = ("rules", "notes")

#: sections that must appear in exactly one file of the rule set (``rules`` and ``notes``: in one or more)
REQUIRED_SECTIONS = ("ruleset", "parameters", "disclaimer", "texts", "evidence", "codes", "ladder", "stages", "rules")


class RuleSetDocument(_Doc):
    """All rule files of a folder merged: the complete clinical content of one rule set."""

    ruleset: RuleSetMeta
    parameters: dict[str, int | float]
    disclaimer: str = Field(min_length=1)  # carried by every card; the loader reports blank/null with a position
    texts: Texts
    evidence: list[Evidence]
    override_reasons: list[OverrideReason] = []

    @field_validator("disclaimer")
    @classmethod
    def _disclaimer_has_text(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the disclaimer is blank")
        return v
    codes: Codes
    ladder: Ladder
    stages: list[str]
    rules: list[Rule]
    notes: list[Note] = []
    services: list[Service] = []  # empty: the one default patient-view service (see cds.service)
    order_checks: list[OrderCheck] = []
    app: AppTexts | None = None  # the SMART app's wording (cds.http.smart_app); None: the app is unavailable
