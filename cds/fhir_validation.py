"""FHIR R4 validation (fhir.resources R4B models), memoised by content.

Validating one Observation with fhir.resources costs ~0.2-0.3 ms, more than everything else a hook
call does. Validation is a pure function of the resource's JSON, and an EHR sends the same resources
at every chart opening of a patient, so the outcome is cached by a digest of the resource's
serialisation: a resource seen before costs one ``marshal.dumps`` (about 3 us; ``json.dumps`` with
sorted keys costs 7) and a dict lookup. ``marshal`` round-trips every JSON value exactly (``1``,
``1.0`` and ``True`` differ), so equal bytes mean equal content; the same content serialised
differently (keys in another order) is only a cache miss. Every hook call validates every
candidate resource of its history (extraction counts every invalid one), so this key is the cost
of a long history. The cache is bounded (LRU), lives in process memory only, and keys on digests,
so no resource text is kept as a key.
"""

from __future__ import annotations

import hashlib
import marshal
import threading
from collections import OrderedDict
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

M = TypeVar("M", bound=BaseModel)


#: marshal format 2: no back-references. Later formats mark objects referenced elsewhere, so equal
#: JSON would serialise differently depending on how its strings are shared (every lookup a miss).
#: Either way equal bytes mean equal values: a key can miss, never hit wrongly.
_MARSHAL_VERSION = 2


class ValidationCache:
    def __init__(self, maxsize: int = 2048):
        self.maxsize = maxsize
        self._entries: OrderedDict[tuple[type, bytes], BaseModel | ValidationError] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def validate(self, model: type[M], raw: dict[str, Any]) -> M:
        """``model.model_validate(raw)``, or the cached outcome for identical JSON. Raises ValidationError."""
        try:
            canonical = marshal.dumps(raw, _MARSHAL_VERSION)
        except (TypeError, ValueError, RecursionError):
            return _validate(model, raw)  # not plain JSON (or absurdly deep): validate without caching
        key = (model, hashlib.blake2b(canonical, digest_size=20).digest())
        with self._lock:
            outcome = self._entries.get(key)
            if outcome is not None:
                self._entries.move_to_end(key)
                self.hits += 1
        if outcome is None:
            self.misses += 1
            try:
                outcome = _validate(model, raw)
            except ValidationError as e:
                outcome = e
            with self._lock:
                self._entries[key] = outcome
                if len(self._entries) > self.maxsize:
                    self._entries.popitem(last=False)
        if isinstance(outcome, ValidationError):
            raise outcome.with_traceback(None)  # do not let a cached error accumulate tracebacks
        return outcome  # type: ignore[return-value]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


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
