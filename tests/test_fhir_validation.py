"""cds.fhir_validation: the memoised validation gives exactly what fhir.resources gives.

A resource's top-level elements are validated on their own (and memoised) before the resource; these
tests hold that to "the same model, or the same errors" as a plain ``model_validate`` for every
resource of the examples and for hostile ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.codeableconcept import CodeableConcept
from pydantic import BaseModel, ValidationError

from cds.fhir_validation import ValidationCache, element_fields

ROOT = Path(__file__).resolve().parents[1]
OBS = "https://lbp-cds.org/fhir/CodeSystem/observation"


def example_resources() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted((ROOT / "fhir_examples" / "requests").rglob("*.json")):
        request = json.loads(path.read_text())
        bundles = list((request.get("prefetch") or {}).values()) + [request["context"].get("draftOrders")]
        for bundle in bundles:
            if not isinstance(bundle, dict):
                continue
            if bundle.get("resourceType") != "Bundle":
                out.append(bundle)
            out += [e["resource"] for e in bundle.get("entry", []) if isinstance(e.get("resource"), dict)]
    return out


def round_obs() -> dict[str, Any]:
    return {
        "resourceType": "Observation", "id": "r-1", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "exam"}]}],
        "code": {"coding": [{"system": OBS, "code": "reps-to-technical-failure"}]},
        "subject": {"reference": "Patient/p-1"},
        "effectiveDateTime": "2026-11-18T10:00:00-05:00",
        "valueQuantity": {"value": 20, "unit": "repetitions", "system": "http://unitsofmeasure.org", "code": "{repetitions}"},
        "component": [
            {"code": {"coding": [{"system": OBS, "code": "exercise"}]},
             "valueCodeableConcept": {"coding": [{"system": "https://lbp-cds.org/fhir/CodeSystem/exercise", "code": "bird-dog"}]}},
            {"code": {"coding": [{"system": OBS, "code": "round"}]}, "valueInteger": 1},
        ],
    }


def deep_extension(levels: int) -> dict[str, Any]:
    ext: dict[str, Any] = {"url": "https://example.org/x", "valueString": "x"}
    for _ in range(levels):
        ext = {"url": "https://example.org/x", "extension": [ext]}
    return ext


def hostile_resources() -> list[dict[str, Any]]:
    def variant(change) -> dict[str, Any]:
        obs = round_obs()
        change(obs)
        return obs

    return [
        variant(lambda o: o["category"].append(None)),  # a null inside a list of elements
        variant(lambda o: o.update(code="reps")),  # a string where an element belongs
        variant(lambda o: o.update(code=[o["code"]])),  # a list where one element belongs
        variant(lambda o: o["code"].update(text=7)),  # a wrong primitive inside an element
        variant(lambda o: o["code"].update(unknown=True)),  # an unknown key inside an element
        variant(lambda o: o["code"]["coding"].append(None)),  # a null one level further down
        variant(lambda o: o["component"][1].update(valueString="one")),  # two values in a component
        variant(lambda o: o["component"].append({"valueInteger": 2})),  # a component without its code
        variant(lambda o: o["component"].append("round 2")),  # a string in a list of elements
        variant(lambda o: o["subject"].update(reference=12)),
        variant(lambda o: o["valueQuantity"].update(value="twenty")),
        variant(lambda o: o.update(valueString="also")),  # two values on the resource
        variant(lambda o: o.update(meta={"lastUpdated": "yesterday"})),
        variant(lambda o: o.update(_status={"extension": [{"url": "https://example.org/x", "valueBoolean": "no"}]})),
        variant(lambda o: o.update(extension=[deep_extension(300)])),  # nested too deeply to validate
        variant(lambda o: o.update(extension=[deep_extension(20)])),  # deep but fine
        variant(lambda o: o.update(contained=[{"resourceType": "Patient", "id": "p"}])),
        variant(lambda o: o.update(status=None)),
        variant(lambda o: o.pop("code")),  # a required element missing
        variant(lambda o: o.update(code={}, subject={})),  # empty elements
        variant(lambda o: o.update(resourceType="Condition")),
        variant(lambda o: o["code"]["coding"][0].update(system=None)),
    ]


def outcome(validate, model: type[BaseModel], raw: dict[str, Any]) -> Any:
    try:
        model_ = validate(model, raw)
    except ValidationError as e:
        return ("invalid", [(e_["loc"], e_["type"], e_["msg"]) for e_ in e.errors(include_url=False)])
    except RecursionError:
        return ("recursion",)
    return ("valid", model_.model_dump_json(), model_.model_dump(mode="json"))


def plain(model: type[BaseModel], raw: dict[str, Any]) -> Any:
    return model.model_validate(json.loads(json.dumps(raw)))


def test_every_example_and_hostile_resource_validates_exactly_as_fhir_resources_does() -> None:
    observation = get_fhir_model_class("Observation")
    cases = [(get_fhir_model_class(r["resourceType"]), r) for r in example_resources() if r.get("resourceType") != "Bundle"]
    cases += [(observation, r) for r in hostile_resources()]  # as Observations, whatever they claim to be
    assert len(cases) > 300
    cache = ValidationCache()
    for warm in (False, True):  # first with every element new, then with every element memoised
        for model, raw in cases:
            before = json.dumps(raw)
            expected = outcome(plain, model, raw)
            got = outcome(lambda m, r: cache.validate(m, r, by_element=True), model, raw)
            if expected[0] == "recursion":
                assert got[0] == "invalid"  # the cache reports absurd nesting as an ordinary error (cds.fhir_validation)
            else:
                assert got == expected, (warm, raw.get("id"), raw)
            assert json.dumps(raw) == before  # the caller's JSON is never changed
        assert cache._elements, "elements were memoised"


def test_hostile_resources_are_invalid_where_fhir_says_so() -> None:
    """The hostile list is not a list of valid resources in disguise: all but these five are invalid."""
    cache = ValidationCache()
    valid = [
        i for i, r in enumerate(hostile_resources())
        if outcome(lambda m, r: cache.validate(m, r, by_element=True), get_fhir_model_class("Observation"), r)[0] == "valid"
    ]
    # "no" read as false in a primitive extension, a deep but fine extension, a contained resource,
    # empty code and subject elements, a null system
    assert valid == [13, 15, 16, 19, 21]


def test_an_element_shared_by_resources_is_validated_once(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = ValidationCache()
    validated: list[Any] = []
    real = CodeableConcept.model_validate.__func__  # type: ignore[attr-defined]

    def counting(cls: type, obj: Any, *args: Any, **kwargs: Any) -> Any:
        validated.append(obj)
        return real(cls, obj, *args, **kwargs)

    monkeypatch.setattr(CodeableConcept, "model_validate", classmethod(counting))
    model = get_fhir_model_class("Observation")
    first, second = round_obs(), round_obs()
    second["id"], second["valueQuantity"]["value"] = "r-2", 18
    a, b = cache.validate(model, first, by_element=True), cache.validate(model, second, by_element=True)
    assert a.code is b.code  # the second round's code is the first's instance
    code_validations = [v for v in validated if v == first["code"]]
    assert len(code_validations) == 1
    assert b.valueQuantity.value == 18 and a.valueQuantity.value == 20
    assert cache.validate(model, {**first, "id": "r-3"}).code is not a.code  # by_element off: validated as a whole


def test_element_fields_are_the_complex_elements_only() -> None:
    fields = element_fields(get_fhir_model_class("Observation"))
    assert {"code", "subject", "component", "category", "valueQuantity", "extension", "meta"} <= set(fields)
    assert not {"status", "_status", "effectiveDateTime", "valueInteger", "contained", "id"} & set(fields)
    assert fields["component"].__name__ == "ObservationComponent"


def test_clear_forgets_elements_too() -> None:
    cache = ValidationCache()
    cache.validate(get_fhir_model_class("Observation"), round_obs(), by_element=True)
    assert cache._elements
    cache.clear()
    assert not cache._elements


def test_element_memo_is_bounded() -> None:
    cache = ValidationCache(element_maxsize=5)
    for n in range(20):
        obs = round_obs()
        obs["valueQuantity"]["value"] = n
        obs["subject"]["reference"] = f"Patient/p-{n}"
        cache.validate(get_fhir_model_class("Observation"), obs, by_element=True)
    assert len(cache._elements) == 5


def test_a_resource_over_the_content_bound_is_invalid_without_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = ValidationCache(max_bytes=2_000)
    model = get_fhir_model_class("Observation")
    big = round_obs()
    big["note"] = [{"text": "x" * 2_000}]  # valid FHIR, but more content than the bound
    calls: list[Any] = []
    monkeypatch.setattr(model, "model_validate", classmethod(lambda cls, obj, *a, **k: calls.append(obj)))
    for _ in range(2):
        with pytest.raises(ValidationError) as e:
            cache.validate(model, big, by_element=True)
        [error] = e.value.errors(include_url=False)
        assert error["type"] == "too_large" and "at most 2000" in error["msg"]
    assert calls == [] and not cache._entries and not cache._elements  # never validated, never cached
    monkeypatch.undo()
    assert cache.validate(model, round_obs()).status == "final"  # under the bound: validated as usual
