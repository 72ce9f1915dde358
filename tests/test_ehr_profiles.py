"""cds.ehr_profiles: cards shaped for the calling EHR (issue 11), and the fhirServer allow-list."""

from __future__ import annotations

from cds.cdshooks import Action, Card, CdsResponse, Link, Source, Suggestion, to_json
from cds.ehr_profiles import GENERIC, PROFILE_DEFAULTS, EhrProfile, fhir_server_allowed, shape_cards, shape_response


def card(*, suggestions: bool = True, smart: bool = True, uuid: str = "c-1") -> Card:
    links = [Link(label="Evidence", url="https://pubmed.ncbi.nlm.nih.gov/33992236/", type="absolute")]
    if smart:
        links.append(Link(label="Exercise app", url="https://app.example.org/launch", type="smart", app_context="ex=bird-dog"))
    sugg = [Suggestion(label="Order", uuid="s-1", actions=[Action(type="create", description="order",
                                                                    resource={"resourceType": "ServiceRequest"})])]
    return Card(
        uuid=uuid, summary="Continue bird-dog", indicator="info", source=Source(label="lbp-cds"),
        suggestions=sugg if suggestions else [], selection_behavior="at-most-one" if suggestions else None,
        links=links,
    )


def test_generic_changes_nothing_and_returns_the_same_objects():
    response = CdsResponse(cards=[card()])
    assert shape_response(response, GENERIC) is response
    cards = [card()]
    assert shape_cards(cards, GENERIC)[0] is cards[0]


def test_epic_gets_selection_behavior_any_on_cards_with_suggestions_only():
    epic = EhrProfile(name="epic", **PROFILE_DEFAULTS["epic"])
    shaped = shape_response(CdsResponse(cards=[card(), card(suggestions=False, uuid="c-2")]), epic)
    wire = to_json(shaped)["cards"]
    assert wire[0]["selectionBehavior"] == "any"
    assert "selectionBehavior" not in wire[1]  # never added where there are no suggestions
    assert wire[0]["links"][1]["appContext"] == "ex=bird-dog"  # Epic keeps appContext
    assert Card.model_validate(wire[0]).selection_behavior == "any"  # still a valid card


def test_oracle_loses_app_context_but_keeps_the_link_and_everything_else():
    oracle = EhrProfile(name="oracle", **PROFILE_DEFAULTS["oracle"])
    original = card()
    (shaped,) = shape_cards([original], oracle)
    wire = to_json(CdsResponse(cards=[shaped]))["cards"][0]
    assert [link.get("appContext") for link in wire["links"]] == [None, None]
    assert [link["url"] for link in wire["links"]] == [link.url for link in original.links]
    assert wire["selectionBehavior"] == "at-most-one"
    assert original.links[1].app_context == "ex=bird-dog"  # the input is not changed
    plain = card(smart=False)
    assert shape_cards([plain], oracle)[0] is plain


def test_fhir_server_allow_list():
    allowed = ["https://fhir.example.org/api/FHIR/R4/"]
    assert fhir_server_allowed("https://fhir.example.org/api/FHIR/R4", allowed)
    assert fhir_server_allowed("HTTPS://FHIR.example.org/api/FHIR/R4/", allowed)
    assert not fhir_server_allowed("https://fhir.example.org/api/FHIR/R4/extra", allowed)
    assert not fhir_server_allowed("https://fhir.example.org/api/fhir/r4", allowed)  # paths are case-sensitive
    assert not fhir_server_allowed("https://fhir.example.org.evil.org/api/FHIR/R4", allowed)
    assert not fhir_server_allowed("http://fhir.example.org/api/FHIR/R4", allowed)
    assert fhir_server_allowed("https://anything.example.org", None)
