"""Training on synthetic conversations: with a booking signal the model beats the base rate and is calibrated;
without one, or with too few conversations, the business gets no predictions and is told why. Every figure is
recomputed here from the raw rows or the held-out predictions."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import time_machine

from metrics_app.models import AIMetric, BookingModel, BookingModelStatus, Conversation
from metrics_app.predictions import services
from metrics_app.predictions.features import PREFIX_CAP
from tests.predictions.helpers import chat_events, store

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def train(business):
    with time_machine.travel(NOW, tick=False):
        return services.train(business)


def raw_conversations(business_id: str) -> list[dict]:
    """Each ended conversation with a prefix, from the raw events: first event, label, prefixes before booking."""
    events = defaultdict(list)
    for row in AIMetric.objects.filter(business_id=business_id).values(
            "conversation_id", "timestamp", "id", "appointment_booked"):
        events[row["conversation_id"]].append(row)
    found = []
    for conversation_id, rows in events.items():
        rows.sort(key=lambda r: (r["timestamp"], r["id"]))
        booked_at = next((i for i, r in enumerate(rows) if r["appointment_booked"]), None)
        prefixes = min(len(rows), PREFIX_CAP) if booked_at is None else min(booked_at, PREFIX_CAP)
        if prefixes and rows[-1]["timestamp"] <= NOW - timedelta(minutes=30):
            found.append({"id": conversation_id, "first": rows[0]["timestamp"], "booked": booked_at is not None,
                          "prefixes": prefixes})
    return sorted(found, key=lambda c: (c["first"], c["id"]))


@pytest.fixture
def with_signal(business):
    store(chat_events(business.id, 2000, seed=3, end=NOW - timedelta(hours=2)))
    return business


def test_with_a_booking_signal_the_model_beats_the_base_rate_on_the_newest_quarter(with_signal) -> None:
    result = train(with_signal)
    model = result.model
    metrics = model.metrics
    assert model.status == BookingModelStatus.USABLE, model.reason
    assert metrics["brier"] < metrics["base_brier"] * (1 - services.MIN_SKILL)
    assert "beats the base rate" in model.reason

    conversations = raw_conversations(with_signal.id)
    held_count = math.ceil(len(conversations) * services.HELD_OUT_SHARE)
    train_part, held_part = conversations[:-held_count], conversations[-held_count:]
    assert metrics["train"] == {"conversations": len(train_part), "booked": sum(c["booked"] for c in train_part),
                                "prefixes": sum(c["prefixes"] for c in train_part)}
    assert metrics["held_out"] == {"conversations": len(held_part), "booked": sum(c["booked"] for c in held_part),
                                   "prefixes": sum(c["prefixes"] for c in held_part)}
    assert metrics["held_out_from"] == held_part[0]["first"].isoformat()
    assert result.held_out is not None and set(result.held_out.conversation_ids) == {c["id"] for c in held_part}
    # Each conversation weighs 1, so the base rate is the share of booked training conversations.
    base_rate = sum(c["booked"] for c in train_part) / len(train_part)
    assert metrics["base_rate"] == pytest.approx(base_rate)
    assert Conversation.objects.filter(appointment_booked=True).count() >= metrics["train"]["booked"]


def test_the_held_out_brier_scores_and_reliability_table_are_those_of_the_held_out_predictions(with_signal) -> None:
    result = train(with_signal)
    metrics, held, p = result.model.metrics, result.held_out, result.held_out_probabilities
    assert held is not None and p is not None
    labels = {c["id"]: c["booked"] for c in raw_conversations(with_signal.id)}
    prefixes = defaultdict(int)
    for conversation_id in held.conversation_ids:
        prefixes[conversation_id] += 1
    rows = [(float(pi), float(labels[cid]), 1 / prefixes[cid]) for pi, cid in zip(p, held.conversation_ids,
                                                                                  strict=True)]
    assert [y for _, y, _ in rows] == held.y.tolist()
    total = sum(w for _, _, w in rows)
    assert total == pytest.approx(len(prefixes))
    assert metrics["brier"] == pytest.approx(sum(w * (pi - y) ** 2 for pi, y, w in rows) / total)
    base = metrics["base_rate"]
    assert metrics["base_brier"] == pytest.approx(sum(w * (base - y) ** 2 for _, y, w in rows) / total)
    for n, row in enumerate(result.model.reliability):
        inside = [(pi, y, w) for pi, y, w in rows if n / 10 <= pi < (n + 1) / 10 or (n == 9 and pi == 1.0)]
        weight = sum(w for _, _, w in inside)
        assert row["prefixes"] == len(inside) and row["weight"] == pytest.approx(weight)
        if inside:
            assert row["mean_predicted"] == pytest.approx(sum(pi * w for pi, _, w in inside) / weight)
            assert row["observed_rate"] == pytest.approx(sum(y * w for _, y, w in inside) / weight)
    # The stored coefficients give the held-out probabilities, by the formula written out.
    spec = result.model.spec
    z = (held.x - np.array(spec["mean"])) / np.array(spec["scale"])
    np.testing.assert_allclose(1 / (1 + np.exp(-(spec["intercept"] + z @ np.array(spec["coefficients"])))), p)


def test_with_a_booking_signal_the_predictions_are_calibrated(with_signal) -> None:
    table = train(with_signal).model.reliability
    weight = sum(row["weight"] for row in table)
    # Expected calibration error: how far, on average over the held-out conversations, the predicted rate is from
    # the observed one in its bin. Sampling alone moves a bin's rate by about 0.05 at these sizes.
    error = sum(row["weight"] * abs(row["mean_predicted"] - row["observed_rate"]) for row in table if row["prefixes"])
    assert error / weight < 0.06
    for row in table:
        if row["weight"] >= 40:
            assert abs(row["mean_predicted"] - row["observed_rate"]) < 0.12, row


def test_without_a_signal_the_business_gets_no_predictions_and_the_reason(business) -> None:
    store(chat_events(business.id, 2000, seed=4, end=NOW - timedelta(hours=2), signal=False))
    model = train(business).model
    assert model.status == BookingModelStatus.NO_BETTER
    assert not model.usable
    assert "does not beat the base rate" in model.reason
    assert model.metrics["brier"] > model.metrics["base_brier"] * (1 - services.MIN_SKILL)


def test_with_too_few_conversations_there_is_no_fit_and_the_reason_says_how_many(business) -> None:
    store(chat_events(business.id, 120, seed=5, end=NOW - timedelta(hours=2)))
    result = train(business)
    found = len(raw_conversations(business.id))
    assert result.model.status == BookingModelStatus.NOT_ENOUGH_DATA
    assert result.model.reason.startswith(f"Only {found} ended conversations")
    assert result.model.spec == {} and result.held_out is None


def test_conversations_older_than_the_window_are_not_read(business) -> None:
    store(chat_events(business.id, 300, seed=6, end=NOW - timedelta(days=services.TRAINING_DAYS + 1), days=30))
    assert services.ended_conversations(business, NOW) == []
    assert train(business).model.reason.startswith("Only 0 ended conversations")


def test_only_the_last_trainings_of_a_business_are_kept(business) -> None:
    for hours in range(services.KEEP_MODELS + 2):
        with time_machine.travel(NOW + timedelta(hours=hours), tick=False):
            services.train(business)
    kept = list(BookingModel.objects.filter(business=business).order_by("trained_at"))
    assert len(kept) == services.KEEP_MODELS
    assert kept[0].trained_at == NOW + timedelta(hours=2)
