"""The CDS Hooks 2.0 feedback request (SPEC §3): models and validation with field-path error messages.

Pure module: no Flask, no database. The HTTP layer calls :func:`parse_feedback` on the decoded JSON body and
maps :class:`FeedbackError` to a 400 whose message is ``str(exc)`` (it names the field, e.g.
``feedback[0].acceptedSuggestions: required when outcome is 'accepted'``).

Liberal where CDS Hooks lets clients vary (issue 11), strict where safety needs it:

* a key this service does not know (at any level: Epic's fields beyond CDS Hooks 2.0, a newer
  specification's) is ignored, never a 400; :attr:`FeedbackRequest.ignored_fields` lists the names (for a
  metric and a log line carrying names only, never values);
* ``overrideReasons`` (Epic: a list of reasons, each an ``{reason, userComment}`` object or a bare Coding)
  is accepted; when ``overrideReason`` is absent the first entry stands in for it;
* a reason Coding without ``display`` (the CDS Hooks sandbox) is accepted;
* what storage and reporting rely on stays strict: ``card`` and suggestion ids are UUIDs, ``outcome`` is
  ``accepted``/``overridden``, ``acceptedSuggestions`` is required when accepted, ``outcomeTimestamp`` is
  an ISO 8601 date-time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from .db_text import DbText, StoredCoding
from .errors import CdsError
from .ruleset.schema import Coding

__all__ = [
    "AcceptedSuggestion",
    "Coding",
    "FeedbackError",
    "FeedbackItem",
    "FeedbackRequest",
    "OverrideReason",
    "format_loc",
    "parse_feedback",
    "strip_unknown_fields",
]


def _uuid_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a UUID string")
    try:
        return str(uuid.UUID(value))  # canonical lower-case, hyphenated form
    except ValueError:
        raise ValueError("must be a UUID") from None


class _Model(BaseModel):
    """Unknown keys are ignored (:func:`parse_feedback` removes them first and reports their names), so the
    OpenAPI document does not claim ``additionalProperties: false``. CDS Hooks' ``extension`` member is
    kept where the spec allows it."""

    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=False)


class _Extensible(_Model):
    extension: dict[str, Any] | None = None


class OverrideReason(_Extensible):
    reason: StoredCoding | None = None
    userComment: DbText | None = None


#: what the before-validators below check, told to the JSON Schema (the OpenAPI document) as well
_UUID_SCHEMA: dict[str, Any] = {"format": "uuid"}


class AcceptedSuggestion(_Extensible):
    id: str = Field(json_schema_extra=_UUID_SCHEMA)

    @field_validator("id", mode="before")
    @classmethod
    def _id_is_uuid(cls, v: Any) -> str:
        return _uuid_str(v)


class FeedbackItem(_Extensible):
    card: str = Field(json_schema_extra=_UUID_SCHEMA)
    outcome: Literal["accepted", "overridden"]
    # Declared after `outcome` so its validator can see it; validated even when absent.
    acceptedSuggestions: list[AcceptedSuggestion] | None = Field(default=None, validate_default=True)
    overrideReason: OverrideReason | None = None
    #: Epic: the reasons as a list (each an OverrideReason object or a bare Coding)
    overrideReasons: list[OverrideReason] | None = None
    outcomeTimestamp: dt.datetime

    @field_validator("overrideReasons", mode="before")
    @classmethod
    def _codings_are_reasons(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"reason": r} if isinstance(r, dict) and "code" in r and "reason" not in r else r for r in v]
        return v

    @model_validator(mode="after")
    def _first_reason_stands_in(self) -> FeedbackItem:
        if self.overrideReason is None and self.overrideReasons:
            object.__setattr__(self, "overrideReason", self.overrideReasons[0])
        return self

    @field_validator("card", mode="before")
    @classmethod
    def _card_is_uuid(cls, v: Any) -> str:
        return _uuid_str(v)

    @field_validator("acceptedSuggestions")
    @classmethod
    def _required_when_accepted(cls, v: list[AcceptedSuggestion] | None, info: ValidationInfo):
        if info.data.get("outcome") == "accepted" and not v:
            raise ValueError("required (at least one suggestion) when outcome is 'accepted'")
        return v

    @field_validator("outcomeTimestamp", mode="before")
    @classmethod
    def _timestamp_is_string(cls, v: Any) -> Any:
        # Pydantic would otherwise accept numbers as Unix times; the spec says ISO 8601.
        if not isinstance(v, str | dt.datetime):
            raise ValueError("must be an ISO 8601 date-time string")
        if isinstance(v, str) and "T" not in v.upper():
            raise ValueError("must be an ISO 8601 date-time (a date alone is not enough)")
        return v

    @field_validator("outcomeTimestamp")
    @classmethod
    def _timestamp_utc(cls, v: dt.datetime) -> dt.datetime:
        # CDS Hooks says the timestamp is UTC; a value without an offset is taken as UTC.
        if v.tzinfo is None:
            return v.replace(tzinfo=dt.timezone.utc)
        try:
            return v.astimezone(dt.timezone.utc)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 has no UTC equivalent
            raise ValueError("date-time out of range once converted to UTC") from None

    # ---- derived values used by storage -------------------------------------------------------------
    @property
    def suggestion_ids(self) -> tuple[str, ...]:
        return tuple(sorted({s.id for s in self.acceptedSuggestions or ()}))

    def canonical(self) -> dict[str, Any]:
        """The item as JSON-ready data, normalised (UUIDs lower-case, timestamp UTC, suggestions sorted)."""
        data = self.model_dump(mode="json", exclude_none=True)
        data["outcomeTimestamp"] = self.outcomeTimestamp.isoformat()
        if self.acceptedSuggestions is not None:
            data["acceptedSuggestions"] = [{"id": i} for i in self.suggestion_ids]
        return data

    def content_hash(self, service_id: str) -> str:
        """Identity of a report: the same service, card, outcome, timestamp, suggestions and reason give
        the same hash (so a repeated report is stored once); anything different gives a new one."""
        reason = self.overrideReason
        key: dict[str, Any] = {
            "service": service_id,
            "card": self.card,
            "outcome": self.outcome,
            "timestamp": self.outcomeTimestamp.isoformat(),
            "suggestions": list(self.suggestion_ids),
            "reason": None
            if reason is None
            else {
                "coding": None if reason.reason is None else reason.reason.model_dump(mode="json"),
                "comment": reason.userComment,
            },
        }
        if self.overrideReasons:  # only then, so hashes of CDS Hooks 2.0 reports stay what they were
            key["reasons"] = [
                {"coding": None if r.reason is None else r.reason.model_dump(mode="json"), "comment": r.userComment}
                for r in self.overrideReasons
            ]
        blob = json.dumps(key, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class FeedbackRequest(_Extensible):
    feedback: list[FeedbackItem] = Field(json_schema_extra={"minItems": 1})
    _ignored: tuple[str, ...] = PrivateAttr(default=())

    @property
    def ignored_fields(self) -> tuple[str, ...]:
        """Names of the unknown keys :func:`parse_feedback` ignored (sorted, each once)."""
        return self._ignored

    @field_validator("feedback", mode="before")
    @classmethod
    def _non_empty_array(cls, v: Any) -> Any:
        if not isinstance(v, list):
            raise ValueError("must be an array of feedback objects")
        if not v:
            raise ValueError("must contain at least one feedback object")
        return v


class FeedbackAck(_Model):
    """The answer to a feedback request: how many items were received, and how many were new (a report
    already stored is not stored twice)."""

    received: int = Field(ge=1)
    stored: int = Field(ge=0)


def format_loc(loc: tuple[int | str, ...]) -> str:
    """``('feedback', 0, 'acceptedSuggestions')`` → ``feedback[0].acceptedSuggestions``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(body)"


class FeedbackError(CdsError, ValueError):
    """Invalid feedback request. ``errors`` is a list of ``(field path, message)``; ``str()`` names the
    first offending field (and how many more there are)."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        path, msg = errors[0]
        text = f"{path}: {msg}"
        if len(errors) > 1:
            text += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
        super().__init__(text)

    @property
    def field(self) -> str:
        return self.errors[0][0]


def _message(err: ErrorDetails) -> str:
    msg = str(err.get("msg", "invalid"))
    if err.get("type") == "missing":
        return "required"
    if err.get("type") == "extra_forbidden":
        return "unknown field"
    if err.get("type") in ("model_type", "dict_type"):
        return "must be a JSON object"
    if err.get("type") == "list_type":
        return "must be an array"
    for prefix in ("Value error, ",):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    return msg


def _schema() -> dict[type[BaseModel], dict[str, type[BaseModel] | None]]:
    """model -> {key: the model its value (or each list item) is read with; None for a leaf value}."""
    return {
        FeedbackRequest: {"feedback": FeedbackItem, "extension": None},
        FeedbackItem: {
            "card": None, "outcome": None, "acceptedSuggestions": AcceptedSuggestion,
            "overrideReason": OverrideReason, "overrideReasons": OverrideReason, "outcomeTimestamp": None,
            "extension": None,
        },
        AcceptedSuggestion: {"id": None, "extension": None},
        OverrideReason: {"reason": Coding, "userComment": None, "extension": None},
        Coding: {name: None for name in Coding.model_fields},
    }


_SCHEMA = _schema()


def strip_unknown_fields(data: Any, model: type[BaseModel] = FeedbackRequest) -> tuple[Any, set[str]]:
    """``data`` without the keys ``model`` (and the models below it) does not know, and their names.

    Values that are not objects/arrays where one is expected are left for validation to report. A bare
    Coding in ``overrideReasons`` is read as a Coding. ``extension`` values are never looked into.
    """
    unknown: set[str] = set()

    def walk(value: Any, current: type[BaseModel]) -> Any:
        if not isinstance(value, dict):
            return value
        if current is OverrideReason and "code" in value and "reason" not in value:
            current = Coding  # Epic's overrideReasons may list bare Codings
        known = _SCHEMA[current]
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key not in known:
                unknown.add(key)
                continue
            child = known[key]
            if child is None:
                out[key] = item
            elif isinstance(item, list):
                out[key] = [walk(i, child) for i in item]
            else:
                out[key] = walk(item, child)
        return out

    return walk(data, model), unknown


def parse_feedback(data: Any) -> FeedbackRequest:
    """Validate a decoded JSON feedback body. Raises :class:`FeedbackError` naming the field.

    Unknown keys are ignored; their names are on the result's :attr:`~FeedbackRequest.ignored_fields`."""
    if not isinstance(data, dict):
        raise FeedbackError([("(body)", "must be a JSON object with a 'feedback' array")])
    data, unknown = strip_unknown_fields(data)
    try:
        parsed = FeedbackRequest.model_validate(data)
        parsed._ignored = tuple(sorted(unknown))
        return parsed
    except ValidationError as exc:
        errors = []
        for err in exc.errors(include_url=False):
            loc = tuple(err.get("loc", ()))
            # Pydantic appends the union branch / tag to some locations; drop non-field artefacts.
            loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith(("function-", "tuple["))))
            errors.append((format_loc(loc), _message(err)))
        raise FeedbackError(errors) from None
