"""Feedback request validation (SPEC §3): what is accepted, and errors that name the field."""

from __future__ import annotations

import copy
import datetime as dt
import uuid

import pytest

from cds.feedback import FeedbackError, FeedbackItem, FeedbackRequest, format_loc, parse_feedback

CARD = "2b9e4d0a-7a51-4c56-9a5e-4c7d0f1c2e11"
SUGG = "c8a1f3a2-1d0b-4f6e-8e0e-3f9a2b1c0d99"

ACCEPTED = {
    "card": CARD,
    "outcome": "accepted",
    "acceptedSuggestions": [{"id": SUGG}],
    "outcomeTimestamp": "2025-03-01T12:00:00Z",
}
OVERRIDDEN = {
    "card": CARD,
    "outcome": "overridden",
    "overrideReason": {
        "reason": {"system": "http://example.org/override", "code": "not-relevant", "display": "Not relevant"},
        "userComment": "patient already on a programme",
    },
    "outcomeTimestamp": "2025-03-01T13:00:00+01:00",
}


def body(*items):
    return {"feedback": [copy.deepcopy(i) for i in items]}


def error_of(data) -> FeedbackError:
    with pytest.raises(FeedbackError) as info:
        parse_feedback(data)
    return info.value


def test_valid_accepted_and_overridden():
    req = parse_feedback(body(ACCEPTED, OVERRIDDEN))
    assert isinstance(req, FeedbackRequest)
    a, o = req.feedback
    assert a.outcome == "accepted" and a.suggestion_ids == (SUGG,)
    assert o.overrideReason.reason.code == "not-relevant"
    assert o.outcomeTimestamp == dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.timezone.utc)  # normalised to UTC


def test_minimal_overridden_without_reason():
    item = {"card": CARD, "outcome": "overridden", "outcomeTimestamp": "2025-03-01T12:00:00Z"}
    assert parse_feedback(body(item)).feedback[0].overrideReason is None


def test_naive_timestamp_taken_as_utc():
    item = dict(ACCEPTED, outcomeTimestamp="2025-03-01T12:00:00")
    ts = parse_feedback(body(item)).feedback[0].outcomeTimestamp
    assert ts.tzinfo is not None and ts.utcoffset() == dt.timedelta(0)


def test_uuid_normalised():
    item = dict(ACCEPTED, card=CARD.upper())
    assert parse_feedback(body(item)).feedback[0].card == CARD


def test_extension_allowed():
    item = dict(ACCEPTED, extension={"com.example.ehr": {"x": 1}})
    req = parse_feedback({**body(item), "extension": {"com.example": True}})
    assert req.feedback[0].extension == {"com.example.ehr": {"x": 1}}


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda i: i.pop("acceptedSuggestions"), "feedback[0].acceptedSuggestions"),
        (lambda i: i.update(acceptedSuggestions=[]), "feedback[0].acceptedSuggestions"),
        (lambda i: i.update(acceptedSuggestions=[{}]), "feedback[0].acceptedSuggestions[0].id"),
        (lambda i: i.update(acceptedSuggestions=[{"id": "nope"}]), "feedback[0].acceptedSuggestions[0].id"),
        (lambda i: i.pop("card"), "feedback[0].card"),
        (lambda i: i.update(card="not-a-uuid"), "feedback[0].card"),
        (lambda i: i.update(card=123), "feedback[0].card"),
        (lambda i: i.update(outcome="ignored"), "feedback[0].outcome"),
        (lambda i: i.pop("outcome"), "feedback[0].outcome"),
        (lambda i: i.pop("outcomeTimestamp"), "feedback[0].outcomeTimestamp"),
        (lambda i: i.update(outcomeTimestamp="yesterday"), "feedback[0].outcomeTimestamp"),
        (lambda i: i.update(outcomeTimestamp="2025-03-01"), "feedback[0].outcomeTimestamp"),
        (lambda i: i.update(outcomeTimestamp=1740830400), "feedback[0].outcomeTimestamp"),
        (lambda i: i.update(overrideReasons=[{"reason": {"code": "x"}}]), "feedback[0].overrideReasons[0].reason.system"),
        (lambda i: i.update(overrideReasons="x"), "feedback[0].overrideReasons"),
    ],
)
def test_errors_name_the_field(mutate, field):
    item = copy.deepcopy(ACCEPTED)
    mutate(item)
    err = error_of(body(item))
    assert err.field == field
    assert str(err).startswith(field + ": ")


def test_error_path_indexes_the_item():
    bad = dict(ACCEPTED)
    del bad["acceptedSuggestions"]
    err = error_of(body(OVERRIDDEN, ACCEPTED, bad))
    assert err.field == "feedback[2].acceptedSuggestions"
    assert "accepted" in str(err)


def test_override_reason_errors():
    item = copy.deepcopy(OVERRIDDEN)
    del item["overrideReason"]["reason"]["code"]
    assert error_of(body(item)).field == "feedback[0].overrideReason.reason.code"
    item = copy.deepcopy(OVERRIDDEN)
    item["overrideReason"]["reason"]["system"] = ""
    assert error_of(body(item)).field == "feedback[0].overrideReason.reason.system"


@pytest.mark.parametrize(
    "data, field",
    [
        ({}, "feedback"),
        ({"feedback": []}, "feedback"),
        ({"feedback": "x"}, "feedback"),
        ({"feedback": [None]}, "feedback[0]"),
        ({"feedback": [ACCEPTED, "x"]}, "feedback[1]"),
        ([ACCEPTED], "(body)"),
        (None, "(body)"),
    ],
)
def test_top_level_errors(data, field):
    assert error_of(data).field == field


def test_several_errors_are_all_listed():
    err = error_of({"feedback": [{"outcome": "accepted"}]})
    fields = {f for f, _ in err.errors}
    assert {"feedback[0].card", "feedback[0].acceptedSuggestions", "feedback[0].outcomeTimestamp"} <= fields
    assert "more error" in str(err)


def test_content_hash_identity():
    a = FeedbackItem.model_validate(ACCEPTED)
    same = FeedbackItem.model_validate(
        dict(ACCEPTED, card=CARD.upper(), outcomeTimestamp="2025-03-01T14:00:00+02:00", extension={"x": 1})
    )
    assert a.content_hash("svc") == same.content_hash("svc")
    later = FeedbackItem.model_validate(dict(ACCEPTED, outcomeTimestamp="2025-03-01T12:00:01Z"))
    other_sugg = FeedbackItem.model_validate(dict(ACCEPTED, acceptedSuggestions=[{"id": str(uuid.uuid4())}]))
    assert len({a.content_hash("svc"), later.content_hash("svc"), other_sugg.content_hash("svc"), a.content_hash("x")}) == 4
    o = FeedbackItem.model_validate(OVERRIDDEN)
    o2 = FeedbackItem.model_validate({**OVERRIDDEN, "overrideReason": {**OVERRIDDEN["overrideReason"], "userComment": "y"}})
    assert o.content_hash("svc") != o2.content_hash("svc")


def test_format_loc():
    assert format_loc(("feedback", 0, "acceptedSuggestions", 1, "id")) == "feedback[0].acceptedSuggestions[1].id"
    assert format_loc(()) == "(body)"


# ---- liberal where clients vary (issue 11) ---------------------------------------------------------


def test_unknown_fields_at_every_level_are_ignored_and_named():
    item = copy.deepcopy(OVERRIDDEN)
    item["surprise"] = {"deep": 1}
    item["overrideReason"]["note"] = "x"
    item["overrideReason"]["reason"]["version"] = "1"
    req = parse_feedback({**body(item), "other": 1})
    assert req.ignored_fields == ("note", "other", "surprise", "version")
    parsed = req.feedback[0]
    assert parsed.overrideReason.reason.code == "not-relevant"
    assert "surprise" not in parsed.canonical() and "note" not in parsed.canonical()["overrideReason"]
    # ignoring them does not change the report's identity
    assert parsed.content_hash("svc") == FeedbackItem.model_validate(OVERRIDDEN).content_hash("svc")


def test_a_known_report_ignores_nothing():
    assert parse_feedback(body(ACCEPTED, OVERRIDDEN)).ignored_fields == ()


def test_extension_contents_are_never_looked_into():
    item = dict(ACCEPTED, extension={"com.epic.cdshooks.feedback.anything": {"surprise": 1}})
    req = parse_feedback(body(item))
    assert req.ignored_fields == ()
    assert req.feedback[0].extension == {"com.epic.cdshooks.feedback.anything": {"surprise": 1}}


def test_epic_override_reasons_list_of_reasons_or_codings():
    coding = {"system": "http://example.org/override", "code": "not-relevant", "display": "Not relevant"}
    other = {"system": "http://example.org/override", "code": "patient-declined"}
    for reasons in ([{"reason": coding, "userComment": "c"}, {"reason": other}], [coding, other]):
        item = {"card": CARD, "outcome": "overridden", "outcomeTimestamp": "2025-03-01T12:00:00Z",
                "overrideReasons": reasons}
        parsed = parse_feedback(body(item)).feedback[0]
        assert parsed.overrideReason is not None and parsed.overrideReason.reason.code == "not-relevant"
        assert [r.reason.code for r in parsed.overrideReasons] == ["not-relevant", "patient-declined"]
        assert [r["reason"]["code"] for r in parsed.canonical()["overrideReasons"]] == ["not-relevant", "patient-declined"]
    # the list takes part in the identity: a different second reason is a different report
    one = {"card": CARD, "outcome": "overridden", "outcomeTimestamp": "2025-03-01T12:00:00Z", "overrideReasons": [coding]}
    two = dict(one, overrideReasons=[coding, other])
    a, b = (parse_feedback(body(x)).feedback[0] for x in (one, two))
    assert a.content_hash("svc") != b.content_hash("svc")


def test_an_explicit_override_reason_wins_over_the_list():
    item = copy.deepcopy(OVERRIDDEN)
    item["overrideReasons"] = [{"system": "http://example.org/override", "code": "other"}]
    assert parse_feedback(body(item)).feedback[0].overrideReason.reason.code == "not-relevant"


def test_sandbox_reason_without_display():
    item = {"card": CARD, "outcome": "overridden", "outcomeTimestamp": "2025-03-01T12:00:00Z",
            "overrideReason": {"reason": {"system": "http://example.org/override", "code": "not-relevant"}}}
    reason = parse_feedback(body(item)).feedback[0].overrideReason.reason
    assert reason.code == "not-relevant" and reason.display is None
