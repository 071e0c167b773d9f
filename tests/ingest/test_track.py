"""POST /track: the seed's payloads, the field rules and the one error shape."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from metrics_app.models import AIMetric, Business
from tests.helpers import assert_error_shape, post_json

pytestmark = pytest.mark.django_db


def only_event() -> AIMetric:
    (event,) = AIMetric.objects.all()
    return event


def test_the_seed_curl_example_is_stored_as_sent(api, seed_event):
    response = post_json(api, "/track", seed_event)

    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "success"
    assert body["message"] == "Metrics tracked successfully"
    assert uuid.UUID(body["event_id"])
    assert datetime.fromisoformat(body["timestamp"])
    event = only_event()
    assert str(event.event_id) == body["event_id"]
    assert event.business_id == "test-business"
    assert event.response_time_ms == 1500
    assert event.tokens_used == 150
    assert event.api_cost_usd == Decimal("0.002000")
    assert event.intent_detected == "general"
    assert event.response_type == "text"
    assert event.success_rate == Decimal("1")
    assert event.appointment_booked is False
    assert event.model_name is None  # absent means unknown, not the seed's Gemini default
    assert Business.objects.filter(pk="test-business").exists()


def test_the_seed_clients_full_payload_with_a_trailing_slash_is_stored(api):
    payload = {
        "business_id": "test-business", "conversation_id": "c1", "session_id": "s1",
        "response_time_ms": 1500, "success_rate": 1.0, "tokens_used": 150, "api_cost_usd": 0.002,
        "model_name": "gemini-1.5-flash", "intent_detected": "general", "appointment_requested": False,
        "human_handoff_requested": False, "user_message_length": 45, "ai_response_length": 120,
        "response_type": "text",
    }
    response = post_json(api, "/track/", payload)

    assert response.status_code == 201
    event = only_event()
    assert (event.conversation_id, event.session_id, event.model_name) == ("c1", "s1", "gemini-1.5-flash")


def test_the_seeds_failure_event_is_stored_as_a_failed_reply(api):
    payload = {
        "business_id": "unknown", "session_id": "s", "response_time_ms": 30, "success_rate": 0.0,
        "tokens_used": 0, "api_cost_usd": 0, "intent_detected": "error", "appointment_requested": False,
        "human_handoff_requested": True, "user_message_length": 0, "ai_response_length": 0,
        "response_type": "error",
    }
    assert post_json(api, "/track", payload).status_code == 201
    event = only_event()
    assert event.failed and event.human_handoff_requested and event.success_rate == 0


def test_the_optional_fields_of_the_brief_are_stored(api, seed_event):
    event_id = str(uuid.uuid4())
    seed_event.update(
        event_id=event_id, timestamp="2026-11-20T09:30:00+05:30", input_tokens=100, output_tokens=50,
        prompt_version="v3", kb_version="kb-abc123",
    )
    response = post_json(api, "/track", seed_event)

    assert response.status_code == 201
    assert response.json()["event_id"] == event_id
    event = only_event()
    assert event.timestamp == datetime(2026, 11, 20, 4, 0, tzinfo=UTC)
    assert (event.input_tokens, event.output_tokens, event.prompt_version, event.kb_version) == (
        100, 50, "v3", "kb-abc123",
    )


def test_a_timestamp_without_a_zone_is_utc(api, seed_event):
    seed_event["timestamp"] = "2026-11-20T09:30:00.123456"  # what the seed's utcnow().isoformat() sends
    post_json(api, "/track", seed_event)
    assert only_event().timestamp == datetime(2026, 11, 20, 9, 30, 0, 123456, tzinfo=UTC)


def test_the_receive_time_stands_in_for_a_missing_timestamp(api, seed_event):
    before = datetime.now(UTC)
    post_json(api, "/track", seed_event)
    event = only_event()
    assert before <= event.timestamp <= datetime.now(UTC)
    assert event.timestamp == event.created_at


def test_an_integral_float_is_taken_as_an_integer(api, seed_event):
    seed_event.update(response_time_ms=1500.0, tokens_used=150.0)
    assert post_json(api, "/track", seed_event).status_code == 201
    event = only_event()
    assert (event.response_time_ms, event.tokens_used) == (1500, 150)


def test_null_is_the_same_as_leaving_a_field_out(api, seed_event):
    seed_event.update(success_rate=None, model_name=None, appointment_booked=None, event_id=None, timestamp=None)
    assert post_json(api, "/track", seed_event).status_code == 201
    event = only_event()
    assert event.success_rate == 1 and event.model_name is None and event.appointment_booked is False


def test_unknown_fields_are_ignored_and_listed_back(api, seed_event):
    seed_event.update(mlflow_run_id="x", ai_message="text that must not be stored")
    response = post_json(api, "/track", seed_event)
    assert response.status_code == 201
    assert response.json()["ignored_fields"] == ["mlflow_run_id", "ai_message"]


def test_a_repeated_event_id_is_stored_once_and_the_first_write_stands(api, seed_event):
    seed_event["event_id"] = event_id = str(uuid.uuid4())
    first = post_json(api, "/track", seed_event)
    seed_event["tokens_used"] = 999
    second = post_json(api, "/track", seed_event)

    assert first.status_code == 201
    assert second.status_code == 200
    assert second.json()["duplicate"] is True
    assert second.json()["event_id"] == event_id
    assert only_event().tokens_used == 150


def test_the_same_event_id_under_two_businesses_is_two_events(api, seed_event):
    seed_event["event_id"] = str(uuid.uuid4())
    assert post_json(api, "/track", seed_event).status_code == 201
    seed_event["business_id"] = "other-business"
    assert post_json(api, "/track", seed_event).status_code == 201
    assert AIMetric.objects.count() == 2


def test_an_uppercase_event_id_is_the_same_event(api, seed_event):
    event_id = uuid.uuid4()
    seed_event["event_id"] = str(event_id)
    post_json(api, "/track", seed_event)
    seed_event["event_id"] = str(event_id).upper()
    assert post_json(api, "/track", seed_event).json()["duplicate"] is True


@pytest.mark.parametrize(
    "field, value",
    [
        ("business_id", None),
        ("response_time_ms", None),
        ("tokens_used", None),
        ("response_time_ms", "1500"),
        ("tokens_used", "150"),
        ("response_time_ms", -1),
        ("response_time_ms", 1500.5),
        ("response_time_ms", 10**12),
        ("response_time_ms", True),
        ("tokens_used", -5),
        ("tokens_used", 10**20),
        ("success_rate", 1.5),
        ("success_rate", -0.1),
        ("success_rate", "1"),
        ("api_cost_usd", -0.01),
        ("api_cost_usd", 1e9),
        ("api_cost_usd", "0.002"),
        ("appointment_requested", "true"),
        ("appointment_requested", 1),
        ("intent_detected", "x" * 101),
        ("response_type", "y" * 51),
        ("model_name", 42),
        ("business_id", ""),
        ("business_id", "a" * 256),
        ("business_id", "acme\ndental"),
        ("business_id", "bad id with spaces"),
        ("conversation_id", "c1\x00"),
        ("session_id", "s\x1b[31m"),
        ("event_id", "not-a-uuid"),
        ("event_id", 12345),
        ("timestamp", "yesterday"),
        ("timestamp", "1999-12-31T23:59:59Z"),
        ("timestamp", "2999-01-01T00:00:00Z"),
        ("user_message_length", -1),
        ("input_tokens", 1.25),
        ("cache_read_input_tokens", -1),
        ("cache_write_input_tokens", "10"),
        ("reasoning_output_tokens", 0.5),
    ],
)
def test_a_bad_field_is_refused_by_name_and_nothing_is_stored(api, seed_event, field, value):
    if value is None:
        del seed_event[field]
    else:
        seed_event[field] = value
    response = post_json(api, "/track", seed_event)

    assert_error_shape(response, 400, field)
    assert AIMetric.objects.count() == 0


@pytest.mark.parametrize(
    "tokens, field",
    [
        ({"input_tokens": 100, "output_tokens": 50, "cache_read_input_tokens": 101}, "cache_read_input_tokens"),
        ({"input_tokens": 100, "output_tokens": 50, "cache_read_input_tokens": 60, "cache_write_input_tokens": 41},
         "cache_write_input_tokens"),
        ({"input_tokens": 100, "output_tokens": 50, "reasoning_output_tokens": 51}, "reasoning_output_tokens"),
    ],
)
def test_cached_or_reasoning_tokens_beyond_their_total_are_refused_by_name(api, seed_event, tokens, field):
    seed_event.update(tokens_used=150, **tokens)
    response = post_json(api, "/track", seed_event)

    assert "must not exceed" in assert_error_shape(response, 400, field)["errors"][field][0]
    assert AIMetric.objects.count() == 0


@pytest.mark.parametrize(
    "tokens, field",
    [
        ({"output_tokens": 30, "cache_read_input_tokens": 20}, "cache_read_input_tokens"),
        ({"cache_write_input_tokens": 20}, "cache_write_input_tokens"),
        ({"input_tokens": 100, "reasoning_output_tokens": 10}, "reasoning_output_tokens"),
    ],
)
def test_cached_or_reasoning_tokens_without_their_total_are_refused_by_name(api, seed_event, tokens, field):
    # A part of a total nobody sent cannot be priced or shared out: the cached share would count it against 0.
    seed_event.update(tokens_used=150, **tokens)
    response = post_json(api, "/track", seed_event)

    assert "needs" in assert_error_shape(response, 400, field)["errors"][field][0]
    assert AIMetric.objects.count() == 0


def test_cached_and_reasoning_tokens_within_their_totals_are_stored(api, seed_event):
    seed_event.update(tokens_used=150, input_tokens=100, output_tokens=50, cache_read_input_tokens=70,
                      cache_write_input_tokens=30, reasoning_output_tokens=50)
    assert post_json(api, "/track", seed_event).status_code == 201
    stored = AIMetric.objects.get()
    assert (stored.cache_read_input_tokens, stored.cache_write_input_tokens, stored.reasoning_output_tokens) == (
        70, 30, 50)


def test_every_bad_field_is_named_at_once(api):
    response = post_json(api, "/track", {"business_id": "b", "response_time_ms": "fast", "success_rate": 2})
    body = assert_error_shape(response, 400, "response_time_ms", "tokens_used", "success_rate")
    assert "business_id" not in body["errors"]


@pytest.mark.parametrize(
    "raw, content_type, status",
    [
        (b'{"business_id": "b", ', "application/json", 400),
        (b"[1, 2, 3]", "application/json", 400),
        (b'"just a string"', "application/json", 400),
        (b"null", "application/json", 400),
        (b"  \n", "application/json", 400),
        (b'{"business_id": "b", "response_time_ms": NaN, "tokens_used": 1}', "application/json", 400),
        (b'{"business_id": "b", "response_time_ms": Infinity, "tokens_used": 1}', "application/json", 400),
        (b"\xff\xfe{}", "application/json", 400),
        (b"business_id=b", "application/x-www-form-urlencoded", 415),
        (b'{"business_id": "b"}', "text/plain", 415),
    ],
)
def test_a_body_that_is_not_a_json_object_is_refused(api, raw, content_type, status):
    response = api.post("/track", data=raw, content_type=content_type)
    assert_error_shape(response, status)
    assert AIMetric.objects.count() == 0


def test_a_missing_content_type_is_refused_with_415(api, seed_event):
    response = api.generic("POST", "/track", json.dumps(seed_event).encode(), content_type="")
    assert_error_shape(response, 415)


def test_an_oversized_body_is_refused_with_413(api, seed_event):
    seed_event["padding"] = "x" * (70 * 1024)
    assert_error_shape(post_json(api, "/track", seed_event), 413, "body")
    assert AIMetric.objects.count() == 0


@pytest.mark.parametrize("method", ["get", "put", "delete", "patch"])
def test_other_methods_are_refused_with_405(api, method):
    response = getattr(api, method)("/track")
    assert_error_shape(response, 405)
    assert response["Allow"] == "POST"


def test_an_unknown_path_answers_404_in_the_error_shape(api):
    assert_error_shape(api.get("/no/such/endpoint"), 404)


def test_empty_optional_strings_are_stored_as_absent(api, seed_event):
    seed_event.update(intent_detected="", conversation_id="  ")
    post_json(api, "/track", seed_event)
    event = only_event()
    assert event.intent_detected is None and event.conversation_id is None


def test_a_timestamp_a_little_in_the_future_is_accepted(api, seed_event):
    moment = datetime.now(UTC) + timedelta(hours=1)
    seed_event["timestamp"] = moment.isoformat()
    assert post_json(api, "/track", seed_event).status_code == 201
    assert only_event().timestamp == moment
