"""POST /track/batch: valid events are stored even when others are rejected."""

from __future__ import annotations

import uuid

import pytest

from metrics_app.models import AIMetric
from tests.helpers import assert_error_shape, post_json

pytestmark = pytest.mark.django_db


def event(**fields):
    return {"business_id": "acme-dental", "response_time_ms": 800, "tokens_used": 120, **fields}


def test_a_clean_batch_is_stored_whole_and_answers_200(api):
    events = [event(event_id=str(uuid.uuid4()), conversation_id=f"c{i}") for i in range(25)]
    response = post_json(api, "/track/batch", {"events": events})

    assert response.status_code == 200
    body = response.json()
    assert (body["created"], body["duplicates"], body["rejected"]) == (25, 0, 0)
    assert [r["index"] for r in body["results"]] == list(range(25))
    assert [r["event_id"] for r in body["results"]] == [e["event_id"] for e in events]
    assert {r["status"] for r in body["results"]} == {"created"}
    assert AIMetric.objects.count() == 25


def test_a_mixed_batch_stores_the_valid_events_and_reports_each_one(api):
    stored_before = str(uuid.uuid4())
    post_json(api, "/track", event(event_id=stored_before))
    repeated = str(uuid.uuid4())
    events = [
        event(event_id=repeated),
        event(response_time_ms=-5),
        event(event_id=stored_before),
        "not an object",
        event(event_id=repeated, tokens_used=1),
        event(),
    ]
    response = post_json(api, "/track/batch", {"events": events})

    assert response.status_code == 207
    body = response.json()
    assert (body["created"], body["duplicates"], body["rejected"]) == (2, 2, 2)
    statuses = [r["status"] for r in body["results"]]
    assert statuses == ["created", "rejected", "duplicate", "rejected", "duplicate", "created"]
    assert body["results"][1]["errors"] == {"response_time_ms": ["must be between 0 and 3600000"]}
    assert "non_field_errors" in body["results"][3]["errors"]
    assert body["results"][4]["event_id"] == repeated
    assert AIMetric.objects.count() == 3
    # The first write of a repeated id stands.
    assert AIMetric.objects.get(event_id=repeated).tokens_used == 120


def test_a_batch_where_every_event_is_rejected_stores_nothing(api):
    response = post_json(api, "/track/batch", {"events": [event(tokens_used="1"), event(business_id="")]})
    assert response.status_code == 207
    assert response.json()["rejected"] == 2
    assert AIMetric.objects.count() == 0


def test_resending_a_whole_batch_creates_nothing_new(api):
    events = [event(event_id=str(uuid.uuid4())) for _ in range(10)]
    post_json(api, "/track/batch", {"events": events})
    body = post_json(api, "/track/batch", {"events": events}).json()
    assert (body["created"], body["duplicates"]) == (0, 10)
    assert AIMetric.objects.count() == 10


def test_events_of_several_businesses_in_one_batch_are_stored_under_each(api):
    events = [event(business_id=f"biz-{i % 3}") for i in range(9)]
    assert post_json(api, "/track/batch", {"events": events}).status_code == 200
    counts = {b: AIMetric.objects.filter(business_id=b).count() for b in ("biz-0", "biz-1", "biz-2")}
    assert counts == {"biz-0": 3, "biz-1": 3, "biz-2": 3}


@pytest.mark.parametrize(
    "payload",
    [
        {"events": []},
        {"events": "nope"},
        {"event": [{"business_id": "b"}]},
        [{"business_id": "b"}],
        {"events": [event()] * 501},
    ],
)
def test_a_malformed_batch_is_refused_whole(api, payload):
    assert_error_shape(post_json(api, "/track/batch", payload), 400, "events")
    assert AIMetric.objects.count() == 0


def test_a_batch_over_one_mebibyte_is_refused_with_413(api):
    events = [event(note="x" * 4000) for _ in range(300)]
    assert_error_shape(post_json(api, "/track/batch", {"events": events}), 413)
    assert AIMetric.objects.count() == 0


def test_five_hundred_events_fit_in_one_batch(api):
    events = [event(conversation_id=f"conv-{i}", intent_detected="pricing") for i in range(500)]
    body = post_json(api, "/track/batch", {"events": events}).json()
    assert body["created"] == 500
    assert AIMetric.objects.count() == 500


def test_the_batch_endpoint_takes_a_trailing_slash_and_refuses_get(api):
    assert post_json(api, "/track/batch/", {"events": [event()]}).status_code == 200
    assert_error_shape(api.get("/track/batch"), 405)
