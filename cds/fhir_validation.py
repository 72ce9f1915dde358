"""FHIR R4 validation (fhir.resources R4B models), memoised by content.

Validating one Observation with fhir.resources costs ~0.2-0.3 ms, more than everything else a hook
call does. Validation is a pure function of the resource's JSON, and an EHR sends the same resources
at every chart opening of a patient, so the outcome is cached by the resource's serialisation: a
resource seen before costs one ``marshal.dumps`` (about 1.5 us for an Observation; ``json.dumps``
costs 6) and a dict lookup. ``marshal`` round-trips every JSON value exactly (``1``, ``1.0`` and
``True`` differ), so equal bytes mean equal content; the same content serialised differently (keys in
another order) is only a cache miss. The key is those bytes themselves, not a digest of them: exact by
construction (no collision argument needed), and hashing 1 KB for a digest cost more (about 1 us with
blake2b) than the dict's own hash of the bytes. Every hook call validates every candidate resource of
its history (extraction counts every invalid one), so this key is the cost of a long history; callers
that already hold the serialisation (extraction's memo) pass it as ``canonical``. The cache is bounded
(LRU, ``maxsize`` entries of about 1 KB of key each besides the model) and lives in process memory
only; the cached models hold the same content as the keys.

A resource never seen before (a new patient) still costs its validation, but most of that is its
elements (a round's ``code``, ``subject`` and ``component`` entries; a pain score's ``category`` and
``code``), which repeat across the resources of one history and across patients. So a resource's
top-level complex elements are validated on their own first, each memoised by content like whole
resources, and handed to the resource's validation as instances. This is exactly what validation does
anyway: fhir_core validates a nested element dict with ``<ElementClass>.model_validate`` (no context
from the parent) and accepts an instance of that class as it is, so the model is the same (tested on
every example and hostile resource). An element that does not validate on its own is left as JSON, so
the resource's validation reports it, with the same location and message as without this step.
"""

from __future__ import annotations

import marshal
import threading
import typing
from collections import OrderedDict
from typing import Any, TypeVar

from fhir.resources.R4B.element import Element
from pydantic import BaseModel, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

M = TypeVar("M", bound=BaseModel)


#: marshal format 2: no back-references. Later formats mark objects referenced elsewhere, so equal
#: JSON would serialise differently depending on how its strings are shared (every lookup a miss).
#: Either way equal bytes mean equal values: a key can miss, never hit wrongly.
_MARSHAL_VERSION = 2


def canonical_bytes(raw: Any) -> bytes | None:
    """The exact cache key of a JSON value (``marshal`` format 2), or None when it is not plain JSON."""
    try:
        return marshal.dumps(raw, _MARSHAL_VERSION)
    except (TypeError, ValueError, RecursionError):
        return None


def _element_class(annotation: Any) -> type[Element] | None:
    """The FHIR element class a field holds (alone or in a list), or None (primitives, resources)."""
    get_klass = getattr(annotation, "get_model_klass", None)
    if callable(get_klass):
        klass = get_klass()
        return klass if isinstance(klass, type) and issubclass(klass, Element) else None
    for arg in typing.get_args(annotation):
        klass = _element_class(arg)
        if klass is not None:
            return klass
    return None


_element_fields_of: dict[type, dict[str, type[Element]]] = {}


def element_fields(model: type[BaseModel]) -> dict[str, type[Element]]:
    """JSON name -> element class of a model's complex element fields (``code``, ``component``...);
    not primitives, their ``_name`` extension siblings, or contained resources. Computed once per model."""
    fields = _element_fields_of.get(model)
    if fields is None:
        fields = {}
        for name, field in model.model_fields.items():
            key = field.alias or name
            klass = None if key.startswith("_") else _element_class(field.annotation)
            if klass is not None:
                fields[key] = klass
        _element_fields_of[model] = fields
    return fields


#: the content of one resource validated at most (its ``marshal`` bytes, ~1.3x its compact JSON): a pain
#: score, round or Condition is well under 2 KiB, and fhir.resources costs ~20 us per element, so one
#: Observation of half a million ``{}`` components under the 2 MiB body limit cost 9.9 s of CPU and
#: 870 MiB; past this bound the resource is invalid without being looked at (bench_worst_body.py)
MAX_RESOURCE_BYTES = 64 * 1024


def too_large(model: type[BaseModel], size: int, limit: int) -> ValidationError:
    """The validation error of a resource over ``limit`` bytes of content (never validated)."""
    detail = InitErrorDetails(
        type=PydanticCustomError("too_large", "resource too large to validate: {size} bytes of content, at most {limit}",
                                 {"size": size, "limit": limit}),
        loc=(), input=None,
    )
    return ValidationError.from_exception_data(model.__name__, [detail])


class ValidationCache:
    def __init__(self, maxsize: int = 2048, element_maxsize: int = 8192, max_bytes: int = MAX_RESOURCE_BYTES):
        self.maxsize = maxsize
        self.element_maxsize = element_maxsize
        #: resources with more content than this are invalid without validation (see MAX_RESOURCE_BYTES)
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[type, bytes], BaseModel | ValidationError] = OrderedDict()
        #: elements validated on their own: the instance, or None when it does not validate alone
        self._elements: OrderedDict[tuple[type, bytes], Element | None] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def validate(self, model: type[M], raw: dict[str, Any], canonical: bytes | None = None, *, by_element: bool = False) -> M:
        """``model.model_validate(raw)``, or the cached outcome for identical JSON. Raises ValidationError.

        ``canonical``: ``canonical_bytes(raw)`` when the caller has it already (it must be exactly that).
        ``by_element``: on a miss, validate (and memoise) the resource's top-level elements first; worth
        it for resources whose elements repeat (a patient's Observations), not for one-off shapes, where
        keying each element costs more than it saves."""
        if canonical is None:
            canonical = canonical_bytes(raw)
            if canonical is None:
                return _validate(model, raw)  # not plain JSON (or absurdly deep): validate without caching
        if len(canonical) > self.max_bytes:
            raise too_large(model, len(canonical), self.max_bytes)  # not cached: its key alone would be the size
        key = (model, canonical)
        with self._lock:
            outcome = self._entries.get(key)
            if outcome is not None:
                self._entries.move_to_end(key)
                self.hits += 1
        if outcome is None:
            self.misses += 1
            try:
                outcome = _validate(model, self._with_validated_elements(model, raw) if by_element else raw)
            except ValidationError as e:
                outcome = e
            with self._lock:
                self._entries[key] = outcome
                if len(self._entries) > self.maxsize:
                    self._entries.popitem(last=False)
        if isinstance(outcome, ValidationError):
            raise outcome.with_traceback(None)  # do not let a cached error accumulate tracebacks
        return outcome  # type: ignore[return-value]

    def _with_validated_elements(self, model: type[BaseModel], raw: dict[str, Any]) -> dict[str, Any]:
        """``raw`` with its top-level complex elements replaced by their validated instances (the
        memoised ones where the same JSON was validated before); those that do not validate alone stay."""
        fields = element_fields(model)
        replaced: dict[str, Any] = {}
        for key, value in raw.items():
            klass = fields.get(key)
            if klass is None:
                continue
            if type(value) is dict:
                element = self._element(klass, value)
                if element is not None:
                    replaced[key] = element
            elif type(value) is list:
                elements = [self._element(klass, item) if type(item) is dict else None for item in value]
                if any(e is not None for e in elements):
                    replaced[key] = [item if e is None else e for e, item in zip(elements, value, strict=True)]
        return {**raw, **replaced} if replaced else raw  # the keys keep their order

    def _element(self, klass: type[Element], raw: dict[str, Any]) -> Element | None:
        canonical = canonical_bytes(raw)
        if canonical is None:
            return None
        key = (klass, canonical)
        with self._lock:
            if key in self._elements:
                self._elements.move_to_end(key)
                return self._elements[key]
        try:
            element: Element | None = klass.model_validate(raw)
        except Exception:  # noqa: BLE001 - left as JSON: the resource's own validation reports it (or raises it) as before
            element = None
        with self._lock:
            self._elements[key] = element
            if len(self._elements) > self.element_maxsize:
                self._elements.popitem(last=False)
        return element

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._elements.clear()


def _validate(model: type[M], raw: dict[str, Any]) -> M:
    """``model.model_validate``, with absurd nesting (deep extensions) an ordinary validation error:
    fhir.resources validates nested elements recursively and would otherwise exhaust the stack."""
    try:
        return model.model_validate(raw)
    except RecursionError:
        detail = InitErrorDetails(type=PydanticCustomError("too_deep", "resource is nested too deeply"), loc=(), input=None)
        raise ValidationError.from_exception_data(model.__name__, [detail]) from None


#: the process-wide cache used by extraction and card building
validation_cache = ValidationCache()
validate = validation_cache.validate
