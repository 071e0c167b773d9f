"""When a conversation ends (the business's idle time), its latest sentiment, and the ones that ended negative."""

from __future__ import annotations

import random
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from metrics_app.conversations.services import rebuild_conversations
from metrics_app.models import AIMetric, Business, Conversation
from tests.analytics.helpers import NOW
from tests.analytics.helpers import store as store_unfolded
from tests.helpers import assert_error_shape, fold_all, post_json

pytestmark = pytest.mark.django_db

NEGATIVE = Decimal("-0.05")


def event(n: int, conversation: str, minutes_ago: float, business: str = "acme-dental", **fields: Any) -> dict:
    return {
        "event_id": f"00000000-0000-4000-8000-{n:012d}", "business_id": business,
        "conversation_id": conversation, "response_time_ms": 900, "tokens_used": 50,
        "timestamp": (NOW - timedelta(minutes=minutes_ago)).isoformat(), **fields,
    }


def latest_scores() -> dict[tuple[str, str], tuple[Decimal | None, Any]]:
    """Each conversation's latest scored event, by time and then id, from the raw rows in plain Python."""
    found: dict[tuple[str, str], tuple[Any, int, Decimal]] = {}
    for row in AIMetric.objects.exclude(conversation_id=None).order_by():
        key = (row.business_id, row.conversation_id)
        found.setdefault(key, (None, -1, None))  # type: ignore[arg-type]
        if row.user_sentiment is None:
            continue
        at, pk, _ = found[key]
        if at is None or (row.timestamp, row.id) > (at, pk):
            found[key] = (row.timestamp, row.id, row.user_sentiment)
    return {key: (score, at) for key, (at, _, score) in found.items()}


def stored_scores() -> dict[tuple[str, str], tuple[Decimal | None, Any]]:
    return {(c.business_id, c.conversation_id): (c.last_sentiment, c.last_sentiment_at)
            for c in Conversation.objects.all()}


def test_the_latest_scored_event_is_the_conversations_sentiment_folded_in_any_order_and_rebuilt(business):
    rng = random.Random(5)
    events = []
    for n in range(300):
        scored = rng.random() < 0.6
        events.append(event(n, f"chat-{n % 40}", minutes_ago=rng.randrange(0, 600) + rng.choice([0, 0.5]),
                            **({"user_sentiment": round(rng.uniform(-1, 1), 4)} if scored else {})))
    # Two events of one conversation at the same moment: the later one stored (higher id) wins.
    events += [event(1000, "tie", 5, user_sentiment=0.5), event(1001, "tie", 5, user_sentiment=-0.5)]
    rng.shuffle(events)
    for start in range(0, len(events), 37):  # batches that split conversations, late events included
        store_unfolded(events[start:start + 37])
        fold_all()
    expected = latest_scores()
    assert stored_scores() == expected
    stored_later = AIMetric.objects.filter(conversation_id="tie").order_by("-id").first()
    assert expected[("acme-dental", "tie")][0] == stored_later.user_sentiment
    assert sum(score is None for score, _ in expected.values()) < len(expected)  # some scored, and
    assert rebuild_conversations() == len(expected)
    assert stored_scores() == expected


def test_who_scored_an_event_is_kept(api, seed_event):
    sent = [
        {"user_sentiment": 0.3},
        {"user_message": "Wonderful, thank you!"},
        {"user_sentiment": -0.2, "user_message": "Wonderful, thank you!"},
        {},
    ]
    for n, fields in enumerate(sent):
        assert post_json(api, "/track", {**seed_event, "conversation_id": f"c{n}", **fields}).status_code == 201
    sources = dict(AIMetric.objects.values_list("conversation_id", "sentiment_source"))
    assert sources == {"c0": "client", "c1": "vader", "c2": "client", "c3": None}


def _conversations(api, headers: dict[str, str], **query: Any) -> dict[str, dict]:
    params = {"start": (NOW - timedelta(days=2)).isoformat(), "end": NOW.isoformat(), "limit": 200, **query}
    response = api.get("/api/conversations/", params, **headers)
    assert response.status_code == 200, response.content
    return {c["conversation_id"]: c for c in response.json()["conversations"]}


@pytest.fixture
def reader(make_key, business) -> dict[str, str]:
    _, raw = make_key(business, can_ingest=False, can_read=True)
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def _mixed_endings(business: Business) -> list[dict]:
    """Conversations of every kind: open, ended, negative or not, booked, handed off, unscored; another business."""
    Business.objects.create(id="other-clinic", conversation_idle_minutes=30)
    return [
        event(1, "open-negative", 10, user_sentiment=-0.8),  # 10 minutes quiet: open at a 30-minute idle time
        event(2, "ended-negative", 45, user_sentiment=0.6),
        event(3, "ended-negative", 40, user_sentiment=-0.4),  # the latest score decides
        event(4, "ended-recovered", 50, user_sentiment=-0.9),
        event(5, "ended-recovered", 35, user_sentiment=0.2),
        event(6, "ended-booked", 60, user_sentiment=-0.7, appointment_booked=True),
        event(7, "ended-handoff", 60, user_sentiment=-0.7, human_handoff_requested=True),
        event(8, "ended-unscored", 60),
        event(9, "ended-borderline", 90, user_sentiment=-0.05),  # at the threshold is negative
        event(10, "ended-neutral", 90, user_sentiment=-0.0499),
        event(11, "other-negative", 90, business="other-clinic", user_sentiment=-0.9),
    ]


def test_a_conversation_ends_after_its_businesss_idle_time_and_the_negative_endings_are_listed(api, business, reader):
    store_unfolded(_mixed_endings(business))
    fold_all()
    with time_machine.travel(NOW, tick=False):
        every = _conversations(api, reader)
        negative = _conversations(api, reader, ended_negative="true")
        others = _conversations(api, reader, ended_negative="false")
        opened = _conversations(api, reader, state="open")
        ended = _conversations(api, reader, state="ended")
    # By construction: ended when 30 minutes passed since the last event; negative at or below -0.05.
    expected_negative = {"ended-negative", "ended-borderline"}
    assert set(negative) == expected_negative
    assert set(others) == set(every) - expected_negative
    assert set(opened) == {"open-negative"}
    assert set(ended) == set(every) - {"open-negative"}
    assert "other-negative" not in every  # the key reads its own business only
    assert every["open-negative"]["state"] == "open"
    assert every["open-negative"]["ends_at"] == (NOW + timedelta(minutes=20)).isoformat().replace("+00:00", "Z")
    assert every["ended-negative"]["last_sentiment"] == -0.4
    assert every["ended-recovered"]["last_sentiment"] == 0.2
    assert every["ended-unscored"]["last_sentiment"] is None


def test_a_longer_idle_time_keeps_a_conversation_open(api, business, reader):
    store_unfolded(_mixed_endings(business))
    fold_all()
    Business.objects.filter(pk=business.pk).update(conversation_idle_minutes=120)
    with time_machine.travel(NOW, tick=False):
        assert set(_conversations(api, reader, state="ended")) == set()
        assert _conversations(api, reader, ended_negative="true") == {}
    with time_machine.travel(NOW + timedelta(minutes=80), tick=False):  # 120 minutes after "ended-negative"
        assert set(_conversations(api, reader, ended_negative="true")) == {"ended-negative", "ended-borderline"}
        # Its last event 115 minutes ago, and the open one's 90.
        assert set(_conversations(api, reader, state="open")) == {"open-negative", "ended-recovered"}


@pytest.mark.parametrize(("param", "value"), [("state", "closed"), ("ended_negative", "maybe")])
def test_a_bad_state_filter_is_a_400_naming_it(api, business, reader, param, value):
    response = api.get("/api/conversations/", {param: value}, **reader)
    assert_error_shape(response, 400, param)


def test_the_admin_lists_the_negative_endings_of_the_businesses_it_may_see(business, staff_factory, logged_in):
    store_unfolded(_mixed_endings(business))
    fold_all()
    limited = logged_in(staff_factory("front-desk", businesses=["acme-dental"]))
    everyone = logged_in(staff_factory("agency"))
    with time_machine.travel(NOW, tick=False):
        pages = [client.get("/admin/metrics_app/conversation/", {"state": "ended_negative"})
                 for client in (limited, everyone)]
    assert [page.status_code for page in pages] == [200, 200]
    listed = [{c.conversation_id for c in page.context["cl"].result_list} for page in pages]
    assert listed == [{"ended-negative", "ended-borderline"}, {"ended-negative", "ended-borderline", "other-negative"}]


@pytest.mark.parametrize("minutes", [0, 1441])
def test_an_idle_time_out_of_range_is_refused_by_the_model_and_the_database(business, minutes):
    business.conversation_idle_minutes = minutes
    with pytest.raises(ValidationError) as refused:
        business.full_clean()
    assert "conversation_idle_minutes" in refused.value.message_dict
    with pytest.raises(IntegrityError), transaction.atomic():
        Business.objects.filter(pk=business.pk).update(conversation_idle_minutes=minutes)
