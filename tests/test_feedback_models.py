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
        (lambda i: i.update(surprise=1), "feedback[0].surprise"),
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
    item["overrideReason"]["note"] = "x"
    assert error_of(body(item)).field == "feedback[0].overrideReason.note"


@pytest.mark.parametrize(
    "data, field",
    [
        ({}, "feedback"),
        ({"feedback": []}, "feedback"),
        ({"feedback": "x"}, "feedback"),
        ({"feedback": [None]}, "feedback[0]"),
        ({"feedback": [ACCEPTED], "other": 1}, "other"),
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
