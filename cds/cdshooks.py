"""The CDS Hooks 2.0 wire format as pydantic v2 models (no Flask, no FHIR fetching).

Request side: :class:`HookRequest` (and :class:`PatientViewRequest`, whose ``context`` is a validated
:class:`PatientViewContext`), :class:`FhirAuthorization`, and :func:`validation_message` for turning a
:class:`pydantic.ValidationError` into a short client message that never echoes input values.

Response side: :class:`Card` and its parts, :class:`CdsResponse`, :class:`ServiceDescription`,
:class:`Discovery`. Serialise them with :func:`to_json` (or ``model.wire()``): optional fields with no
value are omitted everywhere, never ``null``, ``""``, ``[]`` or ``{}`` -- except the required top-level
``cards`` (and ``services``) lists, which stay even when empty.

Attribute names are snake_case; aliases carry the wire names (``hookInstance``, ``selectionBehavior``...).
Either name is accepted on input; :func:`to_json` always writes the wire names.
"""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

# One Coding model, defined with the rule files (lower layer): the codes a rule author writes go on the
# wire as they are (``topic``), and a feedback reason is read with the same model.
from .ruleset.schema import Coding

__all__ = [
    "Action",
    "Card",
    "CdsResponse",
    "Coding",
    "Discovery",
    "FhirAuthorization",
    "HOOK_REQUEST_MODELS",
    "HookRequest",
    "Link",
    "OrderSignContext",
    "OrderSignRequest",
    "OverrideReason",
    "PatientViewContext",
    "PatientViewRequest",
    "ServiceDescription",
    "Source",
    "Suggestion",
    "SUMMARY_MAX_CHARS",
    "SystemAction",
    "to_json",
    "validation_message",
]

#: CDS Hooks: "summary ... SHALL be less than 140 characters" -> at most 139.
SUMMARY_MAX_CHARS = 139

#: FHIR R4 ``id`` datatype: used for ids that end up in FHIR references and search URLs.
FHIR_ID_PATTERN = r"^[A-Za-z0-9\-.]{1,64}$"
#: a FHIR id that is also safe as a URL path segment: ``.`` and ``..`` are refused (``Patient/..`` would be
#: resolved by an HTTP client or server as a step up the path)
FHIR_ID_SEGMENT_PATTERN = r"^(?:[A-Za-z0-9\-.]{3,64}|[A-Za-z0-9\-][A-Za-z0-9\-.]?|\.[A-Za-z0-9\-])$"
#: CDS Hooks: ``hookInstance`` is "a universally unique identifier (UUID) for this particular hook call"
UUID_PATTERN = r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"

#: Epic's request extension naming the CDS rule (criteria record) that fired the hook
EPIC_CRITERIA_ID = "com.epic.cdshooks.request.criteria-id"
#: the longest criteria id the audit keeps; it must also be a plain token (no PHI can hide in one)
CRITERIA_ID_MAX_CHARS = 64
_CRITERIA_ID = re.compile(rf"^[A-Za-z0-9._:\-]{{1,{CRITERIA_ID_MAX_CHARS}}}$")


# ------------------------------------------------------------------------------------------------
# Serialisation
# ------------------------------------------------------------------------------------------------

_EMPTY = object()

#: top-level list fields that are required by the spec and therefore kept even when empty
_KEEP_EMPTY: dict[str, tuple[str, ...]] = {"CdsResponse": ("cards",), "Discovery": ("services",)}


def _prune(value: Any) -> Any:
    """Drop None, "", [] and {} recursively; returns ``_EMPTY`` when the value itself is empty.

    Scalars are checked inline (no call per leaf) and containers by their exact class (``model_dump(mode=
    "json")`` makes only plain dicts and lists; anything else goes through ``isinstance`` as before): this
    runs on every card of every response.
    """
    cls = value.__class__
    if cls is dict or (cls is not list and isinstance(value, dict)):
        out = {}
        for k, v in value.items():
            c = v.__class__
            if c is str:
                if not v:
                    continue
            elif c is dict or c is list or (c is not int and c is not float and c is not bool
                                            and isinstance(v, (dict, list, tuple))):
                v = _prune(v)
                if v is _EMPTY:
                    continue
            elif v is None:
                continue
            out[k] = v
        return out if out else _EMPTY
    if cls is list or isinstance(value, (list, tuple)):
        items = []
        for v in value:
            c = v.__class__
            if c is str:
                if not v:
                    continue
            elif c is dict or c is list or (c is not int and c is not float and c is not bool
                                            and isinstance(v, (dict, list, tuple))):
                v = _prune(v)
                if v is _EMPTY:
                    continue
            elif v is None:
                continue
            items.append(v)
        return items if items else _EMPTY
    if value is None or (cls is str and not value):
        return _EMPTY
    return value


def to_json(model: BaseModel) -> dict[str, Any]:
    """The JSON-ready wire form of a response model: wire (alias) names, nothing empty anywhere.

    ``None``, ``""``, ``[]`` and ``{}`` are removed at every depth (inside ``extension`` and FHIR
    resources too); a container left empty by that is removed in turn. ``0`` and ``False`` stay.
    Only ``CdsResponse.cards`` and ``Discovery.services`` are kept when empty (they are required).
    """
    raw = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    pruned = _prune(raw)
    out: dict[str, Any] = {} if pruned is _EMPTY else pruned
    for name in _KEEP_EMPTY.get(type(model).__name__, ()):
        out.setdefault(name, [])
    return out


class _Wire(BaseModel):
    """Common base of the response models: strict shape, wire names, :meth:`wire` serialisation."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)

    def wire(self) -> dict[str, Any]:
        return to_json(self)


# ------------------------------------------------------------------------------------------------
# Request side
# ------------------------------------------------------------------------------------------------


def _check_http_url(v: str | None) -> str | None:
    if v is None:
        return v
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        # never echo the value: it is client input
        raise ValueError("must be an absolute http(s) URL")
    return v


def _scrub_error(err: ValidationError) -> ValidationError:
    """The same errors with every ``input`` replaced by None (inputs may hold tokens or PHI)."""
    details: list[InitErrorDetails] = []
    for d in err.errors(include_url=False):
        item: InitErrorDetails = {"loc": d["loc"], "input": None, "type": d["type"]}
        if "ctx" in d:
            item["ctx"] = d["ctx"]
        try:
            ValidationError.from_exception_data(err.title, [item])  # a built-in error type?
        except Exception:  # noqa: BLE001 - custom error type: keep its message, drop ctx
            message = d["msg"].replace("{", "{{").replace("}", "}}")
            item = {"loc": d["loc"], "input": None, "type": PydanticCustomError(d["type"], message)}
        details.append(item)
    return ValidationError.from_exception_data(err.title, details, hide_input=True)


class _Request(BaseModel):
    """Base of the request models: extension fields allowed (the spec permits them), inputs hidden."""

    model_config = ConfigDict(populate_by_name=True, extra="allow", hide_input_in_errors=True)

    def __repr_args__(self) -> list[tuple[str | None, Any]]:
        # extension fields may hold anything (tokens, PHI): show only the declared fields
        declared = set(type(self).model_fields)
        return [(k, v) for k, v in super().__repr_args__() if k in declared]


class FhirAuthorization(_Request):
    """``fhirAuthorization``: the bearer token the service may use to read ``fhirServer``.

    ``access_token`` never appears in ``repr``/``str`` or in validation errors; never log it.
    """

    access_token: str = Field(min_length=1, repr=False)
    token_type: Literal["Bearer"]
    expires_in: int = Field(ge=0)
    scope: str = Field(min_length=1)
    subject: str = Field(min_length=1)
    patient: str | None = None


class PatientViewContext(_Request):
    """``context`` of the ``patient-view`` hook.

    ``userId`` is any non-empty string: CDS Hooks 2.0 asks for ``Practitioner/123``-style references,
    Epic sends ``Practitioner/<id>`` and other EHRs other shapes; it is never used for a decision."""

    user_id: str = Field(alias="userId", min_length=1)
    patient_id: str = Field(alias="patientId", pattern=FHIR_ID_SEGMENT_PATTERN)
    encounter_id: str | None = Field(default=None, alias="encounterId", pattern=FHIR_ID_PATTERN)


class OrderSignContext(_Request):
    """``context`` of the ``order-sign`` hook: ``draftOrders`` is a FHIR Bundle of the orders to sign.

    The Bundle's shape is checked here (a Bundle whose entries each hold a resource with a
    ``resourceType``), so a wrong one is a 400 naming ``context.draftOrders...``; the resources
    themselves are read by :mod:`cds.order_check`.
    """

    user_id: str = Field(alias="userId", min_length=1)
    patient_id: str = Field(alias="patientId", pattern=FHIR_ID_SEGMENT_PATTERN)
    encounter_id: str | None = Field(default=None, alias="encounterId", pattern=FHIR_ID_PATTERN)
    draft_orders: dict[str, Any] = Field(alias="draftOrders", repr=False)

    @field_validator("draft_orders")
    @classmethod
    def _bundle(cls, v: dict[str, Any]) -> dict[str, Any]:
        if v.get("resourceType") != "Bundle":
            raise ValueError("must be a FHIR Bundle (resourceType 'Bundle')")
        entries = v.get("entry", [])
        if not isinstance(entries, list):
            raise ValueError("entry must be a list of Bundle entries")
        for i, entry in enumerate(entries):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
                raise ValueError(f"entry[{i}] must hold a FHIR resource (with a resourceType)")
        return v


class HookRequest(_Request):
    """The body of ``POST /cds-services/{id}``.

    Validation errors raised by this model (and subclasses) carry no input values at all -- not in
    ``str(err)``, not in ``err.errors()``, not in ``err.json()`` -- so a token or PHI in the body can
    never leak into a response or a log through them. ``prefetch`` values may be ``null`` (the EHR has
    no such data); an absent key means "fetch it yourself".
    """

    hook: str = Field(min_length=1)
    hook_instance: str = Field(alias="hookInstance", pattern=UUID_PATTERN)
    fhir_server: str | None = Field(default=None, alias="fhirServer")
    fhir_authorization: FhirAuthorization | None = Field(default=None, alias="fhirAuthorization")
    context: dict[str, Any]
    prefetch: dict[str, Any | None] | None = Field(default=None, repr=False)
    #: CDS Hooks ``extension`` (Epic: ``com.epic.cdshooks.request.criteria-id``,
    #: ``...cds-hooks-specification-version``...): accepted whatever it holds, read only through
    #: :attr:`criteria_id`; never logged
    extension: Any = Field(default=None, repr=False)

    @property
    def criteria_id(self) -> str | None:
        """Epic's criteria id, when the request carries one that is a plain token of at most
        :data:`CRITERIA_ID_MAX_CHARS` characters (a number or a string); anything else is None."""
        if not isinstance(self.extension, dict):
            return None
        value = self.extension.get(EPIC_CRITERIA_ID)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and _CRITERIA_ID.match(value):
            return value
        return None

    @field_validator("fhir_server")
    @classmethod
    def _check_server(cls, v: str | None) -> str | None:
        return _check_http_url(v)

    @model_validator(mode="after")
    def _server_with_auth(self) -> HookRequest:
        if self.fhir_authorization is not None and self.fhir_server is None:
            raise ValueError("fhirServer is required when fhirAuthorization is present")
        return self

    @model_validator(mode="wrap")
    @classmethod
    def _hide_inputs(cls, data: Any, handler: Any) -> Any:
        try:
            return handler(data)
        except ValidationError as err:
            raise _scrub_error(err) from None



class PatientViewRequest(HookRequest):
    """A ``patient-view`` hook request: ``context`` validated, so errors read ``context.patientId``."""

    context: PatientViewContext  # type: ignore[assignment]


class OrderSignRequest(HookRequest):
    """An ``order-sign`` hook request: ``context`` validated, so errors read ``context.draftOrders``."""

    context: OrderSignContext  # type: ignore[assignment]


#: every hook request model a service may answer (the OpenAPI request body of ``POST /cds-services/{id}``)
HOOK_REQUEST_MODELS: tuple[type[HookRequest], ...] = (PatientViewRequest, OrderSignRequest)


_LOC_PART = re.compile(r"^[A-Za-z0-9_\-.$]{1,64}$")

#: what a value of each wire pattern must be, in words (pydantic's own message quotes the regex)
_PATTERN_WORDS = {
    UUID_PATTERN: "must be a UUID (8-4-4-4-12 hexadecimal digits)",
    FHIR_ID_PATTERN: "must be a FHIR id (1-64 letters, digits, '-' or '.')",
    FHIR_ID_SEGMENT_PATTERN: "must be a FHIR id (1-64 letters, digits, '-' or '.'; not '.' or '..')",
}


def validation_message(err: ValidationError, *, prefix: str | None = None, limit: int = 3) -> str:
    """A short client message naming each failing field path, e.g. ``context.patientId: Field required``.

    Only field paths and pydantic's fixed messages are used; input values are never included. A path
    segment that is not a plain name (a client-chosen dict key with odd characters, say) is replaced by
    ``?`` so nothing the client typed is reflected back verbatim. ``prefix`` names the object the error
    came from when it was validated on its own (``validation_message(e, prefix="context")``).
    """
    parts: list[str] = []
    errors = err.errors(include_url=False, include_input=False)
    for d in errors[:limit]:
        loc: list[str] = [prefix] if prefix else []
        for seg in d["loc"]:
            if isinstance(seg, int):
                if loc:
                    loc[-1] += f"[{seg}]"
                else:
                    loc.append(f"[{seg}]")
            else:
                loc.append(seg if _LOC_PART.match(str(seg)) else "?")
        msg = d["msg"]
        if d["type"] == "string_pattern_mismatch":
            msg = _PATTERN_WORDS.get(str((d.get("ctx") or {}).get("pattern")), "has the wrong form")
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        elif msg.startswith("Assertion failed, "):
            msg = msg[len("Assertion failed, ") :]
        parts.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
    if len(errors) > limit:
        parts.append(f"and {len(errors) - limit} more error(s)")
    return "; ".join(parts) if parts else "invalid request"


# ------------------------------------------------------------------------------------------------
# Response side
# ------------------------------------------------------------------------------------------------


class OverrideReason(Coding):
    """A Coding whose ``display`` is required (shown to the clinician)."""

    display: str = Field(min_length=1)


class Source(_Wire):
    label: str = Field(min_length=1)
    url: str | None = None
    icon: str | None = None
    topic: Coding | None = None


class Link(_Wire):
    label: str = Field(min_length=1)
    url: str = Field(min_length=1)
    type: Literal["absolute", "smart"]
    app_context: str | None = Field(default=None, alias="appContext")

    @model_validator(mode="after")
    def _app_context_smart_only(self) -> Link:
        if self.app_context is not None and self.type != "smart":
            raise ValueError("appContext is only allowed on links of type 'smart'")
        # CDS Hooks: "A type of absolute indicates that the URL is absolute and should be treated as-is."
        if self.type == "absolute":
            parts = urlsplit(self.url)
            if not parts.scheme or not parts.netloc:
                raise ValueError("the url of an 'absolute' link must be an absolute URL")
        return self


class Action(_Wire):
    type: Literal["create", "update", "delete"]
    description: str = Field(min_length=1)
    resource: dict[str, Any] | None = None
    #: CDS Hooks 2.0: relative references ("ServiceRequest/123") of the resources to delete; this
    #: service writes an array; a single string is accepted too
    resource_id: list[str] | str | None = Field(default=None, alias="resourceId")

    @model_validator(mode="after")
    def _payload(self) -> Action:
        if self.type in ("create", "update"):
            if not self.resource:
                raise ValueError(f"resource is required for a {self.type} action")
            if not isinstance(self.resource.get("resourceType"), str):
                raise ValueError("resource must be a FHIR resource with a resourceType")
        elif not self.resource_id:
            raise ValueError("resourceId is required for a delete action")
        return self


class SystemAction(Action):
    """An entry of ``systemActions``: an :class:`Action` whose ``description`` is optional (CDS Hooks 2.0)."""

    description: str | None = Field(default=None, min_length=1)  # type: ignore[assignment]


class Suggestion(_Wire):
    label: str = Field(min_length=1)
    uuid: str | None = None
    is_recommended: bool | None = Field(default=None, alias="isRecommended")
    actions: list[Action] = []


class Card(_Wire):
    uuid: str = Field(min_length=1)
    summary: str = Field(min_length=1, max_length=SUMMARY_MAX_CHARS)
    detail: str | None = None
    indicator: Literal["info", "warning", "critical"]
    source: Source
    suggestions: list[Suggestion] = []
    selection_behavior: Literal["at-most-one", "any"] | None = Field(default=None, alias="selectionBehavior")
    override_reasons: list[OverrideReason] = Field(default=[], alias="overrideReasons")
    links: list[Link] = []
    extension: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _selection_behavior(self) -> Card:
        if self.suggestions and self.selection_behavior is None:
            raise ValueError("selectionBehavior is required when suggestions are present")
        if not self.suggestions and self.selection_behavior is not None:
            raise ValueError("selectionBehavior must be omitted when there are no suggestions")
        # feedback names an accepted suggestion by its uuid: two suggestions may not share one
        uuids = [s.uuid for s in self.suggestions if s.uuid is not None]
        if len(uuids) != len(set(uuids)):
            raise ValueError("suggestion uuids must be unique within a card")
        return self


class CdsResponse(_Wire):
    cards: list[Card] = []
    system_actions: list[SystemAction] = Field(default=[], alias="systemActions")

    @model_validator(mode="after")
    def _unique_card_uuids(self) -> CdsResponse:
        # feedback names a card by its uuid: two cards of one response may not share one
        uuids = [c.uuid for c in self.cards]
        if len(uuids) != len(set(uuids)):
            raise ValueError("card uuids must be unique within a response")
        return self


class ServiceDescription(_Wire):
    hook: str = Field(min_length=1)
    title: str | None = None
    description: str = Field(min_length=1)
    id: str = Field(min_length=1)
    prefetch: dict[str, str] = {}
    usage_requirements: str | None = Field(default=None, alias="usageRequirements")
    extension: dict[str, Any] | None = None


class Discovery(_Wire):
    services: list[ServiceDescription] = []
