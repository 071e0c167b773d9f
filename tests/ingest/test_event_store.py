"""The ai_metrics table (and its dedupe keys) refuse what the API refuses, whoever writes to them."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from metrics_app.models import AIMetric, Business, EventKey

pytestmark = pytest.mark.django_db


def row(**fields) -> AIMetric:
    values = {"business_id": "acme", "response_time_ms": 100, "tokens_used": 10, "timestamp": timezone.now(), **fields}
    return AIMetric(**values)


@pytest.fixture(autouse=True)
def acme(db) -> Business:
    return Business.objects.create(id="acme")


@pytest.mark.parametrize(
    "fields",
    [
        {"response_time_ms": -1},
        {"response_time_ms": 3_600_001},
        {"success_rate": Decimal("1.5")},
        {"success_rate": Decimal("-0.5")},
        {"tokens_used": -1},
        {"input_tokens": 10_000_001},
        {"output_tokens": -3},
        {"api_cost_usd": Decimal("-0.01")},
        {"api_cost_usd": Decimal("1000.5")},
        {"user_message_length": -1},
        {"ai_response_length": 1_000_001},
    ],
)
def test_the_database_refuses_a_value_outside_the_apis_range(fields):
    with pytest.raises(IntegrityError), transaction.atomic():
        row(**fields).save()
    assert AIMetric.objects.count() == 0


def test_the_database_refuses_a_second_dedupe_key_with_the_same_business_and_event_id():
    event_id = uuid.uuid4()
    EventKey.objects.create(business_id="acme", event_id=event_id)
    with pytest.raises(IntegrityError), transaction.atomic():
        EventKey.objects.create(business_id="acme", event_id=event_id)
    EventKey.objects.create(business_id="other", event_id=event_id)
    assert EventKey.objects.count() == 2


def test_a_business_with_events_cannot_be_deleted(acme):
    from django.db.models import ProtectedError

    row().save()
    with pytest.raises(ProtectedError):
        acme.delete()
