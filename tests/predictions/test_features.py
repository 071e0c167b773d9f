"""The features of a prefix against a hand computation from the raw events, and which prefixes training uses."""

from __future__ import annotations

import math
import uuid
import zoneinfo
from datetime import UTC, datetime, timedelta

import pytest

from metrics_app.models import AIMetric, Business
from metrics_app.predictions import services
from metrics_app.predictions.features import (
    EVENT_COLUMNS,
    PREFIX_CAP,
    Event,
    Vocabulary,
    current_features,
    feature_names,
    prefix_features,
)
from tests.predictions.helpers import store

NOW = datetime(2026, 6, 6, 12, 0, tzinfo=UTC)  # a Saturday
START = datetime(2026, 6, 5, 22, 50, tzinfo=UTC)  # Friday 23:50 in London (BST), Saturday 04:20 in Kolkata


def reply(n: int, minutes: float, **fields) -> dict:
    return {"event_id": str(uuid.UUID(int=1000 + n)), "business_id": "acme-dental", "conversation_id": "c1",
            "timestamp": (START + timedelta(minutes=minutes)).isoformat(), "response_time_ms": 1000,
            "tokens_used": 100, **fields}


EVENTS = [
    reply(0, 0, intent_detected="pricing", response_time_ms=400, prompt_version="v1", kb_version="kb-1"),
    reply(1, 5, intent_detected="booking", response_time_ms=1600, user_sentiment=0.5, prompt_version="v2",
          appointment_requested=True),
    reply(2, 15, intent_detected="parking", response_time_ms=1000, user_sentiment=-0.2, prompt_version="v9"),
    reply(3, 16, intent_detected="booking", appointment_booked=True),
    reply(4, 20, intent_detected="thanks"),
]


@pytest.fixture
def raw_events(business) -> list[Event]:
    store(EVENTS)
    rows = AIMetric.objects.filter(conversation_id="c1").order_by("timestamp", "id").values_list(*EVENT_COLUMNS)
    return [Event.from_row(row) for row in rows]


VOCABULARY = Vocabulary(intents=("booking", "pricing"), prompt_versions=("v1", "v2"), kb_versions=("", "kb-1"))


def test_a_prefix_has_the_features_a_hand_computation_gives(raw_events) -> None:
    names = feature_names(VOCABULARY)
    third = dict(zip(names, list(prefix_features(raw_events, VOCABULARY, zoneinfo.ZoneInfo("Europe/London")))[2],
                     strict=True))
    # The third reply: 23:50 + 15 min = 00:05 BST on Saturday; latencies 400, 1600, 1000; sentiments 0.5, -0.2.
    angle = 2 * math.pi * (0 + 5 / 60) / 24
    assert third == pytest.approx({
        "turns": 3, "log_minutes": math.log1p(15), "requested": 1, "handoff": 0,
        "log_latency_ms": math.log1p(1000), "hour_sin": math.sin(angle), "hour_cos": math.cos(angle),
        "weekend": 1, "has_sentiment": 1, "sentiment_latest": -0.2, "sentiment_mean": 0.15,
        "intent:booking": 1, "intent:pricing": 1, "intent:other": 1,  # "parking" is not in the vocabulary
        "prompt_version:v1": 0, "prompt_version:v2": 0, "prompt_version:other": 1,
        "kb_version:": 1, "kb_version:kb-1": 0, "kb_version:other": 0,
    })


def test_the_first_prefix_knows_only_the_first_reply(raw_events) -> None:
    names = feature_names(VOCABULARY)
    first = dict(zip(names, next(prefix_features(raw_events, VOCABULARY, zoneinfo.ZoneInfo("Europe/London"))),
                     strict=True))
    angle = 2 * math.pi * (23 + 50 / 60) / 24
    assert first == pytest.approx({
        "turns": 1, "log_minutes": 0, "requested": 0, "handoff": 0, "log_latency_ms": math.log1p(400),
        "hour_sin": math.sin(angle), "hour_cos": math.cos(angle), "weekend": 0,  # still Friday in London
        "has_sentiment": 0, "sentiment_latest": 0, "sentiment_mean": 0,
        "intent:booking": 0, "intent:pricing": 1, "intent:other": 0,
        "prompt_version:v1": 1, "prompt_version:v2": 0, "prompt_version:other": 0,
        "kb_version:": 0, "kb_version:kb-1": 1, "kb_version:other": 0,
    })


def test_the_hour_is_the_local_hour_of_the_business_zone_half_hour_offsets_included(raw_events) -> None:
    names = feature_names(VOCABULARY)
    first = dict(zip(names, next(prefix_features(raw_events, VOCABULARY, zoneinfo.ZoneInfo("Asia/Kolkata"))),
                     strict=True))
    angle = 2 * math.pi * (4 + 20 / 60) / 24  # 22:50 UTC is 04:20 on Saturday at +05:30
    assert (first["hour_sin"], first["hour_cos"], first["weekend"]) == pytest.approx(
        (math.sin(angle), math.cos(angle), 1))


def test_training_uses_only_the_prefixes_before_the_first_booked_reply(business) -> None:
    store(EVENTS)
    with_time = services.ended_conversations(business, NOW)
    (conversation,) = with_time
    assert conversation.booked and conversation.prefixes == 3  # the booking is the fourth reply
    rows = services.samples(with_time, VOCABULARY, zoneinfo.ZoneInfo(business.time_zone))
    assert rows.turns == [1, 2, 3] and rows.y.tolist() == [1.0, 1.0, 1.0]
    assert rows.weights.sum() == pytest.approx(1.0)  # the conversation counts once


def test_a_conversation_booked_on_its_first_reply_gives_no_prefix(business) -> None:
    store([reply(0, 0, appointment_booked=True), reply(1, 1)])
    (conversation,) = services.ended_conversations(business, NOW)
    assert conversation.prefixes == 0


def test_an_open_conversation_is_not_a_training_conversation(business) -> None:
    Business.objects.filter(id=business.id).update(conversation_idle_minutes=30)
    business.refresh_from_db()
    store(EVENTS)
    last = START + timedelta(minutes=20)
    assert services.ended_conversations(business, last + timedelta(minutes=29)) == []
    assert len(services.ended_conversations(business, last + timedelta(minutes=30))) == 1


def test_long_conversations_give_at_most_the_capped_prefixes_and_count_turns_up_to_the_cap(business) -> None:
    store([reply(n, n, intent_detected="general") for n in range(PREFIX_CAP + 5)])
    (conversation,) = services.ended_conversations(business, NOW)
    assert len(conversation.events) == conversation.prefixes == PREFIX_CAP
    events = [Event.from_row(row) for row in AIMetric.objects.order_by("timestamp", "id").values_list(*EVENT_COLUMNS)]
    latest = current_features(events, VOCABULARY, zoneinfo.ZoneInfo("UTC"))
    assert latest is not None and latest[0] == PREFIX_CAP
    assert latest[1] == pytest.approx(math.log1p(PREFIX_CAP + 4))  # minutes reach the last reply


def test_the_vocabulary_is_the_most_common_values_ties_by_name() -> None:
    def event(intent: str, prompt: str) -> Event:
        return Event(timestamp=NOW, intent=intent, requested=False, booked=False, handoff=False, latency_ms=None,
                     sentiment=None, prompt_version=prompt, kb_version="")

    conversations = [[event("b", "v2"), event("a", "v2")], [event("c", "v1"), event("b", "")], [event("", "")]]
    vocabulary = Vocabulary.of(conversations)
    assert vocabulary.intents == ("b", "a", "c")  # no intent is no value
    assert vocabulary.prompt_versions == ("", "v2", "v1")
    assert Vocabulary.from_json(vocabulary.as_json()) == vocabulary
