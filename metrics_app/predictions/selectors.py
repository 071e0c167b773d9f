"""Reads of the likely-bookings model: a business's latest evaluation, and the conversations worth a follow-up.

The latest training decides: when it is not usable (too little data, or no
better than the base rate), the business gets no predictions and its reason,
even if an older training was usable, since that one was judged on older
conversations.

Follow-ups: conversations of the business that are not booked, not handed to
a human, and went quiet, their last event at least `quiet_minutes` ago and at
most LOOK_BACK_DAYS ago (open ones and ones that ended recently), at most
MAX_CANDIDATES of them (the most recent first) and each with at most
MAX_TURNS_SCORED events. Each gets the probability of the features of all its
events so far, computed now from its events (one query for all of them);
those at or above the threshold are listed, the likeliest first.

The threshold is twice the base rate (a conversation at least twice as
likely to book as a typical moment of a typical conversation), or half-way
from the base rate to 1 when twice the base rate would be above that.
"""

from __future__ import annotations

import zoneinfo
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from django.utils import timezone

from metrics_app.models import AIMetric, BookingModel, Business, Conversation
from metrics_app.predictions.features import EVENT_COLUMNS, Event, Vocabulary, current_features
from metrics_app.predictions.model import Fit

DEFAULT_QUIET_MINUTES = 10
MAX_QUIET_MINUTES = 1440
LOOK_BACK_DAYS = 7
MAX_CANDIDATES = 500
MAX_TURNS_SCORED = 200  # with MAX_CANDIDATES: at most 100,000 events read
DEFAULT_LIMIT = 50
MAX_LIMIT = 200

NEVER_TRAINED = ("No model has been trained for this business yet: the worker trains daily, or run "
                 "manage.py train_booking_models.")


def latest_model(business_id: str) -> BookingModel | None:
    return BookingModel.objects.filter(business_id=business_id).order_by("-trained_at", "-id").first()


def threshold_of(base_rate: float) -> float:
    return min(2 * base_rate, (1 + base_rate) / 2)


def evaluation(model: BookingModel) -> dict[str, Any]:
    """The training's verdict and held-out figures, as the API and the console show them."""
    metrics = model.metrics
    return {
        "trained_at": model.trained_at.isoformat(),
        "status": model.status,
        "usable": model.usable,
        "reason": model.reason,
        "brier": metrics.get("brier"),
        "base_brier": metrics.get("base_brier"),
        "base_rate": metrics.get("base_rate"),
        "skill": metrics.get("skill"),
        "window_start": metrics.get("window_start"),
        "window_end": metrics.get("window_end"),
        "held_out_from": metrics.get("held_out_from"),
        "train": metrics.get("train", {}),
        "held_out": metrics.get("held_out", {}),
        "reliability": model.reliability,
    }


@dataclass(frozen=True)
class FollowUp:
    conversation: Conversation
    probability: float
    quiet_minutes: float
    ended: bool

    def as_json(self) -> dict[str, Any]:
        c = self.conversation
        return {"id": c.pk, "conversation_id": c.conversation_id, "first_at": c.first_at.isoformat(),
                "last_at": c.last_at.isoformat(), "turns": c.turns, "appointment_requested": c.appointment_requested,
                "probability": self.probability, "quiet_minutes": round(self.quiet_minutes, 1), "ended": self.ended}


def _candidates(business: Business, now: datetime, quiet_minutes: int) -> list[Conversation]:
    return list(
        Conversation.objects.filter(
            business=business, appointment_booked=False, human_handoff_requested=False,
            last_at__lte=now - timedelta(minutes=quiet_minutes), last_at__gte=now - timedelta(days=LOOK_BACK_DAYS),
            turns__lte=MAX_TURNS_SCORED,
        ).order_by("-last_at", "-id")[:MAX_CANDIDATES]
    )


def _events_of(business: Business, conversations: list[Conversation]) -> dict[str, list[Event]]:
    events: dict[str, list[Event]] = defaultdict(list)
    if not conversations:
        return events
    rows = (
        AIMetric.objects.filter(business_id=business.id, conversation_id__in=[c.conversation_id for c in conversations])
        .order_by("conversation_id", "timestamp", "id")
        .values_list(*EVENT_COLUMNS)[:MAX_CANDIDATES * MAX_TURNS_SCORED]
    )
    for row in rows.iterator(chunk_size=5000):
        events[row[0]].append(Event.from_row(row))
    return events


def score(model: BookingModel, business: Business, conversations: list[Conversation], now: datetime) -> list[FollowUp]:
    """Each conversation's probability of booking from its events so far (those with no events left out)."""
    vocabulary = Vocabulary.from_json(model.spec["vocabulary"])
    fit = Fit.from_json(model.spec)
    tz = zoneinfo.ZoneInfo(business.time_zone)
    events = _events_of(business, conversations)
    scored, rows = [], []
    for conversation in conversations:
        row = current_features(events.get(conversation.conversation_id, []), vocabulary, tz)
        if row is not None:
            scored.append(conversation)
            rows.append(row)
    if not rows:
        return []
    probabilities = fit.probabilities(np.asarray(rows, dtype=np.float64))
    return [
        FollowUp(conversation=c, probability=float(p), quiet_minutes=(now - c.last_at).total_seconds() / 60,
                 ended=c.last_at <= now - business.conversation_idle)
        for c, p in zip(scored, probabilities, strict=True)
    ]


def likely_bookings(
    business: Business, now: datetime | None = None, quiet_minutes: int = DEFAULT_QUIET_MINUTES,
    limit: int = DEFAULT_LIMIT,
) -> dict[str, Any]:
    """The business's model evaluation and, when it is usable, its quiet conversations likely to book."""
    now = now or timezone.now()
    model = latest_model(business.id)
    answer: dict[str, Any] = {
        "business_id": business.id, "as_of": now.isoformat(), "quiet_minutes": quiet_minutes,
        "look_back_days": LOOK_BACK_DAYS, "predictions_available": False, "reason": NEVER_TRAINED,
        "model": None, "threshold": None, "scored": 0, "follow_ups": [],
    }
    if model is None:
        return answer
    answer.update(model=evaluation(model), reason=model.reason)
    if not model.usable:
        return answer
    threshold = threshold_of(float(model.metrics["base_rate"]))
    scored = score(model, business, _candidates(business, now, quiet_minutes), now)
    likely = sorted((f for f in scored if f.probability >= threshold),
                    key=lambda f: (-f.probability, f.conversation.conversation_id))
    answer.update(predictions_available=True, threshold=threshold, scored=len(scored),
                  follow_ups=[f.as_json() for f in likely[:limit]])
    return answer
